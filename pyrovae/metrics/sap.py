r"""Separated attribute predictability (SAP; Kumar et al. 2018), as disentanglement_lib computes it.

A score matrix :math:`S \in \mathbb R^{d \times K}` says how well code
:math:`c_j` alone predicts factor :math:`v_k`; SAP is the mean gap between
the two best codes of each factor:

.. math::

    \mathrm{SAP} = \frac1K \sum_{k=1}^K \big(S_{j^{(k)} k} - \max_{j \ne j^{(k)}} S_{jk}\big),
    \qquad j^{(k)} = \arg\max_j S_{jk}.

For discrete factors (the default, as in disentanglement_lib [2]),
:math:`S_{jk}` is the test accuracy of a linear SVM (``LinearSVC(C=0.01,
class_weight="balanced")``) trained on the single feature :math:`c_j`
(10,000 training and 5,000 test points); for continuous factors it is the
:math:`R^2` of a linear fit, :math:`\operatorname{Cov}(c_j, v_k)^2 /
(\operatorname{Var} c_j \operatorname{Var} v_k)`, on the training points.

References:
  1. A. Kumar, P. Sattigeri, A. Balakrishnan. Variational Inference of
     Disentangled Latent Concepts from Unlabeled Observations. ICLR 2018.
     arXiv:1711.00848.
  2. F. Locatello et al. Challenging Common Assumptions in the Unsupervised
     Learning of Disentangled Representations. ICML 2019. arXiv:1811.12359.
"""

from __future__ import annotations

import numpy as np
from sklearn.svm import LinearSVC

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

__all__ = ["sap", "sap_from_codes", "sap_score_matrix", "SVM_C"]

#: the linear SVM's regularisation constant (disentanglement_lib's default)
SVM_C: float = 0.01


def sap_score_matrix(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    *,
    continuous_factors: bool = False,
    rng: RNG = 0,
) -> np.ndarray:
    """The score matrix :math:`S` ``(d, K)``: per-code SVM test accuracy, or per-code :math:`R^2`."""
    generator = as_generator(rng)
    d, num_factors = codes_train.shape[1], factors_train.shape[1]
    scores = np.zeros((d, num_factors))
    for j in range(d):
        for k in range(num_factors):
            if continuous_factors:
                cov = np.cov(codes_train[:, j], factors_train[:, k], ddof=1)
                if cov[0, 0] > 1e-12 and cov[1, 1] > 0:
                    scores[j, k] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1])
            else:
                # dual=False: the primal problem is the natural one for a single feature and
                # converges without iteration-limit warnings; the optimum is the same.
                svm = LinearSVC(C=SVM_C, class_weight="balanced", dual=False, random_state=sklearn_seed(generator))
                svm.fit(codes_train[:, j : j + 1], factors_train[:, k])
                scores[j, k] = np.mean(svm.predict(codes_test[:, j : j + 1]) == factors_test[:, k])
    return scores


def sap_from_codes(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    *,
    continuous_factors: bool = False,
    rng: RNG = 0,
) -> dict[str, float]:
    """SAP of precomputed train and test ``(codes (n, d), factors (n, K))``: ``{"sap": ...}``.

    Factors constant in the training sample are left out.  With a single code
    the second-best score is taken as 0.
    """
    codes_train, factors_train = check_codes_factors(codes_train, factors_train)
    codes_test, factors_test = check_codes_factors(codes_test, factors_test)
    varying = [k for k in range(factors_train.shape[1]) if np.unique(factors_train[:, k]).size > 1]
    if not varying:
        raise ValueError("Expected at least one factor that varies in the training sample")
    scores = sap_score_matrix(
        codes_train,
        factors_train[:, varying],
        codes_test,
        factors_test[:, varying],
        continuous_factors=continuous_factors,
        rng=rng,
    )
    top = np.sort(scores, axis=0)[::-1]
    second = top[1] if top.shape[0] > 1 else np.zeros_like(top[0])
    return {"sap": float(np.mean(top[0] - second))}


def sap(
    representation: Representation,
    data: GroundTruth,
    *,
    num_train: int = 10_000,
    num_test: int = 5_000,
    continuous_factors: bool = False,
    images_per_call: int = IMAGES_PER_CALL,
    rng: RNG = 0,
) -> dict[str, float]:
    """The SAP score of ``representation`` on ``data``: ``{"sap": ...}``.

    :param representation: images ``(n, ...)`` -> codes ``(n, d)`` (e.g. the posterior mean).
    :param data: any :class:`~pyrovae.metrics.base.GroundTruth`.
    :param num_train: training points (disentanglement_lib: 10,000).
    :param num_test: test points of the SVMs (disentanglement_lib: 5,000).
    :param continuous_factors: score with :math:`R^2` instead of SVM accuracy
        (disentanglement_lib: ``False``).
    :param images_per_call: at most this many images per call of ``representation`` (memory and
        speed only, not the result; also capped at :data:`~pyrovae.metrics.base.BYTES_PER_CALL`).
    :param rng: seed or :class:`torch.Generator`.

    Example::

        score = sap(lambda x: vae.posterior(x).mean, dsprites, rng=0)["sap"]
    """
    check_count("num_train", num_train)
    check_count("num_test", num_test)
    generator = as_generator(rng)
    train = sample_codes(representation, data, num_train, images_per_call=images_per_call, rng=generator)
    test = sample_codes(representation, data, num_test, images_per_call=images_per_call, rng=generator)
    return sap_from_codes(*train, *test, continuous_factors=continuous_factors, rng=generator)
