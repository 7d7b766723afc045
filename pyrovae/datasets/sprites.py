r"""Sprites: dSprites' factor grid, rendered here on demand (built in, no download).

**These are not the official dSprites pixels.**  The factor grid is dSprites' [1]
and the shapes are the same three, but every image is drawn by this module, so
numbers measured on ``sprites`` are not comparable with published dSprites
results; use :mod:`~pyrovae.datasets.dsprites` for those.

Factors (all combinations: 3 x 6 x 40 x 32 x 32 = 737,280), with dSprites' values:

============  =====  ==========================================================
name          size   values
============  =====  ==========================================================
shape         3      1, 2, 3 = square, ellipse, heart
scale         6      0.5, 0.6, ..., 1.0
orientation   40     ``linspace(0, 2 pi, 40)`` radians (the first and last coincide, as in dSprites)
posX          32     ``linspace(0, 1, 32)``
posY          32     ``linspace(0, 1, 32)``
============  =====  ==========================================================

How an image is drawn
    A 64 x 64 binary canvas; a pixel is on when its centre lies inside the shape
    (no anti-aliasing, so images are exactly 0/1).  In pixel units, with
    columns growing to the right and rows downward, the sprite's centre is at
    ``(16 + 31 posX, 16 + 31 posY)``, i.e. exactly ``16 + i`` for position index
    ``i``: one pixel per position step, centres 16..47,
    and index 16 of either position (value 16/31) puts the centre at the canvas
    centre (32, 32).  At scale ``s`` the shape's reference box is ``20 s`` pixels
    wide: the square fills it, the ellipse has semi-axes ``10 s`` (along the
    shape's own x axis) and ``5 s``, the heart (the curve
    :math:`(x^2 + y^2 - 1)^3 = x^2 y^3`, point down) spans its height.  The shape
    is turned counter-clockwise on screen by ``orientation`` radians about its
    centre.  Every sprite stays inside the canvas.

Rendering is vectorised in torch and deterministic: the same factors always
give the same pixels, and nothing is materialised beyond the images asked for.
Each (shape, scale, orientation) is drawn once per process in a 32 x 32 window
centred at (16, 16) (720 small drawings); an image is its window moved by whole
pixels to ``(posX index, posY index)``, which is exact because a position step is
one pixel (:meth:`Sprites.draw` draws any image directly, and a test checks that
the two agree).  ``benchmarks/sprites_render.py`` reports images per second.

[1] L. Matthey, I. Higgins, D. Hassabis, A. Lerchner, dSprites: Disentanglement
testing Sprites dataset, 2017, https://github.com/deepmind/dsprites-dataset.
"""

from __future__ import annotations

import math

import torch

from pyrovae.datasets.base import DataSet
from pyrovae.datasets.factors import FactorDataSet, factor_split

__all__ = ["Sprites", "load"]

#: canvas side in pixels
SIZE = 64
#: half the reference box of a scale-1 shape, in pixels
EXTENT = 10.0
#: a position of 0 puts the centre here (pixels); a position of 1 at ORIGIN + SPAN
ORIGIN, SPAN = 16.0, 31.0
#: the heart curve spans x in [-1.139, 1.139], y in [-1, 1.236]: fit its height to [-1, 1]
HEART_SCALE, HEART_SHIFT = 1.118, 0.118
#: side of the window a sprite is drawn in: centre at (16, 16), every sprite within 1..31
TEMPLATE = 32

SPLITS = {"train": 10_000, "valid": 1_000, "test": 1_000}


def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 1.0


