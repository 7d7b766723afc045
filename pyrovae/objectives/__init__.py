r"""Training objectives by name: Pyro's estimators and the ones Pyro lacks.

Every entry of :data:`OBJECTIVES` is a factory taking keyword options and
returning a :class:`pyro.infer.ELBO`; :func:`make_objective` validates the
options against the factory's signature, so a misspelt or inapplicable option
is an error, not a silent no-op.

=============  ==================================================================
name           estimator
=============  ==================================================================
``elbo``       :class:`~pyro.infer.Trace_ELBO`: Monte Carlo ELBO, pathwise
               gradients for reparameterized sites, score function otherwise.
``meanfield``  :class:`~pyro.infer.TraceMeanField_ELBO`: analytic KL where
               Pyro knows it (here, Normal vs Normal).
``iwae``       :class:`~pyro.infer.RenyiELBO` with :math:`\alpha=0`: the
               importance-weighted bound :math:`\mathbb E\log\frac1K\sum_k w_k`
               (Burda et al. 2016, arXiv:1509.00519), vectorized over K.
``renyi``      :class:`~pyro.infer.RenyiELBO` for any :math:`\alpha \neq 1`
               (Li and Turner 2016, arXiv:1602.02311).
=============  ==================================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

__all__ = ["OBJECTIVES", "make_objective"]


def _check_particles(num_particles: int) -> None:
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"Expected num_particles to be an int >= 1, got {num_particles!r}")


def elbo(*, num_particles: int = 1, vectorize_particles: bool = True) -> ELBO:
    """Trace_ELBO."""
    _check_particles(num_particles)
    return Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize_particles and num_particles > 1)


def meanfield(*, num_particles: int = 1, vectorize_particles: bool = True) -> ELBO:
    """TraceMeanField_ELBO (analytic KL where available)."""
    _check_particles(num_particles)
    return TraceMeanField_ELBO(
        num_particles=num_particles, vectorize_particles=vectorize_particles and num_particles > 1
    )


def iwae(*, num_particles: int = 5) -> ELBO:
    """The IWAE bound with K = ``num_particles`` samples (RenyiELBO, alpha = 0)."""
    _check_particles(num_particles)
    return RenyiELBO(alpha=0.0, num_particles=num_particles, vectorize_particles=True)


def renyi(*, alpha: float = 0.5, num_particles: int = 5) -> ELBO:
    """The Rényi bound of order ``alpha`` (alpha = 0 is IWAE; alpha -> 1 is the ELBO)."""
    _check_particles(num_particles)
    if not isinstance(alpha, (int, float)) or alpha == 1:
        raise ValueError(f"Expected alpha to be a number other than 1 (use objective='elbo'), got {alpha!r}")
    return RenyiELBO(alpha=float(alpha), num_particles=num_particles, vectorize_particles=True)


#: name -> factory(**options) -> pyro.infer.ELBO
OBJECTIVES: dict[str, Callable[..., ELBO]] = {
    "elbo": elbo,
    "meanfield": meanfield,
    "iwae": iwae,
    "renyi": renyi,
}


def make_objective(objective: str | ELBO = "elbo", **options: Any) -> ELBO:
    """An ELBO instance from a name in :data:`OBJECTIVES` (with options) or an ELBO instance.

    Options set to ``None`` are dropped, so callers can pass through defaults.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(objective, ELBO):
        if options:
            raise ValueError(f"Options {sorted(options)} only apply to named objectives; configure the ELBO instance instead")
        return objective
    try:
        factory = OBJECTIVES[objective]
    except (KeyError, TypeError):
        raise ValueError(
            f"Expected objective to be one of {sorted(OBJECTIVES)} or a pyro.infer.ELBO instance, got {objective!r}"
        ) from None
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"objective={objective!r} takes options {sorted(accepted)}, got unexpected {unknown}")
    return factory(**options)
