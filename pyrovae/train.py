r"""``fit``: stochastic variational inference for any model/guide pair.

What ``fit`` trains
    A pyrovae model, *any* object with ``model`` and ``guide`` methods, or a
    ``(model, guide)`` pair of plain Pyro programs, called with the minibatch
    as ``SVI.step`` calls them: ``model(x)``, ``model(x, y)`` for a tuple of
    tensors, ``model(**batch)`` for a dict.  The per-point plate is found from
    the program, whatever its name (:func:`pyrovae.programs.inspect_pair`: the
    plate around the observed sites whose size follows the batch, or broadcast
    over it); ``data_plate=`` names it where several qualify.  If the programs
    accept a ``kl_weight`` keyword, ``fit`` passes the (scheduled) β to both.

How a step works
    The minibatch's sites in the per-point plate are scaled by ``N / B`` with
    :class:`~pyrovae.handlers.plate_scale`, so the loss is an unbiased estimate
    of the whole data set's negative objective while global sites count once.
    The ELBO object (any :class:`pyro.infer.ELBO`) computes the loss and its
    gradients with ``loss_and_grads``; one :class:`torch.optim.Adam` steps all
    parameters at once (Pyro's per-parameter optimizer wrappers cost about a
    quarter of a small step).  Before any of it, plain traces on a few points
    give the program's structure, and a program an objective cannot estimate
    (a global latent under an importance-weighted objective, say) is refused in
    one line naming the site.  Pyro's argument validation runs on those traces
    and one small loss, and is then switched off for speed; the data are
    checked up front instead.  Pyro's compiled ELBOs (``JitTrace_ELBO`` and
    kin) record the first minibatch's ``N / B``: ``fit`` drops each epoch's
    short last minibatch for them, with a warning.

Variant hooks (optional methods of the trained object; the trainer never asks a model's name)
    * ``training_kwargs(step) -> dict``: extra keyword arguments for model and
      guide at this step during training only (e.g. the capacity C of
      Burgess et al.); evaluation never passes them, so it sees the true model.
    * ``auxiliary_parameters() -> iterable of tensors`` with
      ``auxiliary_loss(x) -> dict[str, Tensor]``: a second optimisation step
      after each ELBO step (e.g. FactorVAE's discriminator).  ``fit`` owns its
      optimizer (Adam; ``auxiliary_lr`` and ``auxiliary_betas`` attributes, default
      1e-4 and (0.9, 0.999)), minimises the
      ``"loss"`` entry, logs every entry's epoch mean in the history with an
      ``aux_`` prefix and checkpoints the optimizer with the rest.
    * ``set_num_data(N)``: told the training set's size before the first step
      (β-TCVAE's minibatch estimators of the aggregate posterior need it).

What ``fit`` guarantees
    * Bad input is refused before any work, with the expected form.
    * A NaN/Inf loss stops training *before* the bad gradients are applied, with
      the step in the message; the last good checkpoint is kept.
    * Checkpoints (every ``checkpoint_every`` steps and at the end) hold the
      parameters, optimizer, the objective's own state (an objective with
      ``state_dict()``/``load_state_dict(state, device)``, e.g. the ``graph``
      objective's baselines), schedule step, data order position, partial epoch
      sums and RNG state, written atomically; ``resume=True`` continues a killed
      run to the same parameters an uninterrupted run reaches (CPU).
    * Under ``torchrun`` (``WORLD_SIZE > 1``) each rank trains on its shard and
      rank 0 writes the run folder.  Gradients are averaged across ranks by
      :class:`~torch.nn.parallel.DistributedDataParallel` around the objective
      (the loss and surrogate computed inside its forward, so its bucketed
      all-reduce overlaps the backward pass) when every trained parameter lives
      in the model's ``nn.Module`` and the objective has one surrogate;
      otherwise (plain Pyro functions, ``graph``, ``dreg``) by one all-reduce of
      a flat buffer per step.  The loss is averaged too, so every rank stops on
      a NaN anywhere.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO

from pyrovae.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from pyrovae.handlers import plate_scale
from pyrovae.objectives import make_objective
from pyrovae.objectives.compiled import Compiled, loss_and_surrogate_of
from pyrovae.programs import (
    Data,
    Programs,
    Structure,
    analytic_kl,
    as_data,
    check_objective,
    check_positive_int,
    device_of,
    inspect_pair,
    resolve_programs,
    set_data_plate,
    true_model,
    validate_batch,
)
from pyrovae.runfolder import check_writable
from pyrovae.schedules import Constant, Schedule, make_schedule

__all__ = ["fit", "FitResult", "Stream", "TrainingDiverged", "resolve_programs", "evaluate_elbo", "seed"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


def optimizer_options(cls: type[torch.optim.Optimizer], device: torch.device) -> dict[str, Any]:
    """Implementation flags for speed: PyTorch's fused Adam/AdamW kernels on CPU and CUDA
    (one kernel over all parameters instead of one small op per tensor and moment)."""
    if cls in (torch.optim.Adam, torch.optim.AdamW) and device.type in ("cpu", "cuda"):
        return {"fused": True}
    return {}


#: Pyro's compiled ELBOs (``JitTrace_ELBO`` ...): each records its first call, scales included
_PYRO_JIT_ELBOS = tuple(getattr(pyro.infer, name) for name in dir(pyro.infer) if name.startswith("Jit"))


def seed(value: int) -> None:
    """Seed torch, Python's ``random`` and NumPy (``pyro.set_rng_seed``): build a model after this,
    and ``fit(..., seed=value)`` reproduces the run bit for bit on the CPU (its initial weights too).

    Example::

        pyrovae.seed(0)
        vae = pyrovae.VAE((784,), 20)
        pyrovae.fit(vae, x, seed=0)
    """
    check_positive_int("seed", value, minimum=0)
    pyro.set_rng_seed(value)


class TrainingDiverged(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    :ivar model: the trained object (the pyrovae model, your object, or your pair).
    :ivar history: one dict per epoch: ``epoch``, ``step``, ``train_loss`` (the
        training objective's negative value per data point, β included),
        ``kl_weight``, ``valid_elbo`` (true ELBO per held-out point, β = 1) and
        ``seconds``.
    :ivar run_dir: the run folder, if ``out`` was given.
    :ivar step: the number of optimisation steps taken in all.
    :ivar eager_reason: ``None`` if the training steps ran compiled, else why they ran eagerly.
    :ivar distributed: how gradients were averaged across ranks: ``"ddp"``
        (DistributedDataParallel), ``"all-reduce"`` (one flat buffer), or ``None``
        in a single process.
    """

    model: Any
    history: list[dict[str, float]]
    run_dir: Path | None
    step: int
    eager_reason: str | None = None
    distributed: str | None = None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def _resolve_device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Expected device to be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available; use device='cpu' or 'auto'")
    return device


