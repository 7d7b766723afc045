"""A run folder's safety: one writer at a time, and a finished run never replaced by accident.

* :class:`RunLock` -- an exclusive lock on a run folder for the whole run: a
  file ``.lock`` created atomically (``O_CREAT | O_EXCL``) holding the owner's
  pid.  A second run into the same folder is refused in one line naming the
  owner; a lock whose process is gone (a killed run) is stale and taken over.
* :func:`prepare_new_run` -- a new run goes into an empty (or absent) folder;
  a folder holding a run is refused unless the caller says ``overwrite``, and
  then only the run's own files are removed (never a file pyrovae did not write).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType

__all__ = ["LOCK_NAME", "RUN_FILES", "RunFolderError", "RunLock", "check_writable", "prepare_new_run", "run_files"]

LOCK_NAME = ".lock"
#: what a run writes into its folder (names and patterns), and nothing else
RUN_FILES = ("config.json", "checkpoint.pt", "checkpoint.pt.*.tmp", "history.csv", "history.json", "results.json",
             "evaluation.json", "*.png", LOCK_NAME)


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (in use, holding a run, not writable)."""


def run_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """``(the run's own files, anything else)`` in ``folder`` (empty lists if it does not exist)."""
    if not folder.is_dir():
        return [], []
    ours, others = [], []
    for path in sorted(folder.iterdir()):
        (ours if path.is_file() and any(path.match(p) for p in RUN_FILES) else others).append(path)
    return ours, others


def prepare_new_run(folder: Path, *, overwrite: bool = False) -> None:
    """Check that a new run may go into ``folder`` (locked by the caller); with ``overwrite``,
    remove the run there first.

    :raises RunFolderError: the folder holds a run (without ``overwrite``) or files
        pyrovae did not write.
    """
    ours, others = run_files(folder)
    ours = [p for p in ours if p.name != LOCK_NAME]  # the lock is this run's own (taken before this check)
    if others:
        raise RunFolderError(f"{folder} holds files that are not a pyrovae run's ({others[0].name}, ...): "
                             "choose an empty or new folder")
    if ours and not overwrite:
        raise RunFolderError(f"{folder} already holds a run ({', '.join(p.name for p in ours[:3])}): "
                             "continue it with --resume, or replace it with --overwrite")
    for path in ours:
        path.unlink()


def check_writable(folder: Path) -> None:
    """Create ``folder`` (and its parents) if need be and check that a file can be written there.

    :raises RunFolderError: a file is in the way, or the folder cannot be created or written.
    """
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{folder} is a file, not a run folder: choose another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = {errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
                  errno.ENOTDIR: "a parent is a file", errno.EEXIST: "a file is in the way"}.get(e.errno, e.strerror)
        raise RunFolderError(f"Cannot write the run folder {folder}: {reason}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """An exclusive lock on ``folder`` for the lifetime of a ``with`` block (see the module notes)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def __enter__(self) -> "RunLock":
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    owner = 0
                if owner and owner != os.getpid() and _alive(owner):
                    raise RunFolderError(f"{self.path.parent} is in use by another run (pid {owner}); "
                                         "wait for it, or use another folder") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self
        raise RunFolderError(f"Cannot lock {self.path.parent}: another run keeps taking it")

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
