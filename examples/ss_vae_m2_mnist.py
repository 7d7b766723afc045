r"""Semi-supervised M2 on binarized MNIST: test accuracy from 100 (or 3,000) labels.

Model (Kingma et al. 2014's M2, as Pyro's semi-supervised VAE tutorial builds it): for each image,

.. math::

    y \sim \mathrm{Cat}(1/10), \qquad z \sim \mathcal N(0, I_{50}), \qquad
    x \mid y, z \sim \mathrm{Bernoulli}(\mathrm{MLP}_\theta([z, y])),

with one hidden layer of 500 softplus units in the decoder, in the classifier
:math:`q_\phi(y \mid x)` and in :math:`q_\phi(z \mid x, y)`
(:class:`pyrovae.models.SSVAE`).  The labelled images train
:math:`\mathcal L(x, y) + \alpha \log q_\phi(y \mid x)` (``model(x, y)`` and the
classifier's auxiliary term, α = 46 per labelled point as in Pyro's tutorial), the
unlabelled ones the ELBO with the label summed out exactly (``objective="enum"``);
each step takes one minibatch of each, every term scaled to its whole data set
(:class:`pyrovae.Stream`).  The number is the accuracy of
:math:`\arg\max_y q_\phi(y \mid x)` on the 10,000 test images.

Data: MNIST from ``../shared/data/MNIST/raw`` (50,000 / 10,000 / 10,000), binarized by one
Bernoulli draw of the grey levels (the epoch-0 draw of ``binarize="dynamic"``);
Larochelle's statically binarized MNIST carries no labels.  The labelled images are
``--num-labelled`` / 10 of each class, drawn with ``--seed``; the remaining training
images are the unlabelled set.

What it reaches
    Full setting (``python examples/ss_vae_m2_mnist.py``: 100 labels, 50 passes, batches of 100,
    Adam lr 4.2e-4, beta1 0.95; 40 min on one CPU thread), measured 2026-12-01: test accuracy
    **0.602** at the best validation epoch (5), **0.520** after the last; ``accuracy.csv`` holds
    the curve.  Reference: Pyro's semi-supervised VAE tutorial reports **0.932** with 100 labels
    (0.958 with 3,000, ``--num-labelled 3000``), but its own script, ``ss_vae_M2.py``, fetched and
    run here on the same MNIST files with the tutorial's flags (batch 100: the script refuses 100
    labels at its default 200), reached **0.641** at its best validation epoch (4) and 0.574
    after 50 (examples/README.md).  With 3,000 labels (``--num-labelled 3000``; 45 min beside two
    other runs, measured 2026-12-01): **0.9144** after the last epoch, 0.9149 at the best
    validation epoch (46), still rising at epoch 50.  Kingma et al. 2014 (arXiv:1406.5298), Table 1, M2: test
    error 11.97% with 100 labels (accuracy 0.880), 4.94% with 3,000 (0.951).
    Medium (``--epochs 3 --num-unlabelled 10000``): measured before the 2026-12-01 fix of
    q(z | x, y), 0.653.

Usage::

    python examples/ss_vae_m2_mnist.py                          # full setting, 100 labels
    python examples/ss_vae_m2_mnist.py --num-labelled 3000      # 3,000 labels
    python examples/ss_vae_m2_mnist.py --smoke                  # seconds: built-in digits, no files
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae import Stream, datasets, plots

NAME = "ss_vae_m2_mnist"
DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: settings the command line leaves unset come from here
FULL = {"dataset": "mnist", "epochs": 50, "num_labelled": 100, "num_unlabelled": None, "num_test": None, "hidden": 500, "z_dim": 50}
SMOKE = {"dataset": "digits", "epochs": 1, "num_labelled": 50, "num_unlabelled": 300, "num_test": 100, "hidden": 32, "z_dim": 4}
REFERENCE = ("Pyro's SS-VAE tutorial (M2 + auxiliary loss): test accuracy 0.932 with 100 labels, 0.958 with 3,000 "
             "(its script ss_vae_M2.py, run here with 100 labels: 0.641 at the best validation epoch); "
             "Kingma et al. 2014 (arXiv:1406.5298), Table 1, M2: 0.880 and 0.951")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a run of seconds on built-in data (CI)")
    parser.add_argument("--out", default=f"runs/{NAME}", help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint: a killed run loses nothing (its accuracy curve too)")
    parser.add_argument("--epochs", type=int, help=f"passes over the unlabelled images (full: {FULL['epochs']})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", choices=["mnist", "digits"], help="full: mnist; smoke: digits")
    parser.add_argument("--data-root", default=str(DATA_ROOT), help="folder holding MNIST/raw/")
    parser.add_argument("--num-labelled", type=int, help=f"labelled training images, a multiple of 10 "
                                                          f"(full: {FULL['num_labelled']})")
    parser.add_argument("--num-unlabelled", type=int, help="use only N unlabelled images (default: all the rest)")
    parser.add_argument("--num-test", type=int, help="use the first N test images (default: all)")
    parser.add_argument("--aux-weight", type=float, default=46.0, help="α per labelled point (Pyro's tutorial: 46)")
    parser.add_argument("--hidden", type=int, help=f"hidden units of every network (full: {FULL['hidden']})")
    parser.add_argument("--z-dim", type=int, help=f"latent dimensions (full: {FULL['z_dim']})")
    # the optimizer of the tutorial's command line; batches of 100, since Pyro's script needs
    # the labelled count to be a multiple of the batch size
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=4.2e-4)
    parser.add_argument("--beta1", type=float, default=0.95, help="Adam's first beta")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.num_labelled < 10 or args.num_labelled % 10:
        parser.error(f"Expected --num-labelled a positive multiple of 10 (the same count per class), "
                     f"got {args.num_labelled}")
    return args


def balanced_split(labels: torch.Tensor, num_labelled: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of ``num_labelled / 10`` random images of each class, and of all the others."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    per_class = num_labelled // 10
    chosen = torch.cat([order[labels[order] == c][:per_class] for c in range(10)])
    if len(chosen) < num_labelled:
        raise ValueError(f"Expected at least {per_class} training images of every class, got fewer")
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[chosen] = False
    return chosen, order[rest[order]]


def accuracy(model: pyrovae.models.SSVAE, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    hits = sum(int((model.classify(xb) == yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return hits / len(y)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    out = Path(args.out)
    options = {"binarize": True} if args.dataset == "digits" else {"root": args.data_root, "binarize": "dynamic"}
    train, valid, test = (datasets.load(args.dataset, split, **options) for split in ("train", "valid", "test"))
    # flat vectors for the tutorial's MLPs (mnist: the epoch-0 binary draw; digits: thresholded)
    x_train, x_valid, x_test = train.x.flatten(1), valid.x.flatten(1), test.x.flatten(1)[: args.num_test]
    y_test = test.labels[: args.num_test]
    labelled_idx, unlabelled_idx = balanced_split(train.labels, args.num_labelled, args.seed)
    unlabelled_idx = unlabelled_idx[: args.num_unlabelled]
    labelled = (x_train[labelled_idx], train.labels[labelled_idx])
    labelled_batch = min(args.batch_size, args.num_labelled)

    pyro.set_rng_seed(args.seed)  # the networks' initial weights
    m2 = pyrovae.models.SSVAE(x_train.shape[1:], z_dim=args.z_dim, num_classes=10, hidden=(args.hidden,),
                              classifier_hidden=(args.hidden,), activation="softplus", arch="mlp",
                              aux_weight=args.aux_weight)
    m2.validate_labels(labelled[1], "labels")
    fit_options = dict(
        objective="enum", batch_size=args.batch_size, lr=args.lr, optimizer_options={"betas": (args.beta1, 0.999)},
        valid_data=x_valid[:1000], seed=args.seed, out=out, progress=not args.smoke,
        streams=[Stream(labelled, batch_size=labelled_batch),  # L(x, y): the label observed
                 Stream(labelled, programs=(m2.auxiliary_model, m2.auxiliary_guide), batch_size=labelled_batch)],
    )
    # one fit call per epoch, each resuming the last, to record the accuracies after every
    # epoch; the tutorial's protocol reports the test accuracy at the best validation accuracy
    curve = read_curve(out / "accuracy.csv")[: args.epochs] if args.resume else []
    result = None
    for epoch in range(len(curve) + 1, args.epochs + 1):
        result = pyrovae.fit(m2, x_train[unlabelled_idx], epochs=epoch, resume=args.resume or epoch > 1,
                             **fit_options)
        curve.append({"epoch": epoch, "valid_accuracy": accuracy(m2, x_valid, valid.labels),
                      "test_accuracy": accuracy(m2, x_test, y_test)})
        write_curve(curve, out / "accuracy.csv")  # after every epoch: a killed run keeps its curve
    if result is None:  # --resume of a finished run: its weights and record, no step taken
        result = pyrovae.fit(m2, x_train[unlabelled_idx], epochs=args.epochs, resume=True, **fit_options)
    best = max(curve, key=lambda row: row["valid_accuracy"])  # the first of equal ones

    numbers = {"test_accuracy": curve[-1]["test_accuracy"], "valid_accuracy": curve[-1]["valid_accuracy"],
               "test_accuracy_at_best_valid": best["test_accuracy"], "best_valid_accuracy": best["valid_accuracy"],
               "best_valid_epoch": best["epoch"],
               "test_elbo": pyrovae.evaluate_elbo(m2, x_test, seed=args.seed),
               "num_labelled": args.num_labelled, "num_unlabelled": len(unlabelled_idx),
               "test_points": len(y_test), "epochs": args.epochs, "aux_weight": args.aux_weight,
               "lr": args.lr, "beta1": args.beta1, "train_seconds": result.final["seconds"]}
    (out / "results.json").write_text(json.dumps(numbers, indent=1))
    draw_classes(m2, out / "classes.png", seed=args.seed)

    print(f"{NAME} ({args.dataset}, {args.num_labelled} labels, {len(unlabelled_idx)} unlabelled):")
    for key, value in numbers.items():
        print(f"  {key:<28} {value:.4f}" if isinstance(value, float) else f"  {key:<28} {value}")
    print(f"  reference: {REFERENCE}")
    print(f"files in {out}: results.json, accuracy.csv, history.csv, checkpoint.pt, classes.png")
    return numbers


def write_curve(curve: list[dict[str, float]], path: Path) -> None:
    """The accuracies after each epoch, one row per epoch."""
    lines = ["epoch,valid_accuracy,test_accuracy"]
    lines += [f"{row['epoch']},{row['valid_accuracy']:.4f},{row['test_accuracy']:.4f}" for row in curve]
    path.write_text("\n".join(lines) + "\n")


def read_curve(path: Path) -> list[dict[str, float]]:
    """The rows :func:`write_curve` wrote, or none if there is no file."""
    if not path.exists():
        return []
    rows = [line.split(",") for line in path.read_text().splitlines()[1:] if line]
    return [{"epoch": int(e), "valid_accuracy": float(v), "test_accuracy": float(t)} for e, v, t in rows]


@torch.no_grad()
def draw_classes(m2: pyrovae.models.SSVAE, path: Path, *, num: int = 8, seed: int = 0) -> None:
    """One row per class, one column per draw of z shared down the column: style held, label varied."""
    # optional heavy import, only for the picture
    from torchvision.utils import save_image

    rows = []
    for label in range(m2.num_classes):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the same z in every row
            rows.append(m2.sample(num, y=label))
    means = torch.cat(rows)
    save_image(plots.as_images(means, m2.x_shape), path, nrow=num)


if __name__ == "__main__":
    main()
