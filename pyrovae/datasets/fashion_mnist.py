"""Fashion-MNIST: 70,000 28 x 28 grey images of clothing in 10 classes (Xiao et al. 2017, arXiv:1708.07747).

A drop-in replacement for MNIST with the same file format and sizes.  Views
(``binarize``): ``None`` (grey levels in [0, 1]) or ``"dynamic"`` (Bernoulli
draws redrawn every epoch, seeded); there is no standard static binarization.
Splits: ``train`` the first 50,000 training images, ``valid`` the last 10,000,
``test`` the 10,000 test images (for the final report only).

The IDX files are read from ``<data dir>/FashionMNIST/raw/`` (torchvision's
layout) and fetched through ``torchvision.datasets.FashionMNIST`` when
``download=True``; see :mod:`~pyrovae.datasets.idx` for the checks.
"""

from __future__ import annotations

import os

from pyrovae.datasets.base import DataSet
from pyrovae.datasets.idx import load_idx_images

__all__ = ["load"]

#: the published md5 sums of the .gz files (the same as torchvision.datasets.FashionMNIST.resources)
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


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
    """Fashion-MNIST as float32 ``(N, 1, 28, 28)`` images with integer labels.

    :param split: ``"train"`` (50,000), ``"valid"`` (10,000) or ``"test"`` (10,000).
    :param root: the data directory (default ``$PYROVAE_DATA_DIR`` or ``~/.cache/pyrovae``).
    :param download: fetch missing files through torchvision.
    :param binarize: ``None`` (grey levels) or ``"dynamic"``.
    :param seed: seeds the dynamic binarization's draws.
    :param num_valid: images held out from the end of the training file for ``valid``.
    :param verify: check torchvision's published md5 sums and the image counts.
    """
    return load_idx_images(
        split, name="fashion_mnist", torchvision_class="FashionMNIST", md5s=MD5, root=root, download=download,
        binarize=binarize, num_valid=num_valid, seed=seed, verify=verify,
    )
