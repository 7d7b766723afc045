"""The variational autoencoder as a Pyro model/guide pair; the base of every variant."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from pyrovae.handlers import kl_scale
from pyrovae.likelihoods import make_likelihood
from pyrovae.nets import check_widths, make_decoder, make_encoder

__all__ = ["VAE", "check_weight"]

_instances = itertools.count()


def check_weight(name: str, value: Any, *, positive: bool = False, maximum: float | None = None) -> float:
    """``value`` as a float, or a one-line ``ValueError`` naming ``name``.

    For the weights and rates of a model's constructor: a real number (not a
    bool), finite -- an infinite weight trains to NaN at the first step --,
    ``>= 0`` (``> 0`` if ``positive``) and at most ``maximum`` where given.

    Example::

        check_weight("gamma", float("inf"), positive=True)
        # ValueError: Expected gamma > 0 and finite, got inf
    """
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Expected {name} to be a number {bound}, got {value!r}")  # noqa: TRY004 (as for a bad number: often from -o or a config.json)
    if not math.isfinite(value):
        raise ValueError(f"Expected {name} {bound} and finite, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"Expected {name} {bound}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"Expected {name} <= {maximum:g}, got {value!r}")
    return float(value)


class VAE(nn.Module):
    r"""Variational autoencoder (Kingma and Welling 2014; Rezende et al. 2014).

    Generative story, for each data point :math:`n` in the ``"data"`` plate:

    .. math::

        z_n \sim \mathcal N(0, I_{d}), \qquad
        x_n \mid z_n \sim p_\theta(x \mid z_n)
        \quad\text{(a :mod:`~pyrovae.likelihoods` family whose parameters a decoder computes)}

    Guide: :math:`q_\phi(z_n \mid x_n) = \mathcal N(\mu_\phi(x_n), \operatorname{diag}\sigma_\phi(x_n)^2)`.

    Training maximises the β-weighted ELBO

    .. math::

        \mathcal L_\beta = \sum_n \mathbb E_{q}[\log p_\theta(x_n \mid z_n)]
            - \beta\, \mathrm{KL}(q_\phi(z_n \mid x_n) \,\|\, p(z_n)),

    where β is ``kl_weight``, applied with :func:`pyrovae.handlers.kl_scale` to
    the ``"z"`` site of both model and guide.  ``kl_weight=1`` (the default of
    :meth:`model` and :meth:`guide`) is the true model, which every evaluation
    uses; the training weight is :attr:`default_kl_weight` or ``fit``'s argument.

    Variants override the hooks that differ: :meth:`prior`,
    :meth:`posterior` and :meth:`likelihood` each return a distribution.

    :param x_shape: shape of one data point: ``(D,)`` or ``(C, H, W)``.
    :param z_dim: number of latent dimensions.
    :param hidden: hidden widths of the MLP (the last one is the width of the
        fully connected layer of a convolutional net).
    :param arch: ``"mlp"``, ``"conv"`` or ``"auto"`` (conv for images of side >= 16).
    :param channels: channels of the convolutional layers.
    :param activation: nonlinearity name (see :data:`pyrovae.nets.ACTIVATIONS`).
    :param likelihood: name in :data:`pyrovae.likelihoods.LIKELIHOODS`.
    :param likelihood_scale: scale of ``gaussian``/``laplace`` (a number or ``"learned"``;
        default 1); an error for families without a scale.

    Example::

        vae = VAE(x_shape=(784,), z_dim=20)
        result = pyrovae.fit(vae, x_train, epochs=10)

    References:
      1. D. P. Kingma, M. Welling. Auto-Encoding Variational Bayes. arXiv:1312.6114.
      2. D. J. Rezende, S. Mohamed, D. Wierstra. Stochastic Backpropagation and
         Approximate Inference in Deep Generative Models. arXiv:1401.4082.
    """

    #: capability flags read by trainers, objectives and tests (never the class name)
    has_discrete_latents: ClassVar[bool] = False
    #: the model sums a latent site out by enumeration, and the guide leaves it out (``objective="enum"``)
    has_enumerated_latents: ClassVar[bool] = False
    #: every guide site is independent of the other latents given x, so a closed-form KL per site
    #: (``meanfield``, ``free_bits``) is unbiased; a hierarchical guide q(z1|x) q(z2|z1) is not
    mean_field_guide: ClassVar[bool] = True
    #: the guide adds a surrogate term in training (:func:`pyrovae.handlers.surrogate_factor`), which
    #: only ``objective="elbo"`` or ``"meanfield"`` train (``fit`` refuses others, naming the site)
    surrogate_objective: ClassVar[bool] = False
    #: the objective ``fit`` trains with when none is given (a name in ``OBJECTIVES``)
    default_objective: ClassVar[str] = "elbo"
    reparameterized: ClassVar[bool] = True
    #: the KL weight ``fit`` trains with when none is given
    default_kl_weight: ClassVar[float] = 1.0
    #: the constructor argument that sets the variant's trade-off between reconstruction and
    #: disentanglement, the one ``pyrovae sweep`` varies (None: ``fit``'s ``kl_weight``)
    tradeoff_parameter: ClassVar[str | None] = None

    def __init__(
        self,
        x_shape: int | Sequence[int] = (784,),
        z_dim: int = 20,
        *,
        hidden: Sequence[int] = (400,),
        arch: str = "auto",
        channels: Sequence[int] = (32, 32, 64, 64),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        likelihood_scale: float | str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(x_shape, numbers.Integral) and not isinstance(x_shape, bool):
            x_shape = (x_shape,)
        x_shape = check_widths(x_shape, "x_shape", example="(784,) or (1, 64, 64)", allow_empty=False)
        if not isinstance(z_dim, int) or isinstance(z_dim, bool) or z_dim < 1:
            raise ValueError(f"Expected z_dim to be an int >= 1, got {z_dim!r}")
        hidden = check_widths(hidden, "hidden", example="(400,)")
        channels = check_widths(channels, "channels", example="(32, 32, 64, 64)", allow_empty=False)
        if isinstance(likelihood_scale, numbers.Number):
            check_weight("likelihood_scale", likelihood_scale, positive=True)
        #: constructor arguments, recorded for checkpoints (``MODELS[name](**config)`` rebuilds the model)
        self.config: dict[str, Any] = {
            "x_shape": list(x_shape),
            "z_dim": z_dim,
            "hidden": list(hidden),
            "arch": arch,
            "channels": list(channels),
            "activation": activation,
            "likelihood": likelihood,
            "likelihood_scale": likelihood_scale,
        }
        self.x_shape = x_shape
        self.z_dim = z_dim
        options = {} if likelihood_scale is None else {"scale": likelihood_scale}
        self.observation = make_likelihood(likelihood, x_shape, **options)
        net = {"hidden": hidden, "channels": channels, "activation": activation}
        self.encoder = make_encoder(arch, x_shape, {"loc": z_dim, "scale": z_dim}, **net)
        self.decoder = make_decoder(arch, z_dim, x_shape, self.observation.heads, **net)
        self.register_buffer("prior_loc", torch.zeros(z_dim))
        self.register_buffer("prior_scale", torch.ones(z_dim))
        # a unique param-store prefix: two models in one process must never share parameters
        self._pyro_name = f"{type(self).__name__.lower()}{next(_instances)}"

    # ----------------------------------------------------------------- hooks
    def prior(self) -> dist.TorchDistribution:
        """p(z): standard normal over ``z_dim`` dimensions."""
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x): diagonal normal with encoder mean and softplus scale."""
        out = self.encoder(x)
        return dist.Normal(out["loc"], softplus(out["scale"]) + 1e-5).to_event(1)

    def likelihood(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z): the observation family with decoder parameters."""
        return self.observation(self.decoder(z))

    # -------------------------------------------------------- Pyro programs
    def model(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> torch.Tensor:
        """p(x, z); ``kl_weight`` scales the latent site (1 = the true model)."""
        self._register("model")
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight):
                z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> torch.Tensor:
        """q(z | x), with the same ``kl_weight`` on ``"z"`` as :meth:`model`."""
        self._register("guide")
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight):
                return pyro.sample("z", self.posterior(x))

    #: which submodules' parameters each program registers with Pyro; a variant
    #: with more networks extends these (every parameter in exactly one list)
    model_modules: ClassVar[tuple[str, ...]] = ("decoder", "observation")
    guide_modules: ClassVar[tuple[str, ...]] = ("encoder",)

    def _register(self, program: str) -> None:
        # The model registers the generative networks and the guide the
        # inference networks, each once per step: the model then also works
        # with any other guide (an AutoGuide, say), and vice versa.
        for name in self.model_modules if program == "model" else self.guide_modules:
            module = getattr(self, name)
            if any(True for _ in module.parameters()):
                pyro.module(f"{self._pyro_name}.{name}", module)

    # ------------------------------------------------------------ utilities
    def validate_data(self, x: torch.Tensor, name: str = "data") -> None:
        """Raise ``ValueError`` unless ``x`` is a float tensor ``(N, *x_shape)`` in the likelihood's support."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Expected {name} to be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"Expected {name} to have a floating dtype (e.g. torch.float32), got {x.dtype}")
        if x.dim() != len(self.x_shape) + 1 or tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(
                f"Expected {name} of shape (N, {', '.join(map(str, self.x_shape))}), got {tuple(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"Expected {name} to be finite, found {int((~torch.isfinite(x)).sum())} NaN/Inf values")
        self.observation.validate(x, name)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z) at the posterior mean of z."""
        return self.observation.mean(self.decoder(self.posterior(x).mean))

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """Means of p(x | z) for ``num_samples`` draws of z from the prior."""
        z = self.prior().sample((num_samples,))
        return self.observation.mean(self.decoder(z))
