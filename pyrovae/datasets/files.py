"""Data files on disk: one-line errors for missing and corrupt files, checksums, safe downloads.

Every loader that reads a file follows the same rules:

* it looks in one folder, :func:`~pyrovae.datasets.base.data_dir`;
* a missing file raises :class:`FileNotFoundError` whose one-line message names the
  file, the folder looked in and how to get it (``download=True`` or a copy);
* it downloads only when asked (``download=True``), into ``<file>.part``, and moves
  the file into place only after its checksum matches, so no half-downloaded file
  is ever left under the real name;
* a truncated, corrupt or unofficial file raises :class:`ValueError` naming the
  path and what is wrong, before any of its content is returned.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["corrupt_file", "download_file", "file_digest", "missing_file", "verify_digest"]

#: said in every "missing file" message: where the data folder comes from
FOLDER_RULE = "the folder is root=..., else $PYROVAE_DATA_DIR, else ~/.cache/pyrovae"


def missing_file(path: Path, how: str) -> FileNotFoundError:
    """The one-line error for a data file that is not there.

    :param path: where the file was looked for.
    :param how: how to get it, e.g. ``"pass download=True, or copy it there from <url>"``.
    """
    return FileNotFoundError(f"Data file {path.name} is missing: looked for {path}; {how} ({FOLDER_RULE})")


def corrupt_file(path: Path, problem: str) -> ValueError:
    """The one-line error for a data file that is truncated, damaged or not what it should be."""
    return ValueError(
        f"Data file {path} is corrupt or truncated: {problem}; delete it and download or copy it again"
    )


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_digest(path: Path, expected: str, algorithm: str = "sha256") -> None:
    """Raise :func:`corrupt_file` unless ``path``'s digest is ``expected``."""
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise corrupt_file(path, f"its {algorithm} is {actual}, expected {expected} (the published checksum)")


def download_file(url: str, path: Path, digest: str, algorithm: str = "sha256") -> Path:
    """Fetch ``url`` to ``path`` only if its checksum is ``digest``.

    The bytes go to ``path.part`` first; on a checksum mismatch that file is
    deleted and :class:`ValueError` raised, so ``path`` never holds a bad copy.
    A network failure raises :class:`ConnectionError` with a one-line message.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise ConnectionError(f"Could not download {url} to {path} ({e}); copy the file there by hand") from None
    actual = file_digest(part, algorithm)
    if actual != digest:
        part.unlink()
        raise ValueError(
            f"Downloaded {url} but its {algorithm} is {actual}, expected {digest}; nothing was saved to {path}"
        )
    os.replace(part, path)
    return path
