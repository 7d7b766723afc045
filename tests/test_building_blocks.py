"""Building blocks: networks, likelihoods, schedules and the KL-weight handler."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.mask_messenger import MaskMessenger
from torch.nn.functional import softplus

import pyrovae
from pyrovae.handlers import kl_scale
from pyrovae.likelihoods import LIKELIHOODS, make_likelihood
from pyrovae.nets import MLP, ConvDecoder, ConvEncoder, make_decoder, make_encoder
from pyrovae.schedules import SCHEDULES, Constant, Cyclical, Linear, make_schedule

#: small nets keep these tests fast; the shapes, not the widths, are under test
SMALL = {"hidden": (8,), "channels": (4, 4, 8)}
Z_DIM = 3


# ---------------------------------------------------------------- networks
@pytest.mark.parametrize(
    ("x_shape", "arch", "expected"),
    [
        ((10,), "auto", MLP),
        ((1, 8, 8), "auto", MLP),  # small images: "auto" picks the MLP
        ((1, 28, 28), "auto", ConvEncoder),
        ((3, 17, 23), "auto", ConvEncoder),  # odd sides, unequal height and width
        ((3, 17, 23), "mlp", MLP),
        ((2, 5, 7), "conv", ConvEncoder),  # sides smaller than 2 ** len(channels)
    ],
)
@pytest.mark.parametrize("batch_shape", [(), (4,), (2, 3)], ids=["no-batch", "B", "K,B"])
def test_encoder_and_decoder_shapes_are_exact(x_shape, arch, expected, batch_shape):
    encoder = make_encoder(arch, x_shape, {"loc": Z_DIM, "scale": Z_DIM}, **SMALL)
    decoder = make_decoder(arch, Z_DIM, x_shape, ("loc", "scale"), **SMALL)
    assert isinstance(encoder, expected)
    assert isinstance(decoder, ConvDecoder if expected is ConvEncoder else MLP)

    out = encoder(torch.randn(*batch_shape, *x_shape))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (*batch_shape, Z_DIM) for k in ("loc", "scale")}
    out = decoder(torch.randn(*batch_shape, Z_DIM))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (*batch_shape, *x_shape) for k in ("loc", "scale")}


@pytest.mark.parametrize("x_shape", [(10,), (3, 17, 23)])
def test_networks_treat_each_batch_element_independently(x_shape):
    # Reshapes that mixed batch and event dimensions would pass the shape test; this catches them.
    encoder = make_encoder("auto", x_shape, {"loc": Z_DIM}, **SMALL)
    decoder = make_decoder("auto", Z_DIM, x_shape, ("logits",), **SMALL)
    x, z = torch.randn(2, 3, *x_shape), torch.randn(2, 3, Z_DIM)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x)["loc"][1, 2], encoder(x[1, 2])["loc"])
        torch.testing.assert_close(decoder(z)["logits"][1, 2], decoder(z[1, 2])["logits"])


def test_heads_have_their_own_shapes():
    net = MLP((1, 4, 4), {"loc": (2, 3), "logits": 5}, hidden=(8,))
    out = net(torch.randn(7, 1, 4, 4))
    assert out["loc"].shape == (7, 2, 3) and out["logits"].shape == (7, 5)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: make_encoder("conv", (10,), {"loc": 2}), "arch='conv'"),
        (lambda: make_encoder("resnet", (10,), {"loc": 2}), "arch"),
        (lambda: MLP(10, {"loc": 2}, activation="swish"), "activation"),
        (lambda: MLP(10, {}), "head"),
        (lambda: MLP((10, 0), {"loc": 2}), "in_shape"),
        (lambda: ConvEncoder((1, 8), {"loc": 2}), r"\(C, H, W\)"),
        (lambda: ConvDecoder(2, (8,), ("loc",)), r"\(C, H, W\)"),
    ],
)
def test_bad_network_arguments_raise_with_their_name(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ---------------------------------------------------------------- likelihoods
def valid_data(support: str, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if support == "binary":
        return torch.bernoulli(torch.full(shape, 0.5), generator=g)
    if support == "unit_interval":
        return torch.rand(shape, generator=g)
    if support == "grey8":  # 8-bit grey levels k / 255
        return torch.randint(0, 256, shape, generator=g) / 255
    return 3 * torch.randn(shape, generator=g)


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
@pytest.mark.parametrize("x_shape", [(10,), (3, 5, 7)])
def test_each_likelihood_scores_a_whole_data_point(name, x_shape):
    likelihood = make_likelihood(name, x_shape)
    params = {head: torch.randn(4, *x_shape) for head in likelihood.heads}
    d = likelihood(params)
    assert d.event_shape == x_shape and d.batch_shape == (4,)

    x = valid_data(likelihood.support, (4, *x_shape))
    likelihood.validate(x)
    log_prob = d.log_prob(x)
    assert log_prob.shape == (4,) and torch.isfinite(log_prob).all()
    assert likelihood.mean(params).shape == (4, *x_shape)


def test_bernoulli_log_prob_is_the_sum_over_pixels():
    likelihood = make_likelihood("bernoulli", (2, 3))
    logits = torch.randn(5, 2, 3)
    x = torch.bernoulli(torch.full((5, 2, 3), 0.5))
    by_hand = (x * logits - softplus(logits)).sum((-2, -1))  # log sigmoid(l)^x (1 - sigmoid(l))^(1-x)
    torch.testing.assert_close(likelihood({"logits": logits}).log_prob(x), by_hand)


@pytest.mark.parametrize(
    ("x", "suggestion"),
    [
        (torch.tensor([[0.0, 0.5, 1.0]]), "continuous_bernoulli"),  # intensities in [0, 1]
        (torch.tensor([[-1.0, 0.0, 2.0]]), "gaussian"),  # real values
    ],
)
def test_bernoulli_refuses_non_binary_data_and_names_the_likelihood_to_use(x, suggestion):
    with pytest.raises(ValueError, match=f"likelihood='bernoulli'.*use likelihood='{suggestion}'"):
        make_likelihood("bernoulli", (3,)).validate(x)
    # and fit refuses it up front, before any training
    with pytest.raises(ValueError, match=f"use likelihood='{suggestion}'"):
        pyrovae.fit(pyrovae.VAE(x_shape=(3,), z_dim=2, hidden=(8,)), x, epochs=1, device="cpu", progress=False)


@pytest.mark.parametrize("x", [torch.tensor([[-0.1, 0.5]]), torch.tensor([[0.5, 1.2]])])
def test_continuous_bernoulli_refuses_data_outside_the_unit_interval(x):
    with pytest.raises(ValueError, match="likelihood='continuous_bernoulli' expects data in \\[0, 1\\]"):
        make_likelihood("continuous_bernoulli", (2,)).validate(x)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_real_likelihoods_accept_any_finite_data(name):
    likelihood = make_likelihood(name, (2,))
    x = torch.tensor([[-1e3, 1e3]])
    assert likelihood.validate(x) is None  # no support error for real data far from 0
    assert torch.isfinite(likelihood({"loc": torch.zeros(1, 2)}).log_prob(x)).all()


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("poisson", {}, "likelihood in"),
        ("gaussian", {"scale": -1.0}, "scale"),
        ("gaussian", {"scale": "fixed"}, "scale"),
        ("bernoulli", {"scale": 1.0}, "does not take options"),
    ],
)
def test_bad_likelihood_arguments_raise(name, options, match):
    with pytest.raises(ValueError, match=match):
        make_likelihood(name, (3,), **options)


def test_learned_gaussian_scale_receives_the_hand_derived_gradient():
    likelihood = make_likelihood("gaussian", (4,), scale="learned")
    params = dict(likelihood.named_parameters())
    assert list(params) == ["raw_scale"]
    raw = params["raw_scale"]
    loc, x = torch.randn(6, 4), torch.randn(6, 4)
    likelihood({"loc": loc}).log_prob(x).sum().backward()

    # d/dr sum log N(x; loc, s) with s = softplus(r) + min_scale: sum((x - loc)^2 / s^3 - 1 / s) * sigmoid(r)
    s = likelihood.scale().detach()
    expected = (((x - loc) ** 2 / s**3 - 1 / s).sum() * torch.sigmoid(raw.detach()))
    assert raw.grad is not None and raw.grad.abs() > 0
    torch.testing.assert_close(raw.grad, expected)


def test_learned_scale_is_trained_by_fit():
    # the likelihood's parameter must also be registered with Pyro by the model, or fit never moves it
    vae = pyrovae.VAE(x_shape=(4,), z_dim=2, hidden=(8,), likelihood="gaussian", likelihood_scale="learned")
    before = vae.observation.raw_scale.detach().clone()
    pyrovae.fit(vae, 3 * torch.randn(32, 4), epochs=1, batch_size=16, lr=1e-2, device="cpu", progress=False)
    assert not torch.equal(vae.observation.raw_scale.detach(), before)


# ---------------------------------------------------------------- schedules
def test_constant_schedule():
    assert [Constant(0.3)(step) for step in (0, 1, 10**6)] == [0.3, 0.3, 0.3]


def test_linear_schedule_warms_up_then_holds():
    schedule = Linear(start=0.0, end=2.0, num_steps=10)
    steps = [-3, 0, 1, 5, 10, 11, 1000]
    assert [schedule(step) for step in steps] == pytest.approx([0.0, 0.0, 0.2, 1.0, 2.0, 2.0, 2.0])
    assert Linear(start=1.0, end=0.0, num_steps=4)(1) == pytest.approx(0.75)  # annealing down works too


def test_cyclical_schedule_repeats_its_ramp():
    # 4 cycles of 25 steps; each ramps over its first half (12.5 steps) and then holds
    schedule = Cyclical(start=0.0, end=1.0, num_steps=100, num_cycles=4, ratio=0.5)
    steps = [0, 5, 10, 13, 24, 25, 30, 99]
    assert [schedule(step) for step in steps] == pytest.approx([0.0, 0.4, 0.8, 1.0, 1.0, 0.0, 0.4, 1.0])
    full_ramp = Cyclical(start=0.5, end=1.0, num_steps=10, num_cycles=1, ratio=1.0)
    assert [full_ramp(step) for step in (0, 5, 9)] == pytest.approx([0.5, 0.75, 0.95])


@pytest.mark.parametrize(
    "schedule",
    [
        Constant(0.5),
        Linear(start=0.1, end=3.0, num_steps=7),
        Cyclical(start=0.0, end=2.0, num_steps=40, num_cycles=2, ratio=0.25),
    ],
    ids=lambda s: s.name,
)
def test_schedule_round_trips_through_its_dict(schedule):
    spec = schedule.to_dict()
    assert spec["name"] in SCHEDULES
    rebuilt = make_schedule(spec)
    assert rebuilt == schedule and rebuilt.to_dict() == spec
    assert make_schedule(schedule) is schedule
    assert [rebuilt(step) for step in range(50)] == [schedule(step) for step in range(50)]


def test_a_number_is_a_constant_schedule():
    assert make_schedule(4) == Constant(4.0)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Constant(-1.0), "value"),
        (lambda: Linear(start=-0.5), "start"),
        (lambda: Linear(end=float("nan")), "end"),
        (lambda: Linear(num_steps=0), "num_steps"),
        (lambda: Linear(num_steps=2.5), "num_steps"),
        (lambda: Cyclical(num_cycles=0), "num_cycles"),
        (lambda: Cyclical(ratio=0.0), "ratio"),
        (lambda: Cyclical(ratio=1.5), "ratio"),
        (lambda: make_schedule({"name": "cosine"}), "cosine"),
        (lambda: make_schedule({"start": 0.0}), "name"),
    ],
)
def test_bad_schedule_arguments_raise_with_their_name(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("spec", ["linear", True, None])
def test_make_schedule_refuses_other_types(spec):
    with pytest.raises(TypeError, match="Expected a number, a Schedule or a mapping"):
        make_schedule(spec)


def test_make_schedule_refuses_unknown_options():
    with pytest.raises(TypeError, match="num_cycles"):
        make_schedule({"name": "linear", "num_cycles": 3})


# ---------------------------------------------------------------- kl_scale
def trace_z(weight: float) -> dict:
    """The site "z" sampled under ``kl_scale(weight)``, with its log-prob computed."""

    def program():
        with pyro.plate("data", 3), kl_scale(weight):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    trace = poutine.trace(program).get_trace()
    trace.compute_log_prob()
    return trace.nodes["z"]


def test_kl_scale_one_changes_nothing():
    site = trace_z(1.0)
    assert site["scale"] == 1.0 and site["mask"] is None
    torch.testing.assert_close(site["log_prob"], dist.Normal(0.0, 1.0).log_prob(site["value"]))


def test_kl_scale_multiplies_the_log_prob():
    site = trace_z(0.25)
    assert site["scale"] == 0.25
    torch.testing.assert_close(site["log_prob"], 0.25 * dist.Normal(0.0, 1.0).log_prob(site["value"]))


def test_kl_scale_zero_is_a_mask_not_a_scale():
    assert isinstance(kl_scale(0), MaskMessenger)
    site = trace_z(0.0)
    assert site["mask"] is False and site["value"].shape == (3,)  # still sampled
    assert torch.equal(site["log_prob"], torch.zeros(3))  # but scores nothing


@pytest.mark.parametrize("weight", [-1.0, float("nan")])
def test_kl_scale_refuses_negative_weights(weight):
    with pytest.raises(ValueError, match="kl_weight >= 0"):
        kl_scale(weight)


def test_kl_scale_weight_is_the_same_in_a_real_model():
    # sanity link to the models: the VAE's "z" carries the weight in both programs
    vae = pyrovae.VAE(x_shape=(4,), z_dim=2, hidden=(8,), likelihood="gaussian")
    x = torch.randn(5, 4)
    guide_trace = poutine.trace(vae.guide).get_trace(x, kl_weight=0.5)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, kl_weight=0.5)
    assert guide_trace.nodes["z"]["scale"] == model_trace.nodes["z"]["scale"] == 0.5
    assert model_trace.nodes["x"]["scale"] == 1.0
    assert not math.isnan(model_trace.log_prob_sum().item())


@pytest.mark.parametrize("event_shape", [(12,), (1, 4, 3)])
def test_bernoulli_event_scores_exactly_like_pyros_bernoulli(event_shape):
    """Values and logit gradients equal Bernoulli(logits).to_event(n), for same-shaped data (the fused
    kernel) and for data broadcast against K samples of logits (the contraction); float32 rounding only."""
    from pyrovae.likelihoods import BernoulliEvent

    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn((5, 4, *event_shape), generator=g)).requires_grad_()
    lik = make_likelihood("bernoulli", event_shape)
    ours = lik({"logits": logits})
    assert isinstance(ours, BernoulliEvent) and ours.event_shape == event_shape and ours.batch_shape == (5, 4)
    reference = dist.Bernoulli(logits=logits).to_event(len(event_shape))
    for x in (torch.bernoulli(torch.full((4, *event_shape), 0.3), generator=g),       # broadcast over 5 samples
              torch.bernoulli(torch.full((5, 4, *event_shape), 0.3), generator=g)):   # same shape
        got, want = ours.log_prob(x), reference.log_prob(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        (grad_got,) = torch.autograd.grad(got.sum(), logits)
        (grad_want,) = torch.autograd.grad(want.sum(), logits)
        torch.testing.assert_close(grad_got, grad_want, rtol=1e-5, atol=1e-6)
    expanded = ours.expand((2, 5, 4))
    assert isinstance(expanded, BernoulliEvent) and expanded.log_prob(x).shape == (2, 5, 4)


def test_bernoulli_event_falls_back_where_its_fast_paths_do_not_apply():
    """Broadcast event dimensions, logits narrower than the data, other dtypes: Pyro's Independent answers."""
    from pyrovae.likelihoods import BernoulliEvent

    g = torch.Generator().manual_seed(1)
    cases = [
        ((3, 1), (3, 5), 1),            # logits broadcast up to the data
        ((2, 4, 2, 3), (4, 1, 3), 2),   # an event dimension broadcasts
        ((2, 4, 5), (4, 5), 1),         # the fast broadcast path, for comparison
    ]
    for logits_shape, value_shape, n in cases:
        logits = 10 * torch.randn(logits_shape, generator=g)
        value = torch.bernoulli(torch.full(value_shape, 0.5), generator=g)
        ours = BernoulliEvent(dist.Bernoulli(logits=logits, validate_args=False), n, validate_args=False)
        want = dist.Bernoulli(logits=logits, validate_args=False).to_event(n).log_prob(value)
        torch.testing.assert_close(ours.log_prob(value), want, rtol=1e-5, atol=1e-4)
    logits = torch.randn(2, 4, 5)
    value64 = torch.bernoulli(torch.full((4, 5), 0.5), generator=g).double()
    ours = BernoulliEvent(dist.Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)
    assert ours.log_prob(value64).shape == (2, 4)


def test_bernoulli_event_is_accurate_for_saturated_logits():
    """|logits| ~ 30 on the data's side: each term is ~1e-13, so the sum must be tiny, not a cancellation."""
    from pyrovae.likelihoods import make_likelihood

    g = torch.Generator().manual_seed(2)
    x = torch.bernoulli(torch.full((4, 784), 0.2), generator=g)
    logits = (2 * x - 1).expand(8, 4, 784) * 30 + torch.randn(8, 4, 784, generator=g)
    got = make_likelihood("bernoulli", (784,))({"logits": logits}).log_prob(x)
    want = dist.Bernoulli(logits=logits.double()).to_event(1).log_prob(x.double())
    assert float((got.double() - want).abs().max()) < 1e-6
