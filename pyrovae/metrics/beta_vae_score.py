r"""The BetaVAE disentanglement score (Higgins et al. 2017), as disentanglement_lib computes it.

One training point is made by an intervention: draw a factor :math:`k`
uniformly, draw ``batch_size`` pairs of factor vectors
:math:`(v^{(l)}, w^{(l)})` that agree on factor :math:`k` only by
construction (:math:`w^{(l)}_k = v^{(l)}_k`), and average the absolute code
differences of their images:

.. math::

    z_{\mathrm{diff}} = \frac1L \sum_{l=1}^L \big| r(g(v^{(l)})) - r(g(w^{(l)})) \big|,
    \qquad \text{label } k.

A linear classifier (logistic regression) learns to name the fixed factor
from :math:`z_{\mathrm{diff}}`; the score is its accuracy on fresh points.  A
representation whose code :math:`j` depends on factor :math:`k` alone makes
:math:`z_{\mathrm{diff},j} = 0` exactly when :math:`k` was fixed, a linearly
separable problem (score 1); for noise the score is chance, :math:`1/K`.
Defaults are disentanglement_lib's [2]: batches of 64, 10,000 training and
5,000 evaluation points.

References:
  1. I. Higgins, L. Matthey, A. Pal, C. Burgess, X. Glorot, M. Botvinick,
     S. Mohamed, A. Lerchner. beta-VAE: Learning Basic Visual Concepts with a
     Constrained Variational Framework. ICLR 2017. openreview.net/forum?id=Sy2fzU9gl.
  2. F. Locatello et al. Challenging Common Assumptions in the Unsupervised
     Learning of Disentangled Representations. ICML 2019. arXiv:1811.12359.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from pyrovae.metrics.base import (
    RNG,
    GroundTruth,
    Representation,
    as_generator,
    check_count,
    represent_factors,
    sklearn_seed,
    varying_factors,
)

__all__ = ["beta_vae_score", "intervention_differences"]


def intervention_differences(
    representation: Representation,
    data: GroundTruth,
    num_points: int,
    *,
    batch_size: int = 64,
    points_per_call: int = 16,
    rng: RNG = 0,
) -> tuple[np.ndarray, np.ndarray]:
    r"""``num_points`` training points of the BetaVAE score: :math:`z_{\mathrm{diff}}` ``(n, d)`` and labels ``(n,)``.

    Only factors with more than one value are fixed.  All factors are drawn
    first, so ``points_per_call`` (points whose ``2 * batch_size`` images go
    through ``representation``, in calls of at most :data:`~pyrovae.metrics.base.BYTES_PER_CALL`)
    changes memory and speed, never the result.
    """
    check_count("num_points", num_points)
    check_count("batch_size", batch_size)
    check_count("points_per_call", points_per_call)
    num_points, batch_size = int(num_points), int(batch_size)
    generator = as_generator(rng)
    candidates = torch.tensor(varying_factors(data))
    num_factors = len(data.factor_sizes)
    labels = candidates[torch.randint(len(candidates), (num_points,), generator=generator)]
    first = data.sample_factors(num_points * batch_size, generator).reshape(num_points, batch_size, num_factors)
    second = data.sample_factors(num_points * batch_size, generator).reshape(num_points, batch_size, num_factors)
    rows = torch.arange(num_points)
    second[rows, :, labels] = first[rows, :, labels]

    features = []
    for start in range(0, num_points, points_per_call):
        stop = min(start + points_per_call, num_points)
        pairs = torch.cat([first[start:stop], second[start:stop]], dim=0).reshape(-1, num_factors)
        codes = represent_factors(representation, data, pairs, pairs.shape[0])
        codes = codes.reshape(2, stop - start, batch_size, -1)
        features.append(np.abs(codes[0] - codes[1]).mean(axis=1))
    return np.concatenate(features, axis=0), labels.numpy()


def beta_vae_score(
    representation: Representation,
    data: GroundTruth,
    *,
    num_train: int = 10_000,
    num_test: int = 5_000,
    batch_size: int = 64,
    points_per_call: int = 16,
    rng: RNG = 0,
) -> dict[str, float]:
    """The BetaVAE score of ``representation`` on ``data``.

    :param representation: images ``(n, ...)`` -> codes ``(n, d)`` (e.g. the posterior mean).
    :param data: any :class:`~pyrovae.metrics.base.GroundTruth`.
    :param num_train: training points of the classifier (disentanglement_lib: 10,000).
    :param num_test: evaluation points (disentanglement_lib's ``num_eval``: 5,000).
    :param batch_size: pairs :math:`L` averaged into one point (disentanglement_lib: 64).
    :param points_per_call: points whose images go through ``representation`` at once
        (memory only; not the result).
    :param rng: seed or :class:`torch.Generator`.
    :returns: ``beta_vae_score`` (evaluation accuracy) and ``beta_vae_score_train``.

    Example::

        score = beta_vae_score(lambda x: vae.posterior(x).mean, dsprites, rng=0)["beta_vae_score"]
    """
    check_count("num_train", num_train)
    check_count("num_test", num_test)
    if len(varying_factors(data)) == 1:  # a single factor to fix: nothing to tell apart
        return {"beta_vae_score": 1.0, "beta_vae_score_train": 1.0}
    generator = as_generator(rng)
    options = dict(batch_size=batch_size, points_per_call=points_per_call, rng=generator)
    train_features, train_labels = intervention_differences(representation, data, num_train, **options)
    test_features, test_labels = intervention_differences(representation, data, num_test, **options)
    classifier = LogisticRegression(random_state=sklearn_seed(generator))
    classifier.fit(train_features, train_labels)
    return {
        "beta_vae_score": float(classifier.score(test_features, test_labels)),
        "beta_vae_score_train": float(classifier.score(train_features, train_labels)),
    }
