"""Issue 11 through the API: dtypes cast with a note, evaluate_elbo checks what log_likelihood checks,
pyrovae.seed reproduces a run bit for bit."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

import pyrovae


def binary(n: int = 40, d: int = 6, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_data_of_another_dtype_is_cast_to_the_models_with_a_note(dtype):
    vae = pyrovae.VAE((6,), 2, hidden=(8,))
    x = binary().to(dtype)
    with pytest.warns(UserWarning, match=f"data is {dtype} and the model's parameters are torch.float32"):
        result = pyrovae.fit(vae, x, epochs=1, batch_size=20, progress=False)
    assert math.isfinite(result.history[-1]["train_loss"])
    with pytest.warns(UserWarning, match="cast to torch.float32"):
        assert math.isfinite(pyrovae.log_likelihood(vae, x, num_samples=8).mean)
    with pytest.warns(UserWarning, match="cast to torch.float32"):
        assert math.isfinite(pyrovae.evaluate_elbo(vae, x))


@pytest.mark.parametrize(
    "data, options, message",
    [
        (torch.full((4, 6), 0.5), {}, "Bernoulli|binary|0 or 1|support"),
        (binary().masked_fill(torch.eye(40, 6, dtype=torch.bool), math.nan), {}, "finite|NaN"),
        (torch.zeros(0, 6), {}, r"N >= 1"),
        (binary(), {"batch_size": 0}, "batch_size"),
        (binary(), {"num_particles": 0}, "num_particles"),
    ],
    ids=["outside-support", "nan", "empty", "batch-size-0", "particles-0"],
)
def test_evaluate_elbo_refuses_what_log_likelihood_refuses(data, options, message):
    vae = pyrovae.VAE((6,), 2, hidden=(8,))
    with pytest.raises((ValueError, TypeError), match=message):
        pyrovae.evaluate_elbo(vae, data, **options)


def test_pyrovae_seed_then_fit_reproduces_a_run_bit_for_bit():
    x = binary(64)
    states = []
    for _ in range(2):
        pyro.clear_param_store()
        pyrovae.seed(5)
        vae = pyrovae.VAE((6,), 2, hidden=(8,))
        pyrovae.fit(vae, x, epochs=2, batch_size=16, seed=5, progress=False)
        states.append(vae.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    with pytest.raises(ValueError, match="seed"):
        pyrovae.seed(-1)


def test_fit_refuses_an_unwritable_run_folder_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    vae = pyrovae.VAE((6,), 2, hidden=(8,))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    with pytest.raises(ValueError, match="Cannot write the run folder .*a parent is a file|is a file"):
        pyrovae.fit(vae, binary(), epochs=1, out=blocker / "run", progress=False)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())  # no step was taken
