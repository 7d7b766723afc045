"""Exactness: estimators and handlers against closed forms.

The reference model is :class:`pyrovae.datasets.synthetic.LinearGaussian`
(probabilistic PCA), whose marginal log p(x) and posterior p(z | x) are known
exactly.  All data here are float64 so that "exact" means agreement to ~1e-8,
not to float32 round-off.  Monte Carlo comparisons use fixed seeds and a
tolerance of four standard errors computed from the samples themselves.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

import pyrovae
from pyrovae.datasets.synthetic import LinearGaussian
from pyrovae.handlers import plate_scale

#: float64 agreement expected of identities that hold sample by sample
EXACT = {"rtol": 1e-10, "atol": 1e-8}


# ---------------------------------------------------------------- helpers
def linear_gaussian_data(num_data: int = 20, seed: int = 0) -> tuple[LinearGaussian, torch.Tensor]:
    lg = LinearGaussian(x_dim=5, z_dim=2, sigma=0.5, seed=0)
    x = lg.sample(num_data, generator=torch.Generator().manual_seed(seed))
    assert x.dtype == torch.float64
    return lg, x


def diagonal_guide(lg: LinearGaussian, shift: float = 0.3, widen: float = 1.5):
    """A deliberately wrong guide: the exact posterior's marginals, shifted and widened.

    Returns the guide and a function giving its (loc, scale) for data x.
    """

    def loc_scale(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        post = lg.posterior(x)
        return post.loc + shift, widen * post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()

    def guide(x: torch.Tensor) -> None:
        loc, scale = loc_scale(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return guide, loc_scale


def traces(model, guide, *args, **kwargs) -> tuple[poutine.Trace, poutine.Trace]:
    """One guide sample and the model replayed on it, with per-site log-probs computed."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    return model_trace, guide_trace


def log_weights(model, guide, *args, **kwargs) -> torch.Tensor:
    """Per-data-point log p(x, z) - log q(z | x) for one guide sample (scales and masks applied)."""
    model_trace, guide_trace = traces(model, guide, *args, **kwargs)
    total = 0.0
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            total = total + site["log_prob"]
    for site in guide_trace.nodes.values():
        if site["type"] == "sample":
            total = total - site["log_prob"]
    return total


