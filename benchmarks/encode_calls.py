"""Encoding sprites through the demo's conv encoder: images per call against wall and system time.

The disentanglement metrics encode their images ``images_per_call`` at a time
(:func:`pyrovae.metrics.base.represent_factors`).  This script builds the
demo's model (:data:`pyrovae.cli.DEMO`, untrained: the time does not depend on
the weights), renders ``--images`` random 64x64 sprites once, and encodes them
(``vae.posterior(x).mean``, under ``torch.no_grad``) in calls of each size of
``--sizes``, interleaved ``--repeats`` times in one process; it prints the best
wall time of each size, the system (kernel) CPU time of that run from
:func:`resource.getrusage`, the page faults, and each size's time relative to
the fastest.  System time with many minor page faults is the allocator: a
temporary above glibc's mmap threshold is mapped fresh, its pages faulted in
and zeroed by the kernel, and unmapped again at every call.

Usage::

    python benchmarks/encode_calls.py               # about a minute on 2 CPU cores
    python benchmarks/encode_calls.py --smoke       # seconds
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

from pyrovae import datasets
from pyrovae.cli import DEMO
from pyrovae.models import make_model


def encode(vae: torch.nn.Module, images: torch.Tensor, per_call: int) -> tuple[float, float, int]:
    """Encode ``images`` ``per_call`` at a time: (wall seconds, system seconds, minor page faults)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, images.shape[0], per_call):
            codes = vae.posterior(images[first : first + per_call]).mean
            del codes  # each call's codes are dropped before the next, as the metrics keep only NumPy copies
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return wall, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.images, args.repeats = 512, 1
    torch.manual_seed(args.seed)
    data = datasets.load(DEMO.dataset, "train", **{**DEMO.dataset_options, "num_train": 64})
    truth = data.info["factors"]
    images = truth.images(truth.sample_factors(args.images, torch.Generator().manual_seed(args.seed)))
    options = dict(DEMO.model_options)
    vae = make_model(DEMO.model, x_shape=tuple(images.shape[1:]), **options).eval()
    print(f"{args.images} sprites {tuple(images.shape[1:])} through the demo's encoder (channels "
          f"{options['channels']}, hidden {options['hidden']}); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    encode(vae, images[: max(args.sizes)], max(args.sizes))  # warm-up
    best = {size: (float("inf"), 0.0, 0) for size in args.sizes}
    for _ in range(args.repeats):  # interleaved, so every size sees the same machine load
        for size in args.sizes:
            run = encode(vae, images, size)
            if run[0] < best[size][0]:
                best[size] = run
    fastest = min(wall for wall, _, _ in best.values())
    print(f"{'images per call':>16}{'calls':>7}{'wall s':>9}{'system s':>10}{'page faults':>13}{'vs fastest':>12}")
    for size, (wall, system, faults) in best.items():
        calls = -(-args.images // size)
        print(f"{size:>16}{calls:>7}{wall:>9.3f}{system:>10.3f}{faults:>13}{wall / fastest:>11.2f}x")
    print(f"best of {args.repeats} interleaved runs in one process; system time and page faults are of that run")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5120, help="sprites encoded per run")
    parser.add_argument("--sizes", type=lambda s: [int(n) for n in s.split(",")], default=[32, 64, 128, 256, 512],
                        help="images per call, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--smoke", action="store_true", help="a few images, one run: seconds")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
