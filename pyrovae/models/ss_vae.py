"""Semi-supervised VAE (M2): the label is observed where given and summed out exactly where not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch.nn.functional import one_hot, softplus

from pyrovae.handlers import kl_scale
from pyrovae.models.vae import VAE, check_weight
from pyrovae.nets import MLP, Flatten, check_widths, make_decoder, make_encoder, resolve_arch

__all__ = ["SSVAE"]


class SSVAE(VAE):
    r"""Semi-supervised VAE, Kingma et al. (2014)'s M2: a class label beside the continuous latent.

    Generative story, for each data point :math:`n` in the ``"data"`` plate:

    .. math::

        y_n \sim \mathrm{Cat}(1/K), \qquad
        z_n \sim \mathcal N(0, I_d), \qquad
        x_n \mid y_n, z_n \sim p_\theta(x \mid y_n, z_n)
        \quad\text{(the decoder reads } [z_n, \mathrm{onehot}(y_n)]\text{)}.

    Guide: :math:`q_\phi(y_n \mid x_n) = \mathrm{Cat}(\pi_\phi(x_n))` (the classifier) and
    :math:`q_\phi(z_n \mid x_n, y_n)`, a diagonal normal whose hidden layers (``hidden``) read
    :math:`[x_n, \mathrm{onehot}(y_n)]`, as in ref. 1 (images under ``arch="conv"``: convolutional
    features of :math:`x_n` beside the label, then one hidden layer).  ``model(x, y)`` observes the
    label and ``guide(x, y)`` samples :math:`z` only; ``model(x)``/``guide(x)`` make the
    label a latent whose guide site is marked ``infer={"enumerate": "parallel"}``, so
    ``objective="enum"`` (:class:`~pyro.infer.TraceEnum_ELBO`) sums it out exactly
    (other objectives sample it, with score-function gradients).  With :math:`\mathcal L`
    the labelled ELBO and :math:`\mathcal U` the unlabelled one, training maximises
    (ref. 1, eq. 9)

    .. math::

        \mathcal J^\alpha = \sum_{(x, y) \in \text{labelled}} \big(\mathcal L(x, y)
            + \alpha \log q_\phi(y \mid x)\big) + \sum_{x \in \text{unlabelled}} \mathcal U(x),
        \qquad
        \mathcal U(x) = \sum_y q_\phi(y \mid x)\,\big(\mathcal L(x, y) - \log q_\phi(y \mid x)\big),

    where :math:`\alpha` is ``aux_weight``, the classifier's auxiliary term that trains
    :math:`q_\phi(y \mid x)` on the labels (without it only :math:`\mathcal U` would).
    It is a ``pyro.factor`` in a program of its own, :meth:`auxiliary_model` with the
    empty :meth:`auxiliary_guide`, trained as a further :class:`pyrovae.Stream` on the
    labelled pairs; :meth:`model` and :meth:`guide` never add it, so evaluation sees the
    true model.  β (``kl_weight``) scales the latent sites ``"y"`` (when not observed)
    and ``"z"`` in model and guide.

    :param args: as :class:`~pyrovae.models.vae.VAE` (``x_shape``, ``z_dim``).
    :param num_classes: K, the number of classes (>= 2).
    :param classifier_hidden: hidden widths of the classifier network q(y | x)
        (the last one is the fully connected width of a convolutional net).
    :param aux_weight: α, the weight of :math:`\log q_\phi(y \mid x)` per labelled point
        (>= 0).  The paper's α = 0.1·N on the labelled *mean* is 0.1·N/N_l per labelled
        point: 50 for 100 labels of 50,000 images, close to the 46 of Pyro's tutorial,
        the default here.
    :param kwargs: as :class:`~pyrovae.models.vae.VAE`.

    Example::

        m2 = SSVAE(x_shape=(784,), z_dim=50, num_classes=10)
        labelled = (x_labelled, y_labelled)
        pyrovae.fit(m2, x_unlabelled, objective="enum", epochs=50, streams=[
            pyrovae.Stream(labelled),  # model(x, y): nothing to enumerate
            pyrovae.Stream(labelled, programs=(m2.auxiliary_model, m2.auxiliary_guide))])
        accuracy = (m2.classify(x_test) == y_test).float().mean()

    References:
      1. D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling. Semi-Supervised Learning
         with Deep Generative Models. arXiv:1406.5298.
      2. N. Siddharth, B. Paige, J.-W. van de Meent, A. Desmaison, N. Goodman, P. Kohli,
         F. Wood, P. Torr. Learning Disentangled Representations with Semi-Supervised Deep
         Generative Models. arXiv:1706.00400.
    """

    has_discrete_latents: ClassVar[bool] = True
    default_objective: ClassVar[str] = "enum"
    # the label's guide site is a categorical: no pathwise gradient through it
    reparameterized: ClassVar[bool] = False
    guide_modules: ClassVar[tuple[str, ...]] = ("encoder", "encoder_head", "classifier")

    def __init__(
        self,
        *args: Any,
        num_classes: int = 10,
        classifier_hidden: Sequence[int] = (400,),
        aux_weight: float = 46.0,
        **kwargs: Any,
    ) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"Expected num_classes to be an int >= 2, got {num_classes!r}")
        classifier_hidden = check_widths(classifier_hidden, "classifier_hidden", example="(400,)")
        aux_weight = check_weight("aux_weight", aux_weight)
        super().__init__(*args, **kwargs)
        config = self.config
        net = {"hidden": config["hidden"], "channels": config["channels"], "activation": config["activation"]}
        heads = {"loc": self.z_dim, "scale": self.z_dim}
        if resolve_arch(config["arch"], self.x_shape) == "mlp":
            # q(z | x, y) as Kingma et al. and Pyro's tutorial build it: the hidden layers
            # read [x, onehot(y)] itself.  (With a learned feature map of x in front of them,
            # the 100-label MNIST run learnt y as a style variable: test accuracy 0.33.)
            self.encoder = Flatten(self.x_shape)
            self.encoder_head = MLP(self.encoder.width + num_classes, heads, hidden=config["hidden"],
                                    activation=config["activation"])
        else:
            # images through convolutions first, then one hidden layer on [features, onehot(y)]
            width = config["hidden"][-1] if config["hidden"] else 256
            self.encoder = make_encoder("conv", self.x_shape, {"features": width}, **net)
            self.encoder_head = MLP(width + num_classes, heads, hidden=(width,), activation=config["activation"])
        self.decoder = make_decoder(config["arch"], self.z_dim + num_classes, self.x_shape,
                                    self.observation.heads, **net)
        self.classifier = make_encoder(config["arch"], self.x_shape, {"logits": num_classes},
                                       hidden=classifier_hidden, channels=config["channels"],
                                       activation=config["activation"])
        self.register_buffer("label_logits", torch.zeros(num_classes))
        self.num_classes = num_classes
        self.aux_weight = aux_weight
        self.config.update(num_classes=num_classes, classifier_hidden=list(classifier_hidden), aux_weight=aux_weight)

    # ----------------------------------------------------------------- hooks
    def label_prior(self) -> dist.Categorical:
        """p(y): uniform over the ``num_classes`` classes."""
        return dist.Categorical(logits=self.label_logits)

    def label_posterior(self, x: torch.Tensor) -> dist.Categorical:
        """q(y | x): the classifier."""
        return dist.Categorical(logits=self.classifier(x)["logits"])

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.TorchDistribution:
        """q(z | x, y); without ``y``, at the classifier's most probable label (for reconstructions, metrics).

        ``y`` may carry enumeration dimensions on the left, e.g. ``(K, 1)`` against a batch of ``B``.
        """
        if y is None:
            y = self.classify(x)
        features = self.encoder(x)["features"]
        label = self._onehot(y, features.dtype)
        shape = torch.broadcast_shapes(label.shape[:-1], features.shape[:-1])
        out = self.encoder_head(torch.cat([features.expand(*shape, -1), label.expand(*shape, -1)], -1))
        return dist.Normal(out["loc"], softplus(out["scale"]) + 1e-5).to_event(1)

    def likelihood(self, z: torch.Tensor, y: torch.Tensor | None = None) -> dist.TorchDistribution:
        """p(x | z, y); without ``y``, the label summed out: :math:`p(x \\mid z) = \\sum_y p(y)\\, p(x \\mid y, z)`."""
        if y is None:
            labels = torch.arange(self.num_classes, device=z.device)
            components = self.observation(self._decode(z.unsqueeze(-2), labels))  # batch (..., K)
            weights = dist.Categorical(logits=self.label_logits.expand(components.batch_shape))
            return dist.MixtureSameFamily(weights, components)
        return self.observation(self._decode(z, y))

    def _onehot(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return one_hot(y, self.num_classes).to(dtype)

    def _decode(self, z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        label = self._onehot(y, z.dtype)
        shape = torch.broadcast_shapes(label.shape[:-1], z.shape[:-1])
        return self.decoder(torch.cat([z.expand(*shape, -1), label.expand(*shape, -1)], -1))

    # -------------------------------------------------------- Pyro programs
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, *, kl_weight: float = 1.0) -> torch.Tensor:
        """p(x, y, z): ``y`` observed when given, a latent when not; ``kl_weight`` scales the latents."""
        self._check_labels(x, y)
        self._register("model")
        with pyro.plate("data", x.shape[0]):
            if y is None:
                with kl_scale(kl_weight):
                    y = pyro.sample("y", self.label_prior())
            else:  # an observed label is data: β weighs latents only
                y = pyro.sample("y", self.label_prior(), obs=y)
            with kl_scale(kl_weight):
                z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.likelihood(z, y), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None, *, kl_weight: float = 1.0) -> torch.Tensor:
        """q(y | x) q(z | x, y), the label's site enumerated under ``TraceEnum_ELBO``; q(z | x, y) when ``y`` is given."""
        self._check_labels(x, y)
        self._register("guide")
        with pyro.plate("data", x.shape[0]), kl_scale(kl_weight):
            if y is None:
                y = pyro.sample("y", self.label_posterior(x), infer={"enumerate": "parallel"})
            return pyro.sample("z", self.posterior(x, y))

    def auxiliary_model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The classifier's auxiliary term :math:`\\alpha \\log q_\\phi(y \\mid x)` on labelled pairs, a factor."""
        self._check_labels(x, y, required=True)
        pyro.module(f"{self._pyro_name}.classifier", self.classifier)
        with pyro.plate("data", x.shape[0]):
            pyro.factor("y_aux", self.aux_weight * self.label_posterior(x).log_prob(y))

    def auxiliary_guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Empty: :meth:`auxiliary_model` has no latent sites."""

    def _check_labels(self, x: torch.Tensor, y: torch.Tensor | None, *, required: bool = False) -> None:
        if y is None:
            if required:
                raise ValueError("Expected labels y of shape (N,), got None")
            return
        if not isinstance(y, torch.Tensor) or y.dtype != torch.long:
            raise TypeError(f"Expected y to be an integer tensor (torch.long) of class indices, got "
                            f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__}")
        if tuple(y.shape) != tuple(x.shape[:1]):
            raise ValueError(f"Expected y of shape ({x.shape[0]},) beside x, got {tuple(y.shape)}")

    # ------------------------------------------------------------ utilities
    def validate_labels(self, y: torch.Tensor, name: str = "y") -> None:
        """Raise unless ``y`` is an integer tensor ``(N,)`` of class indices in ``[0, num_classes)``."""
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"Expected {name} to be an integer tensor (torch.long) of class indices, got "
                            f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__}")
        if y.dim() != 1:
            raise ValueError(f"Expected {name} of shape (N,), got {tuple(y.shape)}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"Expected {name} in [0, {self.num_classes}), got values in "
                             f"[{int(y.min())}, {int(y.max())}]")

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class of each point under q(y | x), ``(N,)`` long."""
        return self.classifier(x)["logits"].argmax(-1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | y, z) at the classifier's label and the posterior mean of z."""
        y = self.classify(x)
        return self.observation.mean(self._decode(self.posterior(x, y).mean, y))

    @torch.no_grad()
    def sample(self, num_samples: int, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Means of p(x | y, z) for ``num_samples`` draws of z from the prior; ``y`` (a class or ``(num_samples,)``
        labels) fixes the class, else it is drawn from p(y)."""
        z = self.prior().sample((num_samples,))
        if y is None:
            y = self.label_prior().sample((num_samples,))
        y = torch.as_tensor(y, device=z.device).expand(num_samples)
        return self.observation.mean(self._decode(z, y))
