"""DIP-VAE (I and II): the ELBO plus a penalty pressing a covariance of the inferred codes towards I."""

from __future__ import annotations

from typing import Any, ClassVar

import pyro
import torch

from pyrovae.handlers import kl_scale
from pyrovae.models.vae import VAE, check_weight

__all__ = ["DIPVAE", "DIP_TYPES"]

#: "i": the covariance of the posterior means; "ii": the covariance of q(z) itself
DIP_TYPES = ("i", "ii")


class DIPVAE(VAE):
    r"""Disentangled Inferred Prior VAE (Kumar et al. 2018), types I and II.

    The generative model and guide are exactly :class:`~pyrovae.models.vae.VAE`'s:
    for each data point :math:`n` in the ``"data"`` plate,

    .. math::

        z_n \sim \mathcal N(0, I_d), \qquad x_n \mid z_n \sim p_\theta(x \mid z_n),
        \qquad q_\phi(z_n \mid x_n) = \mathcal N(\mu_\phi(x_n), \operatorname{diag}\sigma_\phi(x_n)^2).

    Training matches a covariance of the inferred codes to the prior's, I:

    .. math::

        \mathcal L = \sum_n \mathrm{ELBO}_n
            - N \Bigl(\lambda_{od} \sum_{k \ne l} \Sigma_{kl}^2
                    + \lambda_d \sum_k (\Sigma_{kk} - 1)^2\Bigr),

    where for DIP-VAE-I :math:`\Sigma = \mathrm{Cov}_{p(x)}[\mu_\phi(x)]` and for
    DIP-VAE-II :math:`\Sigma = \mathrm{Cov}_{q(z)}[z] = \mathbb E_{p(x)}[\operatorname{diag}\sigma_\phi(x)^2]
    + \mathrm{Cov}_{p(x)}[\mu_\phi(x)]`, both estimated on the minibatch (as in the
    reference implementation, disentanglement_lib).  The penalty enters
    :meth:`model` as ``pyro.factor("dip_penalty", ...)`` inside the data plate,
    each of the B points carrying the batch's penalty, so that ``fit``'s
    ``N / B`` scaling gives the factor N above.

    The penalty is switched on only by the ``lambda_od``/``lambda_d`` keywords
    (default 0), which :meth:`training_kwargs` supplies during ``fit``;
    ``model(x)``/``guide(x)`` are the plain VAE, so evaluation measures the true model.

    :param dip_type: ``"i"`` or ``"ii"``.
    :param lambda_od: weight of the off-diagonal entries (finite, >= 0).
    :param lambda_d: weight of the diagonal entries (finite, >= 0); default
        ``10 * lambda_od`` for type I and ``lambda_od`` for type II (Kumar et al.).
    :param kwargs: everything :class:`~pyrovae.models.vae.VAE` takes.

    Example::

        vae = DIPVAE(x_shape=(1, 64, 64), z_dim=10, dip_type="ii", lambda_od=10.0)

    References:
      1. A. Kumar, P. Sattigeri, A. Balakrishnan. Variational Inference of
         Disentangled Latent Concepts from Unlabeled Observations. arXiv:1711.00848.
      2. F. Locatello et al. Challenging Common Assumptions in the Unsupervised
         Learning of Disentangled Representations. arXiv:1811.12359.
    """

    #: what ``pyrovae sweep`` varies
    tradeoff_parameter: ClassVar[str | None] = "lambda_od"

    def __init__(
        self,
        *args: Any,
        dip_type: str = "i",
        lambda_od: float = 10.0,
        lambda_d: float | None = None,
        **kwargs: Any,
    ) -> None:
        if dip_type not in DIP_TYPES:
            raise ValueError(f"Expected dip_type in {DIP_TYPES}, got {dip_type!r}")
        lambda_od = check_weight("lambda_od", lambda_od)
        if lambda_d is None:
            factor = 10.0 if dip_type == "i" else 1.0
            lambda_d = check_weight(f"lambda_d (by default {factor:g} * lambda_od)", factor * lambda_od)
        lambda_d = check_weight("lambda_d", lambda_d)
        super().__init__(*args, **kwargs)
        self.dip_type = dip_type
        self.lambda_od, self.lambda_d = float(lambda_od), float(lambda_d)
        self.config.update(dip_type=dip_type, lambda_od=self.lambda_od, lambda_d=self.lambda_d)

    def training_kwargs(self, step: int) -> dict[str, Any]:
        """Switch the covariance penalty on during training."""
        return {"lambda_od": self.lambda_od, "lambda_d": self.lambda_d}

    def code_covariance(self, x: torch.Tensor) -> torch.Tensor:
        """Σ of the minibatch ``x`` (``(z_dim, z_dim)``): Cov[μ(x)] (type I) or Cov_q[z] (type II)."""
        posterior = self.posterior(x).base_dist
        centred = posterior.loc - posterior.loc.mean(0)
        covariance = centred.T @ centred / x.shape[0]
        if self.dip_type == "ii":
            covariance = covariance + torch.diag(posterior.scale.pow(2).mean(0))
        return covariance

    def model(
        self, x: torch.Tensor, *, kl_weight: float = 1.0, lambda_od: float = 0.0, lambda_d: float = 0.0
    ) -> torch.Tensor:
        """p(x, z); nonzero ``lambda_od``/``lambda_d`` (training only) add the covariance penalty."""
        self._register("model")
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight):
                z = pyro.sample("z", self.prior())
            if lambda_od or lambda_d:
                covariance = self.code_covariance(x)
                diagonal = covariance.diagonal()
                penalty = lambda_od * (covariance.pow(2).sum() - diagonal.pow(2).sum()) + lambda_d * (diagonal - 1).pow(2).sum()
                pyro.factor("dip_penalty", -penalty.expand(x.shape[:1]))
            return pyro.sample("x", self.likelihood(z), obs=x)

    def guide(
        self, x: torch.Tensor, *, kl_weight: float = 1.0, lambda_od: float = 0.0, lambda_d: float = 0.0
    ) -> torch.Tensor:
        """q(z | x), exactly :class:`~pyrovae.models.vae.VAE`'s (the penalty concerns the model only)."""
        return super().guide(x, kl_weight=kl_weight)
