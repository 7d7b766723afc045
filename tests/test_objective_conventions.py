"""Every objective follows Pyro's ELBO contract, and DReG is unbiased when the model reads the guide.

Pyro's contract (``Trace_ELBO``): on the same random draws (the same RNG state),
``loss``, the value of ``differentiable_loss`` and the return of ``loss_and_grads``
are one number, and ``differentiable_loss``'s gradient is the one
``loss_and_grads`` accumulates.  These are identities on one draw, so their
tolerances are float64 rounding (a sum taken in another order), not Monte Carlo
error.

DReG (Tucker et al. 2018) gives a direct parameter read of the model the IWAE
weight :math:`\\tilde w_k` and the path through :math:`z_k` the weight
:math:`\\tilde w_k^2`.  Models that call the encoder inside ``model`` (β-TCVAE,
capacity β-VAE, DIP-VAE) have such direct reads of guide parameters; weighting
them by :math:`\\tilde w_k^2` is biased, and so is the :math:`\\tilde w_k^2` path
when the guide's density enters the weight scaled (a β) or masked (β-TCVAE's
decomposition): only the unit-weight score may be reparameterized a second
time.  The tests below compare DReG's mean
gradient with IWAE's (the standard, unbiased estimator of the same bound's
gradient) over independent draws, and check the exact gradient at the exact
posterior, where :math:`\\log w` is constant in :math:`z`.
"""

from __future__ import annotations

import math
import types

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceGraph_ELBO
from pyro.infer.elbo import ELBOModule
from test_estimators import GUIDE_PARAMS, MODEL_PARAMS, LinearPair, flat, sampled_gradient, take_grads
from test_estimators import setup as linear_setup

import pyrovae
from pyrovae import OBJECTIVES
from pyrovae.objectives import DReG, make_objective
from pyrovae.objectives.importance import LogWeights

#: float64 rounding of one draw's terms summed in another order
SAME_DRAW = {"rtol": 1e-10, "atol": 1e-10}

#: objectives that need reparameterized guide sites (checked against the flag below)
NON_REPARAMETERIZED_CASES = ["elbo", "graph", "iwae", "renyi", "rws"]


def configured(name: str):
    elbo = make_objective(name)
    elbo.max_plate_nesting = 2  # as fit sets it; guessing would run the guide once and shift the draws
    return elbo


def state_of(elbo) -> dict[str, torch.Tensor]:
    """The objective's own state (GraphELBO's baselines), empty for the others."""
    return elbo.state_dict() if hasattr(elbo, "state_dict") else {}


# ------------------------------------------------------------------ Pyro's contract
CASES = [(name, True) for name in sorted(OBJECTIVES)] + [(name, False) for name in NON_REPARAMETERIZED_CASES]


@pytest.mark.parametrize(("name", "reparameterized"), CASES,
                         ids=[f"{n}{'' if r else '-score-function'}" for n, r in CASES])
