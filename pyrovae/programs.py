r"""What every consumer of a model/guide pair needs, found once: the pair, its data, its structure.

``fit``, ``log_likelihood``, ``evaluate_elbo``, ``compare_estimators`` and
``amortization_gap`` take the same things (a pyrovae model, any object with
``model``/``guide`` methods, or a ``(model, guide)`` pair of Pyro programs)
and the same data (a tensor ``(N, ...)``, a pyrovae ``DataSet``, a tuple or
dict of tensors called as ``SVI.step`` calls them, or a ``Dataset``).  This
module turns them into a :class:`Programs` and a :class:`Data`, checks the
data once, and reads the program's :class:`Structure` from plain traces on a
few points -- before any particle, loss or gradient runs:

* the **per-point plate**: the plate around the observed sites whose size
  follows the batch (sized by it, or broadcast over it), whatever its name
  (Pyro's ``get_dependent_plate_dims`` and NumPyro's ``RenyiELBO`` find it
  from the program too); ``data_plate=`` names it where several qualify;
* global and local latents, reparameterization, enumerated sites, the
  program's own scales, every parameter (and, by :func:`split_parameters`,
  which program computes with it);
* refusals in one line naming the site: a global latent under an objective
  that weighs points, a plate that subsamples itself, a ``pyro.module`` name
  another instance holds in the param store.

The per-point reduction of a vectorized trace (:class:`PointLayout`) and the
rule for the true model every evaluation scores (:func:`true_model`: every
scale removed) live here too, so objectives and evaluations share them.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

__all__ = [
    "Data",
    "PointLayout",
    "ProgramError",
    "Programs",
    "Structure",
    "accepts",
    "as_data",
    "check_objective",
    "check_positive_int",
    "device_of",
    "find_data_plate",
    "inspect_pair",
    "reads_surrogate_terms",
    "requires_guide_sites",
    "resolve_programs",
    "set_data_plate",
    "split_parameters",
    "structure_of",
    "trace_pair",
    "trace_programs",
    "true_model",
    "unscaled",
    "validate_batch",
    "validate_data",
]


@dataclasses.dataclass
class Programs:
    """A model/guide pair and what ``fit`` knows about it."""

    model: Callable
    guide: Callable
    owner: Any
    takes_kl_weight: bool

    def kwargs(self, kl_weight: float, step: int | None = None) -> dict[str, Any]:
        """Keyword arguments for model and guide; ``step`` given means training."""
        out: dict[str, Any] = {"kl_weight": kl_weight} if self.takes_kl_weight else {}
        hook = getattr(self.owner, "training_kwargs", None)
        if step is not None and callable(hook):
            out.update(hook(step))
        return out

    def auxiliary(self) -> tuple[list[torch.Tensor], Callable | None]:
        params_fn = getattr(self.owner, "auxiliary_parameters", None)
        loss_fn = getattr(self.owner, "auxiliary_loss", None)
        if callable(params_fn) and callable(loss_fn):
            return list(params_fn()), loss_fn
        return [], None


def accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    fn = fn.forward if isinstance(fn, torch.nn.Module) else fn  # a module's __call__ is (*args, **kwargs)
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def resolve_programs(obj: Any) -> Programs:
    """The model/guide pair of a pyrovae model, an object with ``model``/``guide``, or a pair."""
    if callable(getattr(obj, "model", None)) and callable(getattr(obj, "guide", None)):
        model, guide, owner = obj.model, obj.guide, obj
    elif isinstance(obj, (tuple, list)) and len(obj) == 2 and all(callable(f) for f in obj):
        (model, guide), owner = obj, None
    else:
        raise TypeError(
            "Expected a model: a pyrovae model, an object with model() and guide() methods, "
            f"or a (model, guide) pair of functions; got {type(obj).__name__}"
        )
    return Programs(model, guide, owner, accepts(model, "kl_weight") and accepts(guide, "kl_weight"))


def validate_data(programs: Programs, x: Any, name: str) -> Data:
    """:func:`validate_batch` for one tensor (or any data :func:`as_data` takes)."""
    return validate_batch(programs, as_data(x, name), name)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    """Refuse ``value`` unless it is an int (not a bool) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"Expected {name} to be an int >= {minimum}, got {value!r}")


def device_of(owner: Any, x: torch.Tensor) -> torch.device:
    """Where the owner's parameters live (the data's device for a pair of functions)."""
    if isinstance(owner, torch.nn.Module):
        for p in owner.parameters():
            return p.device
    return x.device


