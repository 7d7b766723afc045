"""Capacity β-VAE, FactorVAE, β-TCVAE and DIP-VAE: contracts, exactness and short training runs.

Every tolerance states the standard error (or rounding error) it is built from.
"""

from __future__ import annotations

import inspect
import itertools
import math
import re

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.distributions import Normal, kl_divergence

import pyrovae
from pyrovae.objectives import make_objective
from pyrovae.models import MODELS, VAE, BetaTCVAE, CapacityVAE, DIPVAE, FactorVAE
from pyrovae.models.beta_tcvae import aggregate_log_densities, log_importance_weights

#: name -> (class, small constructor options on top of the shared ones)
VARIANTS = {
    "capacity_vae": (CapacityVAE, {"gamma": 100.0, "capacity_max": 5.0, "capacity_steps": 50}),
    "factor_vae": (FactorVAE, {"gamma": 6.0, "discriminator_hidden": (32, 32)}),
    "beta_tcvae": (BetaTCVAE, {"beta": 4.0, "num_data": 1397}),
    "dip_vae": (DIPVAE, {"dip_type": "ii", "lambda_od": 5.0}),
}
#: the site each variant's training-only term adds to the model
TRAINING_SITES = {"capacity_vae": "capacity", "factor_vae": "tc_penalty", "beta_tcvae": "kl_decomposition",
                  "dip_vae": "dip_penalty"}
#: variants whose training term replaces the ELBO's KL, so "z" is masked in training
REPLACES_KL = {"capacity_vae", "beta_tcvae"}
SMALL = {"x_shape": (1, 8, 8), "z_dim": 4, "hidden": (32,)}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Networks this small run fastest on one thread, and a second intra-op thread
    # spinning on a shared, oversubscribed machine made this file 8x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return pyrovae.datasets.load("digits", binarize=True).x


def make(name: str, **options) -> VAE:
    cls, defaults = VARIANTS[name]
    return cls(**SMALL, **{**defaults, **options})


# ---------------------------------------------------------------- contracts
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_registered_under_file_stem_and_rebuilt_from_config(name):
    cls = VARIANTS[name][0]
    assert MODELS[name] is cls
    assert cls.__module__ == f"pyrovae.models.{name}"
    model = make(name)
    rebuilt = MODELS[name](**model.config)
    assert rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert rebuilt.training_kwargs(7) == model.training_kwargs(7)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tradeoff_parameter_is_a_constructor_argument_that_reaches_training(name):
    """What ``pyrovae sweep`` varies is an argument of the class that changes the training objective."""
    cls = MODELS[name]
    parameter = cls.tradeoff_parameter
    if parameter is None:  # the sweep varies fit's kl_weight, which must then reach the training loss
        x = torch.rand(16, 1, 8, 8).round()
        model = cls(**SMALL)
        elbo = make_objective(cls.default_objective)
        elbo.max_plate_nesting = 2
        losses = []
        for weight in (1.0, 3.0):
            pyro.set_rng_seed(0)
            losses.append(elbo.loss(model.model, model.guide, x, kl_weight=weight))
        assert losses[0] != losses[1], f"{name}: kl_weight does not change the training loss"
        return
    assert parameter in inspect.signature(cls.__init__).parameters
    x = torch.rand(16, 1, 8, 8)
    options = {"num_data": 16} if cls is BetaTCVAE else {}
    losses = []
    for value in (1.0, 3.0):
        model = cls(**SMALL, **options, **{parameter: value})
        torch.manual_seed(0)
        reference = cls(**SMALL, **options, **{parameter: 1.0})
        model.load_state_dict(reference.state_dict())
        pyro.set_rng_seed(0)
        # late in training (the capacity has reached C_max), with the KL weight fit would use
        hook = getattr(model, "training_kwargs", lambda step: {})
        kwargs = {**hook(10**6), "kl_weight": model.default_kl_weight}
        losses.append(Trace_ELBO().loss(model.model, model.guide, x, **kwargs))
    assert losses[0] != losses[1], f"{name}: {parameter} does not change the training loss"


