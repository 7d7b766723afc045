"""The body the three sprites examples share: data, training, metrics, report.

Each example (``beta_vae_sprites.py``, ``factor_vae_sprites.py``,
``beta_tcvae_sprites.py``) states its model, objective and references in its
docstring and calls :func:`run_example` with its model class and the one number
that sets its trade-off (β or γ).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyro

import pyrovae
from pyrovae import datasets, plots
from pyrovae.experiment import reconstruction_error

METRICS = ("mig", "dci", "sap", "factor_vae_score", "beta_vae_score")
#: settings the command line leaves unset come from here
FULL = {"epochs": 30, "num_train": 50_000, "num_test": 1000, "metric_points": 10_000}
SMOKE = {"epochs": 1, "num_train": 256, "num_test": 64, "metric_points": 200}
#: Locatello et al.'s networks have these widths (with 4 x 4 kernels; pyrovae's are 3 x 3)
ARCH = {"z_dim": 10, "channels": (32, 32, 64, 64), "hidden": (256,)}


def parse_args(argv: list[str] | None, name: str, doc: str, weight: str, default: float, help: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=doc.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a run of seconds (CI)")
    parser.add_argument("--out", default=f"runs/{name}", help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint: a killed run loses nothing")
    parser.add_argument("--epochs", type=int, help=f"passes over the training set (full: {FULL['epochs']})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(f"--{weight}", type=float, default=default, help=help)
    parser.add_argument("--num-train", type=int, help=f"training images (full: {FULL['num_train']:,})")
    parser.add_argument("--num-test", type=int, help=f"validation and test images (full: {FULL['num_test']:,})")
    parser.add_argument("--metric-points", type=int, help=f"points per metric (full: {FULL['metric_points']:,}; test: half)")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def run_example(
    argv: list[str] | None,
    *,
    name: str,
    doc: str,
    model: type,
    weight: str,
    default: float,
    help: str,
    reference: str,
) -> dict[str, float]:
    """Train ``model(..., **{weight: value})`` on sprites, evaluate it on the true model, report."""
    args = parse_args(argv, name, doc, weight, default, help)
    value = getattr(args, weight)
    out = Path(args.out)
    sizes = {"num_train": args.num_train, "num_valid": args.num_test, "num_test": args.num_test}
    train, valid, test = (datasets.load("sprites", split, **sizes) for split in ("train", "valid", "test"))

    pyro.set_rng_seed(args.seed)  # the networks' initial weights
    vae = model(train.shape, **{weight: value}, **ARCH)
    result = pyrovae.fit(vae, train, epochs=args.epochs, batch_size=64, lr=1e-3, valid_data=valid,
                         seed=args.seed, out=out, resume=args.resume, progress=not args.smoke)

    vae.eval()
    device = next(vae.parameters()).device
    numbers = {"test_elbo": pyrovae.evaluate_elbo(vae, test, seed=args.seed),
               "reconstruction_error": reconstruction_error(vae, test.x.to(device)),
               "train_seconds": result.final["seconds"]}
    options = {"num_train": args.metric_points, "num_test": args.metric_points // 2,
               "num_variance_estimate": args.metric_points, "rng": args.seed}
    if args.smoke:  # fewer images per vote and trees per factor: seconds, not a measurement
        options.update(batch_size=8, num_estimators=10)

    def represent(images):  # the representation: the posterior mean E[z | x]
        return vae.posterior(images.to(device)).mean.cpu()

    numbers.update(pyrovae.evaluate_metrics(represent, train.info["factors"], names=METRICS, **options))
    plots.traversal_grid(vae, test.x, out / "traversals.png")
    (out / "results.json").write_text(json.dumps(numbers, indent=1))

    print(f"{name} ({weight} = {value:g}, {len(train):,} images, {args.epochs} epochs):")
    for key, number in numbers.items():
        print(f"  {key:<28} {number:.4f}")
    print(f"  reference: {reference}")
    print(f"files in {out}: results.json, history.csv, checkpoint.pt, traversals.png")
    return numbers
