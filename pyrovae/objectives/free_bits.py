r"""Free bits: the ELBO with a floor of λ nats on the KL of each latent dimension (Kingma et al. 2016)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pyro.distributions import Independent
from torch.distributions import kl_divergence
from pyro.infer import Trace_ELBO
from pyro.infer.util import torch_item

__all__ = ["FreeBitsELBO", "kl_per_group"]


def kl_per_group(guide_site: dict, model_site: dict) -> torch.Tensor:
    r"""KL(q || p) of one latent site per point and per group: shape ``batch_shape + (G,)``.

    A mean-field site (``Independent`` of a univariate family, in both q and p) has one group per
    element of its event, so a diagonal Normal gives the exact KL of each dimension.  Any other
    site (a full-covariance ``MultivariateNormal`` guide, say) is one group.  The KL is analytic
    where Pyro knows the pair, else the one-sample estimate :math:`\log q(z) - \log p(z)` at the
    drawn value.
    """
    q, p, z = guide_site["fn"], model_site["fn"], guide_site["value"]
    q_base, p_base = q, p
    while isinstance(q_base, Independent):
        q_base = q_base.base_dist
    while isinstance(p_base, Independent):
        p_base = p_base.base_dist
    elementwise = q_base.event_shape == p_base.event_shape == torch.Size()
    if elementwise:
        q, p = q_base, p_base
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError:
        kl = q.log_prob(z) - p.log_prob(z)
    batch_dim = z.dim() - len(guide_site["fn"].event_shape)
    kl = kl.expand(z.shape) if elementwise else kl.expand(z.shape[:batch_dim])
    return kl.reshape(z.shape[:batch_dim] + (-1,))


class FreeBitsELBO(Trace_ELBO):
    r"""The ELBO with each latent dimension's KL held at no less than ``free_bits`` nats.

    For a minibatch of :math:`B` points and latent dimensions (groups) :math:`j` of every
    latent site of the guide (each element of a mean-field site's event is a group; a site
    with a joint event, such as a full-covariance Gaussian, is one group),

    .. math::

        \tilde{\mathcal L} = \sum_n \mathbb E_q[\log p_\theta(x_n \mid z_n)]
            - B \sum_j \max\Big(\lambda,\ \frac1B \sum_n \mathrm{KL}\big(q_\phi(z_{nj} \mid x_n)
              \,\|\, p(z_{nj})\big)\Big).

    A dimension whose minibatch-mean KL is below λ costs a constant λ, so nothing pushes
    its KL further down: the encoder may spend up to λ nats per dimension for free,
    which counters posterior collapse under a strong (autoregressive) decoder.  With
    ``free_bits=0`` the objective is the ELBO with analytic KL
    (:class:`~pyro.infer.TraceMeanField_ELBO`; tested equal).

    The KL is analytic where Pyro knows it, else a one-sample estimate per element
    (:func:`kl_per_group`).  A site's scale (the KL weight β, a minibatch ``N / B``)
    multiplies its term and a mask removes masked points, so KL annealing composes:
    :math:`\beta \cdot B \sum_j \max(\lambda, \overline{\mathrm{KL}}_j)`.  The floor is
    a training device only: evaluation (``log_likelihood``, ``evaluate_elbo``) never sees it.

    Condition (validated): every latent site of the guide is reparameterized and is a
    latent site of the model.

    :param free_bits: λ, nats per latent dimension (>= 0).
    :param num_particles: Monte Carlo samples of the reconstruction term.

    Example::

        pyrovae.fit(PixelVAE(x_shape=(1, 28, 28)), x, objective=FreeBitsELBO(0.25))
        pyrovae.fit(vae, x, objective="free_bits")   # the default, 0.5 nats per dimension

    References:
      1. D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling.
         Improved Variational Inference with Inverse Autoregressive Flow. arXiv:1606.04934.
      2. X. Chen, D. P. Kingma, T. Salimans, Y. Duan, P. Dhariwal, J. Schulman, I. Sutskever,
         P. Abbeel. Variational Lossy Autoencoder. arXiv:1611.02731.
    """

    requires_reparameterized: ClassVar[bool] = True

    #: every model latent needs a guide site (its KL is per guide site): a site the model sums out is refused
    requires_guide_sites = True
    #: each site's KL in closed form (biased for a guide whose sites depend on other latents)
    analytic_kl = True

    def __init__(self, free_bits: float = 0.5, *, num_particles: int = 1, max_plate_nesting: float = float("inf")) -> None:
        if isinstance(free_bits, bool) or not isinstance(free_bits, (int, float)) or not math.isfinite(free_bits) \
                or free_bits < 0:
            raise ValueError(f"Expected free_bits to be a number >= 0 (nats per latent dimension), got {free_bits!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.free_bits = float(free_bits)

    def _kl_term(self, guide_site: dict, model_site: dict) -> torch.Tensor:
        kl = kl_per_group(guide_site, model_site)
        batch_shape = kl.shape[:-1]
        kl = kl.reshape(batch_shape.numel(), -1)
        if guide_site["mask"] is None:
            count = batch_shape.numel()
            per_dim = kl.mean(0)
        else:
            # masked points (a KL weight of 0 masks them all) count neither in the mean nor in the floor;
            # tensors throughout, so that a compiled step has no branch on the mask's value
            mask = torch.as_tensor(guide_site["mask"], device=kl.device).expand(batch_shape).reshape(-1, 1).to(kl.dtype)
            count = mask.sum()
            per_dim = (kl * mask).sum(0) / count.clamp_min(1)
        return guide_site["scale"] * count * per_dim.clamp_min(self.free_bits).sum()

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        objective = 0.0
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            if not site["fn"].has_rsample:
                raise ValueError(f"objective='free_bits' needs reparameterized guide sites; {name!r} is not")
            if name not in model_trace.nodes or model_trace.nodes[name]["is_observed"]:
                raise ValueError(f"objective='free_bits' needs guide site {name!r} to be a latent site of the model")
            objective = objective - self._kl_term(site, model_trace.nodes[name])
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and name not in guide_trace.nodes:
                if not site["is_observed"]:
                    raise ValueError(f"objective='free_bits' needs a guide site for model latent {name!r}")
                objective = objective + site["log_prob_sum"]
        # one surrogate: every term is pathwise (reparameterized z, analytic or pathwise KL)
        return -torch_item(objective), -objective

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return sum(self._differentiable_loss_particle(m, g)[0] for m, g in self._get_traces(model, guide, args, kwargs)) \
                / self.num_particles
