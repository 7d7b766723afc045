"""Gradient estimators against closed forms on the linear-Gaussian model.

The pair: p(z) = N(0, I), p(x | z) = N(W z + b, sigma^2 I) with W, b the model's
parameters; q(z | x) = N(A x + c, L L^T) with A, c, L the guide's (full
covariance, so the exact posterior is in the family).  The ELBO of this pair
and its gradient in all five parameters are closed form (``LinearPair.elbo``).

Unbiasedness tests draw ``NUM_BATCHES`` independent gradient estimates, each
the mean of ``REPLICAS`` iid single-estimator draws (the batch of points
repeated: per-point particles are independent), and require every coordinate
of their mean to lie within 4 standard errors (the batch-means SE) of the
reference.  With about 30 coordinates and SEs estimated from 40 batches, a
correct estimator fails a given seed with probability about 1-2 %; the seeds
are fixed, so the tests are deterministic.  Each test also checks it has
power: the reference is more than 4 SEs from zero in some coordinate.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import ReweightedWakeSleep as PyroRWS
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import constraints

import pyrovae
from pyrovae.amortization import amortization_gap
from pyrovae.compare import compare_estimators, parse_objective
from pyrovae.datasets.synthetic import LinearGaussian
from pyrovae.handlers import plate_scale
from pyrovae.objectives import RenyiBound, ReweightedWakeSleep, StickingTheLanding, make_objective

NUM_BATCHES = 40
REPLICAS = 100
EXACT = {"rtol": 1e-10, "atol": 1e-10}
MODEL_PARAMS = ("W", "b")
GUIDE_PARAMS = ("A", "c", "L")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these tensors are tiny; intra-op threads only add synchronisation (severe on a busy 2-core box)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class LinearPair:
    """The linear-Gaussian model with learnable W, b and an amortized full-covariance Gaussian guide."""

    def __init__(self, lg: LinearGaussian, *, reparameterized: bool = True, at_posterior: bool = False) -> None:
        self.lg, self.reparameterized = lg, reparameterized
        d, s = lg.z_dim, lg.sigma
        precision = torch.eye(d, dtype=torch.float64) + lg.W.T @ lg.W / s**2
        cov = torch.linalg.inv(precision)
        A = cov @ lg.W.T / s**2
        init = {"W": lg.W, "b": lg.b, "A": A, "c": -A @ lg.b, "L": torch.linalg.cholesky(cov)}
        if not at_posterior:  # move every parameter off the optimum, so every gradient is non-zero
            g = torch.Generator().manual_seed(1)
            init = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in init.items()}
            init["L"] = init["L"].tril()
            init["L"].diagonal().abs_()
        self.init = init

    def param(self, name: str) -> torch.Tensor:
        constraint = constraints.lower_cholesky if name == "L" else constraints.real
        return pyro.param(name, self.init[name].clone(), constraint=constraint)

    def model(self, x: torch.Tensor) -> None:
        W, b = self.param("W"), self.param("b")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.lg.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, self.lg.sigma).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        A, c, L = self.param("A"), self.param("c"), self.param("L")
        with pyro.plate("data", x.shape[0]):
            q = dist.MultivariateNormal(x @ A.T + c, scale_tril=L)
            pyro.sample("z", q if self.reparameterized else q.has_rsample_(False))

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """The closed-form ELBO summed over the rows of ``x``."""
        W, b, A, c, L = (self.param(k) for k in ("W", "b", "A", "c", "L"))
        D, d, s = self.lg.x_dim, self.lg.z_dim, self.lg.sigma
        m, S = x @ A.T + c, L @ L.T
        resid = x - m @ W.T - b
        expected_log_lik = -0.5 * D * math.log(2 * math.pi * s**2) - 0.5 / s**2 * (
            resid.pow(2).sum(-1) + torch.trace(W @ S @ W.T)
        )
        expected_log_prior = -0.5 * d * math.log(2 * math.pi) - 0.5 * (m.pow(2).sum(-1) + torch.trace(S))
        entropy = 0.5 * d * (1 + math.log(2 * math.pi)) + L.diagonal().log().sum()
        return (expected_log_lik + expected_log_prior + entropy).sum()


def setup(num_points: int = 4, **kwargs) -> tuple[LinearPair, torch.Tensor]:
    lg = LinearGaussian(x_dim=5, z_dim=2, sigma=0.5, seed=0)
    pair = LinearPair(lg, **kwargs)
    x = lg.sample(num_points, generator=torch.Generator().manual_seed(2))
    for name in (*MODEL_PARAMS, *GUIDE_PARAMS):
        pair.param(name)
    return pair, x


def take_grads(names=MODEL_PARAMS + GUIDE_PARAMS) -> dict[str, torch.Tensor]:
    out = {}
    for name in names:
        leaf = pyro.param(name).unconstrained()
        out[name] = leaf.grad.clone() if leaf.grad is not None else torch.zeros_like(leaf)
        leaf.grad = None
    return out


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])


def analytic_gradient(pair: LinearPair, x: torch.Tensor) -> torch.Tensor:
    """d(-ELBO)/d(unconstrained parameters), in the order of take_grads."""
    (-pair.elbo(x)).backward()
    return flat(take_grads())


def sampled_gradient(elbo, pair: LinearPair, x: torch.Tensor, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, standard error) of the estimator's gradient of the loss on the points ``x``."""
    if math.isinf(elbo.max_plate_nesting):
        elbo.max_plate_nesting = 2
    xr = x.repeat(REPLICAS, 1)
    pyro.set_rng_seed(seed)
    draws = []
    with pyro.validation_enabled(False):
        for _ in range(NUM_BATCHES):
            take_grads()
            elbo.loss_and_grads(pair.model, pair.guide, xr)
            draws.append(flat(take_grads()) / REPLICAS)
    draws = torch.stack(draws)
    return draws.mean(0), draws.std(0) / math.sqrt(NUM_BATCHES)


def assert_within_4_se(estimate: torch.Tensor, reference: torch.Tensor, se: torch.Tensor) -> None:
    diff = (estimate - reference).abs()
    # a coordinate no parameter uses (the unconstrained L's upper triangle) has zero gradient and zero SE
    z = torch.where(se > 0, diff / se, torch.where(diff == 0, 0.0, math.inf))
    assert bool((z < 4).all()), f"max |z| = {float(z.max()):.2f} at coordinate {int(z.argmax())}"
    assert bool((reference.abs() > 4 * se).any()), "no power: the reference is within 4 SE of zero everywhere"


# ------------------------------------------------------- unbiasedness, ELBO family
ELBO_FAMILY = {
    "elbo": ("elbo", {}, True),
    "meanfield": ("meanfield", {}, True),
    "graph": ("graph", {}, True),
    "stl": ("stl", {}, True),
    "stl-4-particles": ("stl", {"num_particles": 4}, True),
    "elbo-score-function": ("elbo", {}, False),
    "graph-score-function": ("graph", {}, False),
    "graph-likelihood-ratio": ("graph", {"pathwise": False}, True),
}


@pytest.mark.parametrize("case", sorted(ELBO_FAMILY))
def test_elbo_family_gradient_is_unbiased_for_the_analytic_elbo_gradient(case):
    name, options, reparameterized = ELBO_FAMILY[case]
    pair, x = setup(reparameterized=reparameterized)
    reference = analytic_gradient(pair, x)
    mean, se = sampled_gradient(make_objective(name, **options), pair, x)
    assert_within_4_se(mean, reference, se)


# ------------------------------------------------------- unbiasedness, IWAE family
@pytest.mark.parametrize(
    ("estimator", "reparameterized"),
    [("dreg", True), ("iwae", False)],
    ids=["dreg-vs-iwae", "iwae-score-function-vs-iwae-pathwise"],
)
def test_iwae_gradient_estimators_agree_in_mean(estimator, reparameterized):
    # E[grad IWAE-5] has no closed form; two unbiased estimators of it must agree within 4 combined SEs.
    pair, x = setup()
    reference, reference_se = sampled_gradient(make_objective("iwae", num_particles=5), pair, x, seed=0)
    pair.reparameterized = reparameterized
    mean, se = sampled_gradient(make_objective(estimator, num_particles=5), pair, x, seed=1)
    assert_within_4_se(mean, reference, torch.sqrt(se**2 + reference_se**2))


def test_stl_is_biased_for_the_iwae_guide_gradient():
    # Tucker et al. (2018, sec. 3): dropping the score term is unbiased for the ELBO only;
    # for IWAE-5 the guide gradient's mean moves away from the (unbiased) IWAE one. DReG fixes this.
    pair, x = setup()
    reference, reference_se = sampled_gradient(make_objective("iwae", num_particles=5), pair, x, seed=0)
    mean, se = sampled_gradient(make_objective("stl", num_particles=5, alpha=0.0), pair, x, seed=1)
    z = (mean - reference).abs() / torch.sqrt(se**2 + reference_se**2).clamp(min=1e-300)
    assert float(z.max()) > 8


def test_iwae_gradient_differs_from_the_elbo_gradient():
    # the power of the comparison above: IWAE-5's mean gradient is measurably not the ELBO's
    pair, x = setup()
    mean, se = sampled_gradient(make_objective("iwae", num_particles=5), pair, x)
    assert bool(((mean - analytic_gradient(pair, x)).abs() > 4 * se).any())


@pytest.mark.parametrize("estimator", ["dreg", "stl", "rws"])
def test_importance_estimators_give_the_model_the_iwae_gradient_draw_for_draw(estimator):
    pair, x = setup(num_points=6)
    pyro.set_rng_seed(3)
    iwae_loss = make_objective("iwae", num_particles=5).loss_and_grads(pair.model, pair.guide, x)
    iwae = take_grads()
    options = {"alpha": 0.0} if estimator == "stl" else {}
    pyro.set_rng_seed(3)
    loss = make_objective(estimator, num_particles=5, **options).loss_and_grads(pair.model, pair.guide, x)
    other = take_grads()
    assert loss == pytest.approx(iwae_loss, rel=1e-12)
    for name in MODEL_PARAMS:
        torch.testing.assert_close(other[name], iwae[name], **EXACT)
    assert any((other[n] - iwae[n]).abs().max() > 1e-3 for n in GUIDE_PARAMS)  # only the guide's differ


