"""scikit-learn's 8x8 handwritten digits: a tiny built-in image set (no download)."""

from __future__ import annotations

import torch

from pyrovae.datasets.base import DataSet, split_indices

__all__ = ["load"]

#: 1,797 images in all, split once with a fixed seed
SPLITS = {"train": 1397, "valid": 200, "test": 200}


#: the values ``binarize`` takes: a flag (None, as in the other loaders, means no binarization)
VIEWS = (False, True, None)


def load(split: str = "train", *, binarize: bool | None = False) -> DataSet:
    """The UCI optical digits as ``(N, 1, 8, 8)`` float32 images.

    :param split: ``"train"`` (1,397), ``"valid"`` (200) or ``"test"`` (200).
    :param binarize: ``True``: threshold at 0.5, giving binary data for a Bernoulli
        likelihood; ``False`` or ``None``: intensities in [0, 1] (the original 0..16 / 16).
        A flag only: there is no dynamic or static view of these images.
    """
    if split not in SPLITS:
        raise ValueError(f"Expected split in {sorted(SPLITS)}, got {split!r}")
    # `binarize in VIEWS` would let "yes" fail but 1 and 0.0 through (1 == True): compare identities
    if not any(binarize is view for view in VIEWS):
        raise ValueError(f"Expected binarize in {VIEWS} for digits (a flag), got {binarize!r}")
    from sklearn.datasets import load_digits  # optional heavy import, bundled with scikit-learn

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    idx = split_indices(len(x), SPLITS, seed=0)[split]
    x, y = x[idx], y[idx]
    if binarize:
        x = (x > 0.5).float()
    return DataSet(x=x, support="binary" if binarize else "unit_interval", name="digits", split=split, labels=y)
