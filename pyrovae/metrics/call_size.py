"""How many rows a model call may carry: chosen by the bytes of its activations, not a count.

When a call's temporaries outgrow what the C allocator keeps between calls
(glibc trims the heap's top and unmaps large chunks on free; its thresholds are
at most 32 / 64 MiB on 64-bit), every call gets fresh pages from the kernel,
faulted in and zeroed: with the demo's conv decoder at 4096 rows per call, 95%
of ``log_likelihood``'s CPU time was system time and 64 rows per call ran 1.5x
faster (``benchmarks/likelihood_calls.py``).  The library never sets allocator
state, so it sizes its calls to keep the activations of one call within
:data:`CALL_BYTES` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CALL_BYTES", "activation_bytes", "rows_per_call"]

#: the bytes of activations one call may make (measured: the demo's conv decoder is fastest at
#: 64 rows, about 25 MiB of module outputs; the 784-400-20 MLP loses nothing at ~3,000 rows)
CALL_BYTES = 32 * 2**20


def activation_bytes(module: Any, call: Callable[[], Any], floor: int) -> int:
    """The bytes of every tensor the submodules of ``module`` return during ``call()``, plus
    ``floor`` (a data point's bytes: a likelihood's ``log_prob`` makes tensors of that size outside
    any module, and a pair of plain functions has no module to measure).  ``call`` must process one
    row; hooks are removed afterwards."""
    total = [floor]

    def record(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if torch.is_tensor(tensor):
                total[0] += tensor.numel() * tensor.element_size()

    handles = [m.register_forward_hook(record) for m in module.modules()] if isinstance(module, torch.nn.Module) else []
    try:
        call()
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def rows_per_call(row_bytes: int, most: int) -> int:
    """Rows per call so that one call's activations stay within :data:`CALL_BYTES` (1 to ``most``)."""
    return max(1, min(most, CALL_BYTES // max(1, row_bytes)))
