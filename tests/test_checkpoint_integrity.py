"""Checkpoints that are not what they claim (issue 11, item 8): each is refused in one line naming
the file and what is missing, different or damaged; stale temporary files of killed writes are
removed by the next save; a verified checkpoint still resumes bit for bit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovae
from pyrovae.checkpoint import (
    CHECKPOINT_NAME,
    CHECKSUM_KEY,
    TRAINER_KEYS,
    load_checkpoint,
    save_checkpoint,
)

OPTIONS = {"batch_size": 64, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return pyrovae.datasets.load("digits", binarize=True).x[:256]  # batch 64: 4 steps an epoch



def tiny_vae(init_seed: int = 0, z_dim: int = 2) -> pyrovae.VAE:
    torch.manual_seed(init_seed)
    return pyrovae.VAE((1, 8, 8), z_dim=z_dim, hidden=(16,), arch="mlp")


@pytest.fixture()
def run(x, tmp_path):
    """A real run folder: one epoch of the tiny VAE, its checkpoint on disk."""
    pyrovae.fit(tiny_vae(), x, epochs=1, out=tmp_path, **OPTIONS)
    return tmp_path


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def rewrite(path, edit) -> None:
    """Load the file as torch would, edit the dict, and save it back as a pyrovae before checksums
    would have written it (format 1, no checksum)."""
    saved = torch.load(path, weights_only=True)
    saved.pop(CHECKSUM_KEY)
    saved["format"] = 1
    edit(saved)
    torch.save(saved, path)


# --------------------------------------------------------------------- not a checkpoint
def test_missing_keys_are_named(run, x):
    path = run / CHECKPOINT_NAME
    rewrite(path, lambda saved: [saved.pop("settings"), saved.pop("state")])
    expected = f"{path} is not a pyrovae checkpoint: missing keys ['settings', 'state']"
    with pytest.raises(ValueError) as error:
        load_checkpoint(path)
    assert one_line(error) == expected
    with pytest.raises(ValueError, match=re.escape(expected)):  # not KeyError: 'settings'
        pyrovae.fit(tiny_vae(), x, epochs=2, out=run, resume=True, **OPTIONS)


def test_a_foreign_dict_is_refused(tmp_path, x):
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"a": 1}, path)
    with pytest.raises(ValueError) as error:
        pyrovae.fit(tiny_vae(), x, epochs=1, out=tmp_path, resume=True, **OPTIONS)
    assert one_line(error) == f"{path} is not a pyrovae checkpoint: missing keys {list(TRAINER_KEYS)}"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a pyrovae checkpoint: it holds a list")):
        load_checkpoint(path)


def test_a_model_of_another_shape_is_refused_naming_the_tensor(run, x):
    path = run / CHECKPOINT_NAME
    bigger = tiny_vae(z_dim=3)
    before = {k: v.clone() for k, v in bigger.state_dict().items()}
    with pytest.raises(ValueError) as error:  # not torch's multi-line "size mismatch"
        pyrovae.fit(bigger, x, epochs=2, out=run, resume=True, **OPTIONS)
    # the prior's loc comes first in the module's state_dict; the encoder's heads and the decoder's input follow
    assert one_line(error) == f"{path} holds prior_loc of shape (2,), the model has (3,); 4 more differ"
    assert all(torch.equal(before[k], v) for k, v in bigger.state_dict().items()), "a refused checkpoint changed the model"
    assert load_checkpoint(run)["step"] == 4  # and the run is untouched


def test_a_pyro_param_of_another_shape_is_refused(tmp_path):
    def pair(width):
        def model(x):
            loc = pyro.param("loc", torch.zeros(width))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x[:, :width])

        def guide(x):
            pass
        return model, guide

    data = torch.randn(32, 3)
    pyro.clear_param_store()
    pyrovae.fit(pair(3), data, epochs=1, out=tmp_path, batch_size=16, device="cpu", progress=False)
    pyro.clear_param_store()
    with pytest.raises(ValueError) as error:  # copy_ would have broadcast a (1,) into a (3,) silently
        pyrovae.fit(pair(1), data, epochs=2, out=tmp_path, batch_size=16, device="cpu", progress=False, resume=True)
    assert one_line(error) == f"{tmp_path / CHECKPOINT_NAME} holds loc of shape (3,), the model has (1,)"
    pyro.clear_param_store()


# --------------------------------------------------------------------- damaged
def test_a_flipped_byte_is_refused_naming_the_file(run, x):
    path = run / CHECKPOINT_NAME
    blob = bytearray(path.read_bytes())
    middle = len(blob) // 2
    blob[middle] ^= 0x01  # one bit: the kind of damage that loaded silently before checksums
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError) as error:
        load_checkpoint(path)
    assert one_line(error).startswith(f"{path} is corrupt"), str(error.value)
    with pytest.raises(ValueError, match=re.escape(f"{path} is corrupt")):
        pyrovae.fit(tiny_vae(), x, epochs=2, out=run, resume=True, **OPTIONS)


def test_a_damaged_checksum_entry_is_refused(run):
    """A flipped bit in the checksum's own key must not pass for a file written before checksums."""
    path = run / CHECKPOINT_NAME
    blob = path.read_bytes()
    assert blob.count(CHECKSUM_KEY.encode()) == 1
    path.write_bytes(blob.replace(CHECKSUM_KEY.encode(), b"chedksum"))
    with pytest.raises(ValueError) as error:
        load_checkpoint(path)
    assert one_line(error).startswith(f"{path} is corrupt: it has no checksum"), str(error.value)


