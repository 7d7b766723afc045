"""A VAE with two stochastic layers (Burda et al.'s two-layer architecture)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch.nn.functional import softplus

from pyrovae.handlers import kl_scale
from pyrovae.models.vae import VAE
from pyrovae.nets import MLP, check_widths

__all__ = ["GUIDE_TYPES", "HierarchicalVAE"]

#: the guide's structure: ``"bottom_up"`` q(z1 | x) q(z2 | z1) (Burda et al.), ``"ladder"`` q(z2 | x) q(z1 | z2, x)
GUIDE_TYPES = ("bottom_up", "ladder")


def _normal(out: dict[str, torch.Tensor]) -> dist.TorchDistribution:
    # the same constraint as VAE.posterior: softplus scale with a floor that keeps log q finite
    return dist.Normal(out["loc"], softplus(out["scale"]) + 1e-5).to_event(1)


class HierarchicalVAE(VAE):
    r"""Variational autoencoder with two stochastic layers (Burda et al. 2016, section 5).

    Generative story, for each data point :math:`n` in the ``"data"`` plate
    (sites ``"z2"``, ``"z1"``, ``"x"``, written top-down as the model samples them):

    .. math::

        z_{2,n} \sim \mathcal N(0, I_{d_2}), \qquad
        z_{1,n} \mid z_{2,n} \sim \mathcal N\bigl(\mu_\theta(z_{2,n}), \operatorname{diag}\sigma_\theta(z_{2,n})^2\bigr),
        \qquad x_n \mid z_{1,n} \sim p_\theta(x \mid z_{1,n}).

    Guide, bottom-up (``guide_type="bottom_up"``, Burda et al.'s):
    :math:`q_\phi(z_1, z_2 \mid x) = q_\phi(z_1 \mid x)\, q_\phi(z_2 \mid z_1)`,
    both diagonal normals whose parameters MLPs compute.  Or ladder-style
    (``guide_type="ladder"``, Sønderby et al. 2016), top-down like the model: a deterministic
    bottom-up pass gives :math:`(\hat\mu_1, \hat\sigma_1)` from x (``encoder``) and
    :math:`(\hat\mu_2, \hat\sigma_2)` from :math:`\hat\mu_1` (``upper_encoder``); then

    .. math::

        q_\phi(z_2 \mid x) = \mathcal N(\hat\mu_2, \hat\sigma_2^2), \qquad
        q_\phi(z_1 \mid z_2, x) = \mathcal N\Bigl(
            \frac{\hat\mu_1 \hat\sigma_1^{-2} + \mu_\theta(z_2) \sigma_\theta(z_2)^{-2}}
                 {\hat\sigma_1^{-2} + \sigma_\theta(z_2)^{-2}},\;
            \bigl(\hat\sigma_1^{-2} + \sigma_\theta(z_2)^{-2}\bigr)^{-1}\Bigr),

    the bottom-up estimate and the model's own p(z1 | z2) combined by precision (the guide
    shares ``upper_decoder`` with the model).  Same networks and parameter count either way.  ``"z1"`` is the layer next to the
    data (Burda et al.'s :math:`h_1`, ``z1_dim`` = 100), ``"z2"`` the top one (:math:`h_2`,
    ``z_dim`` = 50: as in :class:`~pyrovae.models.vae.VAE`, ``z_dim`` is the size of the
    latent that :meth:`prior` draws).  The networks: x -> ``hidden`` -> z1 (``encoder``),
    z1 -> ``top_hidden`` -> z2 (``upper_encoder``), z2 -> reversed ``top_hidden`` -> z1
    (``upper_decoder``), z1 -> reversed ``hidden`` -> x (``decoder``); tanh by default.

    Training maximises the β-weighted ELBO (or any bound of :data:`pyrovae.OBJECTIVES`,
    e.g. IWAE with ``objective="iwae"``)

    .. math::

        \mathcal L_\beta = \sum_n \mathbb E_{q}\bigl[\log p_\theta(x_n \mid z_{1,n})\bigr]
            - \beta\, \mathrm{KL}\bigl(q_\phi(z_{1,n}, z_{2,n} \mid x_n) \,\|\, p_\theta(z_{1,n}, z_{2,n})\bigr),

    with β = ``kl_weight`` on both latent sites of model and guide; ``kl_weight=1`` (what
    evaluation uses) is the true model.  :func:`pyrovae.log_likelihood` importance-samples
    both layers from the guide.

    Hooks: :meth:`prior` p(z2), :meth:`conditional_prior` p(z1 | z2), :meth:`likelihood`
    p(x | z1), :meth:`posterior` q(z1 | x), :meth:`upper_posterior` q(z2 | z1) (bottom-up guide);
    :meth:`ladder_posteriors` q(z2 | x) and z2 -> q(z1 | z2, x) (ladder guide); :meth:`layer_means`
    the guide's mean of each layer.  :meth:`reconstruct` decodes the guide's mean of z1;
    :meth:`sample` draws both layers.
    The helpers of :mod:`pyrovae.plots` that pair ``posterior`` with ``prior`` assume one
    latent layer and do not apply.

    Burda et al.'s one-layer architecture (784-200-200-50, tanh) is the plain VAE:
    ``VAE((784,), 50, hidden=(200, 200), activation="tanh")``.

    :param x_shape: shape of one data point: ``(D,)`` or ``(C, H, W)``.
    :param z_dim: size of the top latent z2 (50 in Burda et al.).
    :param z1_dim: size of the latent next to the data, z1 (100).
    :param hidden: hidden widths between x and z1 (200, 200).
    :param top_hidden: hidden widths between z1 and z2 (100, 100).
    :param arch: ``"mlp"`` (the paper's), ``"conv"`` or ``"auto"`` for the x <-> z1 networks.
    :param channels: channels of the convolutional layers where ``arch`` is conv.
    :param activation: nonlinearity name (see :data:`pyrovae.nets.ACTIVATIONS`); ``"tanh"``.
    :param likelihood: name in :data:`pyrovae.likelihoods.LIKELIHOODS`.
    :param likelihood_scale: scale of ``gaussian``/``laplace`` (a number or ``"learned"``).
    :param guide_type: ``"bottom_up"`` (Burda et al.'s) or ``"ladder"`` (see above).

    Example::

        vae = HierarchicalVAE(x_shape=(784,))   # 784-200-200-100 then 100-100-50
        result = pyrovae.fit(vae, x_train, objective="iwae", num_particles=5, epochs=10)
        pyrovae.log_likelihood(vae, x_test, num_samples=5000).mean

    References:
      1. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders.
         arXiv:1509.00519.
      2. D. J. Rezende, S. Mohamed, D. Wierstra. Stochastic Backpropagation and
         Approximate Inference in Deep Generative Models. arXiv:1401.4082.
      3. C. K. Sønderby, T. Raiko, L. Maaløe, S. K. Sønderby, O. Winther. Ladder Variational
         Autoencoders. arXiv:1602.02282.
    """

    #: q(z2 | z1) reads a latent: a closed-form KL per site (meanfield, free_bits) would be biased
    mean_field_guide: ClassVar[bool] = False
    model_modules: ClassVar[tuple[str, ...]] = ("decoder", "observation", "upper_decoder")
    guide_modules: ClassVar[tuple[str, ...]] = ("encoder", "upper_encoder")

    def __init__(
        self,
        x_shape: int | Sequence[int] = (784,),
        z_dim: int = 50,
        *,
        z1_dim: int = 100,
        hidden: Sequence[int] = (200, 200),
        top_hidden: Sequence[int] = (100, 100),
        arch: str = "mlp",
        channels: Sequence[int] = (32, 32, 64, 64),
        activation: str = "tanh",
        likelihood: str = "bernoulli",
        likelihood_scale: float | str | None = None,
        guide_type: str = "bottom_up",
    ) -> None:
        if guide_type not in GUIDE_TYPES:
            raise ValueError(f"Expected guide_type to be one of {GUIDE_TYPES}, got {guide_type!r}")
        for name, value in (("z_dim", z_dim), ("z1_dim", z1_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Expected {name} to be an int >= 1, got {value!r}")
        top_hidden = check_widths(top_hidden, "top_hidden", example="(100, 100)")
        # the base class builds the layer next to the data: q(z1 | x), p(x | z1)
        super().__init__(
            x_shape, z1_dim, hidden=hidden, arch=arch, channels=channels, activation=activation,
            likelihood=likelihood, likelihood_scale=likelihood_scale,
        )
        self.config.update(z_dim=z_dim, z1_dim=z1_dim, top_hidden=list(top_hidden), guide_type=guide_type)
        self.guide_type = guide_type
        if guide_type == "ladder":  # the guide reads the model's p(z1 | z2)
            self.guide_modules = (*type(self).guide_modules, "upper_decoder")
        self.z_dim = z_dim
        self.z1_dim = z1_dim
        heads = {"loc": z_dim, "scale": z_dim}
        self.upper_encoder = MLP(z1_dim, heads, hidden=top_hidden, activation=activation)
        self.upper_decoder = MLP(z_dim, {"loc": z1_dim, "scale": z1_dim}, hidden=top_hidden[::-1], activation=activation)
        # p(z2) is over the top layer: replace the base's z1-sized buffers
        self.prior_loc = torch.zeros(z_dim)
        self.prior_scale = torch.ones(z_dim)

    # ----------------------------------------------------------------- hooks
    def conditional_prior(self, z2: torch.Tensor) -> dist.TorchDistribution:
        """p(z1 | z2): diagonal normal from ``upper_decoder``."""
        return _normal(self.upper_decoder(z2))

    def upper_posterior(self, z1: torch.Tensor) -> dist.TorchDistribution:
        """q(z2 | z1): diagonal normal from ``upper_encoder``."""
        return _normal(self.upper_encoder(z1))

    def ladder_posteriors(self, x: torch.Tensor) -> tuple[dist.TorchDistribution, Callable[[torch.Tensor], dist.TorchDistribution]]:
        """The ladder guide's q(z2 | x) and the function z2 -> q(z1 | z2, x) (for any ``guide_type``'s networks)."""
        bottom = self.encoder(x)
        loc1, scale1 = bottom["loc"], softplus(bottom["scale"]) + 1e-5
        q2 = _normal(self.upper_encoder(loc1))

        def q1(z2: torch.Tensor) -> dist.TorchDistribution:
            p = self.upper_decoder(z2)
            loc_p, scale_p = p["loc"], softplus(p["scale"]) + 1e-5
            precision1, precision_p = scale1.pow(-2), scale_p.pow(-2)
            precision = precision1 + precision_p
            return dist.Normal((loc1 * precision1 + loc_p * precision_p) / precision, precision.rsqrt()).to_event(1)

        return q2, q1

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z1 | x) of the bottom-up guide; the ladder guide has no closed-form q(z1 | x) (see :meth:`layer_means`)."""
        if self.guide_type == "ladder":
            raise ValueError("HierarchicalVAE(guide_type='ladder') has no closed-form q(z1 | x) (site 'z1' is "
                             "drawn given z2): use layer_means(x) for E_q[z1 | x], E_q[z2 | x]")
        return super().posterior(x)

    # -------------------------------------------------------- Pyro programs
    def model(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> torch.Tensor:
        """p(x, z1, z2); ``kl_weight`` scales both latent sites (1 = the true model)."""
        self._register("model")
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight):
                z2 = pyro.sample("z2", self.prior())
                z1 = pyro.sample("z1", self.conditional_prior(z2))
            return pyro.sample("x", self.likelihood(z1), obs=x)

    def guide(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> torch.Tensor:
        """q(z1 | x) q(z2 | z1) (or the ladder's q(z2 | x) q(z1 | z2, x)), with :meth:`model`'s ``kl_weight`` on both sites."""
        self._register("guide")
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight):
                if self.guide_type == "ladder":
                    q2, q1 = self.ladder_posteriors(x)
                    z2 = pyro.sample("z2", q2)
                    return pyro.sample("z1", q1(z2))
                z1 = pyro.sample("z1", self.posterior(x))
                pyro.sample("z2", self.upper_posterior(z1))
            return z1

    # ------------------------------------------------------------ utilities
    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """Means of p(x | z1) for ``num_samples`` draws of z2 ~ p(z2), z1 ~ p(z1 | z2)."""
        z2 = self.prior().sample((num_samples,))
        z1 = self.conditional_prior(z2).sample()
        return self.observation.mean(self.decoder(z1))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z1) at the guide's mean of z1 (ladder: of q(z1 | z2, x) at the mean of q(z2 | x))."""
        if self.guide_type == "ladder":
            q2, q1 = self.ladder_posteriors(x)
            return self.observation.mean(self.decoder(q1(q2.mean).mean))
        return super().reconstruct(x)

    @torch.no_grad()
    def layer_means(self, x: torch.Tensor, num_samples: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The guide's means :math:`\mathbb E_q[z_1 \mid x]` ``(N, z1_dim)`` and :math:`\mathbb E_q[z_2 \mid x]` ``(N, z_dim)``.

        Exact where the guide gives the layer first (z1 bottom-up, z2 ladder); the other
        layer's mean by Monte Carlo over ``num_samples`` draws of the first.  E.g. for
        Burda et al.'s active units of each layer.
        """
        if self.guide_type == "ladder":
            q2, q1 = self.ladder_posteriors(x)
            return q1(q2.sample((num_samples,))).mean.mean(0), q2.mean
        q1 = self.posterior(x)
        return q1.mean, self.upper_posterior(q1.sample((num_samples,))).mean.mean(0)

    def upper_posterior_mean(self, x: torch.Tensor, num_samples: int = 100) -> torch.Tensor:
        r""":math:`\mathbb E_q[z_2 \mid x]`, ``(N, z_dim)`` (:meth:`layer_means`' second): the top layer's mean under the guide."""
        return self.layer_means(x, num_samples)[1]
