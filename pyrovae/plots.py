"""Pictures of a trained model: reconstructions, samples, traversals, KL per dimension, curves.

Image grids are written with torchvision's ``save_image`` (PNG); charts are
drawn on a :class:`matplotlib.figure.Figure` with its own Agg canvas, imported
inside the functions that draw them.  Neither ``matplotlib.pyplot`` nor the
caller's backend is touched: a notebook or GUI session keeps its own.  Every
function takes the output path and returns it.

Models are asked, never named: reconstructions come from the model's
``reconstruct(x)``, samples from its ``sample(n)``; traversals and the KL per
dimension read the latent site ``"z"`` of ``model(x)``, ``posterior(x)``,
``prior()``, ``likelihood(z)``, ``z_dim`` and ``x_shape`` -- what
:class:`pyrovae.VAE` has.  A picture that does not apply to a model (discrete
codes, two latent layers, a KL without closed form) raises
:class:`PlotNotApplicable` in one line naming the class and why, before drawing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PlotNotApplicable",
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


class PlotNotApplicable(ValueError):
    """A picture that does not apply to this model (discrete codes, no single latent "z", no closed-form KL...).

    Raised in one line naming the model's class and the reason, before anything is drawn;
    :func:`pyrovae.experiment.run` skips that picture and records why.
    """


def _name(vae: Any) -> str:
    return type(vae).__name__


def _hook(vae: Any, hook: str, what: str) -> Any:
    """The model's method ``hook``, or :class:`PlotNotApplicable` naming the class."""
    method = getattr(vae, hook, None)
    if not callable(method):
        raise PlotNotApplicable(f"{_name(vae)} has no {hook}() method: no {what}")
    return method


def _prior(vae: Any, what: str) -> Any:
    """The model's ``prior()``, or :class:`PlotNotApplicable` where it has no single one (several latent sites)."""
    try:
        return vae.prior()
    except NotImplementedError as e:
        raise PlotNotApplicable(f"{_name(vae)} has no single prior p(z) ({e}): no {what}") from None


def _latent_site_z(vae: Any, x: torch.Tensor, what: str) -> Any:
    """The distribution at the model's latent site ``"z"`` (one traced data point).

    ``posterior``/``prior`` describe the site ``"z"`` (Pyro vocabulary); a model whose
    latents are other sites (``z1``/``z2`` layers, ``z_top``/``z_bottom`` codes) has no
    such single vector, whatever the shapes of its hooks happen to be.
    """
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    trace = poutine.trace(vae.model).get_trace(x[:1].to(_device(vae)))
    latents = [name for name, site in trace.nodes.items()
               if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]
    if "z" not in latents:
        raise PlotNotApplicable(f"{_name(vae)} has no latent site 'z' (its latent sites: {', '.join(latents)}): no {what}")
    return trace.nodes["z"]["fn"]


