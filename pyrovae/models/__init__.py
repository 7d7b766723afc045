"""Model variants: one file, one class, one line in :data:`MODELS`.

The key of each entry is the file's stem.  ``MODELS[name](**model.config)``
rebuilds a model from its recorded constructor arguments.
"""

from __future__ import annotations

from pyrovae.models.beta_tcvae import BetaTCVAE
from pyrovae.models.beta_vae import BetaVAE
from pyrovae.models.capacity_vae import CapacityVAE
from pyrovae.models.dip_vae import DIPVAE
from pyrovae.models.factor_vae import FactorVAE
from pyrovae.models.vae import VAE

__all__ = ["MODELS", "VAE", "BetaVAE", "BetaTCVAE", "CapacityVAE", "DIPVAE", "FactorVAE", "make_model"]

MODELS: dict[str, type[VAE]] = {
    "vae": VAE,
    "beta_vae": BetaVAE,
    "capacity_vae": CapacityVAE,
    "factor_vae": FactorVAE,
    "beta_tcvae": BetaTCVAE,
    "dip_vae": DIPVAE,
}


def make_model(name: str, **kwargs) -> VAE:
    """Construct the model registered as ``name``."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"Expected model in {sorted(MODELS)}, got {name!r}") from None
    return cls(**kwargs)
