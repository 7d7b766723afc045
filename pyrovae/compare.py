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

The encoder/decoder split follows which parameters each program computes
with (:func:`split_parameters`), not where a parameter was registered.  An
objective that does not apply to the pair (``stl`` on a guide with a discrete
latent, ``iwae`` on a model with a global latent) gets a row saying so, with
its reason, and the others are still compared.

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
import functools
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO

from pyrovae.objectives import make_objective
from pyrovae.programs import (
    Data,
    ProgramError,
    as_data,
    check_objective,
    device_of,
    inspect_pair,
    resolve_programs,
    set_data_plate,
    split_parameters,
    trace_pair,
    validate_batch,
)

__all__ = [
    "DEFAULT_OBJECTIVES",
    "EstimatorComparison",
    "EstimatorStats",
    "compare_estimators",
    "parse_objective",
    "split_parameters",
]

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
    """One row of the comparison (gradients per data point).

    :ivar not_applicable: why the objective does not apply to the pair (its
        check's one-line message), with every number NaN; ``None`` when it ran.
    :ivar surrogate_terms: the programs' surrogate sites (``infer={"surrogate": True}``) that
        ``bound`` includes: then it is the training objective's value per point, not a bound on
        :math:`\log p(x)` (the table marks it ``*``).
    """

    objective: str
    bound: float
    bound_se: float
    encoder_variance: float
    encoder_snr: float
    decoder_variance: float
    decoder_snr: float
    seconds_per_step: float
    not_applicable: str | None = None
    surrogate_terms: tuple[str, ...] = ()

    @classmethod
    def refused(cls, objective: str, reason: str) -> "EstimatorStats":
        """The row of an objective that does not apply: NaN numbers and the reason."""
        nan = math.nan
        return cls(objective, nan, nan, nan, nan, nan, nan, nan, not_applicable=reason)


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

    def __add__(self, other: "EstimatorComparison") -> "EstimatorComparison":
        """Both tables' rows in one (the same draws per objective and batch size), e.g. a discrete model's
        estimators beside its relaxed training (``program_kwargs={"temperature": 0.5}``)."""
        if not isinstance(other, EstimatorComparison):
            return NotImplemented
        if (other.num_repeats, other.batch_size) != (self.num_repeats, self.batch_size):
            raise ValueError(
                f"Expected comparisons with the same num_repeats and batch size, got ({self.num_repeats}, "
                f"{self.batch_size}) and ({other.num_repeats}, {other.batch_size})"
            )
        return EstimatorComparison(self.rows + other.rows, self.num_repeats, self.batch_size)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) for r in self.rows]

    def table(self) -> str:
        head = ("objective", "bound/point", "enc var", "enc SNR", "dec var", "dec SNR", "ms/step")
        lines = [
            (
                r.objective,
                f"{r.bound:.3f} ± {r.bound_se:.3f}" + ("*" if r.surrogate_terms else ""),
                f"{r.encoder_variance:.3g}",
                f"{r.encoder_snr:.3f}",
                f"{r.decoder_variance:.3g}",
                f"{r.decoder_snr:.3f}",
                f"{1e3 * r.seconds_per_step:.2f}",
            )
            if r.not_applicable is None
            else (r.objective, f"n/a: {r.not_applicable}")
            for r in self.rows
        ]
        # a not-applicable row is the objective and its reason, which spans the number columns
        widths = [max(len(str(c)) for c in col) for col in zip(head, *(c for c in lines if len(c) == len(head)))]
        widths[0] = max(len(c[0]) for c in [head, *lines])

        def fmt(cells: Sequence[str]) -> str:
            if len(cells) < len(widths):  # the reason, left-aligned after the objective
                return "  ".join([cells[0].ljust(widths[0]), *cells[1:]])
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        note = (f"{self.num_repeats} gradient draws per objective on one batch of {self.batch_size}; "
                "enc = parameters the guide computes with, dec = the model's others; "
                "var and SNR averaged over coordinates")
        surrogate = sorted({site for r in self.rows if r.not_applicable is None for site in r.surrogate_terms})
        if surrogate:
            note += (f"; * the objective's value with surrogate term(s) {', '.join(map(repr, surrogate))}: "
                     "a training surrogate, not a bound on log p(x)")
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
    data_plate: str | None = None,
    program_kwargs: Mapping[str, Any] | None = None,
) -> EstimatorComparison:
    """Bound, gradient variance, SNR and time per step of each objective on one minibatch.

    :param vae_or_pair: a pyrovae model, any object with ``model``/``guide``, or a
        ``(model, guide)`` pair (per-point sites in a plate found by its size).
    :param data: a tensor ``(N, ...)``, a pyrovae ``DataSet`` or several tensors as
        :func:`pyrovae.fit` takes them; its first ``batch_size`` points are the minibatch.
    :param objectives: names, ``"name:key=value,..."`` strings, ``(name, options)``
        pairs or ELBO instances (see :data:`pyrovae.objectives.OBJECTIVES`).
    :param num_repeats: gradient draws per objective (>= 2).
    :param batch_size: minibatch size.
    :param seed: draw ``r`` uses seed ``seed + r``; the global RNG state is restored after.
    :param verbose: print the table.
    :param data_plate: the per-point plate's name, where several plates follow the batch.
    :param program_kwargs: keyword arguments for model and guide in every draw, shown in each row's
        label (``{"temperature": 0.5}``: a discrete VAE's relaxed programs); ``None``: none, the
        programs as evaluations call them.  Tables add: ``compare_estimators(...) + compare_estimators(...)``.
    :returns: an :class:`EstimatorComparison` (``str()`` is the table).

    An objective whose checks refuse the pair (a ``ValueError`` or
    ``NotImplementedError`` from the objective, e.g. ``stl`` on a guide with a
    discrete latent) gets a row with NaN numbers and the refusal's message in
    ``not_applicable`` ("n/a: ..." in the table); the others are still compared.
    An error raised while the model or the guide runs, or of any other type,
    propagates.  Encoder and decoder parameters are split by
    :func:`split_parameters`.

    Parameters are left as they were; their ``.grad`` is cleared.

    Example::

        table = pyrovae.compare_estimators(vae, x, ["elbo", "graph:pathwise=False", "dreg:num_particles=10"])
    """
    if not isinstance(num_repeats, int) or num_repeats < 2:
        raise ValueError(f"Expected num_repeats to be an int >= 2, got {num_repeats!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected batch_size to be an int >= 1, got {batch_size!r}")
    if program_kwargs is None:
        program_kwargs = {}
    if not isinstance(program_kwargs, Mapping) or not all(isinstance(k, str) for k in program_kwargs):
        raise TypeError(f"Expected program_kwargs to be a mapping of keyword names to values, got {program_kwargs!r}")
    if isinstance(objectives, (str, ELBO)):
        objectives = [objectives]
    resolved = [parse_objective(spec) for spec in objectives]  # fail on a bad spec before any work
    if program_kwargs:
        shown = ",".join(f"{k}={v}" for k, v in program_kwargs.items())
        resolved = [(f"{label} [{shown}]", elbo) for label, elbo in resolved]
    programs = resolve_programs(vae_or_pair)
    points = as_data(data, "data")
    points = validate_batch(programs, points, "data")
    device = device_of(programs.owner, points.x)
    batch = points.index(slice(0, batch_size)).to(device)
    call = {**batch.kwargs, **program_kwargs}  # model and guide take the data's keywords and these
    cuda = [device] if device.type == "cuda" else []

    rows = []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        with pyro.validation_enabled(True):
            structure = inspect_pair(programs, batch, program_kwargs, data_plate=data_plate, what="compare_estimators")
        with poutine.block():
            model_trace, guide_trace = trace_pair(programs, batch, program_kwargs)
        nesting = structure.max_plate_nesting
        encoder, decoder = split_parameters(model_trace, guide_trace)
        del guide_trace, model_trace  # and their graphs
        params = [*encoder.values(), *decoder.values()]
        for label, elbo in resolved:
            if math.isinf(getattr(elbo, "max_plate_nesting", 0)):
                elbo.max_plate_nesting = nesting + int(bool(getattr(elbo, "vectorize_particles", False)))
            _zero(params)
            try:  # the program's structure first: no particle runs for an objective that cannot apply
                check_objective(elbo, structure, f"objective={label.partition(':')[0]!r}")
            except ProgramError as error:
                rows.append(EstimatorStats.refused(label, str(error)))
                continue
            set_data_plate(elbo, structure)
            reason = _not_applicable(elbo, programs.model, programs.guide, batch, program_kwargs)  # validated warm-up, not timed
            if reason is not None:
                rows.append(EstimatorStats.refused(label, reason))
                continue
            bounds, seconds, enc, dec = [], [], [], []
            with pyro.validation_enabled(False):
                for r in range(num_repeats):
                    torch.manual_seed(seed + r)
                    _zero(params)
                    if cuda:
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                    loss = elbo.loss_and_grads(programs.model, programs.guide, *batch.args, **call)
                    if cuda:
                        torch.cuda.synchronize(device)
                    seconds.append(time.perf_counter() - start)
                    bounds.append(-float(loss) / len(batch))
                    enc.append(_flat(encoder.values(), len(batch)))
                    dec.append(_flat(decoder.values(), len(batch)))
            enc_draws, dec_draws = torch.stack(enc).double(), torch.stack(dec).double()  # (num_repeats, ...)
            finite = (torch.tensor([math.isfinite(b) for b in bounds]) & torch.isfinite(enc_draws).all(-1)
                      & torch.isfinite(dec_draws).all(-1))
            if not finite.all():  # a variance over NaN draws would be NaN or a crash: the row says why instead
                rows.append(EstimatorStats.refused(label, f"non-finite loss or gradient in {int((~finite).sum())} "
                                                          f"of {num_repeats} draws at these parameters"))
                continue
            enc_var, enc_snr = _summary(enc_draws)
            dec_var, dec_snr = _summary(dec_draws)
            rows.append(EstimatorStats(
                objective=label,
                bound=statistics.fmean(bounds),
                bound_se=statistics.stdev(bounds) / math.sqrt(num_repeats),
                encoder_variance=enc_var,
                encoder_snr=enc_snr,
                decoder_variance=dec_var,
                decoder_snr=dec_snr,
                seconds_per_step=statistics.median(seconds),
                surrogate_terms=tuple(structure.surrogate_terms),
            ))
        _zero(params)
    result = EstimatorComparison(rows, num_repeats, len(batch))
    if verbose:
        print(result.table())
    return result


