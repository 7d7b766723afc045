r"""Modularity and explicitness (Ridgeway and Mozer 2018), as disentanglement_lib computes them.

*Modularity*: each code should depend on at most one factor.  With
:math:`m_{jk} = I(c_j; v_k)` (plug-in, codes in 20 equal-width bins) and
:math:`\theta_j = \max_k m_{jk}`:

.. math::

    \delta_j = \frac{\sum_{k \ne \arg\max_k m_{jk}} m_{jk}^2}{\theta_j^2 (K - 1)},
    \qquad \mathrm{modularity} = \frac1d \sum_{j=1}^d (1 - \delta_j),

a code that knows nothing (:math:`\theta_j = 0`) scoring 0.  Modularity
compares a code's mutual informations with each other only, so it is high for
perfect codes, low for codes that mix factors, but not low for pure noise
(whose small, estimated informations are as lopsided as chance makes them).

*Explicitness*: each factor should be linearly decodable from the codes.  A
logistic regression per factor on the standardized codes; its one-vs-rest
ROC AUC averaged over the factor's values, then over factors (0.5 is chance,
1 is perfect).  Defaults are disentanglement_lib's [2]: 10,000 training and
5,000 test points, 20 bins.

References:
  1. K. Ridgeway, M. C. Mozer. Learning Deep Disentangled Embeddings With the
     F-Statistic Loss. NeurIPS 2018. arXiv:1802.05312.
  2. F. Locatello et al. Challenging Common Assumptions in the Unsupervised
     Learning of Disentangled Representations. ICML 2019. arXiv:1811.12359.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from pyrovae.metrics.base import (
    IMAGES_PER_CALL,
    RNG,
    GroundTruth,
    Representation,
    as_generator,
    check_codes_factors,
    check_count,
    discrete_mutual_info,
    histogram_discretize,
    sample_codes,
    sklearn_seed,
)

__all__ = ["explicitness_per_factor", "modularity", "modularity_from_codes", "modularity_from_mi"]


def modularity_from_mi(mutual_information: np.ndarray) -> float:
    """Modularity of a mutual-information matrix ``(d, K)`` (codes x factors)."""
    squared = np.square(np.asarray(mutual_information, dtype=np.float64))
    top = squared.max(axis=1)
    num_factors = squared.shape[1]
    if num_factors == 1:
        return float(np.mean(top > 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = (squared.sum(axis=1) - top) / (top * (num_factors - 1))
    return float(np.mean(np.where(top > 0, 1.0 - delta, 0.0)))


def _mean_one_vs_rest_auc(labels: np.ndarray, probabilities: np.ndarray, classes: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC over the classes that occur in ``labels`` alongside others."""
    aucs = []
    for column, value in enumerate(classes):
        positive = labels == value
        if 0 < positive.sum() < labels.size:
            aucs.append(roc_auc_score(positive, probabilities[:, column]))
    return float(np.mean(aucs)) if aucs else float("nan")


def explicitness_per_factor(
    codes_train: np.ndarray,
    factor_train: np.ndarray,
    codes_test: np.ndarray,
    factor_test: np.ndarray,
    *,
    rng: RNG = 0,
) -> tuple[float, float]:
    """Train and test ROC AUC of a logistic regression predicting one factor ``(n,)`` from codes ``(n, d)``."""
    classifier = LogisticRegression(random_state=sklearn_seed(as_generator(rng)))
    classifier.fit(codes_train, factor_train)
    return (
        _mean_one_vs_rest_auc(factor_train, classifier.predict_proba(codes_train), classifier.classes_),
        _mean_one_vs_rest_auc(factor_test, classifier.predict_proba(codes_test), classifier.classes_),
    )


def modularity_from_codes(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    *,
    num_bins: int = 20,
    rng: RNG = 0,
) -> dict[str, float]:
    """Modularity and explicitness of precomputed train and test ``(codes (n, d), factors (n, K))``.

    Factors constant in the training sample are left out.

    :returns: ``modularity``, ``explicitness`` (test) and ``explicitness_train``.
    """
    generator = as_generator(rng)
    codes_train, factors_train = check_codes_factors(codes_train, factors_train)
    codes_test, factors_test = check_codes_factors(codes_test, factors_test)
    varying = [k for k in range(factors_train.shape[1]) if np.unique(factors_train[:, k]).size > 1]
    if not varying:
        raise ValueError("Expected at least one factor that varies in the training sample")
    factors_train, factors_test = factors_train[:, varying], factors_test[:, varying]

    mi = discrete_mutual_info(histogram_discretize(codes_train, num_bins), factors_train)

    # standardize with the training statistics; a constant code stays at 0
    mean, std = codes_train.mean(axis=0), codes_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    train, test = (codes_train - mean) / std, (codes_test - mean) / std
    explicit = np.array(
        [
            explicitness_per_factor(train, factors_train[:, k], test, factors_test[:, k], rng=generator)
            for k in range(factors_train.shape[1])
        ]
    )
    return {
        "modularity": modularity_from_mi(mi),
        "explicitness": float(np.nanmean(explicit[:, 1])),
        "explicitness_train": float(np.nanmean(explicit[:, 0])),
    }


def modularity(
    representation: Representation,
    data: GroundTruth,
    *,
    num_train: int = 10_000,
    num_test: int = 5_000,
    num_bins: int = 20,
    images_per_call: int = IMAGES_PER_CALL,
    rng: RNG = 0,
) -> dict[str, float]:
    """Modularity and explicitness of ``representation`` on ``data`` (keys as :func:`modularity_from_codes`).

    :param representation: images ``(n, ...)`` -> codes ``(n, d)`` (e.g. the posterior mean).
    :param data: any :class:`~pyrovae.metrics.base.GroundTruth`.
    :param num_train: training points (disentanglement_lib: 10,000).
    :param num_test: test points for explicitness (disentanglement_lib: 5,000).
    :param num_bins: histogram bins per code for the mutual information (disentanglement_lib: 20).
    :param images_per_call: at most this many images per call of ``representation`` (memory and
        speed only, not the result; also capped at :data:`~pyrovae.metrics.base.BYTES_PER_CALL`).
    :param rng: seed or :class:`torch.Generator`.

    Example::

        scores = modularity(lambda x: vae.posterior(x).mean, dsprites, rng=0)
        scores["modularity"], scores["explicitness"]
    """
    check_count("num_train", num_train)
    check_count("num_test", num_test)
    generator = as_generator(rng)
    train = sample_codes(representation, data, num_train, images_per_call=images_per_call, rng=generator)
    test = sample_codes(representation, data, num_test, images_per_call=images_per_call, rng=generator)
    return modularity_from_codes(*train, *test, num_bins=num_bins, rng=generator)
