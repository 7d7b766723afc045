r"""β-TCVAE on sprites: test ELBO, reconstruction error and five disentanglement metrics.

Model: the VAE, :math:`z \sim \mathcal N(0, I_{10})`, :math:`x \mid z \sim
\mathrm{Bernoulli}(\mathrm{ConvNet}_\theta(z))`, trained with the ELBO's KL term split
into index-code mutual information, total correlation and dimension-wise KL, and
the total correlation weighted by β (Chen et al. 2018):

.. math::

    \mathcal L = \mathbb E_{q_\phi(z|x)}[\log p_\theta(x \mid z)]
        - I_q(z; n) - \beta\, \mathrm{KL}\bigl(q(z) \,\|\, \textstyle\prod_k q(z_k)\bigr)
        - \textstyle\sum_k \mathrm{KL}(q(z_k) \,\|\, p(z_k)), \qquad \beta = 6,

with :math:`q(z)` estimated from each minibatch by stratified sampling.

Evaluated on the true model (β = 1): test ELBO and reconstruction error
(:math:`-\log p(x \mid z)` at the posterior mean), then MIG, DCI, SAP, the
FactorVAE score and the BetaVAE score of the representation
:math:`x \mapsto \mathbb E_{q_\phi}[z \mid x]` on the sprites factor grid
(``train.info["factors"]``), with disentanglement_lib's settings
(:mod:`pyrovae.metrics`).

What it reaches
    Full setting (``python examples/beta_tcvae_sprites.py``; 50,000 images,
    30 epochs, 10,000 metric points): not yet measured (see examples/README.md).
    Reference: Locatello et al. 2019 (arXiv:1811.12359) trained β-TCVAE with
    β in {1, 2, 4, 6, 8, 10} on dSprites, 300,000 steps each; across
    hyper-parameters and seeds their MIG lies roughly between 0 and 0.4, and
    the spread of every metric is wide (see their figure of score
    distributions per method, metric and data set).  Not directly comparable:
    sprites shares dSprites' factor grid but its pixels are rendered here (not
    the official dSprites images), and the full setting trains about 13x fewer
    steps.

Usage::

    python examples/beta_tcvae_sprites.py               # full setting
    python examples/beta_tcvae_sprites.py --beta 10     # a stronger penalty
    python examples/beta_tcvae_sprites.py --smoke       # seconds (CI)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyro

import pyrovae
from pyrovae import datasets, plots
from pyrovae.experiment import reconstruction_error

NAME = "beta_tcvae_sprites"
METRICS = ("mig", "dci", "sap", "factor_vae_score", "beta_vae_score")
#: settings the command line leaves unset come from here
FULL = {"epochs": 30, "num_train": 50_000, "num_test": 1000, "metric_points": 10_000}
SMOKE = {"epochs": 1, "num_train": 256, "num_test": 64, "metric_points": 200}
#: Locatello et al.'s networks have these widths (with 4 x 4 kernels; pyrovae's are 3 x 3)
ARCH = {"z_dim": 10, "channels": (32, 32, 64, 64), "hidden": (256,)}
REFERENCE = "Locatello et al. 2019 (arXiv:1811.12359), dSprites: MIG roughly 0 to 0.4 across β and seeds"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a run of seconds (CI)")
    parser.add_argument("--out", default=f"runs/{NAME}", help="run folder")
    parser.add_argument("--epochs", type=int, help=f"passes over the training set (full: {FULL['epochs']})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beta", type=float, default=6.0, help="weight β of the total correlation in training")
    parser.add_argument("--num-train", type=int, help=f"training images (full: {FULL['num_train']:,})")
    parser.add_argument("--num-test", type=int, help=f"validation and test images (full: {FULL['num_test']:,})")
    parser.add_argument("--metric-points", type=int, help=f"points per metric (full: {FULL['metric_points']:,}; test: half)")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    out = Path(args.out)
    sizes = {"num_train": args.num_train, "num_valid": args.num_test, "num_test": args.num_test}
    train, valid, test = (datasets.load("sprites", split, **sizes) for split in ("train", "valid", "test"))

    pyro.set_rng_seed(args.seed)  # the networks' initial weights
    vae = pyrovae.BetaTCVAE(train.shape, beta=args.beta, **ARCH)
    result = pyrovae.fit(vae, train, epochs=args.epochs, batch_size=64, lr=1e-3, valid_data=valid,
                         seed=args.seed, out=out, progress=not args.smoke)

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

    print(f"{NAME} (β = {args.beta:g}, {len(train):,} images, {args.epochs} epochs):")
    for key, value in numbers.items():
        print(f"  {key:<28} {value:.4f}")
    print(f"  reference: {REFERENCE}")
    print(f"files in {out}: results.json, history.csv, checkpoint.pt, traversals.png")
    return numbers


if __name__ == "__main__":
    main()
