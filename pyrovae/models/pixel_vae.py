"""A VAE whose decoder is autoregressive over pixels: a PixelCNN conditioned on z (PixelVAE / VLAE)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.likelihoods import Likelihood
from pyrovae.models.vae import VAE
from pyrovae.pixelcnn import PixelCNN

__all__ = ["AutoregressiveLikelihood", "PixelVAE"]


def _as_image(x_shape: tuple[int, ...]) -> tuple[int, int, int]:
    # a flat vector (D,) is modelled as one row of D positions, left to right
    return (1, 1, x_shape[0]) if len(x_shape) == 1 else x_shape


class AutoregressiveLikelihood(dist.TorchDistribution):
    r"""p(x | z) = prod over positions, in raster order, of p(x_ij | x_<ij, z).

    Each factor is the observation family (Bernoulli, discretized logistic, ...)
    with parameters ``base + pixelcnn(x, base, z)`` at that position, where ``base``
    are the heads of an ordinary decoder of z and the PixelCNN sees only the positions
    before (i, j).  :meth:`log_prob` is one teacher-forced pass of the masked net on
    the observed x; :meth:`sample` draws position by position (one pass per position).

    Batch shape is that of ``z`` without its last dimension (particles included),
    event shape the data point's shape.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, net: PixelCNN, observation: Likelihood, base: dict[str, torch.Tensor], z: torch.Tensor) -> None:
        self.net, self.observation, self.base, self.z = net, observation, base, z
        super().__init__(z.shape[:-1], torch.Size(observation.event_shape), validate_args=False)

    @property
    def support(self):
        # the observation family's, over the whole data point
        return self.observation(self.base).support

    def _params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # x (*batch, *event) -> the observation's heads at every position, teacher-forced; x may
        # carry more batch dimensions than z (every image of a set under each z), or fewer
        event = self.event_shape
        batch = torch.broadcast_shapes(x.shape[: x.dim() - len(event)], self.batch_shape)
        image = _as_image(tuple(event))
        n = batch.numel()
        heads = self.observation.heads
        base = torch.cat([self.base[h].expand(batch + event).reshape(n, *image) for h in heads], 1)
        out = self.net(x.expand(batch + event).reshape(n, *image), cond_map=base,
                       cond_vec=self.z.expand(batch + self.z.shape[-1:]).reshape(n, -1))
        params = base + out
        return {h: p.reshape(batch + event) for h, p in zip(heads, params.chunk(len(heads), 1))}

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.observation(self._params(value)).log_prob(value)

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        if sample_shape:
            z = self.z.expand(torch.Size(sample_shape) + self.z.shape)
            base = {h: v.expand(torch.Size(sample_shape) + v.shape) for h, v in self.base.items()}
            return AutoregressiveLikelihood(self.net, self.observation, base, z).sample()
        shape = self.batch_shape + self.event_shape
        c, h, w = _as_image(tuple(self.event_shape))
        x = torch.zeros(shape, dtype=self.z.dtype, device=self.z.device)
        view = x.view(self.batch_shape.numel(), c, h, w)
        for i in range(h):
            for j in range(w):
                draw = self.observation(self._params(x)).base_dist.sample()
                view[:, :, i, j] = draw.reshape(-1, c, h, w)[:, :, i, j]
        return x

    def conditional_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of every factor p(x_ij | x_<ij, z) given the true preceding positions of ``x``."""
        return self.observation.mean(self._params(x))


class PixelVAE(VAE):
    r"""A VAE with an autoregressive PixelCNN decoder conditioned on z (PixelVAE, VLAE).

    Generative story, for each data point :math:`n` in the ``"data"`` plate:

    .. math::

        z_n \sim \mathcal N(0, I_d), \qquad
        x_n \mid z_n \sim \prod_{i,j} p_\theta(x_{n,ij} \mid x_{n,<ij}, z_n),

    raster order over positions; each factor is the ``likelihood`` family with parameters
    ``decoder(z) + PixelCNN(x_<ij; decoder(z), z)`` (the decoder's heads enter every masked
    layer as a conditioning map, z as a conditioning vector).  A flat data point ``(D,)``
    is one row of D positions.  The guide is the VAE's Gaussian encoder; training
    maximises the ELBO

    .. math::

        \mathcal L = \sum_n \mathbb E_q[\log p_\theta(x_n \mid z_n)]
            - \beta\, \mathrm{KL}(q_\phi(z_n \mid x_n) \,\|\, p(z_n)).

    A strong autoregressive decoder can model x without z, and the ELBO then drives
    q(z | x) to the prior: *posterior collapse* (Bowman et al. 2016; Chen et al. 2017).
    The counter-measures are objectives and schedules, not part of the model:
    ``objective="free_bits"`` (:class:`~pyrovae.objectives.free_bits.FreeBitsELBO`,
    λ nats per dimension for free) and KL annealing (``kl_weight=Linear(...)``).
    The diagnostics (active units, KL per dimension, I(x; z)) are in
    :mod:`pyrovae.metrics.collapse`.

    ``pixelcnn_layers`` sets the decoder's strength: its receptive field grows with it.
    Log-likelihoods are exact per pixel: with ``likelihood="discretized_logistic"`` on 8-bit
    grey images bits/dim are true ones.  :meth:`sample` draws pixel by pixel (one network
    pass per position); :meth:`reconstruct` is teacher-forced (one pass).

    :param x_shape: ``(D,)`` or ``(C, H, W)``.
    :param z_dim: latent dimensions.
    :param pixelcnn_channels: hidden channels of the PixelCNN.
    :param pixelcnn_layers: masked layers of the PixelCNN (>= 1).
    :param pixelcnn_kernel: odd kernel side of the masked layers.
    :param kwargs: the rest of :class:`~pyrovae.models.vae.VAE`'s arguments (encoder, decoder
        widths, ``likelihood``).

    Example::

        vae = PixelVAE(x_shape=(1, 28, 28), z_dim=16, pixelcnn_layers=3)
        pyrovae.fit(vae, x_binary, objective=FreeBitsELBO(0.5))

    References:
      1. I. Gulrajani, K. Kumar, F. Ahmed, A. A. Taiga, F. Visin, D. Vazquez, A. Courville.
         PixelVAE: A Latent Variable Model for Natural Images. arXiv:1611.05013.
      2. X. Chen, D. P. Kingma, T. Salimans, Y. Duan, P. Dhariwal, J. Schulman, I. Sutskever,
         P. Abbeel. Variational Lossy Autoencoder. arXiv:1611.02731.
      3. A. van den Oord, N. Kalchbrenner, O. Vinyals, L. Espeholt, A. Graves, K. Kavukcuoglu.
         Conditional Image Generation with PixelCNN Decoders. arXiv:1606.05328.
      4. S. R. Bowman, L. Vilnis, O. Vinyals, A. M. Dai, R. Jozefowicz, S. Bengio.
         Generating Sentences from a Continuous Space. arXiv:1511.06349.
    """

    model_modules = ("decoder", "observation", "pixelcnn")

    def __init__(
        self,
        x_shape: int | Sequence[int] = (1, 28, 28),
        z_dim: int = 16,
        *,
        pixelcnn_channels: int = 32,
        pixelcnn_layers: int = 4,
        pixelcnn_kernel: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(x_shape, z_dim, **kwargs)
        if len(self.x_shape) not in (1, 3):
            raise ValueError(f"Expected x_shape (D,) or (C, H, W) for an autoregressive decoder, got {self.x_shape}")
        channels = _as_image(self.x_shape)[0] * len(self.observation.heads)
        self.pixelcnn = PixelCNN(
            _as_image(self.x_shape)[0], channels, hidden_channels=pixelcnn_channels, num_layers=pixelcnn_layers,
            kernel_size=pixelcnn_kernel, cond_channels=channels, cond_dim=z_dim,
        )
        # the PixelCNN starts as a zero correction: at initialisation the model is the plain VAE
        nn.init.zeros_(self.pixelcnn.head[-1].weight)
        nn.init.zeros_(self.pixelcnn.head[-1].bias)
        self.config.update(
            pixelcnn_channels=pixelcnn_channels, pixelcnn_layers=pixelcnn_layers, pixelcnn_kernel=pixelcnn_kernel
        )

    def likelihood(self, z: torch.Tensor) -> AutoregressiveLikelihood:
        """p(x | z): autoregressive over positions, each factor the observation family."""
        return AutoregressiveLikelihood(self.pixelcnn, self.observation, self.decoder(z), z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of each factor p(x_ij | x_<ij, z) given x's own preceding pixels, z the posterior mean.

        Deterministic and one network pass; a free-running draw is :meth:`sample`'s business.
        """
        return self.likelihood(self.posterior(x).mean).conditional_mean(x)

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """``num_samples`` draws of x from p(x) (z from the prior, then pixel by pixel)."""
        return self.likelihood(self.prior().sample((num_samples,))).sample()
