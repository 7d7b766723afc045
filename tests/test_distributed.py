"""``fit`` under ``torchrun``: two CPU ranks (gloo, loopback only) train one model.

Each rank runs ``tests/_train_script.py`` on the digits data, records every
minibatch it trained on, and saves its final parameters to a file named by its
rank.  Data-parallel SGD with averaged gradients and a common initialisation
keeps the ranks' parameters identical, which is checked bit for bit.
"""

from __future__ import annotations

import collections
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyrovae
from pyrovae.checkpoint import CHECKPOINT_NAME

SCRIPT = Path(__file__).with_name("_train_script.py")
WORLD = 2
EPOCHS = 3


def _gloo_unavailable() -> str | None:
    if not torch.distributed.is_available():
        return "torch.distributed is not available in this torch build"
    if not torch.distributed.is_gloo_available():
        return "the gloo backend is not available in this torch build"
    return None


pytestmark = pytest.mark.skipif(_gloo_unavailable() is not None, reason=str(_gloo_unavailable()))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(root: Path, *script_args: str) -> subprocess.CompletedProcess:
    """``torchrun`` the training script on two CPU ranks (gloo, loopback) in ``root``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(SCRIPT), *script_args,
    ]
    try:
        return subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun did not finish in 120 s:\n{(e.stdout or '')[-2000:]}\n{(e.stderr or '')[-2000:]}")


def _succeeded(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"torchrun failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory) -> Path:
    """Launch the two-rank run once (a recording objective: every minibatch kept); return its folder."""
    root = tmp_path_factory.mktemp("ddp")
    _succeeded(_run_two_ranks(
        root, "--epochs", str(EPOCHS), "--batch-size", "128", "--seed", "11", "--record",
        "--out", str(root / "run{rank}"), "--result", str(root / "rank{rank}.pt"),
    ))
    return root


def _load(root: Path, rank: int) -> dict:
    return torch.load(root / f"rank{rank}.pt", map_location="cpu", weights_only=True)


def test_ranks_end_with_identical_parameters(torchrun):
    results = [_load(torchrun, r) for r in range(WORLD)]
    reference = results[0]["state"]
    assert reference, "rank 0 saved no parameters"
    for rank, result in enumerate(results[1:], start=1):
        assert result["state"].keys() == reference.keys()
        for k, v in reference.items():
            assert torch.equal(result["state"][k], v), f"rank {rank} differs from rank 0 in {k}"
        assert result["step"] == results[0]["step"]


def test_training_loss_decreased(torchrun):
    for rank in range(WORLD):
        history = _load(torchrun, rank)["history"]
        assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
        assert history[-1]["train_loss"] < history[0]["train_loss"], (rank, history)


def test_each_rank_trains_on_its_own_shard(torchrun):
    data = pyrovae.datasets.load("digits", binarize=True).x
    num_data = data.shape[0]
    shard = math.ceil(num_data / WORLD)  # padded by wrapping around: equal shards
    rows = lambda x: collections.Counter(bytes(r.to(torch.uint8).flatten().tolist()) for r in x)  # noqa: E731

    seen = []
    for rank in range(WORLD):
        batches = _load(torchrun, rank)["seen"]
        assert sum(len(b) for b in batches) == EPOCHS * shard, f"rank {rank} did not see exactly its shard each epoch"
        assert _load(torchrun, rank)["step"] == EPOCHS * math.ceil(shard / 128)
        seen.append(torch.cat(batches)[:shard])  # the first epoch

    # together the ranks' first epochs cover the data set once, plus the padding rows
    together = rows(torch.cat(seen))
    everything = rows(data)
    assert not everything - together, "some data points were seen by no rank"
    assert sum((together - everything).values()) == WORLD * shard - num_data
    assert rows(seen[0]) != rows(seen[1])


def test_only_rank_zero_writes_the_run_folder(torchrun):
    run = torchrun / "run0"
    assert (run / CHECKPOINT_NAME).exists()
    assert (run / "history.json").exists() and (run / "history.csv").exists()
    assert not (torchrun / "run1").exists(), "rank 1 wrote a run folder of its own"
    saved = pyrovae.load_checkpoint(run)
    assert saved["settings"]["world"] == WORLD
    assert len(saved["history"]) == EPOCHS
    # rank 0's checkpoint holds the parameters every rank ended with
    final = _load(torchrun, 0)["state"]
    for k, v in saved["state"]["module"].items():
        assert torch.equal(v, final[k]), k
    # only rank 0 evaluates, and no valid_data was given: no valid_elbo column
    assert all("valid_elbo" not in row for row in saved["history"])


def test_nan_on_one_rank_stops_every_rank(tmp_path):
    nan_step = 5
    proc = _run_two_ranks(
        tmp_path, "--epochs", "2", "--nan-step", str(nan_step), "--nan-rank", "1",
        "--out", str(tmp_path / "run"), "--result", str(tmp_path / "rank{rank}.pt"),
    )
    assert proc.returncode != 0
    for rank in range(WORLD):
        path = tmp_path / f"rank{rank}.pt"
        assert path.exists(), f"rank {rank} did not stop with TrainingDiverged:\n{proc.stderr[-2000:]}"
        message = torch.load(path, weights_only=True).get("diverged", "")
        assert f"step {nan_step}" in message, (rank, message)


@pytest.fixture(scope="module")
def torchrun_ddp(tmp_path_factory) -> Path:
    """Two ranks train a FactorVAE (compiled ELBO step, plus a discriminator step) with "elbo"."""
    root = tmp_path_factory.mktemp("ddp_factor_vae")
    _succeeded(_run_two_ranks(
        root, "--model", "factor_vae", "--epochs", str(EPOCHS), "--batch-size", "128", "--seed", "5",
        "--result", str(root / "rank{rank}.pt"),
    ))
    return root


def test_ddp_wraps_the_compiled_objective_and_ranks_agree(torchrun_ddp):
    """DistributedDataParallel averages the ELBO gradients (the discriminator, ignored by DDP, through
    fit's own all-reduce): every parameter, encoder to discriminator, is bit-identical across ranks."""
    results = [_load(torchrun_ddp, r) for r in range(WORLD)]
    for result in results:
        assert result["distributed"] == "ddp"
        assert result["eager_reason"] is None  # pyrovae's FactorVAE compiles
        history = result["history"]
        assert history[-1]["train_loss"] < history[0]["train_loss"], history
    reference = results[0]["state"]
    assert any(k.startswith("discriminator.") for k in reference)
    for k, v in reference.items():
        assert torch.equal(results[1]["state"][k], v), f"rank 1 differs from rank 0 in {k}"


def test_an_objective_without_a_single_surrogate_falls_back_to_one_all_reduce(torchrun):
    # the recording objective is a Trace_ELBO subclass that overrides loss_and_grads: no surrogate to wrap
    assert all(_load(torchrun, r)["distributed"] == "all-reduce" for r in range(WORLD))


@pytest.mark.parametrize("stream", [False, True], ids=["ddp", "with-a-stream"])
def test_a_user_pair_on_x_y_data_trains_data_parallel(tmp_path, stream):
    """(x, y) data sharded across ranks: DistributedDataParallel around a user's own module, or one
    all-reduce per step when a stream adds a second objective; the ranks stay bit-identical."""
    extra = ("--stream",) if stream else ()
    _succeeded(_run_two_ranks(tmp_path, "--model", "conditional", "--epochs", "2", "--batch-size", "64",
                              "--result", str(tmp_path / "rank{rank}.pt"), *extra))
    results = [_load(tmp_path, r) for r in range(WORLD)]
    assert results[0]["distributed"] == ("all-reduce" if stream else "ddp")
    for k, v in results[0]["state"].items():
        assert torch.equal(results[1]["state"][k], v), f"rank 1 differs from rank 0 in {k}"
    history = results[0]["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert ("stream1_loss" in history[-1]) == stream
