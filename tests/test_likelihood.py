"""Per-point log p(x) and IWAE bounds against the linear-Gaussian model's closed forms.

Tolerances are Monte Carlo standard errors: an estimate passes within 3 of
them (a 0.3% chance per check of failing by bad luck, fixed here by the seeds),
and exact cases within float64 rounding.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovae
from pyrovae.datasets.synthetic import LinearGaussian
from pyrovae.metrics.likelihood import ROWS_PER_CALL, BoundResult, LogLikelihoodResult, iwae_bound, log_likelihood

LG = LinearGaussian(x_dim=5, z_dim=2, sigma=0.5, seed=0)


def data(num: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return LG.sample(num, generator=torch.Generator().manual_seed(1)).to(dtype)


def approximate_guide(shift: float = 0.5, widen: float = 2.0):
    """q(z | x) = N(posterior mean + shift, (widen * L)(widen * L)^T): a wrong guide with known KL."""

    def q(x: torch.Tensor) -> dist.MultivariateNormal:
        post = LG.posterior(x)
        # the covariance is shared by all points: an unexpanded Cholesky factor keeps log_prob fast
        return dist.MultivariateNormal((post.loc + shift).to(x.dtype), scale_tril=(widen * post._unbroadcasted_scale_tril).to(x.dtype))

    def guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", q(x))

    guide.q = q
    return guide


def exact_elbo(x: torch.Tensor, guide) -> torch.Tensor:
    """ELBO = log p(x) - KL(q(z|x) || p(z|x)) per point."""
    q, post = guide.q(x.double()), LG.posterior(x)
    return LG.log_prob(x) - torch.distributions.kl_divergence(q, post)


def z_scores(estimate: torch.Tensor, stderr: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    return (estimate - exact) / stderr


# ------------------------------------------------------------- exactness
def test_exact_posterior_guide_is_exact_with_zero_variance():
    x = data(20, torch.float64)
    result = log_likelihood((LG.model, LG.guide), x, num_samples=64, chunk_size=10)
    # every weight equals p(x): only float64 rounding of a few terms of size ~10 remains
    torch.testing.assert_close(result.log_px, LG.log_prob(x), rtol=0, atol=1e-12)
    assert float(result.stderr.max()) < 1e-13
    torch.testing.assert_close(result.ess, torch.full_like(result.ess, 64.0), rtol=1e-12, atol=0)
    assert bool((result.khat == -math.inf).all()), "equal weights are bounded: k-hat = -inf, not unreliable"
    for bound in result.bounds.values():
        torch.testing.assert_close(bound.value, LG.log_prob(x), rtol=0, atol=1e-12)


def test_estimate_within_three_standard_errors_of_exact_log_px():
    x = data(100)
    result = log_likelihood((LG.model, approximate_guide()), x, num_samples=2000)
    exact = LG.log_prob(x)
    z = z_scores(result.log_px, result.stderr, exact)
    # per point: |z| > 3 has probability 0.27%; 5 of 100 would be a 1e-6 event
    assert int((z.abs() > 3).sum()) < 5, z
    # the average over points, with the standard error of the average
    assert abs(result.mean - float(exact.mean())) < 3 * result.mean_stderr
    assert 0 < result.mean_stderr < 0.05  # a real, not a vanishing, uncertainty


def test_per_point_not_the_batch_joint():
    """Pyro's importance helpers weight the joint of what they are given; per point means one point each."""
    x = data(50)
    guide = approximate_guide()
    result = log_likelihood((LG.model, guide), x, num_samples=1000, batch_size=50)
    # a batch's joint weight has an ESS near 1; per point the weights are fine
    assert float(result.ess.min()) > 20
    for i in range(5):  # reference: Pyro's own vectorized weights for one point at a time
        log_w = pyro.infer.importance.vectorized_importance_weights(
            LG.model, guide, x[i : i + 1], num_samples=1000, max_plate_nesting=1
        )[0].double()
        reference = torch.logsumexp(log_w, 0) - math.log(1000)
        w = (log_w - log_w.max()).exp()
        reference_se = w.std() / math.sqrt(1000) / w.mean()
        combined = math.sqrt(float(result.stderr[i]) ** 2 + float(reference_se) ** 2)
        assert abs(float(result.log_px[i]) - float(reference)) < 3 * combined


def test_chunk_and_batch_sizes_agree_within_standard_errors():
    x = data(30)
    guide = approximate_guide()
    reference = log_likelihood((LG.model, guide), x, num_samples=300, chunk_size=300, batch_size=30)
    for options in ({"chunk_size": 7, "batch_size": 30}, {"batch_size": 4}):
        other = log_likelihood((LG.model, guide), x, num_samples=300, seed=1, **options)
        combined = (other.stderr**2 + reference.stderr**2).sqrt()
        assert int(((other.log_px - reference.log_px).abs() > 3 * combined).sum()) <= 1


