r"""The inference gap of a VAE, split into approximation and amortization gaps (Cremer et al. 2018).

For a data point :math:`x`, the encoder's :math:`q_\phi(z \mid x)` falls short of
:math:`\log p_\theta(x)` by

.. math::

    \underbrace{\log p(x) - \mathcal L[q_\phi]}_{\text{inference gap}}
    = \underbrace{\log p(x) - \mathcal L[q^*]}_{\text{approximation gap}}
    + \underbrace{\mathcal L[q^*] - \mathcal L[q_\phi]}_{\text{amortization gap}},

where :math:`q^*` is the best member of the guide's family for this one
point.  :func:`amortization_gap` finds :math:`q^*` by non-amortized SVI: it
starts each point's distribution parameters at the encoder's output and
follows the sticking-the-landing ELBO gradient for ``num_steps`` Adam steps,
the decoder fixed.  The ELBOs are Monte Carlo estimates with
``num_eval_samples`` draws per point, the same noise for both guides (so their
difference, the amortization gap, is estimated as a paired difference); :math:`\log p(x)` is given, or estimated
by importance sampling with ``num_iwae_samples`` draws from :math:`q^*`
(:func:`pyrovae.metrics.likelihood.log_likelihood` with the refined guide; an
IWAE bound in expectation, so the approximation gap is then under-estimated
by at most the IWAE gap).

References:
  1. C. Cremer, X. Li, D. Duvenaud. Inference Suboptimality in Variational
     Autoencoders. arXiv:1801.03558.
  2. G. Roeder, Y. Wu, D. Duvenaud. Sticking the Landing. arXiv:1703.09194.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from torch.distributions import Independent, transform_to

from pyrovae.metrics.likelihood import log_likelihood
from pyrovae.objectives.importance import ImportanceELBO
from pyrovae.objectives.stl import StickingTheLanding
from pyrovae.programs import ProgramError, Structure, as_data, inspect_pair, resolve_programs

__all__ = ["AmortizationGap", "amortization_gap"]


@dataclasses.dataclass
class AmortizationGap:
    """Per-point averages in nats (``str()`` is a small table).

    :ivar log_px: :math:`\\log p(x)`.
    :ivar elbo_amortized: :math:`\\mathcal L[q_\\phi]`, the encoder's ELBO.
    :ivar elbo_refined: :math:`\\mathcal L[q^*]`, after per-point SVI.
    :ivar approximation_gap: ``log_px - elbo_refined``.
    :ivar amortization_gap: ``elbo_refined - elbo_amortized``.
    :ivar inference_gap: ``log_px - elbo_amortized``.
    :ivar standard_errors: Monte Carlo standard errors of the three estimates and the gaps.
    :ivar per_point: the per-point ``log_px``, ``elbo_amortized`` and ``elbo_refined``.
    :ivar log_px_source: ``"given"`` or how it was estimated.
    """

    log_px: float
    elbo_amortized: float
    elbo_refined: float
    approximation_gap: float
    amortization_gap: float
    inference_gap: float
    standard_errors: dict[str, float]
    per_point: dict[str, torch.Tensor]
    log_px_source: str
    num_steps: int

    def __str__(self) -> str:
        se = self.standard_errors
        rows = [
            ("log p(x)", self.log_px, se["log_px"]),
            ("ELBO, encoder q", self.elbo_amortized, se["elbo_amortized"]),
            (f"ELBO, refined q* ({self.num_steps} steps)", self.elbo_refined, se["elbo_refined"]),
            ("approximation gap", self.approximation_gap, se["approximation_gap"]),
            ("amortization gap", self.amortization_gap, se["amortization_gap"]),
            ("inference gap", self.inference_gap, se["inference_gap"]),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"{name.ljust(width)}  {value:10.3f} ± {err:.3f}" for name, value, err in rows]
        return "\n".join([*lines, f"(nats per data point; log p(x): {self.log_px_source})"])


def _family(q: Any) -> tuple[Callable[[dict[str, torch.Tensor]], Any], dict[str, torch.Tensor], dict[str, Any]]:
    """How to rebuild ``q`` from its parameters: (rebuild, parameters, constraints)."""
    ndims, base = 0, q
    while isinstance(base, Independent):
        ndims += base.reinterpreted_batch_ndims
        base = base.base_dist
    names = [k for k in base.arg_constraints if k in vars(base)]
    if not names or not getattr(base, "has_rsample", False):
        raise ValueError(
            f"amortization_gap refines q(z|x) through its parameters, which needs a reparameterized distribution "
            f"storing its arg_constraints as attributes (Normal, Laplace, StudentT, ...); got {type(base).__name__}"
        )
    family = type(base)

    def rebuild(params: dict[str, torch.Tensor]) -> Any:
        d = family(**params, validate_args=False)
        return d.to_event(ndims) if ndims else d

    return rebuild, {k: getattr(base, k).detach() for k in names}, {k: base.arg_constraints[k] for k in names}


def _check_contract(vae: Any, x: torch.Tensor) -> Structure:
    """The VAE contract this function relies on, from the pair's structure."""
    for name in ("model", "guide", "posterior"):
        if not callable(getattr(vae, name, None)):
            raise TypeError(
                f"amortization_gap needs a pyrovae model (model, guide and posterior(x) methods); "
                f"{type(vae).__name__} has no {name}()"
            )
    programs = resolve_programs(vae)
    with poutine.block():
        structure = inspect_pair(programs, as_data(x, "data"), programs.kwargs(1.0), what="amortization_gap")
    structure.require_local("amortization_gap")
    structure.require_vectorized("amortization_gap")
    if list(structure.guide_latents) != ["z"] or list(structure.local_latents) != ["z"]:
        raise ProgramError(
            f"amortization_gap refines q(z|x) = posterior(x) at the guide's one latent site 'z' in the per-point "
            f"plate {structure.data_plate!r}; this guide has latent sites {list(structure.guide_latents)}"
        )
    return structure


