"""β-TCVAE: the KL term split into mutual information, total correlation and dimension-wise KL, each weighted."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pyro
import torch

from pyrovae.handlers import kl_scale
from pyrovae.models.vae import VAE, check_weight

__all__ = ["BetaTCVAE", "ESTIMATORS", "log_importance_weights", "aggregate_log_densities"]

#: minibatch estimators of the aggregate posterior q(z)
ESTIMATORS = ("mss", "mws")


def log_importance_weights(batch_size: int, num_data: int, estimator: str = "mss") -> torch.Tensor:
    r"""Log weights :math:`w_{ij}` with :math:`\hat q(z_i) = \sum_j w_{ij}\, q(z_i \mid n_j)`, shape ``(B, B)``.

    ``z_i`` is a draw from :math:`q(z \mid n_i)` and :math:`n_1..n_B` a minibatch
    drawn uniformly without replacement from the N data points.

    * ``"mss"`` (minibatch stratified sampling): the stratum of :math:`n_i`
      itself has weight :math:`1/N`, the other :math:`N-1` points are
      represented by the other :math:`B-1`, each with weight
      :math:`\frac{N-1}{N(B-1)}`.  Then :math:`\mathbb E[\hat q(z_i)] = q(z_i)`
      exactly, for every B >= 2; with B = N the estimate *is* q(z_i).  (Chen et al.
      give one of the other points the weight :math:`\frac{N-B+1}{N(B-1)}` and the
      rest :math:`\frac1{B-1}`; averaged over which point that is, their weights
      are these, which have the same expectation and lower variance.)
    * ``"mws"`` (minibatch weighted sampling): weight :math:`1/B` for every
      point, the plain minibatch mixture.  It over-weights :math:`n_i` when B < N
      (biased), and is exact when B = N.  Chen et al. normalise by :math:`NB`
      instead of B, which shifts every log density by :math:`-\log N` and the
      three terms by constants that cancel in their sum and in all gradients.

    Both are estimates of densities; their logs are biased low (Jensen) by
    an amount that vanishes as B approaches N.  A minibatch of one point has
    no other points: its only weight is 1.  Returned in float64.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"Expected estimator in {ESTIMATORS}, got {estimator!r}")
    if not 1 <= batch_size <= num_data:
        raise ValueError(f"Expected 1 <= batch size <= num_data, got batch size {batch_size} and num_data {num_data}")
    if batch_size == 1:
        return torch.zeros(1, 1, dtype=torch.float64)
    if estimator == "mws":
        return torch.full((batch_size, batch_size), -math.log(batch_size), dtype=torch.float64)
    weights = torch.full((batch_size, batch_size), (num_data - 1) / (num_data * (batch_size - 1)), dtype=torch.float64)
    weights.fill_diagonal_(1.0 / num_data)
    return weights.log()


