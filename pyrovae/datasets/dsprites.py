r"""dSprites, the official file: 737,280 binary 64 x 64 images of 2-D shapes [1].

The loader reads ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` from the data
directory, or downloads it from the dsprites-dataset repository when
``download=True``.  It offers the same ground-truth-factor interface as
:mod:`~pyrovae.datasets.sprites` (:class:`DSprites` is a
:class:`~pyrovae.datasets.factors.FactorDataSet`): factors shape (3), scale (6),
orientation (40), posX (32), posY (32), as disentanglement_lib uses them; the
file's constant colour factor is dropped.

The file holds ``imgs`` (uint8 ``(737280, 64, 64)``, values 0/1),
``latents_classes`` (int64 ``(737280, 6)``), ``latents_values`` (float64
``(737280, 6)``) and ``metadata`` (a pickled dict, never unpickled here).  Rows
enumerate the grid in row-major order (posY fastest).

Integrity: with ``verify=True`` (the default) the file's md5 must equal
``7da33b31b13a06f4b04a70402ce90c2e``, the sum that independent loaders publish for
the official file.  In every case the structure is checked before anything is
returned: the zip archive and its CRCs, the keys, dtypes and shapes, that
``latents_classes`` enumerates a full grid in row-major order, that
``latents_values`` is one value per class, and that the images are 0/1.  The
grid's sizes are read from ``latents_classes``, so a smaller file in the same
format (``verify=False``) loads too.  The images are kept packed, 1 bit per
pixel (377 MB for the official file instead of 2.8 GB).

[1] L. Matthey, I. Higgins, D. Hassabis, A. Lerchner, dSprites: Disentanglement
testing Sprites dataset, 2017, https://github.com/deepmind/dsprites-dataset.
"""

from __future__ import annotations

import functools
import io
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from pyrovae.datasets.base import DataSet, data_dir
from pyrovae.datasets.factors import FactorDataSet, factor_split
from pyrovae.datasets.files import corrupt_file, download_file, missing_file, verify_digest

__all__ = ["DSprites", "load"]

FILENAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
URL = f"https://github.com/deepmind/dsprites-dataset/raw/master/{FILENAME}"
MD5 = "7da33b31b13a06f4b04a70402ce90c2e"
#: the file's factors, in the order of latents_classes' columns
FILE_FACTORS = ("color", "shape", "scale", "orientation", "posX", "posY")
IMAGE_SIDE = 64
#: rows decompressed at a time while packing the images
ROWS_PER_READ = 16384

SPLITS = {"train": 10_000, "valid": 1_000, "test": 1_000}


class DSprites(FactorDataSet):
    """The official dSprites images behind the factor interface.

    :param path: the ``.npz`` file.
    :param verify: compare the file's md5 with the published one (turn off only
        for files of your own in the same format; the structure is always checked).
    """

    factor_names = FILE_FACTORS[1:]
    image_shape = (1, IMAGE_SIDE, IMAGE_SIDE)

    def __init__(self, path: str | os.PathLike, verify: bool = True) -> None:
        self.path = Path(path)
        if verify:
            verify_digest(self.path, MD5, "md5")
        try:
            classes, values, self._packed = _read_npz(self.path)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as e:
            raise corrupt_file(self.path, f"the npz archive cannot be read ({type(e).__name__}: {e})") from None
        sizes = _check_grid(self.path, classes, values)
        if sizes[0] != 1:
            raise corrupt_file(self.path, f"expected a single colour, found {sizes[0]}")
        if self._packed.shape[0] != classes.shape[0]:
            raise corrupt_file(
                self.path, f"it has {self._packed.shape[0]} images but {classes.shape[0]} rows of latents"
            )
        self.factor_sizes = tuple(sizes[1:])
        strides = [math.prod(sizes[k + 1 :]) for k in range(len(sizes))]
        # the value of class c of factor k sits in the row where factor k is c and the others are 0
        self.factor_values = [
            torch.from_numpy(values[np.arange(size) * strides[k], k].copy())
            for k, size in enumerate(sizes)
        ][1:]

    def __repr__(self) -> str:
        return f"DSprites({str(self.path)!r}, factor_sizes={self.factor_sizes})"

    def _render(self, factors: torch.Tensor) -> torch.Tensor:
        rows = self.flat_index(factors).numpy()
        bits = np.unpackbits(self._packed[rows], axis=1, count=IMAGE_SIDE * IMAGE_SIDE)
        return torch.from_numpy(bits).float().reshape(-1, *self.image_shape)


