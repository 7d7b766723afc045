r"""VQ-VAE-2 on binarized MNIST: two code grids, one autoregressive prior per level, samples top then bottom.

Model (Razavi et al. 2019, scaled to 28 x 28): two stride-2 convolutions (32,
64 channels) give 7 x 7 bottom features; one more stride-2 convolution gives the
4 x 4 top grid, quantised with its own codebook (K = 64, 16 dimensions, EMA,
k-means initialisation, dead-code restarts); the bottom grid is quantised from
the bottom features *and* the upsampled quantised top; the decoder reads both:

.. math::

    k^t \sim p(k^t), \quad k^b \sim p(k^b \mid k^t), \quad
    x \mid k^t, k^b \sim \mathrm{Bernoulli}(\mathrm{Dec}_\theta(e^t_{k^t}, e^b_{k^b})).

Stage 1 trains the VQ-VAE-2 (uniform priors, commitment 0.25) with
``pyrovae.fit``; stage 2 fits a PixelCNN prior to the top codes and a PixelCNN
to the bottom codes conditioned on the top (:class:`pyrovae.quantize.CodePrior`
with ``cond_codes``), each with ``pyrovae.fit``.  Reported: the bound
:math:`-\log p(x) \le -\log p_\theta(x \mid k^t, k^b) - \log p(k^t) - \log p(k^b \mid k^t)`
in bits per pixel on the test set (``test_bits_per_dim``; with uniform priors
``test_bits_per_dim_uniform``), codebook use per level, and a grid of samples
drawn top first, then bottom given top.

What it reaches
    Full setting (``python examples/vq_vae2.py``): not yet measured (about 1 h 20
    min on 2 CPU cores, estimated).  Medium setting (10,000 images, 3 + 3 + 3
    epochs, 1,000 test images; measured 2026-11-30): test bound 0.4072 bits/dim
    with the two PixelCNN priors, 0.6241 with uniform priors (see examples/README.md).
    Reference: Razavi et al. 2019 (arXiv:1906.00446) report ImageNet 256 x 256
    samples and classification-accuracy scores, not MNIST likelihoods; for
    scale on binarized MNIST: PixelRNN 79.20 nats = 0.146 bits/dim
    (arXiv:1601.06759), VAE 86.76 nats = 0.160 bits/dim (arXiv:1509.00519).

Usage::

    python examples/vq_vae2.py            # full setting
    python examples/vq_vae2.py --smoke    # seconds: built-in 8x8 digits, no files

The data are read from ``--data-root`` (default ``../shared/data``; files in ``binarized_mnist/``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae import datasets
from pyrovae.models.vq_vae2 import VQVAE2

NAME = "vq_vae2"
DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FULL = {"dataset": "binarized_mnist", "epochs": 10, "prior_epochs": 10, "num_train": None, "num_test": None}
SMOKE = {"dataset": "digits", "epochs": 1, "prior_epochs": 1, "num_train": 256, "num_test": 50}
REFERENCE = ("Razavi et al. 2019 (arXiv:1906.00446) give no MNIST likelihood; for scale: PixelRNN 0.146 bits/dim "
             "(arXiv:1601.06759), VAE 0.160 bits/dim (arXiv:1509.00519)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a run of seconds on built-in data (CI)")
    parser.add_argument("--out", default=f"runs/{NAME}", help="run folder")
    parser.add_argument("--epochs", type=int, help=f"VQ-VAE-2 passes over the training set (full: {FULL['epochs']})")
    parser.add_argument("--prior-epochs", type=int, help=f"passes of each prior (full: {FULL['prior_epochs']})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", choices=["binarized_mnist", "digits"], help="full: binarized_mnist; smoke: digits")
    parser.add_argument("--data-root", default=str(DATA_ROOT), help="folder holding binarized_mnist/")
    parser.add_argument("--num-codes", type=int, default=64, help="K, each codebook's size")
    parser.add_argument("--num-train", type=int, help="use the first N training images (default: all)")
    parser.add_argument("--num-test", type=int, help="use the first N test images (default: all)")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def save_grid(images: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float().clamp(0, 1), path, nrow=math.ceil(math.sqrt(len(images))), pad_value=0.5)


def codebook_use(codes: torch.Tensor, num_codes: int) -> float:
    return float((torch.bincount(codes.reshape(-1), minlength=num_codes) > 0).float().mean())


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    out = Path(args.out)
    options = {"binarize": True} if args.dataset == "digits" else {"root": args.data_root}
    train, test = (datasets.load(args.dataset, split, **options) for split in ("train", "test"))
    shape = (1, 28, 28) if args.dataset == "binarized_mnist" else train.shape
    x_train = train.x[: args.num_train].reshape(-1, *shape)
    x_test = test.x[: args.num_test].reshape(-1, *shape)

    pyro.set_rng_seed(args.seed)
    vq = VQVAE2(shape, z_dim=16, num_codes=args.num_codes, arch="conv", channels=(32, 64), likelihood="bernoulli")
    result = pyrovae.fit(vq, x_train, epochs=args.epochs, batch_size=100, lr=1e-3, seed=args.seed,
                         out=out / "vq_vae2", progress=not args.smoke)

    top_prior, bottom_prior = vq.prior_programs(hidden_channels=32, num_layers=4, kernel_size=5)
    top, bottom = vq.codes(x_train)
    fits = [pyrovae.fit(top_prior, top.float(), epochs=args.prior_epochs, batch_size=100, lr=1e-3, seed=args.seed,
                        out=out / "prior_top", progress=not args.smoke),
            pyrovae.fit(bottom_prior, (bottom.float(), top.float()), epochs=args.prior_epochs, batch_size=100,
                        lr=1e-3, seed=args.seed, out=out / "prior_bottom", progress=not args.smoke)]

    top_test, bottom_test = vq.codes(x_test)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        save_grid(vq.sample(64, (top_prior, bottom_prior)), out / "samples.png")
    bits = vq.bits_per_dim(x_test, (top_prior, bottom_prior))
    numbers = {
        "test_bits_per_dim": bits,
        "test_nll_bound_nats": bits * math.prod(shape) * math.log(2),
        "test_bits_per_dim_uniform": vq.bits_per_dim(x_test),
        "codebook_use_top": codebook_use(top_test, vq.num_codes),
        "codebook_use_bottom": codebook_use(bottom_test, vq.num_codes),
        "dead_share_top_last_epoch": result.final["aux_dead_share_top"],
        "dead_share_bottom_last_epoch": result.final["aux_dead_share_bottom"],
        "train_points": x_train.shape[0], "test_points": x_test.shape[0], "epochs": args.epochs,
        "prior_epochs": args.prior_epochs,
        "train_seconds": result.final["seconds"] + sum(f.final["seconds"] for f in fits),
    }
    (out / "results.json").write_text(json.dumps(numbers, indent=1))

    print(f"{NAME} ({args.dataset}, K={args.num_codes}, top grid {vq.grid_top}, bottom grid {vq.grid_bottom}):")
    for key, value in numbers.items():
        print(f"  {key:<30} {value:.4f}" if isinstance(value, float) else f"  {key:<30} {value}")
    print(f"  reference: {REFERENCE}")
    print(f"files in {out}: results.json, samples.png, vq_vae2/, prior_top/, prior_bottom/")
    return numbers


if __name__ == "__main__":
    main()
