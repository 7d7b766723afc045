"""Data sets by name: one loader per file, one line in :data:`DATASETS`.

``load(name, split="train", **options)`` returns a :class:`DataSet`: a float32
tensor ``(N, C, H, W)`` or ``(N, D)`` with its support (``binary``,
``unit_interval`` or ``real``), labels where they exist, and metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyrovae.datasets import digits, synthetic
from pyrovae.datasets.base import DataSet, data_dir

__all__ = ["DATASETS", "DataSet", "data_dir", "load"]

#: name -> loader(split, **options) -> DataSet
DATASETS: dict[str, Callable[..., DataSet]] = {
    "digits": digits.load,
    "synthetic": synthetic.load,
}


def load(name: str, split: str = "train", **options: Any) -> DataSet:
    """Load split ``split`` of the data set registered as ``name``."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"Expected dataset in {sorted(DATASETS)}, got {name!r}") from None
    return loader(split, **options)
