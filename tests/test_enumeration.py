"""Exact enumeration: model sites summed out by ``log_likelihood`` and ``objective="enum"``, checked against
closed forms and brute-force sums over every latent value.

Exact identities are checked in float64 to ~1e-10; Monte Carlo ones (a discrete guide as the proposal) to
four standard errors that the estimate reports itself (its delta-method SE, 3 of them would fail 0.3% of
the time per check; the seeds are fixed, so each check is deterministic).
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

import pyrovae
from pyrovae.models import GMMVAE
from pyrovae.programs import ProgramError

EXACT = {"rtol": 1e-10, "atol": 1e-10}

# ------------------------------------------------------- the 1-D three-component mixture
WEIGHTS = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
LOCS = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
SCALES = torch.tensor([0.5, 1.0, 0.7], dtype=torch.float64)


def mixture_data(n: int = 12) -> torch.Tensor:
    return torch.linspace(-4.0, 5.0, n, dtype=torch.float64)


def mixture_log_px(x: torch.Tensor) -> torch.Tensor:
    """Closed form: log sum_k pi_k N(x; mu_k, sigma_k^2)."""
    return torch.logsumexp(WEIGHTS.log() + dist.Normal(LOCS, SCALES).log_prob(x.unsqueeze(-1)), -1)


def mixture_model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(LOCS[y], SCALES[y]), obs=x)


def no_guide(x: torch.Tensor) -> None:
    """The guide of a model whose only latent is enumerated."""


def exact_posterior_guide(x: torch.Tensor) -> None:
    """q(y | x) = p(y | x), enumerated in the guide."""
    logits = WEIGHTS.log() + dist.Normal(LOCS, SCALES).log_prob(x.unsqueeze(-1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})


def test_log_likelihood_sums_a_model_enumerated_site_exactly():
    x = mixture_data()
    result = pyrovae.log_likelihood((mixture_model, no_guide), x, num_samples=2)
    torch.testing.assert_close(result.log_px, mixture_log_px(x), **EXACT)
    assert torch.all(result.stderr == 0)


@pytest.mark.parametrize("guide", [no_guide, exact_posterior_guide], ids=["model-enumerated", "exact-posterior-guide"])
def test_enumerated_elbo_equals_the_closed_form_log_likelihood(guide):
    # enumerated in the model: the ELBO is log p(x) itself; enumerated in the guide with
    # q(y|x) = p(y|x): sum_y q (log p(x, y) - log q) = log p(x); no sampling either way
    x = mixture_data()
    elbo = pyrovae.objectives.make_objective("enum")
    elbo.max_plate_nesting = 1
    torch.testing.assert_close(torch.tensor(-elbo.loss(mixture_model, guide, x), dtype=torch.float64),
                               mixture_log_px(x).sum(), **EXACT)


def test_the_exact_posterior_as_a_sampled_proposal_gives_log_px_with_zero_variance():
    # a discrete guide site is a proposal like any other: w = p(x, y) / p(y | x) = p(x) for every draw
    x = mixture_data()
    result = pyrovae.log_likelihood((mixture_model, exact_posterior_guide), x, num_samples=20)
    torch.testing.assert_close(result.log_px, mixture_log_px(x), rtol=1e-9, atol=1e-9)


# ------------------------------------------- three binary latents: brute force over 8 values
PROBS = torch.tensor([0.3, 0.6, 0.8], dtype=torch.float64)
W = torch.tensor([[1.5, -1.0, 0.5], [0.0, 2.0, -1.0]], dtype=torch.float64)
BIAS = torch.tensor([0.2, -0.3], dtype=torch.float64)
NOISE = 0.8


def bits_data(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 2, generator=g, dtype=torch.float64) * 1.5


def bits_brute_force(x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log sum over all 8 values of (z_0, z_1, z_2) of p(z) p(x | z)."""
    terms = []
    for bits in itertools.product((0.0, 1.0), repeat=3):
        z = torch.tensor(bits, dtype=torch.float64)
        log_pz = dist.Bernoulli(PROBS).log_prob(z).sum()
        terms.append(log_pz + dist.Normal(W @ z + BIAS, NOISE).log_prob(x).sum(-1))
    return torch.logsumexp(torch.stack(terms), 0)


