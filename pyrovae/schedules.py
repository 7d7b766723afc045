"""Annealed scalars (KL weights, capacities) as functions of the training step.

A schedule is a small frozen dataclass: calling it with a step returns a
float, ``to_dict()`` gives a JSON- and checkpoint-safe description, and
:func:`make_schedule` rebuilds it.  Because a schedule is a pure function of
the step, resuming a run needs only the step counter.

* :class:`Constant` -- ``value`` at every step.
* :class:`Linear` -- linear warm-up from ``start`` to ``end`` over ``num_steps``
  then constant (Bowman et al. 2016, arXiv:1511.06349).
* :class:`Cyclical` -- ``num_cycles`` repeated linear ramps, each rising over
  the first ``ratio`` of its cycle and then held (Fu et al. 2019,
  arXiv:1903.10145).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = ["Schedule", "Constant", "Linear", "Cyclical", "SCHEDULES", "make_schedule"]


def _check_nonneg(name: str, value: float) -> None:
    # a weight of inf or nan trains to NaN at the first step: refused here, where it is named
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Expected {name} to be a number >= 0, got {value!r}")  # noqa: TRY004 (as for a bad number)
    if not math.isfinite(value):
        raise ValueError(f"Expected {name} >= 0 and finite, got {value!r}")
    if value < 0:
        raise ValueError(f"Expected {name} >= 0, got {value!r}")


def _check_steps(name: str, value: int) -> None:
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"Expected {name} to be an int >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base class of step-indexed scalars."""

    name: ClassVar[str] = ""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class Constant(Schedule):
    value: float = 1.0
    name: ClassVar[str] = "constant"

    def __post_init__(self) -> None:
        _check_nonneg("value", self.value)

    def __call__(self, step: int) -> float:
        return float(self.value)


@dataclasses.dataclass(frozen=True)
class Linear(Schedule):
    start: float = 0.0
    end: float = 1.0
    num_steps: int = 1000
    name: ClassVar[str] = "linear"

    def __post_init__(self) -> None:
        _check_nonneg("start", self.start)
        _check_nonneg("end", self.end)
        _check_steps("num_steps", self.num_steps)

    def __call__(self, step: int) -> float:
        t = min(max(step, 0) / self.num_steps, 1.0)
        return float(self.start + t * (self.end - self.start))


@dataclasses.dataclass(frozen=True)
class Cyclical(Schedule):
    start: float = 0.0
    end: float = 1.0
    num_steps: int = 10000
    num_cycles: int = 4
    ratio: float = 0.5
    name: ClassVar[str] = "cyclical"

    def __post_init__(self) -> None:
        _check_nonneg("start", self.start)
        _check_nonneg("end", self.end)
        _check_steps("num_steps", self.num_steps)
        _check_steps("num_cycles", self.num_cycles)
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, numbers.Real) or not 0 < self.ratio <= 1:
            raise ValueError(f"Expected 0 < ratio <= 1, got {self.ratio!r}")

    def __call__(self, step: int) -> float:
        period = self.num_steps / self.num_cycles
        phase = (max(step, 0) % period) / period
        t = min(phase / self.ratio, 1.0)
        return float(self.start + t * (self.end - self.start))


SCHEDULES: dict[str, type[Schedule]] = {cls.name: cls for cls in (Constant, Linear, Cyclical)}


def make_schedule(spec: float | Schedule | Mapping[str, Any], *, name: str = "kl_weight") -> Schedule:
    """A schedule from a number (constant), a schedule, or a ``to_dict()`` mapping.

    :param spec: what to build.
    :param name: what the schedule sets, named by the error for a bad number (``inf``, ``-1``).
    """
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, numbers.Real) and not isinstance(spec, bool):
        _check_nonneg(name, spec)
        return Constant(float(spec))
    if isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("name", None)
        if name not in SCHEDULES:
            raise ValueError(f"Expected schedule name in {sorted(SCHEDULES)}, got {name!r}")
        return SCHEDULES[name](**options)
    raise TypeError(f"Expected a number, a Schedule or a mapping with a 'name', got {type(spec).__name__}")
