r"""Mutual information gap (MIG; Chen et al. 2018), as disentanglement_lib computes it.

For each factor :math:`v_k`, the gap between the two codes that know most
about it, as a fraction of what there is to know:

.. math::

    \mathrm{MIG} = \frac1K \sum_{k=1}^K \frac{1}{H(v_k)}
        \Big( I(c_{j^{(k)}}; v_k) - \max_{j \ne j^{(k)}} I(c_j; v_k) \Big),
    \qquad j^{(k)} = \arg\max_j I(c_j; v_k),

with :math:`I` and :math:`H` plug-in estimates on ``num_train`` points, each
code discretized into ``num_bins`` equal-width bins over its sample range
(disentanglement_lib: 10,000 points of the mean representation, 20 bins [2]).
MIG is 1 for codes that copy the factors one-to-one (up to any monotone map
that keeps the factor values in distinct bins), 0 when two codes carry the
same information about a factor, and near 0 for noise.

References:
  1. R. T. Q. Chen, X. Li, R. Grosse, D. Duvenaud. Isolating Sources of
     Disentanglement in Variational Autoencoders. NeurIPS 2018. arXiv:1802.04942.
  2. F. Locatello et al. Challenging Common Assumptions in the Unsupervised
     Learning of Disentangled Representations. ICML 2019. arXiv:1811.12359.
"""

from __future__ import annotations

import numpy as np

from pyrovae.metrics.base import (
    IMAGES_PER_CALL,
    RNG,
    GroundTruth,
    Representation,
    check_codes_factors,
    check_count,
    discrete_entropy,
    discrete_mutual_info,
    histogram_discretize,
    sample_codes,
)

__all__ = ["mig", "mig_from_codes", "mutual_information_gaps"]


def mutual_information_gaps(codes: np.ndarray, factors: np.ndarray, *, num_bins: int = 20) -> np.ndarray:
    """The normalized gap of each factor, shape ``(K,)``; NaN for a factor that is constant in the sample.

    With a single code the second-best mutual information is taken as 0.

    :param codes: float array ``(n, d)``.
    :param factors: integer array ``(n, K)`` of factor indices.
    :param num_bins: bins of the histogram discretization of each code.
    """
    codes, factors = check_codes_factors(codes, factors)
    mi = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)  # (d, K)
    entropy = discrete_entropy(factors)
    top = np.sort(mi, axis=0)[::-1]
    second = top[1] if top.shape[0] > 1 else np.zeros_like(top[0])
    gaps = np.full(factors.shape[1], np.nan)
    informative = entropy > 0
    gaps[informative] = (top[0, informative] - second[informative]) / entropy[informative]
    return gaps


def mig_from_codes(codes: np.ndarray, factors: np.ndarray, *, num_bins: int = 20) -> dict[str, float]:
    """MIG of precomputed ``codes`` ``(n, d)`` and ``factors`` ``(n, K)``: ``{"mig": ...}``.

    Factors constant in the sample (entropy 0) are left out of the average.

    :param num_bins: bins of the histogram discretization of each code.
    """
    gaps = mutual_information_gaps(codes, factors, num_bins=num_bins)
    if np.all(np.isnan(gaps)):
        raise ValueError("Expected at least one factor that varies in the sample")
    return {"mig": float(np.nanmean(gaps))}


def mig(
    representation: Representation,
    data: GroundTruth,
    *,
    num_train: int = 10_000,
    num_bins: int = 20,
    images_per_call: int = IMAGES_PER_CALL,
    rng: RNG = 0,
) -> dict[str, float]:
    """The mutual information gap of ``representation`` on ``data``: ``{"mig": ...}``.

    :param representation: images ``(n, ...)`` -> codes ``(n, d)`` (e.g. the posterior mean).
    :param data: any :class:`~pyrovae.metrics.base.GroundTruth`.
    :param num_train: points sampled (disentanglement_lib: 10,000).
    :param num_bins: histogram bins per code (disentanglement_lib: 20).
    :param images_per_call: at most this many images per call of ``representation`` (memory and
        speed only, not the result; also capped at :data:`~pyrovae.metrics.base.BYTES_PER_CALL`).
    :param rng: seed or :class:`torch.Generator`.

    Example::

        score = mig(lambda x: vae.posterior(x).mean, dsprites, rng=0)["mig"]
    """
    check_count("num_train", num_train)
    codes, factors = sample_codes(representation, data, num_train, images_per_call=images_per_call, rng=rng)
    return mig_from_codes(codes, factors, num_bins=num_bins)
