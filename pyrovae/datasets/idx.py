"""IDX files (LeCun's MNIST format) and the loader shared by MNIST and Fashion-MNIST.

Files live in torchvision's layout, ``<data dir>/<Folder>/raw/<name>[.gz]``, so a
folder that ``torchvision.datasets.MNIST(root)`` reads is one that these loaders
read, and ``download=True`` fetches through torchvision.  A ``.gz`` file is
preferred when both are there because its published md5 (the sums in
torchvision's table) can be checked; an uncompressed file is checked for structure and counts only.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from pyrovae.datasets.base import DataSet, DynamicallyBinarized, data_dir
from pyrovae.datasets.files import corrupt_file, file_digest, missing_file

__all__ = ["load_idx_images", "read_idx"]

#: IDX type byte -> numpy dtype (big-endian, as the format stores it)
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: file stems for each source split
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: images in the official training and test files
COUNTS = {"train": 60_000, "test": 10_000}
#: the views a caller may ask for with ``binarize``
VIEWS = (None, "dynamic")


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip-compressed if its name ends in ``.gz``), strictly.

    Raises :class:`ValueError` naming ``path`` for a damaged gzip stream, a bad
    magic number, or a length that disagrees with the header.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise corrupt_file(path, f"the gzip stream is damaged ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise corrupt_file(path, f"it does not start with an IDX magic number (got {data[:4].hex() or 'nothing'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise corrupt_file(path, f"its header promises {ndim} dimensions but the file ends after {len(data)} bytes")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise corrupt_file(path, f"its header promises shape {shape} ({expected} bytes) but it holds {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


@functools.lru_cache(maxsize=4)
def _read_checked(path: str, mtime_ns: int, size: int, md5: str | None) -> np.ndarray:
    """:func:`read_idx` after an md5 check, cached by the file's identity (loading train then valid reads once)."""
    if md5 is not None:
        actual = file_digest(Path(path), "md5")
        if actual != md5:
            raise corrupt_file(Path(path), f"its md5 is {actual}, expected {md5} (the published checksum)")
    return read_idx(Path(path))


def _find(folder: Path, stem: str, md5s: dict[str, str], verify: bool) -> tuple[Path, str | None] | None:
    gz, raw = folder / f"{stem}.gz", folder / stem
    if gz.is_file():
        return gz, md5s[gz.name] if verify else None
    if raw.is_file():
        return raw, None
    return None


def load_idx_images(
    split: str,
    *,
    name: str,
    torchvision_class: str,
    md5s: dict[str, str],
    root: str | os.PathLike | None,
    download: bool,
    binarize: str | None,
    num_valid: int,
    seed: int,
    verify: bool,
) -> DataSet:
    """One split of an MNIST-format data set as float32 ``(N, 1, 28, 28)`` images.

    ``train`` is the training file's first ``N - num_valid`` images, ``valid``
    its last ``num_valid``, ``test`` the test file.  ``binarize=None`` gives
    grey levels in [0, 1] (bytes / 255); ``"dynamic"`` a
    :class:`~pyrovae.datasets.base.DynamicallyBinarized` data set redrawn each epoch.
    ``md5s`` maps the ``.gz`` file names to their published md5 sums (checked
    when ``verify``); ``torchvision_class`` names the folder and the
    ``torchvision.datasets`` class that downloads the files.
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"Expected split in ['test', 'train', 'valid'], got {split!r}")
    if binarize not in VIEWS:
        raise ValueError(f"Expected binarize in {VIEWS}, got {binarize!r}")
    if not isinstance(num_valid, int) or num_valid < 0:
        raise ValueError(f"Expected num_valid to be an int >= 0, got {num_valid!r}")
    source = "test" if split == "test" else "train"
    base = data_dir(root)
    folder = base / torchvision_class / "raw"
    found = [_find(folder, stem, md5s, verify) for stem in FILES[source]]
    if any(f is None for f in found):
        if download:
            import torchvision.datasets  # heavy, and only needed to download

            getattr(torchvision.datasets, torchvision_class)(root=str(base), train=source == "train", download=True)
            found = [_find(folder, stem, md5s, verify) for stem in FILES[source]]
        else:
            stem = FILES[source][[f is None for f in found].index(True)]
            raise missing_file(
                folder / f"{stem}.gz",
                f"pass download=True to fetch it through torchvision.datasets.{torchvision_class}, "
                f"or copy the four IDX files (.gz or extracted) there",
            )
    (image_path, image_md5), (label_path, label_md5) = found
    images = _read_checked(str(image_path), image_path.stat().st_mtime_ns, image_path.stat().st_size, image_md5)
    labels = _read_checked(str(label_path), label_path.stat().st_mtime_ns, label_path.stat().st_size, label_md5)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise corrupt_file(image_path, f"it holds {images.dtype} {images.shape}, expected uint8 (N, 28, 28) images")
    if labels.dtype != np.uint8 or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise corrupt_file(
            label_path, f"it holds {labels.dtype} {labels.shape}, expected {images.shape[0]} uint8 labels"
        )
    if labels.size and labels.max() > 9:
        raise corrupt_file(label_path, f"it holds label {labels.max()}, expected classes 0..9")
    if verify and images.shape[0] != COUNTS[source]:
        raise corrupt_file(image_path, f"it holds {images.shape[0]} images, expected {COUNTS[source]:,}")
    if source == "train":
        if num_valid > images.shape[0]:
            raise ValueError(f"num_valid={num_valid} exceeds the {images.shape[0]} training images")
        cut = images.shape[0] - num_valid
        rows = slice(0, cut) if split == "train" else slice(cut, None)
        images, labels = images[rows], labels[rows]
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    info = {"source": str(image_path), "view": binarize or "grayscale"}
    if binarize == "dynamic":
        return DynamicallyBinarized.from_probs(x, seed=seed, name=name, split=split, labels=y, info=info)
    return DataSet(x=x, support="unit_interval", name=name, split=split, labels=y, info=info)
