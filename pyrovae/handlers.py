"""Effect handlers used by models and the trainer.

* :func:`kl_scale` -- the β / KL weight on latent sites.  Applied with the same
  weight to a latent site in *both* model and guide, it multiplies that site's
  contribution ``log p(z) - log q(z|x)`` to the ELBO, i.e. the KL term.  Pyro's
  :func:`~pyro.poutine.scale` refuses 0, which is where KL warm-up starts, so a
  weight of 0 becomes ``poutine.mask(mask=False)``: the site is still sampled
  (and reparameterized gradients still flow through it) but scores nothing.
  A 0-dim tensor weight (what a compiled training step passes, so that an
  annealing schedule does not recompile) scales and masks with tensors, with
  no Python branch on its value.
* :class:`plate_scale` -- multiplies the score of every site inside the plate
  called ``name`` by ``scale``.  The trainer uses it with ``N / B`` so that a
  minibatch ELBO is an unbiased estimate of the full data set's ELBO for *any*
  model/guide pair, on the per-point plate that :func:`pyrovae.programs.inspect_pair`
  finds in the program (whatever its name); sites outside that plate (global
  latents) are left alone, as they should be.
* :func:`surrogate_factor` -- a term of a training objective that is no density
  (VQ-VAE's commitment loss, Jang et al.'s discrete KL), added in a guide and
  marked ``infer={"surrogate": True}``: ``Trace_ELBO`` and ``TraceMeanField_ELBO``
  add it to the loss as written; every other objective and every evaluation
  refuses the program naming the site (:func:`pyrovae.programs.check_objective`)
  rather than read it as part of log q (an importance weight, or RWS's wake-φ
  step, which would *raise* a penalty).
"""

from __future__ import annotations

import contextlib
import math

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

__all__ = ["kl_scale", "plate_scale", "surrogate_factor"]


def kl_scale(weight: float | torch.Tensor) -> contextlib.AbstractContextManager:
    """Context that weights the latent sites sampled inside it by ``weight >= 0``."""
    if isinstance(weight, torch.Tensor):
        if weight.dim() != 0:
            raise ValueError(f"Expected kl_weight to be a number or a 0-dim tensor, got shape {tuple(weight.shape)}")
        return _TensorWeight(weight)
    weight = float(weight)
    if weight == 1.0:
        return contextlib.nullcontext()
    if weight == 0.0:
        return poutine.mask(mask=False)
    if not (weight > 0 and math.isfinite(weight)):
        raise ValueError(f"Expected kl_weight >= 0 and finite, got {weight}")
    return poutine.scale(scale=weight)


class _TensorWeight(Messenger):
    """``kl_scale`` for a tensor weight: scale by it and mask where it is 0 (same values as the float path)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight
        self.positive = weight > 0

    def _process_message(self, msg) -> None:
        msg["scale"] = self.weight * msg["scale"]
        msg["mask"] = self.positive if msg["mask"] is None else msg["mask"] & self.positive


class plate_scale(Messenger):
    """Scale every site inside the plate named ``name`` by ``scale``.

    :param name: the plate's name (``fit`` passes the per-point plate it found).
    :param scale: a positive number, typically ``num_data / batch_size``.
    """

    def __init__(self, name: str = "data", scale: float = 1.0) -> None:
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"Expected scale > 0 and finite, got {scale}")
        super().__init__()
        self.name = name
        self.scale = float(scale)

    def _process_message(self, msg) -> None:
        if msg["type"] in ("sample", "param") and any(f.name == self.name for f in msg["cond_indep_stack"]):
            msg["scale"] = self.scale * msg["scale"]


def surrogate_factor(name: str, penalty: torch.Tensor) -> None:
    """Add ``penalty`` to a guide's loss as the site ``name``: ``pyro.factor(name, penalty, has_rsample=True)``
    marked ``infer={"surrogate": True}``.  A guide factor counts as log q, i.e. it is subtracted from the
    ELBO, so a penalty enters with ``+``; it is scaled by the handlers around it (a β, a plate's N/B)."""
    with poutine.infer_config(config_fn=_surrogate):
        pyro.factor(name, penalty, has_rsample=True)


def _surrogate(msg: dict) -> dict:
    return {"surrogate": True}
