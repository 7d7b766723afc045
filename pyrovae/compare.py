r"""Compare gradient estimators on one model: bound, gradient variance, SNR, time.

For each objective, :func:`compare_estimators` draws ``num_repeats`` gradient
estimates on the same minibatch at the model's current parameters and reports,
separately for the guide's (encoder) and the model's (decoder) parameters,

* the gradient variance, :math:`\frac1P \sum_p \widehat{\mathrm{Var}}[g_p]`, the
  per-coordinate variance across draws averaged over the :math:`P` coordinates;
* the signal-to-noise ratio, :math:`\frac1P \sum_p |\hat{\mathbb E}[g_p]| / \widehat{\mathrm{sd}}[g_p]`
  (Rainforth et al. 2018), over coordinates whose draws vary;

with the objective's bound per data point (mean ± standard error over draws)
and the median seconds per step.  Gradients are per data point (the batch
sum divided by its size).  Draw ``r`` uses seed ``seed + r`` for every
objective, so the objectives see common random numbers where their sampling
coincides.

A Gaussian latent is differentiable, so the same VAE shows the pathwise and
the likelihood-ratio estimator side by side: ``"elbo"`` against
``"graph:pathwise=False"`` (REINFORCE with a decaying-average baseline).  The
defaults do exactly that, and add the importance-weighted estimators
(``iwae``, ``dreg``, ``rws``) and ``stl``.

References:
  1. T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood, Y. W. Teh.
     Tighter Variational Bounds are Not Necessarily Better. arXiv:1802.04537.
  2. G. Roeder, Y. Wu, D. Duvenaud. Sticking the Landing. arXiv:1703.09194.
  3. G. Tucker, D. Lawson, S. Gu, C. J. Maddison. Doubly Reparameterized Gradient
     Estimators for Monte Carlo Objectives. arXiv:1810.04152.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO

from pyrovae.objectives import make_objective
from pyrovae.objectives.graph import BASELINE_PREFIX
from pyrovae.objectives.importance import param_leaves
from pyrovae.programs import resolve_programs

__all__ = ["DEFAULT_OBJECTIVES", "EstimatorComparison", "EstimatorStats", "compare_estimators", "parse_objective"]

#: what :func:`compare_estimators` compares when not told: pathwise vs likelihood ratio, then the K-sample family
DEFAULT_OBJECTIVES: tuple[str, ...] = (
    "elbo",
    "graph:pathwise=False",
    "stl",
    "iwae:num_particles=5",
    "dreg:num_particles=5",
    "rws:num_particles=5",
)

ObjectiveSpec = str | tuple[str, Mapping[str, Any]] | ELBO


@dataclasses.dataclass
class EstimatorStats:
    """One row of the comparison (gradients per data point)."""

    objective: str
    bound: float
    bound_se: float
    encoder_variance: float
    encoder_snr: float
    decoder_variance: float
    decoder_snr: float
    seconds_per_step: float


@dataclasses.dataclass
class EstimatorComparison:
    """What :func:`compare_estimators` returns; ``str()`` is the table."""

    rows: list[EstimatorStats]
    num_repeats: int
    batch_size: int

    def __getitem__(self, objective: str) -> EstimatorStats:
        for row in self.rows:
            if row.objective == objective:
                return row
        raise KeyError(f"No objective {objective!r}; have {[r.objective for r in self.rows]}")

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) for r in self.rows]

    def table(self) -> str:
        head = ("objective", "bound/point", "enc var", "enc SNR", "dec var", "dec SNR", "ms/step")
        lines = [
            (
                r.objective,
                f"{r.bound:.3f} ± {r.bound_se:.3f}",
                f"{r.encoder_variance:.3g}",
                f"{r.encoder_snr:.3f}",
                f"{r.decoder_variance:.3g}",
                f"{r.decoder_snr:.3f}",
                f"{1e3 * r.seconds_per_step:.2f}",
            )
            for r in self.rows
        ]
        widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
        fmt = lambda cells: "  ".join(  # noqa: E731
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )
        note = (f"{self.num_repeats} gradient draws per objective on one batch of {self.batch_size}; "
                "enc = guide parameters, dec = model parameters; var and SNR averaged over coordinates")
        return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines), note])

    __str__ = table


def parse_objective(spec: ObjectiveSpec) -> tuple[str, ELBO]:
    """A label and an ELBO from ``"name"``, ``"name:key=value,key=value"``, ``(name, options)`` or an ELBO.

    Values are Python literals (``5``, ``0.5``, ``False``; ``true``/``false`` too).
    """
    if isinstance(spec, ELBO):
        return type(spec).__name__, spec
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping):
        name, options = spec[0], dict(spec[1])
        label = name + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "")
        return label, make_objective(name, **options)
    if not isinstance(spec, str):
        raise TypeError(f"Expected an objective as 'name', 'name:key=value,...', (name, options) or an ELBO; got {spec!r}")
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, text = item.partition("=")
        if not eq:
            raise ValueError(f"Expected key=value in objective {spec!r}, got {item!r}")
        options[key.strip()] = _literal(text.strip())
    return spec, make_objective(name.strip(), **options)


def _literal(text: str) -> Any:
    lowered = {"true": "True", "false": "False", "none": "None"}.get(text.lower(), text)
    try:
        return ast.literal_eval(lowered)
    except (ValueError, SyntaxError):
        return text


def _summary(draws: torch.Tensor) -> tuple[float, float]:
    """(mean per-coordinate variance, mean per-coordinate SNR) of draws ``(R, P)``."""
    if draws.shape[1] == 0:
        return math.nan, math.nan
    var = draws.var(0)
    varies = var > 0
    snr = draws.mean(0).abs()[varies] / var[varies].sqrt()
    return float(var.mean()), float(snr.mean()) if snr.numel() else math.nan


def compare_estimators(
    vae_or_pair: Any,
    data: Any,
    objectives: Sequence[ObjectiveSpec] = DEFAULT_OBJECTIVES,
    *,
    num_repeats: int = 50,
    batch_size: int = 64,
    seed: int = 0,
    verbose: bool = True,
) -> EstimatorComparison:
    """Bound, gradient variance, SNR and time per step of each objective on one minibatch.

    :param vae_or_pair: a pyrovae model, any object with ``model``/``guide``, or a
        ``(model, guide)`` pair (sites in ``pyro.plate("data", ...)``).
    :param data: a tensor ``(N, ...)`` or a pyrovae ``DataSet``; its first
        ``batch_size`` rows are the minibatch.
    :param objectives: names, ``"name:key=value,..."`` strings, ``(name, options)``
        pairs or ELBO instances (see :data:`pyrovae.objectives.OBJECTIVES`).
    :param num_repeats: gradient draws per objective (>= 2).
    :param batch_size: minibatch size.
    :param seed: draw ``r`` uses seed ``seed + r``; the global RNG state is restored after.
    :param verbose: print the table.
    :returns: an :class:`EstimatorComparison` (``str()`` is the table).

    Parameters are left as they were; their ``.grad`` is cleared.

    Example::

        table = pyrovae.compare_estimators(vae, x, ["elbo", "graph:pathwise=False", "dreg:num_particles=10"])
    """
    if not isinstance(num_repeats, int) or num_repeats < 2:
        raise ValueError(f"Expected num_repeats to be an int >= 2, got {num_repeats!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected batch_size to be an int >= 1, got {batch_size!r}")
    if isinstance(objectives, (str, ELBO)):
        objectives = [objectives]
    resolved = [parse_objective(spec) for spec in objectives]  # fail on a bad spec before any work
    programs = resolve_programs(vae_or_pair)
    x = getattr(data, "x", data)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected data to be a torch.Tensor (N, ...) or a pyrovae DataSet, got {type(data).__name__}")
    owner = programs.owner
    if callable(getattr(owner, "validate_data", None)):
        owner.validate_data(x, "data")
    device = next(iter(owner.parameters())).device if isinstance(owner, torch.nn.Module) else x.device
    x = x[:batch_size].to(device)
    cuda = [device] if device.type == "cuda" else []

    rows = []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        with poutine.block():
            guide_trace = poutine.trace(programs.guide).get_trace(x)
            model_trace = poutine.trace(poutine.replay(programs.model, trace=guide_trace)).get_trace(x)
        encoder = param_leaves(guide_trace)
        decoder = {k: v for k, v in param_leaves(model_trace).items() if k not in encoder}
        nesting = max(
            [0, *(-f.dim for tr in (guide_trace, model_trace) for s in tr.nodes.values() if s["type"] == "sample"
                  for f in s["cond_indep_stack"] if f.vectorized and f.dim is not None)]
        )
        params = [*encoder.values(), *decoder.values()]
        for label, elbo in resolved:
            if math.isinf(getattr(elbo, "max_plate_nesting", 0)):
                elbo.max_plate_nesting = nesting + int(bool(getattr(elbo, "vectorize_particles", False)))
            store = pyro.get_param_store()
            for key in [k for k in store.keys() if k.startswith(BASELINE_PREFIX)]:
                del store[key]  # each objective starts its baselines afresh
            _zero(params)
            with pyro.validation_enabled(True):
                elbo.loss_and_grads(programs.model, programs.guide, x)  # validated warm-up, not timed
            bounds, seconds, enc, dec = [], [], [], []
            with pyro.validation_enabled(False):
                for r in range(num_repeats):
                    torch.manual_seed(seed + r)
                    _zero(params)
                    if cuda:
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                    loss = elbo.loss_and_grads(programs.model, programs.guide, x)
                    if cuda:
                        torch.cuda.synchronize(device)
                    seconds.append(time.perf_counter() - start)
                    bounds.append(-float(loss) / x.shape[0])
                    enc.append(_flat(encoder.values(), x.shape[0]))
                    dec.append(_flat(decoder.values(), x.shape[0]))
            enc_var, enc_snr = _summary(torch.stack(enc).double())
            dec_var, dec_snr = _summary(torch.stack(dec).double())
            rows.append(EstimatorStats(
                objective=label,
                bound=statistics.fmean(bounds),
                bound_se=statistics.stdev(bounds) / math.sqrt(num_repeats),
                encoder_variance=enc_var,
                encoder_snr=enc_snr,
                decoder_variance=dec_var,
                decoder_snr=dec_snr,
                seconds_per_step=statistics.median(seconds),
            ))
        _zero(params)
    result = EstimatorComparison(rows, num_repeats, x.shape[0])
    if verbose:
        print(result.table())
    return result


def _zero(params: Sequence[torch.Tensor]) -> None:
    for p in params:
        p.grad = None


def _flat(params: Any, batch: int) -> torch.Tensor:
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1) / batch for p in params]
    return torch.cat(parts).cpu() if parts else torch.zeros(0)
