r"""Sticking the landing: the pathwise gradient without the score term (Roeder et al. 2017)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from pyrovae.objectives.importance import ImportanceELBO, LogWeights

__all__ = ["StickingTheLanding"]


class StickingTheLanding(ImportanceELBO):
    r"""The ELBO (``alpha=1``) or IWAE (``alpha=0``) with the "sticking the landing" gradient.

    The reparameterized gradient of :math:`\log w = \log p_\theta(x, z) - \log q_\phi(z \mid x)`
    with :math:`z = g_\phi(\epsilon, x)` has two guide parts,

    .. math::

        \nabla_\phi \log w = \underbrace{\big(\nabla_z \log p_\theta(x, z)
            - \nabla_z \log q_\phi(z \mid x)\big) \nabla_\phi g_\phi(\epsilon, x)}_{\text{pathwise}}
            \; - \; \underbrace{\nabla_\phi \log q_\phi(z \mid x)\big|_{z}}_{\text{score}},

    and the score has mean zero under :math:`q_\phi`.  STL drops it: with
    :math:`\tilde w_{n,k}` the weights of :class:`~pyrovae.objectives.renyi.RenyiBound`,

    .. math::

        \hat g_\phi = \sum_k \tilde w_{n,k}\, \big(\nabla_z \log p_\theta(x_n, z_{n,k})
            - \nabla_z \log q_{\bar\phi}(z_{n,k} \mid x_n)\big) \nabla_\phi z_{n,k},

    :math:`\bar\phi` held fixed (stop-gradient).  Model parameters get the usual
    :math:`\sum_k \tilde w_{n,k} \nabla_\theta \log p_\theta(x_n, z_{n,k})`.  When
    :math:`q_\phi` is the exact posterior, :math:`\log w = \log p(x)` is constant
    in :math:`z` and the guide gradient is exactly zero on every draw.

    * ``alpha=1`` (default): the ELBO; the estimator is unbiased.
    * ``alpha=0``: the IWAE bound; the guide gradient is then *biased* for
      :math:`K > 1` (Tucker et al. 2018, §3) — use
      :class:`~pyrovae.objectives.dreg.DReG` for an unbiased one.

    The score term is computed and subtracted, not re-derived: the guide's
    log density at the drawn value held fixed,
    :math:`\log q_\phi(\bar z \mid x)`, has exactly the score as its gradient, so
    :math:`\log q - \log q(\bar z) + \mathrm{sg}[\log q(\bar z)]` has the
    pathwise gradient alone and any distribution works.  With several latent
    sites the guide is rerun conditioned on the fixed values (one extra guide
    pass), so a later site's dependence on an earlier draw stays pathwise.

    Condition (validated): every latent site of the guide is reparameterized,
    and the sites are local to the per-point plate.

    :param num_particles: :math:`K`.
    :param alpha: 1 for the ELBO, 0 for IWAE (any Rényi order is accepted).
    :param max_plate_nesting: as in :class:`pyro.infer.ELBO`.

    Example::

        pyrovae.fit(vae, x, objective="stl")                           # STL-ELBO
        pyrovae.fit(vae, x, objective="stl", num_particles=5, alpha=0)   # STL-IWAE

    References:
      1. G. Roeder, Y. Wu, D. Duvenaud. Sticking the Landing: Simple, Lower-Variance
         Gradient Estimators for Variational Inference. arXiv:1703.09194.
      2. G. Tucker, D. Lawson, S. Gu, C. J. Maddison. Doubly Reparameterized Gradient
         Estimators for Monte Carlo Objectives. arXiv:1810.04152.
    """

    requires_reparameterized: ClassVar[bool] = True

    def __init__(self, num_particles: int = 1, *, alpha: float = 1.0, max_plate_nesting: float = float("inf")) -> None:
        super().__init__(num_particles, alpha=alpha, max_plate_nesting=max_plate_nesting)

    def _validate(self, w: LogWeights) -> None:
        self._require_reparameterized(w.guide_trace, "objective='stl'")

    def _surrogate(self, w: LogWeights, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        fixed = self._score_at_fixed_values(w, args, kwargs, guide)
        log_w_pathwise = w.log_p - (w.log_q - fixed + fixed.detach())
        return (self._normalized(w.log_w) * log_w_pathwise).sum(0)
