r"""The FactorVAE disentanglement score (Kim and Mnih 2018), as disentanglement_lib computes it.

Each code is first scaled by its standard deviation :math:`s_j` over the data
(estimated on ``num_variance_estimate`` points); codes with :math:`s_j <`
``prune_threshold`` have collapsed to the prior and are left out.  One
training point (a *vote*) is made by an intervention: draw a factor
:math:`k` uniformly, draw ``batch_size`` factor vectors that all share the
value of factor :math:`k`, and find the active code that varies least
relative to its global scale:

.. math::

    j^\star = \arg\min_{j \text{ active}} \frac{\widehat{\operatorname{Var}}_{\mathrm{batch}}(c_j)}{s_j^2},
    \qquad \text{vote } (k, j^\star).

The classifier is a majority vote: each code :math:`j` is assigned the factor
that voted for it most often in training; the score is the fraction of
evaluation votes it names correctly.  A representation whose code :math:`j`
depends on factor :math:`k` alone has zero variance exactly in that code
(score 1); for noise the score is chance, :math:`1/K`.  Defaults are
disentanglement_lib's [2]: batches of 64, 10,000 training and 5,000
evaluation votes, variances on 10,000 points, dimensions with standard
deviation below 0.05 pruned.

Unlike disentanglement_lib's code, the winning index among the active codes
is mapped back to the code's own index before voting (the library voted for
the position among active codes, which differs once a dimension is pruned).

References:
  1. H. Kim, A. Mnih. Disentangling by Factorising. ICML 2018. arXiv:1802.05983.
  2. F. Locatello et al. Challenging Common Assumptions in the Unsupervised
     Learning of Disentangled Representations. ICML 2019. arXiv:1811.12359.
"""

from __future__ import annotations

import numpy as np
import torch

from pyrovae.metrics.base import (
    RNG,
    GroundTruth,
    Representation,
    as_generator,
    check_count,
    represent_factors,
    sample_codes,
    varying_factors,
)

__all__ = ["factor_vae_score", "factor_vae_votes", "majority_vote_accuracy"]


def factor_vae_votes(
    representation: Representation,
    data: GroundTruth,
    num_votes: int,
    global_variances: np.ndarray,
    active: np.ndarray,
    *,
    batch_size: int = 64,
    points_per_call: int = 16,
    rng: RNG = 0,
) -> np.ndarray:
    """Vote counts ``(K, d)``: batches with factor ``k`` fixed whose least-varying active code was ``j``.

    :param global_variances: variance of each code over the data ``(d,)``.
    :param active: boolean mask ``(d,)`` of the codes that may win.
    """
    check_count("num_votes", num_votes)
    check_count("batch_size", batch_size, minimum=2)
    check_count("points_per_call", points_per_call)
    num_votes, batch_size = int(num_votes), int(batch_size)
    generator = as_generator(rng)
    candidates = torch.tensor(varying_factors(data))
    num_factors = len(data.factor_sizes)
    labels = candidates[torch.randint(len(candidates), (num_votes,), generator=generator)]
    factors = data.sample_factors(num_votes * batch_size, generator).reshape(num_votes, batch_size, num_factors)
    rows = torch.arange(num_votes)
    factors[rows, :, labels] = factors[rows, :1, labels]

    active_index = np.flatnonzero(active)
    winners = []
    for start in range(0, num_votes, points_per_call):
        stop = min(start + points_per_call, num_votes)
        chunk = factors[start:stop].reshape(-1, num_factors)
        codes = represent_factors(representation, data, chunk, chunk.shape[0]).reshape(stop - start, batch_size, -1)
        local_variances = codes.var(axis=1, ddof=1)
        winners.append(active_index[np.argmin(local_variances[:, active] / global_variances[active], axis=1)])
    votes = np.zeros((num_factors, global_variances.shape[0]), dtype=np.int64)
    np.add.at(votes, (labels.numpy(), np.concatenate(winners)), 1)
    return votes


def majority_vote_accuracy(train_votes: np.ndarray, test_votes: np.ndarray) -> float:
    """Accuracy on ``test_votes`` ``(K, d)`` of naming each code's most frequent factor in ``train_votes``."""
    classifier = np.argmax(train_votes, axis=0)
    correct = test_votes[classifier, np.arange(test_votes.shape[1])].sum()
    return float(correct / test_votes.sum())


def factor_vae_score(
    representation: Representation,
    data: GroundTruth,
    *,
    num_train: int = 10_000,
    num_test: int = 5_000,
    num_variance_estimate: int = 10_000,
    prune_threshold: float = 0.05,
    batch_size: int = 64,
    points_per_call: int = 16,
    rng: RNG = 0,
) -> dict[str, float]:
    """The FactorVAE score of ``representation`` on ``data``.

    :param representation: images ``(n, ...)`` -> codes ``(n, d)`` (e.g. the posterior mean).
    :param data: any :class:`~pyrovae.metrics.base.GroundTruth`.
    :param num_train: training votes (disentanglement_lib: 10,000).
    :param num_test: evaluation votes (disentanglement_lib's ``num_eval``: 5,000).
    :param num_variance_estimate: points for the global variances (disentanglement_lib: 10,000).
    :param prune_threshold: codes with global standard deviation below it are
        left out (disentanglement_lib: 0.05).
    :param batch_size: points per vote sharing the fixed factor (disentanglement_lib: 64).
    :param points_per_call: votes whose images go through ``representation`` at once
        (memory only; not the result).
    :param rng: seed or :class:`torch.Generator`.
    :returns: ``factor_vae_score`` (evaluation accuracy), ``factor_vae_score_train``
        and ``factor_vae_num_active_dims``; both scores are 0 when every code is pruned.

    Example::

        score = factor_vae_score(lambda x: vae.posterior(x).mean, dsprites, rng=0)["factor_vae_score"]
    """
    check_count("num_train", num_train)
    check_count("num_test", num_test)
    if not (isinstance(prune_threshold, (int, float)) and prune_threshold >= 0):
        raise ValueError(f"Expected prune_threshold >= 0, got {prune_threshold!r}")
    check_count("num_variance_estimate", num_variance_estimate, minimum=2)
    generator = as_generator(rng)
    codes, _ = sample_codes(
        representation, data, num_variance_estimate, images_per_call=batch_size * points_per_call, rng=generator
    )
    global_variances = codes.var(axis=0, ddof=1)
    active = np.sqrt(global_variances) >= prune_threshold
    active &= global_variances > 0  # a threshold of 0 must still leave out constant codes
    if not active.any():
        return {"factor_vae_score": 0.0, "factor_vae_score_train": 0.0, "factor_vae_num_active_dims": 0.0}
    options = dict(batch_size=batch_size, points_per_call=points_per_call, rng=generator)
    train_votes = factor_vae_votes(representation, data, num_train, global_variances, active, **options)
    test_votes = factor_vae_votes(representation, data, num_test, global_variances, active, **options)
    return {
        "factor_vae_score": majority_vote_accuracy(train_votes, test_votes),
        "factor_vae_score_train": majority_vote_accuracy(train_votes, train_votes),
        "factor_vae_num_active_dims": float(active.sum()),
    }
