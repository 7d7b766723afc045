r"""Reweighted wake-sleep with per-point weights (Bornschein and Bengio 2015)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyrovae.objectives.importance import ImportanceELBO, LogWeights

__all__ = ["ReweightedWakeSleep"]


class ReweightedWakeSleep(ImportanceELBO):
    r"""Reweighted wake-sleep: wake-θ (IWAE) for the model, wake-φ for the guide.

    With :math:`K` draws :math:`z_{n,k} \sim q_\phi(\cdot \mid x_n)` held fixed (no
    pathwise gradient, so discrete latents work) and
    :math:`\tilde w_{n,k} = w_{n,k} / \sum_j w_{n,j}`:

    .. math::

        \hat g_\theta = \sum_k \tilde w_{n,k} \nabla_\theta \log p_\theta(x_n, z_{n,k}),
        \qquad
        \hat g_\phi = \sum_k \tilde w_{n,k} \nabla_\phi \log q_\phi(z_{n,k} \mid x_n),

    the first the IWAE model gradient, the second a self-normalized estimate of
    :math:`-\nabla_\phi \mathrm{KL}(p_\theta(z \mid x_n) \,\|\, q_\phi(z \mid x_n))`
    (wake-φ; biased for finite :math:`K`, consistent as :math:`K \to \infty`).
    The reported loss is the negative IWAE bound.

    This is :class:`pyro.infer.ReweightedWakeSleep` with ``insomnia=1``, with two
    differences: the weights are normalized per data point (Pyro's normalize
    over the joint of the minibatch, which collapses them onto one particle as
    the batch grows), and the minibatch scale is kept out of the log-sum-exp;
    ``loss_and_grads`` returns one float, as ``fit`` expects.  The sleep-φ phase
    (dreams from the model) is left out: it needs guides that take the
    observations as a keyword, which pyrovae's do not.

    Condition (validated): sites local to the per-point plate;
    ``num_particles >= 2``.

    :param num_particles: :math:`K`.
    :param max_plate_nesting: as in :class:`pyro.infer.ELBO`.

    Example::

        pyrovae.fit(vae, x, objective="rws", num_particles=5)

    References:
      1. J. Bornschein, Y. Bengio. Reweighted Wake-Sleep. arXiv:1406.2751.
      2. T. A. Le, A. R. Kosiorek, N. Siddharth, Y. W. Teh, F. Wood. Revisiting Reweighted
         Wake-Sleep for Models with Stochastic Control Flow. arXiv:1805.10469.
    """

    detach_guide = True

    def __init__(self, num_particles: int = 5, *, max_plate_nesting: float = float("inf")) -> None:
        super().__init__(num_particles, alpha=0.0, max_plate_nesting=max_plate_nesting)
        if num_particles < 2:
            raise ValueError(f"Expected num_particles >= 2 for objective='rws' (self-normalized weights), got {num_particles}")

    def _surrogate(self, w: LogWeights, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        weights = self._normalized(w.log_w)
        return (weights * (w.log_p + w.log_q)).sum(0)
