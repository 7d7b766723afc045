"""The discrete-latent VAE's three estimators: exact enumeration, score function, relaxed latents.

Enumeration gives the exact ELBO gradient; the others are checked against it on a model small enough to
enumerate (3 bits, or 2 categoricals of 3 classes).  Each Monte Carlo gradient is the mean of R group means
(each group a vectorized batch of particles); its per-coordinate standard error is the spread of the group
means / sqrt(R).  An unbiased estimator's z-scores (mean - exact) / SE are then about N(0, 1) over the P
coordinates: we require mean z^2 < 2 (its expectation is 1; sd about sqrt(2/P) = 0.2 for P ~ 50) and
max |z| < 5 (probability of a larger one under N(0, 1) for ~50 coordinates: about 3e-5).  Seeds are fixed.
"""

from __future__ import annotations

import functools
import itertools
import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

import pyrovae
from pyrovae.models import DiscreteVAE
from pyrovae.models.discrete_vae import MAX_ENUMERATE, ExpRelaxedCategorical, JointlyEnumerable, LogitRelaxedBernoulli
from pyrovae.objectives import GraphELBO

LATENTS = {"bernoulli": {"latent": "bernoulli", "z_dim": 3}, "categorical": {"latent": "categorical", "z_dim": 2,
                                                                           "num_categories": 3}}


def tiny(latent: str, **options) -> tuple[DiscreteVAE, torch.Tensor]:
    torch.manual_seed(0)
    vae = DiscreteVAE(x_shape=(6,), hidden=(8,), **LATENTS[latent], **options).double()
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((4, 6), 0.4, dtype=torch.float64), generator=g)
    return vae, x


def gradient(elbo, model, guide, x, params) -> torch.Tensor:
    for p in params:
        p.grad = None
    elbo.loss_and_grads(model, guide, x)
    return torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype)
                      for p in params])


def draws(elbo, model, guide, x, params, repeats: int) -> torch.Tensor:
    pyro.set_rng_seed(2)
    with pyro.validation_enabled(False):
        return torch.stack([gradient(elbo, model, guide, x, params) for _ in range(repeats)])


