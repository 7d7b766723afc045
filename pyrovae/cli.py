"""The ``pyrovae`` command: a thin layer over the public API.

Errors the user can fix are printed as one line (``pyrovae: error: ...``) with
exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pyrovae.datasets import DATASETS
from pyrovae.experiment import RunConfig, run
from pyrovae.models import MODELS
from pyrovae.objectives import OBJECTIVES
from pyrovae.train import TrainingDiverged

__all__ = ["main", "DEMO"]

#: the main job: a β-VAE on a built-in data set, no download, a few minutes on 2 cores
DEMO = RunConfig(
    model="beta_vae",
    model_options={"z_dim": 10, "beta": 4.0, "hidden": [256, 128]},
    dataset="digits",
    dataset_options={"binarize": True},
    epochs=150,
    batch_size=64,
    lr=1e-3,
    seed=0,
    device="cpu",
)


def _tables() -> str:
    return (
        f"models:     {', '.join(MODELS)}\n"
        f"objectives: {', '.join(OBJECTIVES)}\n"
        f"datasets:   {', '.join(DATASETS)}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrovae",
        description="Variational autoencoders as Pyro programs: train, evaluate, compare.",
        epilog=_tables(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="train a β-VAE on built-in data and write pictures and numbers")
    demo.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    demo.add_argument("--epochs", type=int, default=None, help=f"epochs (default: {DEMO.epochs})")

    train = sub.add_parser("train", help="train a model", epilog=_tables(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--model", default="vae", choices=sorted(MODELS))
    train.add_argument("--dataset", default="digits", choices=sorted(DATASETS))
    train.add_argument("--objective", default="elbo", choices=sorted(OBJECTIVES))
    train.add_argument("--num-particles", type=int, default=None, help="samples per point (iwae's K)")
    train.add_argument("--alpha", type=float, default=None, help="Rényi order (objective renyi)")
    train.add_argument("--beta", type=float, default=None, help="KL weight β used in training")
    train.add_argument("--z-dim", type=int, default=None)
    train.add_argument("--likelihood", default=None, help="observation family (default: from the data's support)")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="cpu, cuda or auto")
    train.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    train.add_argument("--binarize", action="store_true", help="binarize the data set (where it offers it)")
    train.add_argument("--out", default=None, help="run folder (default: runs/<model>-<dataset>)")
    train.add_argument("--resume", metavar="RUN", default=None, help="continue the run in this folder")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _train_config(args: argparse.Namespace) -> RunConfig:
    model_options = {}
    if args.z_dim is not None:
        model_options["z_dim"] = args.z_dim
    if args.likelihood is not None:
        model_options["likelihood"] = args.likelihood
    return RunConfig(
        model=args.model,
        model_options=model_options,
        dataset=args.dataset,
        dataset_options={"binarize": True} if args.binarize else {},
        objective=args.objective,
        num_particles=args.num_particles,
        alpha=args.alpha,
        kl_weight=args.beta,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
    )


def _report(numbers: dict, out: Path) -> None:
    print(f"\ntest ELBO (β = 1): {numbers['test_elbo']:.2f} nats per point on {numbers['test_points']} test points;"
          f" {numbers['active_dimensions']} active latent dimensions; {numbers['train_seconds']} s of training")
    print(f"numbers:  {out / 'results.json'}  and  {out / 'history.csv'}")
    print(f"pictures: {', '.join(str(Path(p)) for p in numbers['pictures'].values())}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "demo":
            out = Path(args.out)
            print(f"pyrovae demo: β-VAE (β = {DEMO.model_options['beta']}) on {DEMO.dataset}, writing to {out}")
            numbers = run(DEMO, out, epochs=args.epochs)
            _report(numbers, out)
        elif args.command == "train":
            if args.resume:
                out = Path(args.resume)
                numbers = run(None, out, resume=True, progress=not args.no_progress)
            else:
                config = _train_config(args)
                out = Path(args.out or f"runs/{config.model}-{config.dataset}")
                numbers = run(config, out, progress=not args.no_progress)
            _report(numbers, out)
    except (ValueError, TypeError, FileNotFoundError, TrainingDiverged, json.JSONDecodeError) as e:
        print(f"pyrovae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\npyrovae: interrupted; continue with: pyrovae train --resume <run folder>", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