# ================================================================== data
@dataclasses.dataclass
class Data:
    """The data of a pair: positional and keyword tensors, all ``(N, ...)``.

    Model and guide are called as ``model(*batch.args, **batch.kwargs)``, as
    :meth:`pyro.infer.SVI.step` calls them with its arguments: ``x`` alone, or
    ``(x, y)``, or ``{"x": x, "y": y}``.
    """

    args: tuple[torch.Tensor, ...]
    kwargs: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return next(iter(self.tensors())).shape[0]

    def tensors(self) -> Iterator[torch.Tensor]:
        yield from self.args
        yield from self.kwargs.values()

    def named(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(label, tensor)`` pairs for messages: ``data`` alone, else ``data[0]``, ``data['y']``."""
        if len(self.args) == 1 and not self.kwargs:
            yield "", self.args[0]
            return
        for i, t in enumerate(self.args):
            yield f"[{i}]", t
        for k, t in self.kwargs.items():
            yield f"[{k!r}]", t

    @property
    def x(self) -> torch.Tensor:
        """The first tensor (what a pyrovae model's ``validate_data`` checks, and whose size is D)."""
        return next(iter(self.tensors()))

    def index(self, idx: Any) -> "Data":
        return Data(tuple(t[idx] for t in self.args), {k: t[idx] for k, t in self.kwargs.items()})

    def to(self, device: torch.device) -> "Data":
        return Data(tuple(t.to(device) for t in self.args), {k: t.to(device) for k, t in self.kwargs.items()})

    def split(self, size: int) -> Iterator["Data"]:
        for start in range(0, len(self), size):
            yield self.index(slice(start, start + size))

    def replace_x(self, x: torch.Tensor) -> "Data":
        """The same data with the first tensor replaced (a data set redrawn each epoch)."""
        if self.args:
            return Data((x, *self.args[1:]), dict(self.kwargs))
        first = next(iter(self.kwargs))
        return Data((), {**self.kwargs, first: x})


def as_data(data: Any, name: str) -> Data:
    """``data`` as :class:`Data`: a tensor ``(N, ...)``, a pyrovae ``DataSet``, a tuple or list
    of tensors, a dict of tensors, or a ``torch.utils.data.Dataset`` of tensors, tuples or dicts."""
    if isinstance(data, Data):
        out = data
    elif isinstance(data, torch.Tensor):
        out = Data((data,), {})
    elif isinstance(getattr(data, "x", None), torch.Tensor):  # a pyrovae DataSet
        out = Data((data.x,), {})
    elif isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        out = Data(tuple(data), {})
    elif isinstance(data, Mapping) and data and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                     for k, t in data.items()):
        out = Data((), dict(data))
    elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        out = _collate(data, name)
    else:
        raise TypeError(
            f"Expected {name} to be a torch.Tensor (N, ...), a pyrovae DataSet, a tuple or dict of tensors "
            f"(N, ...) passed to model and guide as arguments, or a torch.utils.data.Dataset; got {type(data).__name__}"
        )
    sizes = {label: tuple(t.shape) for label, t in out.named()}
    if any(len(s) < 1 for s in sizes.values()) or len({s[0] for s in sizes.values()}) != 1:
        raise ValueError(f"Expected every tensor of {name} to have the same first dimension N (points), got shapes {sizes}")
    if len(out) < 1:
        shapes = sizes[""] if list(sizes) == [""] else sizes
        raise ValueError(f"Expected {name} of shape (N, ...) with N >= 1, got {shapes}")
    return out


def _collate(dataset: Any, name: str) -> Data:
    """A map-style Dataset's items stacked along a new first dimension."""
    n = len(dataset)
    if n < 1:
        raise ValueError(f"Expected {name} to hold at least one item, got an empty {type(dataset).__name__}")
    items = [dataset[i] for i in range(n)]
    first = items[0]
    if isinstance(first, torch.Tensor):
        return Data((torch.stack(items),), {})
    if isinstance(first, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in first):
        return Data(tuple(torch.stack([item[i] for item in items]) for i in range(len(first))), {})
    if isinstance(first, Mapping) and all(isinstance(t, torch.Tensor) for t in first.values()):
        return Data((), {k: torch.stack([item[k] for item in items]) for k in first})
    raise TypeError(
        f"Expected the items of {name} (a {type(dataset).__name__}) to be tensors, tuples or dicts of tensors, "
        f"got {type(first).__name__}"
    )


def validate_batch(programs: Programs, data: Data, name: str) -> Data:
    """Refuse data the pair cannot score, before any work; returns the data in the model's dtype.

    Floating tensors of another dtype than a module's parameters (float64 or
    float16 data for a float32 model) are cast to it, with a warning.  Then a
    pyrovae model's own ``validate_data`` hook checks its one tensor; otherwise
    every tensor must be real or integer (labels), and the floating ones finite.
    """
    data = _in_model_dtype(programs, data, name)
    check = getattr(programs.owner, "validate_data", None)
    if callable(check) and len(data.args) == 1 and not data.kwargs:
        check(data.x, name)
        return data
    for label, t in data.named():
        if t.is_complex():
            raise TypeError(f"Expected {name}{label} to be a real tensor (e.g. torch.float32), got {t.dtype}")
        if not t.is_floating_point():
            if not label:  # a single tensor is the observations: integer data is a mistake, labels come beside x
                raise TypeError(f"Expected {name} to have a floating dtype (e.g. torch.float32), got {t.dtype}")
            continue
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"Expected {name}{label} to be finite, found {int((~torch.isfinite(t)).sum())} NaN/Inf values")
    return data


