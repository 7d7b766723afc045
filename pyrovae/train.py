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
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO

from pyrovae.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from pyrovae.handlers import plate_scale
from pyrovae.objectives import make_objective
from pyrovae.objectives.compiled import Compiled, loss_and_surrogate_of
from pyrovae.programs import (
    Data,
    Programs,
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
from pyrovae.schedules import Constant, Schedule, make_schedule

__all__ = ["fit", "FitResult", "TrainingDiverged", "resolve_programs", "evaluate_elbo"]

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
    device = torch.device(device)
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


def _load_state(owner: Any, params: dict[str, torch.Tensor], state: Mapping[str, Any]) -> None:
    if isinstance(owner, torch.nn.Module):
        owner.load_state_dict(state["module"])
    with torch.no_grad():
        for name, value in state["params"].items():
            if name not in params:
                raise ValueError(f"Checkpoint has parameter {name!r} that the model does not define")
            params[name].copy_(value)


@torch.no_grad()
def evaluate_elbo(obj: Any, data: Any, *, batch_size: int = 1000, num_particles: int = 1, seed: int = 0,
                  data_plate: str | None = None) -> float:
    """The true ELBO per data point, averaged over ``data``.

    The true model is the program with every scale removed (β = 1, no
    minibatch N/B, no ``poutine.scale`` of the program's own: a warning says
    when one is dropped), as :func:`~pyrovae.metrics.likelihood.log_likelihood`
    scores it.  Uses common random numbers (``seed``) so that successive calls
    are comparable.  ``data`` and ``data_plate`` as in :func:`fit`.
    """
    programs = resolve_programs(obj)
    batches = as_data(data, "data")
    validate_batch(programs, batches, "data")
    check_positive_int("batch_size", batch_size)
    check_positive_int("num_particles", num_particles)
    check_positive_int("seed", seed, minimum=0)
    device = device_of(programs.owner, batches.x)
    kwargs = programs.kwargs(1.0)
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)
    total = 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with pyro.validation_enabled(True):
            structure = inspect_pair(programs, batches.to(device), kwargs, data_plate=data_plate, what="evaluate_elbo")
        truth = true_model(programs, structure, "evaluate_elbo")
        elbo.max_plate_nesting = structure.max_plate_nesting + int(num_particles > 1)
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


