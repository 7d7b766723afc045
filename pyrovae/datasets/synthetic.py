r"""A linear-Gaussian data set whose log-likelihood and posterior are exact.

Generative story, for each data point:

.. math::

    z \sim \mathcal N(0, I_d), \qquad x \mid z \sim \mathcal N(W z + b, \sigma^2 I_D).

Marginal: :math:`x \sim \mathcal N(b, W W^\top + \sigma^2 I_D)`.  Posterior:
:math:`z \mid x \sim \mathcal N(\Sigma W^\top (x - b) / \sigma^2, \Sigma)` with
:math:`\Sigma = (I_d + W^\top W / \sigma^2)^{-1}`.  This is probabilistic PCA
(Tipping and Bishop 1999); estimators, bounds and gradients are tested against
these closed forms.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from pyrovae.datasets.base import DataSet

__all__ = ["LinearGaussian", "load"]

SPLITS = {"train": 1000, "valid": 200, "test": 200}


class LinearGaussian:
    """The linear-Gaussian model with fixed ``W`` (D x d), ``b`` (D,) and noise ``sigma``.

    :param x_dim: D.
    :param z_dim: d.
    :param sigma: observation noise standard deviation (> 0).
    :param seed: seed for drawing ``W`` and ``b``.

    ``model(x)``/``guide(x)`` are a Pyro pair with the *exact* posterior as
    guide, sites ``"z"`` and ``"x"`` in the plate ``"data"``.
    """

    def __init__(self, x_dim: int = 5, z_dim: int = 2, sigma: float = 0.5, seed: int = 0) -> None:
        if not sigma > 0:
            raise ValueError(f"Expected sigma > 0, got {sigma}")
        g = torch.Generator().manual_seed(seed)
        self.x_dim, self.z_dim, self.sigma = x_dim, z_dim, float(sigma)
        self.W = torch.randn(x_dim, z_dim, generator=g, dtype=torch.float64)
        self.b = torch.randn(x_dim, generator=g, dtype=torch.float64)

    # ------------------------------------------------------------ closed forms
    def marginal(self) -> dist.MultivariateNormal:
        """p(x) = N(b, W W^T + sigma^2 I)."""
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.x_dim, dtype=self.W.dtype)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) for each row of ``x``."""
        return self.marginal().log_prob(x.to(self.W.dtype))

    def posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """Exact p(z | x) for each row of ``x`` (batch shape ``x.shape[:-1]``)."""
        x = x.to(self.W.dtype)
        precision = torch.eye(self.z_dim, dtype=self.W.dtype) + self.W.T @ self.W / self.sigma**2
        cov = torch.linalg.inv(precision)
        loc = (x - self.b) @ self.W @ cov.T / self.sigma**2
        return dist.MultivariateNormal(loc, covariance_matrix=cov)

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(num, self.z_dim, generator=generator, dtype=self.W.dtype)
        eps = torch.randn(num, self.x_dim, generator=generator, dtype=self.W.dtype)
        return z @ self.W.T + self.b + self.sigma * eps

    # ---------------------------------------------------------- Pyro programs
    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.z_dim, dtype=x.dtype), 1.0).to_event(1))
            loc = z @ self.W.T.to(x.dtype) + self.b.to(x.dtype)
            pyro.sample("x", dist.Normal(loc, self.sigma).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        post = self.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "z", dist.MultivariateNormal(post.loc.to(x.dtype), scale_tril=post.scale_tril.to(x.dtype))
            )


def load(split: str = "train", *, x_dim: int = 5, z_dim: int = 2, sigma: float = 0.5, seed: int = 0) -> DataSet:
    """Draw a split from :class:`LinearGaussian` (float32, ``(N, x_dim)``).

    The generating model is in ``info["model"]``; its exact ``log_prob`` is the
    reference for likelihood estimators.
    """
    if split not in SPLITS:
        raise ValueError(f"Expected split in {sorted(SPLITS)}, got {split!r}")
    lg = LinearGaussian(x_dim, z_dim, sigma, seed)
    offset = list(SPLITS).index(split) + 1
    x = lg.sample(SPLITS[split], generator=torch.Generator().manual_seed(seed * 1000 + offset))
    return DataSet(x=x.float(), support="real", name="synthetic", split=split, info={"model": lg})