def _in_model_dtype(programs: Programs, data: Data, name: str) -> Data:
    owner = programs.owner
    dtypes = {p.dtype for p in owner.parameters() if p.is_floating_point()} if isinstance(owner, torch.nn.Module) else set()
    if len(dtypes) != 1:
        return data  # no module, or one of mixed precision: the program's own business
    dtype = dtypes.pop()
    other = [(label, t.dtype) for label, t in data.named() if t.is_floating_point() and t.dtype != dtype]
    if not other:
        return data
    warnings.warn(f"{name}{other[0][0]} is {other[0][1]} and the model's parameters are {dtype}: cast to {dtype}",
                  stacklevel=3)
    cast = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    return Data(tuple(cast(t) for t in data.args), {k: cast(t) for k, t in data.kwargs.items()})


# ============================================================ structure
#: the vectorized particle plate Pyro's ELBOs add (``vectorize_particles=True``)
PYRO_PARTICLES = "num_particles_vectorized"


class ProgramError(ValueError):
    """A program outside what a feature supports; the message names the site."""


@dataclasses.dataclass(frozen=True)
class Structure:
    """What one plain trace of a model/guide pair says about it, found once and used everywhere.

    :ivar data_plate: the per-point plate: it holds observed sites and its size
        follows the batch (sized by it, or broadcast over it).
    :ivar data_dim: its dimension (``None`` for a sequential plate).
    :ivar max_plate_nesting: the deepest vectorized plate of either program.
    :ivar local_latents: the model's latent sites inside the data plate.
    :ivar global_latents: the model's latent sites outside it.
    :ivar observed: the model's observed sites inside the data plate.
    :ivar outside_observed: observed sites outside it (they couple the points).
    :ivar guide_latents: the guide's latent sites, mapped to whether they are reparameterized.
    :ivar enumerated: model latents the guide leaves out and marks for enumeration.
    :ivar user_scales: sites scaled by the program itself (``poutine.scale``), with the scale.
    :ivar params: every parameter the pair touches, ``name -> unconstrained leaf``, guide first.
    :ivar guide_params: the names of the parameters whose site is in the guide's trace.
    :ivar subsample: the program's own ``subsample_size`` of the data plate (``None``: it holds the whole batch).
    :ivar surrogate_terms: sites of either program marked ``infer={"surrogate": True}``: terms of a
        training surrogate, not densities (``DiscreteVAE(kl="discrete")``'s ``"z_kl"``).
    """

    data_plate: str
    data_dim: int | None
    max_plate_nesting: int
    local_latents: tuple[str, ...]
    global_latents: tuple[str, ...]
    observed: tuple[str, ...]
    outside_observed: tuple[str, ...]
    guide_latents: dict[str, bool]
    enumerated: tuple[str, ...]
    user_scales: dict[str, float]
    params: dict[str, torch.Tensor]
    guide_params: tuple[str, ...]
    subsample: int | None = None
    surrogate_terms: tuple[str, ...] = ()

    def require_whole_batch(self, what: str) -> None:
        """Refuse a data plate that subsamples the data itself."""
        if self.subsample is not None:
            raise ProgramError(
                f"{what} gives the program each batch to score whole, but pyro.plate({self.data_plate!r}, ..., "
                f"subsample_size={self.subsample}) subsamples inside the program: remove subsample_size and size "
                f"the plate by the data (x.shape[0]); fit draws minibatches (batch_size=) and scales them by N/B"
            )

    def require_local(self, what: str) -> None:
        """Refuse a program whose points do not factorise (one line, naming the site)."""
        if self.global_latents:
            raise ProgramError(
                f"{what} weights each data point's samples separately, but the model's latent site "
                f"{self.global_latents[0]!r} lies outside the per-point plate {self.data_plate!r} (a global latent); "
                "use objective='elbo', 'meanfield' or 'graph' for global latents"
            )
        outside = [n for n, r in self.guide_latents.items() if n not in self.local_latents and n not in self.global_latents]
        if outside:
            raise ProgramError(f"{what}: the guide's latent site {outside[0]!r} is not a latent site of the model")

    def require_vectorized(self, what: str) -> None:
        if self.data_dim is None:
            raise ProgramError(
                f"{what} needs a vectorized per-point plate, but pyro.plate({self.data_plate!r}) is sequential "
                f"(used as an iterator): use it as a context, `with pyro.plate({self.data_plate!r}, N):`"
            )