def test_elbo_is_exact_and_bounds_increase_with_k():
    x = data(100)
    guide = approximate_guide()
    exact = LG.log_prob(x)
    elbo = iwae_bound((LG.model, guide), x, 1, num_estimates=400, seed=1)
    assert isinstance(elbo, BoundResult) and elbo.num_estimates == 400
    assert abs(elbo.mean - float(exact_elbo(x, guide).mean())) < 3 * elbo.mean_stderr
    bounds = [elbo] + [iwae_bound((LG.model, guide), x, k, num_estimates=40, seed=k) for k in (10, 100)]
    # E ELBO <= E IWAE-10 <= E IWAE-100 <= log p(x), each step far beyond the noise (independent seeds)
    for lower, upper in zip(bounds, bounds[1:]):
        assert upper.mean - lower.mean > 3 * math.hypot(lower.mean_stderr, upper.mean_stderr)
    assert bounds[-1].mean < float(exact.mean()) + 3 * bounds[-1].mean_stderr
    # the same ordering from one log_likelihood call's samples
    result = log_likelihood((LG.model, guide), x, num_samples=1000, bounds=(1, 10, 100))
    means = [result.bounds[k].mean for k in (1, 10, 100)] + [result.mean]
    assert means == sorted(means)


# ------------------------------------------------------------- the true model
def test_training_weights_never_enter_the_estimate():
    x = data(200)
    vae = pyrovae.BetaVAE(x_shape=(5,), z_dim=2, hidden=(16,), likelihood="gaussian", likelihood_scale=0.5, beta=4.0)
    pyrovae.fit(vae, x, epochs=2, batch_size=50, progress=False)  # trained with kl_weight = 4
    reference = log_likelihood(vae, x[:20], num_samples=200)

    vae.default_kl_weight = 1.0  # the training weight unset
    assert torch.equal(log_likelihood(vae, x[:20], num_samples=200).log_px, reference.log_px)

    # programs that still scale "z" by β, as in training, and the trainer's N/B scaling
    # (each is the program's own scale to log_likelihood: dropped, with a warning naming the sites)
    beta_pair = (lambda x: vae.model(x, kl_weight=4.0), lambda x: vae.guide(x, kl_weight=4.0))
    with pytest.warns(UserWarning, match=r"own scales on \{'guide:z': 4.0, 'model:z': 4.0\} are dropped"):
        assert torch.equal(log_likelihood(beta_pair, x[:20], num_samples=200).log_px, reference.log_px)
    scaler = pyrovae.plate_scale("data", 10.0)
    scaled_pair = (scaler(vae.model), scaler(vae.guide))
    with pytest.warns(UserWarning, match="are dropped"):
        assert torch.equal(log_likelihood(scaled_pair, x[:20], num_samples=200).log_px, reference.log_px)

    plain = pyrovae.VAE(x_shape=(5,), z_dim=2, hidden=(16,), likelihood="gaussian", likelihood_scale=0.5)
    plain.load_state_dict(vae.state_dict())
    assert torch.equal(log_likelihood(plain, x[:20], num_samples=200).log_px, reference.log_px)


