r"""Doubly reparameterized gradients for IWAE (Tucker et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from pyro.infer.util import is_validation_enabled

from pyrovae.objectives.importance import ImportanceELBO, LogWeights

__all__ = ["DReG"]


class DReG(ImportanceELBO):
    r"""The IWAE bound with the doubly reparameterized guide gradient (DReG).

    For :math:`\mathcal L_K(x) = \mathbb E \log \frac1K \sum_k w_k` with
    :math:`w_k = p_\theta(x, z_k) / q_\phi(z_k \mid x)` and
    :math:`z_k = g_\phi(\epsilon_k, x)`, reparameterizing the score term a
    second time gives (Tucker et al. 2018, eq. 5)

    .. math::

        \nabla_\phi \mathcal L_K = \mathbb E\Big[\sum_k \tilde w_k^{\,2}\,
            \frac{\partial \log w_k}{\partial z_k} \frac{\partial z_k}{\partial \phi}\Big],
        \qquad \tilde w_k = \frac{w_k}{\sum_j w_j},

    where :math:`\partial \log w_k / \partial z_k` holds the guide's parameters
    fixed (the STL path).  The estimator is unbiased, its variance vanishes at
    the exact posterior, and its signal-to-noise ratio does not decay with
    :math:`K` as the standard IWAE guide gradient's does (Rainforth et al. 2018).
    Model parameters get the standard IWAE gradient
    :math:`\sum_k \tilde w_k \nabla_\theta \log p_\theta(x, z_k)`.

    The model's parameters, and any guide network the model itself reads (a
    penalty on the encoder's output, as in β-TCVAE, capacity β-VAE and DIP-VAE),
    enter :math:`\log p_\theta(x, z_k)` directly as well as through :math:`z_k`;
    those direct reads get the IWAE weight :math:`\tilde w_k`, and only the path
    through :math:`z_k` gets :math:`\tilde w_k^{\,2}`.  With :math:`\eta` every
    parameter (of model and guide alike),

    .. math::

        \hat g_\eta = \sum_k \tilde w_k\, \nabla_\eta \log p_\eta(x, z_k)\big|_{z_k}
            + \sum_k \tilde w_k^{\,2}\, \frac{\partial \log w_k}{\partial z_k}
              \frac{\partial z_k}{\partial \eta},

    the guide's score :math:`\nabla_\eta \log q_\eta(z_k \mid x)|_{z_k}` dropped
    (it is what the second reparameterization replaces).  One surrogate has this
    gradient, per data point and times the minibatch scale:

    .. math::

        S = \sum_k \mathrm{sg}(\tilde w_k)\, \log p(x, \bar z_k)
            + \sum_k \mathrm{sg}(\tilde w_k^{\,2})\,\Big[\big(\log p(x, z_k) - \log p(x, \bar z_k)\big)
              - \big(\log q(z_k \mid x) - \log q(\bar z_k \mid x)\big)\Big],

    :math:`\bar z_k = \mathrm{sg}(z_k)` (model and guide rerun at the detached
    draws).  Each bracket is zero in value and has the pathwise gradient alone:
    a density's direct dependence on the parameters is the same at :math:`z_k`
    and at :math:`\bar z_k`.

    The second reparameterization turns the score of the sampling density
    :math:`q` itself into the :math:`\tilde w_k^{\,2}` path.  When a guide site
    enters the weight as :math:`s \log q` with :math:`s \ne 1` (a β under
    ``kl_scale``, a mask as β-TCVAE's while its decomposed KL stands in), the
    rest :math:`(1 - s) \log q` of that score is added back with the IWAE weight,

    .. math::

        S \mathrel{+}= \sum_k \mathrm{sg}(\tilde w_k)\,\big(\log q(\bar z_k \mid x)
            - \log q^{(s)}(\bar z_k \mid x)\big),

    :math:`q^{(s)}` the density with the sites' scales and masks (over the
    minibatch scale), so the estimator stays unbiased for any scales; it is zero
    (and skipped) when every guide site has the minibatch scale and no mask.
    No ``autograd.grad`` is needed, and
    :meth:`differentiable_loss` and :meth:`loss_and_grads` backpropagate the same
    :math:`S` (the former's value is the loss, as for every pyrovae objective).
    The cost over IWAE is one extra model pass and one guide pass.

    Condition (validated): every latent site of the guide is reparameterized,
    the sites are local to the per-point plate, and the model is a
    deterministic function of its sample sites (it is rerun; checked under
    Pyro's validation).  ``num_particles >= 2``.

    :param num_particles: :math:`K`.
    :param max_plate_nesting: as in :class:`pyro.infer.ELBO`.

    Example::

        pyrovae.fit(vae, x, objective="dreg", num_particles=10)

    References:
      1. G. Tucker, D. Lawson, S. Gu, C. J. Maddison. Doubly Reparameterized Gradient
         Estimators for Monte Carlo Objectives. arXiv:1810.04152.
      2. T. Rainforth et al. Tighter Variational Bounds are Not Necessarily Better. arXiv:1802.04537.
      3. Requested for Pyro in pyro-ppl/pyro#2598.
    """

    requires_reparameterized: ClassVar[bool] = True

    def __init__(self, num_particles: int = 5, *, max_plate_nesting: float = float("inf")) -> None:
        super().__init__(num_particles, alpha=0.0, max_plate_nesting=max_plate_nesting)
        if num_particles < 2:
            raise ValueError(f"Expected num_particles >= 2 for objective='dreg' (K = 1 is objective='stl'), got {num_particles}")

    def _validate(self, w: LogWeights) -> None:
        self._require_reparameterized(w.guide_trace, "objective='dreg'")

    def _surrogate(self, w: LogWeights, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        weights = self._normalized(w.log_w)
        log_p_fixed = self._log_p_at_fixed_values(w, args, kwargs, model)
        if is_validation_enabled():
            _check_rerun(w.log_p, log_p_fixed)
        log_q_fixed = self._score_at_fixed_values(w, args, kwargs, guide)
        log_w_pathwise = (w.log_p - log_p_fixed) - (w.log_q - log_q_fixed)
        out = weights * log_p_fixed + weights**2 * log_w_pathwise
        if not all(_unit_scale(site, w.scale) for site in self._latent_sites(w.guide_trace)):
            # the part of the score the weight lacks (a β, a mask) is added back, with the IWAE weight
            unit = self._score_at_fixed_values(w, args, kwargs, guide, scaled=False)
            out = out + weights * (unit - log_q_fixed)
        return out.sum(0)


def _check_rerun(log_p: torch.Tensor, log_p_fixed: torch.Tensor) -> None:
    """The rerun model must give the first run's values: the surrogate's brackets cancel only then."""
    with torch.no_grad():
        gap = float((log_p - log_p_fixed).abs().max())
        size = float(log_p.abs().max())
    if not gap <= 1e-6 * max(size, 1.0):
        raise ValueError(
            f"objective='dreg' reruns the model at the drawn latents, but its log density there differs from the "
            f"first run's by {gap:.3g}: the model must be a deterministic function of its sample sites "
            "(no torch.rand, no dropout in training mode)"
        )


def _unit_scale(site: dict, minibatch_scale: float | torch.Tensor) -> bool:
    """Whether the site's log density enters the per-point log weight with weight exactly 1 (no mask)."""
    scale = site["scale"]
    return (site["mask"] is None and not torch.is_tensor(scale) and not torch.is_tensor(minibatch_scale)
            and scale == minibatch_scale)
