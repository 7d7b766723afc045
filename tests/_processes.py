"""Killing a training process at a chosen moment (the kill -9 resume tests share it)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest


def kill_when_exists(proc: subprocess.Popen, path: Path, *, timeout: float, poll: float) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists; fail the test if it exits first or ``path`` never comes."""
    try:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"training exited (rc={proc.returncode}) before writing {path.name}:\n{out[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {path.name} appeared within {timeout:.0f} s")
            time.sleep(poll)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
