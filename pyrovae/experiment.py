"""A run: one serialisable configuration -> data, model, ``fit``, pictures and numbers.

:class:`RunConfig` is the one run-configuration record; the CLI builds it from
arguments, :func:`run` writes it to ``config.json`` and into every checkpoint,
and ``run(..., resume=True)`` rebuilds the same run from the folder alone.

A run folder holds::

    config.json        the RunConfig
    checkpoint.pt      parameters, optimizer, RNG, history (atomic, weights_only-safe)
    history.csv/.json  per-epoch training loss and held-out ELBO
    results.json       final numbers on the test split (true model, β = 1)
    *.png              reconstructions, samples, traversals, KL per dimension, curves
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch

from pyrovae import plots
from pyrovae.checkpoint import CHECKPOINT_NAME, load_checkpoint
from pyrovae.datasets import DATASETS, load
from pyrovae.metrics import METRICS, evaluate_metrics
from pyrovae.metrics.collapse import COLLAPSE_METRICS
from pyrovae.metrics.likelihood import log_likelihood
from pyrovae.models import MODELS, make_model
from pyrovae.objectives import make_objective
from pyrovae.programs import check_positive_int, resolve_programs, validate_data
from pyrovae.runfolder import RunLock, check_writable, prepare_new_run
from pyrovae.schedules import SCHEDULES, make_schedule
from pyrovae.train import check_optimizer_options, evaluate_elbo, fit

__all__ = ["RunConfig", "run", "resume_config", "epochs_done", "load_run", "evaluate_run", "reconstruction_error",
           "sweep", "sweep_parameter", "model_arguments", "check_model_options", "check_dataset_options"]


def _keywords(function: Callable) -> set[str] | None:
    """The keyword arguments ``function`` takes; None when it takes any (``**kwargs``)."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind is not p.VAR_POSITIONAL}


def model_arguments(model: str) -> list[str]:
    """The constructor arguments of ``MODELS[model]`` that a run's ``model_options`` may set
    (``x_shape`` comes from the data).  A subclass passes ``**kwargs`` on to its bases, so
    every ``__init__`` along the MRO contributes."""
    inits = [klass.__init__ for klass in MODELS[model].__mro__ if "__init__" in vars(klass) and klass is not object]
    names: list[str] = []
    for init in inits:
        for name, p in inspect.signature(init).parameters.items():
            if name not in ("self", "x_shape") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and name not in names:
                names.append(name)
    return names


def check_model_options(model: str, options: Any) -> None:
    """Refuse ``options`` that ``MODELS[model]``'s constructor does not take, naming them."""
    if model not in MODELS:
        raise ValueError(f"Expected model in {sorted(MODELS)}, got {model!r}")
    _check_options(f"model={model!r}", options, model_arguments(model))


def check_dataset_options(dataset: str, options: Any) -> None:
    """Refuse ``options`` that the loader of ``DATASETS[dataset]`` does not take, naming them."""
    if dataset not in DATASETS:
        raise ValueError(f"Expected dataset in {sorted(DATASETS)}, got {dataset!r}")
    accepted = _keywords(DATASETS[dataset])
    _check_options(f"dataset={dataset!r}", options, None if accepted is None else accepted - {"split"})


def _check_options(what: str, options: Any, accepted: set[str] | list[str] | None) -> None:
    """Refuse options that are not a mapping, or that name an argument the callee does not take
    (the callee would raise ``TypeError`` deep inside a run; this says which option, at once)."""
    if not isinstance(options, Mapping):
        raise ValueError(f"Expected {what} options to be a mapping, got {options!r}")  # noqa: TRY004 (bad input, often from a config.json)
    unknown = [] if accepted is None else sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{what} takes options {sorted(accepted)}, got unexpected {unknown}")