# ----------------------------------------------------------- the exact posterior
@pytest.mark.parametrize(
    ("name", "options"),
    [("stl", {}), ("stl", {"num_particles": 5, "alpha": 0.0}), ("dreg", {"num_particles": 5})],
    ids=["stl-elbo", "stl-iwae", "dreg"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_guide_gradient_is_exactly_zero_at_the_exact_posterior(name, options, seed):
    pair, x = setup(num_points=8, at_posterior=True)
    pyro.set_rng_seed(seed)
    make_objective(name, **options).loss_and_grads(pair.model, pair.guide, x)
    grads = take_grads()
    for param in GUIDE_PARAMS:
        assert grads[param].abs().max() < 1e-10, param
    pyro.set_rng_seed(seed)
    make_objective("elbo").loss_and_grads(pair.model, pair.guide, x)
    grads = take_grads()
    assert min(grads[p].abs().max() for p in GUIDE_PARAMS) > 0.05  # the score term does not vanish


# ------------------------------------------------------------- Renyi -> ELBO
def test_renyi_tends_to_the_elbo_as_alpha_tends_to_one():
    # Per point, with l_k = log w_k and a = 1 - alpha, the cumulant expansion
    #   (1/a) log mean_k exp(a l_k) = mean(l) + a/2 m2(l) + a^2/6 m3(l) + O(a^3)
    # (m2, m3: central moments over the K draws) ties Renyi to the ELBO draw for draw.
    pair, x = setup(num_points=6)
    num_particles = 8
    pyro.set_rng_seed(0)
    elbo_loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=2).loss_and_grads(
        pair.model, pair.guide, x)
    elbo_grad = flat(take_grads())
    pyro.set_rng_seed(0)
    with torch.no_grad():
        log_w = RenyiBound(num_particles, alpha=0.5, max_plate_nesting=2).log_weights(pair.model, pair.guide, x)
    dev = log_w - log_w.mean(0)
    m2, m3 = dev.pow(2).mean(0).sum().item(), dev.pow(3).mean(0).sum().item()
    assert m2 > 1.0 and abs(m3) > 1.0  # the weights vary: the limit is not trivial
    grad_gaps = []
    for a in (1e-3, 1e-4):
        renyi = make_objective("renyi", alpha=1 - a, num_particles=num_particles)
        renyi.max_plate_nesting = 2  # as fit sets it; guessing would run the guide and change the draws
        pyro.set_rng_seed(0)
        loss = renyi.loss_and_grads(pair.model, pair.guide, x)
        first_order = elbo_loss - loss - a / 2 * m2
        assert first_order == pytest.approx(a**2 / 6 * m3, rel=20 * a)  # the O(a^3) rest, relative to a^2
        grad_gaps.append(float((flat(take_grads()) - elbo_grad).norm() / elbo_grad.norm()))
    assert grad_gaps[1] < grad_gaps[0] / 5 and grad_gaps[1] < 1e-2  # the gradient converges too, linearly in a


# ------------------------------------------------- per-point weights and scale
def test_iwae_matches_pyro_renyi_elbo_draw_for_draw_without_a_minibatch_scale():
    pair, x = setup(num_points=6)
    pyro.set_rng_seed(0)
    pyro_loss = RenyiELBO(alpha=0.0, num_particles=5, vectorize_particles=True, max_plate_nesting=2).loss_and_grads(
        pair.model, pair.guide, x)
    pyro_grads = take_grads()
    pyro.set_rng_seed(0)
    loss = RenyiBound(5, alpha=0.0, max_plate_nesting=2).loss_and_grads(pair.model, pair.guide, x)
    assert loss == pytest.approx(pyro_loss, rel=1e-12)
    for name, g in take_grads().items():
        torch.testing.assert_close(g, pyro_grads[name], **EXACT)


@pytest.mark.parametrize("name", ["iwae", "renyi", "stl", "dreg", "rws"])
def test_minibatch_scale_multiplies_loss_and_gradient(name):
    # N/B scales the per-point bound, never the weights inside the log-sum-exp
    pair, x = setup(num_points=6)
    scale = 7.0
    runs = []
    for wrap in (lambda f: f, plate_scale("data", scale)):
        pyro.set_rng_seed(0)
        loss = make_objective(name).loss_and_grads(wrap(pair.model), wrap(pair.guide), x)
        runs.append((loss, take_grads()))
    (loss, grads), (scaled_loss, scaled_grads) = runs
    assert scaled_loss == pytest.approx(scale * loss, rel=1e-10)
    for key in grads:
        torch.testing.assert_close(scaled_grads[key], scale * grads[key], **EXACT)


def test_minibatch_scale_is_read_from_the_observations_not_from_a_weighted_factor():
    # a pyro.factor term with its own weight (as BetaTCVAE's, under kl_scale) stays inside the weight
    pair, x = setup(num_points=6)

    def model(x):
        W, b = pair.param("W"), pair.param("b")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, pair.lg.sigma).to_event(1), obs=x)
            with pyrovae.kl_scale(3.0):
                pyro.factor("penalty", -0.1 * x.pow(2).sum(-1))

    losses = []
    for wrap in (lambda f: f, plate_scale("data", 7.0)):
        pyro.set_rng_seed(0)
        losses.append(make_objective("iwae").loss(wrap(model), wrap(pair.guide), x))
    assert losses[1] == pytest.approx(7.0 * losses[0], rel=1e-10)
    pyro.set_rng_seed(0)
    without = make_objective("iwae").loss(pair.model, pair.guide, x)
    assert losses[0] - without == pytest.approx(3.0 * 0.1 * x.pow(2).sum().item(), rel=1e-10)


