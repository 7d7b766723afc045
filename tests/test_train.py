"""Tests of ``pyrovae.fit``: resume (in-process and after SIGKILL), checkpoint safety,
divergence, input validation, history files, and user-written model/guide pairs.

Exactness: on the CPU, with one thread, a resumed run must reach *bit-identical*
parameters (``torch.equal``), because ``fit`` restores the optimizer, the data
order position, the partial epoch sums and the RNG state.  No tolerance is
needed, so none is used, except where a value goes through text (CSV/JSON),
which round-trips floats exactly via ``repr`` anyway.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

import pyrovae
from pyrovae.experiment import RunConfig
from pyrovae.objectives.graph import GraphELBO
from pyrovae.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from _processes import kill_when_exists

SCRIPT = Path(__file__).with_name("_train_script.py")


# --------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def digits() -> pyrovae.DataSet:
    return pyrovae.datasets.load("digits", binarize=True)


@pytest.fixture(autouse=True)
def _one_thread():
    # bit-exact comparisons between runs assume the same reduction order
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_vae(init_seed: int = 0) -> pyrovae.VAE:
    """A small MLP VAE for 1x8x8 digits; ``init_seed`` fixes its initial weights."""
    torch.manual_seed(init_seed)
    return pyrovae.VAE((1, 8, 8), z_dim=2, hidden=(16,), arch="mlp")


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"parameter {k} differs (max |diff| {(sa[k] - sb[k]).abs().max():.3g})"


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def ppca_model(x: torch.Tensor) -> None:
    """Probabilistic PCA: z ~ N(0, I_2), x | z ~ N(z W, sigma^2 I)."""
    W = pyro.param("W", lambda: 0.1 * torch.randn(2, x.shape[1]))
    sigma = pyro.param("sigma", lambda: torch.tensor(1.0), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W, sigma).to_event(1), obs=x)


def ppca_guide(x: torch.Tensor) -> None:
    """Amortized linear-Gaussian q(z | x) = N(x A, diag(s)^2)."""
    A = pyro.param("A", lambda: 0.1 * torch.randn(x.shape[1], 2))
    s = pyro.param("s", lambda: torch.full((2,), 0.5), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x @ A, s).to_event(1))


PPCA_PARAMS = {"W", "sigma", "A", "s"}


def param_store_values() -> dict[str, torch.Tensor]:
    """Unconstrained values of everything in the param store, cloned."""
    store = pyro.get_param_store()
    return {k: store._params[k].detach().clone() for k in store.keys()}


class PoisonedPPCA:
    """The PPCA pair, whose likelihood turns NaN from training step ``nan_step`` on.

    ``fit`` calls ``training_kwargs(step)`` once per training step, so the NaN
    appears at exactly that step.
    """

    def __init__(self, nan_step: float) -> None:
        self.nan_step = nan_step

    def training_kwargs(self, step: int) -> dict:
        return {"poison": step >= self.nan_step}

    def model(self, x: torch.Tensor, poison: bool = False) -> None:
        W = pyro.param("W", lambda: 0.1 * torch.randn(2, x.shape[1]))
        sigma = pyro.param("sigma", lambda: torch.tensor(1.0), constraint=constraints.positive)
        if poison:
            sigma = sigma * float("nan")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W, sigma).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, poison: bool = False) -> None:
        ppca_guide(x)


# ------------------------------------------------------------------- resume
def test_resume_in_process_equals_uninterrupted_run(digits, tmp_path):
    x = digits.x[:256]  # batch 64: 4 steps an epoch; checkpoint_every=3 lands mid-epoch
    options = dict(batch_size=64, lr=1e-2, seed=3, device="cpu", progress=False)

    first = pyrovae.fit(tiny_vae(0), x, epochs=2, out=tmp_path, checkpoint_every=3, **options)
    assert first.step == 8
    resumed_vae = tiny_vae(99)  # different initial weights: everything must come from the checkpoint
    resumed = pyrovae.fit(resumed_vae, x, epochs=3, out=tmp_path, checkpoint_every=3, resume=True, **options)

    fresh_vae = tiny_vae(0)
    fresh = pyrovae.fit(fresh_vae, x, epochs=3, **options)

    assert resumed.step == fresh.step == 12
    assert_same_state(resumed_vae, fresh_vae)
    assert without_seconds(resumed.history) == without_seconds(fresh.history)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]


def test_resume_continues_the_graph_objectives_baselines(digits, tmp_path):
    """The score-function objective's decaying-average baselines are its own state (never left in
    Pyro's param store); the checkpoint carries them, so a resumed run (fresh process: empty store)
    equals an uninterrupted one."""
    x = digits.x[:256]
    options = dict(batch_size=64, lr=1e-2, seed=3, device="cpu", progress=False)
    pyrovae.fit(tiny_vae(0), x, epochs=1, out=tmp_path, objective=GraphELBO(pathwise=False), **options)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["objective"]
    assert set(saved) == {"z"}  # by site name
    assert not [k for k in pyro.get_param_store().keys() if "baseline" in k]  # the store holds none
    pyro.clear_param_store()  # what a new process starts with
    resumed_vae = tiny_vae(99)
    resumed = pyrovae.fit(resumed_vae, x, epochs=2, out=tmp_path, resume=True,
                          objective=GraphELBO(pathwise=False), **options)
    pyro.clear_param_store()
    fresh_vae = tiny_vae(0)
    fresh = pyrovae.fit(fresh_vae, x, epochs=2, objective=GraphELBO(pathwise=False), **options)
    assert_same_state(resumed_vae, fresh_vae)
    assert without_seconds(resumed.history) == without_seconds(fresh.history)


class CrashingVAE(pyrovae.VAE):
    """A VAE whose training raises at step ``crash_step`` (a crash in the middle of an epoch)."""

    crash_step: int | None = None

    def training_kwargs(self, step: int) -> dict:
        if step == self.crash_step:
            raise KeyboardInterrupt(f"simulated crash at step {step}")
        return {}


def test_resume_after_crash_mid_epoch_equals_uninterrupted_run(digits, tmp_path):
    x = digits.x[:256]
    # jit=True: the crashing subclass (defined here) compiles too, so all three runs take the same
    # compiled steps, and the check covers resuming a compiled run (graphs are re-recorded, RNG untouched)
    options = dict(batch_size=64, lr=1e-2, seed=5, device="cpu", progress=False, epochs=3, jit=True)

    torch.manual_seed(0)
    crashing = CrashingVAE((1, 8, 8), z_dim=2, hidden=(16,), arch="mlp")
    crashing.crash_step = 7  # checkpoints at steps 3, 4 (epoch end) and 6 (mid-epoch 2)
    with pytest.raises(KeyboardInterrupt):
        pyrovae.fit(crashing, x, out=tmp_path, checkpoint_every=3, **options)
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert (saved["step"], saved["epoch"], saved["batch_index"]) == (6, 1, 2)
    assert saved["sums"]["count"] == 2  # the partial epoch's running loss is carried over

    resumed_vae = tiny_vae(42)
    resumed = pyrovae.fit(resumed_vae, x, out=tmp_path, checkpoint_every=3, resume=True, **options)
    fresh_vae = tiny_vae(0)
    fresh = pyrovae.fit(fresh_vae, x, **options)

    assert_same_state(resumed_vae, fresh_vae)
    assert without_seconds(resumed.history) == without_seconds(fresh.history)


def _launch(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs
    )


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"training script failed (rc={proc.returncode}):\n{text[-3000:]}"
    return text


def test_sigkill_then_resume_reaches_uninterrupted_parameters(tmp_path):
    epochs, every = 6, 4  # digits train split, batch 128: 11 steps an epoch, 66 in all
    common = ["--epochs", str(epochs), "--checkpoint-every", str(every), "--seed", "7"]
    run_dir = tmp_path / "run"
    checkpoint = run_dir / CHECKPOINT_NAME

    # the reference runs alongside the run we kill (two cores)
    reference = _launch([*common, "--result", str(tmp_path / "reference.pt")])
    # 0.1 s a step: about 6.6 s of training, while the first checkpoint appears after 0.4 s
    victim = _launch([*common, "--out", str(run_dir), "--result", str(tmp_path / "victim.pt"), "--sleep", "0.1"])
    kill_when_exists(victim, checkpoint, timeout=90, poll=0.01)
    assert victim.returncode == -signal.SIGKILL, (
        f"the run was meant to be killed mid-way but exited by itself with rc={victim.returncode}; "
        "training outpaced the poll (raise --sleep)"
    )
    assert not (tmp_path / "victim.pt").exists(), "the killed run finished; nothing was resumed"

    at_kill = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert 0 < at_kill["step"] < epochs * 11, at_kill["step"]
    assert len(at_kill["history"]) == at_kill["epoch"] < epochs

    _finish(_launch([*common, "--out", str(run_dir), "--result", str(tmp_path / "resumed.pt"), "--resume"]))
    _finish(reference)

    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    expected = torch.load(tmp_path / "reference.pt", weights_only=True)
    assert resumed["step"] == expected["step"] == epochs * 11
    assert resumed["state"].keys() == expected["state"].keys()
    for k, v in expected["state"].items():
        assert torch.equal(resumed["state"][k], v), f"{k} differs after resume (max |diff| {(resumed['state'][k] - v).abs().max():.3g})"
    assert [row["epoch"] for row in resumed["history"]] == list(range(1, epochs + 1))
    assert without_seconds(resumed["history"]) == without_seconds(expected["history"])
    on_disk = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in on_disk] == list(range(1, epochs + 1))


# -------------------------------------------------------- checkpoint safety
def test_checkpoint_loads_with_weights_only(digits, tmp_path):
    vae = tiny_vae()
    pyrovae.fit(vae, digits.x[:128], epochs=1, batch_size=64, device="cpu", progress=False,
                out=tmp_path, record={"model": "vae", "z_dim": 2})
    state = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert state["step"] == 2 and state["epoch"] == 1
    assert state["record"] == {"model": "vae", "z_dim": 2}
    assert state["model"]["config"] == vae.config
    restored = tiny_vae(7)
    restored.load_state_dict(state["state"]["module"])
    assert_same_state(restored, vae)


class _Payload:
    """An arbitrary picklable object: what weights_only loading must refuse."""


def test_load_checkpoint_refuses_pickled_code(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"step": 1, "payload": _Payload()}, path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_checkpoint(path)


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint({"step": 1, "w": torch.arange(3.0)}, path)
    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME], "a temporary file was left behind"
    kept = load_checkpoint(path)
    assert kept["step"] == 1 and torch.equal(kept["w"], torch.arange(3.0))


def test_fit_keeps_previous_checkpoint_when_a_save_fails(digits, tmp_path, monkeypatch):
    real_save = torch.save
    calls = []

    def failing_second_save(obj, f, *args, **kwargs):
        calls.append(obj["step"])
        if len(calls) == 2:
            f.write(b"garbage")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_second_save)
    with pytest.raises(OSError, match="disk full"):
        pyrovae.fit(tiny_vae(), digits.x[:128], epochs=2, batch_size=32, checkpoint_every=1,
                    device="cpu", progress=False, out=tmp_path)
    monkeypatch.setattr(torch, "save", real_save)
    assert calls == [1, 2]
    assert load_checkpoint(tmp_path)["step"] == 1
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_a_clear_error(digits, tmp_path, damage):
    x = digits.x[:64]
    pyrovae.fit(tiny_vae(), x, epochs=1, batch_size=32, device="cpu", progress=False, out=tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    blob = path.read_bytes()
    path.write_bytes({"truncated": blob[: len(blob) // 2], "garbage": b"\x00not a checkpoint" * 10, "empty": b""}[damage])

    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        pyrovae.fit(tiny_vae(), x, epochs=2, batch_size=32, device="cpu", progress=False, out=tmp_path, resume=True)


# -------------------------------------------------------------- divergence
def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    x = pyrovae.datasets.load("synthetic").x[:60]  # batch 10: 6 steps an epoch
    options = dict(batch_size=10, lr=1e-2, seed=1, device="cpu", progress=False)

    pyrovae.fit(PoisonedPPCA(nan_step=math.inf), x, epochs=2, **options)  # 12 clean steps: the reference
    expected = param_store_values()
    pyro.clear_param_store()

    nan_step = 12  # the first step of epoch 3
    with pytest.raises(pyrovae.TrainingDiverged) as info:
        pyrovae.fit(PoisonedPPCA(nan_step), x, epochs=4, out=tmp_path, checkpoint_every=5, **options)
    message = str(info.value)
    assert re.search(rf"\bstep {nan_step}\b", message), message
    assert str(tmp_path / CHECKPOINT_NAME) in message

    # the NaN step's gradients were never applied: parameters are those after 12 clean steps
    now = param_store_values()
    assert now.keys() == expected.keys() == PPCA_PARAMS
    for k in expected:
        assert torch.isfinite(now[k]).all(), f"{k} became non-finite"
        assert torch.equal(now[k], expected[k]), k

    # the last good checkpoint (end of epoch 2) is on disk, loadable and finite
    kept = load_checkpoint(tmp_path)
    assert kept["step"] == nan_step and kept["epoch"] == 2
    for k in PPCA_PARAMS:
        assert torch.equal(kept["state"]["params"][k], expected[k]), k
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2


def test_resume_after_divergence_from_last_good_checkpoint(tmp_path):
    x = pyrovae.datasets.load("synthetic").x[:60]
    options = dict(batch_size=10, lr=1e-2, seed=1, device="cpu", progress=False, epochs=3)

    with pytest.raises(pyrovae.TrainingDiverged, match=r"\bstep 9\b"):
        pyrovae.fit(PoisonedPPCA(nan_step=9), x, out=tmp_path, checkpoint_every=4, **options)
    assert load_checkpoint(tmp_path)["step"] == 8  # mid-epoch 2

    pyro.clear_param_store()
    pyrovae.fit(PoisonedPPCA(math.inf), x, out=tmp_path, checkpoint_every=4, resume=True, **options)
    resumed = param_store_values()
    pyro.clear_param_store()
    pyrovae.fit(PoisonedPPCA(math.inf), x, **options)
    fresh = param_store_values()
    for k in PPCA_PARAMS:
        assert torch.equal(resumed[k], fresh[k]), k


# ---------------------------------------------------------- input checking
def _bad_inputs(digits: pyrovae.DataSet) -> dict:
    x = digits.x[:64]
    gray = pyrovae.datasets.load("digits").x[:64]  # intensities in [0, 1], not binary
    with_nan = x.clone()
    with_nan[3, 0, 2, 2] = float("nan")
    return {
        "wrong shape": (dict(data=x.reshape(64, 64)), ValueError, r"data.*\(N, 1, 8, 8\).*\(64, 64\)"),
        "integer dtype": (dict(data=x.long()), TypeError, r"data.*floating.*int64"),
        "NaN in data": (dict(data=with_nan), ValueError, r"data.*finite.*1 NaN"),
        "NaN in valid_data": (dict(valid_data=with_nan), ValueError, r"valid_data.*finite"),
        "non-binary for bernoulli": (dict(data=gray), ValueError, r"bernoulli.*\{0, 1\}.*continuous_bernoulli"),
        "epochs=0": (dict(epochs=0), ValueError, r"epochs.*int >= 1.*got 0"),
        "batch_size=-1": (dict(batch_size=-1), ValueError, r"batch_size.*int >= 1.*got -1"),
        "lr=0": (dict(lr=0), ValueError, r"lr to be a finite number > 0, got 0"),
        "unknown objective": (dict(objective="elbow"), ValueError, r"objective.*'elbo'.*got 'elbow'"),
        "alpha with elbo": (dict(objective="elbo", alpha=0.5), ValueError, r"objective='elbo'.*unexpected \['alpha'\]"),
        "resume without out": (dict(resume=True, out=None), ValueError, r"resume=True.*out="),
        "not a model": (dict(obj=object()), TypeError, r"model\(\) and guide\(\).*got object"),
        "unknown optimizer option": (dict(optimizer_options={"epsilon": 1e-4}), ValueError,
                                     r"optimizer_options: 'adam' \(Adam\) takes no \['epsilon'\].*'eps'"),
        "lr in optimizer_options": (dict(optimizer_options={"lr": 1.0}), ValueError, r"no \['lr'\].*fit's lr="),
        "bad betas": (dict(optimizer_options={"betas": (1.5, 0.999)}), ValueError,
                      r"optimizer_options.*rejected by Adam.*beta"),
    }


BAD_INPUT_CASES = [
    "wrong shape", "integer dtype", "NaN in data", "NaN in valid_data", "non-binary for bernoulli", "epochs=0",
    "batch_size=-1", "lr=0", "unknown objective", "alpha with elbo", "resume without out", "not a model",
    "unknown optimizer option", "lr in optimizer_options", "bad betas",
]


@pytest.mark.parametrize("case", BAD_INPUT_CASES)
def test_bad_input_is_refused_before_any_work(digits, tmp_path, case):
    change, error, pattern = _bad_inputs(digits)[case]
    out = tmp_path / "run"
    kwargs = dict(obj=tiny_vae(), data=digits.x[:64], epochs=1, batch_size=32, device="cpu", progress=False, out=out)
    kwargs.update(change)
    with pytest.raises(error, match=pattern):
        pyrovae.fit(kwargs.pop("obj"), kwargs.pop("data"), **kwargs)
    assert not out.exists(), "a run folder was created before the input was checked"
    assert len(pyro.get_param_store()) == 0, "the model ran before the input was checked"


def test_kl_weight_refused_for_pair_without_kl_weight(tmp_path):
    x = pyrovae.datasets.load("synthetic").x[:64]
    for weight in (0.5, pyrovae.Linear(0.0, 1.0, num_steps=10)):
        with pytest.raises(ValueError, match=r"kl_weight.*accept a kl_weight keyword"):
            pyrovae.fit((ppca_model, ppca_guide), x, kl_weight=weight, device="cpu", progress=False, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    assert len(pyro.get_param_store()) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here, so device='cuda' is valid")
def test_cuda_refused_when_unavailable(digits, tmp_path):
    with pytest.raises(ValueError, match=r"device='cuda'.*not available"):
        pyrovae.fit(tiny_vae(), digits.x[:64], device="cuda", progress=False, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ history
def test_history_files_and_valid_elbo(digits, tmp_path):
    valid = pyrovae.datasets.load("digits", "valid", binarize=True)
    vae = tiny_vae()
    result = pyrovae.fit(vae, digits.x[:256], valid_data=valid, epochs=3, batch_size=64, seed=4,
                         device="cpu", progress=False, out=tmp_path)
    assert result.run_dir == tmp_path

    rows = json.loads((tmp_path / "history.json").read_text())
    assert rows == result.history
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["step"] for r in rows] == [4, 8, 12]
    assert all({"train_loss", "kl_weight", "valid_elbo", "seconds"} <= r.keys() for r in rows)
    assert all(math.isfinite(r["valid_elbo"]) and r["valid_elbo"] < 0 for r in rows)  # log-probs of binary pixels

    with open(tmp_path / "history.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3
    for row, line in zip(rows, table):
        assert line.keys() == row.keys()
        for key, value in row.items():
            assert float(line[key]) == value, (key, line[key], value)  # csv writes repr(float): exact

    # the last epoch's valid_elbo is the final model's true ELBO with the run's seed
    assert rows[-1]["valid_elbo"] == pyrovae.evaluate_elbo(vae, valid, seed=4)


def test_kl_weight_schedule_in_history(digits, tmp_path):
    schedule = pyrovae.Linear(0.0, 1.0, num_steps=10)
    result = pyrovae.fit(tiny_vae(), digits.x[:256], kl_weight=schedule, epochs=3, batch_size=64,
                         device="cpu", progress=False, out=tmp_path)
    # the column holds the weight of each epoch's last step (steps 3, 7 and 11)
    expected = [schedule(3), schedule(7), schedule(11)]
    assert expected == pytest.approx([0.3, 0.7, 1.0], abs=1e-12)
    assert [r["kl_weight"] for r in result.history] == expected
    with open(tmp_path / "history.csv", newline="") as f:
        assert [float(r["kl_weight"]) for r in csv.DictReader(f)] == expected
    assert load_checkpoint(tmp_path)["settings"]["kl_weight"] == schedule.to_dict()


def test_kl_weight_schedule_changes_training(digits):
    """The scheduled β reaches the model: β = 0 at first trains a different objective than β = 1."""
    x = digits.x[:128]
    options = dict(epochs=1, batch_size=64, device="cpu", progress=False)
    annealed = pyrovae.fit(tiny_vae(), x, kl_weight=pyrovae.Linear(0.0, 1.0, num_steps=1000), **options)
    plain = pyrovae.fit(tiny_vae(), x, **options)
    assert annealed.history[0]["kl_weight"] == pytest.approx(0.001)
    assert annealed.history[0]["train_loss"] != plain.history[0]["train_loss"]


def test_resume_with_different_batch_size_raises(digits, tmp_path):
    x = digits.x[:128]
    pyrovae.fit(tiny_vae(), x, epochs=1, batch_size=32, device="cpu", progress=False, out=tmp_path)
    with pytest.raises(ValueError, match=r"batch_size=32, now 64"):
        pyrovae.fit(tiny_vae(), x, epochs=2, batch_size=64, device="cpu", progress=False, out=tmp_path, resume=True)
    assert load_checkpoint(tmp_path)["epoch"] == 1  # the refused resume did not touch the run


def test_resume_without_checkpoint_starts_fresh(digits, tmp_path):
    x = digits.x[:128]
    options = dict(epochs=1, batch_size=64, device="cpu", progress=False)
    a, b = tiny_vae(), tiny_vae()
    pyrovae.fit(a, x, out=tmp_path / "new", resume=True, **options)
    pyrovae.fit(b, x, **options)
    assert_same_state(a, b)
    assert (tmp_path / "new" / CHECKPOINT_NAME).exists()


# --------------------------------------------------------------- user pairs
def test_user_pair_trains_and_resumes_from_param_store_names(tmp_path):
    x = pyrovae.datasets.load("synthetic").x[:200]
    options = dict(batch_size=50, lr=2e-2, seed=2, device="cpu", progress=False)

    first = pyrovae.fit((ppca_model, ppca_guide), x, epochs=2, out=tmp_path, checkpoint_every=3, **options)
    after_two = param_store_values()
    saved = load_checkpoint(tmp_path)
    assert saved["state"]["module"] == {}
    assert set(saved["state"]["params"]) == PPCA_PARAMS
    for k in PPCA_PARAMS:  # saved unconstrained, by param-store name
        assert torch.equal(saved["state"]["params"][k], after_two[k]), k

    pyro.clear_param_store()  # a new process: nothing in the store
    resumed = pyrovae.fit((ppca_model, ppca_guide), x, epochs=5, out=tmp_path, checkpoint_every=3,
                          resume=True, **options)
    got = param_store_values()
    pyro.clear_param_store()
    fresh = pyrovae.fit((ppca_model, ppca_guide), x, epochs=5, **options)
    want = param_store_values()

    assert got.keys() == want.keys() == PPCA_PARAMS
    for k in PPCA_PARAMS:
        assert torch.equal(got[k], want[k]), k
    assert without_seconds(resumed.history) == without_seconds(fresh.history)
    assert without_seconds(resumed.history[:2]) == without_seconds(first.history)
    assert fresh.history[-1]["train_loss"] < fresh.history[0]["train_loss"]  # it learns


# ------------------------------------------------- edge cases found in review
def test_empty_data_refused_for_user_pair(tmp_path):
    with pytest.raises(ValueError, match=r"data of shape \(N, \.\.\.\) with N >= 1, got \(0, 5\)"):
        pyrovae.fit((ppca_model, ppca_guide), torch.zeros(0, 5), device="cpu", progress=False, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_empty_data_refused_for_vae(tmp_path):
    with pytest.raises(ValueError, match=r"data.*N >= 1"):
        pyrovae.fit(tiny_vae(), torch.zeros(0, 1, 8, 8), device="cpu", progress=False, out=tmp_path / "r")


@pytest.mark.parametrize("lr", [float("inf"), float("nan")])
def test_non_finite_lr_refused(lr, tmp_path):
    # fit validates lr before it touches the model or the run folder (lr <= 0: test_bad_input_is_refused...)
    vae = tiny_vae()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    with pytest.raises(ValueError, match=r"Expected lr to be a finite number > 0, got"):
        pyrovae.fit(vae, torch.zeros(8, 1, 8, 8), lr=lr, epochs=1, device="cpu", progress=False, out=tmp_path / "r")
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    assert not (tmp_path / "r").exists()


def test_resume_with_a_smaller_lr_continues_and_records_it(digits, tmp_path):
    """A run that stopped (on a NaN, say) may continue with a smaller lr: the optimizer keeps its
    moments, steps from there at the new lr, and every history row says which lr it trained with."""
    x = digits.x[:128]
    options = dict(batch_size=64, device="cpu", progress=False, out=tmp_path)
    pyrovae.fit(tiny_vae(), x, epochs=1, lr=1e-2, **options)
    resumed = pyrovae.fit(tiny_vae(), x, epochs=2, lr=1e-4, resume=True, **options)
    assert [row["lr"] for row in resumed.history] == [1e-2, 1e-4]
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["settings"]["lr"] == 1e-4
    assert all(group["lr"] == 1e-4 for group in checkpoint["optimizer"]["param_groups"])


def test_optimizer_options_reach_the_optimizer_and_may_change_on_resume(digits, tmp_path):
    """Burda et al.'s Adam has eps = 1e-4: optimizer_options sets it (and betas, given as a config.json's
    list), the checkpoint's optimizer holds it, and a resumed run may change it like lr."""
    x = digits.x[:128]
    options = dict(batch_size=64, device="cpu", progress=False, out=tmp_path)
    pyrovae.fit(tiny_vae(), x, epochs=1, optimizer_options={"eps": 1e-4, "betas": [0.95, 0.999]}, **options)
    groups = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert all(g["eps"] == 1e-4 and tuple(g["betas"]) == (0.95, 0.999) for g in groups)
    pyrovae.fit(tiny_vae(), x, epochs=2, optimizer_options={"eps": 1e-6}, resume=True, **options)
    groups = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert all(g["eps"] == 1e-6 for g in groups)
    # the same run with eps 1e-8 (the default) trains differently: the option is not ignored
    default = pyrovae.fit(tiny_vae(), x, epochs=1, batch_size=64, device="cpu", progress=False)
    tuned = pyrovae.fit(tiny_vae(), x, epochs=1, batch_size=64, device="cpu", progress=False,
                        optimizer_options={"eps": 1.0})
    assert default.history[-1]["train_loss"] != tuned.history[-1]["train_loss"]


