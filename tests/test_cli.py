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
    # --epochs N extends the run to N epochs in total, and the run folder records the new total
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert "epochs 1 -> 2 in total" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text()) == {**config, "epochs": 2}
    assert len(json.loads((out / "history.json").read_text())) == 2
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["record"]["epochs"] == 2
    # fewer epochs than done: refused, naming both numbers, the folder untouched
    assert main(["train", "--resume", str(out), "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "to 1 epochs in total" in err and "already trained 2" in err
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    # every flag that would change the run is refused, all named in one line
    assert main(["train", "--resume", str(out), "--lr", "0.1", "--model", "vae", "-o", "beta=2", "--batch-size", "8",
                 "--out", str(tmp_path / "other"), "--seed", "0", "--epochs", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot change a resumed run" in err
    for flag in ("--model", "--model-option", "--batch-size", "--out", "--seed"):
        assert flag in err.split("cannot")[0], flag
    assert "--lr" not in err.split("cannot")[0]  # a new lr is allowed on resume (recorded)
    assert json.loads((out / "config.json").read_text())["epochs"] == 2 and not (tmp_path / "other").exists()
    # a smaller lr (after a NaN, say) continues the run and is recorded
    assert main(["train", "--resume", str(out), "--lr", "0.0005", "--epochs", "3", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["lr"] == 0.0005
    assert [row["lr"] for row in json.loads((out / "history.json").read_text())][-1] == 0.0005


def test_demo_smoke(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "pictures:" in out and "numbers:" in out
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(results["pictures"]) >= {"reconstructions", "samples", "traversals", "kl_per_dimension", "history"}
    from PIL import Image

    for name, path in results["pictures"].items():
        with Image.open(path) as image:
            low, high = image.convert("L").getextrema()
            assert min(image.size) >= 32 and low < high, f"{name} picture is empty or blank"


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


@pytest.mark.parametrize(
    "args",
    [
        ["--epochs", "0"],
        ["--batch-size", "0"],
        ["--lr", "0"],
        ["--seed", "-1"],
        ["--checkpoint-every", "0"],
        ["--beta", "-1"],
        ["--num-particles", "0"],
        ["--objective", "elbo", "--alpha", "0.5"],
        ["-o", "gama=5"],
        ["-o", "x_shape=[1,8,8]"],
        ["-o", "z_dim=3", "--z-dim", "4"],
        ["--z-dim", "0"],
        ["--likelihood", "bernoulli"],
        ["--num-train", "5"],  # digits has a fixed size
        ["--dataset", "sprites", "--binarize"],  # sprites are binary already
        ["--device", "nonsense"],
    ],
)
def test_a_refused_run_writes_nothing(args, tmp_path, capsys):
    """Every check runs before the run folder is made: nothing to clean up, nothing to mistake for a run."""
    out = tmp_path / "refused"
    assert main(["train", "--dataset", "digits", "--out", str(out), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyrovae: error:") and "\n" not in err
    assert not out.exists()


def test_a_refused_run_leaves_an_existing_folder_as_it_was(tmp_path, capsys):
    out = tmp_path / "existing"
    out.mkdir()
    assert main(["train", "--epochs", "0", "--out", str(out), "--no-progress"]) == 2
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("error", [TypeError, RuntimeError, KeyError, AttributeError])
def test_a_bug_shows_its_traceback(error, tmp_path, monkeypatch):
    """Only bad input is a one-line error; a bug inside a command propagates with its traceback."""
    import pyrovae.cli

    def broken(*args, **kwargs):
        raise error("a bug")

    monkeypatch.setattr(pyrovae.cli, "run", broken)
    monkeypatch.setattr(pyrovae.cli, "evaluate_run", broken)
    with pytest.raises(error, match="a bug"):
        main(["train", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    with pytest.raises(error, match="a bug"):
        main(["evaluate", str(tmp_path / "run")])


def test_usage_errors_are_value_errors():
    """The command's own bad-input error is a ValueError, as the library's are: one exit path for both."""
    from pyrovae.cli import UsageError

    assert issubclass(UsageError, ValueError)


def test_run_config_checks_everything_at_construction():
    from pyrovae.experiment import RunConfig

    with pytest.raises(ValueError, match=r"model='beta_vae' takes options .*got unexpected \['gama'\]"):
        RunConfig(model="beta_vae", model_options={"gama": 5})
    with pytest.raises(ValueError, match=r"dataset='digits' takes options \['binarize'\], got unexpected \['num_train'\]"):
        RunConfig(dataset="digits", dataset_options={"num_train": 5})
    with pytest.raises(ValueError, match=r"kl_weight schedule 'linear' takes options"):
        RunConfig(kl_weight={"name": "linear", "foo": 1})
    with pytest.raises(ValueError, match="Expected kl_weight to be a number or a schedule mapping"):
        RunConfig(kl_weight="4")
    with pytest.raises(ValueError, match="Expected jit to be None, True or False"):
        RunConfig(jit="yes")
    assert RunConfig(kl_weight={"name": "linear", "start": 0.0, "end": 1.0, "num_steps": 10}).kl_weight["end"] == 1.0


def test_evaluate_prints_the_likelihood_table(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--binarize", "--z-dim", "2", "--epochs", "1",
                 "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--num-samples", "50", "--num-points", "20"]) == 0
    printed = capsys.readouterr().out
    for key in ("elbo", "iwae_10", "log_px", "bits_per_dim", "share_khat_above_0_7"):
        assert key in printed
    numbers = json.loads((out / "evaluation.json").read_text())
    # ELBO, IWAE-10 and log p(x) come from the same K = 50 log-weights per point (IWAE-10 from their five
    # disjoint groups of 10), so Jensen orders them for these very samples, point by point: mean log w
    # <= mean over groups of log mean_group w <= log mean w.  No Monte Carlo slack; only float64 rounding
    # of sums of ~50 terms (relative error ~50 * 2.2e-16 ~ 1e-14), which 1e-12 relative covers.
    rounding = 1e-12 * abs(numbers["log_px"])
    assert numbers["elbo"] <= numbers["iwae_10"] + rounding
    assert numbers["iwae_10"] <= numbers["log_px"] + rounding
    # digits has no ground-truth factors: asking for metrics is a one-line error
    assert main(["evaluate", str(out), "--num-samples", "10", "--metrics", "mig"]) == 2
    assert "ground-truth factors" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:The number of unique classes:UserWarning")  # 60 points: expected
def test_evaluate_metrics_all_on_sprites_prints_and_writes_every_metric(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "sprites", "--num-train", "128", "--z-dim", "3", "--epochs", "1",
                 "--batch-size", "64", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--num-samples", "10", "--num-points", "16", "--metrics", "all",
                 "--metric-points", "60"]) == 0
    printed = capsys.readouterr().out
    keys = ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap", "beta_vae_score",
            "factor_vae_score", "modularity", "explicitness", "log_px", "reconstruction_error")
    numbers = json.loads((out / "evaluation.json").read_text())
    for key in keys:
        assert key in printed and key in numbers, key
    for key in keys[:-2]:  # scores are in [0, 1]
        assert 0.0 <= numbers[key] <= 1.0, (key, numbers[key])


def test_model_options_reach_the_constructor(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "capacity_vae", "-o", "capacity_steps=10", "-o", "gamma=50",
                 "--model-option", "hidden=[16]", "--dataset", "digits", "--binarize", "--z-dim", "2",
                 "--epochs", "1", "--batch-size", "512", "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_options"] == {"capacity_steps": 10, "gamma": 50, "hidden": [16], "z_dim": 2}
    model = torch.load(out / "checkpoint.pt", weights_only=True)["model"]["config"]
    assert (model["capacity_steps"], model["gamma"], model["hidden"]) == (10, 50.0, [16])
    capsys.readouterr()
    assert main(["train", "-o", "gama=5", "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "gama" in capsys.readouterr().err
    assert main(["train", "-o", "z_dim=3", "--z-dim", "4", "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "z_dim is given twice" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "-o", "gamma=5", "--no-progress"]) == 2
    assert "cannot change a resumed run" in capsys.readouterr().err


def test_sweep_varies_each_models_own_weight(tmp_path, capsys):
    """factor_vae sweeps γ (the TC weight), not fit's KL weight; --parameter names another argument."""
    common = ["--dataset", "sprites", "--num-train", "64", "--epochs", "1", "--z-dim", "2", "--batch-size", "64",
              "-o", "discriminator_hidden=[8]", "--metrics", "mig", "--metric-points", "50", "--no-progress"]
    out = tmp_path / "gamma"
    assert main(["sweep", "--model", "factor_vae", "--values", "5", "--out", str(out)] + common) == 0
    rows = json.loads((out / "sweep.json").read_text())
    assert [row["gamma"] for row in rows] == [5.0] and "mig" in rows[0]
    run = json.loads((out / "gamma_5" / "config.json").read_text())
    assert run["model_options"]["gamma"] == 5.0 and run["kl_weight"] is None
    out = tmp_path / "kl"
    assert main(["sweep", "--model", "factor_vae", "--beta", "2", "--parameter", "kl_weight", "--out", str(out)] + common) == 0
    run = json.loads((out / "kl_weight_2" / "config.json").read_text())
    assert run["kl_weight"] == 2.0 and "gamma" not in run["model_options"]
    capsys.readouterr()
    assert main(["sweep", "--model", "factor_vae", "--values", "2", "--parameter", "gama", "--out", str(out)] + common) == 2
    assert "Expected parameter to be one of factor_vae's arguments" in capsys.readouterr().err
    # --beta where the model sweeps another weight would silently mean something else: refused
    assert main(["sweep", "--model", "factor_vae", "--beta", "2", "--out", str(out)] + common) == 2
    assert "--beta sets β, but factor_vae sweeps gamma" in capsys.readouterr().err


def test_sweep_takes_integer_parameters_and_refuses_repeated_values(tmp_path):
    from pyrovae.experiment import RunConfig, sweep

    config = RunConfig(model="capacity_vae", model_options={"z_dim": 2, "hidden": [8]}, dataset="digits",
                       dataset_options={"binarize": True}, epochs=1, batch_size=512)
    rows = sweep(config, [5, 7], tmp_path, parameter="capacity_steps", progress=False)
    assert [row["capacity_steps"] for row in rows] == [5, 7]  # ints reach the int-only argument
    saved = torch.load(tmp_path / "capacity_steps_7" / "checkpoint.pt", weights_only=True)["model"]["config"]
    assert saved["capacity_steps"] == 7
    with pytest.raises(ValueError, match="Expected distinct values of gamma"):
        sweep(config, [2, 2.0], tmp_path / "again", parameter="gamma", progress=False)
    with pytest.raises(ValueError, match="x_shape"):  # set by the data, not sweepable
        sweep(config, [2], tmp_path / "again", parameter="x_shape", progress=False)


def test_compare_estimators_and_sweep_commands(tmp_path, capsys):
    assert main(["compare-estimators", "--epochs", "0", "--num-repeats", "3", "--batch-size", "16",
                 "--objectives", "elbo", "stl"]) == 0
    table = capsys.readouterr().out
    assert "stl" in table and "enc SNR" in table
    out = tmp_path / "sweep"
    assert main(["sweep", "--beta", "1", "4", "--dataset", "sprites", "--num-train", "128", "--epochs", "1",
                 "--z-dim", "3", "--metrics", "mig", "--metric-points", "100", "--out", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "sweep.json").read_text())
    assert [row["beta"] for row in rows] == [1.0, 4.0] and all("mig" in row for row in rows)
    from PIL import Image

    with Image.open(out / "tradeoff.png") as image:
        low, high = image.convert("L").getextrema()
        assert image.size[0] > 100 and low < high  # drawn, not blank


def test_train_no_jit_is_recorded_and_runs_eagerly(tmp_path, capsys):
    out = tmp_path / "eager"
    args = ["train", "--model", "vae", "--dataset", "digits", "--binarize", "--z-dim", "2", "--epochs", "1",
            "--batch-size", "512", "--out", str(out), "--no-progress", "--no-jit"]
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["jit"] is False
    from pyrovae.experiment import RunConfig

    default = RunConfig()
    assert default.jit is None  # compiles when it can