def test_rws_equals_pyro_rws_on_one_point():
    # With one data point, per-point and joint normalization coincide: this is Pyro's RWS (insomnia=1).
    # (On a batch, its model gradient is IWAE's draw for draw, tested above.)
    pair, x = setup(num_points=1)
    pyro.set_rng_seed(0)
    theta_loss, _ = PyroRWS(num_particles=5, max_plate_nesting=2).loss_and_grads(pair.model, pair.guide, x)
    pyro_grads = take_grads()
    pyro.set_rng_seed(0)
    loss = ReweightedWakeSleep(5, max_plate_nesting=2).loss_and_grads(pair.model, pair.guide, x)
    assert loss == pytest.approx(theta_loss, rel=1e-12)
    for name, g in take_grads().items():
        torch.testing.assert_close(g, pyro_grads[name], **EXACT)


def test_iwae_is_log_px_with_the_exact_posterior_per_point():
    lg = LinearGaussian()
    x = lg.sample(5, generator=torch.Generator().manual_seed(0))
    log_w = RenyiBound(7, max_plate_nesting=2).log_weights(lg.model, lg.guide, x)
    torch.testing.assert_close(log_w, lg.log_prob(x).expand(7, 5), **EXACT)


# --------------------------------------------------------------- validation
def test_stl_and_dreg_refuse_non_reparameterized_latents_naming_the_site():
    pair, x = setup(reparameterized=False)
    for name in ("stl", "dreg"):
        with pytest.raises(ValueError, match=r"site 'z'.*not"):
            make_objective(name).loss_and_grads(pair.model, pair.guide, x)


@pytest.mark.parametrize("name", sorted(pyrovae.OBJECTIVES))
def test_requires_reparameterized_flag_tells_the_truth(name):
    # callers (the contract tests) ask this flag, not the class; Pyro's own classes lack it
    pair, x = setup(reparameterized=False)
    elbo = make_objective(name)
    elbo.max_plate_nesting = 2
    if getattr(elbo, "requires_reparameterized", isinstance(elbo, TraceMeanField_ELBO)):
        with pytest.raises((ValueError, NotImplementedError)):
            elbo.loss_and_grads(pair.model, pair.guide, x)
    else:
        assert math.isfinite(elbo.loss_and_grads(pair.model, pair.guide, x))
        assert all(g.abs().max() > 0 for n, g in take_grads().items() if n in GUIDE_PARAMS)


def test_importance_objectives_refuse_a_global_latent_naming_it():
    def model(x):
        g = pyro.sample("g", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(g, 1.0), obs=x)

    def guide(x):
        pyro.sample("g", dist.Normal(torch.zeros((), dtype=x.dtype), 0.5))

    for name in ("iwae", "renyi", "rws", "stl", "dreg"):
        with pytest.raises(ValueError, match="'g' lies outside"):
            make_objective(name).loss(model, guide, torch.randn(3, dtype=torch.float64))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [("dreg", {"num_particles": 1}, "num_particles >= 2"), ("rws", {"num_particles": 1}, "num_particles >= 2"),
     ("stl", {"beta": 1.0}, "unexpected"), ("graph", {"baseline_beta": 1.5}, "baseline_beta"),
     ("stl", {"alpha": float("nan")}, "finite")],
)
def test_bad_options_are_refused(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_objective(name, **options)


def test_stl_reruns_a_hierarchical_guide_so_the_gradient_stays_zero_at_the_posterior():
    # z1 then z2 | z1, exact posterior factorised as p(z1 | x) p(z2 | z1, x): the later site's
    # parameters depend on the earlier draw, so the score must be taken with both values fixed.
    lg = LinearGaussian()
    x = lg.sample(6, generator=torch.Generator().manual_seed(0))
    post = lg.posterior(x)
    S = post.covariance_matrix[0]
    slope = pyro.param("slope", (S[1, 0] / S[0, 0]).clone())
    shift = pyro.param("shift", torch.zeros((), dtype=torch.float64))  # upstream of z1: its path runs through z2's loc
    cond_var = S[1, 1] - S[1, 0] ** 2 / S[0, 0]

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(()), 1.0))
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(()), 1.0))
            loc = torch.stack([z1, z2], -1) @ lg.W.T + lg.b
            pyro.sample("x", dist.Normal(loc, lg.sigma).to_event(1), obs=x)

    def guide(x):
        s, shift = pyro.param("slope"), pyro.param("shift")
        m = lg.posterior(x).loc
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(m[:, 0] + shift, S[0, 0].sqrt()))
            pyro.sample("z2", dist.Normal(m[:, 1] + s * (z1 - m[:, 0]), cond_var.sqrt()))

    pyro.set_rng_seed(0)
    StickingTheLanding(3, max_plate_nesting=2).loss_and_grads(model, guide, x)
    assert slope.unconstrained().grad.abs() < 1e-10 and shift.unconstrained().grad.abs() < 1e-10


