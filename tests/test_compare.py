"""compare_estimators: rows for objectives that do not apply; the encoder/decoder split by what each program reads."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO
from torch import nn

from pyrovae.compare import compare_estimators, split_parameters

NUMBERS = ("bound", "bound_se", "encoder_variance", "encoder_snr", "decoder_variance", "decoder_snr",
           "seconds_per_step")


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(16, 3, generator=torch.Generator().manual_seed(0))


def bernoulli_pair() -> tuple:
    """One binary latent per point: the guide's z is not reparameterized."""
    torch.manual_seed(0)
    encoder, decoder = nn.Linear(3, 1), nn.Linear(1, 3)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(torch.full((x.shape[0], 1), 0.5)).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=encoder(x)).to_event(1))

    return model, guide


# ------------------------------------------------------------ not applicable
def test_objectives_that_do_not_apply_get_a_row_with_the_reason(x, capsys):
    result = compare_estimators(bernoulli_pair(), x, ["elbo", "stl", "dreg:num_particles=3"], num_repeats=3)
    elbo, stl, dreg = result.rows
    assert elbo.not_applicable is None
    assert all(math.isfinite(getattr(elbo, n)) for n in NUMBERS)
    for row, name in ((stl, "stl"), (dreg, "dreg")):
        assert f"objective={name!r}" in row.not_applicable and "site 'z'" in row.not_applicable
        assert "\n" not in row.not_applicable
        assert all(math.isnan(getattr(row, n)) for n in NUMBERS)
    printed = capsys.readouterr().out
    assert printed.strip() == str(result).strip()
    lines = printed.splitlines()
    assert lines[3].startswith("stl ") and f"n/a: {stl.not_applicable}" in lines[3]
    assert lines[4].startswith("dreg:num_particles=3 ") and f"n/a: {dreg.not_applicable}" in lines[4]
    dicts = result.to_dicts()
    assert [d["not_applicable"] for d in dicts] == [None, stl.not_applicable, dreg.not_applicable]