def closed_form_elbo(lg: LinearGaussian, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""Sum over points of the ELBO of q(z|x) = N(loc, diag(scale^2)) under the linear-Gaussian model.

    E_q log p(x|z) = -D/2 log(2 pi sigma^2) - (|x - W loc - b|^2 + sum_j scale_j^2 |W_j|^2) / (2 sigma^2)
    KL(q || N(0, I)) = 1/2 sum_j (scale_j^2 + loc_j^2 - 1 - 2 log scale_j)
    """
    var = lg.sigma**2
    residual = x - loc @ lg.W.T - lg.b
    spread = (scale**2 * (lg.W**2).sum(0)).sum(-1)
    expected_log_lik = -0.5 * lg.x_dim * math.log(2 * math.pi * var) - ((residual**2).sum(-1) + spread) / (2 * var)
    kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1)
    return (expected_log_lik - kl).sum()


def particle_traces(model, guide, x, num_particles: int) -> tuple[poutine.Trace, poutine.Trace]:
    """:func:`traces` for ``num_particles`` guide samples drawn at once, in a plate left of
    the data plate (the layout of Pyro's vectorized ELBOs); log-probs are (particles, data)."""

    def vectorized(fn):
        def wrapped(*args, **kwargs):
            with pyro.plate("particles", num_particles, dim=-2):
                return fn(*args, **kwargs)

        return wrapped

    return traces(vectorized(model), vectorized(guide), x)


def small_vae(likelihood: str = "gaussian") -> pyrovae.VAE:
    """A small float64 VAE on (6,) data."""
    return pyrovae.VAE(x_shape=(6,), z_dim=3, hidden=(16,), arch="mlp", likelihood=likelihood).double()


# ------------------------------------------------- the exact guide: zero variance
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_exact_posterior_guide_makes_every_single_sample_elbo_equal_log_px(seed):
    lg, x = linear_gaussian_data(seed=seed)
    log_px = lg.log_prob(x)

    pyro.set_rng_seed(seed)
    loss = Trace_ELBO().loss(lg.model, lg.guide, x)
    torch.testing.assert_close(torch.tensor(-loss, dtype=torch.float64), log_px.sum(), **EXACT)

    # per point: log p(x_n, z_n) - log q(z_n | x_n) = log p(x_n) for whatever z_n was drawn
    pyro.set_rng_seed(seed + 100)
    torch.testing.assert_close(log_weights(lg.model, lg.guide, x), log_px, **EXACT)


@pytest.mark.parametrize("objective", sorted(pyrovae.OBJECTIVES))
def test_exact_posterior_guide_gives_log_px_under_every_objective(objective):
    # With constant log-weights every bound (ELBO, IWAE, Renyi of any order) equals log p(x).
    lg, x = linear_gaussian_data()
    elbo = pyrovae.make_objective(objective)
    elbo.max_plate_nesting = 2  # the data plate, and a vectorized particle plate left of it
    loss = elbo.loss(lg.model, lg.guide, x)
    torch.testing.assert_close(torch.tensor(-loss, dtype=torch.float64), lg.log_prob(x).sum(), **EXACT)


def test_linear_gaussian_closed_forms_agree():
    # ELBO(q) = log p(x) - KL(q || p(z|x)) exactly; this ties .log_prob to .posterior
    # and checks closed_form_elbo, the reference of the Monte Carlo tests below.
    lg, x = linear_gaussian_data()
    _, loc_scale = diagonal_guide(lg)
    loc, scale = loc_scale(x)
    q = dist.MultivariateNormal(loc, scale_tril=torch.diag_embed(scale))
    gap = kl_divergence(q, lg.posterior(x)).sum()
    assert gap > 1.0  # the guide is far from exact, so the comparisons below are not trivial
    torch.testing.assert_close(closed_form_elbo(lg, x, loc, scale), lg.log_prob(x).sum() - gap, **EXACT)


# ------------------------------------------------ identities between estimators
#: pyrovae's one-particle bounds, each the ELBO (pyro.infer.RenyiELBO's own identity is Pyro's to test)
ONE_PARTICLE_BOUNDS = {
    "iwae": lambda: pyrovae.make_objective("iwae", num_particles=1),
    "renyi alpha=0": lambda: pyrovae.make_objective("renyi", alpha=0.0, num_particles=1),
    "renyi alpha=0.5": lambda: pyrovae.make_objective("renyi", alpha=0.5, num_particles=1),
}


@pytest.mark.parametrize("implementation", sorted(ONE_PARTICLE_BOUNDS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_renyi_one_particle_equals_trace_elbo(implementation, seed):
    lg, x = linear_gaussian_data()
    guide, _ = diagonal_guide(lg)

    pyro.set_rng_seed(seed)
    trace_loss = Trace_ELBO().loss(lg.model, guide, x)
    renyi = ONE_PARTICLE_BOUNDS[implementation]()
    renyi.max_plate_nesting = 2
    pyro.set_rng_seed(seed)
    renyi_loss = renyi.loss(lg.model, guide, x)

    # the guide is not exact, so the loss is random and differs from -log p(x) ...
    assert abs(trace_loss + lg.log_prob(x).sum().item()) > 1.0
    # ... but both estimators see the same sample and agree on it
    assert renyi_loss == pytest.approx(trace_loss, rel=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_pyrovae_renyi_bound_agrees_with_pyro_without_minibatch_scale(alpha):
    # Both normalize the weights over the particles of each data point; they differ only
    # under a plate scale (see test_plate_scale_multiplies_the_minibatch_loss).
    lg, x = linear_gaussian_data()
    guide, _ = diagonal_guide(lg)
    ours = pyrovae.make_objective("renyi", alpha=alpha, num_particles=5)
    ours.max_plate_nesting = 2
    pyros = RenyiELBO(alpha=alpha, num_particles=5, vectorize_particles=True, max_plate_nesting=2)
    pyro.set_rng_seed(0)
    expected = pyros.loss(lg.model, guide, x)
    pyro.set_rng_seed(0)
    assert ours.loss(lg.model, guide, x) == pytest.approx(expected, rel=1e-12)


def hand_derived_bound_and_gradients(
    lg: LinearGaussian, x: torch.Tensor, z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, alpha: float
) -> tuple[float, torch.Tensor, torch.Tensor]:
    r"""The Rényi loss at the drawn particles ``z`` (K, N, d) of q = N(loc, diag(scale^2)), and its
    gradients in the guide's ``shift`` and unconstrained ``log scale``, by hand.

    With :math:`z = m_n + \text{shift} + s \odot \epsilon` and
    :math:`g_{nk} = \nabla_z \log p(x_n, z_{nk}) = W^\top (x_n - W z_{nk} - b) / \sigma^2 - z_{nk}`,
    :math:`\log q(z \mid x_n) = \log\mathcal N(\epsilon; 0, I) - \sum_j \log s_j`, so
    :math:`\partial \log w_{nk} / \partial\,\text{shift} = g_{nk}` and
    :math:`\partial \log w_{nk} / \partial \log s_j = g_{nkj} (z_{nkj} - \text{loc}_{nj}) + 1`.
    The loss :math:`-\sum_n \frac{1}{1-\alpha} \log \frac1K \sum_k w_{nk}^{1-\alpha}` has gradient
    :math:`-\sum_n \sum_k \tilde w_{nk} \nabla \log w_{nk}`, :math:`\tilde w_{nk} \propto w_{nk}^{1-\alpha}` over k.
    """
    var = lg.sigma**2
    residual = x - z @ lg.W.T - lg.b  # (K, N, D)
    log_lik = -0.5 * lg.x_dim * math.log(2 * math.pi * var) - (residual**2).sum(-1) / (2 * var)
    log_prior = -0.5 * lg.z_dim * math.log(2 * math.pi) - 0.5 * (z**2).sum(-1)
    eps = (z - loc) / scale
    log_q = -0.5 * lg.z_dim * math.log(2 * math.pi) - 0.5 * (eps**2).sum(-1) - scale.log().sum(-1)
    log_w = log_lik + log_prior - log_q  # (K, N)
    a = 1.0 - alpha
    bound = (torch.logsumexp(a * log_w, dim=0) - math.log(z.shape[0])) / a  # (N,)
    weights = torch.softmax(a * log_w, dim=0).unsqueeze(-1)  # normalized over the particles of each point
    g = residual @ lg.W / var - z  # (K, N, d)
    grad_shift = -(weights * g).sum((0, 1))
    grad_log_scale = -(weights * (g * (z - loc) + 1)).sum((0, 1))
    return -bound.sum().item(), grad_shift, grad_log_scale


@pytest.mark.parametrize(
    ("objective", "options"),
    [
        ("iwae", {"num_particles": 1}),
        ("renyi", {"alpha": 0.5, "num_particles": 1}),
        ("iwae", {"num_particles": 5}),
        ("renyi", {"alpha": 0.5, "num_particles": 5}),
        ("renyi", {"alpha": -1.0, "num_particles": 5}),
    ],
    ids=["iwae-1", "renyi-0.5-1", "iwae-5", "renyi-0.5-5", "renyi-minus1-5"],
)
@pytest.mark.parametrize("seed", [0, 7])
def test_renyi_bound_loss_and_gradients_equal_the_hand_derived_ones_draw_for_draw(objective, options, seed):
    # With K = 1 this is the ELBO's single-sample value and gradient, for any alpha (the identity
    # RenyiBound(alpha, K=1) = Trace_ELBO, checked here against the closed form, not against Pyro).
    lg, x = linear_gaussian_data()
    drawn = []

    def guide(x):
        shift = pyro.param("shift", torch.full((lg.z_dim,), 0.3, dtype=torch.float64))
        scale = pyro.param("scale", torch.tensor([0.5, 0.8], dtype=torch.float64), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(lg.posterior(x).loc + shift, scale).to_event(1))
        drawn.append(z.detach())

    pyro.clear_param_store()
    elbo = pyrovae.make_objective(objective, **options)
    elbo.max_plate_nesting = 2  # the data plate, and a vectorized particle plate left of it
    pyro.set_rng_seed(seed)
    loss = elbo.loss_and_grads(lg.model, guide, x)

    z = drawn[-1].reshape(options["num_particles"], x.shape[0], lg.z_dim)
    loc = lg.posterior(x).loc + pyro.param("shift").detach()
    expected_loss, grad_shift, grad_log_scale = hand_derived_bound_and_gradients(
        lg, x, z, loc, pyro.param("scale").detach(), options.get("alpha", 0.0)
    )
    # the guide is off the posterior, so neither gradient is trivially zero
    assert grad_shift.abs().min() > 0.1 and grad_log_scale.abs().min() > 0.1
    assert loss == pytest.approx(expected_loss, rel=1e-10)
    torch.testing.assert_close(pyro.param("shift").unconstrained().grad, grad_shift, **EXACT)
    torch.testing.assert_close(pyro.param("scale").unconstrained().grad, grad_log_scale, **EXACT)


def test_meanfield_is_reconstruction_plus_analytic_kl_sample_by_sample():
    lg, x = linear_gaussian_data()
    guide, loc_scale = diagonal_guide(lg)
    loc, scale = loc_scale(x)
    kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum()  # KL(N(loc, scale^2) || N(0, 1)) by hand
    for seed in range(3):
        pyro.set_rng_seed(seed)
        loss = TraceMeanField_ELBO().loss(lg.model, guide, x)
        pyro.set_rng_seed(seed)
        model_trace, _ = traces(lg.model, guide, x)
        reconstruction = model_trace.nodes["x"]["log_prob_sum"]
        assert loss == pytest.approx((kl - reconstruction).item(), rel=1e-10)


def test_meanfield_analytic_kl_matches_monte_carlo_trace_elbo():
    lg, x = linear_gaussian_data()
    guide, loc_scale = diagonal_guide(lg)
    num_particles = 4000
    options = {"num_particles": num_particles, "vectorize_particles": True, "max_plate_nesting": 2}
    pyro.set_rng_seed(0)
    trace_loss = Trace_ELBO(**options).loss(lg.model, guide, x)
    pyro.set_rng_seed(0)
    meanfield_loss = TraceMeanField_ELBO(**options).loss(lg.model, guide, x)

    # the same particles one by one (same seed and plate layout, so the same z)
    pyro.set_rng_seed(0)
    model_trace, guide_trace = particle_traces(lg.model, guide, x, num_particles)
    reconstruction = model_trace.nodes["x"]["log_prob"].sum(-1)
    kl_samples = (guide_trace.nodes["z"]["log_prob"] - model_trace.nodes["z"]["log_prob"]).sum(-1)
    loss_samples = kl_samples - reconstruction
    assert loss_samples.mean().item() == pytest.approx(trace_loss, rel=1e-10)

    # Same reconstruction samples, so meanfield - Trace_ELBO = KL_analytic - mean(single-sample KL):
    # zero up to the Monte Carlo error of the mean of kl_samples.
    tol = 4 * kl_samples.std().item() / math.sqrt(num_particles)
    assert kl_samples.std() > 1.0  # the single-sample KL really is random
    assert abs(meanfield_loss - trace_loss) < tol
    loc, scale = loc_scale(x)
    analytic_kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum().item()
    assert abs(kl_samples.mean().item() - analytic_kl) < tol

    # Both estimators are unbiased for the closed-form negative ELBO.
    expected = -closed_form_elbo(lg, x, loc, scale).item()
    tol = 4 * loss_samples.std().item() / math.sqrt(num_particles)
    assert abs(trace_loss - expected) < tol
    tol = 4 * reconstruction.std().item() / math.sqrt(num_particles)
    assert abs(meanfield_loss - expected) < tol


# ---------------------------------------------------------------- the β identity
def single_sample_kl(vae: pyrovae.VAE, x: torch.Tensor) -> torch.Tensor:
    """log q(z|x) - log p(z) at one guide sample, with the true model (kl_weight = 1)."""
    model_trace, guide_trace = traces(vae.model, vae.guide, x)
    return guide_trace.nodes["z"]["log_prob_sum"] - model_trace.nodes["z"]["log_prob_sum"]


@pytest.mark.parametrize("beta", [0.0, 0.25, 4.0])
def test_kl_weight_scales_the_single_sample_kl_under_elbo(beta):
    # Same seed, same z: loss(beta) - loss(1) = (beta - 1) (log q(z|x) - log p(z)) exactly.
    vae = small_vae()
    x = torch.randn(16, 6, dtype=torch.float64)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        loss_beta = pyrovae.make_objective("elbo").loss(vae.model, vae.guide, x, kl_weight=beta)
        pyro.set_rng_seed(seed)
        loss_one = pyrovae.make_objective("elbo").loss(vae.model, vae.guide, x, kl_weight=1.0)
        pyro.set_rng_seed(seed)
        kl = single_sample_kl(vae, x).item()
        assert loss_beta - loss_one == pytest.approx((beta - 1) * kl, rel=1e-9, abs=1e-8)


@pytest.mark.parametrize("beta", [0.0, 0.25, 4.0])
def test_kl_weight_scales_the_analytic_kl_under_meanfield(beta):
    # Same seed, same reconstruction sample: loss(beta) - loss(1) = (beta - 1) KL(q || p) exactly.
    vae = small_vae(likelihood="bernoulli")
    x = torch.bernoulli(torch.full((16, 6), 0.3, dtype=torch.float64))
    with torch.no_grad():
        kl = kl_divergence(vae.posterior(x), vae.prior()).sum().item()
    assert kl > 0
    for seed in range(3):
        pyro.set_rng_seed(seed)
        loss_beta = pyrovae.make_objective("meanfield").loss(vae.model, vae.guide, x, kl_weight=beta)
        pyro.set_rng_seed(seed)
        loss_one = pyrovae.make_objective("meanfield").loss(vae.model, vae.guide, x, kl_weight=1.0)
        assert loss_beta - loss_one == pytest.approx((beta - 1) * kl, rel=1e-9, abs=1e-8)


@pytest.mark.parametrize("objective", ["elbo", "meanfield"])
def test_kl_weight_zero_leaves_only_the_reconstruction_term(objective):
    vae = small_vae()
    x = torch.randn(16, 6, dtype=torch.float64)
    pyro.set_rng_seed(3)
    loss = pyrovae.make_objective(objective).loss_and_grads(vae.model, vae.guide, x, kl_weight=0.0)
    pyro.set_rng_seed(3)
    model_trace, guide_trace = traces(vae.model, vae.guide, x, kl_weight=0.0)
    assert guide_trace.nodes["z"]["mask"] is False  # sampled, but scored by neither program
    assert loss == pytest.approx(-model_trace.nodes["x"]["log_prob_sum"].item(), rel=1e-10)
    # z is still reparameterized: the encoder learns through the reconstruction term
    for module in (vae.encoder, vae.decoder):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


# ---------------------------------------------------------------- plate_scale
@pytest.mark.parametrize("objective", sorted(pyrovae.OBJECTIVES))
def test_plate_scale_multiplies_the_minibatch_loss(objective):
    # The guide is not exact, so log-weights vary over particles: an estimator that took a
    # log-sum-exp of *scaled* log-weights (as pyro.infer.RenyiELBO does) would fail here.
    lg, x = linear_gaussian_data(num_data=40)
    guide, _ = diagonal_guide(lg)
    batch, scale = x[:8], 40 / 8
    elbo = pyrovae.make_objective(objective)
    elbo.max_plate_nesting = 2  # the data plate, and a vectorized particle plate left of it
    pyro.set_rng_seed(0)
    unscaled = elbo.loss(lg.model, guide, batch)
    pyro.set_rng_seed(0)
    scaled = elbo.loss(plate_scale("data", scale)(lg.model), plate_scale("data", scale)(guide), batch)
    assert scaled == pytest.approx(scale * unscaled, rel=1e-10)


def test_plate_scale_minibatches_average_to_the_full_data_loss():
    # With the exact guide each scaled minibatch loss is N/B * -log p(x_batch), with no noise,
    # so the average over a partition of the data is the full-data loss exactly.
    lg, x = linear_gaussian_data(num_data=40)
    batches = x.split(10)
    scaler = plate_scale("data", len(x) / 10)
    losses = [Trace_ELBO().loss(scaler(lg.model), scaler(lg.guide), xb) for xb in batches]
    for xb, loss in zip(batches, losses):
        torch.testing.assert_close(torch.tensor(loss, dtype=torch.float64), -4 * lg.log_prob(xb).sum(), **EXACT)
    torch.testing.assert_close(
        torch.tensor(losses, dtype=torch.float64).mean(), -lg.log_prob(x).sum(), **EXACT
    )


def global_and_local_pair():
    """A pair with a global latent "g" (outside the plate) and local "z" and "x" inside it."""

    def model(x):
        g = pyro.sample("g", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(g, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        pyro.sample("g", dist.Normal(torch.tensor(0.2, dtype=x.dtype), 0.3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.8 * x, 0.4))

    return model, guide


def test_plate_scale_leaves_global_sites_alone():
    model, guide = global_and_local_pair()
    x = torch.randn(6, dtype=torch.float64) + 1.0
    scale = 7.0
    scaler = plate_scale("data", scale)

    pyro.set_rng_seed(0)
    model_trace, guide_trace = traces(scaler(model), scaler(guide), x)
    assert model_trace.nodes["g"]["scale"] == guide_trace.nodes["g"]["scale"] == 1.0
    assert model_trace.nodes["z"]["scale"] == model_trace.nodes["x"]["scale"] == scale
    assert guide_trace.nodes["z"]["scale"] == scale

    # the loss: global term once, local terms N/B times (same seed, same samples)
    pyro.set_rng_seed(0)
    model_trace, guide_trace = traces(model, guide, x)
    global_term = model_trace.nodes["g"]["log_prob_sum"] - guide_trace.nodes["g"]["log_prob_sum"]
    local_term = (
        model_trace.nodes["z"]["log_prob_sum"]
        + model_trace.nodes["x"]["log_prob_sum"]
        - guide_trace.nodes["z"]["log_prob_sum"]
    )
    pyro.set_rng_seed(0)
    loss = Trace_ELBO().loss(scaler(model), scaler(guide), x)
    assert global_term.abs() > 0.1 and local_term.abs() > 0.1  # both terms matter
    assert loss == pytest.approx(-(global_term + scale * local_term).item(), rel=1e-10)


def test_plate_scale_only_touches_its_own_plate():
    model, guide = global_and_local_pair()
    x = torch.randn(6, dtype=torch.float64)
    model_trace, _ = traces(plate_scale("other", 3.0)(model), guide, x)
    assert all(model_trace.nodes[name]["scale"] == 1.0 for name in ("g", "z", "x"))


@pytest.mark.parametrize("scale", [0.0, -2.0])
def test_plate_scale_refuses_non_positive_scale(scale):
    with pytest.raises(ValueError, match="scale > 0"):
        plate_scale("data", scale)
