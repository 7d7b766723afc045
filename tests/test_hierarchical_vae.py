"""HierarchicalVAE: two stochastic layers, checked against a linear-Gaussian instance's exact log p(x)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample

import pyrovae
from pyrovae import MODELS
from pyrovae.models.hierarchical_vae import HierarchicalVAE

D, Z1, Z2, SIGMA = 4, 2, 1, 0.5


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def set_linear(layer: torch.nn.Linear, loc_weight, loc_bias, scale=None) -> None:
    """A one-layer MLP's heads: ``loc`` linear in the input, ``scale`` (if any) a constant."""
    with torch.no_grad():
        k = loc_weight.shape[0]
        layer.weight.zero_()
        layer.weight[:k] = loc_weight
        layer.bias[:k] = loc_bias
        if scale is not None:
            layer.bias[k:] = inverse_softplus(scale - 1e-5)


def linear_gaussian(seed: int = 0):
    """A two-layer instance whose networks are linear and whose conditional scales are constants.

    z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, S^2), x | z1 ~ N(B z1 + b, sigma^2 I), so
    x ~ N(B a + b, B (A A^T + S^2) B^T + sigma^2 I) exactly.  The guide is set near the exact
    posterior (its means, and its marginal standard deviations widened 1.5x: a proposal wider
    than the target keeps the importance weights' variance finite).
    """
    g = torch.Generator().manual_seed(seed)
    A, a = torch.randn(Z1, Z2, generator=g), torch.randn(Z1, generator=g)
    S = 0.5 + torch.rand(Z1, generator=g)
    B, b = torch.randn(D, Z1, generator=g), torch.randn(D, generator=g)
    vae = HierarchicalVAE(x_shape=(D,), z_dim=Z2, z1_dim=Z1, hidden=(), top_hidden=(),
                          likelihood="gaussian", likelihood_scale=SIGMA)
    set_linear(vae.upper_decoder.net[0], A, a, S)
    set_linear(vae.decoder.net[0], B, b)
    # q(z1 | x): the exact p(z1 | x) = N(M x + m, P) with P = (C^-1 + B^T B / sigma^2)^-1
    C = A @ A.T + torch.diag(S**2)
    P = torch.linalg.inv(torch.linalg.inv(C) + B.T @ B / SIGMA**2)
    M = P @ B.T / SIGMA**2
    set_linear(vae.encoder.net[0], M, P @ torch.linalg.solve(C, a) - M @ b, 1.5 * P.diagonal().sqrt())
    # q(z2 | z1): the exact p(z2 | z1) = N(R (z1 - a), Q) with Q = (I + A^T S^-2 A)^-1
    Q = torch.linalg.inv(torch.eye(Z2) + A.T @ torch.diag(S**-2) @ A)
    R = Q @ A.T @ torch.diag(S**-2)
    set_linear(vae.upper_encoder.net[0], R, -R @ a, 1.5 * Q.diagonal().sqrt())
    marginal = dist.MultivariateNormal(B @ a + b, covariance_matrix=B @ C @ B.T + SIGMA**2 * torch.eye(D))
    return vae, marginal


def test_log_likelihood_matches_the_exact_marginal_of_a_linear_gaussian_instance():
    vae, marginal = linear_gaussian()
    x = marginal.sample((50,))
    result = pyrovae.log_likelihood(vae, x, num_samples=2000, seed=0)
    exact = marginal.log_prob(x)
    # each point within 5 of its Monte Carlo standard errors (the delta-method se; the estimator's
    # downward bias is O(var / K), far below it), and the mean within 4 standard errors of the mean
    assert (result.log_px - exact).abs().max() < 5 * result.stderr.max()
    se_mean = result.stderr.pow(2).sum().sqrt() / len(x)
    assert abs(float(result.log_px.mean() - exact.mean())) < 4 * float(se_mean) + 1e-4
    assert float(se_mean) < 0.01  # the proposal is good, so the check is sharp


def test_the_elbo_is_below_the_exact_marginal():
    vae, marginal = linear_gaussian(seed=1)
    x = marginal.sample((200,))
    pyro.set_rng_seed(0)
    elbo = -Trace_ELBO(num_particles=200, vectorize_particles=True).loss(vae.model, vae.guide, x) / len(x)
    # the gap is the mean KL(q || p(z | x)) > 0 (the guide is widened and mean-field); the
    # ELBO's Monte Carlo se with 200 x 200 draws is ~0.01 nats, far below the gap asserted
    assert elbo < float(marginal.log_prob(x).mean()) - 0.05


