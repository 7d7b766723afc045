r"""Disentanglement metrics by name: one metric per file, one line in :data:`METRICS`.

Every entry takes ``(representation, data, **options)`` -- a function from
images ``(n, ...)`` to codes ``(n, d)`` and any
:class:`~pyrovae.metrics.base.GroundTruth` data set -- and returns a dict of
named floats.  Defaults are disentanglement_lib's [7].  The metrics that need
only ``(codes, factors)`` pairs also work on precomputed arrays
(``mig_from_codes``, ``dci_from_codes``, ``sap_from_codes``,
``modularity_from_codes``); the BetaVAE and FactorVAE scores intervene on the
factors, so they need the data set itself.

====================  ===================================  ==========================================
name                  keys returned                        defaults (disentanglement_lib's)
====================  ===================================  ==========================================
``beta_vae_score``    ``beta_vae_score`` (+ ``_train``)    batches of 64, logistic regression,
                      [1]                                  10,000 train / 5,000 test points
``factor_vae_score``  ``factor_vae_score`` (+ ``_train``,  batches of 64, std < 0.05 pruned, majority
                      ``factor_vae_num_active_dims``) [2]  vote, 10,000 / 5,000 votes
``mig``               ``mig`` [3]                          10,000 points, 20-bin histogram
``dci``               ``dci_disentanglement``,             one gradient boosted tree classifier per
                      ``dci_completeness``,                factor, 10,000 / 5,000 points
                      ``dci_informativeness``
                      (+ ``_train``) [4]
``sap``               ``sap`` [5]                          linear SVM (C=0.01), 10,000 / 5,000 points
``modularity``        ``modularity``, ``explicitness``     20-bin histogram, logistic regression,
                      (+ ``_train``) [6]                   10,000 / 5,000 points
====================  ===================================  ==========================================

Example::

    from pyrovae.metrics import evaluate_metrics

    scores = evaluate_metrics(lambda x: vae.posterior(x).mean, dsprites, names=("mig", "dci"), rng=0)

References:
  1. I. Higgins et al. beta-VAE: Learning Basic Visual Concepts with a
     Constrained Variational Framework. ICLR 2017.
  2. H. Kim, A. Mnih. Disentangling by Factorising. arXiv:1802.05983.
  3. R. T. Q. Chen et al. Isolating Sources of Disentanglement in VAEs. arXiv:1802.04942.
  4. C. Eastwood, C. K. I. Williams. A Framework for the Quantitative
     Evaluation of Disentangled Representations. ICLR 2018.
  5. A. Kumar, P. Sattigeri, A. Balakrishnan. Variational Inference of
     Disentangled Latent Concepts from Unlabeled Observations. arXiv:1711.00848.
  6. K. Ridgeway, M. C. Mozer. Learning Deep Disentangled Embeddings With the
     F-Statistic Loss. arXiv:1802.05312.
  7. F. Locatello et al. Challenging Common Assumptions in the Unsupervised
     Learning of Disentangled Representations. arXiv:1811.12359.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from pyrovae.metrics.base import RNG, GroundTruth, Representation, check_inputs
from pyrovae.metrics.beta_vae_score import beta_vae_score
from pyrovae.metrics.dci import dci, dci_from_codes
from pyrovae.metrics.factor_vae_score import factor_vae_score
from pyrovae.metrics.mig import mig, mig_from_codes
from pyrovae.metrics.modularity import modularity, modularity_from_codes
from pyrovae.metrics.sap import sap, sap_from_codes

__all__ = [
    "METRICS",
    "GroundTruth",
    "RNG",
    "Representation",
    "beta_vae_score",
    "dci",
    "dci_from_codes",
    "evaluate_metrics",
    "factor_vae_score",
    "mig",
    "mig_from_codes",
    "modularity",
    "modularity_from_codes",
    "sap",
    "sap_from_codes",
]

#: name (the file stem) -> metric(representation, data, **options) -> dict[str, float]
METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "beta_vae_score": beta_vae_score,
    "factor_vae_score": factor_vae_score,
    "mig": mig,
    "dci": dci,
    "sap": sap,
    "modularity": modularity,
}


def _keywords(metric: Callable[..., Any]) -> set[str]:
    return {p.name for p in inspect.signature(metric).parameters.values() if p.kind is p.KEYWORD_ONLY}


def evaluate_metrics(
    representation: Representation,
    data: GroundTruth,
    names: Sequence[str] = ("all",),
    **options: Any,
) -> dict[str, float]:
    """Evaluate the metrics ``names`` (``"all"`` for every entry of :data:`METRICS`) and merge their scores.

    Each option goes to every selected metric that accepts it (e.g.
    ``num_train``, ``num_test``, ``rng``), so one set of
    options serves any selection.  Every option means one thing: ``batch_size``
    is the size of the BetaVAE and FactorVAE scores' groups (64), and
    ``images_per_call`` / ``points_per_call`` only set how much goes through the
    representation at once (memory and speed, never the result); an option that no metric in :data:`METRICS`
    accepts (a misspelling) is an error.  An integer ``rng`` seeds each metric afresh, so a
    metric scores the same alone or among others; a :class:`torch.Generator`
    is shared, in the order of ``names``.

    :param representation: images ``(n, ...)`` -> codes ``(n, d)``.
    :param data: any :class:`~pyrovae.metrics.base.GroundTruth`.
    :param names: keys of :data:`METRICS`, or ``("all",)``.
    :returns: every metric's named scores in one dict.
    """
    check_inputs(representation, data)
    if isinstance(names, str):
        names = (names,)
    selected = list(METRICS) if "all" in names else list(dict.fromkeys(names))
    if not selected:
        raise ValueError("Expected at least one metric name")
    unknown = [name for name in selected if name not in METRICS]
    if unknown:
        raise ValueError(f"Expected metric names in {sorted(METRICS)} or 'all', got {unknown}")
    accepted = {name: _keywords(metric) for name, metric in METRICS.items()}
    unknown_options = set(options) - set().union(*accepted.values())
    if unknown_options:
        raise ValueError(f"Options {sorted(unknown_options)} are accepted by no metric in {sorted(METRICS)}")
    scores: dict[str, float] = {}
    for name in selected:
        kwargs = {key: value for key, value in options.items() if key in accepted[name]}
        scores.update(METRICS[name](representation, data, **kwargs))
    return scores