def test_every_tensor_byte_is_covered_by_the_checksum(tmp_path):
    """Flip a bit in each byte of a tensor's data on disk: every one is refused, none loads."""
    path = tmp_path / CHECKPOINT_NAME
    w = torch.arange(4.0)
    save_checkpoint({"step": 1, "w": w}, path)
    blob = path.read_bytes()
    start = blob.index(w.numpy().tobytes())
    for offset in range(start, start + w.numel() * w.element_size()):
        damaged = bytearray(blob)
        damaged[offset] ^= 0x80
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=re.escape(f"{path} is corrupt")):
            load_checkpoint(path)


def test_nan_parameters_are_refused_naming_the_parameter(run, x):
    path = run / CHECKPOINT_NAME
    name = next(iter(torch.load(path, weights_only=True)["state"]["module"]))

    def poison(saved):
        saved["state"]["module"][name][0] = float("nan")

    rewrite(path, poison)
    with pytest.raises(ValueError) as error:
        load_checkpoint(path)
    message = one_line(error)
    assert message.startswith(f"{path} holds non-finite values (NaN or inf) in parameter {name!r} (1 of "), message
    assert "tensor(" not in message and "nan," not in message  # the tensor itself is never printed
    with pytest.raises(ValueError, match=re.escape(f"in parameter {name!r}")):
        pyrovae.fit(tiny_vae(), x, epochs=2, out=run, resume=True, **OPTIONS)


def test_nan_written_through_save_checkpoint_is_refused_too(run):
    """A verified checksum says the file is what was saved, not that what was saved is sane."""
    path = run / CHECKPOINT_NAME
    saved = load_checkpoint(path)
    name = next(iter(saved["state"]["module"]))
    saved["state"]["module"][name].fill_(float("inf"))
    save_checkpoint(saved, path)
    with pytest.raises(ValueError, match=re.escape(f"{path} holds non-finite values (NaN or inf) in parameter {name!r}")):
        load_checkpoint(path)


# --------------------------------------------------------------------- formats
def test_the_checksum_keeps_the_file_plain_and_is_removed_on_load(run):
    path = run / CHECKPOINT_NAME
    on_disk = torch.load(path, weights_only=True)  # torch alone still reads it
    assert isinstance(on_disk[CHECKSUM_KEY], str) and on_disk[CHECKSUM_KEY].startswith("sha256:")
    loaded = load_checkpoint(path)
    assert CHECKSUM_KEY not in loaded and loaded.keys() == on_disk.keys() - {CHECKSUM_KEY}
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint({"step": 1, CHECKSUM_KEY: "mine"}, path)


def test_an_older_checkpoint_without_checksum_still_resumes(run, x):
    path = run / CHECKPOINT_NAME
    rewrite(path, lambda saved: None)  # as written before checksums
    assert CHECKSUM_KEY not in torch.load(path, weights_only=True)
    assert load_checkpoint(path)["step"] == 4
    pyrovae.fit(tiny_vae(), x, epochs=2, out=run, resume=True, **OPTIONS)
    assert CHECKSUM_KEY in torch.load(path, weights_only=True)  # the next save adds one


# --------------------------------------------------------------------- temporary files
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporary_files_are_removed_by_the_next_save(run, x):
    path = run / CHECKPOINT_NAME
    dead = _dead_pid()
    stale = [run / f"{CHECKPOINT_NAME}.{dead}.ab12cd34.tmp",  # a killed writer
             run / f"{CHECKPOINT_NAME}.{os.getpid()}.zz99yy88.tmp",  # this process's earlier, interrupted write
             run / f"{CHECKPOINT_NAME}.k3j4h5g6.tmp",  # an older version's name (no pid)
             run / f"{CHECKPOINT_NAME}.1.old00old.tmp"]  # a live pid (init), but hours old: the pid was reused
    live = run / f"{CHECKPOINT_NAME}.1.live0000.tmp"  # a live pid, just written: may be in progress
    for tmp in [*stale, live]:
        tmp.write_bytes(b"PK\x03\x04 half a checkpoint")
    hours_ago = time.time() - 3 * 3600
    os.utime(stale[-1], (hours_ago, hours_ago))
    other = run / "notes.tmp"  # not a temporary of this checkpoint
    other.write_text("mine")

    pyrovae.fit(tiny_vae(), x, epochs=2, out=run, resume=True, **OPTIONS)

    left = sorted(p.name for p in run.glob("*.tmp"))
    assert left == sorted([live.name, other.name]), left
    assert load_checkpoint(path)["epoch"] == 2  # the fresh checkpoint loads


# --------------------------------------------------------------------- still exact
def test_resume_through_verified_checkpoints_equals_uninterrupted_run(x, tmp_path):
    options = {**OPTIONS, "checkpoint_every": 3}  # lands mid-epoch
    uninterrupted = tiny_vae(0)
    pyrovae.fit(uninterrupted, x, epochs=3, out=tmp_path / "whole", **options)

    pyrovae.fit(tiny_vae(0), x, epochs=2, out=tmp_path / "parts", **options)
    (tmp_path / "parts" / f"{CHECKPOINT_NAME}.{_dead_pid()}.x1y2z3w4.tmp").write_bytes(b"torn")
    resumed = tiny_vae(99)  # other initial weights: everything must come from the checkpoint
    pyrovae.fit(resumed, x, epochs=3, out=tmp_path / "parts", resume=True, **options)

    a, b = uninterrupted.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    whole, parts = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "parts")
    for k, state in whole["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, parts["optimizer"]["state"][k][name]), (k, name)
    assert not list((tmp_path / "parts").glob("*.tmp"))
