"""MNIST: 70,000 28 x 28 handwritten digits (LeCun et al. 1998), in three views.

Views (``binarize``):

* ``None``: grey levels in [0, 1] (bytes / 255), support ``unit_interval``;
* ``"dynamic"``: binary images redrawn from Bernoulli(grey level) at every
  epoch, seeded (a :class:`~pyrovae.datasets.base.DynamicallyBinarized`), support ``binary``;
* ``"static"``: Larochelle's fixed binarization, the same data as
  ``load("binarized_mnist", split)`` (see :mod:`~pyrovae.datasets.binarized_mnist`).

Splits: ``train`` is the first 50,000 images of MNIST's training file, ``valid``
its last 10,000 (the split binarized MNIST uses), ``test`` the 10,000 test
images.  The test split is for the final report only, never for training or
model selection.

The four IDX files are read from ``<data dir>/MNIST/raw/`` (torchvision's layout;
``.gz`` or extracted), and fetched through ``torchvision.datasets.MNIST`` when
``download=True``.  With ``verify=True`` the ``.gz`` files' md5 must match
torchvision's published sums and the image counts must be 60,000 / 10,000; the
IDX structure is always checked (see :mod:`~pyrovae.datasets.idx`).
"""

from __future__ import annotations

import os

from pyrovae.datasets import binarized_mnist
from pyrovae.datasets.base import DataSet
from pyrovae.datasets.idx import load_idx_images

__all__ = ["load"]

#: the published md5 sums of the .gz files (the same as torchvision.datasets.MNIST.resources)
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

VIEWS = (None, "dynamic", "static")


def load(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    binarize: str | None = None,
    seed: int = 0,
    num_valid: int = 10_000,
    verify: bool = True,
) -> DataSet:
    """MNIST as float32 ``(N, 1, 28, 28)`` images with integer labels (except the static view).

    :param split: ``"train"`` (50,000), ``"valid"`` (10,000) or ``"test"`` (10,000).
    :param root: the data directory (default ``$PYROVAE_DATA_DIR`` or ``~/.cache/pyrovae``).
    :param download: fetch missing files (through torchvision; binarized MNIST from Toronto).
    :param binarize: ``None`` (grey levels), ``"dynamic"`` or ``"static"``.
    :param seed: seeds the dynamic binarization's draws.
    :param num_valid: images held out from the end of the training file for ``valid``.
    :param verify: check published checksums and counts (turn off only for your own files).

    Example::

        train = load("mnist", "train", binarize="dynamic")
        train.epoch_view(3)   # epoch 3's binary draw
    """
    if binarize not in VIEWS:
        raise ValueError(f"Expected binarize in {VIEWS}, got {binarize!r}")
    if binarize == "static":
        return binarized_mnist.load(split, root=root, download=download, verify=verify)
    return load_idx_images(
        split, name="mnist", torchvision_class="MNIST", md5s=MD5, root=root, download=download,
        binarize=binarize, num_valid=num_valid, seed=seed, verify=verify,
    )