@pytest.mark.parametrize(
    "cls, options, message",
    [
        (CapacityVAE, {"gamma": -1.0}, "Expected gamma > 0, got -1.0"),
        (CapacityVAE, {"capacity_max": -2}, "Expected capacity_max >= 0, got -2"),
        (CapacityVAE, {"capacity_steps": 0}, "Expected capacity_steps to be an int >= 1, got 0"),
        (FactorVAE, {"gamma": 0}, "Expected gamma > 0, got 0"),
        (FactorVAE, {"discriminator_lr": -1e-4}, "Expected discriminator_lr > 0, got -0.0001"),
        (FactorVAE, {"discriminator_betas": (0.5, 1.0)}, "Expected discriminator_betas as two numbers in [0, 1)"),
        (FactorVAE, {"discriminator_betas": 0.5}, "Expected discriminator_betas as two numbers in [0, 1), got 0.5"),
        (BetaTCVAE, {"beta": -1}, "Expected beta >= 0, got -1"),
        (BetaTCVAE, {"estimator": "iwae"}, "Expected estimator in ('mss', 'mws'), got 'iwae'"),
        (BetaTCVAE, {"num_data": 0}, "Expected num_data to be an int >= 1, got 0"),
        (DIPVAE, {"dip_type": "iii"}, "Expected dip_type in ('i', 'ii'), got 'iii'"),
        (DIPVAE, {"lambda_d": -1.0}, "Expected lambda_d >= 0, got -1.0"),
    ],
)
def test_arguments_are_validated_at_construction(cls, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cls(**SMALL, **options)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_default_programs_are_the_plain_vae(name, digits):
    """model(x)/guide(x) without training keywords score exactly the VAE's ELBO (evaluation sees the true model)."""
    x = digits[:64]
    variant = make(name)
    vae = VAE(**SMALL)
    vae.load_state_dict({k: v for k, v in variant.state_dict().items() if k in vae.state_dict()})
    losses = []
    for model in (variant, vae):
        pyro.set_rng_seed(3)
        losses.append(Trace_ELBO(num_particles=4, vectorize_particles=True).loss(model.model, model.guide, x))
    assert losses[0] == losses[1]  # same numbers from the same code path: bitwise
    assert pyrovae.evaluate_elbo(variant, x) == pyrovae.evaluate_elbo(vae, x)
    trace = poutine.trace(variant.model).get_trace(x)
    assert TRAINING_SITES[name] not in trace.nodes


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_training_kwargs_switch_the_extra_term_on(name, digits):
    x = digits[:16]
    variant = make(name)
    kwargs = variant.training_kwargs(10)
    guide_trace = poutine.trace(variant.guide).get_trace(x, **kwargs)
    model_trace = poutine.trace(poutine.replay(variant.model, trace=guide_trace)).get_trace(x, **kwargs)
    site = model_trace.nodes[TRAINING_SITES[name]]
    assert site["is_observed"] and [f.name for f in site["cond_indep_stack"]] == ["data"]
    assert site["fn"].batch_shape == (16,)
    for trace in (guide_trace, model_trace):
        masked = trace.nodes["z"]["mask"] is False
        assert masked == (name in REPLACES_KL)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_trains_with_fit(name, digits):
    variant = make(name)
    result = pyrovae.fit(variant, digits, epochs=2, batch_size=256, progress=False, valid_data=digits[:100])
    assert result.step == 12
    for row in result.history:
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["valid_elbo"])
    if name == "factor_vae":
        assert all(math.isfinite(row["aux_loss"]) and math.isfinite(row["aux_tc"]) for row in result.history)


# ---------------------------------------------------------------- capacity β-VAE
def test_capacity_factor_is_gamma_times_distance_of_mean_kl_from_c(digits):
    x = digits[:32]
    model = make("capacity_vae", gamma=7.0)
    trace = poutine.trace(model.model).get_trace(x, capacity=1.25)
    posterior = model.posterior(x).base_dist
    kl = kl_divergence(posterior, Normal(0.0, 1.0)).sum(-1)  # closed form, per point
    expected = -7.0 * (kl.mean() - 1.25).abs()
    torch.testing.assert_close(trace.nodes["capacity"]["fn"].log_factor, expected.expand(32))  # float32 rounding


