"""PixelVAE: the autoregressive p(x | z) is a normalised distribution, sampled as scored, on any batch."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy import stats
from torch import nn

from pyrovae.models import PixelVAE


def _randomize(model: PixelVAE) -> PixelVAE:
    # the PixelCNN starts as a zero correction; give it weight so that the tests see it
    torch.manual_seed(0)
    for p in model.pixelcnn.head[-1].parameters():
        nn.init.normal_(p, std=0.5)
    return model


def test_at_initialisation_the_model_is_the_plain_vae():
    model = PixelVAE(x_shape=(1, 4, 4), z_dim=2, arch="mlp", hidden=(8,), pixelcnn_channels=4, pixelcnn_layers=2)
    z, x = torch.randn(3, 2), torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    plain = model.observation(model.decoder(z)).log_prob(x)
    torch.testing.assert_close(model.likelihood(z).log_prob(x), plain)


def test_probabilities_of_every_binary_image_sum_to_one():
    model = _randomize(PixelVAE(x_shape=(1, 2, 2), z_dim=2, arch="mlp", hidden=(8,), pixelcnn_channels=4,
                                pixelcnn_layers=2, pixelcnn_kernel=3).double())
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64).reshape(16, 1, 1, 2, 2)
    z = torch.randn(3, 2, dtype=torch.float64)
    log_p = model.likelihood(z).log_prob(images)  # (16, 3): every image under every z
    assert log_p.shape == (16, 3)
    torch.testing.assert_close(log_p.logsumexp(0), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    # and z matters: the three distributions differ
    assert not torch.allclose(log_p[:, 0], log_p[:, 1])


def test_probabilities_of_every_grey_pair_sum_to_one_with_the_discretized_logistic():
    model = _randomize(PixelVAE(x_shape=(2,), z_dim=2, hidden=(8,), likelihood="discretized_logistic",
                                pixelcnn_channels=4, pixelcnn_layers=1, pixelcnn_kernel=3).double())
    levels = torch.arange(256, dtype=torch.float64) / 255
    pairs = torch.cartesian_prod(levels, levels).reshape(-1, 1, 2)  # all 65,536 data points
    log_p = model.likelihood(torch.randn(1, 2, dtype=torch.float64)).log_prob(pairs)
    assert float(log_p.detach().logsumexp(0)) == pytest.approx(0.0, abs=1e-9)


def test_pixel_by_pixel_samples_match_the_teacher_forced_probabilities():
    # Pearson chi-square over the 16 images; a fixed seed, p > 1e-3 (fails a correct sampler 1 time in 1000)
    model = _randomize(PixelVAE(x_shape=(1, 2, 2), z_dim=2, arch="mlp", hidden=(8,), pixelcnn_channels=4,
                                pixelcnn_layers=2, pixelcnn_kernel=3))
    torch.manual_seed(1)
    n = 8000
    d = model.likelihood(torch.randn(1, 2).expand(n, 2))
    draws = d.sample().reshape(n, 4)
    index = (draws * torch.tensor([8.0, 4.0, 2.0, 1.0])).sum(-1).long()
    counts = torch.bincount(index, minlength=16).double()
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).reshape(16, 1, 1, 2, 2)
    expected = n * model.likelihood(d.z[:1]).log_prob(images)[:, 0].exp().double().detach()
    assert expected.min() > 5
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert stats.chi2.sf(chi2, 15) > 1e-3, chi2


def test_particles_and_points_are_scored_independently():
    model = _randomize(PixelVAE(x_shape=(5,), z_dim=2, hidden=(8,), likelihood="gaussian", pixelcnn_channels=4,
                                pixelcnn_layers=2))
    z, x = torch.randn(4, 3, 2), torch.randn(3, 5)  # (K, B, d) particles against B points
    log_p = model.likelihood(z).log_prob(x)
    assert log_p.shape == (4, 3)
    one_by_one = torch.stack([torch.stack([model.likelihood(z[k, b:b + 1]).log_prob(x[b:b + 1])[0] for b in range(3)])
                              for k in range(4)])
    torch.testing.assert_close(log_p, one_by_one)


def test_sample_and_reconstruct_shapes_and_support():
    model = _randomize(PixelVAE(x_shape=(1, 3, 4), z_dim=2, arch="mlp", hidden=(8,), pixelcnn_channels=4,
                                pixelcnn_layers=1))
    samples = model.sample(5)
    assert samples.shape == (5, 1, 3, 4) and bool(((samples == 0) | (samples == 1)).all())
    x = torch.bernoulli(torch.full((2, 1, 3, 4), 0.5))
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and bool(((recon >= 0) & (recon <= 1)).all())
    torch.testing.assert_close(model.reconstruct(x), recon)  # deterministic


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"x_shape": (4, 4)}, "x_shape"), ({"pixelcnn_layers": 0}, "num_layers"), ({"pixelcnn_kernel": 2}, "kernel_size")],
)
def test_bad_arguments_raise_with_their_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PixelVAE(**{"x_shape": (1, 4, 4), "z_dim": 2, "hidden": (8,), **kwargs})