def _read_member(path: Path, archive: zipfile.ZipFile, key: str) -> np.ndarray:
    with archive.open(f"{key}.npy") as f:
        data = f.read()  # to the end, so the zip CRC is checked
    try:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise corrupt_file(path, f"{key} is not a readable npy array ({e})") from None


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """latents_classes, latents_values and the images packed 8 pixels a byte, streamed."""
    with zipfile.ZipFile(path) as archive:
        keys = {Path(name).stem for name in archive.namelist()}
        missing = [k for k in ("imgs", "latents_classes", "latents_values") if k not in keys]
        if missing:
            raise corrupt_file(path, f"keys {missing} are missing (found {sorted(keys)})")
        classes = _read_member(path, archive, "latents_classes")
        values = _read_member(path, archive, "latents_values")
        with archive.open("imgs.npy") as f:
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            try:
                version = np.lib.format.read_magic(f)
                if version not in reader:
                    raise ValueError(f"npy format {version}, expected 1.0 or 2.0")
                shape, fortran, dtype = reader[version](f)
            except ValueError as e:
                raise corrupt_file(path, f"imgs is not a readable npy array ({e})") from None
            if dtype != np.uint8 or fortran or len(shape) != 3 or shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
                raise corrupt_file(
                    path, f"imgs is {dtype} {shape}, expected uint8 (N, {IMAGE_SIDE}, {IMAGE_SIDE}) in C order"
                )
            pixels = IMAGE_SIDE * IMAGE_SIDE
            packed = np.empty((shape[0], pixels // 8), dtype=np.uint8)
            for start in range(0, shape[0], ROWS_PER_READ):
                count = min(ROWS_PER_READ, shape[0] - start)
                block = f.read(count * pixels)
                if len(block) != count * pixels:
                    got = start * pixels + len(block)
                    raise corrupt_file(path, f"imgs ends after {got} of {shape[0] * pixels} bytes")
                block = np.frombuffer(block, dtype=np.uint8).reshape(count, pixels)
                if block.max(initial=0) > 1:
                    raise corrupt_file(path, "imgs holds values other than 0 and 1")
                packed[start : start + count] = np.packbits(block, axis=1)
            if f.read():  # reading to the end also checks the zip CRC
                raise corrupt_file(path, f"imgs holds more bytes than its header's {shape}")
    return classes, values, packed


def _check_grid(path: Path, classes: np.ndarray, values: np.ndarray) -> list[int]:
    """The grid sizes, after checking that ``classes`` enumerates the grid and ``values`` matches it."""
    width = len(FILE_FACTORS)
    if classes.dtype != np.int64 or classes.ndim != 2 or classes.shape[1] != width:
        raise corrupt_file(path, f"latents_classes is {classes.dtype} {classes.shape}, expected int64 (N, {width})")
    if values.dtype != np.float64 or values.shape != classes.shape:
        raise corrupt_file(
            path, f"latents_values is {values.dtype} {values.shape}, expected float64 {classes.shape}"
        )
    if classes.shape[0] == 0 or classes.min() < 0:
        raise corrupt_file(path, "latents_classes is empty or negative")
    sizes = [int(m) + 1 for m in classes.max(axis=0)]
    if classes.shape[0] != math.prod(sizes):
        raise corrupt_file(
            path, f"latents_classes has {classes.shape[0]} rows, but its classes span a grid of {math.prod(sizes)}"
        )
    grid = np.stack(np.unravel_index(np.arange(classes.shape[0]), sizes), axis=1)
    if not np.array_equal(classes, grid):
        raise corrupt_file(path, "latents_classes does not enumerate the factor grid in row-major order")
    for k, size in enumerate(sizes):
        per_class = np.full(size, np.nan)
        per_class[classes[:, k]] = values[:, k]
        if not np.array_equal(per_class[classes[:, k]], values[:, k]):
            raise corrupt_file(path, f"latents_values gives {FILE_FACTORS[k]} several values for one class")
    return sizes


@functools.lru_cache(maxsize=1)
def _open(path: str, mtime_ns: int, size: int, verify: bool) -> DSprites:
    """One :class:`DSprites` per file version, so loading train, valid and test reads the file once."""
    return DSprites(path, verify=verify)


def load(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    verify: bool = True,
    num_train: int = SPLITS["train"],
    num_valid: int = SPLITS["valid"],
    num_test: int = SPLITS["test"],
    seed: int = 0,
) -> DataSet:
    """A fixed sample of distinct dSprites images as float32 ``(N, 1, 64, 64)`` binary images.

    Splits are disjoint sets of grid settings drawn with ``seed`` (see
    :func:`~pyrovae.datasets.factors.factor_split`); ``info["factors"]`` is the
    :class:`DSprites` object and ``info["factor_indices"]`` the ``(N, 5)``
    factor indices.

    :param split: ``"train"``, ``"valid"`` or ``"test"``.
    :param root: the data directory (default ``$PYROVAE_DATA_DIR`` or ``~/.cache/pyrovae``).
    :param download: fetch the file from GitHub if it is missing (md5-checked).
    :param verify: check the file's md5 against the published one.
    :param num_train: number of training images (at most 737,280 in all splits).
    :param num_valid: number of validation images.
    :param num_test: number of test images.
    :param seed: fixes which settings fall in which split.
    """
    sizes = {"train": num_train, "valid": num_valid, "test": num_test}
    if split not in sizes:
        raise ValueError(f"Expected split in {sorted(sizes)}, got {split!r}")
    path = data_dir(root) / FILENAME
    if not path.is_file():
        if not download:
            raise missing_file(path, f"pass download=True, or copy it there from {URL}")
        download_file(URL, path, MD5, "md5")
    stat = path.stat()
    out = factor_split(_open(str(path), stat.st_mtime_ns, stat.st_size, verify), "dsprites", split, sizes, seed)
    out.info["source"] = str(path)
    return out
