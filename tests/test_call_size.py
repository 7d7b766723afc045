"""Call sizes follow activation bytes (issue 11, item 19): conv nets get small calls, MLPs large ones."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae.metrics import likelihood
from pyrovae.metrics.call_size import CALL_BYTES, activation_bytes, rows_per_call
from pyrovae.plots import kl_per_dimension


def test_activation_bytes_sums_every_module_output_of_one_row():
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.zeros(1, 4)
    # outputs: Linear 8, Tanh 8, Linear 3, the Sequential's own 3 -> 22 floats of 4 bytes, plus the floor
    assert activation_bytes(net, lambda: net(x), floor=16) == 22 * 4 + 16
    assert not net._forward_hooks and not net[0]._forward_hooks  # hooks removed
    assert activation_bytes(None, lambda: None, floor=16) == 16  # plain functions: the data point's bytes


def test_rows_per_call_keeps_a_call_within_the_budget():
    assert rows_per_call(CALL_BYTES // 64, 4096) == 64
    assert rows_per_call(10, 4096) == 4096  # capped by the most a caller wants
    assert rows_per_call(10 * CALL_BYTES, 4096) == 1  # one row at least


def _rows_chosen(monkeypatch, vae, x) -> int:
    chosen = []
    original = likelihood._rows_per_call

    def spy(*args, **kwargs):
        chosen.append(original(*args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(likelihood, "_rows_per_call", spy)
    pyrovae.log_likelihood(vae, x, num_samples=4, seed=0)
    return chosen[0]


def test_log_likelihood_sizes_its_calls_by_the_decoder_activations(monkeypatch):
    conv = pyrovae.VAE((1, 64, 64), 10, channels=(16, 16, 32, 32), hidden=(128,))
    mlp = pyrovae.VAE((784,), 20, hidden=(400,))
    conv_rows = _rows_chosen(monkeypatch, conv, torch.bernoulli(torch.rand(3, 1, 64, 64)))
    mlp_rows = _rows_chosen(monkeypatch, mlp, torch.bernoulli(torch.rand(3, 784)))
    # benchmarks/likelihood_calls.py: the conv decoder was fastest at 64 rows per call (4096 spent 95%
    # of its CPU time in the kernel); the MLP at thousands
    assert 32 <= conv_rows <= 128
    assert 1024 <= mlp_rows <= likelihood.ROWS_PER_CALL


def test_the_size_probe_leaves_the_estimate_and_the_global_rng_alone():
    torch.manual_seed(3)
    vae = pyrovae.VAE((6,), 2, hidden=(8,))
    x = torch.bernoulli(torch.rand(5, 6))
    state = torch.get_rng_state()
    probed = pyrovae.log_likelihood(vae, x, num_samples=50, seed=1)  # sizes its calls with a probe
    assert torch.equal(torch.get_rng_state(), state)
    fixed = pyrovae.log_likelihood(vae, x, num_samples=50, seed=1, batch_size=5, chunk_size=50)  # no probe
    torch.testing.assert_close(probed.log_px, fixed.log_px)


def test_kl_per_dimension_does_not_depend_on_its_call_size():
    vae = pyrovae.VAE((1, 16, 16), 3, channels=(4, 4), hidden=(8,))
    x = torch.rand(40, 1, 16, 16)
    torch.testing.assert_close(kl_per_dimension(vae, x), kl_per_dimension(vae, x, batch_size=7))


@pytest.mark.parametrize("shape", [(1, 64, 64), (784,)])
def test_pairs_of_plain_functions_get_a_call_size_from_their_data(monkeypatch, shape):
    size = torch.Size(shape).numel()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            loc = z.sum(-1, keepdim=True) * torch.ones(size)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x.reshape(x.shape[0], -1))

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    # no module to measure: the data point's bytes size the call
    rows = _rows_chosen(monkeypatch, (model, guide), torch.randn(3, *shape))
    assert rows == min(likelihood.ROWS_PER_CALL, CALL_BYTES // (size * 4))