@dataclasses.dataclass
class RunConfig:
    """Everything needed to reproduce a training run (JSON-serialisable), checked at construction:
    a bad value or an option the model or the data loader does not take is a ``ValueError`` at once."""

    model: str = "vae"
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "digits"
    dataset_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: None: the model's ``default_objective`` (filled in at construction, so config.json names it)
    objective: str | None = None
    #: further options of the named objective (``free_bits``'s λ, ``graph``'s ``baseline_beta``, ...)
    objective_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_particles: int | None = None
    alpha: float | None = None
    kl_weight: float | dict[str, Any] | None = None
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    #: further keyword arguments of fit's Adam, e.g. ``{"eps": 1e-4}`` or ``{"betas": [0.95, 0.999]}``
    optimizer_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int | None = None
    #: compile the training step (``fit``'s ``jit``): None = when it can, False = never
    jit: bool | None = None

    def __post_init__(self) -> None:
        # everything a run needs is checked here, so that a refused run writes nothing
        check_model_options(self.model, self.model_options)
        check_dataset_options(self.dataset, self.dataset_options)
        if self.objective is None:
            self.objective = getattr(MODELS[self.model], "default_objective", "elbo")
        if not isinstance(self.objective_options, Mapping):
            raise ValueError(f"Expected objective_options to be a mapping, got {self.objective_options!r}")  # noqa: TRY004 (bad input, often from a config.json)
        self.objective_options = dict(self.objective_options)
        self.make_objective()
        if self.kl_weight is not None:
            if isinstance(self.kl_weight, Mapping) and self.kl_weight.get("name") in SCHEDULES:
                schedule = SCHEDULES[self.kl_weight["name"]]
                _check_options(f"kl_weight schedule {self.kl_weight['name']!r}", self.kl_weight,
                               {"name"} | {f.name for f in dataclasses.fields(schedule)})
            elif not isinstance(self.kl_weight, (int, float, Mapping)) or isinstance(self.kl_weight, bool):
                raise ValueError(f"Expected kl_weight to be a number or a schedule mapping, got {self.kl_weight!r}")
            make_schedule(self.kl_weight)
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("seed", self.seed, minimum=0)
        if self.checkpoint_every is not None:
            check_positive_int("checkpoint_every", self.checkpoint_every)
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"Expected lr to be a finite number > 0, got {lr!r}")
        self.optimizer_options = check_optimizer_options("adam", self.optimizer_options, float(lr))
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(f"Expected device to be 'auto' or a torch device such as 'cpu' or 'cuda', "
                                 f"got {self.device!r}") from None
        if self.jit not in (None, True, False):
            raise ValueError(f"Expected jit to be None, True or False, got {self.jit!r}")

    def make_objective(self) -> Any:
        """The training objective: the name with its options (an ELBO instance)."""
        return make_objective(self.objective, num_particles=self.num_particles, alpha=self.alpha,
                              **self.objective_options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, Mapping):
            raise ValueError(f"Expected a run config to be a mapping of its fields, got {type(data).__name__}")  # noqa: TRY004 (bad input, often from a config.json)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"Unknown run-config keys {unknown}; expected some of {sorted(names)}")
        return cls(**data)

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> RunConfig:
        path = Path(run_dir) / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"No run at {run_dir}: {path} is missing")
        return cls.from_dict(json.loads(path.read_text()))


