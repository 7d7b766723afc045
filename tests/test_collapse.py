"""Posterior-collapse diagnostics: exact on constructed guides, and a collapsing vs a rescued PixelVAE."""

from __future__ import annotations

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovae
from pyrovae.metrics.collapse import (
    COLLAPSE_METRICS,
    active_units,
    active_units_from_means,
    kl_per_dimension,
    mutual_information,
)
from pyrovae.models import PixelVAE
from pyrovae.objectives import FreeBitsELBO


# ---------------------------------------------------------------- exactness on known guides
def test_active_units_counts_exactly_the_dims_with_variance_above_the_threshold():
    # column j is +-a_j alternating over 10 rows: population variance exactly a_j^2
    a = torch.tensor([1.0, 0.2, 0.11, 0.09, 0.0, 0.5])  # variances 1, 0.04, 0.0121, 0.0081, 0, 0.25
    signs = torch.tensor([1.0, -1.0]).repeat(5)[:, None]
    means = signs * a
    assert active_units_from_means(means) == 4
    assert active_units_from_means(means, threshold=0.03) == 3
    result = active_units(lambda x: dist.Normal(x, 1.0).to_event(1), means, points_per_call=3)
    assert result["active_units"] == 4
    torch.testing.assert_close(torch.tensor(result["active_units_variance"], dtype=torch.float64), a.double() ** 2)


def test_kl_per_dimension_equals_the_closed_form_of_a_linear_gaussian_guide():
    torch.manual_seed(0)
    A, scale = torch.randn(3, 4, dtype=torch.float64), torch.tensor([0.5, 1.0, 2.0, 0.1], dtype=torch.float64)
    x = torch.randn(50, 3, dtype=torch.float64)
    prior = dist.Normal(torch.zeros(4, dtype=torch.float64), 1.0).to_event(1)
    result = kl_per_dimension(lambda xb: dist.Normal(xb @ A, scale).to_event(1), x, prior, points_per_call=7)
    loc = x @ A
    closed = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log())  # KL(N(m, s^2) || N(0, 1)) per dimension
    torch.testing.assert_close(torch.tensor(result["kl_per_dimension"], dtype=torch.float64), closed.mean(0))
    assert result["kl_total"] == pytest.approx(float(closed.mean(0).sum()), rel=1e-12)


def test_mutual_information_matches_quadrature_within_four_standard_errors():
    # x uniform over 4 points; q(z | x_n) = N(mu_n, s_n) in dimension 0, and the same N(0, 1) for
    # every point in dimension 1 (which adds exactly 0 to I). Reference: quadrature of
    # (1/N) sum_n int q_n (log q_n - log mean_m q_m) on a fine grid (error << 1e-6).
    mu = torch.tensor([-2.0, -0.5, 0.3, 2.5], dtype=torch.float64)
    s = torch.tensor([1.0, 0.5, 0.8, 1.2], dtype=torch.float64)

    def posterior(x):
        i = x[:, 0].long()
        return dist.Normal(torch.stack([mu[i], torch.zeros_like(mu[i])], -1),
                           torch.stack([s[i], torch.ones_like(s[i])], -1)).to_event(1)

    grid = torch.linspace(-20, 20, 200_001, dtype=torch.float64)
    log_q = dist.Normal(mu[:, None], s[:, None]).log_prob(grid)  # (4, G)
    log_mix = log_q.logsumexp(0) - math.log(4)
    reference = float(torch.trapezoid(log_q.exp() * (log_q - log_mix), grid).mean())

    x = torch.arange(4, dtype=torch.float64)[:, None]
    result = mutual_information(posterior, x, num_samples=20_000, rng=0, points_per_call=3)
    se = result["mutual_information_stderr"]
    assert 0 < se < 0.01
    assert abs(result["mutual_information"] - reference) < 4 * se, (result, reference)
    assert 0 < reference < math.log(4)


