"""Model variants: one file, one class, one line in :data:`MODELS`.

The key of each entry is the file's stem.  ``MODELS[name](**model.config)``
rebuilds a model from its recorded constructor arguments.
"""

from __future__ import annotations

from pyrovae.models.beta_tcvae import BetaTCVAE
from pyrovae.models.beta_vae import BetaVAE
from pyrovae.models.capacity_vae import CapacityVAE
from pyrovae.models.dip_vae import DIPVAE
from pyrovae.models.discrete_vae import DiscreteVAE
from pyrovae.models.factor_vae import FactorVAE
from pyrovae.models.pixel_vae import PixelVAE
from pyrovae.models.gmm_vae import GMMVAE
from pyrovae.models.hierarchical_vae import HierarchicalVAE
from pyrovae.models.ss_vae import SSVAE
from pyrovae.models.vae import VAE
from pyrovae.models.vq_vae import VQVAE
from pyrovae.models.vq_vae2 import VQVAE2

__all__ = ["MODELS", "VAE", "BetaVAE", "BetaTCVAE", "CapacityVAE", "DIPVAE", "DiscreteVAE", "FactorVAE", "PixelVAE", "GMMVAE", "VQVAE", "VQVAE2", "HierarchicalVAE", "SSVAE", "make_model"]

MODELS: dict[str, type[VAE]] = {
    "vae": VAE,
    "beta_vae": BetaVAE,
    "capacity_vae": CapacityVAE,
    "factor_vae": FactorVAE,
    "beta_tcvae": BetaTCVAE,
    "dip_vae": DIPVAE,
    "pixel_vae": PixelVAE,
    "gmm_vae": GMMVAE,
    "discrete_vae": DiscreteVAE,
    "vq_vae": VQVAE,
    "vq_vae2": VQVAE2,
    "hierarchical_vae": HierarchicalVAE,
    "ss_vae": SSVAE,
}


def make_model(name: str, **kwargs) -> VAE:
    """Construct the model registered as ``name``."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"Expected model in {sorted(MODELS)}, got {name!r}") from None
    return cls(**kwargs)
