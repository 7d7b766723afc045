"""Torch-only causal (PixelCNN-style) convolutions for autoregressive models of images.

An autoregressive model of an image factorises it in raster order,
:math:`p(x) = \\prod_{i,j} p(x_{ij} \\mid x_{<ij})`, where :math:`x_{<ij}` are the
positions before :math:`(i, j)`: the rows above, and the columns to the left in
row :math:`i`.  A :class:`PixelCNN` computes the parameters of every factor in one
teacher-forced pass: its output at :math:`(i, j)` depends only on input positions
strictly before :math:`(i, j)` (tested exactly, for every position, through the
gradient).

The channels of one position are one variable: a grey value, a binary pixel,
or the one-hot code of a VQ-VAE grid cell.  There is no order *within* a
position's channels (as the RGB sub-pixel order of van den Oord et al. 2016
would have); an RGB model that wants one puts it in its output head.

Conditioning (a latent code ``z`` in a PixelVAE, a class label) is added in
every layer: ``cond_vec`` (B, cond_dim) as a per-channel bias, ``cond_map``
(B, cond_channels, H, W) through a 1x1 convolution.  Conditioning is not
masked: it is not part of the variable being modelled.

References:
  1. A. van den Oord, N. Kalchbrenner, K. Kavukcuoglu. Pixel Recurrent Neural
     Networks. arXiv:1601.06759.
  2. A. van den Oord, N. Kalchbrenner, O. Vinyals, L. Espeholt, A. Graves,
     K. Kavukcuoglu. Conditional Image Generation with PixelCNN Decoders.
     arXiv:1606.05328.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

__all__ = ["MaskedConv2d", "PixelCNN"]


def _odd_pair(value: object, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, numbers.Integral) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1 and k % 2 == 1 for k in pair)
    ):
        raise ValueError(f"Expected {name} to be an odd int >= 1 or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"Expected {name} to be an int >= {minimum}, got {value!r}")
    return int(value)


class MaskedConv2d(nn.Conv2d):
    """A 2-d convolution that sees only the positions before the centre, in raster order.

    The kernel is multiplied by a fixed 0/1 mask: every row above the centre,
    and in the centre row the columns left of the centre.  Mask ``"A"``
    excludes the centre itself (the first layer: the output at a position must
    not see the input there); mask ``"B"`` includes it (later layers, whose
    input at a position already depends only on what came before it).

    The kernel must have odd sides so that it has a centre; padding defaults to
    ``dilation * (kernel_size // 2)`` so that the output has the input's height
    and width; stride must be 1 (a strided output position has no single
    position to be causal about).

    :param in_channels: input channels.
    :param out_channels: output channels.
    :param kernel_size: odd int or pair of odd ints.
    :param mask: ``"A"`` or ``"B"``.
    :param conv_kwargs: the rest of :class:`torch.nn.Conv2d`'s arguments.

    Example::

        conv = MaskedConv2d(1, 16, 5, mask="A")
        y = conv(torch.rand(8, 1, 28, 28))   # (8, 16, 28, 28)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], *,
                 mask: str = "B", **conv_kwargs) -> None:
        if mask not in ("A", "B"):
            raise ValueError(f"Expected mask to be 'A' or 'B', got {mask!r}")
        kh, kw = _odd_pair(kernel_size, "kernel_size")
        if conv_kwargs.get("stride", 1) not in (1, (1, 1)):
            raise ValueError(f"Expected stride 1 for a masked convolution, got {conv_kwargs['stride']!r}")
        if conv_kwargs.get("groups", 1) != 1:
            raise ValueError(f"Expected groups=1 for a masked convolution, got {conv_kwargs['groups']!r}")
        dilation = conv_kwargs.get("dilation", 1)
        dh, dw = (dilation, dilation) if isinstance(dilation, numbers.Integral) else dilation
        conv_kwargs.setdefault("padding", (dh * (kh // 2), dw * (kw // 2)))
        super().__init__(in_channels, out_channels, (kh, kw), **conv_kwargs)
        self.mask_type = mask
        m = torch.zeros(kh, kw)
        m[: kh // 2, :] = 1.0
        m[kh // 2, : kw // 2 + (1 if mask == "B" else 0)] = 1.0
        self.register_buffer("mask", m.expand(out_channels, in_channels, kh, kw).clone())

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (nn.Conv2d's name)
        return self._conv_forward(input, self.weight * self.mask, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask={self.mask_type!r}"


class _GatedLayer(nn.Module):
    # One gated masked layer (van den Oord et al. 2016, eq. 2-4): tanh(f) * sigmoid(g),
    # with the conditioning added to both halves before the gate.
    def __init__(self, in_channels: int, hidden: int, kernel: int, mask: str, cond_channels: int, cond_dim: int):
        super().__init__()
        self.conv = MaskedConv2d(in_channels, 2 * hidden, kernel, mask=mask)
        self.cond_map = nn.Conv2d(cond_channels, 2 * hidden, 1, bias=False) if cond_channels else None
        self.cond_vec = nn.Linear(cond_dim, 2 * hidden, bias=False) if cond_dim else None

    def forward(self, h: Tensor, cond_map: Tensor | None, cond_vec: Tensor | None) -> Tensor:
        a = self.conv(h)
        if self.cond_map is not None:
            a = a + self.cond_map(cond_map)
        if self.cond_vec is not None:
            a = a + self.cond_vec(cond_vec)[:, :, None, None]
        f, g = a.chunk(2, dim=1)
        return torch.tanh(f) * torch.sigmoid(g)


class PixelCNN(nn.Module):
    """Causal conv net: output at (i, j) depends only on input positions before (i, j) in raster order.

    A first gated layer with mask ``"A"``, then ``num_layers - 1`` residual gated
    layers with mask ``"B"``, then two 1x1 convolutions to ``out_channels`` raw
    numbers per position (logits, or the parameters of a discretized logistic).
    A single stack of masked convolutions has the "blind spot" of the original
    PixelCNN (some positions up and to the right are never seen); it is causal
    all the same, and for a decoder conditioned on ``z`` the blind spot costs little.

    :param in_channels: channels of the input image (or of a one-hot code grid).
    :param out_channels: channels of the output (the heads of the per-position distribution).
    :param hidden_channels: width of every hidden layer.
    :param num_layers: number of masked layers (>= 1); the receptive field grows with it.
    :param kernel_size: odd side of the masked kernels.
    :param cond_channels: channels of a spatial conditioning map (0: none).
    :param cond_dim: size of a conditioning vector (0: none).

    Example::

        net = PixelCNN(1, 1, hidden_channels=32, num_layers=3, cond_dim=8)
        logits = net(x, cond_vec=z)   # x (B, 1, 28, 28), z (B, 8) -> (B, 1, 28, 28)

    References:
      1. A. van den Oord et al. Conditional Image Generation with PixelCNN Decoders. arXiv:1606.05328.
    """

    def __init__(self, in_channels: int, out_channels: int, *, hidden_channels: int = 64, num_layers: int = 5,
                 kernel_size: int = 5, cond_channels: int = 0, cond_dim: int = 0) -> None:
        super().__init__()
        in_channels = _positive_int(in_channels, "in_channels")
        out_channels = _positive_int(out_channels, "out_channels")
        hidden_channels = _positive_int(hidden_channels, "hidden_channels")
        num_layers = _positive_int(num_layers, "num_layers")
        _odd_pair(kernel_size, "kernel_size")
        cond_channels = _positive_int(cond_channels, "cond_channels", minimum=0)
        cond_dim = _positive_int(cond_dim, "cond_dim", minimum=0)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.cond_channels, self.cond_dim = cond_channels, cond_dim
        cond = (cond_channels, cond_dim)
        self.layers = nn.ModuleList(
            [_GatedLayer(in_channels, hidden_channels, kernel_size, "A", *cond)]
            + [_GatedLayer(hidden_channels, hidden_channels, kernel_size, "B", *cond) for _ in range(num_layers - 1)]
        )
        # 1x1 convolutions mix channels within a position only, so they keep causality
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(hidden_channels, hidden_channels, 1), nn.ReLU(),
            nn.Conv2d(hidden_channels, out_channels, 1),
        )

    def _check(self, x: Tensor, cond_map: Tensor | None, cond_vec: Tensor | None) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Expected x of shape (B, {self.in_channels}, H, W), got {got}")
        b, _, h, w = x.shape
        if self.cond_channels:
            if not isinstance(cond_map, Tensor) or tuple(cond_map.shape) != (b, self.cond_channels, h, w):
                got = tuple(cond_map.shape) if isinstance(cond_map, Tensor) else cond_map
                raise ValueError(f"Expected cond_map of shape {(b, self.cond_channels, h, w)}, got {got}")
        elif cond_map is not None:
            raise ValueError("Expected cond_map=None: this PixelCNN was built with cond_channels=0")
        if self.cond_dim:
            if not isinstance(cond_vec, Tensor) or tuple(cond_vec.shape) != (b, self.cond_dim):
                got = tuple(cond_vec.shape) if isinstance(cond_vec, Tensor) else cond_vec
                raise ValueError(f"Expected cond_vec of shape {(b, self.cond_dim)}, got {got}")
        elif cond_vec is not None:
            raise ValueError("Expected cond_vec=None: this PixelCNN was built with cond_dim=0")

    def forward(self, x: Tensor, cond_map: Tensor | None = None, cond_vec: Tensor | None = None) -> Tensor:
        """Raw outputs ``(B, out_channels, H, W)``; position (i, j) sees only ``x`` before (i, j)."""
        self._check(x, cond_map, cond_vec)
        h = self.layers[0](x, cond_map, cond_vec)
        for layer in self.layers[1:]:
            # residual: the sum of two causal (mask B) maps is causal
            h = h + layer(h, cond_map, cond_vec)
        return self.head(h)