def test_differentiable_loss_has_the_loss_value_and_the_loss_and_grads_gradient(name, reparameterized):
    pair, x = linear_setup(num_points=6, reparameterized=reparameterized)
    elbo = configured(name)
    assert getattr(elbo, "requires_reparameterized", False) is False or reparameterized
    with pyro.validation_enabled(False):
        for seed in (10, 11):  # two steps first: a baseline then has a non-trivial running average
            pyro.set_rng_seed(seed)
            elbo.loss_and_grads(pair.model, pair.guide, x)
        take_grads()
        before = state_of(elbo)

        pyro.set_rng_seed(0)
        loss = elbo.loss(pair.model, pair.guide, x)
        pyro.set_rng_seed(0)
        differentiable = elbo.differentiable_loss(pair.model, pair.guide, x)
        differentiable.backward()
        grads = flat(take_grads())
        after_differentiable = state_of(elbo)

        if before:  # the same baselines for the loss_and_grads step
            elbo.load_state_dict(before)
        pyro.set_rng_seed(0)
        returned = elbo.loss_and_grads(pair.model, pair.guide, x)
        reference = flat(take_grads())
        after_step = state_of(elbo)

    assert isinstance(differentiable, torch.Tensor) and differentiable.dim() == 0
    assert float(differentiable.detach()) == pytest.approx(loss, rel=1e-12)
    assert returned == pytest.approx(loss, rel=1e-12)
    torch.testing.assert_close(grads, reference, **SAME_DRAW)
    assert grads.abs().max() > 1e-3
    # baselines move once per call, as in a loss_and_grads step
    assert after_differentiable.keys() == after_step.keys()
    for key in after_step:
        torch.testing.assert_close(after_differentiable[key], after_step[key], **SAME_DRAW)
        assert not torch.equal(after_step[key], before[key])
    assert bool(after_step) == (name == "graph" and not reparameterized)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_steps_in_plain_pyro_svi(name):
    pair, x = linear_setup(num_points=6)
    elbo = configured(name)
    svi = SVI(pair.model, pair.guide, pyro.optim.Adam({"lr": 0.01}), loss=elbo)
    start = {k: pyro.param(k).detach().clone() for k in (*MODEL_PARAMS, *GUIDE_PARAMS)}
    with pyro.validation_enabled(False):
        pyro.set_rng_seed(0)
        expected = elbo.loss(pair.model, pair.guide, x)
        pyro.set_rng_seed(0)
        returned = svi.step(x)
        svi.step(x)
    assert returned == pytest.approx(expected, rel=1e-12)
    for key, value in start.items():
        assert not torch.equal(pyro.param(key).detach(), value), key


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_works_as_an_elbo_module(name):
    """``objective(model, guide)(x)`` is Pyro's ELBOModule: the loss's value, the step's gradient."""
    torch.manual_seed(0)
    vae = pyrovae.VAE(5, 2, hidden=(8,), likelihood="gaussian").double()
    x = torch.randn(8, 5, dtype=torch.float64)
    elbo = configured(name)
    module = elbo(vae.model, vae.guide)
    assert isinstance(module, ELBOModule)
    params = list(vae.parameters())
    with pyro.validation_enabled(False):
        pyro.set_rng_seed(0)
        loss = elbo.loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(0)
        value = module(x)
        grads = torch.autograd.grad(value, params, allow_unused=True)
        pyro.set_rng_seed(0)
        returned = elbo.loss_and_grads(vae.model, vae.guide, x)
    assert float(value.detach()) == pytest.approx(loss, rel=1e-12) and returned == pytest.approx(loss, rel=1e-12)
    for p, g in zip(params, grads):
        torch.testing.assert_close(g if g is not None else torch.zeros_like(p), p.grad, **SAME_DRAW)
    optimizer = torch.optim.SGD(params, lr=0.01)  # and a plain torch step moves the parameters
    before = [p.detach().clone() for p in params]
    optimizer.step()
    assert any(not torch.equal(p, b) for p, b in zip(params, before))


def test_graph_uses_pyros_private_loss_and_surrogate_loss_as_its_step():
    # Canary for a private Pyro name (GraphELBO.differentiable_loss): TraceGraph_ELBO's
    # ``_loss_and_surrogate_loss(model, guide, args, kwargs)`` returns (ELBO, surrogate loss).
    pair, x = linear_setup(num_points=3)
    elbo = TraceGraph_ELBO(max_plate_nesting=2)
    assert hasattr(elbo, "_loss_and_surrogate_loss"), "GraphELBO.differentiable_loss needs it"
    pyro.set_rng_seed(0)
    value, surrogate = elbo._loss_and_surrogate_loss(pair.model, pair.guide, (x,), {})
    pyro.set_rng_seed(0)
    assert -float(value.detach()) == pytest.approx(elbo.loss(pair.model, pair.guide, x), rel=1e-12)
    assert surrogate.requires_grad


# ------------------------------------------------------- DReG when the model reads q
#: gradient draws: test_estimators' NUM_BATCHES (40) means of REPLICAS (100) iid draws (the batch repeated)
#: weights of the two terms through which the model reads the guide's parameters A, c, L; a
#: penalty weight as large as DIP-VAE's (10 to 100) makes a wrong weighting of it stand out
PENALTY, DENSITY = 100.0, 0.5