def z_scores(samples: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Per coordinate; a coordinate that never varies (a dead ReLU's weights) must equal the exact one."""
    se = samples.std(0) / math.sqrt(samples.shape[0])
    constant = se == 0
    torch.testing.assert_close(samples[0, constant], exact[constant], rtol=0, atol=1e-12)
    return ((samples.mean(0) - exact) / se)[~constant]


def assert_unbiased(samples: torch.Tensor, exact: torch.Tensor) -> None:
    z = z_scores(samples, exact)
    assert float(z.pow(2).mean()) < 2.0 and float(z.abs().max()) < 5.0, z


def exact_gradient(vae, x, params) -> torch.Tensor:
    return gradient(TraceEnum_ELBO(max_plate_nesting=1), vae.model, vae.guide, x, params)


@pytest.mark.parametrize("latent", sorted(LATENTS))
def test_enumerated_elbo_equals_the_brute_force_sum_over_every_latent_value(latent):
    vae, x = tiny(latent)
    with torch.no_grad():
        q = vae.posterior(x)
        values = q.enumerate_support(expand=False)  # every joint value, (S, 1, *z_shape)
        prior = vae.prior()
        brute = (q.log_prob(values).exp() * (prior.log_prob(values) + vae.likelihood(values).log_prob(x)
                                              - q.log_prob(values))).sum()
    assert values.shape[0] == (8 if latent == "bernoulli" else 9)
    assert len({tuple(v.reshape(-1).tolist()) for v in values}) == values.shape[0]  # all distinct
    torch.testing.assert_close(q.log_prob(values).exp().sum(0), torch.ones(4, dtype=torch.float64))
    assert -TraceEnum_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x) == pytest.approx(float(brute), rel=1e-12)


@pytest.mark.parametrize("latent", sorted(LATENTS))
def test_log_likelihood_of_the_discrete_model_equals_the_brute_force_sum(latent):
    # log p(x) = log sum_z p(z) p(x | z) over every joint value; the guide is a discrete proposal
    vae, x = tiny(latent, relaxed=True, straight_through=True)  # relaxed training never reaches evaluation
    with torch.no_grad():
        values = vae.prior().enumerate_support(expand=False).unsqueeze(1)  # (S, 1, *z_shape): against every point
        exact = torch.logsumexp(vae.prior().log_prob(values) + vae.likelihood(values).log_prob(x), 0)
    result = pyrovae.log_likelihood(vae, x, num_samples=4000, seed=3)
    z = (result.log_px - exact) / result.stderr
    assert torch.all(z.abs() < 4), z


@pytest.mark.parametrize("latent", sorted(LATENTS))
def test_score_function_gradients_agree_with_the_exact_enumerated_gradient(latent):
    vae, x = tiny(latent)
    params = list(vae.parameters())
    exact = exact_gradient(vae, x, params)
    for elbo in (GraphELBO(50, max_plate_nesting=2), Trace_ELBO(num_particles=50, vectorize_particles=True,
                                                                 max_plate_nesting=2)):
        assert_unbiased(draws(elbo, vae.model, vae.guide, x, params, 300), exact)


@pytest.mark.parametrize("latent", sorted(LATENTS))
def test_straight_through_decoder_gradients_are_unbiased_and_relaxed_ones_lose_their_bias_as_tau_falls(latent):
    # the straight-through forward pass is an exact draw of the discrete z (rounding a Binary Concrete
    # sample, or the argmax of a Gumbel-softmax one), so the decoder's gradient is unbiased at any tau;
    # the relaxed decoder sees soft values, a bias that vanishes as tau -> 0 (the encoder's is biased either way)
    vae, x = tiny(latent)
    params = list(vae.parameters())
    decoder = torch.cat([torch.full((p.numel(),), name.startswith(("decoder", "observation")))
                         for name, p in vae.named_parameters()])
    exact = exact_gradient(vae, x, params)[decoder]
    elbo = Trace_ELBO(num_particles=50, vectorize_particles=True, max_plate_nesting=2)

    def relaxed(tau: float, straight_through: bool) -> torch.Tensor:
        vae.straight_through = straight_through
        model, guide = (functools.partial(f, temperature=tau) for f in (vae.model, vae.guide))
        return draws(elbo, model, guide, x, params, 200)[:, decoder]

    assert_unbiased(relaxed(1.0, True), exact)
    bias = {tau: float((relaxed(tau, False).mean(0) - exact).norm()) for tau in (2.0, 0.2)}
    assert bias[0.2] < 0.5 * bias[2.0], bias


def test_compare_estimators_sets_the_three_estimators_side_by_side():
    vae, x = tiny("bernoulli")
    discrete = pyrovae.compare_estimators(vae, x, ["enum", "graph", "elbo"], num_repeats=5, batch_size=4,
                                          verbose=False)
    relaxed = pyrovae.compare_estimators(vae, x, ["elbo"], num_repeats=5, batch_size=4, verbose=False,
                                         program_kwargs={"temperature": 0.5})
    table = discrete + relaxed
    assert [r.objective for r in table.rows] == ["enum", "graph", "elbo", "elbo [temperature=0.5]"]
    assert all(r.not_applicable is None for r in table.rows)
    # enumeration is exact: the same gradient every draw (variance 0 up to rounding), the others vary
    assert table["enum"].encoder_variance < 1e-20 and table["enum"].decoder_variance < 1e-20
    for row in table.rows[1:]:
        assert row.encoder_variance > 1e-8 and row.decoder_variance > 1e-8
    assert "elbo [temperature=0.5]" in str(table)
    assert all(r.surrogate_terms == () for r in table.rows) and "surrogate" not in str(table)  # all bounds


def test_joint_enumeration_refuses_a_latent_space_too_large_to_list():
    big = JointlyEnumerable(pyro.distributions.Bernoulli(logits=torch.zeros(2, 17)), 1)
    with pytest.raises(ValueError, match=r"2\^17 joint values .*objective='graph'"):
        big.enumerate_support()
    assert 2**16 == MAX_ENUMERATE
    small = JointlyEnumerable(pyro.distributions.Bernoulli(logits=torch.zeros(2, 2)), 1).enumerate_support()
    assert small.shape == (4, 2, 2)
    assert {tuple(v.tolist()) for v in small[:, 0]} == set(itertools.product((0.0, 1.0), repeat=2))


def test_relaxed_training_anneals_the_temperature_and_evaluation_stays_discrete():
    vae, x = tiny("categorical", relaxed=True, temperature=pyrovae.Linear(start=1.0, end=0.5, num_steps=4))
    assert [vae.training_kwargs(s)["temperature"] for s in (0, 2, 4, 8)] == [1.0, 0.75, 0.5, 0.5]
    result = pyrovae.fit(vae, x.repeat(8, 1), epochs=2, batch_size=8, progress=False, device="cpu")
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    from pyro import poutine
    trace = poutine.trace(vae.guide).get_trace(x)
    assert isinstance(trace.nodes["z"]["fn"], JointlyEnumerable)  # no temperature: the discrete guide
    rebuilt = DiscreteVAE(**vae.config)
    assert rebuilt.temperature_schedule == vae.temperature_schedule


def test_relaxed_categorical_in_log_space_has_the_concrete_elbo_and_stays_finite_when_confident():
    """log q - log p of the ExpConcrete draw y equals the Concrete one at exp(y) (the Jacobians cancel)."""
    tau = torch.tensor(0.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    prior_logits = torch.zeros(10, dtype=torch.float64)

    def both(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(1)
        y = ExpRelaxedCategorical(tau.to(logits), logits=logits).rsample((200,))
        log_space = (ExpRelaxedCategorical(tau.to(logits), logits=logits).log_prob(y)
                     - ExpRelaxedCategorical(tau.to(logits), logits=prior_logits.to(logits)).log_prob(y))
        concrete = [pyro.distributions.RelaxedOneHotCategorical(tau.double(), logits=v.double())
                    for v in (logits, prior_logits)]
        simplex = concrete[0].log_prob(y.double().exp()) - concrete[1].log_prob(y.double().exp())
        return log_space, simplex

    moderate = torch.randn(10, generator=g, dtype=torch.float64)
    log_space, simplex = both(moderate)
    assert torch.allclose(log_space, simplex, rtol=0, atol=1e-9)  # float64 rounding only
    # logits 60 nats apart, like a trained encoder's (the full categorical run's spread is 58): in
    # float32 the Concrete draw underflows to exact zeros and Pyro's density is NaN; in log space it
    # is finite and matches the float64 Concrete reference (float32 rounding of terms of size ~1e3)
    confident = torch.linspace(-30.0, 30.0, 10, dtype=torch.float64)
    log_space, reference = both(confident.float())
    y = ExpRelaxedCategorical(tau.float(), logits=confident.float()).rsample((200,))
    assert (y.exp() == 0).any()
    assert pyro.distributions.RelaxedOneHotCategorical(tau.float(), logits=confident.float()).log_prob(y.exp()).isnan().any()
    assert torch.isfinite(log_space).all() and torch.isfinite(reference).all()
    assert torch.allclose(log_space.double(), reference, rtol=1e-4, atol=1e-2)


def test_relaxed_bernoulli_is_scored_where_drawn_not_where_clamped():
    """The Binary Concrete in logit space: log q - log p is the Concrete one at sigmoid(y), and at a
    confident logit it keeps growing, where the clamped RelaxedBernoulli's turns negative."""
    tau = torch.tensor(0.5, dtype=torch.float64)
    torch.manual_seed(0)
    logits = torch.randn(500, dtype=torch.float64)
    y = LogitRelaxedBernoulli(tau, logits=logits).rsample()
    log_space = LogitRelaxedBernoulli(tau, logits=logits).log_prob(y) - LogitRelaxedBernoulli(tau, logits=0 * logits).log_prob(y)
    concrete = (pyro.distributions.RelaxedBernoulli(tau, logits=logits).log_prob(torch.sigmoid(y))
                - pyro.distributions.RelaxedBernoulli(tau, logits=0 * logits).log_prob(torch.sigmoid(y)))
    assert torch.allclose(log_space, concrete, rtol=0, atol=1e-8)  # float64 rounding only

    def mean_log_ratio(logit: float) -> tuple[float, float]:
        q, p = (torch.full((20000,), v) for v in (logit, 0.0))
        torch.manual_seed(1)
        y = LogitRelaxedBernoulli(tau.float(), logits=q).rsample()
        z = pyro.distributions.RelaxedBernoulli(tau.float(), logits=q).rsample()
        return (float((LogitRelaxedBernoulli(tau.float(), logits=q).log_prob(y)
                       - LogitRelaxedBernoulli(tau.float(), logits=p).log_prob(y)).mean()),
                float((pyro.distributions.RelaxedBernoulli(tau.float(), logits=q).log_prob(z)
                       - pyro.distributions.RelaxedBernoulli(tau.float(), logits=p).log_prob(z)).mean()))

    # far in a tail, where torch's log(1 + exp(d)) overflows in float32, the density stays finite and right
    far = torch.tensor([-200.0, 200.0])
    exact = LogitRelaxedBernoulli(tau, logits=torch.zeros(2, dtype=torch.float64)).log_prob(far.double())
    assert torch.allclose(LogitRelaxedBernoulli(tau.float(), logits=torch.zeros(2)).log_prob(far).double(), exact)
    assert torch.allclose(exact, tau.log() - tau * far.abs().double() - 2 * math.log1p(math.exp(-100.0)))

    (ours_12, clamped_12), (ours_20, clamped_20) = mean_log_ratio(12.0), mean_log_ratio(20.0)
    # the true mean is logit - 2 for logits this large (KL of logistic densities shifted by logit/tau);
    # the Monte Carlo spread of each mean over 20,000 draws is about 0.015: 0.1 is 6 of them
    assert ours_12 == pytest.approx(10.0, abs=0.1) and ours_20 == pytest.approx(18.0, abs=0.1)
    assert clamped_12 < ours_12 - 3.0 and clamped_20 < 0.0 < ours_20  # seen: 3.9 and -4.1
    # and the draws are from the density scored: torch's LogitRelaxedBernoulli draws with logits clamped at ~16
    torch.manual_seed(2)
    assert float((LogitRelaxedBernoulli(tau, logits=torch.full((20000,), 40.0, dtype=torch.float64)).rsample() * tau).mean()) \
        == pytest.approx(40.0, abs=0.1)


@pytest.mark.parametrize("latent", sorted(LATENTS))
@pytest.mark.parametrize("straight_through", [False, True])
def test_relaxed_training_step_is_finite_for_a_confident_encoder(latent, straight_through):
    vae, x = tiny(latent, relaxed=True, straight_through=straight_through)
    vae.float()
    with torch.no_grad():
        vae.encoder.net[-1].weight.mul_(0.0)
        vae.encoder.net[-1].bias.copy_(torch.linspace(-30.0, 30.0, vae.encoder.net[-1].bias.numel()))
    model, guide = (functools.partial(f, temperature=0.5) for f in (vae.model, vae.guide))
    loss = Trace_ELBO(num_particles=20, vectorize_particles=True, max_plate_nesting=2).differentiable_loss(
        model, guide, x.float())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in vae.parameters() if p.grad is not None)
    decoded = vae.decoder_input(pyro.poutine.trace(guide).get_trace(x.float()).nodes["z"]["value"], 0.5)
    if straight_through:  # bits, or one-hot vectors, forward
        assert set(decoded.unique().tolist()) <= {0.0, 1.0}
        assert latent == "bernoulli" or torch.all(decoded.sum(-1) == 1)
    elif latent == "bernoulli":  # in (0, 1)
        assert torch.all((decoded >= 0) & (decoded <= 1))
    else:  # a point of the simplex
        assert torch.allclose(decoded.sum(-1), torch.ones(()))


@pytest.mark.parametrize(("options", "match"), [
    ({"latent": "gaussian"}, "Expected latent in"),
    ({"num_categories": 1}, "Expected num_categories to be an int >= 2"),
    ({"temperature": 0.0}, "Expected temperature > 0"),
    ({"temperature": -1.0}, "Expected temperature >= 0"),
    ({"kl": "gaussian"}, "Expected kl in"),
    ({"kl": "discrete"}, "set relaxed=True"),
])
def test_bad_options_are_refused_naming_the_argument(options, match):
    with pytest.raises(ValueError, match=match):
        DiscreteVAE(x_shape=(6,), **options)


def hand_written_loss(vae: DiscreteVAE, x: torch.Tensor, tau: float, kl_weight: float, seed: int) -> torch.Tensor:
    """The relaxed objective written out: the same draw as the guide's (same seed), decoded, and the
    KL term either between the relaxed densities (Monte Carlo) or between the discrete ones, with the
    closed forms sum p log(2p) + (1-p) log(2(1-p)) (bits) or sum p log(K p) (classes) of a uniform prior."""
    torch.manual_seed(seed)
    logits = vae.encoder(x)["logits"]
    relaxed = LogitRelaxedBernoulli if vae.latent == "bernoulli" else ExpRelaxedCategorical
    t = torch.tensor(tau, dtype=x.dtype)
    y = relaxed(t, logits=logits).rsample()
    reconstruction = vae.likelihood(vae.decoder_input(y, tau)).log_prob(x)
    if vae.kl == "relaxed":
        kl = (relaxed(t, logits=logits).log_prob(y) - relaxed(t, logits=torch.zeros_like(logits)).log_prob(y)).sum(-1)
    elif vae.latent == "bernoulli":
        p = torch.sigmoid(logits)
        kl = (p * torch.log(2 * p) + (1 - p) * torch.log(2 * (1 - p))).sum(-1)
    else:
        p = torch.softmax(logits, -1)
        kl = (p * torch.log(vae.num_categories * p)).sum((-2, -1))
    return -(reconstruction - kl_weight * kl).sum()


@pytest.mark.parametrize("latent", sorted(LATENTS))
@pytest.mark.parametrize("kl", ["relaxed", "discrete"])
def test_relaxed_objectives_are_pathwise_and_equal_the_hand_written_ones(latent, kl):
    # the relaxed draw must carry its gradient (has_rsample): torch's LogitRelaxedBernoulli lacks the flag,
    # and Pyro then drew without it and trained the encoder by the score function.  With the same noise
    # the loss and every gradient equal the hand-written objective's (float64 rounding only); kl="discrete"
    # is Jang et al.'s surrogate, trained as written by Trace_ELBO and TraceMeanField_ELBO alike
    vae, x = tiny(latent, relaxed=True, kl=kl)
    params = list(vae.parameters())
    model, guide = (functools.partial(f, temperature=0.5, kl_weight=0.5) for f in (vae.model, vae.guide))
    site = pyro.poutine.trace(guide).get_trace(x).nodes["z"]
    assert site["fn"].has_rsample and site["value"].requires_grad
    expected = hand_written_loss(vae, x, 0.5, 0.5, seed=7)
    expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
    elbos = [Trace_ELBO(max_plate_nesting=1)] + ([TraceMeanField_ELBO(max_plate_nesting=1)] if kl == "discrete" else [])
    for elbo in elbos:
        torch.manual_seed(7)
        loss = elbo.differentiable_loss(model, guide, x)
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
        for g, e in zip(torch.autograd.grad(loss, params, allow_unused=True), expected_grads):
            torch.testing.assert_close(g if g is not None else torch.zeros_like(e), e if e is not None else torch.zeros_like(g),
                                       rtol=1e-10, atol=1e-12)


def test_discrete_kl_surrogate_trains_and_is_refused_where_it_would_be_read_as_a_density():
    vae, x = tiny("categorical", relaxed=True, kl="discrete")
    data = x.repeat(8, 1)
    for objective in ("iwae", "free_bits", "graph"):
        with pytest.raises(ValueError, match=r"site 'z_kl' as a density.*objective='elbo' or 'meanfield'"):
            pyrovae.fit(vae, data, objective=objective, epochs=1, batch_size=8, progress=False, device="cpu")
    table = pyrovae.compare_estimators(vae, x, ["elbo", "iwae"], num_repeats=3, batch_size=4, verbose=False,
                                       program_kwargs={"temperature": 0.5})
    assert table.rows[0].not_applicable is None and "'z_kl'" in table.rows[1].not_applicable
    # the ELBO row's value includes the surrogate KL: marked as no bound on log p(x), in the row and the table
    assert table.rows[0].surrogate_terms == ("z_kl",)
    assert "*" in str(table).splitlines()[2] and "surrogate term(s) 'z_kl': a training surrogate" in str(table)
    before = pyrovae.evaluate_elbo(vae, data)
    result = pyrovae.fit(vae, data, epochs=80, batch_size=8, lr=1e-2, progress=False, device="cpu")
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    # training the surrogate improves the discrete model's true ELBO (fit seeds 0-5 gained 0.8 to 2.6 nats
    # from -4.03; a flipped KL sign loses 1.4): its scale is checked exactly in the test below
    assert pyrovae.evaluate_elbo(vae, data) > before + 0.5


@pytest.mark.parametrize("latent", sorted(LATENTS))
def test_discrete_kl_enters_the_training_loss_with_beta_and_the_minibatch_scale(latent):
    # fit scales the data plate by N / B (plate_scale) and the KL by beta (kl_scale); with the same noise,
    # loss(beta) - loss(0) must be exactly beta * N / B * sum_n KL(q(z | x_n) || p(z)) (averaged over the
    # particles, vectorized or not), eager and in fit's compiled step alike: float64 rounding only
    from pyrovae.handlers import plate_scale
    from pyrovae.objectives import Compiled

    vae, x = tiny(latent, relaxed=True, kl="discrete")
    with torch.no_grad():
        q = vae._latent(vae.encoder(x)["logits"], None)
        kl = torch.distributions.kl_divergence(q, vae._latent(torch.zeros_like(q.base_dist.logits), None)).sum()
    scale, beta = 5.0, 0.3
    model, guide = (plate_scale("data", scale)(f) for f in (vae.model, vae.guide))
    for elbo in (Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),
                 Trace_ELBO(num_particles=3, max_plate_nesting=1), TraceMeanField_ELBO(max_plate_nesting=1)):
        def loss(weight):
            torch.manual_seed(11)
            return elbo.loss(model, guide, x, temperature=0.5, kl_weight=weight)
        assert loss(beta) - loss(0.0) == pytest.approx(beta * scale * float(kl), rel=1e-9)
    compiled = Compiled(Trace_ELBO(max_plate_nesting=1), vae, strict=True)  # strict: never eager in silence
    for weight in (torch.tensor(beta, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)):
        torch.manual_seed(11)
        eager = Trace_ELBO(max_plate_nesting=1).loss(model, guide, x, temperature=0.5, kl_weight=weight)
        torch.manual_seed(11)
        assert compiled.loss_and_grads(model, guide, x, temperature=0.5, kl_weight=weight) == \
            pytest.approx(eager, rel=1e-9)
    assert compiled.compiled


def test_evaluations_refuse_a_surrogate_term_naming_the_site():
    # a user's pair, in Pyro's style, whose guide adds a term of a training surrogate
    def model(x):
        with pyro.plate("points", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
            pyro.sample("obs", pyro.distributions.Normal(z, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("points", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(loc, 1.0))
            with pyro.poutine.infer_config(config_fn=lambda msg: {"surrogate": True}):
                pyro.factor("penalty", loc.pow(2).expand(x.shape[0]), has_rsample=True)

    pyro.clear_param_store()
    x = torch.randn(5)
    for evaluate in (pyrovae.log_likelihood, pyrovae.evaluate_elbo):
        with pytest.raises(ValueError, match=r"site 'penalty' is a surrogate term"):
            evaluate((model, guide), x)
