r"""The small base of the importance-weighted estimators: per-point log weights.

For a model/guide pair whose sites are local to the per-point plate, each data
point :math:`x_n` gets :math:`K` particles :math:`z_{n,k} \sim q_\phi(z \mid x_n)`
(one vectorized pass, Pyro's ``num_particles_vectorized`` plate) and the log
importance weights

.. math::

    \log w_{n,k} = \log p_\theta(x_n, z_{n,k}) - \log q_\phi(z_{n,k} \mid x_n).

Bounds that average *inside* a logarithm (IWAE, Rényi) must normalize the
weights over the particles of each data point, never over the particles of
the whole minibatch's joint: :math:`\sum_n \log \frac1K \sum_k w_{n,k}`, not
:math:`\log \frac1K \sum_k \prod_n w_{n,k}`.  The latter is a looser bound whose
normalized weights collapse onto one particle as the batch grows.

Minibatch scale
    A trainer makes a minibatch an unbiased estimate of the data set by scaling
    every site in the data plate by :math:`c = N/B` (Pyro's subsampling plates
    and :class:`pyrovae.handlers.plate_scale` do).  A scale inside a
    log-sum-exp would temper the weights (:math:`w^c`), so the per-point log
    weight is divided by :math:`c` before the particles are combined and the
    per-point bound multiplied by :math:`c` afterwards.  :math:`c` is read from
    the model's observations in the data plate (they must agree); relative
    scales of other sites (a β on ``"z"``, or on a ``pyro.factor`` term) stay
    inside the weight.

Condition (validated on every call, with the offending site named)
    Every sample site of model and guide lies inside the per-point plate
    (latents local to a data point; no global latents).  That plate is the one
    ``data_plate`` names (``fit`` sets it from :func:`pyrovae.programs.inspect_pair`),
    else the plate around the observed sites whose size is the batch's, found
    in the first trace (:func:`pyrovae.programs.find_data_plate`).  The
    observations in the data plate carry one common numeric scale.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from pyro import poutine
from pyro.distributions import Unit
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_if_enumerated, warn_if_nan

from pyrovae.programs import PYRO_PARTICLES, PointLayout, ProgramError, find_data_plate

__all__ = ["ImportanceELBO", "LogWeights", "param_leaves"]

#: the particle plate Pyro's ELBO adds when it vectorizes particles
PARTICLE_PLATE = PYRO_PARTICLES


@dataclasses.dataclass
class LogWeights:
    """Per-point terms of one vectorized draw, each of shape ``(K, B)``.

    :ivar log_p: :math:`\\log p_\\theta(x_n, z_{n,k})`, differentiable in θ and z.
    :ivar log_q: :math:`\\log q_\\phi(z_{n,k} \\mid x_n)`, differentiable in φ and z.
    :ivar score: the score-function part of ``log_q`` (the non-reparameterized
        sites' log densities at fixed values; zero when all are reparameterized).
    :ivar scale: the minibatch scale :math:`c` (a float).
    :ivar model_trace: the model's trace.
    :ivar guide_trace: the guide's trace.
    """

    log_p: torch.Tensor
    log_q: torch.Tensor
    score: torch.Tensor
    scale: float
    model_trace: Trace
    guide_trace: Trace

    @property
    def log_w(self) -> torch.Tensor:
        return self.log_p - self.log_q


class ImportanceELBO(ELBO):
    r"""Base class: the Rényi family of bounds from per-point importance weights.

    Per data point, the bound of order :math:`\alpha` (Li and Turner 2016) is

    .. math::

        \mathcal L_\alpha(x_n) = \frac{1}{1-\alpha}
            \log \frac1K \sum_{k=1}^K w_{n,k}^{1-\alpha},
        \qquad \mathcal L_1(x_n) = \frac1K \sum_k \log w_{n,k},

    so :math:`\alpha = 0` is the IWAE bound and :math:`\alpha = 1` the ELBO
    averaged over :math:`K` particles.  The loss is
    :math:`-c \sum_n \mathcal L_\alpha(x_n)`.

    Subclasses choose the gradient estimator by overriding :meth:`_surrogate`;
    this class supplies the per-point weights (:meth:`log_weights`), the loss
    value and the validation.  It always vectorizes particles.  As for Pyro's
    own ELBOs, :meth:`loss_and_grads` returns :meth:`loss`'s value and
    :meth:`differentiable_loss` has that value with the estimator's gradient
    (same random state, same draws), so an instance works in
    :class:`pyro.infer.SVI` and as ``objective(model, guide)`` (Pyro's ``ELBOModule``).

    :param num_particles: :math:`K`, particles per data point.
    :param alpha: the Rényi order :math:`\alpha` (1 = ELBO, 0 = IWAE).
    :param max_plate_nesting: as in :class:`pyro.infer.ELBO` (``fit`` sets it).
    :param data_plate: the name of the per-point plate; ``None`` (default) finds it
        in each trace (the plate around the observed sites whose size is the
        batch's, :func:`pyrovae.programs.find_data_plate`); ``fit`` sets it once.
    """

    #: capability flags, for callers that must not ask a class's name: every latent
    #: site of the guide must be reparameterized / every site inside the data plate
    requires_reparameterized: ClassVar[bool] = False
    requires_local_latents: ClassVar[bool] = True
    #: detach the guide trace's values before running the model (no pathwise gradients)
    detach_guide: ClassVar[bool] = False

    def __init__(
        self,
        num_particles: int = 1,
        *,
        alpha: float = 1.0,
        max_plate_nesting: float = float("inf"),
        data_plate: str | None = None,
    ) -> None:
        if not isinstance(num_particles, int) or isinstance(num_particles, bool) or num_particles < 1:
            raise ValueError(f"Expected num_particles to be an int >= 1, got {num_particles!r}")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
            raise ValueError(f"Expected alpha to be a finite number, got {alpha!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=True)
        self.alpha = float(alpha)
        self.data_plate = data_plate
        self._found_plates: dict[tuple[str, ...], str] = {}  # per program (its sites), when data_plate is None

    # ------------------------------------------------------------- traces
    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Trace, Trace]:
        model_trace, guide_trace = get_importance_trace(
            "flat", self.max_plate_nesting, model, guide, args, kwargs, detach=self.detach_guide
        )
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace

    def _draw(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> LogWeights:
        model_trace, guide_trace = next(self._get_traces(model, guide, args, kwargs))
        plate = self._plate(model_trace, guide_trace, args, kwargs)
        layout = PointLayout.of(model_trace, guide_trace, plate, PARTICLE_PLATE)
        log_p = layout.log_density(model_trace, scaled=True)
        log_q = layout.log_density(guide_trace, scaled=True)
        score = sum(
            (layout.per_point(s["score_parts"].score_function) for s in _samples(guide_trace)), layout.zeros()
        )
        c = _minibatch_scale(model_trace, plate)
        return LogWeights(log_p / c, log_q / c, score / c, c, model_trace, guide_trace)

    def _plate(self, model_trace: Trace, guide_trace: Trace, args: tuple, kwargs: dict) -> str:
        """The per-point plate: as set (by ``fit``), else found in this trace by the batch's size."""
        if self.data_plate is not None:
            return self.data_plate
        key = tuple(model_trace.nodes)  # the program, by its sites
        if key not in self._found_plates:  # once per program, as Pyro's ELBO guesses max_plate_nesting once
            tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.dim() > 0]
            if not tensors:
                raise ProgramError(
                    "Cannot tell the per-point plate: the programs take no tensor argument whose first dimension "
                    "is the batch; pass data_plate=NAME"
                )
            self._found_plates[key] = find_data_plate(model_trace, guide_trace, int(tensors[0].shape[0]))
        return self._found_plates[key]

    def log_weights(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The unscaled per-point log weights :math:`\\log w_{n,k}`, shape ``(K, B)``, with gradients."""
        return self._draw(model, guide, args, kwargs).log_w

    # ------------------------------------------------------------ the bound
    def _normalized(self, log_w: torch.Tensor) -> torch.Tensor:
        """Self-normalized weights :math:`\\tilde w_{n,k} \\propto w_{n,k}^{1-\\alpha}` over k (detached)."""
        return torch.softmax((1.0 - self.alpha) * log_w.detach(), dim=0)

    def _bound(self, log_w: torch.Tensor) -> torch.Tensor:
        """:math:`\\mathcal L_\\alpha(x_n)` for each point, shape ``(B,)``."""
        if self.alpha == 1.0:
            return log_w.mean(0)
        a = 1.0 - self.alpha
        # K from the configuration, not log_w.shape (a tensor while tracing)
        return (torch.logsumexp(a * log_w, dim=0) - math.log(self.num_particles)) / a

    @torch.no_grad()
    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """:math:`-c\\sum_n \\mathcal L_\\alpha(x_n)`, the negative bound, as a float."""
        w = self._draw(model, guide, args, kwargs)
        loss = -w.scale * self._bound(w.log_w).sum().item()
        warn_if_nan(loss, "loss")
        return loss

    def loss_and_surrogate(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The negative bound (a detached tensor) and the surrogate whose gradient is this estimator.

        Tensors only, no Python numbers read from tensors, so
        :class:`~pyrovae.objectives.compiled.Compiled` can trace it (and
        ``fit`` wraps it in ``DistributedDataParallel``).  A subclass that sets
        it to ``None`` keeps its steps eager; :meth:`loss_and_grads` and
        :meth:`differentiable_loss` compute the same pair either way.
        """
        return self._loss_and_surrogate(model, guide, args, kwargs)

    def _loss_and_surrogate(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = self._draw(model, guide, args, kwargs)
        self._validate(w)
        loss = -w.scale * self._bound(w.log_w.detach()).sum()
        return loss, -w.scale * self._surrogate(w, model, guide, args, kwargs).sum()

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The loss as a float; backpropagates this estimator's surrogate into the parameters."""
        loss, surrogate = self._loss_and_surrogate(model, guide, args, kwargs)
        if surrogate.requires_grad:
            surrogate.backward()
        loss = loss.item()
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        r"""The loss as a tensor whose gradient is this estimator's (Pyro's convention).

        Its value is :meth:`loss`'s on the same draws (the same random state) and
        its gradient the surrogate's :math:`S`, the one :meth:`loss_and_grads`
        backpropagates:

        .. math::

            \ell + \big(S - \mathrm{sg}(S)\big),

        :math:`\ell` the negative bound (detached) and :math:`\mathrm{sg}` stop-gradient.
        """
        loss, surrogate = self._loss_and_surrogate(model, guide, args, kwargs)
        warn_if_nan(loss, "loss")
        return loss + (surrogate - surrogate.detach())

    # ------------------------------------------------------ for subclasses
    def _validate(self, w: LogWeights) -> None:
        """Checks of the traced pair; raise ``ValueError`` naming the site."""

    def _surrogate(self, w: LogWeights, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        r"""Per-point surrogate, shape ``(B,)``; its gradient is the estimator (its value is not used).

        The standard estimator: pathwise where the guide is reparameterized,

        .. math::

            \nabla \mathcal L_\alpha(x_n) \approx \sum_k \tilde w_{n,k} \nabla \log w_{n,k}
            + \mathcal L_\alpha(x_n) \sum_k \nabla_\phi \log q_\phi(z_{n,k} \mid x_n)\big|_{z\ \text{fixed}},

        the second (score-function) term for non-reparameterized sites only.
        """
        out = (self._normalized(w.log_w) * w.log_w).sum(0)
        if w.score.requires_grad:
            out = out + self._bound(w.log_w.detach()) * w.score.sum(0)
        return out

    # ------------------------------------------------------------ helpers
    def _latent_sites(self, trace: Trace) -> list[dict]:
        return [s for s in _samples(trace) if not s["is_observed"]]

    def _require_reparameterized(self, guide_trace: Trace, estimator: str) -> None:
        for site in self._latent_sites(guide_trace):
            if not getattr(site["fn"], "has_rsample", False):
                raise ValueError(
                    f"{estimator} needs every latent site of the guide to be reparameterized "
                    f"(fn.has_rsample), but site {site['name']!r} ({type(site['fn']).__name__}) is not; "
                    "use objective='elbo', 'graph', 'iwae' or 'rws' for non-reparameterized latents"
                )

    def _score_at_fixed_values(
        self, w: LogWeights, args: tuple, kwargs: dict, guide: Callable, *, scaled: bool = True
    ) -> torch.Tensor:
        r"""Per-point :math:`\log q_\phi(\bar z \mid x)` at the drawn values held fixed, ``(K, B)``.

        Its gradient is the score term :math:`\nabla_\phi \log q_\phi(z)|_z`.  With one
        latent site the site's own distribution scores the detached value; with
        several, a later site's parameters may depend on an earlier draw, so the
        guide is rerun conditioned on all detached values.  ``scaled``: as in the
        log weight (sites' scales and masks, over the minibatch scale :math:`c`);
        otherwise the sampling density itself, no scale and no mask.
        """
        latents = self._latent_sites(w.guide_trace)
        layout = PointLayout.of(w.model_trace, w.guide_trace, self._plate(w.model_trace, w.guide_trace, args, kwargs),
                                PARTICLE_PLATE)
        total = layout.zeros()
        if len(latents) <= 1:
            for site in latents:
                lp = site["fn"].log_prob(site["value"].detach())
                total = total + layout.per_point(scale_and_mask(lp, site["scale"], site["mask"]) if scaled else lp)
            return total / w.scale if scaled else total
        values = {s["name"]: s["value"].detach() for s in latents}
        vguide = self._vectorized_num_particles(guide)
        with poutine.block():
            trace = poutine.trace(poutine.condition(vguide, data=values)).get_trace(*args, **kwargs)
        if scaled:
            trace.compute_log_prob()
        for name in values:
            site = trace.nodes[name]
            total = total + layout.per_point(site["log_prob"] if scaled else site["fn"].log_prob(site["value"]))
        return total / w.scale if scaled else total

    def _log_p_at_fixed_values(self, w: LogWeights, args: tuple, kwargs: dict, model: Callable) -> torch.Tensor:
        r"""Per-point :math:`\log p_\theta(x, \bar z)` at the drawn latents held fixed, ``(K, B)``.

        The model is rerun conditioned on the detached values, so the gradient is
        :math:`\nabla \log p(x, z)\big|_{z}`: the model's direct reads of parameters
        (its own, and any guide network it calls), without the path through :math:`z`.
        ``log_p - _log_p_at_fixed_values`` has value zero and the pathwise gradient alone.
        """
        values = {s["name"]: s["value"].detach() for s in self._latent_sites(w.guide_trace)}
        vmodel = self._vectorized_num_particles(model)
        with poutine.block():
            trace = poutine.trace(poutine.condition(vmodel, data=values)).get_trace(*args, **kwargs)
        trace = prune_subsample_sites(trace)
        trace.compute_log_prob()
        layout = PointLayout.of(w.model_trace, w.guide_trace, self._plate(w.model_trace, w.guide_trace, args, kwargs),
                                PARTICLE_PLATE)
        total = layout.zeros()
        for site in _samples(trace):
            total = total + layout.per_point(site["log_prob"])
        return total / w.scale


def _samples(trace: Trace) -> list[dict]:
    return [s for s in trace.nodes.values() if s["type"] == "sample"]


def param_leaves(trace: Trace) -> dict[str, torch.Tensor]:
    """The unconstrained leaf tensors of the ``pyro.param`` sites in ``trace``."""
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] == "param":
            value = site["value"]
            leaf = value.unconstrained() if hasattr(value, "unconstrained") else value
            if leaf.requires_grad:
                out[name] = leaf
    return out


def _minibatch_scale(model_trace: Trace, plate: str) -> float | torch.Tensor:
    """The common scale of the observations in the data plate (1 without any).

    ``pyro.factor`` terms (``Unit`` sites) count only when there is no other
    observation; otherwise a factor's own extra scale (a β, say) stays inside
    the weight like a latent site's.
    """
    observed = [
        site for site in _samples(model_trace)
        if site["is_observed"]
        and any(f.name == plate for f in site["cond_indep_stack"])
    ]
    data = [site for site in observed if not isinstance(site["fn"], Unit)] or observed
    if torch._C._get_tracing_state() is not None:
        # While Compiled records a step, plate scales are tensors computed from traced sizes;
        # the eager pass before compiling has already checked that they agree.
        return next((site["scale"] for site in data), 1.0)
    scales = {}
    for site in data:
        s = site["scale"]
        if torch.is_tensor(s):
            if s.numel() != 1:
                raise ValueError(
                    f"Importance-weighted objectives need a numeric scale at observed site {site['name']!r}, "
                    f"got a tensor of shape {tuple(s.shape)}"
                )
            s = float(s)
        scales[site["name"]] = float(s)
    if len(set(scales.values())) > 1:
        raise ValueError(
            f"Observed sites in the plate {plate!r} carry different scales {scales}; "
            "importance-weighted objectives read the minibatch scale from them, so they must agree"
        )
    return next(iter(scales.values()), 1.0)
