r"""The Rényi bound and IWAE with per-point weights that survive minibatch scaling."""

from __future__ import annotations

from pyrovae.objectives.importance import ImportanceELBO

__all__ = ["RenyiBound"]


class RenyiBound(ImportanceELBO):
    r"""The Rényi bound of order :math:`\alpha` (IWAE at :math:`\alpha = 0`), per data point.

    .. math::

        \mathcal L_\alpha(x_n) = \frac{1}{1-\alpha} \log \frac1K \sum_{k=1}^K
            \left(\frac{p_\theta(x_n, z_{n,k})}{q_\phi(z_{n,k} \mid x_n)}\right)^{1-\alpha},
        \qquad z_{n,k} \sim q_\phi(\cdot \mid x_n),

    a lower bound on :math:`\log p_\theta(x_n)` for :math:`\alpha \ge 0` that
    tightens as :math:`K` grows (Burda et al. 2016) and tends to the ELBO as
    :math:`\alpha \to 1` (``alpha=1`` is the ELBO averaged over K particles).

    Gradient: :math:`\sum_k \tilde w_{n,k} \nabla \log w_{n,k}` with
    :math:`\tilde w_{n,k} \propto w_{n,k}^{1-\alpha}` normalized over the
    particles of point :math:`n`; pathwise through reparameterized latents,
    plus :math:`\mathcal L_\alpha(x_n) \sum_k \nabla_\phi \log q_\phi(z_{n,k} \mid x_n)`
    for non-reparameterized ones (unbiased for :math:`\nabla \mathbb E[\mathcal L_\alpha]`).

    Why not :class:`pyro.infer.RenyiELBO`: it takes the log-sum-exp of
    log weights that already carry the minibatch scale :math:`N/B`, which
    tempers them to :math:`w^{N/B}`; under ``fit``'s minibatches its value is
    then not a bound and its gradient not the IWAE gradient.  Without a scale
    the two agree draw for draw.

    Condition: all sites local to the per-point plate (see
    :mod:`pyrovae.objectives.importance`).

    :param num_particles: :math:`K`.
    :param alpha: :math:`\alpha`; 0 is IWAE.
    :param max_plate_nesting: as in :class:`pyro.infer.ELBO`.

    Example::

        pyrovae.fit(vae, x, objective="iwae", num_particles=5)

    References:
      1. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. arXiv:1509.00519.
      2. Y. Li, R. E. Turner. Rényi Divergence Variational Inference. arXiv:1602.02311.
    """

    def __init__(self, num_particles: int = 5, *, alpha: float = 0.0, max_plate_nesting: float = float("inf")) -> None:
        super().__init__(num_particles, alpha=alpha, max_plate_nesting=max_plate_nesting)