# -------------------------------------------------- graph baselines under fit
def test_graph_likelihood_ratio_trains_with_a_smaller_last_batch():
    # 40 points in batches of 16: Pyro's per-position baseline would fail on the last batch of 8;
    # GraphELBO restarts it from its mean
    data = pyrovae.datasets.synthetic.load("train").x[:40]
    vae = pyrovae.VAE(5, 2, hidden=(8,), likelihood="gaussian")
    result = pyrovae.fit(vae, data, objective=make_objective("graph", pathwise=False), epochs=2, batch_size=16,
                         device="cpu", progress=False)
    assert result.step == 6 and all(math.isfinite(r["train_loss"]) for r in result.history)


# ------------------------------------------------------ compare_estimators
def test_compare_estimators_shows_pathwise_beating_likelihood_ratio(capsys):
    data = pyrovae.datasets.synthetic.load("train")
    vae = pyrovae.VAE(5, 2, hidden=(16,), likelihood="gaussian")
    result = compare_estimators(
        vae, data, ["elbo", "graph:pathwise=false", "iwae:num_particles=5", ("dreg", {"num_particles": 5})],
        num_repeats=20, batch_size=32,
    )
    printed = capsys.readouterr().out
    assert printed.strip() == str(result).strip() and "graph:pathwise=false" in printed
    elbo, lr, iwae, dreg = (result[r.objective] for r in result.rows)
    # the same draws: the likelihood-ratio estimator has the same bound, far noisier encoder gradients,
    # and the same decoder gradients (the score term reaches guide parameters only)
    assert lr.bound == pytest.approx(elbo.bound, rel=1e-6)
    assert lr.encoder_variance > 10 * elbo.encoder_variance
    assert lr.decoder_variance == pytest.approx(elbo.decoder_variance, rel=1e-4)
    # dreg and iwae: the same bound and decoder gradient draw for draw, another encoder gradient
    assert dreg.bound == pytest.approx(iwae.bound, rel=1e-6)
    assert dreg.decoder_variance == pytest.approx(iwae.decoder_variance, rel=1e-4)
    assert dreg.encoder_variance != pytest.approx(iwae.encoder_variance, rel=1e-3)
    assert iwae.bound > elbo.bound - 4 * math.hypot(iwae.bound_se, elbo.bound_se)
    assert all(r.seconds_per_step > 0 and r.encoder_snr > 0 for r in result.rows)
    assert all(p.grad is None for p in vae.parameters())


def test_parse_objective_reads_options_and_refuses_bad_ones():
    label, elbo = parse_objective("renyi:alpha=0.25,num_particles=3")
    assert label == "renyi:alpha=0.25,num_particles=3" and elbo.alpha == 0.25 and elbo.num_particles == 3
    assert parse_objective("graph:pathwise=False")[1].pathwise is False
    with pytest.raises(ValueError, match="takes options"):
        parse_objective("elbo:alpha=0.5")
    with pytest.raises(ValueError, match="key=value"):
        parse_objective("iwae:5")