def test_capacity_kl_tracks_c_during_annealing(digits, tmp_path):
    """The data set's mean KL follows C(t) as C rises from 0 to C_max and then holds.

    The penalty acts on the minibatch mean KL, which scatters about the data
    set's mean with standard error se = sd(KL_n) / sqrt(B).  Its gradient has
    the constant size γ on either side of C, so Adam holds the KL in a band
    about C of a few se (each step also raises C by C_max / T = 0.05 nats,
    0.3-0.7 se here).  Over 8 seeds the deviation never exceeded 4.3 se once
    C >= C_max / 2; we allow 6 se.  Earlier the encoder is still learning to
    carry information and the KL lags C (by up to 6 se at C = 0.38 C_max), so
    the first checkpoint only shows that the KL rose with C.
    """
    batch_size, steps_per_epoch, capacity_max = 128, 11, 10.0  # 11 = ceil(1397 / 128)
    model = CapacityVAE((1, 8, 8), 6, hidden=(64,), gamma=1000.0, capacity_max=capacity_max, capacity_steps=200)
    mean_kls = []
    for epochs in range(7, 23, 3):  # C = 3.8, 5.45, 7.1, 8.75, 10, 10 nats
        result = pyrovae.fit(model, digits, epochs=epochs, batch_size=batch_size, out=tmp_path, resume=True,
                             progress=False)
        assert result.step == epochs * steps_per_epoch
        capacity = model.capacity_schedule(result.step - 1)
        with torch.no_grad():
            kl = model.rate(digits)
        se = float(kl.std()) / math.sqrt(batch_size)
        mean_kls.append(float(kl.mean()))
        if capacity >= capacity_max / 2:
            assert abs(mean_kls[-1] - capacity) < 6 * se, (capacity, mean_kls[-1], se)
    assert mean_kls[-1] - mean_kls[0] > 5.0  # C rose by 6.2 nats from the first checkpoint to the end


# ---------------------------------------------------------------- FactorVAE
def test_factor_vae_discriminator_estimates_gaussian_total_correlation():
    r"""TC of N(0, R) is -½ log det R; the discriminator's mean logit on q(z) samples approaches it.

    Tolerance 0.05 nats: the estimate's spread over independently trained
    discriminators is sd = 0.009 nats (6 seeds, this schedule) and its Monte
    Carlo error on 50,000 evaluation points is 0.003 (both measured), so 0.05 is
    5 sd.  Untrained, the estimate is off by the whole TC (0.51 nats).
    """
    rho = 0.8
    correlation = torch.tensor([[1.0, rho], [rho, 1.0]])
    exact_tc = -0.5 * math.log(1 - rho**2)  # = -½ log det R = 0.511
    cholesky = torch.linalg.cholesky(correlation)
    model = FactorVAE((4,), 2, hidden=(8,), discriminator_hidden=(32, 32), discriminator_lr=1e-2)
    optimizer = torch.optim.Adam(model.auxiliary_parameters(), lr=model.auxiliary_lr)
    steps = 250
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)

    def estimate() -> float:
        with torch.no_grad():
            return float(model.discriminator_loss(torch.randn(100_000, 2) @ cholesky.T)["tc"])

    assert abs(estimate() - exact_tc) > 0.4
    for _ in range(steps):
        terms = model.discriminator_loss(torch.randn(1024, 2) @ cholesky.T)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        schedule.step()
    assert abs(estimate() - exact_tc) < 0.05


def test_factor_vae_penalty_moves_the_encoder_not_the_discriminator(digits):
    x = digits[:32]
    model = make("factor_vae", gamma=3.0)
    pyro.set_rng_seed(1)
    guide_trace = poutine.trace(model.guide).get_trace(x, tc_weight=3.0)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, tc_weight=3.0)
    z = guide_trace.nodes["z"]["value"]
    torch.testing.assert_close(model_trace.nodes["tc_penalty"]["fn"].log_factor, -3.0 * model.density_ratio(z))
    Trace_ELBO().loss_and_grads(model.model, model.guide, x, **model.training_kwargs(0))
    assert all(p.grad is None for p in model.discriminator.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_factor_vae_discriminator_step_leaves_the_encoder_alone(digits):
    model = make("factor_vae")
    terms = model.auxiliary_loss(digits[:64])
    terms["loss"].backward()
    assert set(terms) == {"loss", "tc"} and not terms["tc"].requires_grad
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters())