@pytest.mark.parametrize(("guide_type", "order"), [("bottom_up", ["z1", "z2"]), ("ladder", ["z2", "z1"])])
def test_kl_weight_scales_both_latent_sites_of_model_and_guide(guide_type, order):
    vae = HierarchicalVAE(x_shape=(6,), z_dim=2, z1_dim=3, hidden=(4,), top_hidden=(4,), guide_type=guide_type)
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    guide = poutine.trace(vae.guide).get_trace(x, kl_weight=0.3)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, kl_weight=0.3)
    # the bottom-up guide draws z1 first, the ladder guide z2 first (top-down, like the model)
    assert [n for n, s in guide.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)] == order
    for trace in (guide, model):
        for name in ("z1", "z2"):
            assert trace.nodes[name]["scale"] == pytest.approx(0.3)
    assert model.nodes["x"]["scale"] == 1.0 and model.nodes["x"]["is_observed"]


def test_defaults_are_burda_et_al_two_layer_architecture():
    vae = HierarchicalVAE()
    shapes = {k: tuple(v.shape) for k, v in vae.named_parameters()}
    # x -> 200 -> 200 -> (loc, scale) of z1 (100); z1 -> 100 -> 100 -> z2 (50); and back
    assert [shapes[f"encoder.net.{i}.weight"] for i in (0, 2, 4)] == [(200, 784), (200, 200), (200, 200)]
    assert [shapes[f"upper_encoder.net.{i}.weight"] for i in (0, 2, 4)] == [(100, 100), (100, 100), (100, 100)]
    assert [shapes[f"upper_decoder.net.{i}.weight"] for i in (0, 2, 4)] == [(100, 50), (100, 100), (200, 100)]
    assert [shapes[f"decoder.net.{i}.weight"] for i in (0, 2, 4)] == [(200, 100), (200, 200), (784, 200)]
    assert isinstance(vae.encoder.net[1], torch.nn.Tanh)
    assert vae.prior().event_shape == (50,) and vae.sample(3).shape == (3, 784)
    assert vae.reconstruct(torch.zeros(2, 784)).shape == (2, 784)
    assert MODELS["hierarchical_vae"] is HierarchicalVAE
    assert vae.upper_posterior_mean(torch.zeros(2, 784), num_samples=4).shape == (2, 50)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"z1_dim": 0}, "Expected z1_dim to be an int >= 1, got 0"),
     ({"z_dim": 2.0}, "Expected z_dim to be an int >= 1, got 2.0"),
     ({"top_hidden": "100"}, "Expected top_hidden to be a sequence of positive ints, e.g. (100, 100), got '100'")],
    ids=["z1_dim", "z_dim", "top_hidden"],
)
def test_bad_sizes_are_refused_naming_the_argument(options, message):
    with pytest.raises(ValueError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
        HierarchicalVAE(**{"x_shape": (6,), **options})


def test_iwae_trains_it_and_the_bound_ordering_holds_on_the_trained_model():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(1, 12).expand(256, 12))
    vae = HierarchicalVAE(x_shape=(12,), z_dim=2, z1_dim=3, hidden=(16,), top_hidden=(8,))
    result = pyrovae.fit(vae, x, objective="iwae", num_particles=5, epochs=3, batch_size=32, lr=1e-2,
                         device="cpu", progress=False)
    assert math.isfinite(result.final["train_loss"])
    ll = pyrovae.log_likelihood(vae, x[:64], num_samples=200, bounds=(1, 10), seed=0)
    # L_1 <= L_10 <= log p(x), each up to Monte Carlo noise (3 standard errors of the mean)
    se = float(ll.stderr.pow(2).sum().sqrt()) / 64
    assert ll.bounds[1].mean <= ll.bounds[10].mean + 3 * se
    assert ll.bounds[10].mean <= ll.mean + 3 * se


@pytest.mark.parametrize("objective", ["meanfield", "free_bits"])
def test_closed_form_kl_objectives_are_refused_for_the_hierarchical_guide(objective):
    """q(z2 | z1) reads a latent: TraceMeanField_ELBO's per-site analytic KL (and free bits') would be biased."""
    model = HierarchicalVAE((6,), z_dim=2, z1_dim=3, hidden=(8,), top_hidden=(8,))
    with pytest.raises(ValueError, match="mean_field_guide is False"):
        pyrovae.fit(model, torch.rand(10, 6).round(), objective=objective, epochs=1, progress=False, device="cpu")


