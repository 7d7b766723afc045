"""Run folders are never overwritten or mixed, --seed reproduces a run, and bad input is refused early
(issue 11's data-loss, reproducibility and early-check items, through the CLI as a user types it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

import pyrovae
from pyrovae.cli import main
from pyrovae.runfolder import LOCK_NAME, RunFolderError, RunLock
from _processes import kill_when_exists

TRAIN = ["train", "--model", "vae", "--dataset", "digits", "--epochs", "1", "--batch-size", "256", "-o", "z_dim=2",
         "-o", "hidden=[16]", "--no-progress", "--no-jit"]


def _state(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["state"]["module"]


def test_a_finished_run_is_never_replaced_without_overwrite(tmp_path, capsys):
    out = tmp_path / "good"
    assert main([*TRAIN, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main([*TRAIN, "--seed", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing touched
    assert main([*TRAIN, "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 1


def test_a_folder_with_foreign_files_is_refused_even_with_overwrite(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert main([*TRAIN, "--out", str(out), "--overwrite"]) == 2
    assert "not a pyrovae run's (notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_second_run_into_a_locked_folder_is_refused_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(str(sleeper.pid))  # a live run holds the folder
        assert main([*TRAIN, "--out", str(out)]) == 2
        assert f"in use by another run (pid {sleeper.pid})" in capsys.readouterr().err
        assert not (out / "config.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the same lock, its process gone (a killed run): stale, taken over, released at the end
    assert main([*TRAIN, "--out", str(out)]) == 0
    assert (out / "checkpoint.pt").exists() and not (out / LOCK_NAME).exists()


def test_two_runs_at_once_one_of_them_is_refused(tmp_path):
    """Two real processes into one folder: exactly one trains, the other refuses in one line, and
    the folder's config and checkpoint come from the same run."""
    out = tmp_path / "race"
    command = [sys.executable, "-m", "pyrovae.cli", *TRAIN, "--epochs", "3", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / LOCK_NAME).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run([*command[:-1], str(out), "--seed", "5"], env=env, capture_output=True, text=True)
    first_err = first.communicate(timeout=120)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 2 and ("in use by another run" in second.stderr or "already holds a run" in second.stderr)
    assert json.loads((out / "config.json").read_text())["seed"] == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["record"]["seed"] == 0


def test_the_same_seed_gives_the_same_run_bit_for_bit(tmp_path):
    for name in ("a", "b"):
        assert main([*TRAIN, "--seed", "3", "--out", str(tmp_path / name)]) == 0
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main([*TRAIN, "--seed", "4", "--out", str(tmp_path / "c")]) == 0
    assert not all(torch.equal(a[k], v) for k, v in _state(tmp_path / "c").items())


