"""Atomic, safe, verified checkpoint files.

A checkpoint is written to a temporary file in the same directory, flushed to
disk and renamed over the old one (``os.replace`` is atomic on POSIX), so a run
killed at any instant leaves either the previous checkpoint or the new one,
never a torn file.  Temporary files that a killed write left behind
(``checkpoint.pt.<pid>.<random>.tmp``) are removed by the next save: those whose
writer is gone, or that are older than :data:`STALE_AFTER` seconds.

Loading uses ``torch.load(..., weights_only=True)``: only tensors and plain
containers are accepted, no arbitrary pickled code.  Every file carries a
SHA-256 checksum of what it holds (every key, number, string and tensor byte,
under the reserved key ``"checksum"``, a plain string, so the file stays
``weights_only``-safe and readable by ``torch.load`` alone); loading recomputes
it and refuses a file whose contents changed since it was written (a flipped
byte).  A damaged byte is refused, or lies where it changes nothing that loads
(zip headers and padding).  Files from before checksums (the trainer's format
1) load unverified.

A file that loads is refused, in one line naming it, when it is not a pyrovae
checkpoint (a foreign dict: the keys the trainer writes are missing) or when a
model tensor holds NaN or inf (the parameter is named, the tensor never printed).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_NAME", "TRAINER_KEYS", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
#: the reserved key holding ``"sha256:<hex digest>"`` of everything else in the file
CHECKSUM_KEY = "checksum"
#: what every checkpoint written by :func:`pyrovae.fit` holds (since the first format)
TRAINER_KEYS = ("format", "step", "epoch", "batch_index", "sums", "history", "rng", "settings", "state",
                "optimizer", "model")
#: the trainer's format from which every checkpoint carries a checksum: one of these without it was damaged
CHECKSUMMED_FORMAT = 2
#: a temporary file this old is stale even when a live process has its pid (pids are reused);
#: an hour is far beyond any write of a checkpoint
STALE_AFTER = 3600.0


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` and its checksum to ``path`` atomically; returns the path.

    Then removes stale temporary files of earlier writes to ``path`` (see the module notes).
    """
    path = Path(path)
    if CHECKSUM_KEY in state:
        raise ValueError(f"{CHECKSUM_KEY!r} is reserved for the checkpoint's checksum; rename that key")
    payload = {**state, CHECKSUM_KEY: "sha256:" + _digest(state)}
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name tells the next save whether this write may still be in progress
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    _remove_stale_temporaries(path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors load on the CPU), verified.

    ``path`` may be a run folder (its ``checkpoint.pt`` is read).  The checksum is
    removed from what is returned.

    :raises FileNotFoundError: there is no file at ``path``.
    :raises ValueError: naming the file, in one line, when it cannot be read
        safely, does not match its checksum, is not a pyrovae checkpoint, or
        holds non-finite model tensors.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: say which one
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]  # torch's message runs over many lines
        raise ValueError(f"Checkpoint {path} could not be read safely ({reason})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a pyrovae checkpoint: it holds a {type(state).__name__}, not a dict")
    checksum = state.pop(CHECKSUM_KEY, None)
    if checksum is None and isinstance(state.get("format"), int) and state["format"] >= CHECKSUMMED_FORMAT:
        # e.g. a flipped bit in the key's own name: the contents cannot be verified
        raise ValueError(f"{path} is corrupt: it has no checksum, though its format ({state['format']}) always "
                         "carries one; resume from another copy or start afresh")
    if checksum is not None:
        if not (isinstance(checksum, str) and checksum.startswith("sha256:")):
            raise ValueError(f"{path} is corrupt: its checksum entry is unreadable")
        if _digest(state) != checksum[len("sha256:"):]:
            raise ValueError(f"{path} is corrupt: its contents do not match the checksum written with them "
                             "(changed after saving; edit checkpoints only through pyrovae.load_checkpoint "
                             "and save_checkpoint)")
    # a file save_checkpoint wrote holds what its caller saved; one without a checksum must look like the
    # trainer's (an older pyrovae checkpoint), and so must any that says it is one (has a format)
    if checksum is None or "format" in state:
        missing = [key for key in TRAINER_KEYS if key not in state]
        if missing:
            raise ValueError(f"{path} is not a pyrovae checkpoint: missing keys {missing}")
        _check_model_state(path, state["state"])
    return state


# ---------------------------------------------------------------- checks
def _check_model_state(path: Path, model_state: Any) -> None:
    """The trainer's ``state`` entry: a module's state_dict and free params, every float tensor finite."""
    if not (isinstance(model_state, Mapping) and all(isinstance(model_state.get(k), Mapping)
                                                     for k in ("module", "params"))):
        raise ValueError(f"{path} is not a pyrovae checkpoint: its 'state' is not "
                         "{'module': state_dict, 'params': {name: tensor}}")
    for name, value in [*model_state["module"].items(), *model_state["params"].items()]:
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            bad = int(value.numel() - torch.isfinite(value).sum())
            if bad:
                raise ValueError(f"{path} holds non-finite values (NaN or inf) in parameter {name!r} "
                                 f"({bad} of {value.numel()}): it cannot be resumed or evaluated")


# ---------------------------------------------------------------- checksum
def _digest(obj: Any) -> str:
    """SHA-256 of ``obj``'s keys, values and tensor bytes, the same before saving and after loading."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    # each item is tagged with its kind and length, so no two different contents feed the same bytes
    def put(tag: str, data: bytes) -> None:
        h.update(f"{tag}:{len(data)}:".encode())
        h.update(data)

    if isinstance(obj, torch.Tensor):
        put("tensor", f"{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(_tensor_bytes(obj))  # their length follows from the dtype and shape just fed
    elif isinstance(obj, Mapping):
        put("dict", str(len(obj)).encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):  # torch.Size is a tuple
        put(type(obj).__name__ if type(obj) in (list, tuple) else "tuple", str(len(obj)).encode())
        for value in obj:
            _feed(h, value)
    elif isinstance(obj, (set, frozenset)):  # set order varies with the process's hash seed
        put("set", "".join(sorted(_digest(value) for value in obj)).encode())
    elif obj is None or isinstance(obj, (bool, int, str)):
        put(type(obj).__name__, repr(obj).encode())
    elif isinstance(obj, float):
        put("float", obj.hex().encode())
    elif isinstance(obj, (bytes, bytearray)):
        put("bytes", bytes(obj))
    else:  # what weights_only admits besides (dtypes, devices, complex): pickled by reference or value
        put(type(obj).__qualname__, pickle.dumps(obj, protocol=4))


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    t = tensor.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


# ---------------------------------------------------------------- files
def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a file system that cannot is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # someone else's live process, or a platform that cannot tell
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``<name>.*.tmp`` left by killed writes to ``path``: never one a live process may be writing."""
    now = time.time()
    for tmp in path.parent.glob(f"{path.name}.*.tmp"):
        owner = tmp.name[len(path.name) + 1:].split(".")[0]
        try:
            old = now - tmp.stat().st_mtime > STALE_AFTER
            # this process writes one checkpoint at a time, so a file with its pid is an earlier,
            # interrupted write (or a reused pid's); names without a pid come from older versions
            if old or not owner.isdigit() or int(owner) == os.getpid() or not _alive(int(owner)):
                tmp.unlink()
        except OSError:  # gone already (another cleaner), or not ours to remove: harmless
            continue