def test_fit_gives_the_discriminator_kim_and_mnih_adam(digits, tmp_path):
    """The discriminator's Adam takes the model's learning rate and betas (0.5, 0.9 by default)."""
    model = make("factor_vae", discriminator_lr=3e-4)
    pyrovae.fit(model, digits[:128], epochs=1, batch_size=128, progress=False, out=tmp_path)
    groups = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["aux_optimizer"]["param_groups"]
    assert [(g["lr"], tuple(g["betas"])) for g in groups] == [(3e-4, (0.5, 0.9))]


def test_resume_gives_the_discriminator_the_models_adam_settings(digits, tmp_path):
    """A checkpoint whose discriminator optimiser ran with other settings (e.g. written before the
    betas were Kim and Mnih's) resumes with the model's own: the record and the training agree."""
    x = digits[:256]
    pyrovae.fit(make("factor_vae"), x, epochs=1, batch_size=128, progress=False, out=tmp_path)
    path = tmp_path / "checkpoint.pt"
    checkpoint = pyrovae.load_checkpoint(path)  # edited and saved with its checksum
    for group in checkpoint["aux_optimizer"]["param_groups"]:
        group.update(lr=1e-3, betas=(0.9, 0.999))
    pyrovae.save_checkpoint(checkpoint, path)
    pyrovae.fit(make("factor_vae"), x, epochs=2, batch_size=128, progress=False, out=tmp_path, resume=True)
    groups = torch.load(path, weights_only=True)["aux_optimizer"]["param_groups"]
    assert [(g["lr"], tuple(g["betas"])) for g in groups] == [(1e-4, (0.5, 0.9))]


def test_factor_vae_resume_restores_the_discriminator_and_its_optimizer(digits, tmp_path):
    """A run killed after epoch 1 and resumed in a fresh process reaches the uninterrupted run's
    weights, discriminator included (CPU: bitwise)."""
    x = digits[:512]
    straight = make("factor_vae")
    initial = {k: v.clone() for k, v in straight.state_dict().items()}
    pyrovae.fit(straight, x, epochs=2, batch_size=128, progress=False)
    first = make("factor_vae")
    first.load_state_dict(initial)
    pyrovae.fit(first, x, epochs=1, batch_size=128, progress=False, out=tmp_path)
    fresh = make("factor_vae")  # new weights: everything must come from the checkpoint
    result = pyrovae.fit(fresh, x, epochs=2, batch_size=128, progress=False, out=tmp_path, resume=True)
    assert result.step == 8 and "aux_tc" in result.history[-1]
    for key, value in straight.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


# ---------------------------------------------------------------- β-TCVAE
def _tcvae_with_posteriors(loc: torch.Tensor, scale: torch.Tensor, **options) -> BetaTCVAE:
    """A β-TCVAE on one-hot data x_n = e_n whose linear encoder gives q(z | x_n) = N(loc_n, scale_n²)."""
    num_data, z_dim = loc.shape
    model = BetaTCVAE((num_data,), z_dim, hidden=(), num_data=num_data, **options)
    linear = model.encoder.net[0]
    with torch.no_grad():
        linear.bias.zero_()
        linear.weight[:z_dim] = loc.T
        linear.weight[z_dim:] = (scale - 1e-5).expm1().log().T  # inverse of softplus(.) + 1e-5
    return model