def reading_model(pair: LinearPair, reads: str, density: float = DENSITY):
    """``pair.model`` plus a term that reads the guide's parameters, as the disentangling models do.

    ``reads``: ``"none"`` (the plain model), ``"param"`` (``pyro.param`` sites the guide
    shares) or ``"hidden"`` (the same tensors read without a param site: an encoder
    module the model calls without ``pyro.module``, like β-TCVAE's); ``density``
    weighs the term that reads :math:`z` too.
    """
    if reads == "none":
        return pair.model

    def model(x):
        W, b = pair.param("W"), pair.param("b")
        if reads == "hidden":
            with poutine.block():
                A, c, L = (pair.param(k) for k in GUIDE_PARAMS)
        else:
            A, c, L = (pair.param(k) for k in GUIDE_PARAMS)
        loc = x @ A.T + c
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(pair.lg.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, pair.lg.sigma).to_event(1), obs=x)
            # a DIP-VAE-like penalty on the encoder's mean, and a β-TCVAE-like log q(z | x) term
            pyro.factor("reads_q", -0.5 * PENALTY * loc.pow(2).sum(-1)
                        + density * dist.MultivariateNormal(loc, scale_tril=L).log_prob(z))

    return model


def gradient_draws(elbo, model, guide, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, standard error) over 40 batch means of the loss's gradient per data point."""
    return sampled_gradient(elbo, types.SimpleNamespace(model=model, guide=guide), x, seed=seed)


def z_scores(mean: torch.Tensor, se: torch.Tensor, reference: torch.Tensor, reference_se: torch.Tensor) -> torch.Tensor:
    """|difference of two independent means| in standard errors of the difference."""
    diff, se = (mean - reference).abs(), torch.sqrt(se**2 + reference_se**2)
    # a coordinate no parameter uses (the unconstrained L's upper triangle) has zero gradient and zero SE
    return torch.where(se > 0, diff / se, torch.where(diff == 0, 0.0, math.inf))


class DirectReadsSquared(DReG):
    """The former, biased DReG: the guide's parameters get w̃² on every term, direct model reads included."""

    def _surrogate(self, w: LogWeights, model, guide, args, kwargs) -> torch.Tensor:
        weights = self._normalized(w.log_w)
        fixed = self._score_at_fixed_values(w, args, kwargs, guide)
        return (weights**2 * (w.log_p - (w.log_q - fixed + fixed.detach()))).sum(0)


def scaled_programs(pair: LinearPair, weight: float):
    """The pair with ``"z"`` under ``kl_scale(weight)`` in both programs; with weight 0 (masked) the
    model's factor puts the single-sample KL back, reading q directly, as β-TCVAE's decomposition does."""

    def model(x):
        W, b = pair.param("W"), pair.param("b")
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(pair.lg.z_dim), 1.0).to_event(1)
            with pyrovae.kl_scale(weight):
                z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z @ W.T + b, pair.lg.sigma).to_event(1), obs=x)
            if weight == 0:
                A, c, L = (pair.param(k) for k in GUIDE_PARAMS)
                q = dist.MultivariateNormal(x @ A.T + c, scale_tril=L)
                pyro.factor("kl", prior.log_prob(z) - q.log_prob(z))

    def guide(x):
        with pyrovae.kl_scale(weight):
            pair.guide(x)

    return model, guide


CASES_READING_Q = ["none", "param", "hidden", "beta-4", "masked"]


