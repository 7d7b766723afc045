"""Images per second that ``sprites`` renders on the CPU (default: 2 threads).

Renders ``--num`` uniformly drawn factor settings ``--repeats`` times and prints
the best rate, plus a direct per-pixel drawing for comparison (the slow path the
renderer avoids by moving pre-drawn templates by whole pixels).

    python benchmarks/sprites_render.py --threads 2 --num 50000

Pin the process to the same cores for comparable numbers, e.g. ``taskset -c 0,1``.
"""

from __future__ import annotations

import argparse
import time

import torch

from pyrovae.datasets.sprites import Sprites


def rate(fn, num: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return num / best


def main(args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(args.threads)
    sprites = Sprites()
    factors = sprites.sample_factors(args.num, torch.Generator().manual_seed(0))
    sprites.images(factors[:10])  # draws the template bank once, outside the timing
    fast = rate(lambda: sprites.images(factors), args.num, args.repeats)
    few = factors[: min(args.num, 2000)]
    direct = rate(lambda: sprites.draw(few[:, 0], few[:, 1], few[:, 2], 16.0 + few[:, 3], 16.0 + few[:, 4]),
                  few.shape[0], args.repeats)
    print(f"threads={args.threads} images={args.num}")
    print(f"sprites.images : {fast:12,.0f} images/s  (64x64 float32)")
    print(f"direct drawing : {direct:12,.0f} images/s  ({fast / direct:.1f}x slower than images())")
    return {"images_per_second": fast, "direct_per_second": direct}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    main(parser.parse_args())