def fit(
    obj: Any,
    data: Any,
    *,
    objective: str | ELBO = "elbo",
    num_particles: int | None = None,
    alpha: float | None = None,
    kl_weight: float | Schedule | Mapping[str, Any] | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
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
        :class:`pyro.infer.ELBO` instance.
    :param num_particles: samples per data point (``iwae``'s K), for named objectives.
    :param alpha: the Rényi order, for ``objective="renyi"``.
    :param kl_weight: β, a number, a :class:`~pyrovae.schedules.Schedule` or its
        dict; default: the model's ``default_kl_weight`` (1 for a VAE).
    :param epochs: passes over the data (counted in total, also when resuming).
    :param batch_size: minibatch size (per rank when distributed).
    :param lr: learning rate.
    :param optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` or ``"rmsprop"``.
    :param valid_data: held-out data for the per-epoch true ELBO.
    :param seed: seeds parameters' noise, data order and sampling.
    :param device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    :param out: run folder for ``history.{csv,json}`` and ``checkpoint.pt``.
    :param checkpoint_every: steps between checkpoints (default: once an epoch).
    :param resume: continue from ``out``'s checkpoint if there is one.
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
    :returns: a :class:`FitResult`.

    Example::

        result = pyrovae.fit(pyrovae.VAE((784,), 20), x_train, objective="iwae",
                             num_particles=5, epochs=10, valid_data=x_valid)
    """
    # ------------------------------------------------------------ validation
    programs = resolve_programs(obj)
    train = as_data(data, "data")
    epoch_view = getattr(data, "epoch_view", None)  # data redrawn each epoch (dynamic binarization)
    validate_batch(programs, train, "data")
    valid = None
    if valid_data is not None:
        valid = as_data(valid_data, "valid_data")
        validate_batch(programs, valid, "valid_data")
    if "kl_weight" in train.kwargs:
        raise ValueError("data key 'kl_weight' clashes with the keyword argument fit passes to model and guide")
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
    elbo = make_objective(objective, num_particles=num_particles, alpha=alpha)
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

    # ------------------------------------------------------------ set-up
    rank, world, device = _distributed(device)
    if isinstance(programs.owner, torch.nn.Module):
        programs.owner.to(device)
    train = train.to(device)
    if valid is not None:
        valid = valid.to(device)
    num_data = len(train)
    set_num_data = getattr(programs.owner, "set_num_data", None)
    if callable(set_num_data):  # e.g. β-TCVAE's minibatch estimators of q(z) need the data set's size
        set_num_data(num_data)
    batch_size = min(batch_size, math.ceil(num_data / world))
    checkpoint = None
    if resume and run_dir is not None and (run_dir / CHECKPOINT_NAME).exists():
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
        settings = checkpoint["settings"]
        for key, now in (("batch_size", batch_size), ("seed", seed), ("num_data", num_data), ("world", world),
                         ("optimizer", optimizer), ("lr", float(lr))):
            if settings.get(key, now) != now:
                raise ValueError(f"Cannot resume {run_dir}: it was trained with {key}={settings[key]}, now {now}")
    pyro.set_rng_seed(seed)
    with pyro.validation_enabled(True):
        # plain traces on a few points, with Pyro's own shape and support checks: the program's
        # structure (its per-point plate, latents, parameters) before any particle or loss runs
        structure = inspect_pair(programs, train, programs.kwargs(schedule(0), 0), data_plate=data_plate, what="fit")
        check_objective(elbo, structure, f"objective={objective!r}" if isinstance(objective, str) else type(elbo).__name__)
        set_data_plate(elbo, structure)
        scaler = plate_scale(structure.data_plate, 1.0)
        model, guide = scaler(programs.model), scaler(programs.guide)
        if math.isinf(getattr(elbo, "max_plate_nesting", 0)):  # as Pyro would guess, without the log line
            elbo.max_plate_nesting = structure.max_plate_nesting + int(bool(getattr(elbo, "vectorize_particles", False)))
        small = train.index(slice(0, min(num_data, 4)))
        elbo.loss(model, guide, *small.args, **small.kwargs, **programs.kwargs(schedule(0), 0))
    params = structure.params
    if not params:
        raise ValueError("The model and guide define no parameters (pyro.param or pyro.module): nothing to train")
    drop_short = isinstance(elbo, _PYRO_JIT_ELBOS) and num_data % (batch_size * world) != 0 and num_data > batch_size * world
    if drop_short:
        warnings.warn(
            f"{type(elbo).__name__} records the first minibatch's scale N/B into its compiled trace, so fit drops "
            f"each epoch's short last minibatch ({num_data % batch_size} of {num_data} points; a different random "
            "subset every epoch) instead of scoring it at the wrong scale",
            stacklevel=2,
        )
    step_objective: ELBO = elbo
    eager_reason = "jit=False" if jit is False else "the parameters are not held by one torch.nn.Module"
    if jit is not False and isinstance(programs.owner, torch.nn.Module):
        if jit is None and type(programs.owner).__module__.split(".")[0] != "pyrovae":
            # Your own class may read Python state (an attribute a callback changes) that a
            # recorded graph would freeze; pyrovae's models take such values as keyword arguments.
            eager_reason = (f"{type(programs.owner).__name__} is defined outside pyrovae; pass jit=True to compile "
                            "its step (it must take every value that changes during training as an argument)")
        else:
            # strict only in one process: a refusal on one rank must not leave the others waiting
            step_objective = Compiled(elbo, programs.owner, strict=jit is True and world == 1)
    if world > 1:
        for p in params.values():
            torch.distributed.broadcast(p.data, src=0)
    optim_cls = OPTIMIZERS[optimizer]
    fused_ok = all(p.is_floating_point() and p.device.type == device.type for p in params.values())
    optim = optim_cls(list(params.values()), lr=lr, **(optimizer_options(optim_cls, device) if fused_ok else {}))
    aux_params, aux_loss = programs.auxiliary()
    aux_optim = None
    if aux_loss is not None:
        if world > 1:
            for p in aux_params:
                torch.distributed.broadcast(p.data, src=0)
        aux_optim = torch.optim.Adam(aux_params, **_auxiliary_hyperparameters(programs.owner))
    ddp = _data_parallel(programs, step_objective, model, guide, params, aux_params, device) if world > 1 else None

    steps_per_epoch = math.ceil(math.ceil(num_data / world) / batch_size)
    if drop_short:
        steps_per_epoch = math.ceil(num_data / world) // batch_size
    step, epoch, batch_index, history = 0, 0, 0, []
    sums = {"loss": 0.0, "count": 0}
    if checkpoint is not None:
        _load_state(programs.owner, params, checkpoint["state"])
        optim.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("objective") and callable(getattr(elbo, "load_state_dict", None)):
            elbo.load_state_dict(checkpoint["objective"], device)  # e.g. the graph objective's baselines
        if aux_optim is not None:
            aux_optim.load_state_dict(checkpoint["aux_optimizer"])
            for group in aux_optim.param_groups:  # the model's values, even where an older checkpoint held others
                group.update(_auxiliary_hyperparameters(programs.owner))
        step, epoch, batch_index = checkpoint["step"], checkpoint["epoch"], checkpoint["batch_index"]
        history, sums = list(checkpoint["history"]), dict(checkpoint["sums"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if device.type == "cuda" and "cuda" in checkpoint["rng"]:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], device)
    settings = {"batch_size": batch_size, "seed": seed, "num_data": num_data, "world": world, "lr": float(lr),
                "optimizer": optimizer,
                "objective": objective if isinstance(objective, str) else type(objective).__name__,
                "kl_weight": schedule.to_dict(), "epochs": epochs}
    writer = rank == 0 and run_dir is not None
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)

    def save() -> Path:
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        state = {
            "format": 1, "step": step, "epoch": epoch, "batch_index": batch_index,
            "sums": dict(sums), "history": history, "rng": rng, "settings": settings,
            "state": _state(programs.owner, params), "optimizer": optim.state_dict(),
            "aux_optimizer": aux_optim.state_dict() if aux_optim is not None else {},
            "objective": elbo.state_dict() if callable(getattr(elbo, "state_dict", None)) else {},
            "model": {"class": type(programs.owner).__name__, "config": getattr(programs.owner, "config", {})},
            "record": dict(record or {}),
        }
        return save_checkpoint(state, run_dir / CHECKPOINT_NAME)

    # ------------------------------------------------------------ loop
    from tqdm.auto import tqdm

    total_steps = epochs * steps_per_epoch
    bar = tqdm(total=total_steps, initial=min(step, total_steps), disable=not progress or rank != 0,
               desc="fit", unit="step", dynamic_ncols=True)
    all_params = list(params.values())
    seconds_before = history[-1]["seconds"] if history else 0.0  # wall time is cumulative across resumes
    start = time.perf_counter()
    try:
        with pyro.validation_enabled(False):
            while epoch < epochs:
                if callable(epoch_view):  # a pure function of (seed, epoch): resumes and ranks agree
                    train = train.replace_x(epoch_view(epoch).to(device))
                order = torch.randperm(num_data, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
                if world > 1:  # equal shards, padded by wrapping around, as DistributedSampler does
                    order = torch.cat([order, order[: (-num_data) % world]])[rank::world]
                batches = order.to(device).split(batch_size)
                if drop_short:
                    batches = batches[:steps_per_epoch]
                while batch_index < len(batches):
                    xb = train.index(batches[batch_index])
                    weight = schedule(step)
                    scaler.scale = num_data / len(xb)  # N / B on each rank; averaging over ranks keeps it unbiased
                    optim.zero_grad(set_to_none=True)
                    if ddp is not None:  # DDP averages the gradients during backward; then the loss
                        loss_tensor, surrogate = ddp(*xb.args, **xb.kwargs, **programs.kwargs(weight, step))
                        surrogate.backward()
                        loss_tensor = loss_tensor.detach().reshape(1).clone()
                        torch.distributed.all_reduce(loss_tensor)
                        loss = float(loss_tensor) / world
                    else:
                        loss = step_objective.loss_and_grads(model, guide, *xb.args, **xb.kwargs,
                                                             **programs.kwargs(weight, step))
                        if world > 1:  # one all-reduce: gradients and the loss, so every rank sees a NaN anywhere
                            loss = _average_gradients(all_params, world, loss)
                    if not math.isfinite(loss):
                        where = f"; the last good checkpoint is {run_dir / CHECKPOINT_NAME}" if writer and (run_dir / CHECKPOINT_NAME).exists() else ""
                        raise TrainingDiverged(
                            f"Training stopped: the loss became {loss} at step {step} (epoch {epoch + 1}, "
                            f"batch {batch_index + 1}); this step's gradients were not applied{where}. "
                            "Try a smaller lr, or check the data and the likelihood's scale."
                        )
                    optim.step()
                    if aux_optim is not None:
                        aux_optim.zero_grad(set_to_none=True)
                        terms = aux_loss(*xb.args, **xb.kwargs)
                        terms["loss"].backward()
                        if world > 1:
                            _average_gradients(aux_params, world)
                        aux_optim.step()
                        for key, value in terms.items():
                            sums[f"aux_{key}"] = sums.get(f"aux_{key}", 0.0) + float(torch.as_tensor(value).detach())
                    step += 1
                    batch_index += 1
                    sums["loss"] += loss / num_data
                    sums["count"] += 1
                    bar.update(1)
                    if step % 25 == 0 or batch_index == len(batches):
                        bar.set_postfix(loss=f"{sums['loss'] / sums['count']:.2f}", epoch=epoch + 1, refresh=False)
                    if writer and checkpoint_every and step % checkpoint_every == 0 and batch_index < len(batches):
                        save()
                count = max(sums["count"], 1)
                row = {"epoch": epoch + 1, "step": step, "train_loss": sums["loss"] / count,
                       "kl_weight": schedule(step - 1)}
                row.update({k: v / count for k, v in sums.items() if k.startswith("aux_")})
                if valid is not None and rank == 0:
                    row["valid_elbo"] = evaluate_elbo(obj, valid, seed=seed, data_plate=structure.data_plate)
                row["seconds"] = seconds_before + time.perf_counter() - start
                history.append(row)
                epoch, batch_index, sums = epoch + 1, 0, {"loss": 0.0, "count": 0}
                if writer:
                    _write_history(run_dir, history)
                    save()
    finally:
        bar.close()
    if isinstance(step_objective, Compiled):
        eager_reason = step_objective.eager_reason
    distributed = None if world <= 1 else ("ddp" if ddp is not None else "all-reduce")
    return FitResult(model=obj, history=history, run_dir=run_dir, step=step, eager_reason=eager_reason,
                     distributed=distributed)


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


def _average_gradients(params: list[torch.Tensor], world: int, loss: float | None = None) -> float | None:
    """Average gradients (and ``loss``, if given) over ranks with one all-reduce of a flat buffer."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    parts = [g.reshape(-1) for g in grads]
    if loss is not None:
        parts.append(torch.tensor([loss], dtype=parts[0].dtype, device=parts[0].device))
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
    return float(flat[-1]) if loss is not None else None