def _correlated_posteriors(num_data: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    t = torch.linspace(-1.5, 1.5, num_data)
    loc = torch.stack([t + 0.3 * torch.randn(num_data, generator=g), 0.8 * t + 0.3 * torch.randn(num_data, generator=g)], -1)
    return loc, 0.4 + 0.5 * torch.rand(num_data, 2, generator=g)


def _exact_decomposition(loc: torch.Tensor, scale: torch.Tensor) -> dict[str, float]:
    """MI, TC and dimension-wise KL of the exact aggregate posterior, each from its own definition.

    q(z) is the mixture over all N points.  Integrals over z in R² by the
    trapezoid rule on [-7, 7]² with h = 0.1: for these smooth, Gaussian-tailed
    integrands it is exact to 1e-12 (h = 0.1, 0.05 and 0.02 agree to 1e-12).
    """
    loc, scale = loc.double(), scale.double()
    num_data = loc.shape[0]
    h = 0.1
    grid = torch.arange(-7.0, 7.0 + h / 2, h, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)  # (G², 2)
    log_q_n_k = Normal(loc[:, None, :], scale[:, None, :]).log_prob(z)  # (N, G², 2): log q(z_k | n)
    log_q_n = log_q_n_k.sum(-1)  # log q(z | n)
    log_q = torch.logsumexp(log_q_n, 0) - math.log(num_data)  # log q(z)
    log_q_k = torch.logsumexp(log_q_n_k, 0) - math.log(num_data)  # log q(z_k), (G², 2)
    log_p_k = Normal(0.0, 1.0).log_prob(z)
    area = h * h
    # I(z; n) = E_n KL(q(z|n) || q(z))
    mi = (log_q_n.exp() * (log_q_n - log_q)).sum(-1).mean() * area
    # TC = KL(q(z) || q(z_1) q(z_2))
    tc = (log_q.exp() * (log_q - log_q_k.sum(-1))).sum() * area
    # Σ_k KL(q(z_k) || p(z_k)), each a 1-D integral (the 2-D grid sums it once per grid value of the other axis)
    dim_kl = (log_q_k.exp() * (log_q_k - log_p_k)).sum() * h / grid.numel()
    return {"mi": float(mi), "tc": float(tc), "dim_kl": float(dim_kl)}


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_beta_tcvae_terms_match_the_exact_aggregate_posterior(estimator):
    """With the minibatch = the whole (small) data set, each estimated term is unbiased; it lies
    within 4 standard errors of the exact value (R = 4,000 replicates; a false alarm has
    probability 6e-5 per comparison), and the three sum to E_x KL(q(z|x) || p(z))."""
    loc, scale = _correlated_posteriors()
    num_data = loc.shape[0]
    exact = _exact_decomposition(loc, scale)
    exact_kl = float(kl_divergence(Normal(loc.double(), scale.double()), Normal(0.0, 1.0)).sum(-1).mean())
    # the decomposition theorem, each term computed from its own definition (quadrature error 1e-12)
    assert sum(exact.values()) == pytest.approx(exact_kl, abs=1e-9)
    assert min(exact.values()) > 0.05  # every term is present in this configuration

    model = _tcvae_with_posteriors(loc, scale, estimator=estimator)
    x = torch.eye(num_data)
    replicates = 4000
    with torch.no_grad():
        z = model.posterior(x).sample((replicates,))  # (R, N, 2): R draws for each data point
        mi, tc, dim_kl = model.kl_decomposition(x, z, num_data)
        # the three terms telescope to log q(z|x) - log p(z) per sample (float32 rounding)
        single_sample_kl = model.posterior(x).log_prob(z) - model.prior().log_prob(z)
        torch.testing.assert_close(mi + tc + dim_kl, single_sample_kl, atol=1e-5, rtol=1e-5)
    estimates = {"mi": mi, "tc": tc, "dim_kl": dim_kl, "kl": single_sample_kl}
    for name, exact_value in {**exact, "kl": exact_kl}.items():
        per_replicate = estimates[name].double().mean(-1)  # average over the N data points
        se = float(per_replicate.std()) / math.sqrt(replicates)
        assert abs(float(per_replicate.mean()) - exact_value) < 4 * se, (name, float(per_replicate.mean()), exact_value, se)


def test_beta_tcvae_stratified_density_estimate_is_unbiased_for_any_batch_size():
    """Averaged over every minibatch that contains n_i (exact enumeration), the MSS estimate of
    q(z_i) and of each q(z_ik) equals the exact mixture over all N points (float64 rounding);
    MWS's does not when B < N, which is why MSS is the default."""
    loc, scale = _correlated_posteriors()
    loc, scale = loc.double(), scale.double()
    num_data, batch_size = loc.shape[0], 4
    z_self = Normal(loc[0], scale[0]).sample()  # a draw from q(z | n_0)
    log_q_all = Normal(loc, scale).log_prob(z_self)  # log q(z_self,k | n_j) for all j, (N, 2)
    exact = (torch.logsumexp(log_q_all.sum(-1), 0) - math.log(num_data)).exp()
    exact_k = (torch.logsumexp(log_q_all, 0) - math.log(num_data)).exp()
    for estimator, unbiased in (("mss", True), ("mws", False)):
        totals, totals_k, count = 0.0, 0.0, 0
        for others in itertools.combinations(range(1, num_data), batch_size - 1):
            batch = [0, *others]
            # row 0 of the (B, B, d) matrix: z_self against each batch member; other rows are irrelevant
            log_q = log_q_all[batch].unsqueeze(0).expand(batch_size, batch_size, 2)
            log_qz, _ = aggregate_log_densities(log_q, num_data, estimator)
            log_qk = torch.logsumexp(log_importance_weights(batch_size, num_data, estimator)[0, :, None]
                                     + log_q_all[batch], 0)
            totals, totals_k, count = totals + log_qz[0].exp(), totals_k + log_qk.exp(), count + 1
        assert count == math.comb(num_data - 1, batch_size - 1)
        matches = torch.allclose(totals / count, exact, rtol=1e-12) and torch.allclose(totals_k / count, exact_k, rtol=1e-12)
        assert matches == unbiased, estimator


def test_beta_tcvae_with_unit_weights_is_the_elbo(digits):
    """α = β = γ = 1 gives back the ELBO: the training loss and its gradients equal the VAE's
    (same weights, same random numbers; float32 rounding of the cancelling log q(z) terms)."""
    x = digits[:64]
    model = BetaTCVAE(**SMALL, alpha=1.0, beta=1.0, gamma=1.0, num_data=1397)
    vae = VAE(**SMALL)
    vae.load_state_dict(model.state_dict())
    results = []
    for m, kwargs in ((model, model.training_kwargs(0)), (vae, {})):
        pyro.set_rng_seed(5)
        loss = Trace_ELBO().loss_and_grads(m.model, m.guide, x, **kwargs)
        results.append((loss, [p.grad.clone() for p in m.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for g_tc, g_vae in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g_tc, g_vae, rtol=1e-3, atol=1e-4)


def test_beta_tcvae_factor_weights_the_three_terms(digits):
    x = digits[:32]
    model = make("beta_tcvae", alpha=0.5, beta=3.0, gamma=2.0)
    guide_trace = poutine.trace(model.guide).get_trace(x, num_data=1397)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, num_data=1397)
    mi, tc, dim_kl = model.kl_decomposition(x, guide_trace.nodes["z"]["value"], 1397)
    torch.testing.assert_close(model_trace.nodes["kl_decomposition"]["fn"].log_factor, -(0.5 * mi + 3.0 * tc + 2.0 * dim_kl))


def test_beta_tcvae_needs_the_data_set_size():
    model = BetaTCVAE(**SMALL)
    with pytest.raises(ValueError, match="num_data"):
        model.training_kwargs(0)
    model.set_num_data(500)
    assert model.training_kwargs(0) == {"num_data": 500} and model.config["num_data"] == 500
    with pytest.raises(ValueError, match="Expected 1 <= batch size <= num_data"):
        log_importance_weights(8, 4)


# ---------------------------------------------------------------- DIP-VAE
@pytest.mark.parametrize("dip_type", ["i", "ii"])
def test_dip_vae_penalty_is_the_closed_form(dip_type, digits):
    x = digits[:32]
    model = make("dip_vae", dip_type=dip_type, lambda_od=2.0, lambda_d=3.0)
    trace = poutine.trace(model.model).get_trace(x, **model.training_kwargs(0))
    posterior = model.posterior(x).base_dist
    mu = posterior.loc.double()
    covariance = torch.cov(mu.T, correction=0)
    if dip_type == "ii":
        covariance = covariance + torch.diag(posterior.scale.double().pow(2).mean(0))
    off = covariance - torch.diag(covariance.diagonal())
    penalty = 2.0 * off.pow(2).sum() + 3.0 * (covariance.diagonal() - 1).pow(2).sum()
    torch.testing.assert_close(trace.nodes["dip_penalty"]["fn"].log_factor.double(), -penalty.expand(32), rtol=1e-5, atol=1e-5)


def test_fit_tells_beta_tcvae_the_data_set_size(digits):
    model = BetaTCVAE(**SMALL)
    pyrovae.fit(model, digits, epochs=1, batch_size=256, progress=False)
    assert model.num_data == len(digits) == model.config["num_data"]
