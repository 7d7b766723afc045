"""The timing harness the training-step benchmarks share: interleaved repetitions in one process.

Each contender is a function ``run(epochs) -> seconds``.  Its per-step time is
``(run(E) - run(1)) / extra_steps``, so one-off set-up (data checks, tracing)
cancels out; repetitions interleave the contenders, so a burst of machine load
hits all of them; a ratio is the median over repetitions of that repetition's
ratio.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import pyro


def interleaved_ratios(contenders: dict[str, Callable[[int], float]], pairs: dict[str, tuple[str, str]], *,
                       only: str, reps: int, epochs: int, extra_steps: int, title: str) -> dict[str, float]:
    """Time the contenders that the ratios whose name contains ``only`` need; print times and ratios."""
    pairs = {name: pair for name, pair in pairs.items() if only in name}
    needed = {row for pair in pairs.values() for row in pair}
    contenders = {name: f for name, f in contenders.items() if name in needed}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    with pyro.validation_enabled(False):
        for f in contenders.values():  # warm-up
            f(1)
        for _ in range(reps):
            for name, f in contenders.items():
                times[name].append((f(epochs) - f(1)) / extra_steps * 1e3)
    print(f"{title}: per-step time, median of {reps} interleaved repetitions ({extra_steps} steps each)")
    for name, v in times.items():
        print(f"  {name:34s} {statistics.median(v):7.2f} ms  [{min(v):.2f}, {max(v):.2f}]")
    ratios = {name: statistics.median(a / b for a, b in zip(times[top], times[bottom]))
              for name, (top, bottom) in pairs.items()}
    print("ratios, median of per-repetition ratios (target: pyrovae <= 1.15x the hand-written step)")
    for name, r in ratios.items():
        print(f"  {name:52s} {r:5.2f}x")
    return ratios
