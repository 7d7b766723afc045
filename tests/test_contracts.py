"""Contracts over the tables: every model trains under every objective it supports.

The tables are read at import time, so a new file in ``pyrovae/models/`` or a
new line in ``OBJECTIVES`` is tested without editing this file.  Incompatible
pairs are skipped by the models' and the objectives' capability flags, never by their
names, with the reason.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from torch import nn

import pyrovae
from pyrovae import MODELS, OBJECTIVES
from pyrovae.datasets import synthetic
from pyrovae.programs import analytic_kl, reads_surrogate_terms, requires_guide_sites

MODELS_DIR = Path(pyrovae.__file__).parent / "models"

#: two small data settings: binary images through a conv net, real vectors through an MLP
DATA = {
    "binary_image": {
        "x_shape": (1, 8, 8),
        "model": {"arch": "conv", "channels": (4, 8), "hidden": (16,), "likelihood": "bernoulli"},
    },
    "real_flat": {
        "x_shape": (16,),
        "model": {"arch": "mlp", "hidden": (16,), "likelihood": "gaussian"},
    },
}


def make_data(setting: str, num_data: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (num_data, *DATA[setting]["x_shape"])
    if DATA[setting]["model"]["likelihood"] == "bernoulli":
        return torch.bernoulli(torch.full(shape, 0.3), generator=g)
    return torch.randn(shape, generator=g)


def constructor_parameters(cls: type) -> set[str]:
    """Keyword names that ``cls`` or any base class's ``__init__`` declares (variants pass **kwargs up)."""
    return {name for klass in cls.__mro__ if "__init__" in vars(klass)
            for name in inspect.signature(klass.__init__).parameters}


def small_model(name: str, setting: str, num_data: int = 64) -> pyrovae.VAE:
    """``MODELS[name]`` with every network small; read from constructor conventions, not model names."""
    cls = MODELS[name]
    options = dict(DATA[setting]["model"])
    for parameter in constructor_parameters(cls):
        if parameter.endswith("_hidden"):  # auxiliary networks (e.g. a discriminator)
            options[parameter] = (16,)
        if parameter == "num_data":  # minibatch estimators that need the training set's size
            options[parameter] = num_data
    return cls(x_shape=DATA[setting]["x_shape"], z_dim=2, **options)


def requires_reparameterized(elbo: ELBO) -> bool:
    """The objective's ``requires_reparameterized`` flag (pyrovae's estimators carry it).

    Pyro's own classes lack the flag; of those in ``OBJECTIVES`` only TraceMeanField_ELBO needs
    reparameterized latents (it refuses a guide site that is not), as
    ``test_estimators.test_requires_reparameterized_flag_tells_the_truth`` checks for every entry.
    """
    return getattr(elbo, "requires_reparameterized", isinstance(elbo, TraceMeanField_ELBO))


def incompatibility(model_cls: type, elbo: ELBO) -> str | None:
    """Why ``model_cls`` cannot be trained with ``elbo``, or None: asked of the model's and the objective's flags."""
    if analytic_kl(elbo) and not getattr(model_cls, "mean_field_guide", True):
        return (f"{type(elbo).__name__} takes each site's KL in closed form; "
                f"{model_cls.__name__}.mean_field_guide is False")
    if getattr(model_cls, "surrogate_objective", False) and not reads_surrogate_terms(elbo):
        return (f"{type(elbo).__name__} would read the guide's surrogate term as log q; "
                f"{model_cls.__name__}.surrogate_objective is True")
    if getattr(model_cls, "has_enumerated_latents", False) and requires_guide_sites(elbo):
        return (f"{type(elbo).__name__} needs a guide site for every model latent; "
                f"{model_cls.__name__}.has_enumerated_latents is True")
    if requires_reparameterized(elbo):
        objective = type(elbo).__name__
        if not model_cls.reparameterized:
            return f"{objective} needs reparameterized latents; {model_cls.__name__}.reparameterized is False"
        if model_cls.has_discrete_latents:
            return f"{objective} needs continuous latents; {model_cls.__name__}.has_discrete_latents is True"
    return None


