"""The semi-supervised VAE (M2): its objective term by term, and a small labelled split beats chance."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

import pyrovae
from pyrovae import Stream
from pyrovae.datasets import load
from pyrovae.models import MODELS, SSVAE

K = 3


@pytest.fixture(autouse=True)
def fresh_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def small(**options) -> SSVAE:
    torch.manual_seed(0)
    return SSVAE(x_shape=(6,), z_dim=2, num_classes=K, hidden=(8,), classifier_hidden=(8,), arch="mlp", **options)


def data(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((n, 6), 0.4), generator=g), torch.randint(0, K, (n,), generator=g)


def labelled_terms(m: SSVAE, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, beta: float) -> torch.Tensor:
    """log p(x | y, z) + β (log p(z) - log q(z | x, y)) for each point, by hand (y observed: log p(y) unscaled)."""
    return (m.likelihood(z, y).log_prob(x) + m.label_prior().log_prob(y)
            + beta * (m.prior().log_prob(z) - m.posterior(x, y).log_prob(z)))


def test_registered_under_its_file_stem():
    assert MODELS["ss_vae"] is SSVAE


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_unlabelled_loss_sums_the_label_out_exactly(beta):
    """TraceEnum_ELBO on model(x)/guide(x) is -sum_n sum_y q(y|x_n) [L(x_n, y) - β log q(y|x_n)],
    L with log p(y) and the z terms weighted by β, each y's z drawn from q(z|x, y) with the same noise:
    under one seed, the enumerated guide draws z for all K labels at once, as the brute force below does."""
    m = small()
    x, _ = data()
    pyro.set_rng_seed(7)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(m.model, m.guide, x, kl_weight=beta)
    pyro.set_rng_seed(7)
    with torch.no_grad():
        labels = torch.arange(K).unsqueeze(-1)  # (K, 1) against the batch, as enumeration lays it out
        z = m.posterior(x, labels).rsample()  # (K, N, z_dim)
        log_q = m.label_posterior(x).logits.log_softmax(-1).T  # (K, N)
        per_label = (m.likelihood(z, labels).log_prob(x)
                     + beta * (m.label_prior().log_prob(labels) + m.prior().log_prob(z)
                               - m.posterior(x, labels).log_prob(z) - log_q))
        expected = -(log_q.exp() * per_label).sum()
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_labelled_loss_observes_the_label_and_scales_only_the_latent():
    m = small()
    x, y = data()
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss(m.model, m.guide, x, y, kl_weight=0.5)
    pyro.set_rng_seed(3)
    with torch.no_grad():
        z = m.posterior(x, y).rsample()
        expected = -labelled_terms(m, x, y, z, 0.5).sum()
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_auxiliary_program_is_the_weighted_classifier_log_likelihood():
    m = small(aux_weight=2.5)
    x, y = data()
    loss = Trace_ELBO().loss(m.auxiliary_model, m.auxiliary_guide, x, y)
    with torch.no_grad():
        expected = -2.5 * m.label_posterior(x).log_prob(y).sum()
    assert loss == pytest.approx(float(expected), rel=1e-6)


def test_likelihood_without_a_label_is_the_mixture_over_the_uniform_prior():
    m = small()
    x, _ = data()
    z = torch.randn(5, 2)
    with torch.no_grad():
        by_label = torch.stack([m.likelihood(z, torch.full((5,), k)).log_prob(x) for k in range(K)])
        torch.testing.assert_close(m.likelihood(z).log_prob(x), by_label.logsumexp(0) - math.log(K))


def test_log_likelihood_matches_quadrature_over_z_and_a_sum_over_y():
    """log p(x) = log sum_y p(y) integral N(z; 0, 1) p(x | y, z) dz with z_dim = 1: the trapezoid rule on
    [-8, 8] with 4,001 nodes is exact to far below the importance-sampling error, which pyrovae's
    estimate (the guide sampling y and z) must match within four of its standard errors."""
    torch.manual_seed(0)
    m = SSVAE(x_shape=(6,), z_dim=1, num_classes=K, hidden=(8,), classifier_hidden=(8,))
    x, _ = data(20)
    with torch.no_grad():
        grid = torch.linspace(-8.0, 8.0, 4001)
        log_integrand = m.likelihood(grid.view(-1, 1, 1)).log_prob(x) + m.prior().log_prob(grid.view(-1, 1, 1))
        log_weights = torch.full_like(grid, math.log(float(grid[1] - grid[0])))
        log_weights[[0, -1]] -= math.log(2.0)
        exact = (log_integrand + log_weights.view(-1, 1)).logsumexp(0).mean()
    estimate = pyrovae.log_likelihood(m, x, num_samples=2000, seed=0)
    assert abs(estimate.mean - float(exact)) < 4 * estimate.mean_stderr + 1e-4


def test_z_guide_reads_x_and_the_label_directly_as_in_kingma_et_al():
    """q(z | x, y)'s first hidden layer takes [x, onehot(y)]: no learned feature map of x comes first
    (with one, the full MNIST run learnt y as a style variable: test accuracy fell to 0.33)."""
    m = small()
    assert not any(True for _ in m.encoder.parameters())
    first = m.encoder_head.net[0]
    assert (first.in_features, first.out_features) == (6 + K, 8)
    x, y = data()
    onehot = torch.nn.functional.one_hot(y, K).float()
    out = m.encoder_head(torch.cat([x, onehot], -1))
    q = m.posterior(x, y)
    assert torch.equal(q.base_dist.loc, out["loc"])
    # enumerated labels (K, 1) against a batch: the same network at every label
    labels = torch.arange(K).unsqueeze(-1)
    assert m.posterior(x, labels).batch_shape == (K, len(x))
    assert torch.allclose(m.posterior(x, labels).base_dist.loc[y[0], 0], q.base_dist.loc[0])


def test_conv_guide_keeps_a_convolutional_feature_map():
    m = SSVAE(x_shape=(1, 16, 16), z_dim=2, num_classes=K, hidden=(8,), classifier_hidden=(8,), arch="conv",
              channels=(4, 4))
    assert any(True for _ in m.encoder.parameters())
    x = torch.rand(3, 1, 16, 16).bernoulli()
    assert m.posterior(x, torch.tensor([0, 1, 2])).batch_shape == (3,)


def test_classify_reconstruct_and_sample_shapes():
    m = small()
    x, _ = data()
    assert m.classify(x).shape == (5,) and m.classify(x).dtype == torch.long
    assert m.reconstruct(x).shape == x.shape
    assert m.sample(4).shape == (4, 6) and m.sample(4, y=2).shape == (4, 6)


@pytest.mark.parametrize(
    ("y", "error", "message"),
    [(torch.zeros(5), TypeError, "integer tensor"),
     (torch.zeros(4, dtype=torch.long), ValueError, r"shape \(5,\)")],
)
def test_bad_labels_are_refused(y, error, message):
    m = small()
    x, _ = data()
    with pytest.raises(error, match=message):
        m.model(x, y)
    with pytest.raises(error, match=message):
        m.auxiliary_model(x, y)


def test_validate_labels_names_the_range():
    m = small()
    with pytest.raises(ValueError, match=r"y_train in \[0, 3\)"):
        m.validate_labels(torch.tensor([0, 3]), "y_train")
    with pytest.raises(TypeError, match="integer tensor"):
        m.validate_labels(torch.tensor([0.0]))
    m.validate_labels(torch.tensor([0, 2]))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"num_classes": 1}, "num_classes"), ({"aux_weight": -1.0}, "aux_weight"),
     ({"classifier_hidden": "8"}, "classifier_hidden")],
)
def test_bad_constructor_arguments_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        SSVAE(x_shape=(6,), z_dim=2, **options)


def test_fifty_labelled_digits_beat_chance_clearly():
    """M2 on the 8x8 digits: 50 labelled images, the other 1,347 training images unlabelled."""
    train, test = load("digits", "train", binarize=True), load("digits", "test", binarize=True)
    x, y = train.x.flatten(1), train.labels
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    labelled = (x[order[:50]], y[order[:50]])
    pyro.set_rng_seed(0)
    m = SSVAE(x_shape=(64,), z_dim=8, num_classes=10, hidden=(64,), classifier_hidden=(64,), aux_weight=20.0)
    result = pyrovae.fit(
        m, x[order[50:]], objective="enum", epochs=4, batch_size=200, lr=1e-2, progress=False, seed=0,
        streams=[Stream(labelled, batch_size=25),
                 Stream(labelled, programs=(m.auxiliary_model, m.auxiliary_guide), batch_size=25)],
    )
    assert all(math.isfinite(v) for v in (result.final["train_loss"], result.final["stream2_loss"]))
    accuracy = float((m.classify(test.x.flatten(1)) == test.labels).float().mean())
    # Chance is 0.1; over the 200 test digits its standard error is sqrt(0.1 * 0.9 / 200) = 0.021,
    # so 0.4 is 14 SE above it (seeds 0 and 1 reach 0.68 and 0.74 with these settings).
    assert accuracy > 0.4
