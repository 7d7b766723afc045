"""Time pyrovae's training step for the two-stochastic-layer VAE against hand-written PyTorch.

Network: Burda et al.'s two-layer model, 784-200-200-100 then 100-100-50, tanh, Bernoulli likelihood
on logits (:class:`pyrovae.models.hierarchical_vae.HierarchicalVAE`'s defaults), batch 128,
Adam(lr=1e-3) with the options ``fit`` uses, ``--threads`` threads.

Contenders, per step:

* ``hand ELBO`` -- a hand-written step: both layers sampled by reparameterization, the
  single-sample ELBO :math:`\\log p(x|z_1) + \\log p(z_1|z_2) + \\log p(z_2) - \\log q(z_1|x) - \\log q(z_2|z_1)`
  written with ``binary_cross_entropy_with_logits`` and Normal log densities;
* ``pyrovae elbo`` -- ``pyrovae.fit(HierarchicalVAE(), x, objective="elbo")`` (compiled by default);
* ``hand IWAE k=5`` / ``pyrovae iwae k=5`` -- the importance-weighted bound, vectorized over k.

Method (as ``benchmarks/train_step.py``): a contender's per-step time is the difference between a
run of E epochs and a run of 1 epoch on the same data, divided by the extra steps, so one-off set-up
(data checks, tracing) cancels; repetitions are interleaved and each ratio is the median of the
per-repetition ratios.

Run: ``python benchmarks/train_step_hierarchical.py [--reps 5] [--steps 50] [--epochs 3]``.
Target (issue 13): pyrovae elbo <= 1.15x the hand-written step, as for one layer.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

import pyrovae
from pyrovae.models.hierarchical_vae import HierarchicalVAE
from pyrovae.train import OPTIMIZERS, optimizer_options
from _timing import interleaved_ratios

X_DIM, Z1, Z2, BATCH = 784, 100, 50, 128
LOG_2PI = math.log(2 * math.pi)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def normal_log_prob(value, loc, scale):
    return (-0.5 * ((value - loc) / scale).pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)


class HandTwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1 = mlp([X_DIM, 200, 200, 2 * Z1])
        self.enc2 = mlp([Z1, 100, 100, 2 * Z2])
        self.dec2 = mlp([Z2, 100, 100, 2 * Z1])
        self.dec1 = mlp([Z1, 200, 200, X_DIM])

    @staticmethod
    def split(out):
        loc, raw = out.chunk(2, -1)
        return loc, F.softplus(raw) + 1e-5

    def log_weights(self, x, k: int | None):
        loc1, scale1 = self.split(self.enc1(x))
        shape = loc1.shape if k is None else (k,) + loc1.shape
        z1 = loc1 + scale1 * torch.randn(shape)
        loc2, scale2 = self.split(self.enc2(z1))
        z2 = loc2 + scale2 * torch.randn_like(loc2)
        prior_loc1, prior_scale1 = self.split(self.dec2(z2))
        logits = self.dec1(z1)
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_p = log_px + normal_log_prob(z1, prior_loc1, prior_scale1) + normal_log_prob(z2, 0.0 * z2, 1.0 + 0.0 * z2)
        return log_p - normal_log_prob(z1, loc1, scale1) - normal_log_prob(z2, loc2, scale2)

    def elbo_loss(self, x, num_data):
        return -self.log_weights(x, None).sum() * num_data / x.shape[0]

    def iwae_loss(self, x, num_data, k=5):
        log_w = self.log_weights(x, k)
        return -(torch.logsumexp(log_w, 0) - math.log(k)).sum() * num_data / x.shape[0]


def hand_loop(x, epochs, loss_name, optimizer_kwargs):
    model = HandTwoLayer()
    optim = torch.optim.Adam(model.parameters(), lr=1e-3, **optimizer_kwargs)
    loss_fn = getattr(model, loss_name)
    n = x.shape[0]
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(n).split(BATCH):
            optim.zero_grad(set_to_none=True)
            loss_fn(x[idx], n).backward()
            optim.step()
    return time.perf_counter() - start


def pyrovae_run(x, epochs, objective, num_particles=None):
    vae = HierarchicalVAE((X_DIM,))
    start = time.perf_counter()
    result = pyrovae.fit(vae, x, objective=objective, num_particles=num_particles, epochs=epochs, batch_size=BATCH,
                         lr=1e-3, progress=False, device="cpu")
    if result.eager_reason is not None:
        raise RuntimeError(f"expected a compiled step, ran eagerly: {result.eager_reason}")
    return time.perf_counter() - start


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the long run (the short run has 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="time only the ratios whose name contains this text")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(args.steps * BATCH, X_DIM))
    extra = (args.epochs - 1) * args.steps
    fit_kwargs = optimizer_options(OPTIMIZERS["adam"], device=torch.device("cpu"))
    contenders = {
        "hand ELBO": lambda e: hand_loop(x, e, "elbo_loss", fit_kwargs),
        "pyrovae elbo": lambda e: pyrovae_run(x, e, "elbo"),
        "hand IWAE k=5": lambda e: hand_loop(x, e, "iwae_loss", fit_kwargs),
        "pyrovae iwae k=5": lambda e: pyrovae_run(x, e, "iwae", 5),
    }
    pairs = {"pyrovae elbo / hand ELBO": ("pyrovae elbo", "hand ELBO"),
             "pyrovae iwae / hand IWAE (k=5)": ("pyrovae iwae k=5", "hand IWAE k=5")}
    return interleaved_ratios(contenders, pairs, only=args.only, reps=args.reps, epochs=args.epochs,
                              extra_steps=extra, title=f"two stochastic layers, {args.threads} threads")


if __name__ == "__main__":
    main()