def _ellipse(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u * u + 4.0 * v * v <= 1.0


def _heart(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    x = HEART_SCALE * u
    y = HEART_SCALE * v + HEART_SHIFT
    r = x * x + y * y - 1.0
    return r * r * r - x * x * y * y * y <= 0.0


class Sprites(FactorDataSet):
    """dSprites' factor grid, rendered on demand (not the official pixels; see the module docstring).

    :param chunk_size: images placed per vectorised step (bounds the temporaries).
    """

    factor_names = ("shape", "scale", "orientation", "posX", "posY")
    factor_sizes = (3, 6, 40, 32, 32)
    shape_names = ("square", "ellipse", "heart")
    image_shape = (1, SIZE, SIZE)
    _template_cache: torch.Tensor | None = None

    def __init__(self, chunk_size: int = 4096) -> None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"Expected chunk_size to be an int >= 1, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.factor_values = [
            torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
            torch.linspace(0.5, 1.0, 6, dtype=torch.float64),
            torch.linspace(0.0, 2 * math.pi, 40, dtype=torch.float64),
            torch.linspace(0.0, 1.0, 32, dtype=torch.float64),
            torch.linspace(0.0, 1.0, 32, dtype=torch.float64),
        ]

    def __repr__(self) -> str:
        return f"Sprites(chunk_size={self.chunk_size})"

    # ------------------------------------------------------------ drawing
    def draw(self, shape: torch.Tensor, scale: torch.Tensor, orientation: torch.Tensor,
             centre_x: torch.Tensor, centre_y: torch.Tensor, size: int = SIZE) -> torch.Tensor:
        """Draw sprites from factor *indices* of shape, scale, orientation and a centre in pixels.

        The direct rendering: every pixel centre of a ``size`` x ``size``
        canvas is mapped into each shape's own frame and tested against the
        shape's implicit function.  Returns float32 ``(n, size, size)``.
        """
        grid = torch.arange(size, dtype=torch.float64) + 0.5  # pixel centres; rows grow downward
        extent = EXTENT * self.factor_values[1][scale]
        angle = self.factor_values[2][orientation]
        # rotating each pixel by -angle turns the shape by +angle; dividing by the extent scales it
        cos = (torch.cos(angle) / extent)[:, None, None]
        sin = (torch.sin(angle) / extent)[:, None, None]
        dx = grid[None, None, :] - centre_x.double()[:, None, None]  # (n, 1, size)
        dy = centre_y.double()[:, None, None] - grid[None, :, None]  # (n, size, 1), y up
        u = (cos * dx + sin * dy).float()
        v = (cos * dy - sin * dx).float()
        out = torch.zeros(shape.shape[0], size, size, dtype=torch.float32)
        for k, inside in enumerate((_square, _ellipse, _heart)):
            rows = (shape == k).nonzero().squeeze(1)
            if rows.numel():
                out[rows] = inside(u[rows], v[rows]).float()
        return out

    @property
    def templates(self) -> torch.Tensor:
        """One 32 x 32 drawing per (shape, scale, orientation), centred at (16, 16): ``(3, 6, 40, 32, 32)``.

        Drawn once per process (720 small drawings) and shared by all instances.
        """
        cache = Sprites._template_cache
        if cache is None:
            index = torch.cartesian_prod(torch.arange(3), torch.arange(6), torch.arange(40))
            centre = torch.full((index.shape[0],), ORIGIN, dtype=torch.float64)
            drawn = self.draw(index[:, 0], index[:, 1], index[:, 2], centre, centre, size=TEMPLATE)
            cache = Sprites._template_cache = drawn.reshape(3, 6, 40, TEMPLATE, TEMPLATE)
        return cache

    def _render(self, factors: torch.Tensor) -> torch.Tensor:
        # A position step is exactly one pixel, so a sprite at position (i, j) is its
        # template moved i pixels right and j down: exact, and far cheaper than drawing.
        templates = self.templates.reshape(-1, TEMPLATE, TEMPLATE)
        offsets = torch.arange(TEMPLATE)
        out = torch.zeros(factors.shape[0], SIZE, SIZE, dtype=torch.float32)
        for start in range(0, factors.shape[0], self.chunk_size):
            f = factors[start : start + self.chunk_size]
            which = (f[:, 0] * 6 + f[:, 1]) * 40 + f[:, 2]
            image = torch.arange(start, start + f.shape[0])[:, None, None]
            rows = (f[:, 4, None] + offsets)[:, :, None]
            cols = (f[:, 3, None] + offsets)[:, None, :]
            out[image, rows, cols] = templates[which]
        return out.unsqueeze(1)


def load(
    split: str = "train",
    *,
    num_train: int = SPLITS["train"],
    num_valid: int = SPLITS["valid"],
    num_test: int = SPLITS["test"],
    seed: int = 0,
) -> DataSet:
    """A fixed sample of distinct sprites as float32 ``(N, 1, 64, 64)`` binary images.

    The three splits are disjoint sets of grid settings drawn with ``seed``
    (see :func:`~pyrovae.datasets.factors.factor_split`); the defaults (10,000 /
    1,000 / 1,000) load in about a second.  ``info["factors"]`` is the
    :class:`Sprites` object (render anything else on demand) and
    ``info["factor_indices"]`` the ``(N, 5)`` factor indices of the images.

    :param split: ``"train"``, ``"valid"`` or ``"test"``.
    :param num_train: number of training images (at most 737,280 in all splits).
    :param num_valid: number of validation images.
    :param num_test: number of test images.
    :param seed: fixes which settings fall in which split.
    """
    sizes = {"train": num_train, "valid": num_valid, "test": num_test}
    return factor_split(Sprites(), "sprites", split, sizes, seed)