def bits_model(x: torch.Tensor, enumerate_from: int = 0) -> None:
    """z_i ~ Bernoulli(p_i), x ~ N(W z + b, s^2 I); the sites from ``enumerate_from`` on are enumerated."""
    with pyro.plate("data", x.shape[0]):
        z = [pyro.sample(f"z{i}", dist.Bernoulli(PROBS[i]),
                         infer={"enumerate": "parallel"} if i >= enumerate_from else {}) for i in range(3)]
        loc = sum(W[:, i] * z[i].unsqueeze(-1) for i in range(3)) + BIAS
        pyro.sample("x", dist.Normal(loc, NOISE).to_event(1), obs=x)


def bits_guide(x: torch.Tensor, propose: int = 3) -> None:
    """A deliberately rough discrete proposal q(z_i | x) for the first ``propose`` sites."""
    with pyro.plate("data", x.shape[0]):
        for i in range(propose):
            pyro.sample(f"z{i}", dist.Bernoulli(logits=0.4 * x[:, i % 2] + 0.1 * i))


def test_log_likelihood_with_every_latent_enumerated_equals_the_brute_force_sum():
    x = bits_data()
    pair = (lambda x: bits_model(x, 0), lambda x: bits_guide(x, 0))
    torch.testing.assert_close(pyrovae.log_likelihood(pair, x, num_samples=2).log_px, bits_brute_force(x), **EXACT)


@pytest.mark.parametrize("proposed", [3, 1], ids=["all-sampled", "one-sampled-two-enumerated"])
def test_log_likelihood_with_a_discrete_proposal_converges_to_the_brute_force_sum(proposed):
    # K = 4000 draws from q: the IWAE bias (about Var(w)/(2K)) is far below the standard error here
    x = bits_data()
    pair = (lambda x: bits_model(x, proposed), lambda x: bits_guide(x, proposed))
    result = pyrovae.log_likelihood(pair, x, num_samples=4000, seed=1)
    exact = bits_brute_force(x)
    assert torch.all(result.stderr > 0)
    assert torch.all((result.log_px - exact).abs() < 4 * result.stderr), (result.log_px - exact) / result.stderr


def test_enumeration_inside_an_inner_plate_sums_each_element_separately():
    # one component per coordinate: log p(x_n) = sum_d log sum_k pi_k N(x_nd; mu_k, s_k)
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("coords", x.shape[1], dim=-1):
            y = pyro.sample("y", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(LOCS[y], SCALES[y]), obs=x)

    x = mixture_data(12).reshape(4, 3)
    result = pyrovae.log_likelihood((model, no_guide), x, num_samples=2)
    torch.testing.assert_close(result.log_px, mixture_log_px(x).sum(-1), **EXACT)


def test_an_enumerated_site_outside_the_data_plate_is_refused():
    def model(x):
        y = pyro.sample("y", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(LOCS[y], SCALES[y]), obs=x)

    with pytest.raises(ProgramError, match="site 'y' lies outside the per-point plate 'data'"):
        pyrovae.log_likelihood((model, no_guide), mixture_data(), num_samples=2)


def test_objectives_that_need_a_guide_site_refuse_a_model_enumerated_site():
    for objective in ("graph", "meanfield"):
        with pytest.raises(ProgramError, match="site 'y' is marked for enumeration.*objective='enum'"):
            pyrovae.fit(GMMVAE(x_shape=(4,), z_dim=2, hidden=(8,), likelihood="gaussian", num_components=3),
                        torch.randn(16, 4), objective=objective, epochs=1, progress=False, device="cpu")