def test_mutual_information_of_identical_posteriors_is_exactly_zero():
    x = torch.randn(6, 3)
    result = mutual_information(lambda xb: dist.Normal(torch.zeros(len(xb), 2), 1.0).to_event(1), x)
    assert result["mutual_information"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: active_units("not a function", torch.zeros(3, 2)), "posterior"),
        (lambda: active_units(lambda x: dist.Normal(x, 1.0).to_event(1), torch.zeros(1, 2)), "N >= 2"),
        (lambda: mutual_information(lambda x: dist.Normal(x, 1.0).to_event(1), torch.zeros(3, 2), num_samples=0),
         "num_samples"),
        (lambda: active_units(lambda x: dist.Normal(x, 1.0), torch.zeros(3, 2)), "event shape"),
    ],
)
def test_bad_input_is_refused_by_name(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ---------------------------------------------------------------- collapse on a tiny set
def stripes(num_data: int = 200, side: int = 8) -> torch.Tensor:
    """Binary images whose columns are constant: the first row (8 fair bits) decides the rest.

    A PixelCNN that sees the pixel above models these exactly without z, so the ELBO gains
    nothing from encoding the first row (the reconstruction saved is at most the KL paid):
    the textbook setting for posterior collapse (Chen et al. 2017, arXiv:1611.02731, §2.2).
    """
    g = torch.Generator().manual_seed(0)
    first_row = torch.bernoulli(torch.full((num_data, 1, 1, side), 0.5), generator=g)
    return first_row.expand(num_data, 1, side, side).contiguous()


def train(objective) -> PixelVAE:
    pyro.set_rng_seed(0)
    model = PixelVAE(x_shape=(1, 8, 8), z_dim=4, arch="mlp", hidden=(32,),
                     pixelcnn_channels=16, pixelcnn_layers=2, pixelcnn_kernel=3)
    pyrovae.fit(model, stripes(), epochs=50, batch_size=50, lr=1e-2, objective=objective, device="cpu",
                progress=False)
    return model


def diagnose(model: PixelVAE) -> dict:
    x = stripes()
    numbers = {}
    for name, metric in COLLAPSE_METRICS.items():
        numbers.update(metric(model.posterior, x, prior=model.prior()))
    return numbers


def test_free_bits_rescue_a_collapsing_autoregressive_vae_in_all_three_diagnostics():
    collapsed = diagnose(train("elbo"))
    pyro.clear_param_store()
    rescued = diagnose(train(FreeBitsELBO(1.0)))
    # active units: none of 4 vs all 4 (measured: 0 vs 4)
    assert collapsed["active_units"] == 0 and rescued["active_units"] == 4
    # KL per dimension: ~0 everywhere vs near the 1-nat floor everywhere (measured: <= 0.008 vs >= 0.87)
    assert max(collapsed["kl_per_dimension"]) < 0.05
    assert min(rescued["kl_per_dimension"]) > 0.5
    # I(x; z): ~0 vs several nats, apart by far more than their standard errors
    # (measured: 0.022 +- 0.004 vs 3.42 +- 0.03; at most log 200 = 5.3)
    se = math.hypot(collapsed["mutual_information_stderr"], rescued["mutual_information_stderr"])
    assert collapsed["mutual_information"] < 0.1
    assert rescued["mutual_information"] - collapsed["mutual_information"] > max(2.0, 10 * se)


def test_pyrovae_evaluate_reports_the_diagnostics_of_a_run(tmp_path, capsys):
    from pyrovae.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "pixel_vae", "--dataset", "digits", "--binarize", "--z-dim", "2",
                 "-o", "pixelcnn_layers=1", "-o", "pixelcnn_channels=4", "--epochs", "1", "--no-jit",
                 "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    # comma-separated or apart; digits has no ground-truth factors, which these do not need
    assert main(["evaluate", str(out), "--num-samples", "5", "--num-points", "30",
                 "--metrics", "active_units,kl_per_dimension", "mutual_information"]) == 0
    printed = capsys.readouterr().out
    numbers = json.loads((out / "evaluation.json").read_text())
    for key in ("active_units", "kl_total", "kl_per_dimension", "mutual_information", "mutual_information_stderr"):
        assert key in numbers and key in printed
    assert len(numbers["kl_per_dimension"]) == 2 and numbers["kl_total"] == pytest.approx(sum(numbers["kl_per_dimension"]))
    assert 0 <= numbers["active_units"] <= 2 and numbers["mutual_information"] <= math.log(30) + 1e-9
    assert main(["evaluate", str(out), "--metrics", "active_unit"]) == 2  # a misspelling is a one-line error
    assert "active_units" in capsys.readouterr().err
