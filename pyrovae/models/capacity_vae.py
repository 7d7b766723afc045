"""Capacity β-VAE (AnnealedVAE): the KL term pulled towards a capacity C that rises during training."""

from __future__ import annotations

from typing import Any, ClassVar

import pyro
import torch
from torch.distributions import kl_divergence

from pyrovae.handlers import kl_scale
from pyrovae.models.vae import VAE, check_weight
from pyrovae.schedules import Linear

__all__ = ["CapacityVAE"]


class CapacityVAE(VAE):
    r"""β-VAE with a controlled capacity increase (Burgess et al. 2018), "AnnealedVAE".

    The generative model and guide are exactly :class:`~pyrovae.models.vae.VAE`'s:
    for each data point :math:`n` in the ``"data"`` plate,

    .. math::

        z_n \sim \mathcal N(0, I_d), \qquad x_n \mid z_n \sim p_\theta(x \mid z_n),
        \qquad q_\phi(z_n \mid x_n) = \mathcal N(\mu_\phi(x_n), \operatorname{diag}\sigma_\phi(x_n)^2).

    Only training differs.  The KL term of the ELBO is replaced by a penalty on
    its distance from a target capacity :math:`C_t` (in nats) that rises
    linearly from 0 to :math:`C_{\max}` over ``capacity_steps`` steps:

    .. math::

        \mathcal L_t = \sum_n \mathbb E_{q_\phi(z_n|x_n)}[\log p_\theta(x_n \mid z_n)]
            - N \gamma \,\Bigl|\tfrac1N \textstyle\sum_n
              \mathrm{KL}(q_\phi(z_n \mid x_n) \,\|\, p(z_n)) - C_t\Bigr|,
        \qquad C_t = C_{\max} \min(t / T, 1).

    As in the reference implementation (disentanglement_lib's ``AnnealedVAE``)
    the absolute value is taken of the *minibatch mean* KL, so the constraint is
    on the average rate, not on every data point's.  The KL is the analytic
    one of the diagonal Gaussian against the standard normal, computed in
    :meth:`model` from the encoder (the model owns it), and enters as
    ``pyro.factor("capacity", ...)`` inside the data plate, each of the B points
    carrying ``-γ|KL̄ - C|`` so that ``fit``'s ``N / B`` scaling gives the
    :math:`N\gamma` above.  The ``"z"`` site of both programs is masked while the
    penalty is on, so the ELBO's own KL is not counted twice.

    The penalty is switched on only by the ``capacity`` keyword, which
    :meth:`training_kwargs` supplies during ``fit``; ``model(x)``/``guide(x)``
    are the plain VAE, so evaluation (``evaluate_elbo``, likelihood bounds)
    measures the true model.  A ``kl_weight`` other than 1 weights the penalty
    as it would the KL term it replaces.

    :param gamma: γ, the weight of the capacity penalty (finite, > 0).
    :param capacity_max: :math:`C_{\max}`, the final capacity in nats (finite, >= 0).
    :param capacity_steps: T, the number of steps over which C rises (int >= 1).
    :param kwargs: everything :class:`~pyrovae.models.vae.VAE` takes.

    The defaults are disentanglement_lib's (γ = 1000, :math:`C_{\max}` = 25 nats,
    100,000 steps); scale ``capacity_steps`` down with the length of the run
    (on the command line: ``pyrovae train --model capacity_vae -o capacity_steps=2000``).

    Example::

        vae = CapacityVAE(x_shape=(1, 64, 64), z_dim=10, capacity_max=25.0, capacity_steps=100_000)
        result = pyrovae.fit(vae, x_train, epochs=30)

    References:
      1. C. P. Burgess, I. Higgins, A. Pal, L. Matthey, N. Watters, G. Desjardins,
         A. Lerchner. Understanding disentangling in β-VAE. arXiv:1804.03599.
      2. F. Locatello et al. Challenging Common Assumptions in the Unsupervised
         Learning of Disentangled Representations. arXiv:1811.12359.
    """

    #: what ``pyrovae sweep`` varies
    tradeoff_parameter: ClassVar[str | None] = "capacity_max"

    def __init__(
        self,
        *args: Any,
        gamma: float = 1000.0,
        capacity_max: float = 25.0,
        capacity_steps: int = 100_000,
        **kwargs: Any,
    ) -> None:
        gamma = check_weight("gamma", gamma, positive=True)
        capacity_max = check_weight("capacity_max", capacity_max)
        if not (isinstance(capacity_steps, int) and not isinstance(capacity_steps, bool) and capacity_steps >= 1):
            raise ValueError(f"Expected capacity_steps to be an int >= 1, got {capacity_steps!r}")
        super().__init__(*args, **kwargs)
        self.gamma = float(gamma)
        #: C as a function of the training step
        self.capacity_schedule = Linear(start=0.0, end=float(capacity_max), num_steps=capacity_steps)
        self.config.update(gamma=float(gamma), capacity_max=float(capacity_max), capacity_steps=capacity_steps)

    def training_kwargs(self, step: int) -> dict[str, Any]:
        """The capacity :math:`C_t` at training step ``step`` (``fit`` passes it to model and guide)."""
        return {"capacity": self.capacity_schedule(step)}

    def rate(self, x: torch.Tensor) -> torch.Tensor:
        """KL(q(z | x_n) || p(z)) in nats for each data point, shape ``(N,)`` (analytic)."""
        return kl_divergence(self.posterior(x), self.prior())

    def model(self, x: torch.Tensor, *, kl_weight: float = 1.0, capacity: float | None = None) -> torch.Tensor:
        """p(x, z); given ``capacity`` (training only) the KL term becomes ``-γ|KL̄ - capacity|``."""
        self._register("model")
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight if capacity is None else 0.0):
                z = pyro.sample("z", self.prior())
            if capacity is not None:
                distance = (self.rate(x).mean() - capacity).abs()
                with kl_scale(kl_weight):
                    pyro.factor("capacity", -self.gamma * distance.expand(x.shape[:1]))
            return pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x: torch.Tensor, *, kl_weight: float = 1.0, capacity: float | None = None) -> torch.Tensor:
        """q(z | x); ``"z"`` is masked while the capacity penalty stands in for the KL."""
        return super().guide(x, kl_weight=kl_weight if capacity is None else 0.0)
