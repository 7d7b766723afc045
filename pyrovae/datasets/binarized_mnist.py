"""Statically binarized MNIST (Larochelle and Murray 2011): one fixed Bernoulli draw of MNIST.

The standard benchmark for likelihoods of binary-image models: 50,000 training,
10,000 validation and 10,000 test images, each pixel drawn once from
Bernoulli(grey level) and stored as ``binarized_mnist_{train,valid,test}.amat``,
rows of 784 space-separated 0/1 values in row-major 28 x 28 order.  The split
follows MNIST's: train and valid come from MNIST's training set, test from its
test set.  Report test numbers only for a model chosen on ``valid``.

Files are read from ``<data dir>/binarized_mnist/``.  With ``verify=True`` (the
default) each file must have its published row count and sha256; the structure
(784 columns, values 0 or 1) is always checked, and any problem raises
:class:`ValueError` with the line it was found on.

[1] H. Larochelle and I. Murray, The neural autoregressive distribution
estimator, AISTATS 2011.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from pyrovae.datasets.base import DataSet, data_dir
from pyrovae.datasets.files import corrupt_file, download_file, missing_file, verify_digest

__all__ = ["load", "read_amat"]

URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
SPLITS = {"train": 50_000, "valid": 10_000, "test": 10_000}
SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
NUM_COLUMNS = 784


def read_amat(path: Path, num_columns: int = NUM_COLUMNS) -> np.ndarray:
    """Parse a 0/1 ``.amat`` file into uint8 ``(rows, num_columns)``.

    Blank lines are skipped; any other line must hold exactly ``num_columns``
    values, each ``0`` or ``1``, else :class:`ValueError` names the line.
    """
    path = Path(path)
    data = path.read_bytes()
    fast = _read_canonical(data, num_columns)
    if fast is not None:
        return fast
    rows = []
    for number, line in enumerate(data.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != num_columns:
            raise corrupt_file(path, f"line {number} has {len(tokens)} values, expected {num_columns}")
        joined = b"".join(tokens)
        row = np.frombuffer(joined, dtype=np.uint8)
        if len(joined) != num_columns or not bool(((row == 48) | (row == 49)).all()):
            bad = next(t for t in tokens if t not in (b"0", b"1"))
            raise corrupt_file(path, f"line {number} holds {bad.decode(errors='replace')!r}, expected only 0 and 1")
        rows.append(row - 48)
    if not rows:
        raise corrupt_file(path, "it holds no rows")
    return np.stack(rows)


def _read_canonical(data: bytes, num_columns: int) -> np.ndarray | None:
    """The common layout (``"d d ... d\\n"`` on every line) parsed in one vectorised pass, else None."""
    width = 2 * num_columns
    if not data or len(data) % width:
        return None
    lines = np.frombuffer(data, dtype=np.uint8).reshape(-1, width)
    digits, gaps = lines[:, 0::2], lines[:, 1::2]
    if not ((gaps[:, :-1] == 32).all() and (gaps[:, -1] == 10).all()):
        return None
    if not ((digits == 48) | (digits == 49)).all():
        return None
    return digits - 48


@functools.lru_cache(maxsize=3)
def _load_file(path: str, mtime_ns: int, size: int, split: str, verify: bool) -> np.ndarray:
    values = read_amat(Path(path))
    if verify:
        if values.shape[0] != SPLITS[split]:
            raise corrupt_file(Path(path), f"it has {values.shape[0]:,} rows, expected {SPLITS[split]:,}")
        verify_digest(Path(path), SHA256[split], "sha256")
    return values


def load(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    verify: bool = True,
) -> DataSet:
    """Larochelle's binarized MNIST as float32 ``(N, 1, 28, 28)`` images with values 0/1.

    :param split: ``"train"`` (50,000), ``"valid"`` (10,000) or ``"test"`` (10,000).
    :param root: the data directory (default ``$PYROVAE_DATA_DIR`` or ``~/.cache/pyrovae``);
        files are read from its ``binarized_mnist/`` folder.
    :param download: fetch the file from the University of Toronto if it is missing (sha256-checked).
    :param verify: check the row count and sha256 against the published files (turn
        off only for files of your own in the same format; structure is always checked).
    """
    if split not in SPLITS:
        raise ValueError(f"Expected split in {sorted(SPLITS)}, got {split!r}")
    path = data_dir(root) / "binarized_mnist" / f"binarized_mnist_{split}.amat"
    url = URL.format(split=split)
    if not path.is_file():
        if not download:
            raise missing_file(path, f"pass download=True, or copy it there from {url}")
        download_file(url, path, SHA256[split], "sha256")
    stat = path.stat()
    values = _load_file(str(path), stat.st_mtime_ns, stat.st_size, split, verify)
    x = torch.from_numpy(values.astype(np.float32)).reshape(-1, 1, 28, 28)
    return DataSet(x=x, support="binary", name="binarized_mnist", split=split, info={"source": str(path)})
