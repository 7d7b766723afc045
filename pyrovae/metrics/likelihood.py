r"""Per-point log-likelihood :math:`\log p(x_n)` by importance sampling, and IWAE bounds.

For every data point the guide is the proposal:

.. math::

    \hat p(x_n) = \frac1K \sum_{k=1}^K w_{nk}, \qquad
    w_{nk} = \frac{p(x_n, z_{nk})}{q(z_{nk} \mid x_n)}, \qquad z_{nk} \sim q(\cdot \mid x_n),

reported as :math:`\log \hat p(x_n)` with

* its standard error by the delta method,
  :math:`\operatorname{se} = \sqrt{\widehat{\operatorname{Var}}(w)/K}\,/\,\bar w
  = \sqrt{(K/\mathrm{ESS} - 1)/(K - 1)}`;
* the effective sample size :math:`\mathrm{ESS} = (\sum_k w_{nk})^2 / \sum_k w_{nk}^2`;
* the Pareto :math:`\hat k` of the weights (:func:`arviz.psislw`, Vehtari et al. [2]).
  Above 0.7 the weights' variance is likely infinite: the estimate is then
  unreliable and its standard error too small (Yao et al. [3]).

:math:`\mathbb E \log \hat p(x_n) \le \log p(x_n)`: the estimate is the IWAE
bound with :math:`k = K` (Burda et al. [1]).  The same samples, split into
:math:`\lfloor K/k \rfloor` disjoint groups of :math:`k`, give the IWAE-:math:`k`
bounds :math:`\mathcal L_k = \mathbb E \log \frac1k \sum_{i \le k} w_i`, with
:math:`\mathcal L_1` the ELBO and :math:`\mathcal L_1 \le \mathcal L_k \le
\mathcal L_{k'} \le \log p(x_n)` for :math:`k \le k'`.

What "per point" needs
    Any model/guide pair whose per-point sites are in a vectorized
    ``pyro.plate`` works, not only pyrovae's models: the plate is found from a
    trace of the program, whatever its name (sized by the batch, or broadcast
    over it; ``data_plate=`` names it where several qualify), and the weights
    come from Pyro's traces (the guide traced under a vectorized particle plate,
    the model replayed against it, each site's ``log_prob``), never from
    densities written per model.  Data may be several tensors, ``(x, y)``: the
    estimate is then the conditional :math:`\log p(x_n \mid y_n)`.
    :math:`p(x) = \prod_n p(x_n)` holds, so :math:`\log p(x_n)` exists, when
    **every sample site is inside the per-point plate**: a latent outside it (a
    global latent) couples all points, and a pair with one is refused, naming
    the site, before any sample is drawn.  A model site marked
    ``infer={"enumerate": "parallel"}`` that the guide leaves out (a mixture
    component, as ``TraceEnum_ELBO`` sums it) is summed out exactly for each
    point -- Pyro's plate-aware tensor contraction over the enumerated values,
    inner plates included -- and only the guide's sites are importance-sampled;
    a guide's discrete sites are proposals like any other.  Each site's log-prob is summed over
    every dimension except the particle and data dimensions (inner plates,
    event dimensions), so a point's weight is its own, not the batch's joint:
    ``pyro.infer.Importance`` and ``vectorized_importance_weights`` weight the
    joint of everything passed in (a batch's joint likelihood, ESS near 1).

The true model
    Model and guide are called without training arguments (``kl_weight=1``
    where they take one, and no ``training_kwargs``), and every site's
    ``poutine.scale`` is left out: β, capacities, annealing, the minibatch's
    N/B and a scale the program sets itself are training devices and never
    enter the estimate (:func:`pyrovae.programs.true_model`, the rule every
    evaluation follows; a warning says when a program's own scale is dropped).  Masks are kept: a
    masked site (a missing pixel, say) is not scored, as in Pyro.  A module is
    put in ``eval()`` mode for the evaluation and restored after.

Memory and speed
    Points go ``batch_size`` at a time and samples ``chunk_size`` at a time, so
    the decoder sees at most ``batch_size * chunk_size`` rows at once (default
    about :data:`ROWS_PER_CALL`: a bare decoder is fastest at 1-2 thousand
    rows on a 2-core CPU, but each call also pays Pyro's tracing, so 4096 rows
    were fastest overall, measured by ``benchmarks/log_likelihood.py``; on a
    GPU, try larger chunks).  Fewer where one row's activations are large: the
    default call carries at most :data:`pyrovae.metrics.call_size.CALL_BYTES`
    of module outputs, measured on one point before the first batch (the
    demo's conv decoder on 64x64 sprites gets about 80 rows per call, 1.5x
    faster than 4096 rows, which spent 95% of their CPU time in the kernel;
    ``benchmarks/likelihood_calls.py``).
    Each chunk's log-weights go into one float64 buffer on the CPU of
    ``num_samples * batch_size`` numbers (:math:`\hat k` needs all K of a
    point), reduced once per batch with log-sum-exp; the decoder's outputs
    are never kept.  Peak memory therefore follows ``chunk_size`` (times the
    size of one decoder output) and not K, up to those K numbers per point.
    The buffer and the ``(N,)`` results are allocated once, before the first
    batch, and every batch reuses them: a new buffer per batch fragmented the
    heap after a ``fit`` in the same process, and the peak grew with N
    (K = 5000: +21 / +21 / +366 MiB at N = 1000 / 2000 / 4000; with one buffer +21 to +36 MiB
    at every N, run to run noise; ``benchmarks/log_likelihood.py --after-fit-only``).

Bits per dimension
    ``bits_per_dim`` is :math:`-\overline{\log p(x)} / (D \ln 2)` with :math:`D`
    the number of values in one data point (pixels times channels).  It is the
    standard figure for discrete data (binarized MNIST with a Bernoulli
    likelihood).  For a *density* on continuous data it is not comparable with
    discrete results: for 8-bit images scaled to [0, 1] and dequantized with
    uniform noise, the discrete figure is about the continuous one plus 8.

Example::

    result = log_likelihood(vae, test.x, num_samples=5000)
    print(result.mean, result.bits_per_dim, result.share_khat_above_0_7)
    print(result.bounds[1].mean)   # the ELBO from the same samples

References:
  1. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders.
     arXiv:1509.00519.
  2. A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. Pareto Smoothed
     Importance Sampling. arXiv:1507.02646.
  3. Y. Yao, A. Vehtari, D. Simpson, A. Gelman. Yes, but Did It Work?:
     Evaluating Variational Inference. arXiv:1802.02538.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample

from pyrovae.metrics.call_size import activation_bytes, rows_per_call
from pyrovae.programs import (
    Data,
    PointLayout,
    ProgramError,
    Programs,
    Structure,
    as_data,
    check_positive_int,
    device_of,
    inspect_pair,
    resolve_programs,
    true_model,
    validate_batch,
)

__all__ = ["DEFAULT_BOUNDS", "ROWS_PER_CALL", "BoundResult", "LogLikelihoodResult", "iwae_bound", "log_likelihood"]

#: decoder rows per model call that the default ``batch_size``/``chunk_size`` aim at
ROWS_PER_CALL = 4096
#: the IWAE-k bounds :func:`log_likelihood` reports by default (those with k <= num_samples)
DEFAULT_BOUNDS = (1, 10, 100)
#: points per batch by default: few batches, so the encoder and the per-call Python run rarely
_DEFAULT_BATCH_SIZE = 128
#: the vectorized plate over importance samples, left of every plate of the pair
_PARTICLES = "_importance_particles"


# ----------------------------------------------------------------- results
@dataclasses.dataclass
class BoundResult:
    """IWAE-:math:`k` bound per data point (:math:`k = 1`: the ELBO).

    :ivar value: ``(N,)`` float64, the mean of ``num_estimates`` independent
        estimates :math:`\\log \\frac1k \\sum_{i \\le k} w_i` per point.
    :ivar stderr: ``(N,)`` their standard error (NaN with one estimate).
    :ivar k: samples per estimate.
    :ivar num_estimates: independent estimates per point.
    """

    value: torch.Tensor
    stderr: torch.Tensor
    k: int
    num_estimates: int

    @property
    def mean(self) -> float:
        """The bound averaged over points, in nats."""
        return float(self.value.mean())

    @property
    def mean_stderr(self) -> float:
        """Standard error of :attr:`mean` (points are independent)."""
        return float(self.stderr.pow(2).sum().sqrt() / self.value.numel())


@dataclasses.dataclass
class LogLikelihoodResult:
    """What :func:`log_likelihood` returns; per-point tensors are ``(N,)`` float64 on the CPU.

    :ivar log_px: :math:`\\log \\hat p(x_n)` in nats.
    :ivar stderr: its Monte Carlo standard error (delta method).
    :ivar ess: effective sample size of the importance weights, in ``[1, num_samples]``.
    :ivar khat: Pareto :math:`\\hat k` of the weights (``-inf`` where all
        weights are equal, e.g. with the exact posterior as guide; ``inf``
        where K is too small for a tail to fit -- arviz needs a tail of at
        least 5 of the K weights, K >= 21 -- and NaN for K = 1).
    :ivar num_samples: K, importance samples per point.
    :ivar event_numel: D, values per data point (for bits per dimension).
    :ivar bounds: IWAE-:math:`k` bounds from the same samples, by :math:`k`.
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    num_samples: int
    event_numel: int
    bounds: dict[int, BoundResult] = dataclasses.field(default_factory=dict)

    @property
    def mean(self) -> float:
        """Mean log-likelihood per point, in nats."""
        return float(self.log_px.mean())

    @property
    def mean_stderr(self) -> float:
        """Standard error of :attr:`mean` (points are independent)."""
        return float(self.stderr.pow(2).sum().sqrt() / self.log_px.numel())

    @property
    def bits_per_dim(self) -> float:
        """:math:`-\\overline{\\log p(x)} / (D \\ln 2)`; see the module notes for continuous data."""
        return -self.mean / (self.event_numel * math.log(2))

    @property
    def share_khat_above_0_7(self) -> float:
        """Fraction of points whose :math:`\\hat k > 0.7` (estimate unreliable)."""
        return float((self.khat > 0.7).double().mean())

    def summary(self) -> dict[str, float]:
        """One row for a table: bounds, log p(x) with its standard error, bits/dim, k-hat share."""
        row: dict[str, float] = {}
        for k, bound in sorted(self.bounds.items()):
            row["elbo" if k == 1 else f"iwae_{k}"] = bound.mean
        row.update(
            log_px=self.mean,
            log_px_stderr=self.mean_stderr,
            bits_per_dim=self.bits_per_dim,
            share_khat_above_0_7=self.share_khat_above_0_7,
            num_samples=float(self.num_samples),
        )
        return row