# ------------------------------------------------------------------ the ladder guide
def linear_gaussian_ladder(seed: int = 0):
    """A linear-Gaussian instance on which the ladder guide *is* the exact posterior.

    As :func:`linear_gaussian` with one z2 and a decoder whose columns are orthogonal
    (B^T B = diag(c^2)): then p(x | z1) as a function of z1 is N(u; z1, Lambda) with
    u = C^-1 B^T (x - b) and the diagonal Lambda = sigma^2 C^-1, so the bottom-up estimate
    (u, Lambda^1/2) combined by precision with p(z1 | z2) is p(z1 | z2, x) exactly, and
    p(z2 | x) = p(z2 | u) = N(R (u - a), Q) with Q = (1 + A^T (S^2 + Lambda)^-1 A)^-1.  Every
    importance weight is then p(x) itself.
    """
    g = torch.Generator().manual_seed(seed)
    A, a = torch.randn(Z1, Z2, generator=g), torch.randn(Z1, generator=g)
    S = 0.5 + torch.rand(Z1, generator=g)
    columns, _ = torch.linalg.qr(torch.randn(D, Z1, generator=g))
    c = 0.5 + torch.rand(Z1, generator=g)
    B, b = columns * c, torch.randn(D, generator=g)
    vae = HierarchicalVAE(x_shape=(D,), z_dim=Z2, z1_dim=Z1, hidden=(), top_hidden=(),
                          likelihood="gaussian", likelihood_scale=SIGMA, guide_type="ladder")
    set_linear(vae.upper_decoder.net[0], A, a, S)
    set_linear(vae.decoder.net[0], B, b)
    M = B.T / c[:, None] ** 2
    Lam = SIGMA**2 / c**2
    set_linear(vae.encoder.net[0], M, -M @ b, Lam.sqrt())
    Q = torch.linalg.inv(torch.eye(Z2) + A.T @ torch.diag(1 / (S**2 + Lam)) @ A)
    R = Q @ A.T @ torch.diag(1 / (S**2 + Lam))
    set_linear(vae.upper_encoder.net[0], R, -R @ a, Q.diagonal().sqrt())
    C = A @ A.T + torch.diag(S**2)
    marginal = dist.MultivariateNormal(B @ a + b, covariance_matrix=B @ C @ B.T + SIGMA**2 * torch.eye(D))
    return vae, marginal


def test_ladder_guide_set_to_the_exact_posterior_gives_log_px_with_zero_variance():
    """Every importance weight equals p(x) when the ladder's precision-weighted q(z1 | z2, x) and
    its q(z2 | x) are the exact posterior: the estimate matches the closed form to float32
    round-off (1e-3 nats over log-densities of about -10) and its standard error is ~0.  A wrong
    combination rule (e.g. scales instead of precisions) leaves a gap of whole nats."""
    vae, marginal = linear_gaussian_ladder()
    x = marginal.sample((40,))
    result = pyrovae.log_likelihood(vae, x, num_samples=50, seed=0)
    assert torch.allclose(result.log_px.double(), marginal.log_prob(x).double(), atol=1e-3)
    assert float(result.stderr.max()) < 1e-3


def test_ladder_guide_shares_the_model_network_and_refuses_a_closed_form_q_z1():
    vae = HierarchicalVAE(x_shape=(6,), z_dim=2, z1_dim=3, hidden=(4,), top_hidden=(4,), guide_type="ladder")
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    guide = poutine.trace(vae.guide).get_trace(x)
    params = {n for n, s in guide.nodes.items() if s["type"] == "param"}
    assert any(".upper_decoder$$$" in n for n in params), "the ladder guide reads p(z1 | z2)"
    # same networks as the bottom-up guide: the two are comparable at equal parameter count
    bottom_up = HierarchicalVAE(x_shape=(6,), z_dim=2, z1_dim=3, hidden=(4,), top_hidden=(4,))
    assert sum(p.numel() for p in vae.parameters()) == sum(p.numel() for p in bottom_up.parameters())
    assert MODELS["hierarchical_vae"](**vae.config).guide_type == "ladder"
    with pytest.raises(ValueError, match=r"guide_type to be one of \('bottom_up', 'ladder'\), got 'top_down'"):
        HierarchicalVAE(x_shape=(6,), guide_type="top_down")
    with pytest.raises(ValueError, match=r"no closed-form q\(z1 \| x\).*layer_means"):
        vae.posterior(x)


def test_ladder_guide_trains_with_iwae_and_reports_layer_means():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(1, 12).expand(256, 12))
    vae = HierarchicalVAE(x_shape=(12,), z_dim=2, z1_dim=3, hidden=(16,), top_hidden=(8,), guide_type="ladder")
    before = pyrovae.log_likelihood(vae, x[:64], num_samples=200, seed=0).mean
    result = pyrovae.fit(vae, x, objective="iwae", num_particles=5, epochs=3, batch_size=32, lr=1e-2,
                         device="cpu", progress=False)
    assert math.isfinite(result.final["train_loss"])
    after = pyrovae.log_likelihood(vae, x[:64], num_samples=200, seed=0)
    # training on one repeated pattern moves log p(x) by nats; the estimate's se is ~0.01 nats
    assert after.mean > before + 1.0
    z1_mean, z2_mean = vae.layer_means(x[:10], num_samples=8)
    assert z1_mean.shape == (10, 3) and z2_mean.shape == (10, 2)
    assert torch.equal(z2_mean, vae.ladder_posteriors(x[:10])[0].mean)
    assert vae.reconstruct(x[:4]).shape == (4, 12) and vae.sample(2).shape == (2, 12)