def _not_applicable(elbo: ELBO, model: Callable, guide: Callable, batch: Data,
                    program_kwargs: Mapping[str, Any]) -> str | None:
    """One validated ``loss_and_grads``: ``None`` if it ran, else why the objective does not apply.

    A ``ValueError`` or ``NotImplementedError`` raised by the objective's own
    checks means "not applicable"; one raised while the model or the guide runs
    (a bad program) and any other exception (a bug) propagate.
    """
    from_programs: list[BaseException] = []

    def watched(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except BaseException as error:
                from_programs.append(error)
                raise

        return run

    try:
        with pyro.validation_enabled(True):
            elbo.loss_and_grads(watched(model), watched(guide), *batch.args, **batch.kwargs, **program_kwargs)
    except (ValueError, NotImplementedError) as error:
        chain: BaseException | None = error
        while chain is not None:  # an objective re-raising a program's error is still the program's
            if any(chain is e for e in from_programs):
                raise
            chain = chain.__cause__ or chain.__context__
        lines = str(error).strip().splitlines()
        return lines[0] if lines else type(error).__name__
    return None


def _zero(params: Sequence[torch.Tensor]) -> None:
    for p in params:
        p.grad = None


def _flat(params: Any, batch: int) -> torch.Tensor:
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1) / batch for p in params]
    return torch.cat(parts).cpu() if parts else torch.zeros(0)
