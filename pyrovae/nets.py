"""Torch-only encoder and decoder networks with named parameter heads.

A network maps an input of a fixed *event shape* to a dictionary of raw
(unconstrained) tensors, one per head, each with its own shape.  Any number of
leading batch dimensions is allowed, so the same decoder serves a minibatch
``(B, z_dim)`` and a vectorized particle batch ``(K, B, z_dim)``.

Two families:

* :class:`MLP` -- flat fully connected layers; works for any input and head
  shapes (images are flattened).
* :class:`ConvEncoder` / :class:`ConvDecoder` -- stride-2 convolutions for
  ``(C, H, W)`` images of *any* height and width: the decoder reproduces the
  encoder's spatial sizes exactly, odd sizes included.

Constraints (softplus for scales, etc.) are applied by the model hooks, not
here: networks only produce numbers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "MLP", "Flatten", "ConvEncoder", "ConvDecoder", "check_widths", "make_encoder", "make_decoder",
           "resolve_arch"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}

Shape = tuple[int, ...]


def _is_positive_int(value: object) -> bool:
    # numpy integers count (they are numbers.Integral); bools and floats such as 2.0 do not
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _is_sequence(value: object) -> bool:
    # a str is a Sequence too, but "400" read as (4, 0, 0) is never what was meant
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def check_widths(value: Sequence[int], name: str, *, example: str, allow_empty: bool = True) -> tuple[int, ...]:
    """``value`` as a tuple of ints, or a one-line ``ValueError`` naming ``name``.

    Every entry must be a positive int (not a bool, not a float); ``value``
    itself a sequence (not a str), non-empty unless ``allow_empty`` (an MLP
    with no hidden layer is a linear map; a conv net needs a convolution).

    Example::

        check_widths("400", "hidden", example="(400,)")
        # ValueError: Expected hidden to be a sequence of positive ints, e.g. (400,), got '400'
    """
    if not (_is_sequence(value) and (allow_empty or len(value) > 0) and all(_is_positive_int(w) for w in value)):
        kind = "a sequence" if allow_empty else "a non-empty sequence"
        raise ValueError(f"Expected {name} to be {kind} of positive ints, e.g. {example}, got {value!r}")
    return tuple(int(w) for w in value)


def _positive_int(value: int, name: str, *, example: str) -> int:
    if not _is_positive_int(value):
        raise ValueError(f"Expected {name} to be a positive int, e.g. {example}, got {value!r}")
    return int(value)


def _shape(value: int | Sequence[int], name: str) -> Shape:
    shape = (value,) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if not (_is_sequence(shape) and shape and all(_is_positive_int(s) for s in shape)):
        raise ValueError(f"Expected {name} to be a positive int or a tuple of positive ints, got {value!r}")
    return tuple(int(s) for s in shape)


def _activation(name: str) -> type[nn.Module]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"Expected activation in {sorted(ACTIVATIONS)}, got {name!r}") from None


def _heads(heads: Mapping[str, int | Sequence[int]]) -> dict[str, Shape]:
    if not heads:
        raise ValueError("Expected at least one head, got none")
    return {name: _shape(shape, f"heads[{name!r}]") for name, shape in heads.items()}


class _Heads(nn.Module):
    """Splits one flat feature vector into named, reshaped heads."""

    def __init__(self, heads: dict[str, Shape]) -> None:
        super().__init__()
        self.shapes = heads
        self.sizes = [math.prod(s) for s in heads.values()]

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def forward(self, flat: torch.Tensor, batch_shape: torch.Size) -> dict[str, torch.Tensor]:
        parts = flat.split(self.sizes, dim=-1) if len(self.sizes) > 1 else (flat,)
        return {
            name: part.reshape(batch_shape + shape)
            for (name, shape), part in zip(self.shapes.items(), parts)
        }


class Flatten(nn.Module):
    """No parameters: the input flattened, as the single head ``{name: (..., prod(in_shape))}``.

    Where a network reads raw inputs beside other features (Kingma et al.'s q(z | x, y) on
    ``[x, onehot(y)]``), it stands in for an encoder, so the first hidden layer sees ``x`` itself.
    """

    def __init__(self, in_shape: int | Sequence[int], name: str = "features") -> None:
        super().__init__()
        self.in_shape = _shape(in_shape, "in_shape")
        self.name = name
        self.width = math.prod(self.in_shape)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        batch_shape = x.shape[: x.dim() - len(self.in_shape)]
        return {self.name: x.reshape(batch_shape + (self.width,))}


class MLP(nn.Module):
    """Fully connected network from inputs of shape ``in_shape`` to named heads.

    :param in_shape: event shape of the input (flattened internally).
    :param heads: mapping head name -> output event shape.
    :param hidden: widths of the hidden layers.
    :param activation: name of the nonlinearity, one of :data:`ACTIVATIONS`.

    Example::

        net = MLP(784, {"loc": 20, "scale": 20}, hidden=(400,))
        out = net(torch.rand(128, 784))   # out["loc"].shape == (128, 20)
    """

    def __init__(
        self,
        in_shape: int | Sequence[int],
        heads: Mapping[str, int | Sequence[int]],
        *,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.in_shape = _shape(in_shape, "in_shape")
        self.heads = _Heads(_heads(heads))
        act = _activation(activation)
        layers: list[nn.Module] = []
        width = math.prod(self.in_shape)
        for h in check_widths(hidden, "hidden", example="(400,)"):
            layers += [nn.Linear(width, h), act()]
            width = h
        layers.append(nn.Linear(width, self.heads.total))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        batch_shape = x.shape[: x.dim() - len(self.in_shape)]
        flat = self.net(x.reshape(batch_shape + (-1,)))
        return self.heads(flat, batch_shape)


def _spatial_sizes(size: int, num_layers: int) -> list[int]:
    """Sizes after each stride-2, kernel-3, padding-1 convolution: s -> ceil(s / 2)."""
    sizes = [size]
    for _ in range(num_layers):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class ConvEncoder(nn.Module):
    """Stride-2 convolutional encoder from ``(C, H, W)`` images to named vector heads.

    Each convolution halves the height and width (rounding up), so any image
    size works.  A fully connected layer of width ``hidden`` follows.

    :param in_shape: ``(C, H, W)``.
    :param heads: mapping head name -> output shape.
    :param channels: output channels of each convolution.
    :param hidden: width of the fully connected layer after the convolutions.
    :param activation: name of the nonlinearity.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        heads: Mapping[str, int | Sequence[int]],
        *,
        channels: Sequence[int] = (32, 32, 64, 64),
        hidden: int = 256,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.in_shape = _shape(in_shape, "in_shape")
        if len(self.in_shape) != 3:
            raise ValueError(f"Expected in_shape (C, H, W) for a convolutional encoder, got {self.in_shape}")
        channels = check_widths(channels, "channels", example="(32, 32, 64, 64)", allow_empty=False)
        hidden = _positive_int(hidden, "hidden", example="256")
        act = _activation(activation)
        c, h, w = self.in_shape
        layers: list[nn.Module] = []
        for out_c in channels:
            layers += [nn.Conv2d(c, out_c, kernel_size=3, stride=2, padding=1), act()]
            c = out_c
        hs, ws = _spatial_sizes(h, len(channels)), _spatial_sizes(w, len(channels))
        self.heads = _Heads(_heads(heads))
        layers += [nn.Flatten(), nn.Linear(c * hs[-1] * ws[-1], hidden), act(), nn.Linear(hidden, self.heads.total)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        batch_shape = x.shape[:-3]
        flat = self.net(x.reshape((-1,) + self.in_shape))
        return self.heads(flat, batch_shape)


class ConvDecoder(nn.Module):
    """Transposed-convolution decoder from a vector to image-shaped heads.

    Mirrors :class:`ConvEncoder`: the output padding of each transposed
    convolution is chosen so the output is exactly ``(C, H, W)``.  Every head
    has the image's shape; heads are stacked along the channel axis.

    :param in_dim: size of the input vector (the latent dimension).
    :param out_shape: ``(C, H, W)`` of each head.
    :param heads: names of the heads, e.g. ``("logits",)`` or ``("loc", "scale")``.
    """

    def __init__(
        self,
        in_dim: int,
        out_shape: Sequence[int],
        heads: Sequence[str],
        *,
        channels: Sequence[int] = (32, 32, 64, 64),
        hidden: int = 256,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.in_dim = _positive_int(in_dim, "in_dim", example="10")
        self.out_shape = _shape(out_shape, "out_shape")
        if len(self.out_shape) != 3:
            raise ValueError(f"Expected out_shape (C, H, W) for a convolutional decoder, got {self.out_shape}")
        channels = check_widths(channels, "channels", example="(32, 32, 64, 64)", allow_empty=False)
        hidden = _positive_int(hidden, "hidden", example="256")
        self.head_names = tuple(heads)
        if not self.head_names:
            raise ValueError("Expected at least one head, got none")
        act = _activation(activation)
        c, h, w = self.out_shape
        hs, ws = _spatial_sizes(h, len(channels)), _spatial_sizes(w, len(channels))
        rev = list(channels)[::-1]
        self.start = (rev[0], hs[-1], ws[-1])
        layers: list[nn.Module] = [
            nn.Linear(self.in_dim, hidden),
            act(),
            nn.Linear(hidden, math.prod(self.start)),
            act(),
            nn.Unflatten(1, self.start),
        ]
        out_channels = rev[1:] + [c * len(self.head_names)]
        for i, (in_c, out_c) in enumerate(zip(rev, out_channels)):
            level = len(channels) - 1 - i  # upsample from level+1 to level
            pad = (hs[level] - 2 * hs[level + 1] + 1, ws[level] - 2 * ws[level + 1] + 1)
            layers.append(nn.ConvTranspose2d(in_c, out_c, 3, stride=2, padding=1, output_padding=pad))
            if i < len(rev) - 1:
                layers.append(act())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        batch_shape = z.shape[:-1]
        out = self.net(z.reshape(-1, self.in_dim))
        chunks = out.chunk(len(self.head_names), dim=1) if len(self.head_names) > 1 else (out,)
        return {name: t.reshape(batch_shape + self.out_shape) for name, t in zip(self.head_names, chunks)}


def resolve_arch(arch: str, x_shape: Shape) -> str:
    """``"mlp"`` or ``"conv"``: what ``arch`` (``"mlp"``, ``"conv"`` or ``"auto"``) builds for inputs of ``x_shape``."""
    if arch == "auto":
        return "conv" if len(x_shape) == 3 and min(x_shape[1:]) >= 16 else "mlp"
    if arch not in ("mlp", "conv"):
        raise ValueError(f"Expected arch in ('auto', 'mlp', 'conv'), got {arch!r}")
    if arch == "conv" and len(x_shape) != 3:
        raise ValueError(f"arch='conv' needs images of shape (C, H, W), got x_shape={x_shape}")
    return arch


def _net_widths(hidden: Sequence[int], channels: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    # both are checked whatever the architecture: a bad value is an error even where "auto" would not use it
    return (
        check_widths(hidden, "hidden", example="(400,)"),
        check_widths(channels, "channels", example="(32, 32, 64, 64)", allow_empty=False),
    )


def make_encoder(
    arch: str,
    x_shape: Shape,
    heads: Mapping[str, int | Sequence[int]],
    *,
    hidden: Sequence[int] = (400,),
    channels: Sequence[int] = (32, 32, 64, 64),
    activation: str = "relu",
) -> nn.Module:
    """An encoder for inputs of shape ``x_shape``; ``arch`` is ``"mlp"``, ``"conv"`` or ``"auto"``."""
    hidden, channels = _net_widths(hidden, channels)
    if resolve_arch(arch, x_shape) == "conv":
        return ConvEncoder(x_shape, heads, channels=channels, hidden=hidden[-1] if hidden else 256, activation=activation)
    return MLP(x_shape, heads, hidden=hidden, activation=activation)


def make_decoder(
    arch: str,
    z_dim: int,
    x_shape: Shape,
    heads: Sequence[str],
    *,
    hidden: Sequence[int] = (400,),
    channels: Sequence[int] = (32, 32, 64, 64),
    activation: str = "relu",
) -> nn.Module:
    """A decoder from ``z_dim`` vectors to heads of shape ``x_shape`` (mirror of :func:`make_encoder`)."""
    hidden, channels = _net_widths(hidden, channels)
    if resolve_arch(arch, x_shape) == "conv":
        return ConvDecoder(z_dim, x_shape, heads, channels=channels, hidden=hidden[-1] if hidden else 256, activation=activation)
    return MLP(z_dim, {name: x_shape for name in heads}, hidden=hidden[::-1], activation=activation)
