"""Per-point log p(x) by importance sampling: pyrovae against a Pyro loop and hand-written PyTorch.

The task: log p(x_n) with K = 1000 importance samples for each of 100 points
of a 784-400-20 Bernoulli VAE (MLP encoder and decoder, one hidden layer of
400), in one process on the CPU:

1. ``pyro.infer.Importance`` run once per point (K traces of model and guide
   per point).  It is slow, so only ``--importance-points`` points are timed
   and the time for all points is extrapolated linearly (printed as such).
2. A hand-written vectorized PyTorch estimator: encoder once per batch of
   points, decoder logits for chunks of ~``--rows`` (z, x) pairs,
   ``binary_cross_entropy_with_logits``, Gaussian log-densities written out,
   log-sum-exp across chunks.
3. :func:`pyrovae.metrics.likelihood.log_likelihood` with its defaults (which
   also computes the standard error, ESS, Pareto k-hat and the ELBO, IWAE-10
   and IWAE-100 bounds from the same samples).
4. The same on a *user-written* pair of the same shape (:func:`user_pair`: plain
   ``dist.Bernoulli(logits=...).to_event(1)`` and ``dist.Normal`` latents, the
   networks registered with ``pyro.module``), the way a Pyro user writes a VAE:
   the product's first use, with the same target.

Targets: pyrovae >= 200x faster than the Importance loop and <= 1.2x the
hand-written estimator.  Times are the best of ``--repeats`` interleaved runs.

Peak memory: each measurement runs in a fresh subprocess, which reads the
resident-set high-water mark (``VmHWM``) around the call, after resetting it
(``/proc/self/clear_refs``, Linux); the baseline is the resident size just
before the call.  It shows that pyrovae's peak follows ``chunk_size`` and not
K, against the hand-written estimator run without chunks (all K x B rows at once).

Peak memory after a fit: the same probe, but the subprocess first trains the VAE
with a short :func:`pyrovae.fit` (its large temporaries leave glibc's heap and
mmap threshold as a user's session does), then measures ``log_likelihood`` with
K = ``--fit-num-samples`` (5000) at N = ``--fit-points`` (1000, 2000, 4000) on
random binary images.  The peak must not grow with N: each batch's K x batch
log-weights go into one buffer allocated once, and the per-point results into
(N,) tensors allocated once, so no batch leaves a new block that pins the heap.
These probes use a small VAE (``--fit-dim`` pixels, one hidden layer of 32) so
that K = 5000 at N = 4000 runs in about a minute on 2 cores; the buffers do not
depend on the decoder's size.  ``--after-fit-only`` runs just these probes.

Data: the first 100 test points of binarized MNIST from ``../shared/data`` when
present (the VAE is first trained for ``--train-epochs`` on 10,000 training
points so that the estimators agree on sensible numbers), otherwise random
binary images (stated in the output).

Usage::

    python benchmarks/log_likelihood.py            # about two minutes on 2 CPU cores
    python benchmarks/log_likelihood.py --smoke    # seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch.nn.functional import binary_cross_entropy_with_logits, softplus

import pyrovae
from pyrovae.metrics.likelihood import _estimate, log_likelihood

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: the hand-written estimator's fastest chunk on a 2-core CPU (a bare decoder call is fastest at 1-2
#: thousand rows); pyrovae's default, ROWS_PER_CALL, is larger because each of its calls also traces
HAND_ROWS = 2048


def load_data(num_points: int, train_epochs: int, seed: int) -> tuple[pyrovae.VAE, torch.Tensor, str]:
    torch.manual_seed(seed)
    vae = pyrovae.VAE((784,), 20, hidden=(400,), likelihood="bernoulli")
    if (SHARED / "binarized_mnist").is_dir():
        from pyrovae import datasets

        test = datasets.load("binarized_mnist", "test", root=SHARED).x.reshape(-1, 784)[:num_points]
        source = "binarized MNIST test"
        if train_epochs:
            train = datasets.load("binarized_mnist", "train", root=SHARED).x.reshape(-1, 784)[:10_000]
            pyrovae.fit(vae, train, epochs=train_epochs, batch_size=128, seed=seed, device="cpu", progress=False)
            source += f" (VAE trained {train_epochs} epoch(s) on 10,000 points)"
        else:
            source += " (untrained VAE)"
    else:
        test = (torch.rand(num_points, 784, generator=torch.Generator().manual_seed(seed)) < 0.2).float()
        source = "random binary images (../shared/data absent; untrained VAE)"
    return vae, test, source


def user_pair(vae: pyrovae.VAE) -> tuple:
    """A model/guide pair written as a Pyro user writes one, around ``vae``'s networks."""

    def model(x: torch.Tensor) -> None:
        pyro.module("user_decoder", vae.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(vae.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=vae.decoder(z)["logits"]).to_event(1), obs=x)

    def guide(x: torch.Tensor) -> None:
        pyro.module("user_encoder", vae.encoder)
        with pyro.plate("data", x.shape[0]):
            enc = vae.encoder(x)
            pyro.sample("z", dist.Normal(enc["loc"], softplus(enc["scale"]) + 1e-5).to_event(1))

    return model, guide


