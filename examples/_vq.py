"""The body the two VQ-VAE examples share: arguments, data, fitting a stage, the numbers, the report.

Each example (``vq_vae_mnist.py``, ``vq_vae2.py``) states its model, bound and
references in its docstring, builds its model and priors, and uses these for
what is the same in both: the command line, binarized MNIST (or the built-in
digits), ``fit`` with the examples' batch size and learning rate, the bound in
bits per dimension, codebook use, a grid of samples, ``results.json`` and the
printed table.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch

import pyrovae
from pyrovae import datasets

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: settings the command line leaves unset come from here
FULL = {"dataset": "binarized_mnist", "epochs": 10, "prior_epochs": 10, "num_train": None, "num_test": None}
SMOKE = {"dataset": "digits", "epochs": 1, "prior_epochs": 1, "num_train": 256, "num_test": 50}


def parse_args(argv: list[str] | None, *, name: str, doc: str, model: str, prior_help: str, codes_help: str,
               add_options: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The examples' command line; ``add_options`` adds an example's own options after ``--num-codes``."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a run of seconds on built-in data (CI)")
    parser.add_argument("--out", default=f"runs/{name}", help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint: a killed run loses nothing (each stage from its own)")
    parser.add_argument("--epochs", type=int, help=f"{model} passes over the training set (full: {FULL['epochs']})")
    parser.add_argument("--prior-epochs", type=int, help=f"{prior_help} (full: {FULL['prior_epochs']})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", choices=["binarized_mnist", "digits"], help="full: binarized_mnist; smoke: digits")
    parser.add_argument("--data-root", default=str(DATA_ROOT), help="folder holding binarized_mnist/")
    parser.add_argument("--num-codes", type=int, default=64, help=codes_help)
    if add_options is not None:
        add_options(parser)
    parser.add_argument("--num-train", type=int, help="use the first N training images (default: all)")
    parser.add_argument("--num-test", type=int, help="use the first N test images (default: all)")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def load_images(args: argparse.Namespace) -> tuple[tuple[int, ...], torch.Tensor, torch.Tensor]:
    """(image shape, training images, test images), cut to ``--num-train`` and ``--num-test``; seeds Pyro."""
    options = {"binarize": True} if args.dataset == "digits" else {"root": args.data_root}
    train, test = (datasets.load(args.dataset, split, **options) for split in ("train", "test"))
    shape = (1, 28, 28) if args.dataset == "binarized_mnist" else train.shape
    x_train = train.x[: args.num_train].reshape(-1, *shape)
    x_test = test.x[: args.num_test].reshape(-1, *shape)
    pyro.set_rng_seed(args.seed)  # the networks' initial weights
    return shape, x_train, x_test


def fit_stage(program: Any, data: Any, epochs: int, args: argparse.Namespace, out: Path) -> pyrovae.FitResult:
    """One stage (the VQ-VAE or a prior) fitted with the examples' batch size and learning rate."""
    return pyrovae.fit(program, data, epochs=epochs, batch_size=100, lr=1e-3, seed=args.seed, out=out,
                       resume=args.resume, progress=not args.smoke)


def codebook_use(codes: torch.Tensor, num_codes: int) -> float:
    """The share of the codebook that ``codes`` use."""
    return float((torch.bincount(codes.reshape(-1), minlength=num_codes) > 0).float().mean())


def perplexity(codes: torch.Tensor, num_codes: int) -> float:
    """exp of the entropy of the codes' frequencies: the number of equally used codes with the same entropy."""
    counts = torch.bincount(codes.reshape(-1), minlength=num_codes).float()
    p = counts / counts.sum()
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


def bound_numbers(vq: Any, priors: Any, x_test: torch.Tensor, shape: tuple[int, ...], path: Path,
                  seed: int) -> dict[str, float]:
    """Writes 64 samples from ``priors`` to ``path``; the test bound with ``priors`` and with uniform priors."""
    save_grid_seeded(vq, priors, path, seed)
    bits = vq.bits_per_dim(x_test, priors)
    return {"test_bits_per_dim": bits,
            "test_nll_bound_nats": bits * math.prod(shape) * math.log(2),
            "test_bits_per_dim_uniform": vq.bits_per_dim(x_test)}


def save_grid_seeded(vq: Any, priors: Any, path: Path, seed: int) -> None:
    # optional heavy import, only for the picture
    from torchvision.utils import save_image

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        images = vq.sample(64, priors)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float().clamp(0, 1), path, nrow=math.ceil(math.sqrt(len(images))), pad_value=0.5)


def report(numbers: dict[str, Any], out: Path, header: str, reference: str, files: str, width: int) -> dict[str, Any]:
    """Writes ``results.json`` and prints the numbers; returns them."""
    (out / "results.json").write_text(json.dumps(numbers, indent=1))
    print(header)
    for key, value in numbers.items():
        print(f"  {key:<{width}} {value:.4f}" if isinstance(value, float) else f"  {key:<{width}} {value}")
    print(f"  reference: {reference}")
    print(f"files in {out}: {files}")
    return numbers
