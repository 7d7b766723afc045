"""What every loader returns: tensors plus the metadata a model needs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["DataSet", "SUPPORTS", "data_dir", "split_indices"]

#: the value sets a data set may declare, matching :attr:`pyrovae.likelihoods.Likelihood.support`
SUPPORTS = ("binary", "unit_interval", "real")


@dataclasses.dataclass
class DataSet:
    """A split of a data set held in memory.

    :ivar x: float32 tensor ``(N, C, H, W)`` or ``(N, D)``.
    :ivar support: ``"binary"`` (values in {0, 1}), ``"unit_interval"`` ([0, 1]) or ``"real"``.
    :ivar name: the key in :data:`pyrovae.datasets.DATASETS`.
    :ivar split: ``"train"``, ``"valid"`` or ``"test"``.
    :ivar labels: integer class labels ``(N,)`` where the data set has them.
    :ivar info: anything else worth knowing (sources, generating parameters).
    """

    x: torch.Tensor
    support: str
    name: str
    split: str
    labels: torch.Tensor | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.support not in SUPPORTS:
            raise ValueError(f"Expected support in {SUPPORTS}, got {self.support!r}")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one data point."""
        return tuple(self.x.shape[1:])

    @property
    def likelihood(self) -> str:
        """The natural observation family for this support."""
        return {"binary": "bernoulli", "unit_interval": "continuous_bernoulli", "real": "gaussian"}[self.support]


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """The data directory: ``root``, else ``$PYROVAE_DATA_DIR``, else ``~/.cache/pyrovae``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("PYROVAE_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyrovae"


def split_indices(n: int, sizes: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    """Disjoint random index sets of the given sizes, fixed by ``seed``."""
    if sum(sizes.values()) > n:
        raise ValueError(f"Split sizes {sizes} exceed the {n} points available")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = perm[start : start + size]
        start += size
    return out
