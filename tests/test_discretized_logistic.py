"""The discretized logistic likelihood: an exact probability for each of the 256 grey levels."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from pyrovae.likelihoods import DiscretizedLogistic, make_likelihood

#: (loc, scale) pairs: central, sharp, broad, far outside [0, 1] on both sides, on an edge
PARAMS = [(0.5, 0.1), (0.3, 1e-3), (0.5, 10.0), (-3.0, 0.05), (4.0, 0.05), (0.0, 0.01), (1.0, 0.01)]


@pytest.mark.parametrize(("loc", "scale"), PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_256_probabilities_of_a_pixel_sum_to_one(loc, scale, dtype):
    d = DiscretizedLogistic(torch.tensor([loc], dtype=dtype), torch.tensor([scale], dtype=dtype))
    values = d.enumerate_support()  # (256, 1)
    assert values.shape == (256, 1) and values[0, 0] == 0 and values[-1, 0] == 1
    total = d.log_prob(values).logsumexp(0)
    # float64: a sum of 256 terms, each exact to ~1e-16 relative; float32 to ~1e-7 each
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert abs(float(total)) < tol


def _sigmoid(t: float) -> float:
    return float(torch.sigmoid(torch.tensor(t, dtype=torch.float64)))


@pytest.mark.parametrize(("loc", "scale"), PARAMS[:3] + [(0.01, 0.01)])
def test_edge_and_inner_bins_match_the_logistic_cdf(loc, scale):
    d = DiscretizedLogistic(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    p = d.log_prob(torch.arange(256, dtype=torch.float64) / 255).exp()
    cdf = lambda t: _sigmoid((t - loc) / scale)  # noqa: E731
    # the first bin holds everything below 0.5/255, the last everything above 254.5/255
    assert p[0].item() == pytest.approx(cdf(0.5 / 255), rel=1e-12, abs=1e-300)
    assert p[255].item() == pytest.approx(1 - cdf(254.5 / 255), rel=1e-9, abs=1e-15)
    for k in (1, 77, 128, 254):
        assert p[k].item() == pytest.approx(cdf((k + 0.5) / 255) - cdf((k - 0.5) / 255), rel=1e-9, abs=1e-15)


def test_a_sharp_logistic_scores_far_tail_bins_finitely_and_accurately():
    # sigma(b) - sigma(a) underflows to 0 in float32 here (both ~e^-440); the log-space identity does not
    loc, scale, k = 0.9, 2e-3, 1
    d32 = DiscretizedLogistic(torch.tensor(loc), torch.tensor(scale))
    lp = d32.log_prob(torch.tensor(k / 255))
    b, a = ((k + 0.5) / 255 - loc) / scale, ((k - 0.5) / 255 - loc) / scale
    ref = torch.tensor([b, a], dtype=torch.float64).sigmoid()
    assert torch.isfinite(lp) and float(lp) == pytest.approx(float((ref[0] - ref[1]).log()), rel=1e-5)


@pytest.mark.parametrize(("loc", "scale"), [(0.3, 0.02), (-0.01, 0.02), (0.98, 0.05)])
def test_sampling_matches_the_probabilities(loc, scale):
    # Pearson chi-square over the levels with expected count >= 5 (the rest pooled into one cell);
    # with a fixed seed the statistic is one draw of chi2(df) under a correct sampler, so
    # requiring p > 1e-3 fails a correct sampler with probability 1e-3 over seeds
    torch.manual_seed(0)
    n = 20_000
    d = DiscretizedLogistic(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    x = d.sample((n,))
    assert bool(DiscretizedLogistic.support.check(x).all())
    counts = torch.bincount((x * 255).round().long(), minlength=256).double()
    expected = n * d.log_prob(torch.arange(256, dtype=torch.float64) / 255).exp()
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    if exp[-1] < 5:  # the pooled cell itself too small: fold it into the largest one
        obs, exp = obs[:-1], exp[:-1]
        obs[exp.argmax()] += counts[~big].sum()
        exp[exp.argmax()] += expected[~big].sum()
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    df = len(obs) - 1
    assert df >= 2 and stats.chi2.sf(chi2, df) > 1e-3, (chi2, df)


def test_mean_is_the_exact_expectation_over_the_levels():
    loc = torch.tensor([[0.2, -0.1], [0.7, 1.3]], dtype=torch.float64)
    scale = torch.tensor([[0.05, 0.3], [0.001, 0.1]], dtype=torch.float64)
    d = DiscretizedLogistic(loc, scale)
    values = d.enumerate_support()
    brute = (values * d.log_prob(values).exp()).sum(0)
    torch.testing.assert_close(d.mean, brute, rtol=1e-12, atol=1e-14)


def test_the_likelihood_scores_a_whole_image_and_broadcasts_particles():
    likelihood = make_likelihood("discretized_logistic", (1, 3, 4))
    params = {"loc": torch.rand(5, 2, 1, 3, 4), "scale": torch.randn(5, 2, 1, 3, 4)}  # (K, B, ...)
    d = likelihood(params)
    assert d.batch_shape == (5, 2) and d.event_shape == (1, 3, 4)
    x = torch.randint(0, 256, (2, 1, 3, 4)) / 255
    lp = d.log_prob(x)
    assert lp.shape == (5, 2) and bool((lp < 0).all())
    by_pixel = d.base_dist.log_prob(x.expand(5, 2, 1, 3, 4)).sum((-3, -2, -1))
    torch.testing.assert_close(lp, by_pixel)
    assert likelihood.mean(params).shape == (5, 2, 1, 3, 4)
    assert d.sample().shape == (5, 2, 1, 3, 4)


@pytest.mark.parametrize("x", [torch.tensor([[0.5, 0.25]]), torch.tensor([[-1 / 255, 0.0]]), torch.tensor([[1.0, 2.0]])])
def test_off_grid_data_are_refused_with_the_convention(x):
    with pytest.raises(ValueError, match="likelihood='discretized_logistic' expects data on the 8-bit grid k / 255"):
        make_likelihood("discretized_logistic", (2,)).validate(x)
    make_likelihood("discretized_logistic", (2,)).validate(torch.tensor([[0.0, 128 / 255]]))


def test_bad_options_raise():
    with pytest.raises(ValueError, match="min_scale"):
        make_likelihood("discretized_logistic", (2,), min_scale=0)