def _frames(site: dict) -> dict[str, Any]:
    return {f.name: f for f in site["cond_indep_stack"]}


def _sample_sites(trace: Trace) -> list[dict]:
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def _frame_size(frame: Any, site: dict) -> int | None:
    """The number of points a plate frame holds at ``site`` (a broadcast plate's from the site's shape)."""
    size = frame.size
    if isinstance(size, torch.Tensor):
        size = int(size)
    if size is not None and size >= 0:
        return size
    if frame.dim is None:
        return None
    shape = getattr(site["fn"], "batch_shape", torch.Size())
    return shape[frame.dim] if len(shape) >= -frame.dim else 1


def trace_programs(model: Callable, guide: Callable, args: tuple, kwargs: Mapping[str, Any]) -> tuple[Trace, Trace]:
    """``(model_trace, guide_trace)``: the guide traced, the model replayed against it (as
    :class:`pyro.infer.Importance` and every ELBO do), plates' subsample sites left out."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def trace_pair(programs: Programs, batch: Data, kwargs: Mapping[str, Any]) -> tuple[Trace, Trace]:
    """:func:`trace_programs` of a pair on a batch of data, with keyword arguments."""
    return trace_programs(programs.model, programs.guide, batch.args, {**batch.kwargs, **kwargs})


def find_data_plate(model_trace: Trace, guide_trace: Trace, batch: int, data_plate: str | None = None,
                    *, other: Sequence[tuple[Trace, int]] = ()) -> str:
    """The name of the per-point plate: the plate holding observed sites whose size follows the batch.

    ``other`` are model traces of the same program at other batch sizes: a plate
    that merely happens to have the batch's size in one trace is ruled out by them.
    ``data_plate`` names it explicitly (checked, not trusted).
    """
    observed = [s for s in _sample_sites(model_trace) if s["is_observed"]]
    if not observed:
        raise ProgramError("The model has no observed site (pyro.sample(..., obs=...)): there is no data to fit")

    def tracking(trace: Trace, size: int) -> dict[str, set]:
        out: dict[str, set] = {}
        for site in (s for s in _sample_sites(trace) if s["is_observed"]):
            for name, frame in _frames(site).items():
                if name == PYRO_PARTICLES:
                    continue
                out.setdefault(name, set()).add(_frame_size(frame, site) == size or frame.full_size == size)
        return {name: ok for name, ok in out.items()}

    found = tracking(model_trace, batch)
    candidates = [name for name, ok in found.items() if ok == {True}]
    for trace, size in other:
        again = tracking(trace, size)
        candidates = [name for name in candidates if again.get(name) == {True}]
    if data_plate is not None:
        if not isinstance(data_plate, str):
            raise ValueError(f"Expected data_plate to be a plate's name (str), got {data_plate!r}")
        if data_plate not in found:
            raise ProgramError(
                f"data_plate={data_plate!r}: no observed site of the model is inside a plate of that name "
                f"(plates holding observations: {sorted(found) or 'none'})"
            )
        if data_plate not in candidates:
            raise ProgramError(
                f"data_plate={data_plate!r} does not follow the batch: size it by the data "
                f"(pyro.plate({data_plate!r}, x.shape[0])) or leave its size out (broadcast)"
            )
        return data_plate
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        site = observed[0]["name"]
        raise ProgramError(
            f"No per-point plate found: no pyro.plate around the observed site {site!r} has the batch's size "
            f"({batch} points in this trace); put the per-point sites in `pyro.plate(name, x.shape[0])` "
            "(or `pyro.plate(name)`, broadcast), or pass data_plate=NAME"
        )
    raise ProgramError(
        f"Several plates follow the batch ({', '.join(map(repr, candidates))}): pass data_plate=NAME "
        "to say which one holds one data point per element"
    )


def structure_of(model_trace: Trace, guide_trace: Trace, data_plate: str) -> Structure:
    """Sort a pair's sites and parameters by the per-point plate ``data_plate``."""
    nesting, dims, subsample = 0, set(), None
    local, global_, observed, outside = [], [], [], []
    guide_latents: dict[str, bool] = {}
    scales: dict[str, float] = {}
    for program, trace in (("guide", guide_trace), ("model", model_trace)):
        for site in _sample_sites(trace):
            frames = _frames(site)
            nesting = max([nesting] + [-f.dim for n, f in frames.items() if f.dim is not None and n != PYRO_PARTICLES])
            inside = data_plate in frames
            scale = site["scale"]
            if inside and frames[data_plate].full_size not in (None, frames[data_plate].size):
                subsample = frames[data_plate].size  # the plate scales by full_size / size itself
                scale = scale * subsample / frames[data_plate].full_size
            if not isinstance(scale, torch.Tensor) or scale.numel() == 1:
                if float(scale) != 1.0:
                    scales[f"{program}:{site['name']}"] = float(scale)
            if inside:
                dims.add(frames[data_plate].dim)
            if program == "guide":
                if not site["is_observed"]:
                    guide_latents[site["name"]] = bool(getattr(site["fn"], "has_rsample", False))
                continue
            if site["is_observed"]:
                (observed if inside else outside).append(site["name"])
            elif site["name"] in guide_trace.nodes or not site["infer"].get("enumerate"):
                (local if inside else global_).append(site["name"])
    surrogate = tuple(dict.fromkeys(
        s["name"] for t in (guide_trace, model_trace) for s in _sample_sites(t) if s["infer"].get("surrogate")
    ))
    enumerated = tuple(
        s["name"] for s in _sample_sites(model_trace)
        if not s["is_observed"] and s["name"] not in guide_trace.nodes and s["infer"].get("enumerate")
    )
    if len(dims) > 1:
        raise ProgramError(f"pyro.plate({data_plate!r}) sits at different dimensions in different sites: {sorted(dims, key=str)}")
    params: dict[str, torch.Tensor] = {}
    guide_params = []
    for program, trace in (("guide", guide_trace), ("model", model_trace)):
        for name, site in trace.nodes.items():
            if site["type"] != "param":
                continue
            _check_not_shadowed(site)
            if name not in params:
                value = site["value"]
                params[name] = value.unconstrained() if hasattr(value, "unconstrained") else value
            if program == "guide":
                guide_params.append(name)
    return Structure(
        data_plate=data_plate,
        data_dim=dims.pop() if dims else None,
        max_plate_nesting=nesting,
        local_latents=tuple(local),
        global_latents=tuple(global_),
        observed=tuple(observed),
        outside_observed=tuple(outside),
        guide_latents=guide_latents,
        enumerated=enumerated,
        user_scales=scales,
        params=params,
        guide_params=tuple(dict.fromkeys(guide_params)),
        subsample=subsample,
        surrogate_terms=surrogate,
    )


