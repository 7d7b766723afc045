"""FreeBitsELBO: the ELBO with a per-dimension KL floor, checked against the value and gradient by hand."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from pyrovae.handlers import kl_scale
from pyrovae.objectives import OBJECTIVES, FreeBitsELBO, make_objective

B, D, Z = 6, 3, 4
X = torch.randn(B, D, generator=torch.Generator().manual_seed(0))


def model(x, kl_weight=1.0):
    W = pyro.param("W", lambda: torch.randn(Z, D, generator=torch.Generator().manual_seed(1)))
    with pyro.plate("data", x.shape[0]):
        with kl_scale(kl_weight):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W, 1.0).to_event(1), obs=x)


def guide(x, kl_weight=1.0):
    A = pyro.param("A", lambda: 0.3 * torch.randn(D, Z, generator=torch.Generator().manual_seed(2)))
    # scales chosen so that the dims' mean KLs straddle the floors used below
    scale = pyro.param("scale", lambda: torch.tensor([0.2, 0.9, 1.0, 3.0]), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        with kl_scale(kl_weight):
            pyro.sample("z", dist.Normal(x @ A, scale).to_event(1))


def by_hand(free_bits: float, kl_weight: float = 1.0) -> torch.Tensor:
    """-(sum_n log p(x_n | z_n)) + beta * B * sum_j max(lambda, mean_n KL_nj), at the guide's draw (seed 3)."""
    pyro.set_rng_seed(3)
    trace = poutine.trace(guide).get_trace(X)
    z, q = trace.nodes["z"]["value"], trace.nodes["z"]["fn"].base_dist
    reconstruction = dist.Normal(z @ pyro.param("W"), 1.0).log_prob(X).sum()
    kl = 0.5 * (q.scale**2 + q.loc**2 - 1 - 2 * q.scale.log())  # (B, Z), closed form
    return -reconstruction + kl_weight * B * kl.mean(0).clamp_min(free_bits).sum()


def loss_of(elbo, **kwargs) -> torch.Tensor:
    pyro.set_rng_seed(3)
    return elbo.differentiable_loss(model, guide, X, **kwargs)


@pytest.mark.parametrize("free_bits", [0.0, 0.3, 1.0, 100.0])
@pytest.mark.parametrize("kl_weight", [1.0, 0.5])
def test_value_and_gradients_equal_the_formula_by_hand(free_bits, kl_weight):
    loss = loss_of(FreeBitsELBO(free_bits), kl_weight=kl_weight)
    params = [pyro.param(n).unconstrained() for n in ("W", "A", "scale")]
    expected = by_hand(free_bits, kl_weight)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(got, want)
    # loss() is the same number as a float
    pyro.set_rng_seed(3)
    assert FreeBitsELBO(free_bits).loss(model, guide, X, kl_weight=kl_weight) == pytest.approx(expected.item(), rel=1e-6)


def test_the_floor_is_not_vacuous_here():
    # the straddling scales make some dims fall below 0.3 nats and others above it
    pyro.set_rng_seed(3)
    q = poutine.trace(guide).get_trace(X).nodes["z"]["fn"].base_dist
    kl = (0.5 * (q.scale**2 + q.loc**2 - 1 - 2 * q.scale.log())).mean(0)
    assert bool((kl < 0.3).any()) and bool((kl > 0.3).any())


def test_zero_free_bits_is_the_mean_field_elbo():
    torch.testing.assert_close(loss_of(FreeBitsELBO(0.0)), loss_of(TraceMeanField_ELBO()))


def test_a_dimension_under_its_floor_gets_no_gradient_from_the_kl():
    # lambda above every dimension's KL: the guide's scale is pushed by the reconstruction alone
    loss = loss_of(FreeBitsELBO(100.0))
    (grad,) = torch.autograd.grad(loss, [pyro.param("scale").unconstrained()])
    pyro.set_rng_seed(3)
    trace = poutine.trace(guide).get_trace(X)
    rec = -dist.Normal(trace.nodes["z"]["value"] @ pyro.param("W"), 1.0).log_prob(X).sum()
    (want,) = torch.autograd.grad(rec, [pyro.param("scale").unconstrained()])
    torch.testing.assert_close(grad, want)


def test_zero_kl_weight_masks_the_kl_term():
    loss = loss_of(FreeBitsELBO(1.0), kl_weight=0.0)
    torch.testing.assert_close(loss, by_hand(1.0, kl_weight=0.0))


def test_registered_with_options_and_validated():
    assert isinstance(OBJECTIVES["free_bits"](), FreeBitsELBO)
    assert make_objective("free_bits", free_bits=0.25).free_bits == 0.25
    for bad in (-0.1, float("inf"), "1", True):
        with pytest.raises(ValueError, match="free_bits"):
            FreeBitsELBO(bad)


def test_refuses_non_reparameterized_and_missing_guide_sites():
    def discrete_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(Z)).to_event(1))

    with pytest.raises(ValueError, match="reparameterized"):
        FreeBitsELBO(0.1).differentiable_loss(model, discrete_guide, X)
    with pytest.raises(ValueError, match="guide site for model latent 'z'"):
        FreeBitsELBO(0.1).differentiable_loss(model, lambda x: None, X)


@pytest.mark.parametrize("free_bits", [0.0, 50.0])
def test_a_site_with_a_joint_event_is_one_group(free_bits):
    # a full-covariance guide has no per-dimension KL: the whole site gets one floor, on the
    # one-sample estimate log q(z) - log p(z) (Pyro has no analytic KL for this pair)
    tril = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.8, 0.0, 0.0], [0.0, 0.3, 0.6, 0.0], [0.2, 0.0, 0.1, 1.5]])

    def mvn_guide(x, kl_weight=1.0):
        A = pyro.param("A", lambda: 0.3 * torch.randn(D, Z, generator=torch.Generator().manual_seed(2)))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(x @ A, scale_tril=tril))

    pyro.set_rng_seed(3)
    loss = FreeBitsELBO(free_bits).differentiable_loss(model, mvn_guide, X)
    pyro.set_rng_seed(3)
    trace = poutine.trace(mvn_guide).get_trace(X)
    z, q = trace.nodes["z"]["value"], trace.nodes["z"]["fn"]
    kl = q.log_prob(z) - dist.Normal(torch.zeros(Z), 1.0).to_event(1).log_prob(z)  # (B,)
    rec = dist.Normal(z @ pyro.param("W"), 1.0).log_prob(X).sum()
    torch.testing.assert_close(loss, -rec + B * kl.mean().clamp_min(free_bits))


def test_the_cli_sets_free_bits_by_objective_option_and_records_it(tmp_path, capsys):
    """`--objective free_bits -O free_bits=0.25` trains with λ = 0.25 (recorded in config.json); a bad
    option is refused in one line before anything is written."""
    import json

    from pyrovae.cli import main

    common = ["train", "--model", "vae", "--dataset", "digits", "--epochs", "1", "-o", "z_dim=2", "-o", "hidden=[8]",
              "--no-progress", "--objective", "free_bits"]
    assert main([*common, "-O", "free_bits=0.25", "--out", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["objective"] == "free_bits" and config["objective_options"] == {"free_bits": 0.25}
    capsys.readouterr()
    assert main([*common, "-O", "free_bitz=0.25", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "free_bitz" in err and not (tmp_path / "bad").exists()
    assert main([*common, "-O", "free_bits=-1", "--out", str(tmp_path / "neg")]) == 2
    assert "free_bits" in capsys.readouterr().err and not (tmp_path / "neg").exists()
