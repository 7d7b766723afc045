"""FactorVAE: the ELBO minus γ times a discriminator's estimate of the total correlation of q(z)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pyro
import torch
from torch.nn.functional import binary_cross_entropy_with_logits, linear

from pyrovae.handlers import kl_scale
from pyrovae.models.vae import VAE, check_weight
from pyrovae.nets import MLP, check_widths

__all__ = ["FactorVAE", "permute_dims"]


def permute_dims(z: torch.Tensor) -> torch.Tensor:
    r"""Shuffle each latent dimension independently across the batch (dim 0).

    If the rows of ``z`` are draws from q(z), the rows of the result are
    (approximately, without replacement) draws from the product of its
    marginals :math:`\prod_j q(z_j)` (Kim and Mnih 2018, Algorithm 1).
    """
    order = torch.rand(z.shape, device=z.device).argsort(dim=0)
    return z.gather(0, order)


class FactorVAE(VAE):
    r"""FactorVAE (Kim and Mnih 2018): a VAE trained with a discriminator's total-correlation penalty.

    The generative model and guide are exactly :class:`~pyrovae.models.vae.VAE`'s:
    for each data point :math:`n` in the ``"data"`` plate,

    .. math::

        z_n \sim \mathcal N(0, I_d), \qquad x_n \mid z_n \sim p_\theta(x \mid z_n),
        \qquad q_\phi(z_n \mid x_n) = \mathcal N(\mu_\phi(x_n), \operatorname{diag}\sigma_\phi(x_n)^2).

    Training maximises the ELBO minus γ times the total correlation of the
    aggregate posterior :math:`q(z) = \frac1N\sum_n q_\phi(z \mid x_n)`,

    .. math::

        \mathcal L = \sum_n \Bigl(\mathbb E_{q_\phi(z_n|x_n)}[\log p_\theta(x_n \mid z_n)]
            - \mathrm{KL}(q_\phi(z_n \mid x_n) \,\|\, p(z_n))
            - \gamma \, \mathbb E_{q_\phi(z_n|x_n)}\Bigl[\log \frac{D_\psi(z_n)}{1 - D_\psi(z_n)}\Bigr]\Bigr),

    where the discriminator :math:`D_\psi` tells samples of q(z) from samples
    of :math:`\prod_j q(z_j)` (made by :func:`permute_dims`), so at its optimum
    its logit is the log density ratio :math:`\log q(z) - \sum_j \log q(z_j)`,
    whose mean under q(z) is :math:`\mathrm{TC}(z) = \mathrm{KL}(q(z) \,\|\, \prod_j q(z_j))`
    (the density-ratio trick).  The penalty enters :meth:`model` as
    ``pyro.factor("tc_penalty", -γ · logit D(z_n))`` inside the data plate; the
    discriminator's weights are frozen there (the ELBO's gradient moves the
    encoder only).

    The discriminator is trained by its own optimiser through ``fit``'s
    auxiliary-step hook (:meth:`auxiliary_parameters`, :meth:`auxiliary_loss`,
    :attr:`auxiliary_lr` and :attr:`auxiliary_betas`): after each ELBO step it minimises the cross-entropy

    .. math::

        -\tfrac12\, \mathbb E_{q(z)}[\log D_\psi(z)]
        -\tfrac12\, \mathbb E_{\prod_j q(z_j)}[\log (1 - D_\psi(z))].

    ``fit`` logs that loss and the TC estimate (the mean logit on the
    q(z) samples) as ``aux_loss`` and ``aux_tc``, and checkpoints the
    discriminator (it is a submodule) and its optimiser.  Kim and Mnih draw two
    independent minibatches for the discriminator; here one minibatch is split
    in halves, the first giving the q(z) samples and the permuted second the
    product-of-marginals samples, so the two sets stay independent.

    The penalty is switched on only by the ``tc_weight`` keyword, which
    :meth:`training_kwargs` supplies (as γ) during ``fit``; ``model(x)``/``guide(x)``
    are the plain VAE, so evaluation measures the true model.

    :param gamma: γ, the weight of the total-correlation penalty (finite, > 0).
    :param discriminator_hidden: hidden widths of the discriminator MLP (a sequence of positive ints).
    :param discriminator_lr: the discriminator's Adam learning rate, in (0, 1].
    :param discriminator_betas: the discriminator's Adam ``(beta1, beta2)``, each in [0, 1).
    :param kwargs: everything :class:`~pyrovae.models.vae.VAE` takes.

    The defaults follow Kim and Mnih (a leaky-ReLU MLP of 6 layers of 1000
    units, Adam with learning rate 1e-4 and betas (0.5, 0.9), as in their
    appendix and in disentanglement_lib); γ = 10 is the low end of the sweep
    {10, 20, 30, 40, 50, 100} of Locatello et al.

    Example::

        vae = FactorVAE(x_shape=(1, 64, 64), z_dim=10, gamma=40.0)
        result = pyrovae.fit(vae, x_train, epochs=30)
        result.history[-1]["aux_tc"]   # the discriminator's TC estimate, in nats

    References:
      1. H. Kim, A. Mnih. Disentangling by Factorising. arXiv:1802.05983.
      2. X. Nguyen, M. J. Wainwright, M. I. Jordan. Estimating divergence
         functionals and the likelihood ratio by convex risk minimization.
         arXiv:0809.0853.
      3. F. Locatello et al. Challenging Common Assumptions in the Unsupervised
         Learning of Disentangled Representations. arXiv:1811.12359.
    """

    #: submodules trained by the auxiliary step, registered with neither program
    auxiliary_modules: ClassVar[tuple[str, ...]] = ("discriminator",)

    #: what ``pyrovae sweep`` varies
    tradeoff_parameter: ClassVar[str | None] = "gamma"

    def __init__(
        self,
        *args: Any,
        gamma: float = 10.0,
        discriminator_hidden: Sequence[int] = (1000,) * 6,
        discriminator_lr: float = 1e-4,
        discriminator_betas: tuple[float, float] = (0.5, 0.9),
        **kwargs: Any,
    ) -> None:
        gamma = check_weight("gamma", gamma, positive=True)
        # Adam moves each weight by about lr per step: above 1 it diverges at once (3e38 overflows float32)
        discriminator_lr = check_weight("discriminator_lr", discriminator_lr, positive=True, maximum=1.0)
        discriminator_hidden = check_widths(discriminator_hidden, "discriminator_hidden", example="(1000,) * 6")
        betas = tuple(discriminator_betas) if isinstance(discriminator_betas, (tuple, list)) else ()
        if len(betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas
        ):
            raise ValueError(f"Expected discriminator_betas as two numbers in [0, 1), got {discriminator_betas!r}")
        super().__init__(*args, **kwargs)
        self.gamma = gamma
        #: the learning rate ``fit`` gives the auxiliary (discriminator) optimiser
        self.auxiliary_lr = discriminator_lr
        #: the ``(beta1, beta2)`` ``fit`` gives the auxiliary (discriminator) Adam
        self.auxiliary_betas = (float(betas[0]), float(betas[1]))
        self.discriminator = MLP(self.z_dim, {"logits": 1}, hidden=discriminator_hidden, activation="leaky_relu")
        self.config.update(
            gamma=gamma, discriminator_hidden=list(discriminator_hidden), discriminator_lr=discriminator_lr,
            discriminator_betas=list(self.auxiliary_betas),
        )

    # ------------------------------------------------------------ discriminator
    def density_ratio(self, z: torch.Tensor) -> torch.Tensor:
        r"""The discriminator's logit, an estimate of :math:`\log q(z) - \sum_j \log q(z_j)`; shape ``z.shape[:-1]``."""
        return self.discriminator(z)["logits"].squeeze(-1)

    def discriminator_loss(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The discriminator's cross-entropy on a batch ``(B, z_dim)`` of q(z) samples, and its TC estimate.

        The first half of the batch is labelled "q(z)", the dimension-wise
        permuted second half "product of marginals".  Returns ``{"loss", "tc"}``
        (``tc`` detached, in nats).  A batch of one point carries no pair to
        compare and gives a zero loss.
        """
        half = z.shape[0] // 2
        if half == 0:
            logits = self.density_ratio(z)
            return {"loss": 0.0 * logits.sum(), "tc": logits.mean().detach()}
        logits_joint = self.density_ratio(z[:half])
        logits_product = self.density_ratio(permute_dims(z[half : 2 * half]))
        loss = 0.5 * (
            binary_cross_entropy_with_logits(logits_joint, torch.ones_like(logits_joint))
            + binary_cross_entropy_with_logits(logits_product, torch.zeros_like(logits_product))
        )
        return {"loss": loss, "tc": logits_joint.mean().detach()}

    # ------------------------------------------------------------ fit's hooks
    def training_kwargs(self, step: int) -> dict[str, Any]:
        """Switch the TC penalty on during training: ``{"tc_weight": gamma}``."""
        return {"tc_weight": self.gamma}

    def auxiliary_parameters(self) -> Iterator[torch.nn.Parameter]:
        """The discriminator's parameters (the auxiliary optimiser's, not the ELBO's)."""
        return self.discriminator.parameters()

    def auxiliary_loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One discriminator step's loss on a minibatch ``x``; z from q(z | x), no gradient into the encoder."""
        with torch.no_grad():
            z = self.posterior(x).sample()
        return self.discriminator_loss(z)

    # ------------------------------------------------------------ Pyro programs
    def model(self, x: torch.Tensor, *, kl_weight: float = 1.0, tc_weight: float = 0.0) -> torch.Tensor:
        """p(x, z); ``tc_weight`` > 0 (training only) adds ``-tc_weight · logit D(z)`` per point."""
        self._register("model")
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight):
                z = pyro.sample("z", self.prior())
            if tc_weight:
                pyro.factor("tc_penalty", -tc_weight * self._frozen_density_ratio(z))
            return pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x: torch.Tensor, *, kl_weight: float = 1.0, tc_weight: float = 0.0) -> torch.Tensor:
        """q(z | x), exactly :class:`~pyrovae.models.vae.VAE`'s (``tc_weight`` concerns the model only)."""
        return super().guide(x, kl_weight=kl_weight)

    def _frozen_density_ratio(self, z: torch.Tensor) -> torch.Tensor:
        # Detached weights: the penalty's gradient reaches z (the encoder) but
        # never the discriminator, which only its own step may move.  Layer by
        # layer rather than torch.func.functional_call, which a compiled step cannot record.
        h = z
        for layer in self.discriminator.net:
            if isinstance(layer, torch.nn.Linear):
                h = linear(h, layer.weight.detach(), layer.bias.detach())
            else:
                h = layer(h)  # an activation: no parameters
        return h.squeeze(-1)