def test_a_global_latent_is_not_applicable_to_per_point_weights(x):
    torch.manual_seed(0)
    encoder, decoder = nn.Linear(3, 1), nn.Linear(1, 3)

    def model(x):
        pyro.module("decoder", decoder)
        shift = pyro.sample("shift", dist.Normal(torch.zeros(3), 1.0).to_event(1)).unsqueeze(-2)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z) + shift, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        loc = pyro.param("shift_loc", torch.zeros(3))
        pyro.sample("shift", dist.Normal(loc, 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(encoder(x), 1.0).to_event(1))

    result = compare_estimators((model, guide), x, ["elbo", "iwae:num_particles=3"], num_repeats=3, verbose=False)
    assert result["elbo"].not_applicable is None and math.isfinite(result["elbo"].bound)
    assert "'shift'" in result["iwae:num_particles=3"].not_applicable


def test_a_refusal_by_not_implemented_error_is_not_applicable(x):
    class Unsupported(Trace_ELBO):
        def loss_and_grads(self, model, guide, *args, **kwargs):
            raise NotImplementedError("no gradient for this pair\nsecond line")

    result = compare_estimators(bernoulli_pair(), x, [Unsupported(), "elbo"], num_repeats=2, verbose=False)
    assert result["Unsupported"].not_applicable == "no gradient for this pair"
    assert result["elbo"].not_applicable is None


@pytest.mark.parametrize("error", [KeyError, RuntimeError, TypeError])
def test_a_bug_inside_an_objective_still_raises(x, error):
    class Broken(Trace_ELBO):
        def loss_and_grads(self, model, guide, *args, **kwargs):
            raise error("a bug")

    with pytest.raises(error, match="a bug"):
        compare_estimators(bernoulli_pair(), x, ["elbo", Broken()], num_repeats=2, verbose=False)


def test_a_value_error_raised_by_the_program_still_raises(x):
    """A ValueError while the guide runs is the program's, even though an objective called it."""
    model, guide = bernoulli_pair()
    calls = []

    def failing_guide(x):
        calls.append(None)
        if len(calls) > 1:  # the first call is compare_estimators' own look at the pair
            raise ValueError("the guide's own mistake")
        return guide(x)

    with pytest.raises(ValueError, match="the guide's own mistake"):
        compare_estimators((model, failing_guide), x, ["stl"], num_repeats=2, verbose=False)


# ------------------------------------------------------ encoder/decoder split
class M2Net(nn.Module):
    """Encoder and decoder in one module, as in Pyro's semi-supervised (M2) example."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 2)
        self.decoder = nn.Linear(1, 3)
        self.unused = nn.Linear(2, 2)  # registered, read by neither program


def gaussian_pair(net: M2Net, *, register_all_in_model: bool) -> tuple:
    """The same generative story either with the whole module registered in the model (M2 style)
    or with each network registered in the program that reads it."""

    def model(x):
        if register_all_in_model:
            pyro.module("m2", net)  # encoder parameters are registered here, but only the guide reads them
        else:
            pyro.module("decoder", net.decoder)
            pyro.module("unused", net.unused)
        pyro.param("unread", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(net.decoder(z), 1.0).to_event(1), obs=x)

    def guide(x):
        if not register_all_in_model:
            pyro.module("encoder", net.encoder)
        tempering = pyro.param("tempering", torch.ones(1), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = net.encoder(x).split(1, dim=-1)
            pyro.sample("z", dist.Normal(loc, tempering * log_scale.exp()).to_event(1))

    return model, guide


def _split(model, guide, x):
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    return split_parameters(model_trace, guide_trace)


def _ids(tensors) -> set[int]:
    return {id(t) for t in tensors}


@pytest.mark.parametrize("register_all_in_model", [True, False], ids=["m2-style", "each-in-its-program"])
def test_split_follows_what_each_program_reads(x, register_all_in_model):
    torch.manual_seed(0)
    net = M2Net()
    encoder, decoder = _split(*gaussian_pair(net, register_all_in_model=register_all_in_model), x)
    tempering = pyro.param("tempering").unconstrained()  # the leaf, not its constrained value
    assert _ids(encoder.values()) == _ids([*net.encoder.parameters(), tempering])
    assert _ids(decoder.values()) == _ids(net.decoder.parameters())
    assert "unread" not in {**encoder, **decoder}  # read by neither program: in neither


def test_m2_style_registration_compares_like_registration_in_each_program(x):
    torch.manual_seed(0)
    net = M2Net()
    rows = {}
    for register_all_in_model in (True, False):
        pyro.clear_param_store()
        pair = gaussian_pair(net, register_all_in_model=register_all_in_model)
        rows[register_all_in_model] = compare_estimators(pair, x, ["elbo"], num_repeats=3, verbose=False)["elbo"]
    m2, each = rows[True], rows[False]
    assert math.isfinite(m2.encoder_variance) and m2.encoder_variance > 0
    # the same draws (same seeds) and the same split: the same numbers, up to the order in which
    # the parameters' gradients are summed (registration order differs): a few ulps, never more
    for name in ("bound", "encoder_variance", "encoder_snr", "decoder_variance", "decoder_snr"):
        assert getattr(m2, name) == pytest.approx(getattr(each, name), rel=1e-12, abs=0), name
    assert all(p.grad is None for p in net.parameters())


def test_non_finite_draws_give_a_row_with_the_reason_not_a_crash(x):
    """A bound that is infinite on some draws (a relaxed site at a hard temperature, say) has no variance:
    its row is refused with the count of bad draws; the other rows are unaffected."""
    torch.manual_seed(0)
    encoder, decoder = nn.Linear(3, 1), nn.Linear(1, 3)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)
            # log 0 whenever some point's z is positive (nearly every draw of a batch): an infinite loss
            pyro.factor("bad", torch.where(z.squeeze(-1) > 0, torch.tensor(-math.inf), torch.tensor(0.0)))

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(encoder(x), 1.0).to_event(1))

    result = compare_estimators((model, guide), x, ["elbo"], num_repeats=3, verbose=False)
    (row,) = result.rows
    assert row.not_applicable == "non-finite loss or gradient in 3 of 3 draws at these parameters"
    assert all(math.isnan(getattr(row, n)) for n in NUMBERS)