def aggregate_log_densities(
    log_q: torch.Tensor, num_data: int, estimator: str = "mss"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Minibatch estimates of :math:`\log q(z_i)` and :math:`\sum_k \log q(z_{ik})`.

    :param log_q: :math:`\log q(z_{ik} \mid n_j)` with shape ``(..., B, B, d)``
        (sample i, data point j, dimension k).
    :param num_data: N, the size of the data set the minibatch is drawn from.
    :param estimator: ``"mss"`` or ``"mws"`` (see :func:`log_importance_weights`).
    :returns: ``(log_qz, log_prod_qzk)``, each of shape ``(..., B)``.
    """
    log_w = log_importance_weights(log_q.shape[-2], num_data, estimator).to(log_q)
    log_qz = torch.logsumexp(log_w + log_q.sum(-1), dim=-1)
    log_prod_qzk = torch.logsumexp(log_w.unsqueeze(-1) + log_q, dim=-2).sum(-1)
    return log_qz, log_prod_qzk


class BetaTCVAE(VAE):
    r"""β-TCVAE (Chen et al. 2018): the ELBO's KL term decomposed and reweighted.

    The generative model and guide are exactly :class:`~pyrovae.models.vae.VAE`'s:
    for each data point :math:`n` in the ``"data"`` plate,

    .. math::

        z_n \sim \mathcal N(0, I_d), \qquad x_n \mid z_n \sim p_\theta(x \mid z_n),
        \qquad q_\phi(z_n \mid x_n) = \mathcal N(\mu_\phi(x_n), \operatorname{diag}\sigma_\phi(x_n)^2).

    With :math:`q(z, n) = q_\phi(z \mid x_n)/N` and the aggregate posterior
    :math:`q(z) = \frac1N \sum_n q_\phi(z \mid x_n)`, the average KL term splits as

    .. math::

        \frac1N\sum_n \mathrm{KL}(q_\phi(z \mid x_n) \,\|\, p(z))
        = \underbrace{I_q(z; n)}_{\text{index-code MI}}
        + \underbrace{\mathrm{KL}\bigl(q(z) \,\|\, \textstyle\prod_k q(z_k)\bigr)}_{\text{total correlation}}
        + \underbrace{\textstyle\sum_k \mathrm{KL}(q(z_k) \,\|\, p(z_k))}_{\text{dimension-wise KL}},

    and training maximises

    .. math::

        \mathcal L = \sum_n \mathbb E_{q_\phi(z_n|x_n)}\Bigl[\log p_\theta(x_n \mid z_n)
            - \alpha \bigl(\log q(z_n \mid n) - \log q(z_n)\bigr)
            - \beta \bigl(\log q(z_n) - \textstyle\sum_k \log q(z_{nk})\bigr)
            - \gamma \bigl(\textstyle\sum_k \log q(z_{nk}) - \log p(z_n)\bigr)\Bigr],

    with :math:`q(z_n)` and :math:`q(z_{nk})` estimated from the minibatch and
    the data-set size N (:func:`aggregate_log_densities`; minibatch stratified
    sampling by default).  α = β = γ = 1 is the ELBO; α = γ = 1 and β > 1
    penalises only the total correlation.

    During training the ``"z"`` site of both programs is masked and the
    weighted sum enters :meth:`model` as ``pyro.factor("kl_decomposition", ...)``
    inside the data plate (so ``fit``'s ``N / B`` scaling applies to it as to the
    reconstruction term).  It is switched on only by the ``num_data`` keyword,
    which :meth:`training_kwargs` supplies during ``fit``; ``model(x)``/``guide(x)``
    are the plain VAE, so evaluation measures the true model.  A ``kl_weight``
    other than 1 weights the decomposed term as it would the KL term.

    :param alpha: weight of the index-code mutual information (finite, >= 0).
    :param beta: weight of the total correlation (finite, >= 0).
    :param gamma: weight of the dimension-wise KL (finite, >= 0).
    :param estimator: ``"mss"`` (minibatch stratified sampling) or ``"mws"``
        (minibatch weighted sampling).
    :param num_data: N, the training set's size; needed for training (``fit``
        sets it through :meth:`set_num_data` when it can, else give it here).
    :param kwargs: everything :class:`~pyrovae.models.vae.VAE` takes.

    The default β = 6 lies in the sweep {1, 2, 4, 6, 8, 10} of Locatello et al.

    Example::

        vae = BetaTCVAE(x_shape=(1, 64, 64), z_dim=10, beta=6.0, num_data=len(x_train))
        result = pyrovae.fit(vae, x_train, epochs=30)

    References:
      1. R. T. Q. Chen, X. Li, R. Grosse, D. Duvenaud. Isolating Sources of
         Disentanglement in Variational Autoencoders. arXiv:1802.04942.
      2. M. D. Hoffman, M. J. Johnson. ELBO surgery: yet another way to carve up
         the variational evidence lower bound. NIPS 2016 Workshop on Advances
         in Approximate Bayesian Inference.
      3. F. Locatello et al. Challenging Common Assumptions in the Unsupervised
         Learning of Disentangled Representations. arXiv:1811.12359.
    """

    #: what ``pyrovae sweep`` varies
    tradeoff_parameter: ClassVar[str | None] = "beta"

    def __init__(
        self,
        *args: Any,
        alpha: float = 1.0,
        beta: float = 6.0,
        gamma: float = 1.0,
        estimator: str = "mss",
        num_data: int | None = None,
        **kwargs: Any,
    ) -> None:
        alpha, beta, gamma = (check_weight(name, value) for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)))
        if estimator not in ESTIMATORS:
            raise ValueError(f"Expected estimator in {ESTIMATORS}, got {estimator!r}")
        super().__init__(*args, **kwargs)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.estimator = estimator
        self.config.update(alpha=self.alpha, beta=self.beta, gamma=self.gamma, estimator=estimator, num_data=None)
        self.num_data: int | None = None
        if num_data is not None:
            self.set_num_data(num_data)

    def set_num_data(self, num_data: int) -> None:
        """Set N, the size of the training set the minibatches are drawn from."""
        if not (isinstance(num_data, int) and not isinstance(num_data, bool) and num_data >= 1):
            raise ValueError(f"Expected num_data to be an int >= 1, got {num_data!r}")
        self.num_data = num_data
        self.config["num_data"] = num_data

    def training_kwargs(self, step: int) -> dict[str, Any]:
        """Switch the decomposed KL term on during training: ``{"num_data": N}``."""
        if self.num_data is None:
            raise ValueError(
                "BetaTCVAE needs the training set's size for its minibatch estimators of q(z): "
                "construct it with num_data=len(x_train) or call set_num_data(len(x_train))"
            )
        return {"num_data": self.num_data}

    def kl_decomposition(
        self, x: torch.Tensor, z: torch.Tensor, num_data: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""Per-point estimates of the index-code MI, total correlation and dimension-wise KL.

        :param x: a minibatch ``(B, *x_shape)`` drawn from N data points.
        :param z: draws from q(z | x), shape ``(..., B, z_dim)``.
        :param num_data: N.
        :returns: ``(mi, tc, dim_kl)``, each ``(..., B)``; they sum to
            :math:`\log q(z_n \mid x_n) - \log p(z_n)`, the ELBO's single-sample KL.
        """
        posterior = self.posterior(x).base_dist  # independent normals, (B, d)
        # log q(z_ik | x_j): sample i against data point j, per dimension k
        log_q = posterior.log_prob(z.unsqueeze(-2))  # (..., B, B, d)
        log_q_self = log_q.diagonal(dim1=-3, dim2=-2).sum(-2)  # (..., B)
        log_qz, log_prod_qzk = aggregate_log_densities(log_q, num_data, self.estimator)
        log_pz = self.prior().log_prob(z)
        return log_q_self - log_qz, log_qz - log_prod_qzk, log_prod_qzk - log_pz

    def model(self, x: torch.Tensor, *, kl_weight: float = 1.0, num_data: int | None = None) -> torch.Tensor:
        """p(x, z); given ``num_data`` (training only) the KL term becomes its α/β/γ-weighted decomposition."""
        self._register("model")
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight if num_data is None else 0.0):
                z = pyro.sample("z", self.prior())
            if num_data is not None:
                mi, tc, dim_kl = self.kl_decomposition(x, z, num_data)
                with kl_scale(kl_weight):
                    pyro.factor("kl_decomposition", -(self.alpha * mi + self.beta * tc + self.gamma * dim_kl))
            return pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x: torch.Tensor, *, kl_weight: float = 1.0, num_data: int | None = None) -> torch.Tensor:
        """q(z | x); ``"z"`` is masked while the decomposed term stands in for the KL."""
        return super().guide(x, kl_weight=kl_weight if num_data is None else 0.0)
