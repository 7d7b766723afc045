"""Train a small VAE on the built-in digits; run as a subprocess by test_train.py and test_distributed.py.

Saves the final state (module state_dict, history and, with ``--record``, every
minibatch the objective saw) to ``--result``.  ``{rank}`` in ``--out`` or
``--result`` is replaced by this process's ``RANK`` (0 when not under torchrun).

``--sleep`` slows every training step (the model sleeps before it runs) so that
a test can kill the run part-way through; it does not change any number.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO

import pyrovae


class SlowVAE(pyrovae.VAE):
    """A VAE whose model sleeps ``sleep`` seconds per call (wall time only), and
    whose data turn NaN from training step ``nan_step`` on (to test divergence)."""

    sleep = 0.0
    nan_step: int | None = None
    poisoned = False

    def training_kwargs(self, step: int) -> dict:
        self.poisoned = self.nan_step is not None and step >= self.nan_step
        return {}

    def model(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> torch.Tensor:
        if self.sleep:
            time.sleep(self.sleep)
        if self.poisoned:
            x = x * float("nan")
        return super().model(x, kl_weight=kl_weight)


class ConditionalVAE(torch.nn.Module):
    """A user's conditional VAE p(x | y) = ∫ p(z) p(x | y, z) dz, trained on ``(x, y)``, plate "points"."""

    def __init__(self, x_dim: int, y_dim: int) -> None:
        super().__init__()
        self.decoder = torch.nn.Linear(2 + y_dim, x_dim)
        self.encoder = torch.nn.Linear(x_dim + y_dim, 4)

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("conditional", self)
        with pyro.plate("points", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            logits = self.decoder(torch.cat([z, y], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("conditional", self)
        with pyro.plate("points", x.shape[0]):
            loc, raw = self.encoder(torch.cat([x, y], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-3).to_event(1))


class RecordingELBO(Trace_ELBO):
    """Trace_ELBO that keeps a copy of every training minibatch (fit calls loss_and_grads once a step)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def loss_and_grads(self, model, guide, *args, **kwargs):
        self.seen.append(args[0].detach().cpu().clone())
        return super().loss_and_grads(model, guide, *args, **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None)
    parser.add_argument("--result", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--nan-step", type=int, default=None, help="poison the data from this training step on")
    parser.add_argument("--nan-rank", type=int, default=None, help="poison only on this rank (default: all)")
    parser.add_argument("--model", choices=("slow_vae", "factor_vae", "conditional"), default="slow_vae",
                        help="factor_vae: a model with an auxiliary (discriminator) step; conditional: a user's "
                             "nn.Module trained on (x, y)")
    parser.add_argument("--stream", action="store_true", help="add a Stream of the first 100 points (x, y)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    rank = os.environ.get("RANK", "0")
    data = pyrovae.datasets.load("digits", binarize=True)
    torch.manual_seed(1234)  # the networks' initial weights (fit's seed covers the rest)
    streams = []
    if args.model == "conditional":
        x = data.x.reshape(len(data.x), -1)
        y = torch.nn.functional.one_hot(data.labels, 10).float()
        vae = ConditionalVAE(x.shape[1], 10)
        data = (x, y)
        if args.stream:
            streams = [pyrovae.Stream((x[:100], y[:100]), batch_size=32)]
    elif args.model == "factor_vae":
        vae = pyrovae.MODELS["factor_vae"](data.shape, z_dim=2, hidden=(32,), arch="mlp", discriminator_hidden=(16,))
    else:
        vae = SlowVAE(data.shape, z_dim=2, hidden=(32,), arch="mlp")
        vae.sleep = args.sleep
    if args.model == "slow_vae" and (args.nan_rank is None or args.nan_rank == int(rank)):
        vae.nan_step = args.nan_step
    objective = RecordingELBO() if args.record else "elbo"
    options = dict(
        objective=objective,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device="cpu",
        out=args.out.format(rank=rank) if args.out else None,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        progress=False,
        streams=streams,
    )
    try:
        result = pyrovae.fit(vae, data, **options)
    except pyrovae.TrainingDiverged as e:
        torch.save({"diverged": str(e)}, args.result.format(rank=rank))
        sys.exit(3)
    torch.save(
        {
            "state": {k: v.detach().clone() for k, v in vae.state_dict().items()},
            "history": result.history,
            "step": result.step,
            "seen": objective.seen if args.record else [],
            "distributed": result.distributed,
            "eager_reason": result.eager_reason,
        },
        args.result.format(rank=rank),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
