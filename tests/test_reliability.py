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


# ------------------------------------------- a table of bad inputs through the API
def _vae() -> pyrovae.VAE:
    return pyrovae.VAE((6,), 2, hidden=(8,))


def _pair():
    def model(x):
        with pyro.plate("pts", x.shape[0]):
            pyro.sample("x", pyro.distributions.Normal(pyro.param("m", torch.zeros(6)), 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    return model, guide


#: (call, the error's class, what the one line must name)
BAD_API_INPUTS = [
    (lambda: pyrovae.fit(_vae(), "not data", progress=False), TypeError, "data"),
    (lambda: pyrovae.fit(_vae(), binary(), epochs=0, progress=False), ValueError, "epochs"),
    (lambda: pyrovae.fit(_vae(), binary(), batch_size=-1, progress=False), ValueError, "batch_size"),
    (lambda: pyrovae.fit(_vae(), binary(), lr=math.inf, progress=False), ValueError, "lr"),
    (lambda: pyrovae.fit(_vae(), binary(), optimizer="lbfgs", progress=False), ValueError, "optimizer"),
    (lambda: pyrovae.fit(_vae(), binary(), objective="nope", progress=False), ValueError, "objective"),
    (lambda: pyrovae.fit(_vae(), binary(), objective="iwae", num_particles=0, progress=False), ValueError, "num_particles"),
    (lambda: pyrovae.fit(_vae(), binary(), kl_weight=math.inf, progress=False), ValueError, "kl_weight"),
    (lambda: pyrovae.fit(_vae(), binary(), kl_weight=-1.0, progress=False), ValueError, "kl_weight"),
    (lambda: pyrovae.fit(_vae(), binary(), seed=-1, progress=False), ValueError, "seed"),
    (lambda: pyrovae.fit(_vae(), binary(), device="tpu", progress=False), ValueError, "device"),
    (lambda: pyrovae.fit(_vae(), binary(), jit="yes", progress=False), ValueError, "jit"),
    (lambda: pyrovae.fit(_vae(), binary(), resume=True, progress=False), ValueError, "out"),
    (lambda: pyrovae.fit(_vae(), binary(), valid_data=torch.full((3, 6), math.nan), progress=False), ValueError,
     "valid_data"),
    (lambda: pyrovae.fit(_vae(), (binary(), torch.zeros(3)), progress=False), ValueError, "first dimension"),
    (lambda: pyrovae.fit(_pair(), torch.arange(12).reshape(2, 6), progress=False), TypeError, "floating dtype"),
    (lambda: pyrovae.fit(_pair(), binary(), data_plate="nope", progress=False), ValueError, "data_plate"),
    (lambda: pyrovae.fit(_pair(), binary(), kl_weight=2.0, progress=False), ValueError, "kl_weight"),
    (lambda: pyrovae.log_likelihood(_vae(), binary(), num_samples=0), ValueError, "num_samples"),
    (lambda: pyrovae.log_likelihood(_vae(), binary(), num_samples=10, bounds=(20,)), ValueError, "k"),
    (lambda: pyrovae.log_likelihood(_vae(), binary(), chunk_size=0), ValueError, "chunk_size"),
    (lambda: pyrovae.log_likelihood(_vae(), torch.full((4, 6), 0.5)), ValueError, "data"),
    (lambda: pyrovae.evaluate_elbo(_vae(), binary(), batch_size=0), ValueError, "batch_size"),
    (lambda: pyrovae.compare_estimators(_vae(), binary(), ["elbo"], num_repeats=1), ValueError, "num_repeats"),
    (lambda: pyrovae.compare_estimators(_vae(), binary(), ["nope"]), ValueError, "objective"),
    (lambda: pyrovae.VAE((6,), 0), ValueError, "z_dim"),
    (lambda: pyrovae.VAE((6,), 2, hidden="400"), ValueError, "hidden"),
    (lambda: pyrovae.BetaVAE((6,), 2, beta=math.nan), ValueError, "beta"),
]


@pytest.mark.parametrize("call, kind, named", BAD_API_INPUTS, ids=[f"case{i}" for i in range(len(BAD_API_INPUTS))])
def test_bad_api_input_is_one_clear_line_naming_the_argument(call, kind, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pyro.clear_param_store()
    with pytest.raises(kind) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message.strip() and named in message, message
    assert list(tmp_path.iterdir()) == []  # nothing written