def amortization_gap(
    vae: Any,
    data: Any,
    *,
    num_steps: int = 300,
    lr: float = 1e-2,
    num_particles: int = 10,
    num_eval_samples: int = 100,
    log_px: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    num_iwae_samples: int = 1000,
    batch_size: int = 256,
    seed: int = 0,
) -> AmortizationGap:
    r"""Split :math:`\log p(x) - \mathcal L[q_\phi]` into approximation and amortization gaps.

    :param vae: a pyrovae model: ``posterior(x)`` is :math:`q_\phi(z \mid x)` at the
        guide's one latent site ``"z"`` in the plate ``"data"``, reparameterized,
        with parameters stored as its ``arg_constraints`` (a diagonal Normal, say).
    :param data: a tensor ``(N, ...)`` or a pyrovae ``DataSet`` (every point is used).
    :param num_steps: Adam steps of per-point SVI (learning rate decays linearly to 0).
    :param lr: Adam's initial learning rate on the unconstrained parameters.
    :param num_particles: draws per point per SVI step (STL gradient).
    :param num_eval_samples: draws per point for each ELBO estimate.
    :param log_px: exact or better :math:`\log p(x)` per point, as a tensor ``(N,)``
        or a callable ``data -> (N,)``; default: importance sampling with
        ``num_iwae_samples`` draws from the refined :math:`q^*`.
    :param num_iwae_samples: draws per point for the default :math:`\log p(x)`.
    :param batch_size: points refined at once.
    :param seed: seeds the draws; the global RNG state is restored after.
    :returns: an :class:`AmortizationGap`.

    The model's parameters are not changed and get no gradients.

    Example::

        gap = pyrovae.amortization_gap(vae, x_test[:500])
        print(gap)   # Cremer et al. report amortization gaps of ~2-4 nats on MNIST
    """
    for name, value in (("num_steps", num_steps), ("num_particles", num_particles),
                        ("num_eval_samples", num_eval_samples), ("num_iwae_samples", num_iwae_samples),
                        ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "num_steps" else 1):
            raise ValueError(f"Expected {name} to be an int >= {0 if name == 'num_steps' else 1}, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"Expected lr > 0, got {lr!r}")
    x = getattr(data, "x", data)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected data to be a torch.Tensor (N, ...) or a pyrovae DataSet, got {type(data).__name__}")
    if callable(getattr(vae, "validate_data", None)):
        vae.validate_data(x, "data")
    device = next(iter(vae.parameters())).device if isinstance(vae, torch.nn.Module) else x.device
    x = x.to(device)
    given = None
    if log_px is not None:
        given = torch.as_tensor(log_px(x) if callable(log_px) else log_px).detach().to(device, torch.float64).reshape(-1)
        if given.shape[0] != x.shape[0]:
            raise ValueError(f"Expected log_px with one value per data point ({x.shape[0]}), got shape {tuple(given.shape)}")

    cuda = [device] if device.type == "cuda" else []
    parts: dict[str, list[torch.Tensor]] = {"elbo_amortized": [], "elbo_refined": [], "log_px": [],
                                             "var_amortized": [], "var_refined": [], "var_log_px": [],
                                             "var_difference": []}
    with torch.random.fork_rng(devices=cuda), pyro.validation_enabled(False):
        torch.manual_seed(seed)
        structure = _check_contract(vae, x[:3])
        nesting = max(structure.max_plate_nesting, 1) + 1
        evaluate = ImportanceELBO(num_eval_samples, alpha=1.0, max_plate_nesting=nesting,
                                  data_plate=structure.data_plate)
        refine = StickingTheLanding(num_particles, alpha=1.0, max_plate_nesting=nesting)
        refine.data_plate = structure.data_plate
        for index, xb in enumerate(x.split(batch_size)):
            eval_seed = seed + 1 + index  # common random numbers for the two ELBOs: a paired difference
            with torch.no_grad():
                torch.manual_seed(eval_seed)
                lw_amortized = evaluate.log_weights(vae.model, vae.guide, xb).double()
                parts["elbo_amortized"].append(lw_amortized.mean(0))
                parts["var_amortized"].append(lw_amortized.var(0) / num_eval_samples)
                rebuild, init, constraints = _family(vae.posterior(xb))
            free = {k: transform_to(constraints[k]).inv(v).clone().requires_grad_() for k, v in init.items()}

            def guide(xg: torch.Tensor, **_: Any) -> None:
                params = {k: transform_to(constraints[k])(u) for k, u in free.items()}
                with pyro.plate(structure.data_plate, xg.shape[0]):
                    pyro.sample("z", rebuild(params))

            optim = torch.optim.Adam(list(free.values()), lr=lr)
            schedule = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: 1.0 - step / max(num_steps, 1))
            for _ in range(num_steps):
                # points are independent, so one summed loss refines each point's own parameters
                loss = refine.differentiable_loss(vae.model, guide, xb)
                grads = torch.autograd.grad(loss, list(free.values()))
                for u, g in zip(free.values(), grads):
                    u.grad = g
                optim.step()
                schedule.step()
            with torch.no_grad():
                torch.manual_seed(eval_seed)
                lw = evaluate.log_weights(vae.model, guide, xb).double()
                parts["elbo_refined"].append(lw.mean(0))
                parts["var_refined"].append(lw.var(0) / num_eval_samples)
                parts["var_difference"].append((lw - lw_amortized).var(0) / num_eval_samples)
                if given is None:  # importance sampling with q* as the proposal
                    # the refined guide holds one parameter per point of this batch: keep the batch whole
                    estimate = log_likelihood((vae.model, guide), xb, num_samples=num_iwae_samples,
                                              batch_size=xb.shape[0], bounds=(), seed=eval_seed,
                                              data_plate=structure.data_plate)
                    parts["log_px"].append(estimate.log_px.to(device))
                    parts["var_log_px"].append(estimate.stderr.to(device).pow(2))
    amortized, refined = torch.cat(parts["elbo_amortized"]), torch.cat(parts["elbo_refined"])
    if given is None:
        lpx, var_lpx = torch.cat(parts["log_px"]), torch.cat(parts["var_log_px"])
        source = f"importance sampling, {num_iwae_samples} draws from the refined q*"
    else:
        lpx, var_lpx, source = given, torch.zeros_like(given), "given"
    n = x.shape[0]
    var = {"elbo_amortized": torch.cat(parts["var_amortized"]).sum() / n**2,
           "elbo_refined": torch.cat(parts["var_refined"]).sum() / n**2,
           "log_px": var_lpx.sum() / n**2}
    se = {k: float(v.sqrt()) for k, v in var.items()}
    se["approximation_gap"] = math.hypot(se["log_px"], se["elbo_refined"])
    se["amortization_gap"] = float((torch.cat(parts["var_difference"]).sum() / n**2).sqrt())
    se["inference_gap"] = math.hypot(se["log_px"], se["elbo_amortized"])
    m = {"log_px": float(lpx.mean()), "elbo_amortized": float(amortized.mean()), "elbo_refined": float(refined.mean())}
    return AmortizationGap(
        log_px=m["log_px"],
        elbo_amortized=m["elbo_amortized"],
        elbo_refined=m["elbo_refined"],
        approximation_gap=m["log_px"] - m["elbo_refined"],
        amortization_gap=m["elbo_refined"] - m["elbo_amortized"],
        inference_gap=m["log_px"] - m["elbo_amortized"],
        standard_errors=se,
        per_point={"log_px": lpx.cpu(), "elbo_amortized": amortized.cpu(), "elbo_refined": refined.cpu()},
        log_px_source=source,
        num_steps=num_steps,
    )
