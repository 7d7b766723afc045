"""Gaussian-mixture prior VAE: the mixture component is a discrete latent that Pyro sums out exactly."""

from __future__ import annotations

from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from pyrovae.handlers import kl_scale
from pyrovae.models.vae import VAE

__all__ = ["GMMVAE", "MixturePrior"]


class MixturePrior(nn.Module):
    """The learned mixture :math:`p(y) = \\mathrm{Cat}(\\pi)`, :math:`p(z \\mid y) = \\mathcal N(\\mu_y, \\sigma_y^2)`.

    :param num_components: number of components K.
    :param z_dim: latent dimension.
    :param spread: standard deviation of the initial component means (distinct
        means break the symmetry between components).
    """

    def __init__(self, num_components: int, z_dim: int, spread: float = 1.0) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.loc = nn.Parameter(spread * torch.randn(num_components, z_dim))
        # softplus(0.5413) = 1: unit-variance components at the start
        self.raw_scale = nn.Parameter(torch.full((num_components, z_dim), 0.5413))

    def component_weights(self) -> dist.Categorical:
        """p(y)."""
        return dist.Categorical(logits=self.logits)

    def component(self, y: torch.Tensor) -> dist.TorchDistribution:
        """p(z | y) for a tensor of component indices (any shape, enumerated ones included)."""
        return dist.Normal(self.loc[y], softplus(self.raw_scale[y]) + 1e-5).to_event(1)

    def marginal(self) -> dist.TorchDistribution:
        """p(z) = sum_y p(y) p(z | y)."""
        components = dist.Normal(self.loc, softplus(self.raw_scale) + 1e-5).to_event(1)
        return dist.MixtureSameFamily(self.component_weights(), components)


class GMMVAE(VAE):
    r"""VAE with a learned Gaussian-mixture prior whose component is enumerated (Dilokthanakul et al. 2016).

    Generative story, for each data point :math:`n` in the ``"data"`` plate:

    .. math::

        y_n \sim \mathrm{Cat}(\pi), \qquad
        z_n \mid y_n \sim \mathcal N(\mu_{y_n}, \operatorname{diag}\sigma_{y_n}^2), \qquad
        x_n \mid z_n \sim p_\theta(x \mid z_n).

    The site ``"y"`` is marked ``infer={"enumerate": "parallel"}`` and the
    guide leaves it out: the guide is :math:`q_\phi(z_n \mid x_n)` only (the
    base VAE's diagonal normal), and ``objective="enum"``
    (:class:`~pyro.infer.TraceEnum_ELBO`) sums :math:`y` out exactly, so the
    objective is the ELBO under the marginal prior
    :math:`p(z) = \sum_k \pi_k \mathcal N(z; \mu_k, \sigma_k^2)`:

    .. math::

        \mathcal L_\beta = \sum_n \mathbb E_{q}\Big[\log p_\theta(x_n \mid z_n)
            + \beta \big(\log \textstyle\sum_{k} \pi_k\, \mathcal N(z_n; \mu_k, \sigma_k^2)
            - \log q_\phi(z_n \mid x_n)\big)\Big].

    β (``kl_weight``) scales ``"y"`` and ``"z"`` in the model and ``"z"`` in the
    guide, one common scale as enumeration requires.  :func:`pyrovae.log_likelihood`
    sums ``"y"`` out exactly too and importance-samples only :math:`z`.
    Objectives that do not enumerate (``"elbo"``, ``"iwae"``, ...) draw ``"y"``
    from :math:`p(y)` in the model, as Pyro does for every model site the guide
    leaves out: they train, but their bound is looser and gets no gradient
    through the draw of ``y``; train with ``objective="enum"``.

    :param args: as :class:`~pyrovae.models.vae.VAE` (``x_shape``, ``z_dim``).
    :param num_components: K, the number of mixture components (>= 1).
    :param kwargs: as :class:`~pyrovae.models.vae.VAE`.

    Example::

        vae = GMMVAE(x_shape=(784,), z_dim=10, num_components=10)
        pyrovae.fit(vae, x_train, objective="enum", epochs=10)
        pyrovae.log_likelihood(vae, x_test)     # y summed out exactly, z sampled

    References:
      1. N. Dilokthanakul, P. A. M. Mediano, M. Garnelo, M. C. H. Lee, H. Salimbeni,
         K. Arulkumaran, M. Shanahan. Deep Unsupervised Clustering with Gaussian
         Mixture Variational Autoencoders. arXiv:1611.02648.
      2. J. M. Tomczak, M. Welling. VAE with a VampPrior. arXiv:1705.07120.
      3. F. Obermeyer, E. Bingham, M. Jankowiak, J. Chiu, N. Pradhan, A. Rush,
         N. Goodman. Tensor Variable Elimination for Plated Factor Graphs. arXiv:1902.03210.
    """

    #: the model's ``y`` is discrete (summed out by enumeration; the guide's ``z`` is continuous)
    has_discrete_latents: ClassVar[bool] = True
    has_enumerated_latents: ClassVar[bool] = True
    default_objective: ClassVar[str] = "enum"
    model_modules: ClassVar[tuple[str, ...]] = ("decoder", "observation", "mixture")

    def __init__(self, *args: Any, num_components: int = 10, **kwargs: Any) -> None:
        if not isinstance(num_components, int) or isinstance(num_components, bool) or num_components < 1:
            raise ValueError(f"Expected num_components to be an int >= 1, got {num_components!r}")
        super().__init__(*args, **kwargs)
        self.mixture = MixturePrior(num_components, self.z_dim)
        self.num_components = num_components
        self.config.update(num_components=num_components)

    def prior(self) -> dist.TorchDistribution:
        """p(z): the mixture with the component summed out (for sampling and plots)."""
        return self.mixture.marginal()

    def model(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> torch.Tensor:
        """p(x, y, z) with ``"y"`` marked for parallel enumeration; ``kl_weight`` scales ``"y"`` and ``"z"``."""
        self._register("model")
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight):
                y = pyro.sample("y", self.mixture.component_weights(), infer={"enumerate": "parallel"})
                z = pyro.sample("z", self.mixture.component(y))
            return pyro.sample("x", self.likelihood(z), obs=x)

    @torch.no_grad()
    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable component of each point at its posterior mean: ``argmax_y p(y | z = E_q[z])``."""
        z = self.posterior(x).mean
        log_joint = self.mixture.component_weights().logits + self.mixture.component(
            torch.arange(self.num_components)
        ).log_prob(z.unsqueeze(-2))
        return log_joint.argmax(-1)