def model_objective_pairs(models: dict[str, type] = MODELS):
    """Every (model, objective) pair as a pytest param; an incompatible pair is marked skip with its reason."""
    for name, cls in sorted(models.items()):
        for objective in sorted(OBJECTIVES):
            reason = incompatibility(cls, OBJECTIVES[objective]())
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            yield pytest.param(name, objective, marks=marks, id=f"{name}-{objective}")


def fit_and_check(model: pyrovae.VAE, setting: str, **options) -> None:
    """One epoch on 64 points: finite losses, and every network of the model was trained."""
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    result = pyrovae.fit(
        model, make_data(setting, 64), epochs=1, batch_size=32, lr=1e-2,
        valid_data=make_data(setting, 16, seed=1), device="cpu", progress=False, **options,
    )
    assert result.step == 2 and len(result.history) == 1
    row = result.final
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["valid_elbo"])
    # each network that has parameters (generative, inference, auxiliary) moved
    for child_name, child in model.named_children():
        names = [f"{child_name}.{k}" for k, _ in child.named_parameters()]
        if names:
            assert any(not torch.equal(before[k], model.get_parameter(k)) for k in names), child_name


# ---------------------------------------------------------------- training contract
@pytest.mark.parametrize(("name", "objective"), list(model_objective_pairs()))
def test_every_model_trains_under_every_compatible_objective(name, objective):
    fit_and_check(small_model(name, "real_flat"), "real_flat", objective=objective)


def flags(name: str, *, reparameterized: bool = True, has_discrete_latents: bool = False) -> type:
    """A stand-in model class carrying only the capability flags."""
    return type(name, (), {"reparameterized": reparameterized, "has_discrete_latents": has_discrete_latents})


#: the objectives whose estimators are pathwise only (they refuse a guide that is not reparameterized)
PATHWISE_ONLY = {"meanfield", "stl", "dreg", "free_bits"}