def test_image_vae_elbo_matches_pyro_trace_elbo():
    """Per-point sums over an image's event dimensions agree with Pyro's own ELBO."""
    x = (torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    vae = pyrovae.VAE(x_shape=(1, 6, 6), z_dim=3, hidden=(16,), arch="mlp")
    ours = iwae_bound(vae, x, 1, num_estimates=200)
    theirs = pyrovae.evaluate_elbo(vae, x, num_particles=200)
    # Pyro's estimate averages 200 particles too, so its standard error is about ours
    assert abs(ours.mean - theirs) < 3 * math.sqrt(2) * ours.mean_stderr
    result = log_likelihood(vae, x, num_samples=200, bounds=(1,))
    assert result.event_numel == 36
    assert result.mean > ours.mean


def test_decoder_rows_are_bounded_by_batch_and_chunk_size():
    x = (torch.rand(30, 12, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    vae = pyrovae.VAE(x_shape=(12,), z_dim=2, hidden=(8,))
    rows = []
    vae.decoder.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[:-1].numel()))
    log_likelihood(vae, x, num_samples=500, batch_size=8, chunk_size=16)
    assert max(rows) <= 8 * 16
    rows.clear()
    log_likelihood(vae, x, num_samples=500)  # defaults aim at ROWS_PER_CALL rows
    assert max(rows) <= ROWS_PER_CALL


def test_module_mode_and_global_rng_are_left_alone():
    x = data(10)
    vae = pyrovae.VAE(x_shape=(5,), z_dim=2, hidden=(8,), likelihood="gaussian")
    vae.train()
    state = torch.get_rng_state()
    first = log_likelihood(vae, x, num_samples=20)
    assert vae.training and torch.equal(torch.get_rng_state(), state)
    assert torch.equal(log_likelihood(vae, x, num_samples=20).log_px, first.log_px)  # common random numbers


# ------------------------------------------------------------- result and errors
def test_result_summary_and_bits_per_dim():
    x = data(20)
    result = log_likelihood((LG.model, approximate_guide()), x, num_samples=200)
    assert isinstance(result, LogLikelihoodResult)
    assert result.log_px.shape == result.stderr.shape == result.ess.shape == result.khat.shape == (20,)
    assert result.bits_per_dim == pytest.approx(-result.mean / (5 * math.log(2)))
    assert 0 <= result.share_khat_above_0_7 <= 1
    row = result.summary()
    assert list(row)[:4] == ["elbo", "iwae_10", "iwae_100", "log_px"]
    assert row["num_samples"] == 200


def test_khat_needs_21_samples_for_a_tail():
    """arviz fits the Pareto tail to at least 5 of the K weights: below K = 21 k-hat is inf (unreliable,
    so counted above 0.7), from K = 21 it is finite."""
    x = data(6)
    few = log_likelihood((LG.model, approximate_guide()), x, num_samples=20, bounds=(1,))
    enough = log_likelihood((LG.model, approximate_guide()), x, num_samples=21, bounds=(1,))
    assert bool((few.khat == math.inf).all()) and few.share_khat_above_0_7 == 1.0
    assert bool(enough.khat.isfinite().all())


def test_global_latent_is_refused_by_name():
    def model(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0).expand([x.shape[0], 5]).to_event(1), obs=x)

    def guide(x):
        pyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"the model's site 'w' lies outside it \(a global latent"):
        log_likelihood((model, guide), data(4), num_samples=5)


@pytest.mark.parametrize(
    "programs, message",
    [
        ((lambda x: pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(2), obs=x), lambda x: None),
         "No per-point plate found: no pyro.plate around the observed site 'x'"),
        ((LG.model, lambda x: None), r"latent sites \['z'\] have no site in the guide"),
    ],
    ids=["observed-outside-plate", "latent-without-proposal"],
)
def test_pairs_without_a_per_point_likelihood_are_refused(programs, message):
    with pytest.raises(ValueError, match=message):
        log_likelihood(programs, data(4), num_samples=5)


def test_a_single_sample_gives_the_elbo_and_no_standard_error(recwarn):
    x = data(5)
    result = log_likelihood((LG.model, approximate_guide()), x, num_samples=1, bounds=(1,))
    torch.testing.assert_close(result.log_px, result.bounds[1].value)
    assert bool(result.stderr.isnan().all()) and bool(result.khat.isnan().all()) and bool((result.ess == 1).all())
    assert not [w for w in recwarn if "degrees of freedom" in str(w.message)]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 10, "bounds": (20,)}, r"in \[1, num_samples=10\]"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"batch_size": -1}, "batch_size"),
        ({"data": torch.zeros(0, 5)}, "N >= 1"),
    ],
)
def test_bad_arguments_are_refused(options, message):
    options = {"data": data(4), **options}
    with pytest.raises(ValueError, match=message):
        log_likelihood((LG.model, LG.guide), **options)


def test_one_log_weight_buffer_serves_every_batch(monkeypatch):
    """Item 18: one K x batch buffer for all batches (a new one per batch fragmented the heap after a fit)."""
    from pyrovae.metrics import likelihood

    sizes = []
    allocate = likelihood._log_weight_buffer

    def counted(num_samples: int, batch_size: int) -> torch.Tensor:
        sizes.append((num_samples, batch_size))
        return allocate(num_samples, batch_size)

    monkeypatch.setattr(likelihood, "_log_weight_buffer", counted)
    x = data(20, torch.float64)
    # 20 points in batches of 7: the last batch (6 points) is a view of the same buffer's first 64 * 6 numbers
    result = log_likelihood((LG.model, LG.guide), x, num_samples=64, batch_size=7, chunk_size=10)
    assert sizes == [(64, 7)]
    # with the exact posterior as guide every weight is p(x): each point's slot was its own, in every batch
    torch.testing.assert_close(result.log_px, LG.log_prob(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(result.bounds[10].value, LG.log_prob(x), rtol=0, atol=1e-12)
    assert bool((result.khat == -math.inf).all())
    # the results own their memory: none is a view of the buffer that the next call would overwrite
    assert all(t._base is None for t in (result.log_px, result.stderr, result.ess, result.khat))
    # more points than one batch never needs a larger buffer; fewer points than batch_size, a smaller one
    sizes.clear()
    log_likelihood((LG.model, LG.guide), x[:3], num_samples=64, batch_size=7)
    assert sizes == [(64, 3)]
