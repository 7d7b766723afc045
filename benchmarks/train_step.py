"""Time pyrovae's training step against hand-written PyTorch, in one process.

Network: 784-400-20 MLP VAE, Bernoulli likelihood on logits, batch 128, Adam(lr=1e-3), 2 threads.

Measured per step (median over interleaved repetitions, so machine noise hits every contender alike):

* ``hand ELBO``  -- hand-written step: closed-form KL, ``binary_cross_entropy_with_logits``.
* ``pyrovae elbo`` -- ``pyrovae.fit(vae, x, objective="elbo")``: Pyro's ``Trace_ELBO``.
* ``pyro SVI``   -- plain ``pyro.infer.SVI`` with ``Trace_ELBO`` and ``pyro.optim.Adam`` (for reference).
* ``user pair``  -- ``pyrovae.fit`` on a user's own ``nn.Module`` with ``model``/``guide`` written the
  way Pyro's VAE example writes them (plate ``"obs"``, ``dist.Bernoulli(logits=...)``, Monte Carlo
  KL), compiled by default once it passes the checks for classes outside pyrovae, and eagerly
  (``jit=False``): the product's first use.
* ``hand IWAE``  -- hand-written K=5 importance-weighted bound, vectorized over K.
* ``pyrovae iwae`` -- ``pyrovae.fit(..., objective="iwae", num_particles=5)``: pyrovae's per-point IWAE bound.

``fit`` compiles its step by default (:class:`pyrovae.objectives.compiled.Compiled`); the ``jit=False``
rows time the same objectives run eagerly, through Pyro's effect handlers at every step.

``fit``'s per-step time is the difference between a run of E epochs and a run of 1 epoch on the same
data, divided by the extra steps, so its one-off set-up (data checks, tracing) cancels out; the
hand-written loops are timed the same way.  Every contender uses the optimizer ``fit`` uses, so the
ratio measures the step, not a choice of optimizer implementation; the hand-written step with
PyTorch's default (single-tensor) Adam is printed too.

Each ratio is the median over repetitions of that repetition's ratio (the two contenders ran
back to back, so a burst of machine load hits both).

Run: ``python benchmarks/train_step.py [--reps 5] [--steps 100] [--epochs 4] [--only "user pair"]``.
Targets (issues 2 and 10): pyrovae elbo, and fit on a user pair, <= 1.15x hand ELBO; pyrovae iwae
<= 1.15x hand IWAE.
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

import pyrovae
from pyrovae.train import OPTIMIZERS, optimizer_options
from _timing import interleaved_ratios

X_DIM, Z_DIM, HIDDEN, BATCH = 784, 20, 400, 128


class HandVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(X_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * Z_DIM))
        self.dec = nn.Sequential(nn.Linear(Z_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, X_DIM))

    def encode(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        return loc, F.softplus(raw) + 1e-5

    def elbo_loss(self, x, num_data):
        loc, scale = self.encode(x)
        z = loc + scale * torch.randn_like(loc)
        rec = F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="sum")
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1).sum() - scale.log().sum()
        return (rec + kl) * num_data / x.shape[0]

    def iwae_loss(self, x, num_data, k=5):
        loc, scale = self.encode(x)
        eps = torch.randn((k,) + loc.shape)
        z = loc + scale * eps
        log_px = -F.binary_cross_entropy_with_logits(self.dec(z), x.expand((k,) + x.shape), reduction="none").sum(-1)
        log_pz = -0.5 * z.pow(2).sum(-1)
        log_qz = -0.5 * eps.pow(2).sum(-1) - scale.log().sum(-1)
        log_w = log_px + log_pz - log_qz  # the 2π constants cancel between p(z) and q(z|x)
        return -(torch.logsumexp(log_w, 0) - math.log(k)).sum() * num_data / x.shape[0]


class UserVAE(nn.Module):
    """A VAE as a Pyro user writes one: networks as attributes, model and guide as methods."""

    def __init__(self) -> None:
        super().__init__()
        self.hand = HandVAE()

    def model(self, x):
        pyro.module("user_vae", self)
        with pyro.plate("obs", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("pixels", dist.Bernoulli(logits=self.hand.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("user_vae", self)
        with pyro.plate("obs", x.shape[0]):
            loc, scale = self.hand.encode(x)
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))


def user_run(x, epochs, jit=None):
    pyro.clear_param_store()
    start = time.perf_counter()
    result = pyrovae.fit(UserVAE(), x, epochs=epochs, batch_size=BATCH, lr=1e-3, progress=False, device="cpu",
                         jit=jit)
    if jit is None and result.eager_reason is not None:
        raise RuntimeError(f"expected the user pair's step compiled, ran eagerly: {result.eager_reason}")
    return time.perf_counter() - start


def hand_loop(x, epochs, loss_name, optimizer_kwargs):
    model = HandVAE()
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


def pyrovae_run(x, epochs, objective, num_particles=None, jit=None):
    vae = pyrovae.VAE((X_DIM,), Z_DIM, hidden=(HIDDEN,))
    start = time.perf_counter()
    result = pyrovae.fit(vae, x, objective=objective, num_particles=num_particles, epochs=epochs, batch_size=BATCH,
                         lr=1e-3, progress=False, device="cpu", jit=jit)
    if jit is None and result.eager_reason is not None:
        raise RuntimeError(f"expected a compiled step, ran eagerly: {result.eager_reason}")
    return time.perf_counter() - start


def svi_run(x, epochs):
    pyro.clear_param_store()
    vae = pyrovae.VAE((X_DIM,), Z_DIM, hidden=(HIDDEN,))
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    n = x.shape[0]
    scaled_model = pyrovae.plate_scale("data", n / BATCH)(vae.model)
    scaled_guide = pyrovae.plate_scale("data", n / BATCH)(vae.guide)
    svi = pyro.infer.SVI(scaled_model, scaled_guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(n).split(BATCH):
            svi.step(x[idx])
    return time.perf_counter() - start


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the long run (the short run has 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="time only the ratios whose name contains this text")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(args.steps * BATCH, X_DIM))
    extra = (args.epochs - 1) * args.steps
    fit_kwargs = optimizer_options(OPTIMIZERS["adam"], device=torch.device("cpu"))

    contenders = {
        "hand ELBO (same Adam as fit)": lambda e: hand_loop(x, e, "elbo_loss", fit_kwargs),
        "hand ELBO (default Adam)": lambda e: hand_loop(x, e, "elbo_loss", {}),
        "pyrovae elbo": lambda e: pyrovae_run(x, e, "elbo"),
        "pyrovae elbo, jit=False": lambda e: pyrovae_run(x, e, "elbo", jit=False),
        "pyro SVI + Trace_ELBO": lambda e: svi_run(x, e),
        "pyrovae elbo, user pair": lambda e: user_run(x, e),
        "pyrovae elbo, user pair, jit=False": lambda e: user_run(x, e, jit=False),
        "hand IWAE k=5 (same Adam as fit)": lambda e: hand_loop(x, e, "iwae_loss", fit_kwargs),
        "pyrovae iwae k=5": lambda e: pyrovae_run(x, e, "iwae", 5),
        "pyrovae iwae k=5, jit=False": lambda e: pyrovae_run(x, e, "iwae", 5, jit=False),
    }
    pairs = {
        "pyrovae elbo / hand ELBO (same Adam)": ("pyrovae elbo", "hand ELBO (same Adam as fit)"),
        "pyrovae elbo / hand ELBO (default Adam)": ("pyrovae elbo", "hand ELBO (default Adam)"),
        "pyrovae elbo jit=False / hand ELBO (same Adam)": ("pyrovae elbo, jit=False", "hand ELBO (same Adam as fit)"),
        "pyro SVI / hand ELBO (default Adam)": ("pyro SVI + Trace_ELBO", "hand ELBO (default Adam)"),
        "pyrovae user pair / hand ELBO (same Adam)": ("pyrovae elbo, user pair", "hand ELBO (same Adam as fit)"),
        "pyrovae user pair jit=False / hand ELBO (same Adam)": ("pyrovae elbo, user pair, jit=False",
                                                                 "hand ELBO (same Adam as fit)"),
        "pyrovae iwae / hand IWAE (same Adam)": ("pyrovae iwae k=5", "hand IWAE k=5 (same Adam as fit)"),
        "pyrovae iwae jit=False / hand IWAE (same Adam)": ("pyrovae iwae k=5, jit=False",
                                                           "hand IWAE k=5 (same Adam as fit)"),
    }
    return interleaved_ratios(contenders, pairs, only=args.only, reps=args.reps, epochs=args.epochs,
                              extra_steps=extra, title=f"784-400-20 VAE, {args.threads} threads")


if __name__ == "__main__":
    main()
