"""log_likelihood and the plots through a conv net: rows per model call against wall and system time.

:func:`pyrovae.log_likelihood` evaluates ``batch_size`` points times
``chunk_size`` importance samples per model call.  This script builds the
demo's conv model (:data:`pyrovae.cli.DEMO`, untrained: the time does not
depend on the weights) on ``--points`` random 64x64 sprites, and the 784-400-20
MLP VAE on as many random 28x28 binary images, and estimates log p(x) with
``--samples`` importance samples at several decoder rows per call (``--rows``),
interleaved ``--repeats`` times in one process.  It prints each setting's best
wall time, the system (kernel) CPU time of that run, its minor page faults, and
the time relative to the fastest setting of the same model.  ``default`` is
what ``log_likelihood`` chooses by itself.  Then the same for
:func:`pyrovae.plots.kl_per_dimension` on ``--images`` sprites: its default
against its former fixed 1000 images per encoder call.

System time with many page faults is the allocator mapping, faulting in and
unmapping a call's temporaries (see ``benchmarks/encode_calls.py``): a call's
size must follow the bytes its activations take, not a count of rows.

Usage::

    python benchmarks/likelihood_calls.py           # about two minutes on 2 CPU cores
    python benchmarks/likelihood_calls.py --smoke   # seconds
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

import pyrovae
from pyrovae import datasets
from pyrovae.cli import DEMO
from pyrovae.models import make_model
from pyrovae.plots import kl_per_dimension


def estimate(vae: torch.nn.Module, x: torch.Tensor, samples: int, rows: int | None) -> tuple[float, float, int]:
    """One log_likelihood run: (wall seconds, system seconds, minor page faults)."""
    options = {}
    if rows is not None:  # rows = points per call x samples per call
        batch = min(rows, x.shape[0])
        options = {"batch_size": batch, "chunk_size": max(1, rows // batch)}
    return measured(lambda: pyrovae.log_likelihood(vae, x, num_samples=samples, seed=0, **options))


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.points, args.samples, args.repeats, args.rows, args.images = 8, 16, 1, [64, 128], 64
    torch.manual_seed(args.seed)
    data = datasets.load(DEMO.dataset, "train", **{**DEMO.dataset_options, "num_train": 64})
    truth = data.info["factors"]
    sprites = truth.images(truth.sample_factors(args.points, torch.Generator().manual_seed(args.seed)))
    conv = make_model(DEMO.model, x_shape=tuple(sprites.shape[1:]), **DEMO.model_options).eval()
    digits = torch.bernoulli(torch.rand(args.points, 784))
    mlp = pyrovae.VAE((784,), 20, hidden=(400,)).eval()
    print(f"{args.points} points, {args.samples} importance samples; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    settings: list[int | None] = [None, *args.rows]
    for name, vae, x in (("conv decoder, 64x64 sprites", conv, sprites), ("784-400-20 MLP", mlp, digits)):
        estimate(vae, x[:2], 4, None)  # warm-up
        best = {rows: (float("inf"), 0.0, 0) for rows in settings}
        for _ in range(args.repeats):  # interleaved, so every setting sees the same machine load
            for rows in settings:
                run = estimate(vae, x, args.samples, rows)
                if run[0] < best[rows][0]:
                    best[rows] = run
        fastest = min(wall for wall, _, _ in best.values())
        print(f"{name}\n{'rows per call':>16}{'wall s':>9}{'system s':>10}{'page faults':>13}{'vs fastest':>12}")
        for rows, (wall, system, faults) in best.items():
            label = "default" if rows is None else str(rows)
            print(f"{label:>16}{wall:>9.3f}{system:>10.3f}{faults:>13}{wall / fastest:>11.2f}x")
    images = truth.images(truth.sample_factors(args.images, torch.Generator().manual_seed(args.seed + 1)))
    best = {size: (float("inf"), 0.0, 0) for size in (None, 1000)}
    for _ in range(args.repeats):
        for size in best:
            run = measured(lambda: kl_per_dimension(conv, images, batch_size=size))
            if run[0] < best[size][0]:
                best[size] = run
    fastest = min(wall for wall, _, _ in best.values())
    print(f"plots.kl_per_dimension, {args.images} sprites\n{'images per call':>16}{'wall s':>9}{'system s':>10}"
          f"{'page faults':>13}{'vs fastest':>12}")
    for size, (wall, system, faults) in best.items():
        label = "default" if size is None else str(size)
        print(f"{label:>16}{wall:>9.3f}{system:>10.3f}{faults:>13}{wall / fastest:>11.2f}x")
    print(f"best of {args.repeats} interleaved runs in one process; system time and page faults are of that run")


def measured(call) -> tuple[float, float, int]:
    """(wall seconds, system seconds, minor page faults) of ``call()``."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    call()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return wall, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--images", type=int, default=4000, help="sprites for kl_per_dimension")
    parser.add_argument("--rows", type=lambda s: [int(n) for n in s.split(",")], default=[64, 128, 512, 4096],
                        help="decoder rows per call, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--smoke", action="store_true", help="a few points, one run: seconds")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
