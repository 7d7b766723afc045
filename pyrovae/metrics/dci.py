r"""Disentanglement, completeness and informativeness (DCI; Eastwood and Williams 2018).

One gradient boosted tree classifier per factor predicts :math:`v_k` from all
codes; its impurity-based feature importances form column :math:`k` of the
importance matrix :math:`R \in \mathbb R_{\ge 0}^{d \times K}`.  With
:math:`H_b` the entropy in base :math:`b`:

.. math::

    D &= \sum_{j=1}^d \rho_j \big(1 - H_K(P_{j\cdot})\big),
        \quad P_{jk} = \frac{R_{jk}}{\sum_{k'} R_{jk'}},
        \quad \rho_j = \frac{\sum_k R_{jk}}{\sum_{j'k} R_{j'k}}, \\
    C &= \sum_{k=1}^K \tilde\rho_k \big(1 - H_d(\tilde P_{\cdot k})\big),
        \quad \tilde P_{jk} = \frac{R_{jk}}{\sum_{j'} R_{j'k}},
        \quad \tilde\rho_k = \frac{\sum_j R_{jk}}{\sum_{jk'} R_{jk'}}, \\
    I &= \text{mean over factors of the classifiers' test accuracy}.

Disentanglement is 1 when each code serves a single factor; completeness is 1
when each factor is captured by a single code.  Informativeness is reported,
as in disentanglement_lib [2], as accuracy (higher is better), not as the
prediction error of [1].  Defaults are disentanglement_lib's: scikit-learn's
default :class:`~sklearn.ensemble.GradientBoostingClassifier` (100 depth-3
trees per class) on 10,000 training and 5,000 test points.  That is slow by
design: a boosting stage fits one tree per value of the factor, so dSprites'
113 factor values cost several CPU minutes (about 4 s per value at 10,000
points and 10 codes); ``num_estimators`` trades fidelity for speed.

References:
  1. C. Eastwood, C. K. I. Williams. A Framework for the Quantitative Evaluation
     of Disentangled Representations. ICLR 2018. openreview.net/forum?id=By-7dz-AZ.
  2. F. Locatello et al. Challenging Common Assumptions in the Unsupervised
     Learning of Disentangled Representations. ICML 2019. arXiv:1811.12359.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier

from pyrovae.metrics.base import (
    IMAGES_PER_CALL,
    RNG,
    GroundTruth,
    Representation,
    as_generator,
    check_codes_factors,
    check_count,
    sample_codes,
    sklearn_seed,
)

__all__ = ["dci", "dci_completeness", "dci_disentanglement", "dci_from_codes", "gbt_importance"]


def _one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """``1 - H_base`` of each row of nonnegative ``p`` (rows normalized here; an all-zero row gives 0)."""
    if base == 1:
        return np.ones(p.shape[0])
    total = p.sum(axis=1, keepdims=True)
    q = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(q), 0.0)
    score = 1.0 + terms.sum(axis=1) / np.log(base)
    return np.where(total[:, 0] > 0, score, 0.0)


def _weighted(per_row: np.ndarray, weights: np.ndarray) -> float:
    total = weights.sum()
    if total == 0:  # no information at all: uniform weights, as disentanglement_lib
        weights, total = np.ones_like(weights), float(weights.size)
    return float(np.sum(per_row * weights / total))


def dci_disentanglement(importance: np.ndarray) -> float:
    """Disentanglement :math:`D` of an importance matrix ``(d, K)`` (codes x factors)."""
    importance = np.abs(np.asarray(importance, dtype=np.float64))
    per_code = _one_minus_entropy(importance, base=importance.shape[1])
    return _weighted(per_code, importance.sum(axis=1))


def dci_completeness(importance: np.ndarray) -> float:
    """Completeness :math:`C` of an importance matrix ``(d, K)`` (codes x factors)."""
    importance = np.abs(np.asarray(importance, dtype=np.float64))
    per_factor = _one_minus_entropy(importance.T, base=importance.shape[0])
    return _weighted(per_factor, importance.sum(axis=0))


def gbt_importance(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    *,
    num_estimators: int = 100,
    rng: RNG = 0,
) -> tuple[np.ndarray, float, float]:
    """Importance matrix ``(d, K)`` and mean train / test accuracy of one boosted-tree classifier per factor.

    :param num_estimators: boosting stages of each classifier (scikit-learn's ``n_estimators``).
    """
    check_count("num_estimators", num_estimators)
    generator = as_generator(rng)
    importance = np.zeros((codes_train.shape[1], factors_train.shape[1]))
    train_accuracy, test_accuracy = [], []
    for k in range(factors_train.shape[1]):
        model = GradientBoostingClassifier(n_estimators=num_estimators, random_state=sklearn_seed(generator))
        model.fit(codes_train, factors_train[:, k])
        importance[:, k] = np.abs(model.feature_importances_)
        train_accuracy.append(np.mean(model.predict(codes_train) == factors_train[:, k]))
        test_accuracy.append(np.mean(model.predict(codes_test) == factors_test[:, k]))
    return importance, float(np.mean(train_accuracy)), float(np.mean(test_accuracy))


def dci_from_codes(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    *,
    num_estimators: int = 100,
    rng: RNG = 0,
) -> dict[str, float]:
    """DCI of precomputed train and test ``(codes (n, d), factors (n, K))``.

    Factors constant in the training sample (nothing to classify) are left out.

    :param num_estimators: boosting stages of each classifier (disentanglement_lib:
        scikit-learn's default, 100).

    :returns: ``dci_disentanglement``, ``dci_completeness``,
        ``dci_informativeness`` (test accuracy) and ``dci_informativeness_train``.
    """
    codes_train, factors_train = check_codes_factors(codes_train, factors_train)
    codes_test, factors_test = check_codes_factors(codes_test, factors_test)
    varying = [k for k in range(factors_train.shape[1]) if np.unique(factors_train[:, k]).size > 1]
    if not varying:
        raise ValueError("Expected at least one factor that varies in the training sample")
    importance, train_accuracy, test_accuracy = gbt_importance(
        codes_train,
        factors_train[:, varying],
        codes_test,
        factors_test[:, varying],
        num_estimators=num_estimators,
        rng=rng,
    )
    return {
        "dci_disentanglement": dci_disentanglement(importance),
        "dci_completeness": dci_completeness(importance),
        "dci_informativeness": test_accuracy,
        "dci_informativeness_train": train_accuracy,
    }


def dci(
    representation: Representation,
    data: GroundTruth,
    *,
    num_train: int = 10_000,
    num_test: int = 5_000,
    num_estimators: int = 100,
    images_per_call: int = IMAGES_PER_CALL,
    rng: RNG = 0,
) -> dict[str, float]:
    """DCI scores of ``representation`` on ``data`` (keys as :func:`dci_from_codes`).

    :param representation: images ``(n, ...)`` -> codes ``(n, d)`` (e.g. the posterior mean).
    :param data: any :class:`~pyrovae.metrics.base.GroundTruth`.
    :param num_train: training points of the classifiers (disentanglement_lib: 10,000).
    :param num_test: test points for informativeness (disentanglement_lib: 5,000).
    :param num_estimators: boosting stages of each classifier (disentanglement_lib:
        scikit-learn's default, 100).
    :param images_per_call: at most this many images per call of ``representation`` (memory and
        speed only, not the result; also capped at :data:`~pyrovae.metrics.base.BYTES_PER_CALL`).
    :param rng: seed or :class:`torch.Generator`.

    Example::

        scores = dci(lambda x: vae.posterior(x).mean, dsprites, rng=0)
        scores["dci_disentanglement"], scores["dci_completeness"]
    """
    check_count("num_train", num_train)
    check_count("num_test", num_test)
    generator = as_generator(rng)
    train = sample_codes(representation, data, num_train, images_per_call=images_per_call, rng=generator)
    test = sample_codes(representation, data, num_test, images_per_call=images_per_call, rng=generator)
    return dci_from_codes(*train, *test, num_estimators=num_estimators, rng=generator)
