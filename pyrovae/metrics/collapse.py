r"""Posterior-collapse diagnostics: active units, KL per dimension, and I(x; z) under q.

Each diagnostic reads the guide on data, not only codes: ``posterior`` maps a batch of
points ``(n, ...)`` to the distribution :math:`q(z \mid x)` (batch shape ``(n,)``, event
shape ``(d,)``; e.g. ``vae.posterior``), and ``x`` is the data ``(N, ...)``.  Each returns a
dict of named numbers, and :data:`COLLAPSE_METRICS` names them for ``pyrovae evaluate
RUN --metrics active_units kl_per_dimension mutual_information``.

* :func:`active_units` -- dimension :math:`j` is active when
  :math:`\operatorname{Cov}_x(\mathbb E_{q}[z_j \mid x]) > 0.01` (Burda et al. 2016, §5.2).
* :func:`kl_per_dimension` -- :math:`\frac1N\sum_n \mathrm{KL}(q(z_j \mid x_n) \,\|\, p(z_j))`
  for each :math:`j` (analytic where Pyro knows the pair).
* :func:`mutual_information` -- :math:`I_q(x; z)` with :math:`x` uniform over the N points
  and :math:`q(z) = \frac1N \sum_m q(z \mid x_m)` the aggregate posterior (Hoffman and
  Johnson 2016): :math:`\frac1N\sum_n \mathbb E_{q(z \mid x_n)}[\log q(z \mid x_n) - \log q(z)]`,
  estimated with ``num_samples`` draws per point, with its standard error.  It is at most
  :math:`\log N`; a collapsed posterior gives 0.

References:
  1. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. arXiv:1509.00519.
  2. M. D. Hoffman, M. J. Johnson. ELBO surgery: yet another way to carve up the variational
     evidence lower bound. NIPS 2016 Workshop on Advances in Approximate Bayesian Inference.
  3. J. He, D. Spokoyny, G. Neubig, T. Berg-Kirkpatrick. Lagging Inference Networks and
     Posterior Collapse in Variational Autoencoders. arXiv:1901.05534.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro.distributions import Independent
from torch.distributions import Distribution, kl_divergence

__all__ = ["COLLAPSE_METRICS", "Posterior", "active_units", "active_units_from_means", "kl_per_dimension",
           "mutual_information"]

#: points ``(n, ...)`` -> q(z | x) with batch shape ``(n,)`` and event shape ``(d,)``
Posterior = Callable[[torch.Tensor], Distribution]


def _check(posterior: Any, x: Any) -> None:
    if not callable(posterior):
        raise TypeError(f"Expected posterior to be a function from points to q(z | x), got {type(posterior).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"Expected x to be a tensor (N, ...) with N >= 2 points, got {got}")


def _check_count(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Expected {name} to be an int >= 1, got {value!r}")
    return value


def _posteriors(posterior: Posterior, x: torch.Tensor, points_per_call: int):
    for xb in x.split(points_per_call):
        q = posterior(xb)
        if len(q.batch_shape) != 1 or len(q.event_shape) != 1 or q.batch_shape[0] != xb.shape[0]:
            raise ValueError(f"Expected posterior(x) with batch shape (n,) and event shape (d,), "
                             f"got {tuple(q.batch_shape)} and {tuple(q.event_shape)}")
        yield q


def _base(d: Distribution) -> Distribution:
    while isinstance(d, Independent):
        d = d.base_dist
    return d


def active_units_from_means(means: torch.Tensor, *, threshold: float = 0.01) -> int:
    """Number of columns of ``means`` ``(N, d)`` whose variance over the rows exceeds ``threshold``.

    The variance is the population one (divided by N), Burda et al.'s :math:`\\operatorname{Cov}_x`.
    """
    if not isinstance(means, torch.Tensor) or means.dim() != 2:
        raise ValueError(f"Expected means of shape (N, d), got {getattr(means, 'shape', type(means).__name__)}")
    return int((means.double().var(0, unbiased=False) > threshold).sum())


@torch.no_grad()
def active_units(posterior: Posterior, x: torch.Tensor, *, threshold: float = 0.01,
                 points_per_call: int = 500) -> dict[str, Any]:
    """Active units: latent dimensions whose posterior mean varies over the data by more than ``threshold``.

    :param posterior: points -> q(z | x).
    :param x: data ``(N, ...)``.
    :param threshold: 0.01 (Burda et al. 2016).
    :param points_per_call: points per call of ``posterior`` (memory only, never the result).
    :returns: ``{"active_units": count, "active_units_variance": [Cov_x(E_q[z_j]) for each j]}``.
    """
    _check(posterior, x)
    _check_count("points_per_call", points_per_call)
    means = torch.cat([q.mean for q in _posteriors(posterior, x, points_per_call)])
    variance = means.double().var(0, unbiased=False)
    return {"active_units": active_units_from_means(means, threshold=threshold),
            "active_units_variance": variance.tolist()}


@torch.no_grad()
def kl_per_dimension(posterior: Posterior, x: torch.Tensor, prior: Distribution, *,
                     points_per_call: int = 500) -> dict[str, Any]:
    r"""The KL of each latent dimension, averaged over the data: :math:`\frac1N\sum_n \mathrm{KL}(q(z_j|x_n) \| p(z_j))`.

    Exact for a mean-field q and a factorized prior (Normal vs Normal: analytic).

    :param posterior: points -> q(z | x), a mean-field distribution (``Normal(...).to_event(1)``).
    :param x: data ``(N, ...)``.
    :param prior: p(z) with event shape ``(d,)``, factorized (e.g. ``vae.prior()``).
    :returns: ``{"kl_total": sum over j, "kl_per_dimension": [one float per j]}`` (nats).
    """
    _check(posterior, x)
    _check_count("points_per_call", points_per_call)
    p = _base(prior)
    total = None
    for q in _posteriors(posterior, x, points_per_call):
        q = _base(q)
        kl = kl_divergence(q, p.expand(q.batch_shape)).double().sum(0)  # expanded: Bernoulli's closed form does not broadcast
        total = kl if total is None else total + kl
    per_dim = total / x.shape[0]
    return {"kl_total": float(per_dim.sum()), "kl_per_dimension": per_dim.tolist()}


@torch.no_grad()
def mutual_information(posterior: Posterior, x: torch.Tensor, *, num_samples: int = 10,
                       rng: int | torch.Generator = 0, points_per_call: int = 500) -> dict[str, float]:
    r""":math:`I_q(x; z)` from the aggregate posterior, with its Monte Carlo standard error.

    .. math::

        \hat I = \frac{1}{NS} \sum_{n,s} \Big[\log q(z_{ns} \mid x_n)
                 - \log \frac1N \sum_{m} q(z_{ns} \mid x_m)\Big],
        \qquad z_{ns} \sim q(z \mid x_n),

    which is unbiased for the mutual information between ``x`` (uniform over the N points)
    and ``z`` under q.  The standard error is that of the mean of the N S terms taken as
    independent; draws of the same point are, given the point, so this counts the spread
    between points too and is conservative.  Costs :math:`N^2 S` log densities, in chunks.

    :param posterior: points -> q(z | x) (any distribution whose ``log_prob`` broadcasts).
    :param x: data ``(N, ...)``.
    :param num_samples: S, draws of z per point.
    :param rng: a seed or a :class:`torch.Generator` for the draws of z (the caller's RNG is left alone).
    :param points_per_call: points per call of ``posterior`` and rows per chunk of the N x N table
        (memory; it changes which draws are made, not what they estimate).
    :returns: ``{"mutual_information": I, "mutual_information_stderr": SE}`` (nats).
    """
    _check(posterior, x)
    _check_count("num_samples", num_samples)
    _check_count("points_per_call", points_per_call)
    seed = int(torch.randint(2**62, (1,), generator=rng)) if isinstance(rng, torch.Generator) else int(rng)
    qs = list(_posteriors(posterior, x, points_per_call))
    n = x.shape[0]
    terms = []
    devices = [qs[0].mean.device] if qs[0].mean.device.type != "cpu" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        draws = [q.sample((num_samples,)) for q in qs]  # (S, n_chunk, d)
    for q_n, z in zip(qs, draws):
        log_own = q_n.log_prob(z)  # (S, n_chunk)
        # log (1/N) sum_m q(z | x_m): every z against every point's q, chunk by chunk over m
        columns = [q_m.log_prob(z.unsqueeze(-2)) for q_m in qs]  # (S, n_chunk, m_chunk)
        log_aggregate = torch.cat(columns, -1).double().logsumexp(-1) - math.log(n)
        terms.append((log_own.double() - log_aggregate).reshape(-1))
    terms = torch.cat(terms)
    return {"mutual_information": float(terms.mean()),
            "mutual_information_stderr": float(terms.std() / math.sqrt(terms.numel()))}


#: name -> diagnostic(posterior, x, *, prior, **options); the names ``pyrovae evaluate --metrics`` accepts
#: beside :data:`pyrovae.metrics.METRICS` (these need the model's guide and data, not ground-truth factors)
COLLAPSE_METRICS: dict[str, Callable[..., dict[str, Any]]] = {
    "active_units": lambda posterior, x, *, prior: active_units(posterior, x),
    "kl_per_dimension": kl_per_dimension,
    "mutual_information": lambda posterior, x, *, prior, rng=0: mutual_information(posterior, x, rng=rng),
}
