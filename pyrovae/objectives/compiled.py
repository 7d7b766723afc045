r"""A compiled training step: the same estimator, without Python's per-step overhead.

A Pyro step re-runs model and guide under effect handlers every time: for a
small network that Python bookkeeping (messages, traces, ``pyro.module``
registration) costs as much as the network itself.  :class:`Compiled` records
the step once with :func:`torch.jit.trace` -- the tensor operations of the
objective's loss and surrogate, handlers already applied -- and then replays
the recorded graph.  Random draws stay random (they are operations in the
graph); the estimator, its value and its gradients are the wrapped objective's.

What a recording cannot see: Python state that changes between steps outside
the arguments (an attribute set by a callback, a global).  Such a value is
frozen into the graph.  pyrovae's models take everything that changes as a
keyword argument (``kl_weight``, ``training_kwargs``), so ``fit`` compiles
them by default and compiles your own classes only with ``jit=True``.

What can be compiled (checked before the first compiled step; otherwise the
step runs eagerly and :attr:`Compiled.eager_reason` says why):

* the objective exposes ``loss_and_surrogate(model, guide, *args, **kwargs)``
  returning tensors (every :class:`~pyrovae.objectives.importance.ImportanceELBO`,
  ``dreg`` included), or is Pyro's ``Trace_ELBO`` or ``TraceMeanField_ELBO``;
* every parameter the pair trains belongs to one ``torch.nn.Module`` (a
  pyrovae model, or your object's networks registered with ``pyro.module``);
* every latent site of the guide is reparameterized (no discrete choices, so
  the program's path cannot depend on a draw);
* no Python code outside torch, Pyro and pyrovae reads a tensor's value while
  tracing (a :class:`torch.jit.TracerWarning` from your file may mean a branch on data);
* the recorded graph agrees with the eager step, on the same random numbers,
  at the minibatch's keyword arguments and, for a graph whose float arguments
  are inputs, at different values of them -- which catches a number baked in
  where a schedule should have moved it.

One graph is kept per input signature (tensor shapes, dtypes and devices, and
the values of the other arguments), so the last, smaller minibatch of an
epoch gets its own.  A float keyword argument (``kl_weight``, a capacity
``C``) is a constant of the graph until its value changes; from then on it is
passed as a 0-dim tensor, so an annealing schedule changes a graph input, not
the graph (one extra recording), and a constant β costs nothing.  Tracing and checking run under
:func:`torch.random.fork_rng`, so a run draws the same random numbers whether
or not it compiled, and a resumed run matches an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.util import warn_if_nan
from torch import nn

from pyrovae.objectives.importance import param_leaves
from pyrovae.programs import trace_programs

__all__ = ["Compiled", "loss_and_surrogate_of"]


#: recordings kept per objective; more means an argument changes every step, so the step runs eagerly
MAX_GRAPHS = 8


class NotCompilable(Exception):
    """Why a step cannot be compiled (the step then runs eagerly)."""


def _trace_elbo(elbo: Trace_ELBO, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
    """``Trace_ELBO``'s loss and surrogate as tensors.

    For a reparameterized guide the surrogate is the negative ELBO itself, all
    in tensors (so it can be recorded); otherwise Pyro's own score-function
    surrogate, which reads the loss as a Python float and so runs eagerly only.
    """
    loss = surrogate = 0.0
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        latents = [s for s in guide_trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]]
        if all(getattr(site["fn"], "has_rsample", False) for site in latents):
            particle = -(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
            particle_loss, particle_surrogate = particle.detach(), particle
        elif torch._C._get_tracing_state() is not None:
            raise NotCompilable("the guide has latent sites that are not reparameterized")
        else:
            particle_loss, particle_surrogate = elbo._differentiable_loss_particle(model_trace, guide_trace)
            particle_loss = torch.as_tensor(particle_loss, dtype=particle_surrogate.dtype, device=particle_surrogate.device)
        loss = loss + particle_loss / elbo.num_particles
        surrogate = surrogate + particle_surrogate / elbo.num_particles
    return loss, surrogate


def _mean_field_elbo(elbo: TraceMeanField_ELBO, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
    """``TraceMeanField_ELBO``'s loss and surrogate (Pyro's particle loss is trace-safe)."""
    loss = surrogate = 0.0
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        _, particle_surrogate = elbo._differentiable_loss_particle(model_trace, guide_trace)
        particle_loss = particle_surrogate.detach()  # Pyro's own loss value is the same number, as a float
        loss = loss + particle_loss / elbo.num_particles
        surrogate = surrogate + particle_surrogate / elbo.num_particles
    return loss, surrogate


#: Pyro's estimators (by exact type: a subclass may change the estimator) -> loss and surrogate as tensors
_PYRO_ESTIMATORS: dict[type, Callable] = {Trace_ELBO: _trace_elbo, TraceMeanField_ELBO: _mean_field_elbo}


def loss_and_surrogate_of(objective: ELBO) -> Callable | None:
    """The objective's ``(model, guide, *args, **kwargs) -> (loss, surrogate)`` in tensors, or ``None``."""
    if isinstance(objective, Compiled):
        return objective.loss_and_surrogate if objective._fn is not None else None
    method = getattr(objective, "loss_and_surrogate", None)
    if callable(method):
        # a subclass that overrides loss_and_grads (clipping, logging, two surrogates) must keep it
        mro = type(objective).__mro__
        defines = [k for k in mro if "loss_and_surrogate" in vars(k)]
        overrides = [k for k in mro if "loss_and_grads" in vars(k)]
        if overrides and defines and mro.index(overrides[0]) < mro.index(defines[0]):
            return None
        return method
    fn = _PYRO_ESTIMATORS.get(type(objective))
    if fn is None:
        return None
    return lambda model, guide, *args, **kwargs: fn(objective, model, guide, *args, **kwargs)


