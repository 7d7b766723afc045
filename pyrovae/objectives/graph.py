r"""TraceGraph_ELBO with decaying-average baselines on by default, and a likelihood-ratio switch."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import torch
from pyro.infer import TraceGraph_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.tracegraph_elbo import TrackNonReparam
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from pyro.util import check_if_enumerated, warn_if_nan

__all__ = ["GraphELBO"]

#: where Pyro keeps a site's decaying-average baseline in the param store
BASELINE_PREFIX = "__baseline_avg_downstream_cost_"


class GraphELBO(TraceGraph_ELBO):
    r"""The ELBO with Rao-Blackwellized score-function gradients and baselines (Schulman et al. 2015).

    For a non-reparameterized latent site :math:`z` the gradient is

    .. math::

        \nabla_\phi \mathcal L \approx \big(c_z - b_z\big)\, \nabla_\phi \log q_\phi(z \mid x)
            + \text{pathwise terms},

    where :math:`c_z` is the *downstream* cost (only the terms of
    :math:`\log p - \log q` that :math:`z` influences, from Pyro's dependency
    tracking) and :math:`b_z` a baseline that does not depend on this draw, so
    the estimator stays unbiased.  This class is
    :class:`pyro.infer.TraceGraph_ELBO` with three changes:

    * every non-reparameterized guide site without its own ``infer={"baseline": ...}``
      gets Pyro's decaying-average baseline
      :math:`b \leftarrow \beta b + (1 - \beta) c` (``baseline_beta``); Pyro's
      default is no baseline.  The running average is per position in the
      batch; when the batch size changes (a smaller last minibatch) it is
      replaced by its mean, where Pyro would fail on the shape.
    * ``pathwise=False`` treats *every* latent site as non-reparameterized: the
      likelihood-ratio (REINFORCE) estimator, for comparing it with the
      pathwise one on the same Gaussian latent (:func:`pyrovae.compare_estimators`).
    * :meth:`differentiable_loss` exists (Pyro's class has none), with the
      loss's value and ``loss_and_grads``' gradient, so the objective also works
      as ``objective(model, guide)``, Pyro's ``ELBOModule``.

    :param num_particles: particles per step (averaged).
    :param vectorize_particles: draw the particles in one vectorized pass.
    :param baseline_beta: decay :math:`\beta \in [0, 1)` of the average baseline.
    :param pathwise: use pathwise gradients where the guide allows them.
    :param max_plate_nesting: as in :class:`pyro.infer.ELBO`.

    Example::

        pyrovae.fit(vae, x, objective=GraphELBO(pathwise=False))   # REINFORCE with a baseline

    References:
      1. J. Schulman, N. Heess, T. Weber, P. Abbeel. Gradient Estimation Using Stochastic
         Computation Graphs. arXiv:1506.05254.
      2. A. Mnih, K. Gregor. Neural Variational Inference and Learning in Belief Networks.
         arXiv:1402.0030.
    """

    def __init__(
        self,
        num_particles: int = 1,
        *,
        vectorize_particles: bool = True,
        baseline_beta: float = 0.9,
        pathwise: bool = True,
        max_plate_nesting: float = float("inf"),
    ) -> None:
        if not (isinstance(baseline_beta, (int, float)) and 0 <= baseline_beta < 1):
            raise ValueError(f"Expected 0 <= baseline_beta < 1, got {baseline_beta!r}")
        if not isinstance(pathwise, bool):
            raise ValueError(f"Expected pathwise to be True or False, got {pathwise!r}")
        super().__init__(
            num_particles=num_particles,
            vectorize_particles=vectorize_particles and num_particles > 1,
            max_plate_nesting=max_plate_nesting,
        )
        self.baseline_beta = float(baseline_beta)
        self.pathwise = pathwise
        #: the decaying-average baselines, by site name: this objective's own state
        self.baselines: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The decaying-average baselines, by site name, for a checkpoint."""
        return {name: value.detach().cpu().clone() for name, value in self.baselines.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | None = None) -> None:
        """Take checkpointed baselines back, so a resumed run continues their averages."""
        for name, value in state.items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                raise ValueError(f"Expected baselines as {{site name: tensor}}, got {name!r}: {type(value).__name__}")
        self.baselines = {name.removeprefix(BASELINE_PREFIX): value.to(device) if device is not None else value.clone()
                          for name, value in state.items()}

    @contextlib.contextmanager
    def _lent_baselines(self) -> Iterator[None]:
        """Pyro's TraceGraph_ELBO reads and writes a decaying-average baseline in the global param
        store; lend it this objective's own for one call and take them back after, so two
        objectives (or a user's parameters) never share or see them."""
        store = pyro.get_param_store()
        for name, value in self.baselines.items():
            store[BASELINE_PREFIX + name] = value
        try:
            yield
        finally:
            for key in [k for k in store.keys() if k.startswith(BASELINE_PREFIX)]:
                self.baselines[key.removeprefix(BASELINE_PREFIX)] = store[key].detach()
                del store[key]

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        with self._lent_baselines():
            return super().loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        with self._lent_baselines():
            return super().loss_and_grads(model, guide, *args, **kwargs)

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        r"""The negative ELBO as a tensor whose gradient is :meth:`loss_and_grads`'s.

        Pyro's ``TraceGraph_ELBO`` has none; this one follows Pyro's convention:
        the value is :meth:`loss`'s on the same draws, the gradient that of the
        surrogate :math:`S` that ``loss_and_grads`` backpropagates (the
        Rao-Blackwellized score terms and any baseline network's loss),
        :math:`-\mathrm{ELBO} + (S - \mathrm{sg}(S))`.  The decaying-average
        baselines move exactly as in a ``loss_and_grads`` step, once per call.
        """
        with self._lent_baselines():
            elbo, surrogate = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        loss = -torch.as_tensor(elbo).detach()
        warn_if_nan(loss, "loss")
        return loss + (surrogate - surrogate.detach())

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Trace, Trace]:
        # The handler wraps the (already particle-vectorized) guide, so it sees each
        # site's final distribution and acts before TrackNonReparam looks at it.
        guide = _Baselines(self.baseline_beta, self.pathwise)(guide)
        with TrackNonReparam():
            model_trace, guide_trace = get_importance_trace(
                "dense", self.max_plate_nesting, model, guide, args, kwargs
            )
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace


def _set_no_rsample(fn: Any) -> None:
    # Independent (and similar wrappers) expose has_rsample as a read-only property
    while hasattr(fn, "base_dist") and isinstance(getattr(type(fn), "has_rsample", None), property):
        fn = fn.base_dist
    fn.has_rsample_(False)


class _Baselines(Messenger):
    """Default baselines for non-reparameterized guide sites; optionally no reparameterization."""

    def __init__(self, beta: float, pathwise: bool) -> None:
        super().__init__()
        self.beta = beta
        self.pathwise = pathwise

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or isinstance(msg["fn"], _Subsample):
            return
        if not self.pathwise and getattr(msg["fn"], "has_rsample", False):
            _set_no_rsample(msg["fn"])
        if getattr(msg["fn"], "has_rsample", False) or "baseline" in msg["infer"]:
            return
        msg["infer"] = {**msg["infer"], "baseline": {"use_decaying_avg_baseline": True, "baseline_beta": self.beta}}
        store = pyro.get_param_store()
        name = BASELINE_PREFIX + msg["name"]
        if name in store:
            shape = msg["fn"].batch_shape
            old = store[name]
            if old.shape != shape:
                with torch.no_grad():
                    store[name] = old.mean().expand(shape).clone()
