"""The pyrovae command: help lists the tables, train/resume write a run folder, errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import pyrovae
from pyrovae.cli import main


def test_help_lists_tables(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for table in (pyrovae.MODELS, pyrovae.OBJECTIVES, pyrovae.DATASETS):
        for name in table:
            assert name in out


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, "-m", "pyrovae.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "demo" in proc.stdout and "train" in proc.stdout


def test_train_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "vae", "--beta", "4", "--objective", "iwae", "--num-particles", "3",
            "--dataset", "digits", "--binarize", "--z-dim", "3", "--epochs", "1", "--batch-size", "256",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "results.json" in printed and "reconstructions.png" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["objective"] == "iwae" and config["kl_weight"] == 4.0 and config["num_particles"] == 3
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["settings"]["kl_weight"] == {"name": "constant", "value": 4.0}
    # resume a finished run: nothing more to train, same numbers; the config comes from the folder
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "vae" and results["test_points"] == 200


def test_demo_smoke(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "pictures:" in out and "numbers:" in out
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(results["pictures"]) >= {"reconstructions", "samples", "traversals"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--resume", "/nonexistent/run"], "No run at /nonexistent/run"),
        (["train", "--epochs", "0", "--out", "{tmp}/x"], "Expected epochs to be an int >= 1, got 0"),
        (["train", "--objective", "elbo", "--alpha", "0.5", "--out", "{tmp}/x"], "takes options"),
        (["train", "--likelihood", "bernoulli", "--dataset", "digits", "--out", "{tmp}/x"], "continuous_bernoulli"),
    ],
)
def test_errors_are_one_line(args, message, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyrovae: error:") and "\n" not in err and "Traceback" not in err
    assert message in err
