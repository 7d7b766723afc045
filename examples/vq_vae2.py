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
    Full setting (``python examples/vq_vae2.py``; measured 2026-12-01, 20.5 min
    on 2 CPU cores shared with two other runs): test bound 0.3723 bits/dim (202.3
    nats) with the two PixelCNN priors, 0.5416 with uniform priors, all 64 codes
    of both codebooks used.  Medium setting (10,000 images, 3 + 3 + 3
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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _vq import bound_numbers, codebook_use, fit_stage, load_images, parse_args, report  # noqa: E402

from pyrovae.models.vq_vae2 import VQVAE2  # noqa: E402

NAME = "vq_vae2"
REFERENCE = ("Razavi et al. 2019 (arXiv:1906.00446) give no MNIST likelihood; for scale: PixelRNN 0.146 bits/dim "
             "(arXiv:1601.06759), VAE 0.160 bits/dim (arXiv:1509.00519)")


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv, name=NAME, doc=__doc__, model="VQ-VAE-2", prior_help="passes of each prior",
                      codes_help="K, each codebook's size")
    out = Path(args.out)
    shape, x_train, x_test = load_images(args)
    vq = VQVAE2(shape, z_dim=16, num_codes=args.num_codes, arch="conv", channels=(32, 64), likelihood="bernoulli")
    result = fit_stage(vq, x_train, args.epochs, args, out / "vq_vae2")

    top_prior, bottom_prior = vq.prior_programs(hidden_channels=32, num_layers=4, kernel_size=5)
    top, bottom = vq.codes(x_train)
    fits = [fit_stage(top_prior, top.float(), args.prior_epochs, args, out / "prior_top"),
            fit_stage(bottom_prior, (bottom.float(), top.float()), args.prior_epochs, args, out / "prior_bottom")]

    top_test, bottom_test = vq.codes(x_test)
    numbers = {
        **bound_numbers(vq, (top_prior, bottom_prior), x_test, shape, out / "samples.png", args.seed),
        "codebook_use_top": codebook_use(top_test, vq.num_codes),
        "codebook_use_bottom": codebook_use(bottom_test, vq.num_codes),
        "dead_share_top_last_epoch": result.final["aux_dead_share_top"],
        "dead_share_bottom_last_epoch": result.final["aux_dead_share_bottom"],
        "train_points": x_train.shape[0], "test_points": x_test.shape[0], "epochs": args.epochs,
        "prior_epochs": args.prior_epochs,
        "train_seconds": result.final["seconds"] + sum(f.final["seconds"] for f in fits),
    }
    return report(numbers, out, f"{NAME} ({args.dataset}, K={args.num_codes}, top grid {vq.grid_top}, "
                  f"bottom grid {vq.grid_bottom}):", REFERENCE, "results.json, samples.png, vq_vae2/, prior_top/, prior_bottom/",
                  width=30)


if __name__ == "__main__":
    main()