@torch.no_grad()
def handwritten(vae: pyrovae.VAE, x: torch.Tensor, num_samples: int, rows: int | None, seed: int = 0) -> torch.Tensor:
    """log p(x_n) for a Bernoulli MLP VAE, vectorized by hand; ``rows=None``: one chunk of all K samples."""
    torch.manual_seed(seed)
    batch = 64 if rows is not None else x.shape[0]
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    out = []
    for xb in x.split(batch):
        enc = vae.encoder(xb)
        loc, scale = enc["loc"], softplus(enc["scale"]) + 1e-5
        log_scale = scale.log().sum(-1)
        chunk = num_samples if rows is None else max(1, rows // xb.shape[0])
        lse = []
        for start in range(0, num_samples, chunk):
            c = min(chunk, num_samples - start)
            eps = torch.randn(c, *loc.shape)
            z = loc + scale * eps
            logits = vae.decoder(z)["logits"]
            log_px_z = -binary_cross_entropy_with_logits(logits, xb.expand_as(logits), reduction="none").sum(-1)
            log_pz = -0.5 * z.pow(2).sum(-1) - z.shape[-1] * half_log_2pi
            log_qz = -0.5 * eps.pow(2).sum(-1) - log_scale - z.shape[-1] * half_log_2pi
            lse.append(torch.logsumexp(log_px_z + log_pz - log_qz, dim=0))
        out.append(torch.logsumexp(torch.stack(lse), dim=0) - math.log(num_samples))
    return torch.cat(out)


@torch.no_grad()
def importance_loop(vae: pyrovae.VAE, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """log p(x_n) with ``pyro.infer.Importance``, one point at a time (a batch would give the joint)."""
    out = []
    with pyro.validation_enabled(False):
        for xi in x.split(1):
            importance = pyro.infer.Importance(vae.model, vae.guide, num_samples=num_samples).run(xi)
            out.append(importance.get_log_normalizer())
    return torch.stack(out)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ------------------------------------------------------------ memory probes
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def probe(args: argparse.Namespace) -> None:
    """Run one estimator once (after a small warm-up) and print its peak memory above the baseline, in MiB."""
    if args.probe == "after-fit":
        probe_after_fit(args)
        return
    vae, x, _ = load_data(args.points, 0, args.seed)
    if args.probe == "pyrovae":
        run = lambda k: log_likelihood(vae, x, num_samples=k, batch_size=64, chunk_size=args.chunk_size)  # noqa: E731
    else:
        run = lambda k: handwritten(vae, x, k, rows=None)  # noqa: E731
    run(2)
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    before = _rss_kib("VmRSS")
    run(args.num_samples)
    print(json.dumps({"peak_mib": (_rss_kib("VmHWM") - before) / 1024}))


def probe_after_fit(args: argparse.Namespace) -> None:
    """A short ``fit`` first, then the peak of ``log_likelihood`` (K = ``--num-samples``) on ``--points`` points."""
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    vae = pyrovae.VAE((args.fit_dim,), 20, hidden=(32,), likelihood="bernoulli")
    train = (torch.rand(4000, args.fit_dim, generator=gen) < 0.2).float()
    pyrovae.fit(vae, train, epochs=2, batch_size=128, seed=args.seed, device="cpu", progress=False)
    x = (torch.rand(args.points, args.fit_dim, generator=gen) < 0.2).float()
    log_likelihood(vae, x[:2], num_samples=2)
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    log_likelihood(vae, x, num_samples=args.num_samples)
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_mib": (_rss_kib("VmHWM") - before) / 1024, "seconds": seconds,
                      "process_peak_mib": _rss_kib("VmHWM") / 1024}))