# ------------------------------------------------------------ public API
def log_likelihood(
    vae_or_pair: Any,
    data: Any,
    *,
    num_samples: int = 5000,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    bounds: Sequence[int] | None = None,
    seed: int | None = 0,
    data_plate: str | None = None,
) -> LogLikelihoodResult:
    r"""Estimate :math:`\log p(x_n)` for every data point by importance sampling with the guide.

    :param vae_or_pair: a pyrovae model, any object with ``model``/``guide``
        methods, or a ``(model, guide)`` pair, per-point sites in a vectorized
        ``pyro.plate`` (found by its size) and no latent outside it.
    :param data: a tensor ``(N, ...)``, a pyrovae ``DataSet``, or several tensors
        as :func:`pyrovae.fit` takes them (``(x, y)``: the conditional log p(x | y)).
    :param num_samples: K, importance samples per point.
    :param batch_size: points per model call (default: 128, or ``ROWS_PER_CALL // chunk_size``).
    :param chunk_size: samples per model call (default: ``ROWS_PER_CALL // batch_size``).
    :param bounds: the :math:`k` of the IWAE-:math:`k` bounds to report from the
        same samples, each ``<= num_samples`` (default: those of 1, 10, 100 that fit).
    :param seed: seeds the samples (common random numbers across calls) without
        touching the global RNG; ``None`` draws from the global RNG.
    :param data_plate: the per-point plate's name, where several plates follow the batch.
    :returns: a :class:`LogLikelihoodResult`.
    :raises ValueError: for a pair with a site outside the per-point plate,
        or a latent site that the guide does not propose and the model does not
        mark for enumeration (those it marks are summed out exactly).

    Example::

        result = log_likelihood(vae, x_test, num_samples=5000)
        result.mean, result.mean_stderr, result.bits_per_dim
    """
    check_positive_int("num_samples", num_samples)
    if bounds is None:
        bounds = tuple(k for k in DEFAULT_BOUNDS if k <= num_samples)
    bounds = tuple(bounds)
    for k in bounds:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_samples:
            raise ValueError(f"Expected every bound's k to be an int in [1, num_samples={num_samples}], got {k!r}")
    estimates = _estimate(vae_or_pair, data, num_samples, batch_size, chunk_size, bounds, True, seed, data_plate)
    return LogLikelihoodResult(
        log_px=estimates["log_px"],
        stderr=estimates["stderr"],
        ess=estimates["ess"],
        khat=estimates["khat"],
        num_samples=num_samples,
        event_numel=estimates["event_numel"],
        bounds=estimates["bounds"],
    )