@pytest.mark.parametrize(
    ("stub", "flag"),
    [(flags("ScoreOnly", reparameterized=False), "reparameterized is False"),
     (flags("Discrete", has_discrete_latents=True), "has_discrete_latents is True")],
    ids=["not-reparameterized", "discrete-latents"],
)
def test_contract_skips_exactly_the_incompatible_pairs_with_the_reason(stub, flag):
    # the skip is shown on stubs, each with exactly one flag set
    params = {p.values[1]: p for p in model_objective_pairs({"stub": stub, "vae": flags("Plain")})
              if p.values[0] == "stub"}
    assert set(params) == set(OBJECTIVES)
    skipped = {objective for objective, p in params.items() if p.marks}
    assert skipped == PATHWISE_ONLY
    for objective in skipped:
        (mark,) = params[objective].marks
        assert mark.name == "skip"
        assert mark.kwargs["reason"].endswith(f"{stub.__name__}.{flag}"), mark.kwargs["reason"]
    plain = [p for p in model_objective_pairs({"vae": flags("Plain")})]
    assert len(plain) == len(OBJECTIVES) and not any(p.marks for p in plain)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_on_binary_images_with_a_conv_net(name):
    fit_and_check(small_model(name, "binary_image"), "binary_image")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fit_accepts_kl_warm_up_from_zero(name):
    # a linear warm-up starts at kl_weight = 0, where Pyro's poutine.scale would refuse
    model = small_model(name, "real_flat")
    schedule = pyrovae.Linear(start=0.0, end=1.0, num_steps=4)
    result = pyrovae.fit(model, make_data("real_flat", 64), kl_weight=schedule, epochs=2, batch_size=32,
                         device="cpu", progress=False)
    assert [row["kl_weight"] for row in result.history] == [schedule(1), schedule(3)]
    assert all(math.isfinite(row["train_loss"]) for row in result.history)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_evaluation_sees_the_true_model(name):
    # model(x)/guide(x) with default keywords are what evaluate_elbo and the metrics run:
    # no penalty factors, no KL weight, no masks, whatever the variant adds in training
    model = small_model(name, "real_flat")
    x = make_data("real_flat", 8)
    guide_trace = poutine.trace(model.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x)
    for trace in (guide_trace, model_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                assert not isinstance(site["fn"], dist.Unit), f"penalty factor {site['name']!r} at evaluation"
                assert site["scale"] == 1.0 and site["mask"] is None, site["name"]
    # and evaluate_elbo is exactly that pair's ELBO per point (same seed, same samples), a latent the
    # model sums out (and the guide leaves out) summed exactly, as the "enum" objective trains it
    torch.manual_seed(5)
    estimator = TraceEnum_ELBO(max_plate_nesting=1) if model.has_enumerated_latents else Trace_ELBO()
    expected = -estimator.loss(model.model, model.guide, x) / len(x)
    assert pyrovae.evaluate_elbo(model, x, seed=5) == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- the registry
def test_every_model_file_is_in_the_table_under_its_stem():
    stems = {path.stem for path in MODELS_DIR.glob("*.py") if path.stem != "__init__"}
    assert stems == set(MODELS)
    for stem in stems:
        assert MODELS[stem].__module__ == f"pyrovae.models.{stem}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_docstring_is_rest_with_references(name):
    cls = MODELS[name]
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")  # its own docstring, not an inherited one
    assert doc, f"{cls.__name__} has no docstring"
    summary, _, body = doc.partition("\n")
    assert summary.strip() and summary.rstrip().endswith(".")
    assert ":math:" in body or ".. math::" in body, "the objective should be stated in math"
    references = re.search(r"^References:?\s*$(.*)", body, flags=re.MULTILINE | re.DOTALL)
    assert references, f"{cls.__name__} docstring has no References section"
    assert re.search(r"^\s*1\.\s+\S", references.group(1), flags=re.MULTILINE), "references are numbered"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_capability_flags_are_booleans(name):
    cls = MODELS[name]
    assert isinstance(cls.reparameterized, bool) and isinstance(cls.has_discrete_latents, bool)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_rebuilds_an_equivalent_model(name):
    model = small_model(name, "binary_image")
    # the config travels through a checkpoint as JSON
    config = json.loads(json.dumps(model.config))
    rebuilt = MODELS[name](**config)
    assert type(rebuilt) is type(model)
    assert rebuilt.config == model.config
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())
    x = make_data("binary_image", 4)
    torch.testing.assert_close(rebuilt.reconstruct(x), model.reconstruct(x))


