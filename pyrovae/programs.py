"""What every consumer of a model/guide pair needs: the pair itself, and checks of its data.

``fit``, ``log_likelihood`` and ``compare_estimators`` take the same things (a
pyrovae model, any object with ``model``/``guide`` methods, or a ``(model,
guide)`` pair) and the same data (a tensor ``(N, ...)`` or a pyrovae
``DataSet``); this module turns them into a :class:`Programs` and checks the
data once, with the same messages everywhere.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Programs", "resolve_programs", "accepts", "as_tensor", "validate_data", "check_positive_int", "device_of"]


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


def as_tensor(data: Any, name: str) -> torch.Tensor:
    """The tensor of ``data`` (a tensor, or a ``DataSet``'s ``.x``); ``name`` is the argument named in errors."""
    x = getattr(data, "x", data)  # a pyrovae DataSet or a tensor
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected {name} to be a torch.Tensor (N, ...) or a pyrovae DataSet, got {type(data).__name__}")
    return x


def validate_data(programs: Programs, x: torch.Tensor, name: str) -> None:
    """Refuse data the pair cannot score: by the owner's ``validate_data`` hook, else shape, dtype and finiteness."""
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"Expected {name} of shape (N, ...) with N >= 1, got {tuple(x.shape)}")
    check = getattr(programs.owner, "validate_data", None)
    if callable(check):
        check(x, name)
        return
    if not x.is_floating_point():
        raise TypeError(f"Expected {name} to have a floating dtype (e.g. torch.float32), got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"Expected {name} to be finite, found {int((~torch.isfinite(x)).sum())} NaN/Inf values")


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
