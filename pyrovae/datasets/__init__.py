"""Data sets by name: one loader per file, one line in :data:`DATASETS`.

``load(name, split="train", **options)`` returns a :class:`DataSet`: a float32
tensor ``(N, C, H, W)`` or ``(N, D)`` with its support (``binary``,
``unit_interval`` or ``real``), labels where they exist, and metadata.

=================  ========================  ==============  ====================================
name               x                         support         source
=================  ========================  ==============  ====================================
sprites            (N, 1, 64, 64)            binary          rendered here (dSprites' factor grid)
dsprites           (N, 1, 64, 64)            binary          official npz (file or download)
mnist              (N, 1, 28, 28)            [0, 1] / binary IDX files via torchvision; 3 views
fashion_mnist      (N, 1, 28, 28)            [0, 1] / binary IDX files via torchvision
binarized_mnist    (N, 1, 28, 28)            binary          Larochelle's .amat files
digits             (N, 1, 8, 8)              [0, 1] / binary scikit-learn (built in)
synthetic          (N, D)                    real            linear-Gaussian, exact log p(x)
=================  ========================  ==============  ====================================

Files are looked for in one folder, :func:`data_dir`: ``root=...``, else
``$PYROVAE_DATA_DIR``, else ``~/.cache/pyrovae``.  Loaders download only with
``download=True`` and verify checksums; a missing file is a one-line
:class:`FileNotFoundError` saying what, where and how to get it, and a corrupt
one a :class:`ValueError` (see :mod:`pyrovae.datasets.files`).

Factor data sets (``sprites``, ``dsprites``) carry a
:class:`~pyrovae.datasets.factors.FactorDataSet` in ``info["factors"]`` and the
images' factor indices in ``info["factor_indices"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyrovae.datasets import binarized_mnist, digits, dsprites, fashion_mnist, mnist, sprites, synthetic
from pyrovae.datasets.base import DataSet, DynamicallyBinarized, data_dir
from pyrovae.datasets.factors import FactorDataSet

__all__ = ["DATASETS", "DataSet", "DynamicallyBinarized", "FactorDataSet", "data_dir", "load"]

#: name -> loader(split, **options) -> DataSet
DATASETS: dict[str, Callable[..., DataSet]] = {
    "binarized_mnist": binarized_mnist.load,
    "digits": digits.load,
    "dsprites": dsprites.load,
    "fashion_mnist": fashion_mnist.load,
    "mnist": mnist.load,
    "sprites": sprites.load,
    "synthetic": synthetic.load,
}


def load(name: str, split: str = "train", **options: Any) -> DataSet:
    """Load split ``split`` of the data set registered as ``name``.

    Example::

        train = load("sprites", "train", num_train=20_000)
        factors = train.info["factors"]          # render more on demand
    """
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"Expected dataset in {sorted(DATASETS)}, got {name!r}") from None
    return loader(split, **options)