def _check_not_shadowed(site: dict) -> None:
    """Refuse a ``pyro.module`` parameter whose param-store tensor is not the module's own.

    ``pyro.module(name, net)`` looks each parameter up by name; when another
    instance registered the same names first, the store hands back *that*
    instance's tensors, while ``net`` computes with its own: an optimizer over
    the store's tensors would train nothing, silently.
    """
    args = site.get("args") or ()
    init = args[1] if len(args) > 1 else None
    if not isinstance(init, torch.nn.Parameter):
        return
    value = site["value"]
    leaf = value.unconstrained() if hasattr(value, "unconstrained") else value
    if leaf is not init:
        raise ProgramError(
            f"Parameter {site['name']!r} in Pyro's param store is another module's tensor, not the one this "
            "module computes with (a second instance registered the same pyro.module name): it would train "
            "nothing. Call pyro.clear_param_store() before building a new instance, or give each instance "
            "its own pyro.module name"
        )


def inspect_pair(programs: Programs, data: Data, kwargs: Mapping[str, Any], *, data_plate: str | None = None,
                 what: str = "pyrovae", sizes: Sequence[int] = (3, 2)) -> Structure:
    """The :class:`Structure` of a pair, from plain traces on the first few points of ``data``.

    Two batch sizes (by default) tell a plate sized by the batch from one that
    happens to have the same size.  Nothing here runs particles or a loss, so a
    program outside what a feature supports is refused before any work.  ``what``
    (the feature asking) is named in refusals.  A data plate that subsamples
    inside the program is refused: every feature hands the program the batch
    it is to score.
    """
    n = len(data)
    sizes = sorted({min(n, s) for s in sizes}, reverse=True)
    try:
        traces = [(b, *trace_pair(programs, data.index(slice(0, b)), kwargs)) for b in sizes]
    except TypeError as error:
        if "argument" not in str(error):
            raise
        given = ", ".join(f"data{label}" for label, _ in data.named())
        raise TypeError(
            f"{what} calls model and guide as SVI.step does, with the data's {len(data.args)} positional "
            f"tensor(s) and {len(data.kwargs)} keyword tensor(s) ({given}), but they do not take them: {error}"
        ) from error
    except Exception as error:
        # A program that runs only on the batch it was built for (per-point parameters), or that
        # subsamples the data itself (pyro.plate(name, N, subsample_size=B) indexing x): one whole trace
        try:
            model_trace, guide_trace = trace_pair(programs, data, kwargs)
        except Exception:
            raise error from None
        structure = structure_of(model_trace, guide_trace, find_data_plate(model_trace, guide_trace, n, data_plate))
        structure.require_whole_batch(what)
        return structure
    b, model_trace, guide_trace = traces[0]
    name = find_data_plate(model_trace, guide_trace, b, data_plate, other=[(t[1], t[0]) for t in traces[1:]])
    structure = structure_of(model_trace, guide_trace, name)
    structure.require_whole_batch(what)
    return structure


