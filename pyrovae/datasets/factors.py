r"""Ground-truth-factor data sets: every image is a known function of discrete factors.

A :class:`FactorDataSet` is a grid of factors (dSprites: shape x scale x
orientation x position x x position y) and a deterministic map from a factor
setting to an image.  This is the interface of disentanglement_lib's
``GroundTruthData`` [1] that disentanglement metrics need:

* ``factor_names``, ``factor_sizes``, ``factor_values`` describe the grid;
* ``sample_factors(n, rng)`` draws ``n`` settings uniformly from the grid, as
  integer *indices* ``(n, num_factors)`` (``factors[:, k]`` indexes
  ``factor_values[k]``);
* ``images(factors)`` returns the float32 images ``(n, 1, 64, 64)`` of those settings;
* ``sample(n, rng)`` does both.

Example::

    rng = torch.Generator().manual_seed(0)
    data = Sprites()
    factors, images = data.sample(100, rng)
    factors[:, 1] = 5                      # every sprite at the largest scale
    bigger = data.images(factors)

[1] F. Locatello et al., Challenging common assumptions in the unsupervised
learning of disentangled representations, ICML 2019, arXiv:1811.12359.
"""

from __future__ import annotations

import math

import torch

from pyrovae.datasets.base import DataSet, split_indices

__all__ = ["FactorDataSet", "factor_split"]


class FactorDataSet:
    """Base class: a grid of discrete factors and a deterministic renderer.

    Subclasses set :attr:`factor_names`, :attr:`factor_sizes` and
    :attr:`factor_values` and implement :meth:`_render`, which receives
    validated indices.

    :ivar factor_names: one name per factor.
    :ivar factor_sizes: the number of values each factor takes.
    :ivar factor_values: one float64 tensor of the factor's values per factor
        (``factor_values[k][i]`` is the value that index ``i`` of factor ``k`` stands for).
    """

    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()
    factor_values: list[torch.Tensor] = []
    #: the shape of one image
    image_shape: tuple[int, ...] = (1, 64, 64)

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    @property
    def num_combinations(self) -> int:
        """The number of distinct factor settings (737,280 for dSprites)."""
        return math.prod(self.factor_sizes)

    # ------------------------------------------------------------- factors
    def sample_factors(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """``n`` factor settings drawn independently and uniformly: int64 indices ``(n, num_factors)``."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"Expected n to be an int >= 0, got {n!r}")
        columns = [torch.randint(size, (n,), generator=rng) for size in self.factor_sizes]
        return torch.stack(columns, dim=1) if columns else torch.zeros(n, 0, dtype=torch.long)

    def check_factors(self, factors: torch.Tensor) -> torch.Tensor:
        """``factors`` as int64 ``(n, num_factors)``, or :class:`ValueError` saying what is wrong."""
        factors = torch.as_tensor(factors)
        if factors.is_floating_point() or factors.is_complex() or factors.dtype == torch.bool:
            raise ValueError(f"Expected integer factor indices, got dtype {factors.dtype}")
        if factors.dim() != 2 or factors.shape[1] != self.num_factors:
            raise ValueError(
                f"Expected factor indices of shape (n, {self.num_factors}) for {self.factor_names}, "
                f"got {tuple(factors.shape)}"
            )
        factors = factors.long()
        for k, (name, size) in enumerate(zip(self.factor_names, self.factor_sizes)):
            column = factors[:, k]
            if column.numel() and (int(column.min()) < 0 or int(column.max()) >= size):
                raise ValueError(
                    f"Expected {name} indices in 0..{size - 1}, got values in "
                    f"{int(column.min())}..{int(column.max())}"
                )
        return factors

    def values(self, factors: torch.Tensor) -> torch.Tensor:
        """The factor *values* (float64 ``(n, num_factors)``) of factor indices."""
        factors = self.check_factors(factors)
        return torch.stack([v[factors[:, k]] for k, v in enumerate(self.factor_values)], dim=1)

    def flat_index(self, factors: torch.Tensor) -> torch.Tensor:
        """Row-major position of each setting in the grid (the last factor varies fastest)."""
        factors = self.check_factors(factors)
        index = torch.zeros(factors.shape[0], dtype=torch.long)
        for k, size in enumerate(self.factor_sizes):
            index = index * size + factors[:, k]
        return index

    def factors_of(self, index: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`flat_index`."""
        index = torch.as_tensor(index, dtype=torch.long).clone()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_combinations):
            raise ValueError(f"Expected flat indices in 0..{self.num_combinations - 1}")
        columns = []
        for size in reversed(self.factor_sizes):
            columns.append(index % size)
            index = index // size
        return torch.stack(columns[::-1], dim=1)

    # ------------------------------------------------------------- images
    def images(self, factors: torch.Tensor) -> torch.Tensor:
        """The images of the settings ``factors`` (indices ``(n, num_factors)``): float32 ``(n, *image_shape)``."""
        return self._render(self.check_factors(factors))

    def sample(self, n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(factors, images)`` for ``n`` settings drawn uniformly from the grid."""
        factors = self.sample_factors(n, rng)
        return factors, self.images(factors)

    def _render(self, factors: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def factor_split(
    data: FactorDataSet, name: str, split: str, sizes: dict[str, int], seed: int, support: str = "binary"
) -> DataSet:
    """A fixed sample of distinct grid settings as a :class:`DataSet` split.

    ``sizes`` maps ``"train"``, ``"valid"`` and ``"test"`` to their sizes.
    One permutation of the grid (fixed by ``seed``) is cut into the test set
    first, then valid, then train, so the three never share a setting and the
    test set depends only on ``seed`` and its own size.  ``info["factors"]``
    holds ``data`` and ``info["factor_indices"]`` the int64 ``(N, num_factors)``
    indices of the images, row for row.
    """
    if split not in sizes:
        raise ValueError(f"Expected split in {sorted(sizes)}, got {split!r}")
    for key, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"Expected num_{key} to be an int >= 0, got {size!r}")
    order = {key: sizes[key] for key in ("test", "valid", "train")}
    index = split_indices(data.num_combinations, order, seed)[split]
    factors = data.factors_of(index)
    return DataSet(
        x=data.images(factors),
        support=support,
        name=name,
        split=split,
        info={"factors": data, "factor_indices": factors, "factor_names": data.factor_names, "seed": seed},
    )