# ------------------------------------------------------------ the Gaussian-mixture prior VAE
def linear_gmm_vae() -> GMMVAE:
    """A GMM VAE whose log p(x) has a closed form: linear decoder, Gaussian noise of scale 1."""
    torch.manual_seed(0)
    vae = GMMVAE(x_shape=(2,), z_dim=1, hidden=(), likelihood="gaussian", likelihood_scale=1.0,
                 num_components=3).double()
    with torch.no_grad():
        vae.mixture.logits.copy_(WEIGHTS.log())
        vae.mixture.loc.copy_(LOCS.unsqueeze(-1))
        vae.mixture.raw_scale.copy_((SCALES.exp() - 1).log().unsqueeze(-1))  # softplus^-1
    return vae


def gmm_vae_log_px(vae: GMMVAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log sum_k pi_k N(x; W mu_k + b, sigma_k^2 W W^T + I)."""
    linear = vae.decoder.net[0]
    w, b = linear.weight.detach(), linear.bias.detach()
    loc = vae.mixture.loc.detach() @ w.T + b  # (K, 2)
    var = torch.nn.functional.softplus(vae.mixture.raw_scale.detach()).add(1e-5).pow(2)  # (K, 1)
    cov = var.unsqueeze(-1) * (w @ w.T) + torch.eye(2, dtype=w.dtype)
    log_k = dist.MultivariateNormal(loc, covariance_matrix=cov).log_prob(x.unsqueeze(-2))
    return torch.logsumexp(vae.mixture.logits.detach().log_softmax(-1) + log_k, -1)


def test_gmm_vae_log_likelihood_converges_to_the_closed_form():
    vae = linear_gmm_vae()
    with torch.no_grad():  # a wide proposal q(z | x) = N(0.5, 3^2) that covers every component
        vae.encoder.net[0].weight.zero_()
        vae.encoder.net[0].bias.copy_(torch.tensor([0.5, math.log(math.expm1(3.0))]))
    x = torch.tensor([[-3.0, 1.0], [0.5, 0.2], [4.0, -1.0], [1.0, 2.0]], dtype=torch.float64)
    result = pyrovae.log_likelihood(vae, x, num_samples=3000, seed=2)
    exact = gmm_vae_log_px(vae, x)
    assert torch.all((result.log_px - exact).abs() < 4 * result.stderr), (result.log_px - exact) / result.stderr


def test_gmm_vae_trains_with_enumeration_and_its_bound_stays_below_log_px():
    vae = linear_gmm_vae()
    g = torch.Generator().manual_seed(0)
    y = torch.multinomial(WEIGHTS, 300, replacement=True, generator=g)
    z = LOCS[y] + SCALES[y] * torch.randn(300, generator=g, dtype=torch.float64)
    x = torch.stack([z, -z], -1) + torch.randn(300, 2, generator=g, dtype=torch.float64)
    before = pyrovae.evaluate_elbo(vae, x, seed=0)
    result = pyrovae.fit(vae, x, objective="enum", epochs=15, batch_size=100, lr=0.02, progress=False, device="cpu")
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, num_particles=200, vectorize_particles=True)
    elbo.max_plate_nesting = 2
    with torch.no_grad():
        bound = -elbo.loss(vae.model, vae.guide, x) / len(x)
    assert bound > before + 0.1  # trained (the exact-in-y ELBO rose)
    # the enumerated ELBO (200 particles: SE about 0.01 nats per point) is below the closed-form log p(x)
    assert bound < gmm_vae_log_px(vae, x).mean() + 0.05


def test_gmm_vae_enum_elbo_equals_the_hand_written_marginal_prior_elbo():
    # same z draws: TraceEnum's sum over y is log p(z) = log sum_k pi_k N(z; mu_k, sigma_k)
    vae = linear_gmm_vae()
    x = torch.tensor([[-3.0, 1.0], [0.5, 0.2], [4.0, -1.0]], dtype=torch.float64)
    torch.manual_seed(4)
    got = -TraceEnum_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
    torch.manual_seed(4)
    q = vae.posterior(x)
    z = q.sample()
    with torch.no_grad():
        want = (vae.prior().log_prob(z) + vae.likelihood(z).log_prob(x) - q.log_prob(z)).sum()
    assert got == pytest.approx(float(want), rel=1e-10)