@pytest.mark.parametrize("case", CASES_READING_Q)
def test_dreg_mean_gradient_agrees_with_iwae_when_the_model_reads_the_guide(case):
    # Both estimate the gradient of the same IWAE-5 bound; IWAE's standard estimator is unbiased.
    # 4 SEs of the difference of two independent means: with ~30 coordinates and SEs from 40 batch
    # means (t with 39 d.o.f.), a correct estimator fails a given seed with probability about 1 %.
    pair, x = linear_setup(num_points=4)
    if case in ("beta-4", "masked"):  # the guide's log q enters the weight scaled by 4, or not at all
        model, guide = scaled_programs(pair, 4.0 if case == "beta-4" else 0.0)
    else:
        model, guide = reading_model(pair, case), pair.guide
    reference, reference_se = gradient_draws(make_objective("iwae", num_particles=5), model, guide, x, seed=0)
    mean, se = gradient_draws(make_objective("dreg", num_particles=5), model, guide, x, seed=1)
    z = z_scores(mean, se, reference, reference_se)
    assert float(z.max()) < 4, f"max |z| = {float(z.max()):.2f} at coordinate {int(z.argmax())}"
    assert bool((reference.abs() > 4 * reference_se).any())  # power: the gradient is not noise around zero


def test_weighting_the_models_direct_reads_by_squared_weights_is_caught():
    # the power of the test above: the former estimator (w̃² on the direct reads too) is many SEs off
    pair, x = linear_setup(num_points=4)
    model = reading_model(pair, "hidden")
    reference, reference_se = gradient_draws(make_objective("iwae", num_particles=5), model, pair.guide, x, seed=0)
    mean, se = gradient_draws(DirectReadsSquared(5), model, pair.guide, x, seed=1)
    guide_part = slice(sum(pyro.param(k).unconstrained().numel() for k in MODEL_PARAMS), None)
    assert float(z_scores(mean, se, reference, reference_se)[guide_part].max()) > 12  # measured: 27


# ---------------------------------------------------------------- the exact posterior
@pytest.mark.parametrize("seed", [0, 1])
def test_dreg_guide_gradient_is_exactly_zero_at_the_exact_posterior(seed):
    # log w = log p(x) for every z: the pathwise term vanishes on every draw, and nothing else reaches q
    pair, x = linear_setup(num_points=8, at_posterior=True)
    pyro.set_rng_seed(seed)
    configured("dreg").differentiable_loss(pair.model, pair.guide, x).backward()
    grads = take_grads()
    for name in GUIDE_PARAMS:
        assert grads[name].abs().max() < 1e-10, name
    assert max(grads[name].abs().max() for name in MODEL_PARAMS) > 1e-3


@pytest.mark.parametrize("reads", ["param", "hidden"])
def test_dreg_gives_a_z_free_read_of_the_guide_its_exact_gradient_at_the_posterior(reads):
    # With a z-free penalty f(A x + c) in the model, log w is still constant in z at the exact
    # posterior, all K weights are 1/K, and the guide's gradient is exactly the penalty's: sum_k w_k = 1
    # times grad f on every draw (the former estimator gave sum_k w_k^2 = 1/K of it).
    pair, x = linear_setup(num_points=8, at_posterior=True)
    model = reading_model(pair, reads, density=0.0)  # only the z-free penalty
    pyro.set_rng_seed(0)
    configured("dreg").differentiable_loss(model, pair.guide, x).backward()
    grads = take_grads()
    A, c = pyro.param("A"), pyro.param("c")
    (0.5 * PENALTY * (x @ A.T + c).pow(2).sum()).backward()  # minus the penalty, as a loss
    expected = take_grads(("A", "c"))
    for name in ("A", "c"):
        torch.testing.assert_close(grads[name], expected[name], **SAME_DRAW)
    assert grads["L"].abs().max() < 1e-10


def test_dreg_refuses_a_model_that_is_not_a_function_of_its_sample_sites():
    # the rerun at the drawn latents must reproduce log p, or the surrogate's brackets do not cancel
    pair, x = linear_setup(num_points=3)

    def noisy_model(x):
        W, b = pair.param("W"), pair.param("b")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(pair.lg.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, pair.lg.sigma).to_event(1), obs=x)
            pyro.factor("noise", torch.randn(x.shape[0], dtype=x.dtype))  # a draw outside pyro.sample

    with pytest.raises(ValueError, match="deterministic function of its sample sites"):
        configured("dreg").loss_and_grads(noisy_model, pair.guide, x)