# -------------------------------------------------------- amortization gap
def linear_vae(delta: torch.Tensor) -> tuple[pyrovae.VAE, LinearGaussian, torch.Tensor]:
    """A VAE that *is* a linear-Gaussian model with correlated posterior, its encoder at the
    best diagonal Gaussian (variances 1/Lambda_ii of the posterior precision Lambda) except a
    shift ``delta`` of the mean."""
    lg = LinearGaussian(x_dim=5, z_dim=2, sigma=0.5, seed=0)
    lg.W[:, 1] = lg.W[:, 0] + 0.5 * lg.W[:, 1]  # nearly parallel columns: a correlated posterior
    x = lg.sample(60, generator=torch.Generator().manual_seed(4)).float()
    precision = torch.eye(2, dtype=torch.float64) + lg.W.T @ lg.W / lg.sigma**2
    A = torch.linalg.inv(precision) @ lg.W.T / lg.sigma**2
    vae = pyrovae.VAE(5, 2, hidden=(), likelihood="gaussian", likelihood_scale=lg.sigma)
    with torch.no_grad():
        vae.decoder.net[0].weight.copy_(lg.W)
        vae.decoder.net[0].bias.copy_(lg.b)
        enc = vae.encoder.net[0]
        enc.weight.zero_()
        enc.bias.zero_()
        enc.weight[:2] = A
        enc.bias[:2] = -A @ lg.b + delta
        sd = precision.diagonal().rsqrt()
        enc.bias[2:] = torch.log(torch.expm1(sd - 1e-5))  # the encoder's softplus(.) + 1e-5
    return vae, lg, x


def test_amortization_gap_matches_the_closed_form():
    # For a Gaussian posterior N(mu, Lambda^-1) and diagonal q = N(m, diag(1/Lambda_ii)):
    # approximation gap = KL(q* || p) = (sum_i log Lambda_ii - log det Lambda) / 2, the same for every x;
    # amortization gap = KL(q || p) - KL(q* || p) = (m - mu)^T Lambda (m - mu) / 2.
    delta = torch.tensor([0.3, -0.2], dtype=torch.float64)
    vae, lg, x = linear_vae(delta)
    precision = torch.eye(2, dtype=torch.float64) + lg.W.T @ lg.W / lg.sigma**2
    approximation = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))
    amortization = 0.5 * delta @ precision @ delta
    assert approximation > 0.3 and amortization > 0.2  # both gaps are there to be found
    gap = amortization_gap(vae, x, log_px=lg.log_prob, num_steps=150, lr=0.02, num_eval_samples=200)
    se = gap.standard_errors
    # 4 SEs of Monte Carlo error, plus 0.01 nats for SVI stopping short of q* (L is flat at its optimum)
    assert gap.approximation_gap == pytest.approx(float(approximation), abs=4 * se["approximation_gap"] + 0.01)
    assert gap.amortization_gap == pytest.approx(float(amortization), abs=4 * se["amortization_gap"] + 0.01)
    assert gap.inference_gap == pytest.approx(gap.approximation_gap + gap.amortization_gap, rel=1e-9)
    assert "amortization gap" in str(gap) and gap.log_px_source == "given"


def test_amortization_gap_estimates_log_px_by_iwae_when_not_given():
    vae, lg, x = linear_vae(torch.zeros(2, dtype=torch.float64))
    x = x[:20]
    gap = amortization_gap(vae, x, num_steps=0, num_eval_samples=50, num_iwae_samples=300)
    exact = float(lg.log_prob(x).mean())
    # IWAE is a lower bound that beats the ELBO; the encoder is already q*, so no amortization gap
    assert gap.elbo_refined < gap.log_px <= exact + 4 * gap.standard_errors["log_px"]
    # zero steps: q* is the encoder's q rebuilt from its parameters (float32 round trip), on the same draws
    assert gap.amortization_gap == pytest.approx(0.0, abs=1e-5)
    assert gap.log_px_source.startswith("importance sampling, 300")


def test_amortization_gap_refuses_what_it_cannot_refine():
    lg = LinearGaussian()
    with pytest.raises(TypeError, match="posterior"):
        amortization_gap((lg.model, lg.guide), lg.sample(3).float())
    vae, _, x = linear_vae(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="one value per data point"):
        amortization_gap(vae, x, log_px=torch.zeros(3))
