"""VQ-VAE-2: a coarse top grid of codes and a fine bottom grid, the bottom's encoder conditioned on the top."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.handlers import kl_scale, surrogate_factor
from pyrovae.models.vae import VAE, check_weight
from pyrovae.nets import ACTIVATIONS
from pyrovae.quantize import (
    CodebookCategorical,
    CodePrior,
    GridDecoder,
    GridEncoder,
    VectorQuantizer,
    check_num_positions,
    codebook_config,
    grid_options,
)

__all__ = ["VQVAE2"]


def _upsample(z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``(..., C, H, W)`` to ``size`` (any leading batch dims)."""
    flat = z.reshape(-1, *z.shape[-3:])
    return nn.functional.interpolate(flat, size=size, mode="nearest").reshape(*z.shape[:-2], *size)


class _Encoder2(nn.Module):
    """x -> bottom features and the top grid's z_e; then (features, quantised top) -> the bottom grid's z_e."""

    def __init__(self, x_shape: Sequence[int], code_dim: int, act: type[nn.Module], **nets: Any) -> None:
        super().__init__()
        self.features = GridEncoder(x_shape, code_dim, activation=act, **nets)
        self.grid_bottom = self.features.grid
        self.top = nn.Sequential(nn.Conv2d(code_dim, code_dim, 3, stride=2, padding=1), act(),
                                 nn.Conv2d(code_dim, code_dim, 1))
        self.grid_top = tuple((s + 1) // 2 for s in self.grid_bottom)  # the stride-2 convolution's output
        self.top_to_bottom = nn.Conv2d(code_dim, code_dim, 3, padding=1)
        self.bottom = nn.Conv2d(2 * code_dim, code_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return h, self.top(h)

    def bottom_input(self, h: torch.Tensor, z_top: torch.Tensor) -> torch.Tensor:
        return self.bottom(torch.cat([h, self.top_to_bottom(_upsample(z_top, self.grid_bottom))], dim=-3))


class _Decoder2(nn.Module):
    """(top, bottom) code vectors -> the likelihood's heads: the top upsampled to the bottom grid, both decoded."""

    def __init__(self, code_dim: int, grid_bottom: tuple[int, int], x_shape: Sequence[int], heads: Sequence[str],
                 act: type[nn.Module], **nets: Any) -> None:
        super().__init__()
        self.grid_bottom = grid_bottom
        self.top = nn.Sequential(nn.Conv2d(code_dim, code_dim, 3, padding=1), act())
        self.net = GridDecoder(2 * code_dim, x_shape, heads, activation=act, **nets)

    def forward(self, z_top: torch.Tensor, z_bottom: torch.Tensor) -> dict[str, torch.Tensor]:
        batch_shape = z_bottom.shape[:-3]  # data points, and particles where an objective vectorizes them
        z_top, z_bottom = z_top.reshape(-1, *z_top.shape[-3:]), z_bottom.reshape(-1, *z_bottom.shape[-3:])
        up = self.top(_upsample(z_top, self.grid_bottom))
        heads = self.net(torch.cat([z_bottom, up], dim=1))
        return {name: value.reshape(*batch_shape, *value.shape[1:]) for name, value in heads.items()}


class VQVAE2(VAE):
    r"""VQ-VAE-2 (Razavi et al. 2019): two grids of categorical codes, top (coarse) and bottom (fine).

    Generative story, for each data point :math:`n` in the ``"data"`` plate, with
    codebooks :math:`e^{t}` and :math:`e^{b}` of K vectors each:

    .. math::

        k^{t}_{n,i} \sim \mathrm{Categorical}(\tfrac1K), \quad
        k^{b}_{n,j} \sim \mathrm{Categorical}(\tfrac1K), \quad
        x_n \mid k^t_n, k^b_n \sim p_\theta(x \mid e^{t}_{k^t_n}, e^{b}_{k^b_n}),

    sites ``"z_top"`` and ``"z_bottom"`` (the chosen vectors,
    :class:`~pyrovae.quantize.CodebookCategorical`).  The decoder upsamples the
    top grid to the bottom grid's size and decodes both.  The guide is
    deterministic: the top codes are the nearest codes of a stride-2 encoding of
    the bottom features; the bottom codes are the nearest codes of the bottom
    features *and the quantised top grid* (the bottom encoder is conditioned on
    the top), both passed on with straight-through gradients.  Its ELBO is

    .. math::

        \mathcal L = \sum_n \Bigl(\log p_\theta(x_n \mid e^t_{k^t_n}, e^b_{k^b_n})
            - (|t| + |b|) \log K\Bigr),

    with :math:`|t|, |b|` the grids' sizes.  Training adds the commitment terms
    of both levels (a surrogate term in the guide, β = ``commitment_weight``: only
    ``objective="elbo"`` or ``"meanfield"`` train it, as for VQ-VAE)
    and moves the two codebooks in ``fit``'s auxiliary step as
    :class:`~pyrovae.models.vq_vae.VQVAE` does (EMA, k-means initialisation,
    dead-code restarts; ``aux_perplexity_top``, ``aux_dead_share_bottom``, ... in the history).

    Sampling uses one autoregressive prior per level (:meth:`prior_programs`):
    :math:`p_\psi(k^t)` and :math:`p_\omega(k^b \mid k^t)`, trained with ``fit``
    after the VQ-VAE on the training set's codes; :meth:`sample` draws the top
    grid, then the bottom grid given it, and decodes.  :meth:`bits_per_dim`
    reports :math:`(-\log p_\theta(x \mid \cdot) - \log p(k^t) - \log p(k^b \mid k^t)) / (\dim x \ln 2)`,
    an upper bound on :math:`-\log_2 p(x)` per dimension.

    :param x_shape: shape of one data point: ``(D,)`` or ``(C, H, W)``.
    :param z_dim: D, the dimension of each code vector (both levels).
    :param num_codes: K, each codebook's size.
    :param commitment_weight: β of the commitment terms (finite, >= 0).
    :param ema: EMA codebook updates (True) or the codebook loss (False).
    :param decay: the EMA decay, in [0, 1).
    :param dead_threshold: moving-average count per step below which a code is dead (>= 0).
    :param restart_dead: restart dead codes at random encoder outputs.
    :param kmeans_init: initialise the codebooks by k-means on the first training batch.
    :param codebook_lr: the Adam learning rate of the codebook loss (``ema=False``), in (0, 1].
    :param num_positions: the bottom grid's size for vector data (images: ``len(channels)`` halvings).
    :param hidden: hidden widths of the MLP networks (vector data).
    :param arch: ``"mlp"``, ``"conv"`` or ``"auto"``.
    :param channels: channels of the bottom encoder's stride-2 convolutions (images).
    :param activation: nonlinearity name.
    :param likelihood: name in :data:`pyrovae.likelihoods.LIKELIHOODS`.
    :param likelihood_scale: as for :class:`~pyrovae.models.vae.VAE`.

    Example::

        vq2 = VQVAE2(x_shape=(1, 28, 28), z_dim=16, num_codes=64)   # bottom 7x7, top 4x4
        pyrovae.fit(vq2, x_train, epochs=10)
        top, bottom = vq2.prior_programs()
        k_top, k_bottom = vq2.codes(x_train)
        pyrovae.fit(top, k_top.float(), epochs=10)
        pyrovae.fit(bottom, (k_bottom.float(), k_top.float()), epochs=10)
        images = vq2.sample(16, (top, bottom))

    References:
      1. A. Razavi, A. van den Oord, O. Vinyals. Generating Diverse High-Fidelity
         Images with VQ-VAE-2. arXiv:1906.00446.
      2. A. van den Oord, O. Vinyals, K. Kavukcuoglu. Neural Discrete Representation
         Learning. arXiv:1711.00937.
    """

    has_discrete_latents: ClassVar[bool] = True
    reparameterized: ClassVar[bool] = False  # straight-through: a biased pathwise gradient
    surrogate_objective: ClassVar[bool] = True
    model_modules: ClassVar[tuple[str, ...]] = ("decoder", "observation")
    guide_modules: ClassVar[tuple[str, ...]] = ("encoder",)
    #: what ``pyrovae sweep`` varies: the commitment term's weight β
    tradeoff_parameter: ClassVar[str | None] = "commitment_weight"
    auxiliary_modules: ClassVar[tuple[str, ...]] = ("quantizer_top", "quantizer_bottom")

    def __init__(
        self,
        x_shape: int | Sequence[int] = (784,),
        z_dim: int = 16,
        *,
        num_codes: int = 64,
        commitment_weight: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        dead_threshold: float = 1.0,
        restart_dead: bool = True,
        kmeans_init: bool = True,
        codebook_lr: float = 1e-3,
        num_positions: int = 8,
        hidden: Sequence[int] = (400,),
        arch: str = "auto",
        channels: Sequence[int] = (32, 64),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        likelihood_scale: float | str | None = None,
    ) -> None:
        commitment_weight = check_weight("commitment_weight", commitment_weight)
        codebook_lr = check_weight("codebook_lr", codebook_lr, positive=True, maximum=1.0)
        num_positions = check_num_positions(num_positions)
        super().__init__(x_shape, z_dim, hidden=hidden, arch=arch, channels=channels, activation=activation,
                         likelihood=likelihood, likelihood_scale=likelihood_scale)
        nets = grid_options(arch, self.x_shape, hidden=hidden, channels=channels, num_positions=num_positions)
        act = ACTIVATIONS[activation]  # checked by the base class
        codebook = {"ema": ema, "decay": decay, "dead_threshold": dead_threshold, "restart_dead": restart_dead,
                    "kmeans_init": kmeans_init}
        self.encoder = _Encoder2(self.x_shape, z_dim, act, **nets)
        self.grid_top, self.grid_bottom = self.encoder.grid_top, self.encoder.grid_bottom
        self.decoder = _Decoder2(z_dim, self.grid_bottom, self.x_shape, self.observation.heads, act, **nets)
        self.quantizer_top = VectorQuantizer(num_codes, z_dim, **codebook)
        self.quantizer_bottom = VectorQuantizer(num_codes, z_dim, **codebook)
        self.num_codes, self.commitment_weight = num_codes, commitment_weight
        #: the learning rate ``fit`` gives the auxiliary optimiser (the codebook loss when ``ema=False``)
        self.auxiliary_lr = codebook_lr
        self.config.update(codebook_config(num_codes, commitment_weight, codebook, codebook_lr, nets))
        del self.prior_loc, self.prior_scale  # the base class's Gaussian prior is not this model's

    # ----------------------------------------------------------------- hooks
    def prior(self) -> dist.TorchDistribution:
        """Not one distribution here: see :meth:`prior_top` and :meth:`prior_bottom`."""
        raise NotImplementedError("VQVAE2 has two latent sites: use prior_top() and prior_bottom()")

    def prior_top(self) -> dist.TorchDistribution:
        """p(z_top): a uniform choice of a top codebook vector at each top position."""
        codebook = self.quantizer_top.codebook.detach()
        return CodebookCategorical(codebook, codebook.new_zeros(self.num_codes), self.grid_top)

    def prior_bottom(self) -> dist.TorchDistribution:
        """p(z_bottom): a uniform choice of a bottom codebook vector at each bottom position."""
        codebook = self.quantizer_bottom.codebook.detach()
        return CodebookCategorical(codebook, codebook.new_zeros(self.num_codes), self.grid_bottom)

    def likelihood(self, z_top: torch.Tensor, z_bottom: torch.Tensor) -> dist.TorchDistribution:  # type: ignore[override]
        """p(x | z_top, z_bottom)."""
        return self.observation(self.decoder(z_top, z_bottom))

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_e top, z_q top, z_e bottom, z_q bottom), straight-through values."""
        h, z_e_top = self.encoder(x)
        z_q_top = self.quantizer_top(z_e_top)
        z_e_bottom = self.encoder.bottom_input(h, z_q_top)
        return z_e_top, z_q_top, z_e_bottom, self.quantizer_bottom(z_e_bottom)

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z_bottom | x): a point at the bottom codes (the guide also has the top's)."""
        return dist.Delta(self._encode(x)[3], event_dim=3)

    # -------------------------------------------------------- Pyro programs
    def model(self, x: torch.Tensor, *, kl_weight: float = 1.0, commitment_weight: float = 0.0) -> torch.Tensor:
        """p(x, z_top, z_bottom) (``commitment_weight`` is the guide's)."""
        self._register("model")
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight):
                z_top = pyro.sample("z_top", self.prior_top())
                z_bottom = pyro.sample("z_bottom", self.prior_bottom())
            return pyro.sample("x", self.likelihood(z_top, z_bottom), obs=x)

    def guide(self, x: torch.Tensor, *, kl_weight: float = 1.0, commitment_weight: float = 0.0) -> torch.Tensor:
        """q(z_top, z_bottom | x), one point; ``commitment_weight`` > 0 (training only) adds both commitment terms."""
        self._register("guide")
        z_e_top, z_q_top, z_e_bottom, z_q_bottom = self._encode(x)
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight):
                pyro.sample("z_top", dist.Delta(z_q_top, event_dim=3))
                z_bottom = pyro.sample("z_bottom", dist.Delta(z_q_bottom, event_dim=3))
            if commitment_weight:
                commitment = sum((z_e - z_q.detach()).pow(2).sum((1, 2, 3))
                                 for z_e, z_q in ((z_e_top, z_q_top), (z_e_bottom, z_q_bottom)))
                surrogate_factor("commitment", commitment_weight * commitment)
        return z_bottom

    # ------------------------------------------------------------ fit's hooks
    def training_kwargs(self, step: int) -> dict[str, Any]:
        """Switch the commitment terms on during training."""
        return {"commitment_weight": self.commitment_weight}

    def auxiliary_parameters(self) -> Iterator[torch.nn.Parameter]:
        """Both codebooks."""
        return iter([self.quantizer_top.codebook, self.quantizer_bottom.codebook])

    def auxiliary_loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both codebooks' updates on a minibatch; perplexity and dead share per level."""
        with torch.no_grad():
            z_e_top, _, z_e_bottom, _ = self._encode(x)
        top, bottom = self.quantizer_top.update(z_e_top), self.quantizer_bottom.update(z_e_bottom)
        terms = {"loss": top["loss"] + bottom["loss"]}
        for level, stats in (("top", top), ("bottom", bottom)):
            terms.update({f"{key}_{level}": value for key, value in stats.items() if key != "loss"})
        return terms

    # ------------------------------------------------------------ codes
    @torch.no_grad()
    def codes(self, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """The top and bottom code grids of each data point, ``(N, *grid_top)`` and ``(N, *grid_bottom)``."""
        tops, bottoms = [], []
        for xb in x.split(batch_size):
            h, z_e_top = self.encoder(xb)
            top = self.quantizer_top.nearest(z_e_top)
            tops.append(top)
            bottoms.append(self.quantizer_bottom.nearest(self.encoder.bottom_input(h, self.quantizer_top.embed(top))))
        return torch.cat(tops), torch.cat(bottoms)

    @torch.no_grad()
    def decode(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """Means of p(x | codes) for top and bottom code grids."""
        z_top, z_bottom = self.quantizer_top.embed(top), self.quantizer_bottom.embed(bottom)
        return self.observation.mean(self.decoder(z_top, z_bottom))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Means of p(x | codes(x))."""
        return self.decode(*self.codes(x))

    def prior_programs(self, **options: Any) -> tuple[CodePrior, CodePrior]:
        """Autoregressive priors p(top) and p(bottom | top) (:class:`~pyrovae.quantize.CodePrior`; options: their networks')."""
        device = self.quantizer_top.codebook.device
        return (CodePrior(self.num_codes, self.grid_top, **options).to(device),
                CodePrior(self.num_codes, self.grid_bottom, cond_codes=self.num_codes, **options).to(device))

    @torch.no_grad()
    def bits_per_dim(self, x: torch.Tensor, priors: tuple[CodePrior, CodePrior] | None = None,
                     batch_size: int = 500) -> float:
        """The bound -log p(x | codes) - log p(top) - log p(bottom | top), in bits per dimension (None: uniform priors)."""
        total = 0.0
        for xb in x.split(batch_size):
            top, bottom = self.codes(xb)
            log_px = self.likelihood(self.quantizer_top.embed(top), self.quantizer_bottom.embed(bottom)).log_prob(xb)
            if priors is None:
                log_pk = -(math.prod(self.grid_top) + math.prod(self.grid_bottom)) * math.log(self.num_codes)
            else:
                log_pk = priors[0].log_prob(top) + priors[1].log_prob(bottom, top)
            total += float((-(log_px + log_pk)).sum())
        return total / (len(x) * math.prod(self.x_shape) * math.log(2))

    @torch.no_grad()
    def sample(self, num_samples: int, priors: tuple[CodePrior, CodePrior] | None = None) -> torch.Tensor:
        """Means of p(x | codes): the top grid drawn first, then the bottom grid given it (None: uniform priors)."""
        if priors is None:
            top = torch.randint(self.num_codes, (num_samples, *self.grid_top))
            bottom = torch.randint(self.num_codes, (num_samples, *self.grid_bottom))
        else:
            top = priors[0].sample(num_samples)
            bottom = priors[1].sample(num_samples, cond=top)
        return self.decode(top.to(self.quantizer_top.codebook.device), bottom.to(self.quantizer_top.codebook.device))