def measure_after_fit(args: argparse.Namespace) -> None:
    """Print the after-a-fit peaks at each N of ``--fit-points`` (one fresh process each)."""
    k = args.fit_num_samples
    print(f"peak memory of log_likelihood after a short fit in the same process (K={k}, a {args.fit_dim}-32-20 "
          "VAE, random binary images; fresh process each; resident-set high-water mark above the baseline):")
    peaks = []
    for n in args.fit_points:
        cmd = [sys.executable, __file__, "--probe", "after-fit", "--num-samples", str(k), "--points", str(n),
               "--seed", str(args.seed), "--threads", str(torch.get_num_threads()), "--fit-dim", str(args.fit_dim)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        row = json.loads(out.stdout.strip().splitlines()[-1])
        peaks.append(row["peak_mib"])
        print(f"  N={n:<6}{row['peak_mib']:>9.1f} MiB above the baseline, process peak {row['process_peak_mib']:.0f} MiB"
              f"   ({row['seconds']:.0f} s)")
    print(f"  N={args.fit_points[-1]} / N={args.fit_points[0]}: {peaks[-1] / max(peaks[0], 1e-9):.2f}x  (target: flat, ~1x)")


def measure_peak(args: argparse.Namespace, method: str, num_samples: int, chunk_size: int | None) -> float:
    cmd = [sys.executable, __file__, "--probe", method, "--num-samples", str(num_samples),
           "--points", str(args.points), "--seed", str(args.seed), "--threads", str(torch.get_num_threads())]
    if chunk_size is not None:
        cmd += ["--chunk-size", str(chunk_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


# ------------------------------------------------------------ main
def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        probe(args)
        return
    if args.after_fit_only:
        measure_after_fit(args)
        return
    if args.smoke:
        args.points, args.num_samples, args.importance_points, args.repeats, args.train_epochs = 8, 100, 1, 1, 0
    vae, x, source = load_data(args.points, args.train_epochs, args.seed)
    vae.eval()
    k = args.num_samples
    print(f"log p(x) with K={k} samples for {x.shape[0]} points of a 784-400-20 VAE; data: {source}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")

    # warm-ups (arviz's import, first calls)
    log_likelihood(vae, x[:2], num_samples=4)
    handwritten(vae, x[:2], 4, args.rows)

    n_imp = min(args.importance_points, x.shape[0])
    t_imp_points = best_time(lambda: importance_loop(vae, x[:n_imp], k), 1)
    t_imp = t_imp_points / n_imp * x.shape[0]
    pair = user_pair(vae)
    log_likelihood(pair, x[:2], num_samples=4)
    t_hand = t_ours = t_core = t_user = math.inf
    for _ in range(args.repeats):  # interleaved, so all see the same machine load
        t_hand = min(t_hand, best_time(lambda: handwritten(vae, x, k, args.rows), 1))
        t_ours = min(t_ours, best_time(lambda: log_likelihood(vae, x, num_samples=k), 1))
        t_user = min(t_user, best_time(lambda: log_likelihood(pair, x, num_samples=k), 1))
        # the same passes without the Pareto k-hat and the bounds: where the time goes
        t_core = min(t_core, best_time(lambda: _estimate(vae, x, k, None, None, (), False, 0, None), 1))

    ours = log_likelihood(vae, x, num_samples=k)
    hand = handwritten(vae, x, k, args.rows, seed=1)
    imp = importance_loop(vae, x[:n_imp], k)
    print()
    print(f"{'method':<44}{'seconds':>10}{'per point':>12}")
    print(f"{'pyro.infer.Importance, one point at a time':<44}{t_imp:>10.2f}{t_imp / x.shape[0]:>12.4f}"
          f"   (timed on {n_imp} point(s), extrapolated to {x.shape[0]})")
    print(f"{'hand-written PyTorch, ~' + str(args.rows) + ' rows per chunk':<44}{t_hand:>10.2f}{t_hand / x.shape[0]:>12.4f}")
    print(f"{'pyrovae log_likelihood (defaults)':<44}{t_ours:>10.2f}{t_ours / x.shape[0]:>12.4f}")
    print(f"{'  of which log p(x), SE, ESS only':<44}{t_core:>10.2f}{t_core / x.shape[0]:>12.4f}"
          "   (no k-hat, no bounds)")
    print(f"{'pyrovae log_likelihood, user-written pair':<44}{t_user:>10.2f}{t_user / x.shape[0]:>12.4f}")
    print()
    print(f"speed-up over the Importance loop: {t_imp / t_ours:.0f}x   (target >= 200x)")
    print(f"time relative to hand-written:     {t_ours / t_hand:.2f}x  (target <= 1.2x); "
          f"without k-hat and bounds {t_core / t_hand:.2f}x")
    print(f"user-written pair / hand-written:  {t_user / t_hand:.2f}x  (target <= 1.2x); "
          f"{t_imp / t_user:.0f}x faster than the Importance loop")
    print()
    diff = (ours.log_px - hand.double()).abs()
    print(f"mean log p(x): pyrovae {ours.mean:.3f} +- {ours.mean_stderr:.3f}, hand-written {hand.double().mean():.3f}; "
          f"largest per-point difference {diff.max():.3f} nats ({(diff / ours.stderr).max():.1f} pyrovae standard errors)")
    print("(where k-hat > 0.7 the weights' variance is likely infinite: estimates differ by more than their "
          "standard errors suggest)")
    for i in range(n_imp):
        print(f"point {i}: Importance {float(imp[i]):.3f}, pyrovae {float(ours.log_px[i]):.3f} +- {float(ours.stderr[i]):.3f}")
    print(f"ELBO {ours.bounds[1].mean:.3f}, IWAE-10 {ours.bounds[10].mean:.3f}, IWAE-100 {ours.bounds[100].mean:.3f}, "
          f"bits/dim {ours.bits_per_dim:.4f}, share of k-hat > 0.7: {ours.share_khat_above_0_7:.2f}")

    if not args.no_memory and Path("/proc/self/clear_refs").exists():
        print()
        print("peak memory above the baseline (fresh process each; resident-set high-water mark):")
        rows = [("pyrovae", k, 8), ("pyrovae", k, 32), ("pyrovae", k, 128), ("pyrovae", 5 * k, 32),
                ("hand-written, all K at once", k, None)]
        peaks = {}
        for method, num, chunk in rows:
            peaks[(method, num, chunk)] = peak = measure_peak(args, "pyrovae" if method == "pyrovae" else "hand", num, chunk)
            label = f"{method}, K={num}" + (f", batch 64 x chunk {chunk} = {chunk * min(64, x.shape[0])} rows" if chunk else "")
            print(f"  {label:<58}{peak:>9.1f} MiB")
        print(f"  chunk_size 128 / 8:           {peaks[('pyrovae', k, 128)] / max(peaks[('pyrovae', k, 8)], 1e-9):.1f}x")
        print(f"  K={5 * k} / K={k} at chunk 32:  {peaks[('pyrovae', 5 * k, 32)] / max(peaks[('pyrovae', k, 32)], 1e-9):.2f}x")
        print(f"  unchunked hand-written / pyrovae chunk 32: "
              f"{peaks[('hand-written, all K at once', k, None)] / max(peaks[('pyrovae', k, 32)], 1e-9):.0f}x")
        if not args.smoke:
            print()
            measure_after_fit(args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=HAND_ROWS,
                        help="decoder rows per chunk, hand-written (default: its fastest here)")
    parser.add_argument("--importance-points", type=int, default=3, help="points timed for the Importance loop")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--smoke", action="store_true", help="a few points and samples: seconds")
    parser.add_argument("--fit-points", type=lambda s: [int(n) for n in s.split(",")], default=[1000, 2000, 4000],
                        help="N for the after-a-fit memory probes, comma-separated (default: 1000,2000,4000)")
    parser.add_argument("--fit-num-samples", type=int, default=5000, help="K for the after-a-fit memory probes")
    parser.add_argument("--fit-dim", type=int, default=64, help="pixels of the after-a-fit probes' small VAE")
    parser.add_argument("--after-fit-only", action="store_true", help="run only the after-a-fit memory probes")
    parser.add_argument("--probe", choices=("pyrovae", "hand", "after-fit"), help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
