"""Shared fixtures: deterministic seeds, a clean param store, and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pyro
import pytest
import torch

#: verified copies of MNIST and binarized MNIST beside the checkout (absent on some machines)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# One thread: the suite's tensors are small, and on a 2-core machine two threads per test
# process mostly contend (measured: up to 10x slower under load, never faster).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_state():
    # one thread in every test, whatever an earlier one set: the bit-exact resume tests
    # assume the same reduction order
    torch.set_num_threads(1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; skips the test cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA
