"""Pictures of a trained model: reconstructions, samples, traversals, KL per dimension, curves.

Image grids are written with torchvision's ``save_image`` (PNG); charts are
drawn on a :class:`matplotlib.figure.Figure` with its own Agg canvas, imported
inside the functions that draw them.  Neither ``matplotlib.pyplot`` nor the
caller's backend is touched: a notebook or GUI session keeps its own.  Every
function takes the output path and returns it.

Models are used through a small interface: ``x_shape``, ``z_dim``,
``posterior(x)`` (a distribution with ``.mean``/``.base_dist``), ``prior()``,
``decoder`` and ``observation.mean(params)`` -- what :class:`pyrovae.VAE` has.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "as_images",
    "reconstruction_grid",
    "samples_grid",
    "traversal_grid",
    "kl_per_dimension",
    "kl_bar_chart",
    "history_plot",
    "tradeoff_plot",
]


#: how the trade-off figure writes the swept parameters of :data:`pyrovae.MODELS`
SYMBOLS: dict[str, str] = {"beta": "β", "gamma": "γ", "capacity_max": "C_max", "lambda_od": "λ_od", "kl_weight": "KL weight"}


def as_images(x: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
    """Reshape a batch of data points to ``(N, C, H, W)`` for drawing.

    Flat vectors of a square length are drawn as square grey images.
    """
    x_shape = tuple(x_shape)
    if len(x_shape) == 3:
        return x.reshape(-1, *x_shape)
    if len(x_shape) == 2:
        return x.reshape(-1, 1, *x_shape)
    side = math.isqrt(x_shape[0])
    if side * side != x_shape[0]:
        raise ValueError(f"Cannot draw data points of shape {x_shape} as images (not a square length)")
    return x.reshape(-1, 1, side, side)


def _save(images: torch.Tensor, path: str | os.PathLike, nrow: int) -> Path:
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = images.detach().float().cpu()
    if images.shape[1] not in (1, 3):  # other channel counts: show the first channel
        images = images[:, :1]
    save_image(images.clamp(0, 1), path, nrow=nrow, padding=2, pad_value=0.5)
    return path


def _figure(size: tuple[float, float]) -> Any:
    """A figure on its own Agg canvas: nothing global (pyplot's figure list, the backend) is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig: Any, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _decode_mean(vae: Any, z: torch.Tensor) -> torch.Tensor:
    return vae.observation.mean(vae.decoder(z))


@torch.no_grad()
def reconstruction_grid(vae: Any, x: torch.Tensor, path: str | os.PathLike, *, num: int = 16) -> Path:
    """Pairs of rows: data points, then the mean of p(x | z) at their posterior means.

    :param vae: the model (see the module's interface).
    :param x: data points; the first ``num`` are drawn, 8 to a row.
    :param path: the PNG file to write (its folder is created).
    :param num: how many data points to draw.
    :returns: ``path``.
    """
    x = x[:num].to(_device(vae))
    recon = _decode_mean(vae, vae.posterior(x).mean)
    rows = []
    per_row = min(8, len(x))
    for start in range(0, len(x), per_row):
        rows += [as_images(x[start : start + per_row], vae.x_shape), as_images(recon[start : start + per_row], vae.x_shape)]
    return _save(torch.cat(rows), path, nrow=per_row)


@torch.no_grad()
def samples_grid(vae: Any, path: str | os.PathLike, *, num: int = 64, seed: int = 0) -> Path:
    """Means of p(x | z) for ``num`` draws of z from the prior (fixed seed).

    :param vae: the model (see the module's interface).
    :param path: the PNG file to write (its folder is created).
    :param num: how many draws (a square grid of about ``sqrt(num)`` columns).
    :param seed: seeds the draws (the global RNG is left untouched).
    :returns: ``path``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = vae.prior().sample((num,))
    return _save(as_images(_decode_mean(vae, z), vae.x_shape), path, nrow=int(math.ceil(math.sqrt(num))))


@torch.no_grad()
def kl_per_dimension(vae: Any, x: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
    """Average KL(q(z_j | x) || p(z_j)) for each latent dimension j, in nats (diagonal Normal q and p).

    :param vae: the model (see the module's interface).
    :param x: the data points to average over.
    :param batch_size: points per encoder call (default: as many as keep one call's activations
        within :data:`pyrovae.metrics.call_size.CALL_BYTES`, at most 1000).
    :returns: ``(z_dim,)`` on the CPU.
    """
    from torch.distributions import kl_divergence

    from pyrovae.metrics.call_size import activation_bytes, rows_per_call

    if batch_size is None:
        one = x[:1].to(_device(vae))
        batch_size = rows_per_call(activation_bytes(vae, lambda: vae.posterior(one), one.numel() * one.element_size()),
                                   1000)
    total = torch.zeros(vae.z_dim)
    prior = vae.prior()
    prior = getattr(prior, "base_dist", prior)
    for xb in x.split(batch_size):
        q = vae.posterior(xb.to(_device(vae)))
        total += kl_divergence(getattr(q, "base_dist", q), prior).sum(0).cpu()
    return total / x.shape[0]


@torch.no_grad()
def traversal_grid(
    vae: Any,
    x: torch.Tensor,
    path: str | os.PathLike,
    *,
    num_seeds: int = 3,
    num_values: int = 9,
    limit: float = 3.0,
    relative: bool = False,
    dims: Sequence[int] | None = None,
    order_by_kl: torch.Tensor | None = None,
) -> Path:
    """Latent traversals: one row per latent dimension, ``num_values`` columns.

    Each row starts from a seed image's posterior mean and changes one latent
    dimension only, to ``num_values`` evenly spaced values in ``[-limit, limit]``
    (in prior standard deviations, Higgins et al.'s convention), or, with
    ``relative=True``, to the posterior mean plus those offsets.  Rows are
    ordered by decreasing KL; one block of ``len(dims)`` rows per seed image.
    The image is a grid of ``min(num_seeds, len(x)) · len(dims)`` rows by ``num_values`` columns.

    :param vae: the model (see the module's interface).
    :param x: data points; the first ``num_seeds`` are the seed images (all of them if fewer).
    :param path: the PNG file to write.
    :param num_seeds: seed images (>= 1).
    :param num_values: columns per row (>= 2).
    :param limit: the traversal's half-width, in prior standard deviations (> 0).
    :param relative: traverse around the posterior mean instead of around 0.
    :param dims: the latent dimensions to draw, in row order (default: all, by decreasing KL).
    :param order_by_kl: KL per dimension used to order the rows (default: :func:`kl_per_dimension` on ``x``).
    :returns: ``path``.
    """
    if not (isinstance(num_seeds, int) and num_seeds >= 1):
        raise ValueError(f"Expected num_seeds an int >= 1, got {num_seeds!r}")
    if not (isinstance(num_values, int) and num_values >= 2):
        raise ValueError(f"Expected num_values an int >= 2, got {num_values!r}")
    if not limit > 0:
        raise ValueError(f"Expected limit > 0, got {limit!r}")
    if dims is None:
        kl = order_by_kl if order_by_kl is not None else kl_per_dimension(vae, x)
        dims = torch.argsort(kl, descending=True).tolist()
    values = torch.linspace(-limit, limit, num_values)
    blocks = []
    for seed_x in x[:num_seeds].to(_device(vae)):
        base = vae.posterior(seed_x.unsqueeze(0)).mean[0]
        z = base.repeat(len(dims), num_values, 1)
        for row, d in enumerate(dims):
            z[row, :, d] = values.to(z) + (base[d] if relative else 0.0)
        blocks.append(as_images(_decode_mean(vae, z.reshape(-1, vae.z_dim)), vae.x_shape))
    return _save(torch.cat(blocks), path, nrow=num_values)


def kl_bar_chart(kl: torch.Tensor, path: str | os.PathLike) -> Path:
    """Bar chart of KL per latent dimension (nats).

    :param kl: ``(z_dim,)`` KL per dimension, e.g. from :func:`kl_per_dimension`.
    :param path: the PNG file to write (its folder is created).
    :returns: ``path``.
    """
    fig = _figure((max(4, 0.4 * len(kl)), 3))
    ax = fig.subplots()
    ax.bar(range(len(kl)), kl.tolist(), color="tab:blue")
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL(q(z_j|x) || p(z_j)) [nats]")
    ax.set_xticks(range(len(kl)))
    return _save_figure(fig, path)


def history_plot(history: Sequence[Mapping[str, float]], path: str | os.PathLike) -> Path:
    """Training loss and held-out ELBO per epoch.

    :param history: ``fit``'s per-epoch rows (``epoch``, ``train_loss``, optionally ``valid_elbo``).
    :param path: the PNG file to write (its folder is created).
    :returns: ``path``.
    """
    epochs = [row["epoch"] for row in history]
    fig = _figure((5, 3.2))
    ax = fig.subplots()
    ax.plot(epochs, [-row["train_loss"] for row in history], label="train objective / point")
    if history and "valid_elbo" in history[0]:
        ax.plot(epochs, [row["valid_elbo"] for row in history], label="held-out ELBO / point (β = 1)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats")
    ax.legend()
    return _save_figure(fig, path)


def _device(vae: Any) -> torch.device:
    for p in vae.parameters():
        return p.device
    return torch.device("cpu")


def tradeoff_plot(rows: Sequence[Mapping[str, float]], path: str | os.PathLike, *, parameter: str = "beta") -> Path:
    """The β trade-off: reconstruction error (x) against each disentanglement score (y), one panel each.

    :param rows: one mapping per run with ``reconstruction_error``, the swept ``parameter``
        and the scores to draw (e.g. :func:`pyrovae.experiment.sweep`'s rows).
    :param path: the PNG file to write (its folder is created).
    :param parameter: the key of the swept value in each row (each point is labelled with it).
    :returns: ``path``.
    """
    skip = {parameter, "reconstruction_error", "test_elbo"}
    label = SYMBOLS.get(parameter, parameter)
    scores = [k for k in rows[0] if k not in skip and not k.endswith("_train") and not k.endswith("_dims")] if rows else []
    panels = scores or ["test_elbo"]
    fig = _figure((3.2 * len(panels), 3))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, key in zip(axes[0], panels):
        xs = [row["reconstruction_error"] for row in rows]
        ys = [row[key] for row in rows]
        ax.plot(xs, ys, "o-")
        for row, x, y in zip(rows, xs, ys):
            ax.annotate(f"{label}={row[parameter]:g}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("reconstruction error [nats]")
        ax.set_ylabel(key)
    return _save_figure(fig, path)