class _Signature:
    """How one call's arguments split into graph inputs (tensors) and constants (the rest)."""

    def __init__(self, args: tuple, kwargs: dict, like: torch.Tensor, varying: set[str]) -> None:
        self.like = like
        self.arg_slots = [torch.is_tensor(a) for a in args]
        for k, v in kwargs.items():
            if torch.is_tensor(v) and not (v.dim() == 0 and v.is_floating_point()):
                raise NotCompilable(f"keyword argument {k!r} is a tensor of shape {tuple(v.shape)} and dtype "
                                    f"{v.dtype}; only 0-dim float tensors can be graph inputs")
        self.float_keys = sorted(
            k for k, v in kwargs.items() if torch.is_tensor(v) or (isinstance(v, float) and k in varying)
        )
        self.constants = {k: v for k, v in kwargs.items() if k not in self.float_keys}
        tensors = [a for a in args if torch.is_tensor(a)]
        try:
            hash(tuple(sorted(self.constants.items())))
        except TypeError as e:
            raise NotCompilable(f"keyword arguments {sorted(self.constants)} are not hashable") from e
        self.key: Hashable = (
            tuple((tuple(t.shape), t.dtype, str(t.device), t.requires_grad) for t in tensors),
            tuple(None if t else a for t, a in zip(self.arg_slots, args)),
            tuple(self.float_keys),
            tuple(sorted(self.constants.items())),
        )

    def inputs(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        tensors = [a for a in args if torch.is_tensor(a)]
        for k in self.float_keys:
            v = kwargs[k]
            tensors.append(v if torch.is_tensor(v) else torch.tensor(v, dtype=self.like.dtype, device=self.like.device))
        return tuple(tensors)

    def call(self, args: tuple, inputs: tuple[torch.Tensor, ...]) -> tuple[tuple, dict]:
        """Rebuild ``(args, kwargs)`` from graph inputs (inside the traced function)."""
        it = iter(inputs)
        rebuilt = tuple(next(it) if is_tensor else a for is_tensor, a in zip(self.arg_slots, args))
        kwargs = dict(self.constants)
        kwargs.update({k: next(it) for k in self.float_keys})
        return rebuilt, kwargs


class _Step(nn.Module):
    """The module ``torch.jit.trace`` records: its parameters are the owner's, its inputs the tensors."""

    def __init__(self, owner: nn.Module, fn: Callable, model: Callable, guide: Callable, signature: _Signature,
                 args: tuple) -> None:
        super().__init__()
        self.owner = owner
        self._fn, self._model, self._guide, self._signature, self._args = fn, model, guide, signature, args

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        args, kwargs = self._signature.call(self._args, inputs)
        loss, surrogate = self._fn(self._model, self._guide, *args, **kwargs)
        if not (torch.is_tensor(loss) and torch.is_tensor(surrogate)):
            raise NotCompilable("the objective's loss is not a tensor (the pair has no sample sites?)")
        return loss.detach(), surrogate


def _perturbed(kwargs: dict, keys: list[str]) -> dict:
    """Different values for the float arguments (same sign), to catch numbers baked into a graph."""
    out = dict(kwargs)
    for k in keys:
        v = float(kwargs[k])
        out[k] = v + 0.5 * max(abs(v), 1.0)
    return out


def _foreign_tracer_warning(caught: list[warnings.WarningMessage]) -> str | None:
    """A TracerWarning raised from code outside torch, Pyro and pyrovae: Python reading a tensor's value.

    Shapes are tensors while tracing, so a shape check warns too; torch's, Pyro's and
    pyrovae's own checks are on shapes (one graph per shape), and pyrovae's models
    are tested compiled against eager.  Elsewhere the step runs eagerly, to be safe.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # pyrovae/
    trusted = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch, pyro)) + (package + os.sep,)
    for w in caught:
        if issubclass(w.category, torch.jit.TracerWarning) and not str(w.filename).startswith(trusted):
            first = str(w.message).split(".")[0]
            return f"{w.filename}:{w.lineno} reads a tensor's value in Python ({first})"
    return None


#: attributes every ``nn.Module`` has (torch's bookkeeping, not the program's state)
_MODULE_INTERNALS = frozenset(vars(nn.Module())) - {"training"}


def _fingerprint(value: Any, depth: int = 0) -> Hashable:
    """A value's identity and, for plain data, its content (a tensor: identity and in-place version)."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return value
    if torch.is_tensor(value):
        return ("tensor", id(value), value._version)
    if depth < 2 and isinstance(value, (list, tuple)):
        return (type(value).__name__, id(value), tuple(_fingerprint(v, depth + 1) for v in value))
    if depth < 2 and isinstance(value, dict):
        return ("dict", id(value), tuple((repr(k), _fingerprint(v, depth + 1)) for k, v in value.items()))
    return ("object", id(value))


def _python_state(module: nn.Module) -> dict[tuple[str, str], Hashable]:
    """The Python attributes of ``module`` and its submodules, and its buffers (running statistics
    a call updates in place; their updates inside a recorded graph are not checked against eager)."""
    state: dict[tuple[str, str], Hashable] = {}
    for prefix, m in module.named_modules():
        for key, value in vars(m).items():
            if key not in _MODULE_INTERNALS:
                state["attribute", f"{prefix}.{key}" if prefix else key] = _fingerprint(value)
    for name, buffer in module.named_buffers():
        state["buffer", name] = _fingerprint(buffer)
    return state


def _changed_state(before: dict[tuple[str, str], Hashable], after: dict[tuple[str, str], Hashable]) -> str | None:
    for kind, name in sorted(set(before) | set(after)):
        if before.get((kind, name), "<unset>") != after.get((kind, name), "<unset>"):
            return f"the module's {kind} {name!r}"
    return None


class Compiled(ELBO):
    """An objective whose training step is recorded once per input signature and replayed.

    :param objective: the estimator (see :func:`loss_and_surrogate_of` for which compile).
    :param module: the ``nn.Module`` holding every trained parameter.
    :param strict: raise :class:`ValueError` instead of running eagerly when the
        step cannot be compiled.
    :param rtol: relative tolerance of the check against the eager step (float32
        rounding of a reordered sum; a baked-in number is off by far more).
    :param foreign: the programs were written outside pyrovae: also refuse a call
        that changes the module's Python attributes or buffers (an annealing counter,
        BatchNorm's running statistics) and a graph that disagrees with a second
        eager step (Python state read from elsewhere, a global counter, say).

    Example::

        step = Compiled(pyrovae.make_objective("iwae", num_particles=5), vae)
        loss = step.loss_and_grads(vae.model, vae.guide, x_batch, kl_weight=0.5)
    """

    def __init__(self, objective: ELBO, module: nn.Module, *, strict: bool = False, rtol: float = 1e-4,
                 foreign: bool = False) -> None:
        super().__init__(num_particles=objective.num_particles, max_plate_nesting=objective.max_plate_nesting,
                         vectorize_particles=objective.vectorize_particles)
        self.objective = objective
        self.module = module
        self.strict = strict
        self.rtol = rtol
        self.foreign = foreign
        #: why steps run eagerly (``None`` while every step so far was compiled)
        self.eager_reason: str | None = None
        self._fn = loss_and_surrogate_of(objective)
        self._graphs: dict[Hashable, Any] = {}
        self._checked_programs = False
        self._last_floats: dict[str, float] = {}
        self._varying: set[str] = set()
        if self._fn is None:
            self._give_up(f"{type(objective).__name__} has no loss_and_surrogate")

    @property
    def compiled(self) -> bool:
        """Whether the steps so far ran a recorded graph."""
        return self.eager_reason is None and bool(self._graphs)

    # -------------------------------------------------------------- ELBO API
    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        return self.objective._get_trace(model, guide, args, kwargs)

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        return self.objective.loss(model, guide, *args, **kwargs)

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.objective.differentiable_loss(model, guide, *args, **kwargs)

    def loss_and_surrogate(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The wrapped objective's loss and surrogate, from the recorded graph when there is one."""
        graph, inputs = self._graph(model, guide, args, kwargs)
        if graph is not None:
            return graph(*inputs)
        if self._fn is None:
            raise NotImplementedError(f"{type(self.objective).__name__} has no loss_and_surrogate")
        return self._fn(model, guide, *args, **kwargs)

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        graph, inputs = self._graph(model, guide, args, kwargs)
        if graph is None:
            return self.objective.loss_and_grads(model, guide, *args, **kwargs)
        loss, surrogate = graph(*inputs)
        if surrogate.requires_grad:
            surrogate.backward()
        value = loss.item()
        warn_if_nan(value, "loss")
        return value

    # ------------------------------------------------------------- compiling
    def _give_up(self, reason: str) -> None:
        if self.strict:
            raise ValueError(f"Cannot compile the training step: {reason}; pass jit=False to run it eagerly")
        self.eager_reason = reason

    def _graph(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        if self.eager_reason is not None:
            return None, ()
        like = next((a for a in args if torch.is_tensor(a) and a.is_floating_point()), None)
        if like is None:
            self._give_up("no floating-point tensor among the arguments")
            return None, ()
        for k, v in kwargs.items():
            if isinstance(v, float) and k not in self._varying:
                if self._last_floats.setdefault(k, v) != v:
                    self._varying.add(k)
        try:
            signature = _Signature(args, kwargs, like, self._varying)
        except NotCompilable as e:
            self._give_up(str(e))
            return None, ()
        inputs = signature.inputs(args, kwargs)
        graph = self._graphs.get(signature.key)
        if graph is None:
            if len(self._graphs) >= MAX_GRAPHS:
                changing = sorted(signature.constants) or ["(the tensor shapes)"]
                self._give_up(f"more than {MAX_GRAPHS} input signatures; an argument among {changing} changes "
                              "from step to step (pass a changing number as a float)")
                return None, ()
            try:
                graph = self._record(model, guide, args, kwargs, signature, inputs)
            except NotCompilable as e:
                self._give_up(str(e))
                return None, ()
            self._graphs[signature.key] = graph
        return graph, inputs

    def _record(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, signature: _Signature,
                inputs: tuple[torch.Tensor, ...]):
        devices = [signature.like.device] if signature.like.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
            before = _python_state(self.module) if self.foreign else None
            if not self._checked_programs:
                self._check_programs(model, guide, args, kwargs)
                self._checked_programs = True
            step = _Step(self.module, self._fn, model, guide, signature, args)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    graph = torch.jit.trace(step, inputs, check_trace=False)
                except NotCompilable:
                    raise
                except Exception as e:  # tracing failed: the program does something the tracer cannot record
                    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    raise NotCompilable(f"torch.jit.trace failed: {type(e).__name__}: {first}") from e
            foreign = _foreign_tracer_warning(caught)
            if foreign is not None:
                raise NotCompilable(foreign)
            if before is not None:
                changed = _changed_state(before, _python_state(self.module))
                if changed:
                    raise NotCompilable(f"calling the programs changes {changed}, which a recorded graph would "
                                        "freeze (pass such a value as an argument)")
            self._check(graph, model, guide, args, kwargs, signature)
            if self.foreign:  # a value read from Python state that moves between calls shows on a second step
                self._check(graph, model, guide, args, kwargs, signature)
            if signature.float_keys:  # a graph input must move the result as the eager step does
                self._check(graph, model, guide, args, _perturbed(kwargs, signature.float_keys), signature)
        return graph

    def _check_programs(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        """Reparameterized guide, and every trained parameter inside the module."""
        with poutine.block(), torch.no_grad():
            model_trace, guide_trace = trace_programs(model, guide, args, kwargs)
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and not site["is_observed"]:
                if not getattr(site["fn"], "has_rsample", False) or site["infer"].get("enumerate"):
                    raise NotCompilable(f"guide site {site['name']!r} is not reparameterized")
        owned = {id(p) for p in self.module.parameters()}
        for trace in (guide_trace, model_trace):
            for name, leaf in param_leaves(trace).items():
                if id(leaf) not in owned:
                    raise NotCompilable(f"parameter {name!r} is not a parameter of the module")

    def _check(self, graph: Any, model: Callable, guide: Callable, args: tuple, kwargs: dict,
               signature: _Signature) -> None:
        """Compare the graph with the eager computation on the same random numbers."""
        state = torch.get_rng_state()
        cuda = signature.like.device.type == "cuda"
        cuda_state = torch.cuda.get_rng_state(signature.like.device) if cuda else None
        with torch.no_grad():
            compiled = graph(*signature.inputs(args, kwargs))
            torch.set_rng_state(state)
            if cuda:
                torch.cuda.set_rng_state(cuda_state, signature.like.device)
            eager = self._fn(model, guide, *args, **kwargs)
        for name, a, b in zip(("loss", "surrogate"), compiled, eager):
            a, b = float(a), float(b)
            if not (math.isfinite(a) and math.isfinite(b)):
                raise NotCompilable(f"the check step's {name} is not finite ({a} compiled, {b} eager)")
            if abs(a - b) > self.rtol * max(abs(a), abs(b), 1.0):
                raise NotCompilable(
                    f"the recorded graph's {name} {a:.6g} differs from the eager step's {b:.6g} at "
                    f"{ {k: kwargs[k] for k in signature.float_keys} } (a Python number baked into the graph?)"
                )
