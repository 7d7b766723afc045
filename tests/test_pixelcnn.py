"""PixelCNN building blocks: exact causality through the gradient, masks, conditioning and bad input."""

from __future__ import annotations

import pytest
import torch

from pyrovae.pixelcnn import MaskedConv2d, PixelCNN

H, W = 5, 6


def _jacobian(net: PixelCNN, x: torch.Tensor, **cond) -> torch.Tensor:
    # d out[b, o, i, j] / d x[b', c, k, l] for every pair: (B, O, H, W, B, C, H, W)
    return torch.autograd.functional.jacobian(lambda inp: net(inp, **cond), x)


def _before(i: int, j: int) -> torch.Tensor:
    # 1 where position (k, l) comes strictly before (i, j) in raster order
    order = torch.arange(H * W).reshape(H, W)
    return order < order[i, j]


@pytest.mark.parametrize(
    "conditioning", ["none", "vec", "map", "both"]
)
def test_output_depends_only_on_earlier_positions_exactly(conditioning):
    torch.manual_seed(0)
    net = PixelCNN(2, 3, hidden_channels=6, num_layers=3, kernel_size=3,
                   cond_channels=2 if conditioning in ("map", "both") else 0,
                   cond_dim=4 if conditioning in ("vec", "both") else 0).double()
    x = torch.randn(2, 2, H, W, dtype=torch.double)
    cond = {}
    if net.cond_channels:
        cond["cond_map"] = torch.randn(2, 2, H, W, dtype=torch.double)
    if net.cond_dim:
        cond["cond_vec"] = torch.randn(2, 4, dtype=torch.double)
    jac = _jacobian(net, x, **cond).abs()
    for i in range(H):
        for j in range(W):
            g = jac[:, :, i, j]  # (B, O, B', C, H, W)
            allowed = _before(i, j)
            # nothing at or after (i, j) in raster order, and nothing across the batch
            assert torch.all(g[:, :, :, :, ~allowed] == 0), (i, j)
            assert torch.all(g[0, :, 1] == 0) and torch.all(g[1, :, 0] == 0)
    # not vacuous: the left and upper neighbours are seen (numbers are random, so never exactly 0)
    assert jac[0, :, 2, 3, 0, :, 2, 2].sum() > 0
    assert jac[0, :, 2, 3, 0, :, 1, 3].sum() > 0
    # and the first position sees no input at all: it is the unconditional first factor
    assert torch.all(jac[:, :, 0, 0] == 0)


def test_conditioning_changes_every_position():
    torch.manual_seed(0)
    net = PixelCNN(1, 1, hidden_channels=4, num_layers=2, kernel_size=3, cond_channels=1, cond_dim=2)
    x = torch.rand(1, 1, H, W)
    cm, cv = torch.randn(1, 1, H, W), torch.randn(1, 2)
    base = net(x, cond_map=cm, cond_vec=cv)
    assert torch.all(net(x, cond_map=cm, cond_vec=cv + 1) != base)
    assert torch.all(net(x, cond_map=cm + 1, cond_vec=cv) != base)


@pytest.mark.parametrize("mask", ["A", "B"])
def test_mask_pattern_is_raster_order(mask):
    conv = MaskedConv2d(1, 1, (3, 5), mask=mask)
    expected = torch.tensor([[1, 1, 1, 1, 1], [1, 1, int(mask == "B"), 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float)
    assert torch.equal(conv.mask[0, 0], expected)
    assert conv(torch.rand(2, 1, 7, 9)).shape == (2, 1, 7, 9)  # "same" padding by default


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel_size": 4}, "kernel_size"),
        ({"mask": "C"}, "mask"),
        ({"stride": 2}, "stride"),
    ],
)
def test_masked_conv_rejects_bad_arguments(kwargs, match):
    args = {"kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        MaskedConv2d(1, 1, args.pop("kernel_size"), **args)


def test_pixelcnn_rejects_bad_input():
    with pytest.raises(ValueError, match="num_layers"):
        PixelCNN(1, 1, num_layers=0)
    net = PixelCNN(1, 1, hidden_channels=4, num_layers=1, cond_dim=3)
    with pytest.raises(ValueError, match="x of shape"):
        net(torch.rand(2, 3, 4, 4), cond_vec=torch.rand(2, 3))
    with pytest.raises(ValueError, match="cond_vec"):
        net(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="cond_map=None"):
        net(torch.rand(2, 1, 4, 4), cond_map=torch.rand(2, 1, 4, 4), cond_vec=torch.rand(2, 3))