def test_a_run_killed_before_its_first_checkpoint_resumes_to_the_same_result(tmp_path, capsys):
    assert main([*TRAIN, "--seed", "2", "--out", str(tmp_path / "whole")]) == 0
    assert main([*TRAIN, "--seed", "2", "--out", str(tmp_path / "killed")]) == 0
    (tmp_path / "killed" / "checkpoint.pt").unlink()  # as if killed before writing it
    capsys.readouterr()
    with pytest.warns(UserWarning, match="has no checkpoint.pt"):
        assert main(["train", "--resume", str(tmp_path / "killed"), "--no-progress"]) == 0
    whole, resumed = _state(tmp_path / "whole"), _state(tmp_path / "killed")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_file_in_the_way_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "run"):
        assert main([*TRAIN, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "\n" not in err.strip() and ("is a file" in err or "a parent is a file" in err), err


def test_device_names_are_checked(capsys):
    assert main([*TRAIN, "--device", "tpu"]) == 2
    assert "Expected device" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Expected device to be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'tpu'"):
        pyrovae.fit(pyrovae.VAE((4,), 2), torch.rand(10, 4).round(), device="tpu", progress=False)


def test_evaluate_checks_its_options_before_the_estimate(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    capsys.readouterr()

    def never(*args, **kwargs):
        raise AssertionError("log_likelihood ran before the options were checked")

    monkeypatch.setattr("pyrovae.experiment.log_likelihood", never)
    assert main(["evaluate", str(out), "--num-points", "-1"]) == 2
    assert "num_points" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--metrics", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_sweep_checks_every_value_and_metric_first_and_keeps_finished_members(tmp_path, capsys, monkeypatch):
    sweep = ["sweep", "--model", "beta_vae", "--dataset", "sprites", "--num-train", "64", "--epochs", "1",
             "--batch-size", "64", "-o", "z_dim=2", "-o", "hidden=[8]", "-o", "channels=[4]", "--metrics", "mig",
             "--out", str(tmp_path / "sweep")]
    calls = []
    real_run = pyrovae.experiment.run
    monkeypatch.setattr("pyrovae.experiment.run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    assert main([*sweep[:-4], "--metrics", "nope", "--values", "2", "--out", str(tmp_path / "s1")]) == 2
    assert main([*sweep, "--values", "2", "-1"]) == 2
    assert calls == []  # refused before any member trained
    capsys.readouterr()
    assert main([*sweep, "--values", "2"]) == 0
    results = tmp_path / "sweep" / "beta_2" / "results.json"
    stamp = results.stat().st_mtime_ns
    capsys.readouterr()
    assert main([*sweep, "--values", "2"]) == 0
    assert "finished earlier, kept" in capsys.readouterr().out
    assert results.stat().st_mtime_ns == stamp


def test_run_lock_is_released_on_error(tmp_path):
    with pytest.raises(KeyError), RunLock(tmp_path):
        raise KeyError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path), pytest.raises(RunFolderError, match="in use"):
        (tmp_path / LOCK_NAME).write_text(str(os.getppid()))  # a live process other than this one
        with RunLock(tmp_path):
            pass


@pytest.mark.parametrize("flags", [
    ["-o", "hidden=[-4]"], ["-o", "hidden=[0]"], ["-o", "hidden=[2.5]"], ["-o", 'hidden="400"'],
    ["--beta", "inf"], ["--binarize", "weird"], ["--lr", "nan"], ["--device", "tpu"],
], ids=lambda f: " ".join(f))
def test_bad_options_are_one_line_and_write_nothing(tmp_path, capsys, flags):
    out = tmp_path / "run"
    assert main([*TRAIN, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyrovae: error:") and "\n" not in err, err
    assert not out.exists()


def test_a_cli_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    """kill -9 part-way through `pyrovae train`, then `pyrovae train --resume`: the same parameters,
    bit for bit, as the same command run to the end; the dead run's lock is taken over."""
    import signal

    args = ["train", "--model", "vae", "--dataset", "digits", "--epochs", "15", "--batch-size", "64", "-o", "z_dim=2",
            "-o", "hidden=[16]", "--seed", "5", "--checkpoint-every", "5", "--no-progress"]
    victim_dir = tmp_path / "victim"
    victim = subprocess.Popen([sys.executable, "-m", "pyrovae", *args, "--out", str(victim_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    kill_when_exists(victim, victim_dir / "checkpoint.pt", timeout=120, poll=0.005)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(victim_dir / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < killed_at < 15 * 22, killed_at  # 1,397 training digits, batch 64: 22 steps an epoch

    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", "--resume", str(victim_dir), "--no-progress"]) == 0
    whole, resumed = _state(tmp_path / "whole"), _state(victim_dir)
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    history = json.loads((victim_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 16))
    assert not (victim_dir / LOCK_NAME).exists()  # the dead run's lock was taken over and released


@pytest.mark.parametrize("command", ["train", "demo", "sweep", "evaluate"])
def test_a_read_only_run_folder_is_refused_in_one_line_before_any_work(tmp_path, capsys, monkeypatch, command):
    """Issue 11 item 6.  Root ignores file modes, so a read-only file system is simulated where the
    write probe happens (``check_writable``); every command must say so in one line, having trained
    and estimated nothing."""
    import errno
    import pathlib

    out = tmp_path / "run"
    if command == "evaluate":  # a finished run to evaluate, then its folder turns read-only
        assert main([*TRAIN, "--out", str(out)]) == 0
    real_write = pathlib.Path.write_bytes

    def read_only(path, data):
        if path.name.startswith(".write-test-"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_write(path, data)

    def never(*args, **kwargs):
        raise AssertionError("work started in a folder that cannot be written")

    monkeypatch.setattr(pathlib.Path, "write_bytes", read_only)
    monkeypatch.setattr("pyrovae.train._Trainer.run", never)
    monkeypatch.setattr("pyrovae.experiment.log_likelihood", never)
    before = sorted(p.name for p in out.iterdir()) if out.exists() else []
    capsys.readouterr()
    argv = {
        "train": [*TRAIN, "--out", str(out)],
        "demo": ["demo", "--out", str(out), "--epochs", "1"],
        "sweep": ["sweep", "--model", "beta_vae", "--dataset", "digits", "--epochs", "1", "-o", "z_dim=2",
                  "-o", "hidden=[8]", "--values", "2", "--metrics", "mig", "--out", str(out)],
        "evaluate": ["evaluate", str(out)],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "read-only file system" in err, err
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else []) == before