def registered_params(model: pyrovae.VAE, x: torch.Tensor) -> set[str]:
    """Names of the Pyro params that one run of the model's guide and model registers."""
    guide_trace = poutine.trace(model.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x)
    return {k for t in (guide_trace, model_trace) for k, site in t.nodes.items() if site["type"] == "param"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pyro_programs_register_the_model_and_guide_networks(name):
    model = small_model(name, "real_flat")
    lists = {kind: tuple(getattr(model, f"{kind}_modules", ())) for kind in ("model", "guide", "auxiliary")}
    # every parameter belongs to exactly one list: Pyro trains the first two, fit's
    # auxiliary optimizer the third
    owners = [module for modules in lists.values() for module in modules]
    assert len(owners) == len(set(owners))
    declared = {f"{m}.{k}" for m in owners for k, _ in getattr(model, m).named_parameters()}
    assert declared == {k for k, _ in model.named_parameters()}

    trained_by_pyro = sum(p.numel() for m in lists["model"] + lists["guide"] for p in getattr(model, m).parameters())
    names = registered_params(model, make_data("real_flat", 8))
    assert sum(pyro.param(k).numel() for k in names) == trained_by_pyro


@pytest.mark.parametrize("name", sorted(MODELS))
def test_two_models_in_one_process_do_not_share_parameters(name):
    a, b = small_model(name, "real_flat"), small_model(name, "real_flat")
    x = make_data("real_flat", 8)
    names_a, names_b = registered_params(a, x), registered_params(b, x)
    assert names_a and names_b and not names_a & names_b


# ---------------------------------------------------------------- user-written programs
D, Z = 5, 2
SIGMA = 0.5


def ppca_marginal(W: torch.Tensor, b: torch.Tensor) -> dist.MultivariateNormal:
    """The model's own log p(x) = N(b, W W^T + sigma^2 I): the ceiling of its ELBO."""
    cov = W @ W.T + SIGMA**2 * torch.eye(D)
    return dist.MultivariateNormal(b, covariance_matrix=cov)


def per_point_elbo(model, guide, x: torch.Tensor) -> torch.Tensor:
    """One-sample ELBO of each data point, (N,)."""
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
        guide_trace.compute_log_prob()
        model_trace.compute_log_prob()
        elbo = model_trace.nodes["z"]["log_prob"] + model_trace.nodes["x"]["log_prob"]
        return elbo - guide_trace.nodes["z"]["log_prob"]


def assert_training_improved(model, guide, x, train, marginal):
    """``train()`` raises the true ELBO by more than four standard errors, and it stays below log p(x)."""
    pyro.set_rng_seed(1)
    before = per_point_elbo(model, guide, x)
    result = train()
    pyro.set_rng_seed(1)  # the same noise before and after: a paired comparison
    after = per_point_elbo(model, guide, x)
    assert all(math.isfinite(row["train_loss"]) for row in result.history)

    n = x.shape[0]
    # the loss (-ELBO) went down: the mean per-point gain beats four of its standard errors
    gain = after - before
    assert gain.mean() > 4 * gain.std() / math.sqrt(n)
    # and the ELBO is a lower bound on the trained model's own log p(x): the mean per-point
    # gap log p(x_n) - ELBO_n is >= 0 up to four standard errors of its Monte Carlo mean
    with torch.no_grad():
        gap = marginal().log_prob(x) - after
    assert gap.mean() > -4 * gap.std() / math.sqrt(n)
    return result


def test_a_plain_pyro_pair_trains_with_fit():
    def model(x):
        W = pyro.param("W", lambda: 0.01 * torch.randn(D, Z))
        b = pyro.param("b", lambda: torch.zeros(D))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, SIGMA).to_event(1), obs=x)

    def guide(x):
        A = pyro.param("A", lambda: torch.zeros(D, Z))
        scale = pyro.param("scale", lambda: torch.ones(Z), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ A, scale).to_event(1))

    x = synthetic.load("train").x[:500]
    result = assert_training_improved(
        model, guide, x,
        lambda: pyrovae.fit((model, guide), x, epochs=5, batch_size=50, lr=0.05, device="cpu", progress=False),
        lambda: ppca_marginal(pyro.param("W"), pyro.param("b")),
    )
    assert result.model == (model, guide)


class LinearVAE(nn.Module):
    """Probabilistic PCA with a linear encoder, written by a user as an nn.Module."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(Z, D)
        self.encoder = nn.Linear(D, 2 * Z)
        with torch.no_grad():
            self.decoder.weight.mul_(0.01)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), SIGMA).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw_scale) + 1e-3).to_event(1))


def test_an_nn_module_with_model_and_guide_trains_with_fit():
    user = LinearVAE()
    x = synthetic.load("train").x[:500]
    result = assert_training_improved(
        user.model, user.guide, x,
        lambda: pyrovae.fit(user, x, epochs=5, batch_size=50, lr=0.05, device="cpu", progress=False),
        lambda: ppca_marginal(user.decoder.weight, user.decoder.bias),
    )
    assert result.model is user
