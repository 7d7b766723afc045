"""β-VAE: a VAE whose training weight on the KL term defaults to β > 1."""

from __future__ import annotations

from typing import Any, ClassVar

from pyrovae.models.vae import VAE, check_weight

__all__ = ["BetaVAE"]


class BetaVAE(VAE):
    r"""β-VAE (Higgins et al. 2017): the VAE trained with a KL weight β.

    The generative model and guide are exactly :class:`~pyrovae.models.vae.VAE`'s;
    only the training objective changes,

    .. math::

        \mathcal L_\beta = \mathbb E_{q_\phi(z|x)}[\log p_\theta(x \mid z)]
            - \beta\, \mathrm{KL}(q_\phi(z \mid x) \,\|\, p(z)),

    with β applied by ``poutine.scale`` to ``"z"`` in both model and guide.
    β > 1 presses the posterior towards the factorised prior (an information
    bottleneck) and, on data with independent factors, favours disentangled
    codes at a cost in reconstruction.  This class only sets the default
    training weight: ``VAE`` trained with ``fit(..., kl_weight=beta)`` is the
    same thing, and evaluation always uses β = 1.

    :param beta: the KL weight used by ``fit`` when none is given (finite, > 0).
    :param kwargs: everything :class:`~pyrovae.models.vae.VAE` takes.

    Example::

        vae = BetaVAE(x_shape=(1, 64, 64), z_dim=10, beta=4.0)

    References:
      1. I. Higgins et al. β-VAE: Learning Basic Visual Concepts with a
         Constrained Variational Framework. ICLR 2017.
      2. C. P. Burgess et al. Understanding disentangling in β-VAE. arXiv:1804.03599.
    """

    #: what ``pyrovae sweep`` varies
    tradeoff_parameter: ClassVar[str | None] = "beta"

    def __init__(self, *args: Any, beta: float = 4.0, **kwargs: Any) -> None:
        beta = check_weight("beta", beta, positive=True)
        super().__init__(*args, **kwargs)
        self.default_kl_weight = beta
        self.config["beta"] = beta
