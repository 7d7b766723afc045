"""What every loader returns: tensors plus the metadata a model needs."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["DataSet", "DynamicallyBinarized", "SUPPORTS", "data_dir", "split_indices"]

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

    def epoch_view(self, epoch: int) -> torch.Tensor:
        """The data to train on in epoch ``epoch`` (counted from 0): ``x`` itself here.

        A trainer that calls this at the start of every epoch supports data sets
        that change between epochs, such as :class:`DynamicallyBinarized`.
        """
        return self.x


@dataclasses.dataclass
class DynamicallyBinarized(DataSet):
    r"""Binary images redrawn every epoch: :math:`x_{ij} \sim \mathrm{Bernoulli}(p_{ij})`.

    Dynamic binarization treats grey levels ``probs`` in [0, 1] as pixel
    probabilities and draws fresh binary data at every epoch [1], which
    regularises a Bernoulli VAE compared with one fixed draw.  The draws are
    deterministic: epoch ``e`` always gives the same images for a given ``seed``,
    so a resumed run sees the data an uninterrupted run would.  ``x`` holds the
    draw of epoch 0.

    Build it with :meth:`from_probs`.

    :ivar probs: float32 grey levels in [0, 1], the same shape as ``x``.
    :ivar seed: seeds every epoch's draw.

    [1] R. Salakhutdinov and I. Murray, On the quantitative analysis of deep
    belief networks, ICML 2008.
    """

    probs: torch.Tensor | None = None
    seed: int = 0

    @classmethod
    def from_probs(
        cls, probs: torch.Tensor, *, seed: int, name: str, split: str, **fields: Any
    ) -> DynamicallyBinarized:
        """The data set whose epoch-``e`` data are Bernoulli(``probs``) draws."""
        if probs.numel() and not bool(((probs >= 0) & (probs <= 1)).all()):
            raise ValueError("Expected probs in [0, 1] for dynamic binarization")
        out = cls(x=probs, support="binary", name=name, split=split, probs=probs, seed=seed, **fields)
        out.x = out.epoch_view(0)
        return out

    def epoch_view(self, epoch: int) -> torch.Tensor:
        """A fresh binary draw for epoch ``epoch``, the same every time it is asked for."""
        if self.probs is None:
            return self.x
        # hash (seed, epoch) so the stream shares nothing with torch.manual_seed(seed) draws
        key = hashlib.sha256(f"pyrovae.dynamic_binarization:{self.seed}:{epoch}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
        return (torch.rand(self.probs.shape, generator=g) < self.probs).to(self.probs.dtype)


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
