"""VQ-VAE: a grid of categorical codes, each a codebook vector, with a deterministic nearest-code guide."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch

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

__all__ = ["VQVAE"]


class VQVAE(VAE):
    r"""VQ-VAE (van den Oord et al. 2017): discrete codes on a grid, each a learned codebook vector.

    Generative story, for each data point :math:`n` in the ``"data"`` plate,
    with a codebook :math:`e_1, \dots, e_K \in \mathbb R^D` and a grid of
    positions :math:`i` (:math:`H' \times W'` for images, ``(1, num_positions)`` for vectors):

    .. math::

        k_{n,i} \sim \mathrm{Categorical}(\tfrac1K, \dots, \tfrac1K), \qquad
        z_{n,i} = e_{k_{n,i}}, \qquad x_n \mid z_n \sim p_\theta(x \mid z_n).

    The site ``"z"`` holds the chosen vectors, shape ``(D, H', W')``
    (:class:`~pyrovae.quantize.CodebookCategorical`).  The guide is
    deterministic: :math:`q(k_{n,i} = \arg\min_j \lVert z_e(x_n)_i - e_j\rVert \mid x_n) = 1`
    (a one-point ``Delta``), whose value is passed on with the straight-through
    gradient :math:`e_k + (z_e - \mathrm{sg}[z_e])`.  So the ELBO is defined and is

    .. math::

        \mathcal L = \sum_n \Bigl(\log p_\theta(x_n \mid e_{k_n}) - H'W' \log K\Bigr),

    the KL of a one-point guide to the uniform prior being :math:`\log K` per
    position; :func:`pyrovae.log_likelihood` returns exactly this (every
    importance sample is the same point).  Training adds the commitment term
    :math:`-\beta \sum_i \lVert z_e(x_n)_i - \mathrm{sg}[e_{k_{n,i}}]\rVert^2`
    (β = ``commitment_weight``, 0.25 in the paper) as a ``pyro.factor`` in the
    guide, switched on by :meth:`training_kwargs` only, so evaluation sees the true model;
    it is marked a surrogate term (:func:`pyrovae.handlers.surrogate_factor`), so only
    ``objective="elbo"`` or ``"meanfield"`` train it (RWS's wake-φ step would read it as
    log q and raise the penalty; DReG would drop part of its gradient).

    The codebook moves outside the ELBO step, through ``fit``'s auxiliary hook
    (:meth:`auxiliary_loss`, once per step): EMA updates (decay 0.99) or, with
    ``ema=False``, an Adam step on the codebook loss
    :math:`\lVert \mathrm{sg}[z_e] - e\rVert^2`; k-means initialisation on the
    first batch and restarts of dead codes (see
    :class:`~pyrovae.quantize.VectorQuantizer`).  ``fit`` logs the codebook
    perplexity and the share of dead codes per epoch as ``aux_perplexity`` and
    ``aux_dead_share``.

    To sample new data, fit an autoregressive prior over the codes afterwards
    (:meth:`prior_program`, trained with ``fit`` on :meth:`codes` of the
    training set) and decode its samples (:meth:`decode`); :meth:`bits_per_dim`
    reports the bound :math:`-\log p(x) \le -\log p_\theta(x \mid e_{k(x)}) - \log p_\psi(k(x))`.

    :param x_shape: shape of one data point: ``(D,)`` or ``(C, H, W)``.
    :param z_dim: D, the dimension of each code vector.
    :param num_codes: K, the codebook size.
    :param commitment_weight: β of the commitment term (finite, >= 0).
    :param ema: EMA codebook updates (True) or the codebook loss (False).
    :param decay: the EMA decay, in [0, 1).
    :param dead_threshold: a code whose moving-average count of assigned vectors per step is
        below this is dead (>= 0).
    :param restart_dead: restart dead codes at random encoder outputs.
    :param kmeans_init: initialise the codebook by k-means on the first training batch.
    :param codebook_lr: the Adam learning rate of the codebook loss (``ema=False``), in (0, 1].
    :param num_positions: the grid's size for vector data (an MLP encoder); images get
        ``(ceil(H / 2^L), ceil(W / 2^L))`` with L = ``len(channels)``.
    :param hidden: hidden widths of the MLP networks (vector data).
    :param arch: ``"mlp"``, ``"conv"`` or ``"auto"`` (conv for images of side >= 16).
    :param channels: channels of the stride-2 convolutions (images).
    :param activation: nonlinearity name.
    :param likelihood: name in :data:`pyrovae.likelihoods.LIKELIHOODS`.
    :param likelihood_scale: as for :class:`~pyrovae.models.vae.VAE`.

    Example::

        vq = VQVAE(x_shape=(1, 28, 28), z_dim=16, num_codes=64, channels=(32, 64))
        pyrovae.fit(vq, x_train, epochs=10)
        prior = vq.prior_program()
        pyrovae.fit(prior, vq.codes(x_train).float(), epochs=10)
        images = vq.decode(prior.sample(16))

    References:
      1. A. van den Oord, O. Vinyals, K. Kavukcuoglu. Neural Discrete Representation
         Learning. arXiv:1711.00937.
      2. A. Roy, A. Vaswani, A. Neelakantan, N. Parmar. Theory and Experiments on
         Vector Quantized Autoencoders. arXiv:1805.11063.
      3. P. Dhariwal et al. Jukebox: A Generative Model for Music. arXiv:2005.00341.
    """

    has_discrete_latents: ClassVar[bool] = True
    # the straight-through value is a biased pathwise gradient, not a reparameterization of q
    reparameterized: ClassVar[bool] = False
    surrogate_objective: ClassVar[bool] = True
    model_modules: ClassVar[tuple[str, ...]] = ("decoder", "observation")
    guide_modules: ClassVar[tuple[str, ...]] = ("encoder",)
    #: the codebook: moved by the auxiliary step (EMA or its own loss), never by the ELBO's optimiser
    #: what ``pyrovae sweep`` varies: the commitment term's weight β
    tradeoff_parameter: ClassVar[str | None] = "commitment_weight"
    auxiliary_modules: ClassVar[tuple[str, ...]] = ("quantizer",)

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
        codebook = {"ema": ema, "decay": decay, "dead_threshold": dead_threshold, "restart_dead": restart_dead,
                    "kmeans_init": kmeans_init}
        self.quantizer = VectorQuantizer(num_codes, z_dim, **codebook)
        nets = grid_options(arch, self.x_shape, hidden=hidden, channels=channels, num_positions=num_positions)
        act = ACTIVATIONS[activation]  # checked by the base class
        # the base class's vector encoder/decoder are replaced by grid ones
        self.encoder = GridEncoder(self.x_shape, z_dim, activation=act, **nets)
        self.decoder = GridDecoder(z_dim, self.x_shape, self.observation.heads, activation=act, **nets)
        self.grid = self.encoder.grid
        self.num_codes = num_codes
        self.commitment_weight = commitment_weight
        #: the learning rate ``fit`` gives the auxiliary optimiser (the codebook loss when ``ema=False``)
        self.auxiliary_lr = codebook_lr
        self.config.update(codebook_config(num_codes, commitment_weight, codebook, codebook_lr, nets))
        del self.prior_loc, self.prior_scale  # the base class's Gaussian prior is not this model's

    # ----------------------------------------------------------------- hooks
    def prior(self) -> dist.TorchDistribution:
        """p(z): a uniform categorical choice of a codebook vector at each grid position."""
        codebook = self.quantizer.codebook.detach()
        return CodebookCategorical(codebook, codebook.new_zeros(self.num_codes), self.grid)

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x): all mass on the nearest codes of the encoder's output (straight-through value)."""
        return dist.Delta(self.quantizer(self.encoder(x)), event_dim=3)

    # -------------------------------------------------------- Pyro programs
    def model(self, x: torch.Tensor, *, kl_weight: float = 1.0, commitment_weight: float = 0.0) -> torch.Tensor:
        """p(x, z), exactly :class:`~pyrovae.models.vae.VAE`'s with this prior (``commitment_weight`` is the guide's)."""
        return super().model(x, kl_weight=kl_weight)

    def guide(self, x: torch.Tensor, *, kl_weight: float = 1.0, commitment_weight: float = 0.0) -> torch.Tensor:
        """q(z | x); ``commitment_weight`` > 0 (training only) adds the commitment term."""
        self._register("guide")
        z_e = self.encoder(x)
        z_q = self.quantizer(z_e)
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight):
                z = pyro.sample("z", dist.Delta(z_q, event_dim=3))
            if commitment_weight:
                commitment = (z_e - z_q.detach()).pow(2).sum((1, 2, 3))
                surrogate_factor("commitment", commitment_weight * commitment)
        return z

    # ------------------------------------------------------------ fit's hooks
    def training_kwargs(self, step: int) -> dict[str, Any]:
        """Switch the commitment term on during training: ``{"commitment_weight": β}``."""
        return {"commitment_weight": self.commitment_weight}

    def auxiliary_parameters(self) -> Iterator[torch.nn.Parameter]:
        """The codebook (moved by :meth:`auxiliary_loss`'s step, not by the ELBO)."""
        return self.quantizer.parameters()

    def auxiliary_loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The codebook's update on a minibatch: EMA (or the codebook loss), restarts; perplexity and dead share."""
        with torch.no_grad():
            z_e = self.encoder(x)
        return self.quantizer.update(z_e)

    # ------------------------------------------------------------ codes
    @torch.no_grad()
    def codes(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The code grid of each data point, ``(N, H', W')`` long."""
        return torch.cat([self.quantizer.nearest(self.encoder(xb)) for xb in x.split(batch_size)])

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Means of p(x | z) for code grids ``(B, H', W')``."""
        return self.observation.mean(self.decoder(self.quantizer.embed(codes)))

    def prior_program(self, **options: Any) -> CodePrior:
        """A :class:`~pyrovae.quantize.CodePrior` for this model's grid and codebook size (options: its network's)."""
        return CodePrior(self.num_codes, self.grid, **options).to(self.quantizer.codebook.device)

    @torch.no_grad()
    def bits_per_dim(self, x: torch.Tensor, prior: CodePrior | None = None, batch_size: int = 500) -> float:
        r"""The bound :math:`(-\log p_\theta(x \mid e_{k(x)}) - \log p(k(x))) / (\dim x \cdot \ln 2)`, mean over x.

        With ``prior=None`` the uniform prior: :math:`\log p(k) = -H'W' \log K`
        (the negative ELBO in bits per dimension).  Either way an upper bound on
        :math:`-\log_2 p(x)` per dimension, since
        :math:`p(x) = \sum_k p(x \mid e_k) p(k) \ge p(x \mid e_{k(x)}) p(k(x))`.
        """
        total = 0.0
        for xb in x.split(batch_size):
            codes = self.quantizer.nearest(self.encoder(xb))
            log_px = self.likelihood(self.quantizer.embed(codes)).log_prob(xb)
            if prior is None:
                log_pk = -math.prod(self.grid) * math.log(self.num_codes)
            else:
                log_pk = prior.log_prob(codes)
            total += float((-(log_px + log_pk)).sum())
        return total / (len(x) * math.prod(self.x_shape) * math.log(2))

    @torch.no_grad()
    def sample(self, num_samples: int, prior: CodePrior | None = None) -> torch.Tensor:
        """Means of p(x | z) for ``num_samples`` code grids from ``prior`` (None: the uniform prior)."""
        if prior is None:
            return super().sample(num_samples)
        return self.decode(prior.sample(num_samples))