def _distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device); initialises the process group under torchrun.

    On GPUs each rank takes the GPU of its ``LOCAL_RANK`` (torchrun sets it), as NCCL needs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return 0, 1, device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def _module_param_ids(owner: Any) -> set[int]:
    return {id(p) for p in owner.parameters()} if isinstance(owner, torch.nn.Module) else set()


def _state(owner: Any, params: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Model state safe for ``weights_only`` loading: a module's state_dict and free Pyro params."""
    in_module = _module_param_ids(owner)
    return {
        "module": owner.state_dict() if isinstance(owner, torch.nn.Module) else {},
        "params": {k: v.detach().cpu().clone() for k, v in params.items() if id(v) not in in_module},
    }


def _load_state(owner: Any, params: dict[str, torch.Tensor], state: Mapping[str, Any],
                source: str | os.PathLike = "the checkpoint") -> None:
    """Copy ``state`` (from :func:`_state`) into the model; ``source`` (the file) names every refusal.

    Everything is checked before anything is copied, so a refused checkpoint leaves the model as it was.
    """
    module = owner.state_dict() if isinstance(owner, torch.nn.Module) else {}
    in_module = _module_param_ids(owner)
    free = {k: v for k, v in params.items() if id(v) not in in_module}
    for kind, ours, saved in (("tensor", module, state["module"]), ("parameter", free, state["params"])):
        missing, unexpected = [k for k in ours if k not in saved], [k for k in saved if k not in ours]
        if unexpected:
            raise ValueError(f"{source} holds {kind} {unexpected[0]!r} that the model does not define"
                             + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
        if missing:
            raise ValueError(f"{source} lacks the model's {kind} {missing[0]!r}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        differ = [k for k in ours if isinstance(ours[k], torch.Tensor) and _shape(saved[k]) != _shape(ours[k])]
        if differ:
            k = differ[0]
            raise ValueError(f"{source} holds {k} of shape {_shape(saved[k])}, the model has {_shape(ours[k])}"
                             + (f"; {len(differ) - 1} more differ" if len(differ) > 1 else ""))
    if isinstance(owner, torch.nn.Module):
        owner.load_state_dict(state["module"])
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)


def _shape(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


@torch.no_grad()
def evaluate_elbo(obj: Any, data: Any, *, batch_size: int = 1000, num_particles: int = 1, seed: int = 0,
                  data_plate: str | None = None) -> float:
    """The true ELBO per data point, averaged over ``data``.

    Latent sites the model marks for enumeration and the guide leaves out are
    summed exactly (``TraceEnum_ELBO``); every other latent is sampled.

    The true model is the program with every scale removed (β = 1, no
    minibatch N/B, no ``poutine.scale`` of the program's own: a warning says
    when one is dropped), as :func:`~pyrovae.metrics.likelihood.log_likelihood`
    scores it.  Uses common random numbers (``seed``) so that successive calls
    are comparable.  ``data`` and ``data_plate`` as in :func:`fit`.
    """
    programs = resolve_programs(obj)
    batches = as_data(data, "data")
    batches = validate_batch(programs, batches, "data")
    check_positive_int("batch_size", batch_size)
    check_positive_int("num_particles", num_particles)
    check_positive_int("seed", seed, minimum=0)
    device = device_of(programs.owner, batches.x)
    kwargs = programs.kwargs(1.0)
    total = 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with pyro.validation_enabled(True):
            first = batches.index(slice(0, batch_size)).to(device)  # not the whole set: a few points are traced
            structure = inspect_pair(programs, first, kwargs, data_plate=data_plate, what="evaluate_elbo")
        truth = true_model(programs, structure, "evaluate_elbo")
        # a site the model sums out (and the guide leaves out) is summed exactly, as TraceEnum_ELBO trains it
        estimator = TraceEnum_ELBO if structure.enumerated else Trace_ELBO
        elbo = estimator(num_particles=num_particles, vectorize_particles=num_particles > 1,
                         max_plate_nesting=structure.max_plate_nesting + int(num_particles > 1))
        torch.manual_seed(seed)
        with pyro.validation_enabled(False):
            for batch in batches.split(batch_size):
                batch = batch.to(device)
                total += elbo.loss(truth.model, truth.guide, *batch.args, **batch.kwargs, **kwargs)
    return -total / len(batches)


def _write_history(run_dir: Path, history: list[dict[str, float]]) -> None:
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    if history:
        keys = list(dict.fromkeys(k for row in history for k in row))
        with open(run_dir / "history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(history)


def _auxiliary_hyperparameters(owner: Any) -> dict[str, Any]:
    """The auxiliary Adam's ``lr`` and ``betas``, from the trained object's attributes (or Adam's defaults)."""
    return {
        "lr": float(getattr(owner, "auxiliary_lr", 1e-4)),
        "betas": tuple(float(b) for b in getattr(owner, "auxiliary_betas", (0.9, 0.999))),
    }


@dataclasses.dataclass
class Stream:
    r"""A further data stream that ``fit`` trains in the same steps as its data.

    Each step draws one minibatch from ``fit``'s data and one from every
    stream, scales each by its own :math:`N_s / B_s`, and takes one optimizer
    step on the sum of the losses, so the step estimates

    .. math::

        \mathcal L = \mathcal L_0(\text{data}) + \sum_s \mathcal L_s(\text{stream}_s),

    each term an unbiased minibatch estimate of its whole data set's objective.
    An epoch is a pass over ``fit``'s data; a stream cycles through its own
    data, a fresh order every pass.  Semi-supervised learning (Kingma et al.
    2014's M2) is this: unlabelled images as ``fit``'s data (``model(x)``,
    the label a latent), labelled pairs ``(x, y)`` as a stream (``model(x, y)``,
    the label observed), and the classifier's auxiliary term as a stream with
    programs of its own.

    :param data: the stream's data, in any form ``fit`` takes.
    :param programs: its model/guide (an object or a pair); default: ``fit``'s own.
    :param objective: its objective (a name or an ELBO instance).
    :param num_particles: for a named objective.
    :param alpha: for a named objective.
    :param batch_size: its minibatch size (default: ``fit``'s).
    :param data_plate: its per-point plate's name, where several qualify.

    Example::

        fit(m2, x_unlabelled, streams=[Stream((x_labelled, y_labelled))], epochs=50)

    References:
      1. D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling. Semi-Supervised Learning with
         Deep Generative Models. arXiv:1406.5298.
    """

    data: Any
    programs: Any = None
    objective: str | ELBO = "elbo"
    num_particles: int | None = None
    alpha: float | None = None
    batch_size: int | None = None
    data_plate: str | None = None


@dataclasses.dataclass
class _Source:
    """One data set and what trains on it: programs, objective, the plate scaler, and where it is in its pass."""

    programs: Programs
    data: Data
    elbo: ELBO
    structure: Structure
    scaler: plate_scale
    model: Callable
    guide: Callable
    batch_size: int
    drop_short: bool
    epoch: int = 0
    batch_index: int = 0
    step_objective: ELBO | None = None

    @property
    def num_data(self) -> int:
        return len(self.data)

    def batches(self, seed: int, epoch: int, rank: int, world: int) -> list[torch.Tensor]:
        """This rank's minibatch indices for one pass: a pure function of (seed, epoch), so resumes and ranks agree."""
        n = self.num_data
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        if world > 1:  # equal shards, padded by wrapping around, as DistributedSampler does
            order = torch.cat([order, order[: (-n) % world]])[rank::world]
        batches = list(order.to(self.data.x.device).split(self.batch_size))
        if self.drop_short and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        return batches

    def loss_and_grads(self, xb: Data, kwargs: dict[str, Any]) -> float:
        self.scaler.scale = self.num_data / len(xb)  # N / B on each rank; averaging over ranks keeps it unbiased
        return self.step_objective.loss_and_grads(self.model, self.guide, *xb.args, **xb.kwargs, **kwargs)


def _objective_label(objective: Any, elbo: ELBO) -> str:
    return f"objective={objective!r}" if isinstance(objective, str) else type(elbo).__name__


def _source(programs: Programs, data: Data, objective: Any, elbo: ELBO, batch_size: int, world: int,
            kwargs: dict[str, Any], data_plate: str | None) -> _Source:
    """Inspect a program on its data (plain traces, Pyro's checks on), check its objective, scale its plate."""
    with pyro.validation_enabled(True):
        # plain traces on a few points, with Pyro's own shape and support checks: the program's
        # structure (its per-point plate, latents, parameters) before any particle or loss runs
        structure = inspect_pair(programs, data, kwargs, data_plate=data_plate, what="fit")
        check_objective(elbo, structure, _objective_label(objective, elbo))
        set_data_plate(elbo, structure)
        scaler = plate_scale(structure.data_plate, 1.0)
        model, guide = scaler(programs.model), scaler(programs.guide)
        if math.isinf(getattr(elbo, "max_plate_nesting", 0)):  # as Pyro would guess, without the log line
            elbo.max_plate_nesting = structure.max_plate_nesting + int(bool(getattr(elbo, "vectorize_particles", False)))
        small = data.index(slice(0, min(len(data), 4)))
        elbo.loss(model, guide, *small.args, **small.kwargs, **kwargs)
    n = len(data)
    batch_size = min(batch_size, math.ceil(n / world))
    # Pyro's compiled ELBOs record the first minibatch's N / B as a constant: a short one would be mis-scaled
    drop_short = isinstance(elbo, _PYRO_JIT_ELBOS) and n % (batch_size * world) != 0 and n > batch_size * world
    if drop_short:
        warnings.warn(
            f"{type(elbo).__name__} records the first minibatch's scale N/B into its compiled trace, so fit drops "
            f"each epoch's short last minibatch ({math.ceil(n / world) % batch_size} of {n} points; a different "
            "random subset every epoch) instead of scoring it at the wrong scale",
            stacklevel=3,
        )
    return _Source(programs, data, elbo, structure, scaler, model, guide, batch_size, drop_short)


def check_optimizer_options(optimizer: str, options: Mapping[str, Any] | None, lr: float) -> dict[str, Any]:
    """``options`` as a dict of keyword arguments that ``OPTIMIZERS[optimizer]`` accepts (tuples kept), or an error.

    The constructor itself checks the values (e.g. Adam's ``0 <= betas < 1``), on a
    throwaway parameter, so a bad value is refused before any work.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise TypeError(f"Expected optimizer_options to be a dict of keyword arguments, got {options!r}")
    cls = OPTIMIZERS[optimizer]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params", "lr", "fused", "foreach",
                                                                    "capturable", "differentiable"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        reserved = " (the learning rate is fit's lr=)" if "lr" in unknown else ""
        raise ValueError(f"optimizer_options: {optimizer!r} ({cls.__name__}) takes no {unknown}{reserved}; "
                         f"expected some of {sorted(accepted)}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}  # betas from a config.json
    try:
        cls([torch.zeros(1, requires_grad=True)], lr=lr, **options)
    except (ValueError, TypeError) as e:
        raise ValueError(f"optimizer_options {options!r} rejected by {cls.__name__}: {e}") from e
    return options


def _check_arguments(epochs: int, batch_size: int, seed: int, checkpoint_every: int | None, lr: Any, optimizer: str,
                     resume: bool, out: Any, jit: Any, programs: Programs) -> None:
    """Refuse bad options before any work, naming the argument and the expected form."""
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_positive_int("seed", seed, minimum=0)
    if checkpoint_every is not None:
        check_positive_int("checkpoint_every", checkpoint_every)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"Expected lr to be a finite number > 0, got {lr!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Expected optimizer in {sorted(OPTIMIZERS)}, got {optimizer!r}")
    if resume and out is None:
        raise ValueError("resume=True needs out= (the run folder holding checkpoint.pt)")
    if jit not in (None, True, False):
        raise ValueError(f"Expected jit to be None, True or False, got {jit!r}")
    if jit is True and not isinstance(programs.owner, torch.nn.Module):
        raise ValueError(
            "jit=True needs an object that is a torch.nn.Module holding every parameter "
            f"(got {type(programs.owner).__name__}); pass jit=None or False"
        )


def _step_objective(elbo: ELBO, programs: Programs, jit: bool | None, world: int) -> tuple[ELBO, str]:
    """The objective a step calls (compiled where it may be) and, if eager, why."""
    if jit is False:
        return elbo, "jit=False"
    if not isinstance(programs.owner, torch.nn.Module):
        return elbo, "the parameters are not held by one torch.nn.Module"
    # A class written outside pyrovae may keep Python state a recorded graph would freeze:
    # Compiled(foreign=True) also refuses attributes and buffers a call changes, and a graph that a
    # second eager step disagrees with; then the step runs eagerly and eager_reason says why.
    foreign = type(programs.owner).__module__.split(".")[0] != "pyrovae"
    # strict only in one process: a refusal on one rank must not leave the others waiting
    return Compiled(elbo, programs.owner, strict=jit is True and world == 1, foreign=foreign), "compiled"


def fit(
    obj: Any,
    data: Any,
    *,
    objective: str | ELBO | None = None,
    num_particles: int | None = None,
    alpha: float | None = None,
    kl_weight: float | Schedule | Mapping[str, Any] | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    optimizer_options: Mapping[str, Any] | None = None,
    valid_data: Any = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    out: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
    record: Mapping[str, Any] | None = None,
    jit: bool | None = None,
    data_plate: str | None = None,
    streams: list[Stream] | tuple[Stream, ...] = (),
) -> FitResult:
    r"""Train a model/guide pair by stochastic variational inference.

    :param obj: a pyrovae model, any object with ``model``/``guide`` methods, or
        a ``(model, guide)`` pair of Pyro programs; per-point sites in a
        ``pyro.plate`` (any name) sized by the batch or broadcast over it.
    :param data: training data: a tensor ``(N, ...)``, a pyrovae ``DataSet``, a
        tuple of tensors ``(x, y)`` (model and guide called as ``model(x, y)``),
        a dict of tensors (called as keywords) or a ``torch.utils.data.Dataset``
        of tensors, tuples or dicts; every tensor's first dimension is the point.
    :param objective: a name in :data:`pyrovae.objectives.OBJECTIVES` or any
        :class:`pyro.infer.ELBO` instance; default: the model's
        ``default_objective`` (``"enum"`` for a model that sums a latent out,
        ``"elbo"`` otherwise and for your own programs).
    :param num_particles: samples per data point (``iwae``'s K), for named objectives.
    :param alpha: the Rényi order, for ``objective="renyi"``.
    :param kl_weight: β, a number, a :class:`~pyrovae.schedules.Schedule` or its
        dict; default: the model's ``default_kl_weight`` (1 for a VAE).
    :param epochs: passes over the data (counted in total, also when resuming).
    :param batch_size: minibatch size (per rank when distributed).
    :param lr: learning rate.
    :param optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` or ``"rmsprop"``.
    :param optimizer_options: further keyword arguments of the optimizer's
        constructor, e.g. ``{"eps": 1e-4}`` (Burda et al.'s Adam) or
        ``{"betas": (0.95, 0.999)}``; checked against its signature and values
        before any work.  Like ``lr`` they may change when resuming (the new
        values apply from there on).
    :param valid_data: held-out data for the per-epoch true ELBO.
    :param seed: seeds parameters' noise, data order and sampling.
    :param device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    :param out: run folder for ``history.{csv,json}`` and ``checkpoint.pt``.
    :param checkpoint_every: steps between checkpoints (default: once an epoch).
    :param resume: continue from ``out``'s checkpoint if there is one; ``lr`` may
        differ from the run's (each history row records the lr it trained with),
        the other settings may not.
    :param progress: show a progress bar with the running loss.
    :param record: extra JSON-safe metadata stored in the checkpoint (the CLI's run config).
    :param jit: compile the training step (:class:`~pyrovae.objectives.compiled.Compiled`):
        ``None`` (default) compiles pyrovae's own models when the pair allows it
        and otherwise runs eagerly (``FitResult.eager_reason`` says why);
        ``True`` also compiles your own ``nn.Module`` (it must take every value
        that changes during training as an argument, e.g. through
        ``training_kwargs``) and raises where it cannot (under ``torchrun`` a
        rank that cannot runs eagerly instead); ``False`` never compiles.
    :param data_plate: the name of the per-point plate, where the program has
        several plates sized by the batch (otherwise it is found: the plate
        around the observed sites whose size follows the batch).
    :param streams: further data sets trained in the same steps, each with its
        own programs and objective (:class:`Stream`; semi-supervised M2's
        labelled stream, say); their losses are added, each scaled to its
        whole data set, and their epoch means logged as ``stream{i}_loss``.
    :returns: a :class:`FitResult`.

    Example::

        result = pyrovae.fit(pyrovae.VAE((784,), 20), x_train, objective="iwae",
                             num_particles=5, epochs=10, valid_data=x_valid)
    """
    # ------------------------------------------------------------ validation
    programs = resolve_programs(obj)
    train = as_data(data, "data")
    epoch_view = getattr(data, "epoch_view", None)  # data redrawn each epoch (dynamic binarization)
    train = validate_batch(programs, train, "data")
    valid = None
    if valid_data is not None:
        valid = as_data(valid_data, "valid_data")
        valid = validate_batch(programs, valid, "valid_data")
    if "kl_weight" in train.kwargs:
        raise ValueError("data key 'kl_weight' clashes with the keyword argument fit passes to model and guide")
    _check_arguments(epochs, batch_size, seed, checkpoint_every, lr, optimizer, resume, out, jit, programs)
    optimizer_options = check_optimizer_options(optimizer, optimizer_options, lr)
    if objective is None:
        objective = getattr(programs.owner, "default_objective", "elbo")
    elbo = make_objective(objective, num_particles=num_particles, alpha=alpha)
    if analytic_kl(elbo) and not getattr(programs.owner, "mean_field_guide", True):
        raise ValueError(
            f"{_objective_label(objective, elbo)} takes each latent's KL in closed form, which is biased for "
            f"{type(programs.owner).__name__}: its guide's sites depend on other latents (mean_field_guide is "
            "False); use objective='elbo', 'iwae' or another sampled estimator"
        )
    if not isinstance(streams, (list, tuple)) or not all(isinstance(s, Stream) for s in streams):
        raise TypeError(f"Expected streams to be a list of pyrovae.Stream, got {streams!r}")
    extra = []
    for i, stream in enumerate(streams):
        stream_programs = programs if stream.programs is None else resolve_programs(stream.programs)
        stream_data = as_data(stream.data, f"streams[{i}].data")
        stream_data = validate_batch(stream_programs, stream_data, f"streams[{i}].data")
        if stream.batch_size is not None:
            check_positive_int(f"streams[{i}].batch_size", stream.batch_size)
        extra.append((stream, stream_programs, stream_data,
                      make_objective(stream.objective, num_particles=stream.num_particles, alpha=stream.alpha)))
    if kl_weight is None:
        kl_weight = getattr(programs.owner, "default_kl_weight", 1.0)
    schedule = make_schedule(kl_weight)
    if not programs.takes_kl_weight and schedule != Constant(1.0):
        raise ValueError(
            f"kl_weight={kl_weight!r} needs model and guide that accept a kl_weight keyword "
            "(see pyrovae.handlers.kl_scale); these do not"
        )
    device = _resolve_device(device)
    run_dir = Path(out) if out is not None else None
    if run_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        check_writable(run_dir)  # a read-only or blocked folder fails now, not after the first epoch

    # ------------------------------------------------------------ set-up
    rank, world, device = _distributed(device)
    for p in {id(p.owner): p.owner for p in [programs, *(e[1] for e in extra)]}.values():
        if isinstance(p, torch.nn.Module):
            p.to(device)
    train = train.to(device)
    if valid is not None:
        valid = valid.to(device)
    set_num_data = getattr(programs.owner, "set_num_data", None)
    if callable(set_num_data):  # e.g. β-TCVAE's minibatch estimators of q(z) need the data set's size
        set_num_data(len(train))
    checkpoint = None
    if resume and run_dir is not None and (run_dir / CHECKPOINT_NAME).exists():
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
    pyro.set_rng_seed(seed)
    sources = [_source(programs, train, objective, elbo, batch_size, world, programs.kwargs(schedule(0), 0), data_plate)]
    for stream, stream_programs, stream_data, stream_elbo in extra:
        sources.append(_source(stream_programs, stream_data.to(device), stream.objective, stream_elbo,
                               stream.batch_size or batch_size, world, stream_programs.kwargs(schedule(0), 0),
                               stream.data_plate))
    params: dict[str, torch.Tensor] = {}
    for src in sources:
        params.update({k: v for k, v in src.structure.params.items() if k not in params})
    if not params:
        raise ValueError("The model and guide define no parameters (pyro.param or pyro.module): nothing to train")
    sources[0].step_objective, eager_reason = _step_objective(elbo, programs, jit if not extra else False, world)
    if extra:
        eager_reason = "fit has streams (each step sums several objectives)"
    for src in sources[1:]:
        src.step_objective = src.elbo
    settings = {"batch_size": sources[0].batch_size, "seed": seed, "num_data": len(train), "world": world,
                "lr": float(lr), "optimizer": optimizer, "optimizer_options": optimizer_options,
                "objective": objective if isinstance(objective, str) else type(objective).__name__,
                "kl_weight": schedule.to_dict(), "epochs": epochs,
                "streams": [[src.num_data, src.batch_size] for src in sources[1:]]}
    if checkpoint is not None:
        _check_resumable(run_dir, checkpoint["settings"], settings)
    trainer = _Trainer(obj, programs, sources, params, schedule, settings, device, rank, world, run_dir,
                       record, checkpoint_every, progress)
    if checkpoint is not None:
        trainer.restore(checkpoint)
        for group in trainer.optim.param_groups:  # a new lr (e.g. after a NaN) applies from here on
            group.update(lr=float(lr), **optimizer_options)
    trainer.run(epochs, epoch_view, valid, seed)
    if isinstance(sources[0].step_objective, Compiled):
        eager_reason = sources[0].step_objective.eager_reason
    elif eager_reason == "compiled":
        eager_reason = None
    distributed = None if world <= 1 else ("ddp" if trainer.ddp is not None else "all-reduce")
    return FitResult(model=obj, history=trainer.history, run_dir=run_dir, step=trainer.step,
                     eager_reason=eager_reason, distributed=distributed)


def _check_resumable(run_dir: Path | None, before: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuse to resume a run under settings that would change what it computes."""
    for key in ("batch_size", "seed", "num_data", "world", "optimizer", "streams"):  # lr may change: recorded
        if key in before and before[key] != now[key]:
            raise ValueError(f"Cannot resume {run_dir}: it was trained with {key}={before[key]}, now {now[key]}")


class _Trainer:
    """The loop: restore, step, save.  Holds what a checkpoint holds."""

    def __init__(self, obj: Any, programs: Programs, sources: list[_Source], params: dict[str, torch.Tensor],
                 schedule: Schedule, settings: dict[str, Any], device: torch.device, rank: int, world: int,
                 run_dir: Path | None, record: Mapping[str, Any] | None, checkpoint_every: int | None,
                 progress: bool) -> None:
        self.obj, self.programs, self.sources, self.params = obj, programs, sources, params
        self.schedule, self.settings, self.device = schedule, settings, device
        self.rank, self.world, self.run_dir, self.record = rank, world, run_dir, dict(record or {})
        self.checkpoint_every, self.progress = checkpoint_every, progress
        self.writer = rank == 0 and run_dir is not None
        if self.writer:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.step, self.epoch, self.history = 0, 0, []
        self.sums: dict[str, float] = {"loss": 0.0, "count": 0}
        main = sources[0]
        optim_cls = OPTIMIZERS[settings["optimizer"]]
        fused_ok = all(p.is_floating_point() and p.device.type == device.type for p in params.values())
        if world > 1:
            _broadcast(params.values())
        self.optim = optim_cls(list(params.values()), lr=settings["lr"], **settings["optimizer_options"],
                               **(optimizer_options(optim_cls, device) if fused_ok else {}))
        self.aux_params, self.aux_loss = programs.auxiliary()
        self.aux_optim = None
        if self.aux_loss is not None:
            if world > 1:
                _broadcast(self.aux_params)
            self.aux_optim = torch.optim.Adam(self.aux_params, **_auxiliary_hyperparameters(programs.owner))
        self.ddp = None
        if world > 1 and len(sources) == 1:
            self.ddp = _data_parallel(programs, main.step_objective, main.model, main.guide, params,
                                      self.aux_params, device)

    # ------------------------------------------------------------ state
    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        main = self.sources[0]
        source = self.run_dir / CHECKPOINT_NAME
        _load_state(self.programs.owner, self.params, checkpoint["state"], source)
        for name, optim, saved in (("optimizer", self.optim, checkpoint["optimizer"]),
                                   ("aux_optimizer", self.aux_optim, checkpoint.get("aux_optimizer"))):
            if optim is None:
                continue
            try:
                optim.load_state_dict(saved)
            except (KeyError, ValueError, TypeError, RuntimeError) as e:  # torch says what, not which file
                raise ValueError(f"{source} holds {name} state that does not fit the model's parameters "
                                 f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
        if checkpoint.get("objective") and callable(getattr(main.elbo, "load_state_dict", None)):
            main.elbo.load_state_dict(checkpoint["objective"], self.device)  # e.g. the graph objective's baselines
        if self.aux_optim is not None:
            for group in self.aux_optim.param_groups:  # the model's values, even where an older checkpoint held others
                group.update(_auxiliary_hyperparameters(self.programs.owner))
        self.step, self.epoch, main.batch_index = checkpoint["step"], checkpoint["epoch"], checkpoint["batch_index"]
        for src, (epoch, index) in zip(self.sources[1:], checkpoint.get("streams", [])):
            src.epoch, src.batch_index = epoch, index
        self.history, self.sums = list(checkpoint["history"]), dict(checkpoint["sums"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in checkpoint["rng"]:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], self.device)

    def save(self) -> Path:
        main = self.sources[0]
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "format": 2, "step": self.step, "epoch": self.epoch, "batch_index": main.batch_index,
            "streams": [[src.epoch, src.batch_index] for src in self.sources[1:]],
            "sums": dict(self.sums), "history": self.history, "rng": rng, "settings": self.settings,
            "state": _state(self.programs.owner, self.params), "optimizer": self.optim.state_dict(),
            "aux_optimizer": self.aux_optim.state_dict() if self.aux_optim is not None else {},
            "objective": main.elbo.state_dict() if callable(getattr(main.elbo, "state_dict", None)) else {},
            "model": {"class": type(self.programs.owner).__name__, "config": getattr(self.programs.owner, "config", {})},
            "record": self.record,
        }
        return save_checkpoint(state, self.run_dir / CHECKPOINT_NAME)

    # ------------------------------------------------------------ one step
    def _stream_batch(self, src: _Source, seed: int, index: int) -> Data:
        """The next minibatch of a stream; a new pass (and order) when one ends."""
        batches = src.batches(seed + 7919 * index, src.epoch, self.rank, self.world)
        if src.batch_index >= len(batches):
            src.epoch, src.batch_index = src.epoch + 1, 0
            batches = src.batches(seed + 7919 * index, src.epoch, self.rank, self.world)
        xb = src.data.index(batches[src.batch_index])
        src.batch_index += 1
        return xb

    def _step(self, xb: Data, seed: int, batch_number: int) -> None:
        """One optimizer step on the minibatch ``xb`` of fit's data (plus one of every stream)."""
        main = self.sources[0]
        weight = self.schedule(self.step)
        self.optim.zero_grad(set_to_none=True)
        kwargs = self.programs.kwargs(weight, self.step)
        if self.ddp is not None:  # DDP averages the gradients during backward; then the loss
            main.scaler.scale = main.num_data / len(xb)
            loss_tensor, surrogate = self.ddp(*xb.args, **xb.kwargs, **kwargs)
            surrogate.backward()
            loss_tensor = loss_tensor.detach().reshape(1).clone()
            torch.distributed.all_reduce(loss_tensor)
            losses = [float(loss_tensor) / self.world]
        else:
            losses = [main.loss_and_grads(xb, kwargs)]
            for index, src in enumerate(self.sources[1:], 1):
                batch = self._stream_batch(src, seed, index)
                losses.append(src.loss_and_grads(batch, src.programs.kwargs(weight, self.step)))
            if self.world > 1:  # one all-reduce: gradients and the losses, so every rank sees a NaN anywhere
                losses = _average_gradients(list(self.params.values()), self.world, losses)
        total = sum(losses)
        if not math.isfinite(total):
            path = self.run_dir / CHECKPOINT_NAME if self.writer else None
            where = f"; the last good checkpoint is {path}" if path is not None and path.exists() else ""
            raise TrainingDiverged(
                f"Training stopped: the loss became {total} at step {self.step} (epoch {self.epoch + 1}, "
                f"batch {batch_number}); this step's gradients were not applied{where}. "
                "Try a smaller lr, or check the data and the likelihood's scale."
            )
        self.optim.step()
        if self.aux_optim is not None:
            self.aux_optim.zero_grad(set_to_none=True)
            terms = self.aux_loss(*xb.args, **xb.kwargs)
            terms["loss"].backward()
            if self.world > 1:
                _average_gradients(self.aux_params, self.world)
            self.aux_optim.step()
            for key, value in terms.items():
                self.sums[f"aux_{key}"] = self.sums.get(f"aux_{key}", 0.0) + float(torch.as_tensor(value).detach())
        self.step += 1
        self.sums["loss"] += losses[0] / main.num_data
        for index, (src, loss) in enumerate(zip(self.sources[1:], losses[1:]), 1):
            key = f"stream{index}_loss"
            self.sums[key] = self.sums.get(key, 0.0) + loss / src.num_data
        self.sums["count"] += 1

    # ------------------------------------------------------------ the loop
    def run(self, epochs: int, epoch_view: Callable | None, valid: Data | None, seed: int) -> None:
        from tqdm.auto import tqdm

        main = self.sources[0]
        steps_per_epoch = len(main.batches(seed, 0, self.rank, self.world))
        total_steps = epochs * steps_per_epoch
        bar = tqdm(total=total_steps, initial=min(self.step, total_steps), disable=not self.progress or self.rank != 0,
                   desc="fit", unit="step", dynamic_ncols=True)
        seconds_before = self.history[-1]["seconds"] if self.history else 0.0  # cumulative across resumes
        start = time.perf_counter()
        try:
            with pyro.validation_enabled(False):
                while self.epoch < epochs:
                    if callable(epoch_view):  # a pure function of (seed, epoch): resumes and ranks agree
                        main.data = main.data.replace_x(epoch_view(self.epoch).to(self.device))
                    batches = main.batches(seed, self.epoch, self.rank, self.world)
                    while main.batch_index < len(batches):
                        self._step(main.data.index(batches[main.batch_index]), seed, main.batch_index + 1)
                        main.batch_index += 1
                        bar.update(1)
                        if self.step % 25 == 0 or main.batch_index == len(batches):
                            bar.set_postfix(loss=f"{self.sums['loss'] / self.sums['count']:.2f}",
                                            epoch=self.epoch + 1, refresh=False)
                        if (self.writer and self.checkpoint_every and self.step % self.checkpoint_every == 0
                                and main.batch_index < len(batches)):
                            self.save()
                    self._end_epoch(valid, seed, seconds_before + time.perf_counter() - start)
        finally:
            bar.close()

    def _end_epoch(self, valid: Data | None, seed: int, seconds: float) -> None:
        count = max(self.sums["count"], 1)
        row = {"epoch": self.epoch + 1, "step": self.step, "train_loss": self.sums["loss"] / count,
               "kl_weight": self.schedule(self.step - 1), "lr": self.settings["lr"]}
        row.update({k: v / count for k, v in self.sums.items() if k.startswith(("aux_", "stream"))})
        if valid is not None and self.rank == 0:
            row["valid_elbo"] = evaluate_elbo(self.obj, valid, seed=seed,
                                              data_plate=self.sources[0].structure.data_plate)
        row["seconds"] = seconds
        self.history.append(row)
        self.epoch, self.sources[0].batch_index, self.sums = self.epoch + 1, 0, {"loss": 0.0, "count": 0}
        if self.writer:
            _write_history(self.run_dir, self.history)
            self.save()


def _broadcast(params: Any) -> None:
    for p in params:
        torch.distributed.broadcast(p.data, src=0)


class _ObjectiveModule(torch.nn.Module):
    """The module DistributedDataParallel wraps: its forward is the objective's loss and surrogate."""

    def __init__(self, owner: torch.nn.Module, loss_and_surrogate: Callable, model: Callable, guide: Callable) -> None:
        super().__init__()
        self.owner = owner
        self._loss_and_surrogate, self._model, self._guide = loss_and_surrogate, model, guide

    def forward(self, *args: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self._loss_and_surrogate(self._model, self._guide, *args, **kwargs)


def _data_parallel(programs: Programs, objective: ELBO, model: Callable, guide: Callable,
                   params: dict[str, torch.Tensor], aux_params: list[torch.Tensor], device: torch.device) -> Any:
    """DistributedDataParallel around the objective, or ``None`` where it cannot wrap it."""
    owner = programs.owner
    fn = loss_and_surrogate_of(objective)
    if not isinstance(owner, torch.nn.Module) or fn is None:
        return None
    owned = _module_param_ids(owner)
    if not all(id(p) in owned for p in params.values()):
        return None  # pyro.param sites outside the module: DDP would not see them
    from torch.nn.parallel import DistributedDataParallel

    wrapper = _ObjectiveModule(owner, fn, model, guide)
    # the auxiliary step (a discriminator) has its own optimiser and its own all-reduce; a parameter
    # that the ELBO trains too stays with DDP, so its ELBO gradient is averaged
    aux = {id(p) for p in aux_params} - {id(p) for p in params.values()}
    ignored = [name for name, p in wrapper.named_parameters() if id(p) in aux]
    if ignored:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(wrapper, ignored)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(wrapper, device_ids=device_ids, find_unused_parameters=True,
                                   broadcast_buffers=False)


def _average_gradients(params: list[torch.Tensor], world: int, losses: list[float] | None = None) -> list[float] | None:
    """Average gradients (and ``losses``, if given) over ranks with one all-reduce of a flat buffer."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    parts = [g.reshape(-1) for g in grads]
    if losses is not None:
        parts.append(torch.tensor(losses, dtype=parts[0].dtype, device=parts[0].device))
    flat = torch.cat(parts)
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        averaged = flat[offset : offset + n].view_as(p)
        if p.grad is None:
            p.grad = averaged.clone()
        else:
            p.grad.copy_(averaged)
        offset += n
    return flat[offset:].tolist() if losses is not None else None