# ============================================================ parameters
def split_parameters(model_trace: Trace, guide_trace: Trace) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Encoder and decoder parameters of a pair: the parameters each program computes with.

    Where ``pyro.param``/``pyro.module`` was called says where a parameter was
    registered, not which program reads it: Pyro's semi-supervised (M2) example
    registers its whole module, encoders included, in the model.  So the split
    follows autograd.  The candidates are the unconstrained leaves of every
    param site of either trace; the *encoder* is those the guide's computation
    depends on (its sample sites' log-densities and sampled values); the
    *decoder* is the other candidates the model's computation depends on (every
    site's log-density and value).  A parameter neither program reads is in
    neither.  Only the dependence counts, not the value of a gradient: a
    parameter behind a dead ReLU is still read.

    Both traces must be recorded with gradients on (not under ``torch.no_grad``),
    the model's replayed against the guide's, as
    ``poutine.trace(poutine.replay(model, trace=guide_trace))`` records it.

    :param model_trace: the model's trace, replayed against ``guide_trace``.
    :param guide_trace: the guide's trace.
    :returns: ``(encoder, decoder)``, each ``{name: unconstrained leaf}``, in
        the order the sites appear, guide first.

    Example::

        model_trace, guide_trace = trace_programs(model, guide, (x,), {})
        encoder, decoder = split_parameters(model_trace, guide_trace)
    """
    candidates: dict[str, torch.Tensor] = {}
    for trace in (guide_trace, model_trace):
        for name, site in trace.nodes.items():
            if site["type"] == "param" and name not in candidates:
                value = site["value"]
                leaf = value.unconstrained() if hasattr(value, "unconstrained") else value
                if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
                    candidates[name] = leaf

    def read_by(trace: Trace) -> dict[str, torch.Tensor]:
        outputs = []
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            outputs += [t.sum() for t in (log_prob, site["value"]) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not outputs or not candidates:
            return {}
        # the guide's graph is part of the model's (replayed values): keep it for the second call
        grads = torch.autograd.grad(outputs, list(candidates.values()), allow_unused=True, retain_graph=True)
        return {name: leaf for (name, leaf), g in zip(candidates.items(), grads) if g is not None}

    encoder = read_by(guide_trace)
    decoder = {name: leaf for name, leaf in read_by(model_trace).items() if name not in encoder}
    return encoder, decoder


# ============================================================ objectives
def analytic_kl(elbo: Any) -> bool:
    """Whether ``elbo`` takes each latent site's KL in closed form given the other sites' draws (its
    ``analytic_kl`` flag, else true of Pyro's ``TraceMeanField_ELBO``): unbiased only when every guide
    site is independent of the other latents given the data (a mean-field guide)."""
    return bool(getattr(elbo, "analytic_kl", isinstance(elbo, TraceMeanField_ELBO)))


def requires_guide_sites(elbo: Any) -> bool:
    """Whether ``elbo`` needs a guide site for every model latent: its ``requires_guide_sites`` flag, else
    true of Pyro's ``TraceGraph_ELBO`` and ``TraceMeanField_ELBO`` (they look each model latent up in the
    guide's trace, so a site the model enumerates and the guide leaves out breaks them)."""
    return bool(getattr(elbo, "requires_guide_sites", isinstance(elbo, (TraceGraph_ELBO, TraceMeanField_ELBO))))


def reads_surrogate_terms(elbo: Any) -> bool:
    """Whether ``elbo`` adds a surrogate term (``infer={"surrogate": True}``) to the loss as written:
    true of ``Trace_ELBO`` and ``TraceMeanField_ELBO`` exactly; any other objective would read it as
    part of log p or log q (an importance weight, a per-dimension KL)."""
    return type(elbo) in (Trace_ELBO, TraceMeanField_ELBO)


def check_objective(elbo: Any, structure: Structure, what: str) -> None:
    """Refuse, in one line naming the site, a program the objective cannot estimate (before any particle runs).

    A site marked ``infer={"surrogate": True}`` is a term of a training surrogate, not a density:
    an objective that would not add it as written (:func:`reads_surrogate_terms`) refuses the program.
    """
    if structure.surrogate_terms and not reads_surrogate_terms(elbo):
        raise ProgramError(
            f"{what} would read site {structure.surrogate_terms[0]!r} as a density, but it is a surrogate term "
            "(infer={'surrogate': True}, e.g. DiscreteVAE(kl='discrete')'s KL); use objective='elbo' or "
            "'meanfield', which add it to the loss as written"
        )
    if structure.enumerated and requires_guide_sites(elbo):
        raise ProgramError(
            f"{what} needs a guide site for every latent site of the model, but the model's site "
            f"{structure.enumerated[0]!r} is marked for enumeration and the guide leaves it out; use "
            "objective='enum' (TraceEnum_ELBO sums it out exactly)"
        )
    if getattr(elbo, "requires_local_latents", False):
        structure.require_local(what)
        structure.require_vectorized(what)
    if getattr(elbo, "requires_reparameterized", False):
        for name, reparameterized in structure.guide_latents.items():
            if not reparameterized:
                raise ProgramError(
                    f"{what} needs every latent site of the guide to be reparameterized, but site {name!r} is not; "
                    "use objective='elbo', 'graph', 'iwae' or 'rws' for non-reparameterized latents"
                )


def set_data_plate(elbo: Any, structure: Structure) -> None:
    """Tell an objective that weighs points (and any it wraps) which plate holds them."""
    while elbo is not None:
        if hasattr(elbo, "data_plate"):
            elbo.data_plate = structure.data_plate
        elbo = getattr(elbo, "objective", None)


# ========================================================== the true model
class _Unscaled(Messenger):
    """Every site at scale 1: the program as a probability model, without training devices."""

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample":
            msg["scale"] = 1.0


def unscaled(fn: Callable) -> Callable:
    """``fn`` with every ``poutine.scale`` (the user's, a β, a plate's N/B) removed; masks stay."""
    return _Unscaled()(fn)


#: the scaled sites already warned about, per program (weakly: a new program of the same id warns again)
_warned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def true_model(programs: Programs, structure: Structure, what: str) -> Programs:
    """The pair every evaluation scores: scales removed (one rule for ``log_likelihood``,
    ``evaluate_elbo`` and the history's ``valid_elbo``), with a warning once per program
    when the program scaled its own sites.  A surrogate term (``infer={"surrogate": True}``) is refused:
    it is no part of a probability model."""
    if structure.surrogate_terms:
        raise ProgramError(
            f"{what} scores a probability model, but site {structure.surrogate_terms[0]!r} is a surrogate term of "
            "a training objective (infer={'surrogate': True}); evaluate without the training keywords that add it "
            "(DiscreteVAE: without temperature)"
        )
    if structure.user_scales:
        model = programs.model
        owner = getattr(model, "__self__", None) or getattr(model, "__func__", model)  # a bound method is new each time
        sites = tuple(sorted(structure.user_scales))
        try:
            seen = _warned.setdefault(owner, set())
        except TypeError:  # not weakly referable: warn every time rather than never
            seen = set()
        if sites not in seen:
            seen.add(sites)
            warnings.warn(
                f"{what} scores the true model: the program's own scales on {structure.user_scales} are dropped "
                "(every site counts once; a scale is a training device)",
                stacklevel=4,
            )
    return dataclasses.replace(programs, model=unscaled(programs.model), guide=unscaled(programs.guide))


# ============================================================== per point
@dataclasses.dataclass
class PointLayout:
    """Where the particle and data dimensions of a vectorized trace's sites sit.

    Every site's log-prob, left-padded to ``ndim`` dimensions, has particles at
    ``particle_dim`` (if any) and points at ``data_dim``; :meth:`per_point`
    sums everything else (inner plates, and for a site outside the data plate
    nothing is per point: refused by :meth:`Structure.require_local`).
    """

    particle_dim: int | None
    data_dim: int
    num_particles: int
    batch: int
    ndim: int
    like: torch.Tensor

    @classmethod
    def of(cls, model_trace: Trace, guide_trace: Trace, data_plate: str, particle_plate: str | None) -> "PointLayout":
        particle_dim = data_dim = None
        num_particles, batch, ndim = 1, 1, 0
        like = torch.zeros(())
        for trace in (model_trace, guide_trace):
            for site in _sample_sites(trace):
                frames = _frames(site)
                ndim = max([ndim, *(-f.dim for f in frames.values() if f.dim is not None)])
                lp = site.get("log_prob")
                if isinstance(lp, torch.Tensor) and lp.is_floating_point():
                    like = lp
                if particle_plate in frames:
                    particle_dim, num_particles = frames[particle_plate].dim, frames[particle_plate].size
                frame = frames.get(data_plate)
                if frame is None:
                    raise ProgramError(
                        f"The site {site['name']!r} lies outside the per-point plate {data_plate!r}: "
                        "its term belongs to no single data point"
                    )
                if frame.dim is None:
                    raise ProgramError(
                        f"Site {site['name']!r} is in a sequential pyro.plate({data_plate!r}); per-point weights "
                        f"need it vectorized: `with pyro.plate({data_plate!r}, x.shape[0]):`"
                    )
                data_dim = frame.dim
                size = frame.size
                if isinstance(size, int) and size < 0:  # a broadcast plate: the size is in the shapes
                    shape = site["fn"].batch_shape
                    batch = max(batch, shape[data_dim] if len(shape) >= -data_dim else 1)
                else:  # a tensor while Compiled records a step: no Python comparison on it
                    batch = size
        if data_dim is None:
            raise ProgramError(f"No sample site is inside the per-point plate {data_plate!r}")
        return cls(particle_dim, data_dim, num_particles, batch, ndim, like)

    def zeros(self) -> torch.Tensor:
        return self.like.new_zeros((self.num_particles, self.batch))

    def per_point(self, tensor: Any) -> torch.Tensor:
        """Sum a site's batch-shaped term over every dimension but particles and points: ``(K, B)``."""
        if not isinstance(tensor, torch.Tensor):
            return self.zeros() + tensor
        if tensor.dim() == 0:  # a scalar term inside the plate stands for every element
            return tensor.expand(self.num_particles, self.batch)
        if tensor.dim() > self.ndim:
            raise ProgramError(
                f"A site's log-prob has shape {tuple(tensor.shape)}, more dimensions than its plates ({self.ndim}); "
                "declare the extra dimensions as an event with .to_event()"
            )
        t = tensor.reshape((1,) * (self.ndim - tensor.dim()) + tuple(tensor.shape))
        keep = {d % t.dim() for d in (self.particle_dim, self.data_dim) if d is not None}
        other = [d for d in range(t.dim()) if d not in keep]
        if other:
            t = t.sum(other, keepdim=True)
        k = t.shape[self.particle_dim] if self.particle_dim is not None else 1
        b = t.shape[self.data_dim]
        return t.reshape(k, b).expand(self.num_particles, self.batch)

    def log_density(self, trace: Trace, *, scaled: bool) -> torch.Tensor:
        """Per-point :math:`\\sum_{\\text{sites}} \\log p`, ``(K, B)``: the sites' computed ``log_prob``
        (scale and mask applied) if ``scaled``, else each site's density with its mask only."""
        total = self.zeros()
        for site in _sample_sites(trace):
            if scaled:
                term = site["log_prob"]
            else:
                lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
                term = scale_and_mask(lp, 1.0, site["mask"])
            total = total + self.per_point(term)
        return total