def epochs_done(run_dir: str | os.PathLike) -> int:
    """Epochs the run in ``run_dir`` has trained, counting one it has begun (0 without a checkpoint)."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.exists():
        return 0
    checkpoint = load_checkpoint(path)
    return int(checkpoint["epoch"]) + int(checkpoint.get("batch_index", 0) > 0)


def resume_config(run_dir: str | os.PathLike, epochs: int | None = None) -> RunConfig:
    """The config of the run in ``run_dir``, extended to ``epochs`` in total when given.

    Writes nothing; :func:`run` with ``resume=True`` records the new total in ``config.json``.

    :raises ValueError: ``epochs`` is below the epochs the run has already trained (or begun).
    """
    config = RunConfig.load(run_dir)
    if epochs is None:
        return config
    check_positive_int("epochs", epochs)
    done = epochs_done(run_dir)
    if epochs < done:
        raise ValueError(f"Cannot train {run_dir} to {epochs} epochs in total: it has already trained {done}")
    return dataclasses.replace(config, epochs=epochs)


def _check_device(device: str) -> None:
    if device != "auto" and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use device='cpu' or 'auto'")


def run(
    config: RunConfig | None,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    epochs: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    lr: float | None = None,
) -> dict[str, Any]:
    """Train ``config`` into the folder ``out`` and write pictures and numbers there.

    Everything is checked (the config, the data, the model's arguments, that
    ``out`` can be written) before anything is written: a refused run leaves
    ``out`` as it was.  The run holds an exclusive lock on ``out`` throughout
    (:class:`pyrovae.runfolder.RunLock`): a second run into it is refused.  A new
    run refuses a folder that holds a run unless ``overwrite``.  The model's
    initial weights are drawn after seeding with ``config.seed``, so the same
    config reproduces a run bit for bit (on the CPU).

    :param config: the run; must be ``None`` with ``resume=True`` (``out/config.json`` holds it).
    :param resume: continue the run in ``out`` from its checkpoint.
    :param epochs: a new total number of epochs, at least those already trained
        (extends a resumed run; ``config.json`` records the new total).
    :param overwrite: replace a run already in ``out`` (only its own files are removed).
    :param lr: a new learning rate for a resumed run (e.g. after it stopped on a NaN);
        recorded in ``config.json`` and in every later history row.
    :returns: the final numbers (also in ``out/results.json``), with the paths of
        the pictures under ``"pictures"``; a picture that does not apply to the model
        (:class:`pyrovae.plots.PlotNotApplicable`) is skipped, printed in one line and
        recorded with its reason under ``"skipped_pictures"``.
    """
    out = Path(out)
    if resume:
        if config is not None:
            raise ValueError(f"run(resume=True) reads the config from {out / 'config.json'}; pass config=None "
                             "(and epochs= to extend the run)")
        config = resume_config(out, epochs)
        if lr is not None:
            config = dataclasses.replace(config, lr=lr)  # RunConfig checks the value
    elif config is None:
        raise ValueError("run() needs a RunConfig unless resume=True")
    elif epochs is not None or lr is not None:
        config = dataclasses.replace(config, **{k: v for k, v in (("epochs", epochs), ("lr", lr)) if v is not None})
    _check_device(config.device)
    train = load(config.dataset, "train", **config.dataset_options)
    valid = load(config.dataset, "valid", **config.dataset_options)
    test = load(config.dataset, "test", **config.dataset_options)
    options = {"likelihood": train.likelihood, **config.model_options}
    pyro.set_rng_seed(config.seed)  # the initial weights too: the same config is the same run
    model = make_model(config.model, x_shape=train.shape, **options)
    programs = resolve_programs(model)
    validate_data(programs, train, "data")  # e.g. a likelihood whose support the data leave: fit would refuse
    validate_data(programs, valid, "valid_data")
    check_writable(out)
    with RunLock(out):
        if not resume:
            prepare_new_run(out, overwrite=overwrite)
        elif not (out / CHECKPOINT_NAME).exists():
            warnings.warn(f"{out} has no {CHECKPOINT_NAME} (the run stopped before its first one): it starts "
                          "again from its config, which gives the same run", stacklevel=2)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
        return _train_and_report(config, model, train, valid, test, out, resume, progress)


def _train_and_report(config: RunConfig, model: Any, train: Any, valid: Any, test: Any, out: Path, resume: bool,
                      progress: bool) -> dict[str, Any]:
    """fit, then the numbers and pictures of the run (inside :func:`run`'s lock)."""
    result = fit(
        model,
        train,
        objective=config.make_objective(),
        kl_weight=config.kl_weight,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer_options=config.optimizer_options,
        valid_data=valid,
        seed=config.seed,
        device=config.device,
        out=out,
        checkpoint_every=config.checkpoint_every,
        resume=resume,
        jit=config.jit,
        progress=progress,
        record=config.to_dict(),
    )
    model.eval()
    x_test = test.x
    skipped: dict[str, str] = {}  # picture -> why it does not apply to this model
    try:
        kl = plots.kl_per_dimension(model, x_test)
    except plots.PlotNotApplicable as e:
        kl, skipped["kl_per_dimension"] = None, str(e)
    numbers: dict[str, Any] = {
        "dataset": config.dataset,
        "model": config.model,
        "test_elbo": evaluate_elbo(model, x_test, seed=config.seed),
        "test_points": len(test),
        "kl_per_dimension": None if kl is None else [round(v, 4) for v in kl.tolist()],
        "active_dimensions": None if kl is None else int((kl > 0.01).sum()),
        "epochs": len(result.history),
        "steps": result.step,
        "train_seconds": round(result.final.get("seconds", 0.0), 2),
    }
    drawings = {
        "reconstructions": lambda: plots.reconstruction_grid(model, x_test, out / "reconstructions.png"),
        "samples": lambda: plots.samples_grid(model, out / "samples.png", seed=config.seed),
        "traversals": lambda: plots.traversal_grid(model, x_test, out / "traversals.png", order_by_kl=kl),
        "kl_per_dimension": None if kl is None else lambda: plots.kl_bar_chart(kl, out / "kl_per_dimension.png"),
        "history": lambda: plots.history_plot(result.history, out / "history.png"),
    }
    pictures = {}
    for name, draw in drawings.items():
        if draw is None:
            continue
        try:
            pictures[name] = draw()
        except plots.PlotNotApplicable as e:  # only "this picture is not for this model": any other error is a bug
            skipped[name] = str(e)
    for name, why in skipped.items():
        print(f"{out}: skipped the {name} picture: {why}")
    numbers["pictures"] = {k: str(v) for k, v in pictures.items()}
    numbers["skipped_pictures"] = skipped
    (out / "results.json").write_text(json.dumps(numbers, indent=1))
    return numbers


def load_run(run_dir: str | os.PathLike) -> tuple[RunConfig, Any]:
    """The config and the trained model of a run folder (parameters from its checkpoint)."""
    run_dir = Path(run_dir)
    config = RunConfig.load(run_dir)
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
    # the checkpoint records every constructor argument (x_shape and likelihood included)
    model = make_model(config.model, **checkpoint["model"]["config"])
    model.load_state_dict(checkpoint["state"]["module"])
    model.eval()
    return config, model


@torch.no_grad()
def reconstruction_error(model: Any, x: torch.Tensor, *, batch_size: int = 500) -> float:
    """-log p(x | z) at the posterior mean, averaged over points (nats): the distortion axis of the β trade-off."""
    total = 0.0
    for xb in x.split(batch_size):
        total -= float(model.likelihood(model.posterior(xb).mean).log_prob(xb).sum())
    return total / x.shape[0]


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    num_samples: int = 5000,
    num_points: int | None = None,
    metrics: Sequence[str] = (),
    metric_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a run's model on its test split: ELBO, IWAE-k bounds, importance-sampled
    log p(x) (true model, β = 1), bits/dim, share of Pareto k-hat > 0.7, and optionally
    disentanglement metrics (for data sets with ground-truth factors).  Writes
    ``evaluation.json`` in the run folder."""
    run_dir = Path(run_dir)
    check_positive_int("num_samples", num_samples)
    if num_points is not None:
        check_positive_int("num_points", num_points)
    unknown = sorted(set(metrics) - set(METRICS) - set(COLLAPSE_METRICS))
    if unknown:
        raise ValueError(f"Expected metric names from {sorted(METRICS) + sorted(COLLAPSE_METRICS)}, got {unknown}")
    collapse = [name for name in metrics if name in COLLAPSE_METRICS]  # need the guide and data, not factors
    metrics = [name for name in metrics if name in METRICS]
    config, model = load_run(run_dir)
    test = load(config.dataset, "test", **config.dataset_options)
    factors = test.info.get("factors")
    if metrics and factors is None:
        raise ValueError(f"Disentanglement metrics need a data set with ground-truth factors; {config.dataset!r} has none")
    check_writable(run_dir)
    x = test.x if num_points is None else test.x[:num_points]
    result = log_likelihood(model, x, num_samples=num_samples, seed=config.seed)
    numbers: dict[str, Any] = {"num_points": int(x.shape[0]), **result.summary(),
                               "reconstruction_error": reconstruction_error(model, x)}
    device = next(model.parameters()).device
    for name in collapse:
        numbers.update(COLLAPSE_METRICS[name](lambda xb: model.posterior(xb.to(device)), x, prior=model.prior()))
    if metrics:
        numbers.update(evaluate_metrics(_representation(model), factors, names=tuple(metrics), **(metric_options or {})))
    (run_dir / "evaluation.json").write_text(json.dumps(numbers, indent=1))
    return numbers


def _representation(model: Any):
    @torch.no_grad()
    def represent(images: torch.Tensor) -> torch.Tensor:
        return model.posterior(images.to(next(model.parameters()).device)).mean.cpu()

    return represent


def sweep_parameter(model: str, parameter: str | None = None) -> str:
    """The argument a sweep of ``model`` varies: ``parameter`` if given (checked), else the
    model's :attr:`~pyrovae.models.vae.VAE.tradeoff_parameter`, else ``"kl_weight"``."""
    parameter = parameter or MODELS[model].tradeoff_parameter or "kl_weight"
    accepted = ["kl_weight"] + [name for name in model_arguments(model) if name != "likelihood"]
    if parameter not in accepted:
        raise ValueError(f"Expected parameter to be one of {model}'s arguments {accepted}, got {parameter!r}")
    return parameter


def sweep(
    config: RunConfig,
    values: Sequence[float],
    out: str | os.PathLike,
    *,
    parameter: str | None = None,
    metrics: Sequence[str] = ("all",),
    metric_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train one run per value of the model's trade-off weight and draw reconstruction
    error against each disentanglement metric: the β trade-off (Higgins et al. 2017).

    The weight is the model's :attr:`~pyrovae.models.vae.VAE.tradeoff_parameter`
    (β of ``beta_vae`` and ``beta_tcvae``, γ of ``factor_vae``, C_max of
    ``capacity_vae``, λ_od of ``dip_vae``; for ``vae``, ``fit``'s ``kl_weight``),
    or the constructor argument named by ``parameter`` (``"kl_weight"`` selects
    the training KL weight of any model).

    :param config: the run every value shares (its own value of the parameter is replaced).
    :param values: the values to train with (numbers; the model's constructor checks their range).
    :param out: the sweep folder; run ``i`` goes to ``out/<parameter>_<values[i]:.12g>/``.
    :param parameter: the constructor argument to vary (default: the model's own).
    :param metrics: metric names of :data:`pyrovae.metrics.METRICS`, or ``("all",)``.
    :param metric_options: options for :func:`pyrovae.metrics.evaluate_metrics`.
    :returns: one row per value: ``{parameter: value, "reconstruction_error", "test_elbo", scores...}``,
        also written to ``out/sweep.json``; the figure is ``out/tradeoff.png``.

    Every value and metric name is checked before the first run trains.  Re-run
    into the same folder, a sweep keeps its finished members (said on stdout)
    and resumes a stopped one; a member folder holding a different run is refused.
    """
    out = Path(out)
    parameter = sweep_parameter(config.model, parameter)
    if not values:
        raise ValueError("Expected at least one value to sweep")
    for value in values:  # the model's constructor (or fit, for kl_weight) checks the range
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"Expected every value of {parameter} to be a number, got {value!r}")
    folders = [out / f"{parameter}_{value:.12g}" for value in values]
    if len(set(folders)) != len(folders):
        raise ValueError(f"Expected distinct values of {parameter}, got {list(values)}")
    names = list(METRICS) if "all" in metrics else list(metrics)
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise ValueError(f"Expected metric names from {sorted(METRICS)} (or 'all'), got {unknown}")
    test = load(config.dataset, "test", **config.dataset_options)
    check_writable(out)  # sweep.json and the figure go there at the end
    members = []
    for value in values:  # every member checked (its model built once) before any trains
        if parameter == "kl_weight":
            run_config = dataclasses.replace(config, kl_weight=value)
        else:
            run_config = dataclasses.replace(config, model_options={**config.model_options, parameter: value})
            make_model(config.model, x_shape=test.shape, **{"likelihood": test.likelihood, **run_config.model_options})
        members.append(run_config)
    for run_config, run_dir in zip(members, folders):
        if (run_dir / "config.json").exists() and RunConfig.load(run_dir) != run_config:
            raise ValueError(f"{run_dir} holds a different run than this sweep's (see its config.json): "
                             "use another sweep folder")
    rows = []
    for value, run_config, run_dir in zip(values, members, folders):
        if (run_dir / "results.json").exists():
            print(f"{run_dir}: finished earlier, kept")
        elif (run_dir / CHECKPOINT_NAME).exists():
            print(f"{run_dir}: stopped earlier, resumed")
            run(None, run_dir, resume=True, progress=progress)
        else:
            run(run_config, run_dir, progress=progress, overwrite=True)  # at most a config.json of the same run
        _, model = load_run(run_dir)
        row = {parameter: value, "reconstruction_error": reconstruction_error(model, test.x),
               "test_elbo": evaluate_elbo(model, test.x, seed=config.seed)}
        factors = test.info.get("factors")
        if factors is not None and metrics:
            row.update(evaluate_metrics(_representation(model), factors, names=tuple(names), **(metric_options or {})))
        rows.append(row)
    (out / "sweep.json").write_text(json.dumps(rows, indent=1))
    plots.tradeoff_plot(rows, out / "tradeoff.png", parameter=parameter)
    return rows