def test_run_config_refuses_bad_optimizer_options():
    with pytest.raises(ValueError, match=r"optimizer_options.*takes no \['momentum'\]"):
        RunConfig(optimizer_options={"momentum": 0.9})
    assert RunConfig(optimizer_options={"betas": [0.5, 0.9]}).optimizer_options == {"betas": (0.5, 0.9)}


def test_resume_with_different_optimizer_is_refused(digits, tmp_path):
    x = digits.x[:128]
    options = dict(batch_size=64, device="cpu", progress=False, out=tmp_path)
    pyrovae.fit(tiny_vae(), x, epochs=1, optimizer="adam", **options)
    with pytest.raises(ValueError, match=r"optimizer.*adam"):
        pyrovae.fit(tiny_vae(), x, epochs=2, optimizer="sgd", resume=True, **options)


def test_fit_redraws_dynamically_binarized_data_every_epoch(monkeypatch):
    from pyrovae.datasets.base import DynamicallyBinarized

    probs = torch.rand(40, 1, 4, 4)
    data = DynamicallyBinarized.from_probs(probs, seed=3, name="toy", split="train")
    seen = []
    original = DynamicallyBinarized.epoch_view

    def spy(self, epoch):
        seen.append(epoch)
        return original(self, epoch)

    monkeypatch.setattr(DynamicallyBinarized, "epoch_view", spy)
    vae = pyrovae.VAE((1, 4, 4), 2, hidden=(8,))
    pyrovae.fit(vae, data, epochs=3, batch_size=20, device="cpu", progress=False)
    assert [e for e in seen if e > 0] == [1, 2] and 0 in seen  # one fresh draw per epoch
    assert not torch.equal(original(data, 1), original(data, 2))  # the draws differ
    assert torch.equal(original(data, 1), original(data, 1))  # and are a function of (seed, epoch)
