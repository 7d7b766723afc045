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
``iwae``       :class:`~pyrovae.objectives.renyi.RenyiBound` with :math:`\alpha=0`:
               the importance-weighted bound :math:`\mathbb E\log\frac1K\sum_k w_k`
               (Burda et al. 2016, arXiv:1509.00519), vectorized over K.
``renyi``      :class:`~pyrovae.objectives.renyi.RenyiBound` for any
               :math:`\alpha \neq 1` (Li and Turner 2016, arXiv:1602.02311).
``graph``      :class:`~pyrovae.objectives.graph.GraphELBO`: Pyro's
               ``TraceGraph_ELBO`` (Rao-Blackwellized score-function gradients
               for non-reparameterized latents) with decaying-average baselines
               by default; ``pathwise=False`` gives the likelihood-ratio
               estimator on any latent.
``rws``        :class:`~pyrovae.objectives.rws.ReweightedWakeSleep`:
               wake-θ / wake-φ (Bornschein and Bengio 2015, arXiv:1406.2751).
``stl``        :class:`~pyrovae.objectives.stl.StickingTheLanding`: the ELBO
               (``alpha=1``) or IWAE (``alpha=0``) without the score term
               (Roeder et al. 2017, arXiv:1703.09194).
``dreg``       :class:`~pyrovae.objectives.dreg.DReG`: IWAE with doubly
               reparameterized guide gradients (Tucker et al. 2018,
               arXiv:1810.04152).
``enum``       :class:`~pyro.infer.TraceEnum_ELBO`: the ELBO with every site
               marked ``infer={"enumerate": "parallel"}`` summed out exactly --
               in the guide (an exact expectation over a small discrete latent:
               zero-variance gradients) or in the model (a discrete latent the
               guide leaves out, e.g. a mixture component).  ``max_plate_nesting``
               is read from the program by ``fit``/``compare_estimators``.
``free_bits``  :class:`~pyrovae.objectives.free_bits.FreeBitsELBO`: the ELBO
               with each latent dimension's minibatch KL floored at λ nats
               (Kingma et al. 2016, arXiv:1606.04934), against posterior collapse.
=============  ==================================================================

The importance-weighted estimators (``iwae``, ``renyi``, ``rws``, ``stl``,
``dreg``) normalize weights over the particles of each data point and keep
the minibatch scale out of the log-sum-exp (see
:mod:`pyrovae.objectives.importance`); they need every site inside the
per-point plate (found from the program, whatever its name) and say which site
is not, before any particle is drawn when ``fit`` runs them.  ``stl`` and ``dreg`` also need
reparameterized guide sites.

:class:`~pyrovae.objectives.compiled.Compiled` wraps any of them but ``graph``
(and Pyro's ``Trace_ELBO``/``TraceMeanField_ELBO``) into a step
recorded once with ``torch.jit.trace``: ``fit`` uses it for pyrovae's models.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from pyrovae.objectives.compiled import Compiled
from pyrovae.objectives.dreg import DReG
from pyrovae.objectives.free_bits import FreeBitsELBO
from pyrovae.objectives.graph import GraphELBO
from pyrovae.objectives.importance import ImportanceELBO
from pyrovae.objectives.renyi import RenyiBound
from pyrovae.objectives.rws import ReweightedWakeSleep
from pyrovae.objectives.stl import StickingTheLanding

__all__ = [
    "OBJECTIVES",
    "Compiled",
    "DReG",
    "FreeBitsELBO",
    "GraphELBO",
    "ImportanceELBO",
    "RenyiBound",
    "ReweightedWakeSleep",
    "StickingTheLanding",
    "make_objective",
]


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
    """The IWAE bound with K = ``num_particles`` samples (the Rényi bound at alpha = 0)."""
    _check_particles(num_particles)
    return RenyiBound(num_particles, alpha=0.0)


def renyi(*, alpha: float = 0.5, num_particles: int = 5) -> ELBO:
    """The Rényi bound of order ``alpha`` (alpha = 0 is IWAE; alpha -> 1 is the ELBO)."""
    _check_particles(num_particles)
    if not isinstance(alpha, (int, float)) or alpha == 1:
        raise ValueError(f"Expected alpha to be a number other than 1 (use objective='elbo'), got {alpha!r}")
    return RenyiBound(num_particles, alpha=float(alpha))


def graph(
    *, num_particles: int = 1, vectorize_particles: bool = True, pathwise: bool = True, baseline_beta: float = 0.9
) -> ELBO:
    """TraceGraph_ELBO with decaying-average baselines; ``pathwise=False`` for likelihood-ratio gradients."""
    _check_particles(num_particles)
    return GraphELBO(
        num_particles, vectorize_particles=vectorize_particles, pathwise=pathwise, baseline_beta=baseline_beta
    )


def rws(*, num_particles: int = 5) -> ELBO:
    """Reweighted wake-sleep (wake-θ and wake-φ) with K = ``num_particles`` >= 2."""
    _check_particles(num_particles)
    return ReweightedWakeSleep(num_particles)


def stl(*, num_particles: int = 1, alpha: float = 1.0) -> ELBO:
    """Sticking the landing: the ELBO (alpha = 1) or IWAE (alpha = 0) without the score term."""
    _check_particles(num_particles)
    return StickingTheLanding(num_particles, alpha=alpha)


def dreg(*, num_particles: int = 5) -> ELBO:
    """IWAE with doubly reparameterized guide gradients, K = ``num_particles`` >= 2."""
    _check_particles(num_particles)
    return DReG(num_particles)


def enum(*, num_particles: int = 1, vectorize_particles: bool = True) -> ELBO:
    """TraceEnum_ELBO: enumerated sites summed out exactly, the others sampled (Monte Carlo)."""
    _check_particles(num_particles)
    return TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=vectorize_particles and num_particles > 1)


def free_bits(*, free_bits: float = 0.5, num_particles: int = 1) -> ELBO:
    """The ELBO with a floor of ``free_bits`` nats on each latent dimension's KL (Kingma et al. 2016)."""
    _check_particles(num_particles)
    return FreeBitsELBO(free_bits, num_particles=num_particles)


#: name -> factory(**options) -> pyro.infer.ELBO
OBJECTIVES: dict[str, Callable[..., ELBO]] = {
    "elbo": elbo,
    "meanfield": meanfield,
    "iwae": iwae,
    "renyi": renyi,
    "graph": graph,
    "rws": rws,
    "stl": stl,
    "dreg": dreg,
    "enum": enum,
    "free_bits": free_bits,
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