def _decode_mean(vae: Any, z: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The mean of p(x | z) from the model's own ``likelihood(z)`` (a mixture over a label for M2, say);
    where that distribution has no closed-form mean (an autoregressive decoder), one draw of it
    with a fixed seed (the global RNG is left untouched)."""
    likelihood = vae.likelihood(z)
    try:
        return likelihood.mean
    except NotImplementedError:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return likelihood.sample()


@torch.no_grad()
def reconstruction_grid(vae: Any, x: torch.Tensor, path: str | os.PathLike, *, num: int = 16) -> Path:
    """Pairs of rows: data points, then the model's ``reconstruct(x)`` of them.

    For :class:`pyrovae.VAE` that is the mean of p(x | z) at the posterior mean; each
    variant says what its reconstruction is (codes for a VQ-VAE, the classifier's label
    for M2, teacher-forced pixels for an autoregressive decoder).

    :param vae: the model (anything with ``x_shape`` and ``reconstruct(x)``).
    :param x: data points; the first ``num`` are drawn, 8 to a row.
    :param path: the PNG file to write (its folder is created).
    :param num: how many data points to draw.
    :returns: ``path``.
    :raises PlotNotApplicable: the model has no ``reconstruct`` (or it raises ``NotImplementedError``).
    """
    reconstruct = _hook(vae, "reconstruct", "reconstruction grid")
    x = x[:num].to(_device(vae))
    try:
        recon = reconstruct(x)
    except NotImplementedError as e:
        raise PlotNotApplicable(f"{_name(vae)} cannot reconstruct ({e}): no reconstruction grid") from None
    rows = []
    per_row = min(8, len(x))
    for start in range(0, len(x), per_row):
        rows += [as_images(x[start : start + per_row], vae.x_shape), as_images(recon[start : start + per_row], vae.x_shape)]
    return _save(torch.cat(rows), path, nrow=per_row)


@torch.no_grad()
def samples_grid(vae: Any, path: str | os.PathLike, *, num: int = 64, seed: int = 0) -> Path:
    """The model's ``sample(num)`` under a fixed seed: for :class:`pyrovae.VAE` the means of
    p(x | z) for draws of z from the prior; each variant draws from its own generative story
    (ancestrally through both layers, a label then z for M2, pixel by pixel for an
    autoregressive decoder, uniform codes for a VQ-VAE).

    :param vae: the model (anything with ``x_shape`` and ``sample(num_samples)``).
    :param path: the PNG file to write (its folder is created).
    :param num: how many draws (a square grid of about ``sqrt(num)`` columns).
    :param seed: seeds the draws (the global RNG is left untouched).
    :returns: ``path``.
    :raises PlotNotApplicable: the model has no ``sample`` (or it raises ``NotImplementedError``).
    """
    sample = _hook(vae, "sample", "samples grid")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            x = sample(num)
        except NotImplementedError as e:
            raise PlotNotApplicable(f"{_name(vae)} cannot sample ({e}): no samples grid") from None
    return _save(as_images(x, vae.x_shape), path, nrow=int(math.ceil(math.sqrt(num))))


@torch.no_grad()
def kl_per_dimension(vae: Any, x: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
    """Average KL(q(z_j | x) || p(z_j)) for each latent dimension j, in nats.

    Needs the KL in closed form for each of the ``z_dim`` variables of the latent site
    ``"z"``: factorised q and p (diagonal Normals, independent Bernoulli bits or
    categoricals) with a registered ``kl_divergence``.

    :param vae: the model (``posterior(x)``, ``prior()``, ``model(x)``, ``z_dim``).
    :param x: the data points to average over.
    :param batch_size: points per encoder call (default: as many as keep one call's activations
        within :data:`pyrovae.metrics.call_size.CALL_BYTES`, at most 1000).
    :returns: ``(z_dim,)`` on the CPU.
    :raises PlotNotApplicable: no single latent ``"z"``, no single prior, or no closed-form KL per dimension
        (a mixture prior, say), checked on the first point before the pass over ``x``.
    """
    from torch.distributions import kl_divergence

    from pyrovae.metrics.call_size import activation_bytes, rows_per_call
    from pyrovae.metrics.collapse import kl_per_dimension as collapse_kl_per_dimension

    what = "KL per dimension"
    _latent_site_z(vae, x, what)
    prior = _prior(vae, what)
    prior = getattr(prior, "base_dist", prior)

    def per_point(xb: torch.Tensor) -> torch.Tensor:
        q = vae.posterior(xb.to(_device(vae)))
        q = getattr(q, "base_dist", q)
        try:
            # expanded: some closed forms (Bernoulli's) index with masks and do not broadcast
            kl = kl_divergence(q, prior.expand(q.batch_shape))
        except NotImplementedError:
            raise PlotNotApplicable(f"{_name(vae)} has no closed-form KL({type(q).__name__} || "
                                    f"{type(prior).__name__}) per dimension: no {what}") from None
        if tuple(kl.shape) != (len(xb), vae.z_dim):
            raise PlotNotApplicable(f"{_name(vae)}'s KL(q || p) has shape {tuple(kl.shape[1:])} per point, not "
                                    f"(z_dim={vae.z_dim},): no {what}")
        return kl

    per_point(x[:1])
    if batch_size is None:
        one = x[:1].to(_device(vae))
        batch_size = rows_per_call(activation_bytes(vae, lambda: vae.posterior(one), one.numel() * one.element_size()),
                                   1000)
    if len(x) < 2:  # the metric averages over a data set of at least two points
        return per_point(x).sum(0).cpu()
    device = _device(vae)
    result = collapse_kl_per_dimension(lambda xb: vae.posterior(xb.to(device)), x, vae.prior(),
                                       points_per_call=batch_size)
    return torch.tensor(result["kl_per_dimension"], dtype=torch.get_default_dtype())


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
    prior standard deviations around the prior's mean of that dimension (Higgins
    et al.'s convention; for a standard normal prior, exactly ``[-limit, limit]``),
    or, with ``relative=True``, around the posterior mean.  Rows are ordered by
    decreasing KL where the KL per dimension is in closed form (:func:`kl_per_dimension`),
    else in natural order (a mixture prior, say); one block of ``len(dims)`` rows per
    seed image.  Each image is the mean of p(x | z) (``likelihood(z).mean``), or one
    draw of it with a fixed seed where that has no closed-form mean (an autoregressive decoder).
    The image is a grid of ``min(num_seeds, len(x)) · len(dims)`` rows by ``num_values`` columns.

    Applies only to a continuous latent vector: the model's latent site ``"z"``, not
    discrete, with ``posterior(x).mean`` of shape ``(N, z_dim)`` and a ``prior()``
    whose per-dimension mean and standard deviation are known.

    :param vae: the model (``posterior(x)``, ``prior()``, ``likelihood(z)``, ``model(x)``, ``z_dim``, ``x_shape``).
    :param x: data points; the first ``num_seeds`` are the seed images (all of them if fewer).
    :param path: the PNG file to write.
    :param num_seeds: seed images (>= 1).
    :param num_values: columns per row (>= 2).
    :param limit: the traversal's half-width, in prior standard deviations (> 0).
    :param relative: traverse around the posterior mean instead of around the prior's mean.
    :param dims: the latent dimensions to draw, in row order (default: all, by decreasing KL where it is analytic).
    :param order_by_kl: KL per dimension used to order the rows (default: :func:`kl_per_dimension` on ``x``).
    :returns: ``path``.
    :raises PlotNotApplicable: the model has no such latent vector (see above); nothing is drawn.
    """
    if not (isinstance(num_seeds, int) and num_seeds >= 1):
        raise ValueError(f"Expected num_seeds an int >= 1, got {num_seeds!r}")
    if not (isinstance(num_values, int) and num_values >= 2):
        raise ValueError(f"Expected num_values an int >= 2, got {num_values!r}")
    if not limit > 0:
        raise ValueError(f"Expected limit > 0, got {limit!r}")
    loc, scale = _traversal_axes(vae, x)
    if dims is None:
        if order_by_kl is None:
            try:
                order_by_kl = kl_per_dimension(vae, x)
            except PlotNotApplicable:
                order_by_kl = None  # no closed-form KL: natural order
        dims = list(range(vae.z_dim)) if order_by_kl is None else torch.argsort(order_by_kl, descending=True).tolist()
    offsets = torch.linspace(-limit, limit, num_values)
    blocks = []
    for seed_x in x[:num_seeds].to(_device(vae)):
        base = vae.posterior(seed_x.unsqueeze(0)).mean[0]
        z = base.repeat(len(dims), num_values, 1)
        for row, d in enumerate(dims):
            z[row, :, d] = (base[d] if relative else loc[d]) + offsets.to(z) * scale[d]
        blocks.append(as_images(_decode_mean(vae, z.reshape(-1, vae.z_dim)), vae.x_shape))
    return _save(torch.cat(blocks), path, nrow=num_values)


def _traversal_axes(vae: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior's mean and standard deviation per dimension, or :class:`PlotNotApplicable` (see :func:`traversal_grid`)."""
    what = "latent traversal"
    site = _latent_site_z(vae, x, what)
    if site.support.is_discrete or site.has_enumerate_support:
        raise PlotNotApplicable(f"{_name(vae)} has a discrete latent 'z' ({type(site).__name__}): no {what}")
    mean = vae.posterior(x[:1].to(_device(vae))).mean
    if tuple(mean.shape) != (1, vae.z_dim):
        raise PlotNotApplicable(f"{_name(vae)}'s posterior mean has shape {tuple(mean.shape[1:])} per point, "
                                f"not a vector of z_dim={vae.z_dim}: no {what}")
    prior = _prior(vae, what)
    try:
        loc, scale = prior.mean, prior.stddev
    except NotImplementedError:
        raise PlotNotApplicable(f"{_name(vae)}'s prior {type(prior).__name__} has no per-dimension mean and "
                                f"standard deviation: no {what}") from None
    if tuple(loc.shape) != (vae.z_dim,):
        raise PlotNotApplicable(f"{_name(vae)}'s prior has event shape {tuple(loc.shape)}, not (z_dim={vae.z_dim},): no {what}")
    return loc, scale


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