def iwae_bound(
    vae_or_pair: Any,
    data: Any,
    k: int,
    *,
    num_estimates: int = 10,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    seed: int | None = 0,
    data_plate: str | None = None,
) -> BoundResult:
    r"""The IWAE-:math:`k` bound :math:`\mathbb E \log \frac1k \sum_{i \le k} w_i` per data point.

    :math:`k = 1` is the ELBO.  Each point's value is the mean of
    ``num_estimates`` independent estimates (``k * num_estimates`` samples).
    Arguments as :func:`log_likelihood`.

    Example::

        elbo = iwae_bound(vae, x_test, 1, num_estimates=100).mean
        iwae_50 = iwae_bound(vae, x_test, 50).mean
    """
    check_positive_int("k", k)
    check_positive_int("num_estimates", num_estimates)
    estimates = _estimate(vae_or_pair, data, k * num_estimates, batch_size, chunk_size, (k,), False, seed, data_plate)
    return estimates["bounds"][k]


# ------------------------------------------------------------ the estimator
def _estimate(
    obj: Any,
    data: Any,
    num_samples: int,
    batch_size: int | None,
    chunk_size: int | None,
    bounds: tuple[int, ...],
    with_khat: bool,
    seed: int | None,
    data_plate: str | None,
) -> dict[str, Any]:
    """Per-point results over ``data``: batches of points, each through chunks of samples."""
    programs = resolve_programs(obj)
    points = as_data(data, "data")
    points = validate_batch(programs, points, "data")
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if value is not None:
            check_positive_int(name, value)
    if seed is not None:
        check_positive_int("seed", seed, minimum=0)
    device = device_of(programs.owner, points.x)
    kwargs = programs.kwargs(1.0)  # the true model: β = 1, no training_kwargs

    num_points = len(points)
    with _evaluating(programs.owner, device, seed):
        first = points.index(slice(0, _DEFAULT_BATCH_SIZE)).to(device)
        with pyro.validation_enabled(True):  # Pyro's own checks and the program's structure, once
            structure = inspect_pair(programs, first, kwargs, data_plate=data_plate, what="log_likelihood")
        _check_factorises(structure)
        truth = true_model(programs, structure, "log_likelihood")
        layout = _Layout(structure.max_plate_nesting, structure.data_plate, bool(structure.enumerated))
        call_rows = ROWS_PER_CALL
        if batch_size is None or chunk_size is None:  # sized by the activations of one row
            call_rows = _rows_per_call(layout, truth, first, kwargs)
        if batch_size is None:
            batch_size = min(_DEFAULT_BATCH_SIZE, call_rows) if chunk_size is None else max(1, call_rows // chunk_size)
        batch_size = min(batch_size, num_points)
        # Allocated once, before any batch: the per-point results, and one buffer for K log-weights
        # of each point of a batch.  A new K x batch buffer per batch (5 MB at K = 5000) left the
        # heap fragmented after a fit (the peak grew with N); so does any result kept per batch.
        out: dict[str, Any] = {name: torch.empty(num_points, dtype=torch.float64)
                               for name in ("log_px", "stderr", "ess") + (("khat",) if with_khat else ())}
        bound_values = {k: (torch.empty(num_points, dtype=torch.float64), torch.empty(num_points, dtype=torch.float64))
                        for k in bounds}
        buffer = _log_weight_buffer(num_samples, batch_size)
        for start in range(0, num_points, batch_size):
            batch = points.index(slice(start, start + batch_size)).to(device)
            rows = slice(start, start + len(batch))
            # a contiguous (K, B) view of the buffer's first K * B numbers: no copy, for the last batch too
            log_w = buffer[: num_samples * len(batch)].view(num_samples, len(batch))
            chunk = min(num_samples, chunk_size or max(1, call_rows // len(batch)))
            with pyro.validation_enabled(False):
                eps = _fill_log_weights(log_w, layout, truth, batch, kwargs, chunk)
            _reduce_batch(log_w, eps, rows, out, bound_values, with_khat)

    out["event_numel"] = math.prod(points.x.shape[1:])
    out["bounds"] = {
        k: BoundResult(value=value, stderr=stderr, k=k, num_estimates=num_samples // k)
        for k, (value, stderr) in bound_values.items()
    }
    return out


def _rows_per_call(layout: _Layout, programs: Programs, first: Data, kwargs: dict[str, Any]) -> int:
    """Decoder rows per call: :data:`ROWS_PER_CALL` at most, fewer where one row's activations are big (a
    conv decoder), so a call's temporaries stay within what the allocator keeps between calls
    (:mod:`pyrovae.metrics.call_size`).  Measured with one sample of ``first``, the points the
    structure was inspected on (a program may hold per-point parameters for exactly its batch),
    divided by their number, under its own random state (the estimate's draws do not move)."""
    point_bytes = sum(t.numel() * t.element_size() for t in first.tensors())
    devices = [first.x.device] if first.x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
        total = activation_bytes(programs.owner, lambda: layout.log_weights(programs, first, 1, kwargs), point_bytes)
    return rows_per_call(-(-total // len(first)), ROWS_PER_CALL)


def _log_weight_buffer(num_samples: int, batch_size: int) -> torch.Tensor:
    """The one flat float64 CPU buffer of ``num_samples * batch_size`` log-weights that every batch reuses."""
    return torch.empty(num_samples * batch_size, dtype=torch.float64)


def _fill_log_weights(
    log_w: torch.Tensor, layout: _Layout, programs: Programs, xb: Data, kwargs: dict[str, Any], chunk: int
) -> float:
    """Fill ``log_w`` ``(K, B)`` with the batch's log-weights, ``chunk`` samples per model call.

    The buffer holds K numbers per point (k-hat needs them all), never a decoder output.
    :returns: the machine epsilon of the dtype the weights were computed in (for k-hat).
    """
    num_samples = log_w.shape[0]
    for start in range(0, num_samples, chunk):
        part = layout.log_weights(programs, xb, min(chunk, num_samples - start), kwargs)
        log_w[start : start + part.shape[0]] = part
    return torch.finfo(part.dtype).eps


def _reduce_batch(
    log_w: torch.Tensor,
    eps: float,
    rows: slice,
    out: dict[str, torch.Tensor],
    bound_values: dict[int, tuple[torch.Tensor, torch.Tensor]],
    with_khat: bool,
) -> None:
    """Write one batch's per-point results into ``out[name][rows]``; nothing refers to ``log_w`` after."""
    for name, value in zip(("log_px", "stderr", "ess"), _log_mean_exp(log_w)):
        out[name][rows] = value
    if with_khat:
        out["khat"][rows] = _pareto_khat(log_w, eps)
    for k, (value, stderr) in bound_values.items():
        value[rows], stderr[rows] = _iwae_groups(log_w, k)


@contextlib.contextmanager
def _evaluating(owner: Any, device: torch.device, seed: int | None) -> Iterator[None]:
    """No gradients; a module in eval mode (restored after); seeded draws that leave the global RNG alone."""
    module = owner if isinstance(owner, torch.nn.Module) else None
    was_training = module is not None and module.training
    rng = contextlib.nullcontext() if seed is None else torch.random.fork_rng(
        devices=[device] if device.type == "cuda" else []
    )
    try:
        if module is not None:
            module.eval()
        with rng, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        if module is not None:
            module.train(was_training)


def _check_factorises(structure: Structure) -> None:
    """Refuse, naming the site, a program whose :math:`\\log p(x)` is not a sum of per-point terms."""
    what = "log p(x_n) per data point"
    structure.require_vectorized(what)
    if structure.global_latents:
        raise ProgramError(
            f"{what} needs every latent site inside the per-point plate {structure.data_plate!r}, but the model's "
            f"site {structure.global_latents[0]!r} lies outside it (a global latent: it couples all points, so p(x) "
            "does not factorise over them; make it a parameter or estimate the joint likelihood yourself)"
        )
    if structure.outside_observed:
        raise ProgramError(
            f"{what}: the model's observed site {structure.outside_observed[0]!r} lies outside the per-point plate "
            f"{structure.data_plate!r}, so its term belongs to no single point"
        )
    unproposed = sorted(set(structure.local_latents) - set(structure.guide_latents))
    if unproposed:
        raise ProgramError(f"The model's latent sites {unproposed} have no site in the guide to propose them")
    extra = sorted(set(structure.guide_latents) - set(structure.local_latents))
    if extra:
        raise ProgramError(f"The guide's latent sites {extra} are not in the model")


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How to vectorize a pair over importance samples: a particle plate left of every plate."""

    max_plate_nesting: int
    data_plate: str
    #: the model has sites marked ``infer={"enumerate": "parallel"}`` that the guide leaves out
    enumerated: bool = False

    def log_weights(self, programs: Programs, xb: Data, num: int, kwargs: dict[str, Any]) -> torch.Tensor:
        """``(num, B)``: :math:`\\log p(x_n, z_{nk}) - \\log q(z_{nk} \\mid x_n)` from one vectorized pass.

        As ``pyro.infer.Importance`` does, but under a particle plate: the guide
        traced, the model replayed against it, each site scored (masked, never scaled)
        per point by :class:`pyrovae.programs.PointLayout`.  The model's enumerated
        sites are summed out exactly (:meth:`_enumerated_log_density`), so the
        weight is :math:`\\log \\sum_y p(x_n, y, z_{nk}) - \\log q(z_{nk} \\mid x_n)`.
        """
        guide_trace = poutine.trace(self._vectorize(programs.guide, num)).get_trace(*xb.args, **xb.kwargs, **kwargs)
        model = self._vectorize(programs.model, num)
        if self.enumerated:  # enumeration dims left of the particle plate, as TraceEnum_ELBO places them;
            # inside the replay, so that enum also sees the replayed sites and records their enumerated inputs
            model = poutine.enum(model, first_available_dim=-(self.max_plate_nesting + 2))
        model = poutine.replay(model, trace=guide_trace)
        model_trace = poutine.trace(model).get_trace(*xb.args, **xb.kwargs, **kwargs)
        points = PointLayout.of(model_trace, guide_trace, self.data_plate, _PARTICLES)
        log_p = (self._enumerated_log_density(model_trace, points) if self.enumerated
                 else points.log_density(model_trace, scaled=False))
        return log_p - points.log_density(guide_trace, scaled=False)

    def _enumerated_log_density(self, model_trace: Trace, points: PointLayout) -> torch.Tensor:
        """Per-point :math:`\\log \\sum_y p(x_n, y, z_{nk})`, ``(K, B)``: every site's log-prob (masked,
        unscaled: the programs are :func:`~pyrovae.programs.true_model`'s) contracted by Pyro's
        plate-aware tensor message passing (:func:`pyro.ops.contract.contract_to_tensor`, as
        ``TraceEnum_ELBO`` uses it): log-sum-exp over the enumeration dimensions, a sum over every
        plate but the particle and data plates, which stay."""
        # every site is inside the data plate here (PointLayout.of refused any other), so the sums stay per point
        model_trace.compute_log_prob()
        model_trace.pack_tensors()
        tree: OrderedDict[frozenset, list[torch.Tensor]] = OrderedDict()
        sum_dims: set[str] = set()
        for site in model_trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            ordinal = frozenset(model_trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)
            tree.setdefault(ordinal, []).append(site["packed"]["log_prob"])
            if site["infer"].get("_enumerate_dim") is not None:
                sum_dims.add(site["infer"]["_enumerate_symbol"])
        keep = frozenset(model_trace.plate_to_symbol[name] for name in (_PARTICLES, self.data_plate))
        # a kept plate no term varies along (the particles, when no log-prob depends on them) is
        # broadcast at size 1; per_point expands it
        total = contract_to_tensor(tree, sum_dims, target_ordinal=keep, ring=LogRing(dim_to_size=dict.fromkeys(keep, 1)))
        return points.per_point(packed.unpack(total, model_trace.symbol_to_dim))

    def _vectorize(self, fn: Callable, num: int) -> Callable:
        def vectorized(*args: Any, **kwargs: Any) -> Any:
            with pyro.plate(_PARTICLES, num, dim=-(self.max_plate_nesting + 1)):
                return fn(*args, **kwargs)

        return vectorized


# ------------------------------------------------------------ reductions
def _log_mean_exp(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per column of ``(K, B)`` log-weights: log of the mean weight, its delta-method standard
    error :math:`\sqrt{\widehat{\operatorname{Var}}(w)/K}/\bar w`, and the ESS :math:`(\sum w)^2/\sum w^2`."""
    num = log_w.shape[0]
    top = log_w.max(0).values
    w = torch.exp(log_w - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))  # <= 1, no overflow
    mean = w.mean(0)
    stderr = _std(w) / mean / math.sqrt(num)  # two-pass: equal weights give exactly 0
    ess = w.sum(0) ** 2 / w.pow(2).sum(0)
    return torch.logsumexp(log_w, 0) - math.log(num), stderr, ess


def _iwae_groups(log_w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """IWAE-k per column from disjoint groups of k samples: (mean over groups, its standard error)."""
    num_groups = log_w.shape[0] // k
    groups = log_w[: num_groups * k].reshape(num_groups, k, log_w.shape[1])
    values = torch.logsumexp(groups, dim=1) - math.log(k)
    return values.mean(0), _std(values) / math.sqrt(num_groups)


def _std(values: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation of each column; NaN from a single row (no spread to measure)."""
    if values.shape[0] < 2:
        return torch.full_like(values[0], math.nan)
    return values.std(0)


def _pareto_khat(log_w: torch.Tensor, eps: float) -> torch.Tensor:
    """Pareto k-hat per point (column) of ``(K, B)`` log-weights, by :func:`arviz.psislw`.

    ``eps`` is the machine epsilon of the dtype the weights were computed in.
    """
    if log_w.shape[0] < 2:
        return torch.full_like(log_w[0], math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz announces its refactor on import
        import arviz

        # a tail too short or too flat to fit makes arviz divide by 0 on the way to its answer (inf)
        warnings.simplefilter("ignore", RuntimeWarning)
        khat = torch.as_tensor(arviz.psislw(log_w.T.numpy().copy())[1], dtype=torch.float64)
    # Weights equal to within rounding (an exact guide) are bounded, k = -inf;
    # arviz would fit a Pareto tail to the rounding noise, or answer inf.
    spread = log_w.max(0).values - log_w.min(0).values
    flat = spread <= math.sqrt(eps) * log_w.abs().max(0).values.clamp(min=1.0)
    return torch.where(flat, torch.tensor(-math.inf, dtype=torch.float64), khat)
