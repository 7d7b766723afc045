"""Discrete-latent VAE: Bernoulli or categorical latents, trained by enumeration, score function or relaxation."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch.distributions import kl_divergence
from torch.distributions.relaxed_bernoulli import (
    LogitRelaxedBernoulli as _TorchLogitRelaxedBernoulli,
)
from torch.distributions.relaxed_categorical import (
    ExpRelaxedCategorical as _TorchExpRelaxedCategorical,
)
from torch.distributions.utils import clamp_probs

from pyrovae.handlers import kl_scale, surrogate_factor
from pyrovae.models.vae import VAE
from pyrovae.nets import make_decoder, make_encoder
from pyrovae.schedules import Schedule, make_schedule

__all__ = ["KL_TERMS", "LATENTS", "MAX_ENUMERATE", "DiscreteVAE", "JointlyEnumerable"]

class ExpRelaxedCategorical(_TorchExpRelaxedCategorical, TorchDistributionMixin):
    """The log of a Gumbel-softmax (Concrete) draw, as a Pyro distribution (Pyro wraps no such class).

    Its density stays finite where the Concrete density does not: at a temperature of 0.5 and
    logits as confident as a trained encoder's, a draw's small components underflow to 0 in
    float32 and ``RelaxedOneHotCategorical.log_prob`` returns NaN; in log space they are finite.
    """


class LogitRelaxedBernoulli(_TorchLogitRelaxedBernoulli, TorchDistributionMixin):
    r"""The logit of a Binary Concrete draw, as a Pyro distribution (Pyro wraps no such class).

    Scored where it is drawn: ``RelaxedBernoulli`` clamps its draws to ``[eps, 1 - eps]`` and
    scores the clamped value, whose :math:`\log q - \log p` against a uniform prior falls
    behind the true one once the encoder's logit passes about 8 and turns negative past about
    16 (at :math:`\tau = 0.5`; mean over draws at logit 20: -4.1 against the true 11.8), so an
    optimiser is paid to make the encoder ever more confident.
    """

    # torch's class defines rsample but not this flag, so Pyro would draw through ``sample()``
    # (no gradient through the draw) and Trace_ELBO would train the site by the score function
    has_rsample = True

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        # torch draws with the logits clamped to about +-16 (through clamp_probs(self.probs)) but
        # scores with the true ones: past 16 the draw is not from this density, and a full run's
        # encoder pushed its logits to 93 for a loss of 0.5 nats.  Here only the uniform noise is
        # clamped away from 0 and 1 (the logistic noise truncated at +-16: mass 2.4e-7)
        shape = self._extended_shape(sample_shape)
        u = clamp_probs(torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device))
        return (u.log() - (-u).log1p() + self.logits.expand(shape)) / self.temperature

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # torch writes log(1 + exp(d)), which is inf for d > 88 in float32 (a -inf loss in a full
        # run); softplus is the same function without the overflow
        if self._validate_args:
            self._validate_sample(value)
        diff = self.logits - value * self.temperature
        return self.temperature.log() + diff - 2 * torch.nn.functional.softplus(diff)


#: the latent families: name -> (distribution over one latent variable, its relaxation); a relaxed
#: site holds the *logit* (Bernoulli) or *log* (categorical) of the Concrete draw, scored in that
#: space (Maddison et al. 2017, Appendix C); :meth:`DiscreteVAE.decoder_input` maps it back, and
#: rounds it for the straight-through variant, whose site is the same
LATENTS: dict[str, tuple[type, type]] = {
    "bernoulli": (dist.Bernoulli, LogitRelaxedBernoulli),
    "categorical": (dist.OneHotCategorical, ExpRelaxedCategorical),
}
#: the relaxed objective's KL term: ``"relaxed"``, between the relaxed densities of guide and prior
#: (Maddison et al.: an ELBO of the relaxed model); ``"discrete"``, between the discrete ones, the
#: relaxed draw only in the reconstruction term (Jang et al.'s surrogate, not a bound of any model)
KL_TERMS = ("relaxed", "discrete")
#: the most joint values :meth:`JointlyEnumerable.enumerate_support` lists (beyond it: sample instead)
MAX_ENUMERATE = 2**16


class JointlyEnumerable(dist.Independent):
    """Independent discrete variables whose ``enumerate_support`` lists every *joint* value.

    ``Independent`` has no enumerable support in Pyro (the joint support of d
    variables has :math:`s^d` values); for a small event space this class lists
    them all, so ``TraceEnum_ELBO`` can take the guide's expectation over the
    whole latent vector exactly.  Built as ``JointlyEnumerable(base, 1)`` from a
    ``Bernoulli`` (values {0, 1}) or ``OneHotCategorical`` base.
    """

    @property
    def has_enumerate_support(self) -> bool:
        return True

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        base = self.base_dist
        elements = self.event_shape[: len(self.event_shape) - len(base.event_shape)]
        num_elements = math.prod(elements)
        values = base.enumerate_support(expand=False).reshape(-1, *base.event_shape)  # (s, *base event)
        total = values.shape[0] ** num_elements
        if total > MAX_ENUMERATE:
            raise ValueError(
                f"Exact enumeration of {num_elements} latent variables with {values.shape[0]} values each lists "
                f"{values.shape[0]}^{num_elements} joint values (more than {MAX_ENUMERATE}): enumerate only small "
                "latent spaces; use objective='graph' (score function) or relaxed=True (Gumbel-softmax) instead"
            )
        index = torch.tensor(list(itertools.product(range(values.shape[0]), repeat=num_elements)),
                             dtype=torch.long, device=values.device).reshape(total, num_elements)
        joint = values[index].reshape((total,) + (1,) * len(self.batch_shape) + self.event_shape)
        return joint.expand((total,) + self.batch_shape + self.event_shape) if expand else joint


class DiscreteVAE(VAE):
    r"""VAE with discrete latents: d Bernoulli bits or d categorical variables of K classes (Jang et al. 2017).

    Generative story, for each data point :math:`n` in the ``"data"`` plate
    (``latent="bernoulli"``: :math:`z_n \in \{0, 1\}^d`; ``latent="categorical"``:
    :math:`z_n` is d one-hot vectors of K classes, ``(d, K)``):

    .. math::

        z_{n} \sim \prod_{i=1}^{d} \mathrm{Bernoulli}(\tfrac12)
            \ \text{or}\ \prod_{i=1}^{d} \mathrm{Cat}(\tfrac1K), \qquad
        x_n \mid z_n \sim p_\theta(x \mid z_n),

    with guide :math:`q_\phi(z_n \mid x_n) = \prod_i \mathrm{Bernoulli}(\sigma(\ell_{\phi,i}(x_n)))`
    (or categorical with logits :math:`\ell_{\phi}(x_n)`).  The objective is the
    β-weighted ELBO :math:`\mathbb E_q[\log p_\theta(x_n \mid z_n)] - \beta\,\mathrm{KL}(q_\phi \,\|\, p)`,
    its gradient estimated three ways:

    * **exact enumeration** -- ``objective="enum"``: the guide's site is marked
      ``infer={"enumerate": "parallel"}`` and :class:`JointlyEnumerable` lists
      every joint value, so ``TraceEnum_ELBO`` sums over all :math:`s^d` of them
      (exact gradient, zero variance; small latent spaces only, at most
      :data:`MAX_ENUMERATE` values);
    * **score function** -- ``objective="graph"`` (baselines), ``"elbo"``,
      ``"rws"``, ``"iwae"``: the latent is sampled, gradients by likelihood ratio;
    * **relaxed latents** -- ``relaxed=True``: in training (``fit`` passes
      ``temperature`` from :meth:`training_kwargs`) both ``"z"`` sites become
      Concrete / Gumbel-softmax distributions at temperature :math:`\tau`, whose
      reparameterized draws give pathwise gradients of the relaxed ELBO (Maddison
      et al.: the densities of both sites are relaxed, a valid ELBO of the
      relaxed model); ``straight_through=True`` feeds the decoder the rounded
      (one-hot) sample with the relaxed sample's gradient.  The sites hold the
      logit (Bernoulli) or log (categorical) of the Concrete draw (Maddison et
      al.'s Appendix C), the decoder reading its sigmoid or exponential: the same
      change of variables in model and guide leaves :math:`\log q - \log p`
      unchanged, and the density is of the draw itself, finite where a confident
      encoder's float32 draw underflows to 0 (Pyro's ``RelaxedOneHotCategorical``
      then gives NaN) and not of a clamped copy (``RelaxedBernoulli`` and the
      straight-through classes clamp, and an optimiser drives the clamped
      :math:`\log q - \log p` to :math:`-\infty`).  Biased for the
      discrete ELBO, with a bias that vanishes as :math:`\tau \to 0` and a
      variance that grows.
    * **relaxed reconstruction, discrete KL** -- ``relaxed=True, kl="discrete"``:
      Jang et al.'s surrogate

      .. math::

          \mathbb E_{q_{\phi,\tau}(y_n \mid x_n)}[\log p_\theta(x_n \mid y_n)]
              - \beta\,\mathrm{KL}\big(q_\phi(z_n \mid x_n) \,\|\, p(z_n)\big),

      the relaxed draw :math:`y_n` only in the reconstruction, the KL between
      the *discrete* guide and prior in closed form.  It is no bound of any
      model (the relaxed densities' KL grows with the encoder's confidence far
      beyond the discrete one, and keeps the codes soft; this one does not).
      As a Pyro program: the relaxed ``"z"`` sites are drawn with their
      densities masked out, and the guide adds the KL as ``pyro.factor("z_kl",
      ..., has_rsample=True)`` under the same β, marked
      ``infer={"surrogate": True}``, so only ``Trace_ELBO`` and
      ``TraceMeanField_ELBO`` (``objective="elbo"`` or ``"meanfield"``) train it,
      and every other objective and every evaluation refuses the program in one
      line naming the site.

    Called without ``temperature`` (every evaluation: ``log_likelihood``,
    ``evaluate_elbo``, plots) model and guide are the discrete ones, whatever
    ``relaxed`` says: the temperature never reaches an evaluation.

    :param x_shape: shape of one data point.
    :param z_dim: d, the number of latent variables (default 200 Bernoulli bits,
        or 20 categorical variables).
    :param latent: ``"bernoulli"`` or ``"categorical"``.
    :param num_categories: K, classes of each categorical variable (default 10).
    :param relaxed: train the relaxed model (``fit`` supplies the temperature).
    :param temperature: :math:`\tau > 0` for relaxed training: a number, a
        :class:`~pyrovae.schedules.Schedule` (annealing, e.g. ``Linear(1.0, 0.5, 50_000)``)
        or its ``to_dict()``.
    :param straight_through: feed the decoder the rounded relaxed sample.
    :param kl: the relaxed objective's KL term (:data:`KL_TERMS`): ``"relaxed"``
        (Maddison et al.'s relaxed ELBO) or ``"discrete"`` (Jang et al.'s
        surrogate; needs ``relaxed=True``).
    :param kwargs: as :class:`~pyrovae.models.vae.VAE` (``hidden`` default ``(512, 256)``).

    Example::

        vae = DiscreteVAE(x_shape=(784,), latent="categorical", z_dim=20, num_categories=10,
                          relaxed=True, temperature=pyrovae.Linear(start=1.0, end=0.5, num_steps=50_000))
        pyrovae.fit(vae, x_train, epochs=100)             # Gumbel-softmax, annealed
        pyrovae.log_likelihood(vae, x_test)               # the discrete model

    References:
      1. E. Jang, S. Gu, B. Poole. Categorical Reparameterization with Gumbel-Softmax. arXiv:1611.01144.
      2. C. J. Maddison, A. Mnih, Y. W. Teh. The Concrete Distribution: A Continuous Relaxation of
         Discrete Random Variables. arXiv:1611.00712.
      3. A. Mnih, K. Gregor. Neural Variational Inference and Learning in Belief Networks. arXiv:1402.0030.
      4. F. Obermeyer, E. Bingham, M. Jankowiak, J. Chiu, N. Pradhan, A. Rush, N. Goodman.
         Tensor Variable Elimination for Plated Factor Graphs. arXiv:1902.03210.
    """

    has_discrete_latents: ClassVar[bool] = True
    reparameterized: ClassVar[bool] = False

    def __init__(
        self,
        x_shape: int | tuple[int, ...] = (784,),
        z_dim: int | None = None,
        *,
        latent: str = "bernoulli",
        num_categories: int = 10,
        relaxed: bool = False,
        temperature: float | Schedule | Mapping[str, Any] = 1.0,
        straight_through: bool = False,
        kl: str = "relaxed",
        hidden: tuple[int, ...] = (512, 256),
        **kwargs: Any,
    ) -> None:
        if latent not in LATENTS:
            raise ValueError(f"Expected latent in {sorted(LATENTS)}, got {latent!r}")
        if not isinstance(num_categories, int) or isinstance(num_categories, bool) or num_categories < 2:
            raise ValueError(f"Expected num_categories to be an int >= 2, got {num_categories!r}")
        for name, value in (("relaxed", relaxed), ("straight_through", straight_through)):
            if not isinstance(value, bool):
                raise TypeError(f"Expected {name} to be a bool, got {value!r}")
        if kl not in KL_TERMS:
            raise ValueError(f"Expected kl in {list(KL_TERMS)}, got {kl!r}")
        if kl == "discrete" and not relaxed:
            raise ValueError("kl='discrete' is the KL term of relaxed training (Jang et al.'s surrogate): "
                             "set relaxed=True, or leave kl='relaxed'")
        schedule = make_schedule(temperature, name="temperature")
        if not all(schedule(step) > 0 for step in (0, 10**12)):
            raise ValueError(f"Expected temperature > 0 at every step, got {temperature!r}")
        if z_dim is None:
            z_dim = 200 if latent == "bernoulli" else 20
        super().__init__(x_shape, z_dim, hidden=hidden, **kwargs)
        self.latent = latent
        self.num_categories = num_categories
        self.relaxed = relaxed
        self.straight_through = straight_through
        self.kl = kl
        #: :math:`\tau` as a function of the training step
        self.temperature_schedule = schedule
        # the latent's shape replaces the base's Gaussian heads: logits per variable (and class)
        self.z_shape = (z_dim,) if latent == "bernoulli" else (z_dim, num_categories)
        net = {k: self.config[k] for k in ("hidden", "channels", "activation")}
        self.encoder = make_encoder(self.config["arch"], self.x_shape, {"logits": self.z_shape}, **net)
        self.decoder = make_decoder(self.config["arch"], math.prod(self.z_shape), self.x_shape,
                                    self.observation.heads, **net)
        del self.prior_loc, self.prior_scale
        self.register_buffer("prior_logits", torch.zeros(self.z_shape))  # uniform, as in Jang et al.
        self.config.update(latent=latent, num_categories=num_categories, relaxed=relaxed,
                           temperature=schedule.to_dict(), straight_through=straight_through, kl=kl)

    # ----------------------------------------------------------------- hooks
    def _latent(self, logits: torch.Tensor, temperature: Any) -> dist.TorchDistribution:
        """The discrete distribution with these logits, or its relaxation at ``temperature``."""
        discrete, relaxed = LATENTS[self.latent]
        if temperature is None:
            return JointlyEnumerable(discrete(logits=logits), 1)
        tau = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
        return relaxed(tau, logits=logits).to_event(1)

    def prior(self, temperature: float | torch.Tensor | None = None) -> dist.TorchDistribution:
        """p(z): independent uniform Bernoulli bits or categoricals (relaxed at ``temperature`` if given)."""
        return self._latent(self.prior_logits, temperature)

    def posterior(self, x: torch.Tensor, temperature: float | torch.Tensor | None = None) -> dist.TorchDistribution:
        """q(z | x): independent Bernoulli or categorical with encoder logits (relaxed at ``temperature``)."""
        return self._latent(self.encoder(x)["logits"], temperature)

    def likelihood(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z): the decoder reads the latent flattened (d bits, or d one-hot vectors of K)."""
        if self.latent == "categorical":
            z = z.reshape(*z.shape[:-2], -1)
        return self.observation(self.decoder(z))

    def training_kwargs(self, step: int) -> dict[str, Any]:
        """The temperature :math:`\\tau_t` at training step ``step`` when ``relaxed`` (``fit`` passes it on)."""
        return {"temperature": self.temperature_schedule(step)} if self.relaxed else {}

    # -------------------------------------------------------- Pyro programs
    def model(self, x: torch.Tensor, *, kl_weight: float = 1.0, temperature: float | None = None) -> torch.Tensor:
        """p(x, z); relaxed at ``temperature`` (training only), discrete without it."""
        self._register("model")
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight):
                z = pyro.sample("z", self._site(self.prior(temperature), temperature))
            return pyro.sample("x", self.likelihood(self.decoder_input(z, temperature)), obs=x)

    def decoder_input(self, z: torch.Tensor, temperature: float | torch.Tensor | None = None) -> torch.Tensor:
        """What the decoder reads for the site value ``z``: ``z`` itself when discrete; when
        relaxed (the site holds logits or log-probabilities) their sigmoid or exponential, or with
        ``straight_through`` the rounded bits or one-hot argmax carrying that map's gradient."""
        if temperature is None:
            return z
        bernoulli = self.latent == "bernoulli"
        soft = torch.sigmoid(z) if bernoulli else z.exp()
        if not self.straight_through:
            return soft
        hard = (z > 0).to(soft) if bernoulli else torch.nn.functional.one_hot(z.argmax(-1), z.shape[-1]).to(soft)
        return hard + (soft - soft.detach())

    def guide(self, x: torch.Tensor, *, kl_weight: float = 1.0, temperature: float | None = None) -> torch.Tensor:
        """q(z | x); the discrete site is marked for parallel enumeration (used by ``objective="enum"`` only).
        With ``kl="discrete"`` in training, the discrete KL follows as the surrogate term ``"z_kl"``."""
        self._register("guide")
        infer = {"enumerate": "parallel"} if temperature is None else {}
        logits = self.encoder(x)["logits"]
        with pyro.plate("data", x.shape[0]):
            with kl_scale(kl_weight):
                z = pyro.sample("z", self._site(self._latent(logits, temperature), temperature), infer=infer)
                if self._discrete_kl(temperature):
                    kl = kl_divergence(self._latent(logits, None),
                                       self._latent(self.prior_logits.expand_as(logits), None))
                    surrogate_factor("z_kl", kl)  # in place of the masked sites' log q - log p
        return z

    def _discrete_kl(self, temperature: Any) -> bool:
        """Whether this call trains Jang et al.'s surrogate (relaxed draws, discrete KL)."""
        return temperature is not None and self.kl == "discrete"

    def _site(self, fn: dist.TorchDistribution, temperature: Any) -> dist.TorchDistribution:
        """The ``"z"`` site's distribution; its density masked out where the discrete KL replaces it."""
        return fn.mask(False) if self._discrete_kl(temperature) else fn

    # ------------------------------------------------------------ utilities
    # through likelihood(z), which flattens a categorical latent (the base's call the decoder directly)
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z) at the posterior mean of z (the probabilities of each bit or class)."""
        return self.likelihood(self.posterior(x).mean).mean

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """Means of p(x | z) for ``num_samples`` draws of z from the (discrete) prior."""
        return self.likelihood(self.prior().sample((num_samples,))).mean
