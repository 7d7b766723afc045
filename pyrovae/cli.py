"""The ``pyrovae`` command: a thin layer over the public API.

Errors the user can fix are printed as one line (``pyrovae: error: ...``) with
exit status 2, never as a traceback: the command's own :class:`UsageError`, the
library's ``ValueError`` (its documented bad-input error), a missing file and a
diverged training.  Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyrovae.compare import DEFAULT_OBJECTIVES, compare_estimators
from pyrovae.datasets import DATASETS, load
from pyrovae.experiment import (
    RunConfig,
    check_dataset_options,
    evaluate_run,
    resume_config,
    run,
    sweep,
    sweep_parameter,
)
from pyrovae.metrics import METRICS
from pyrovae.metrics.collapse import COLLAPSE_METRICS
from pyrovae.models import MODELS, make_model
from pyrovae.objectives import OBJECTIVES
from pyrovae.train import TrainingDiverged, fit

__all__ = ["main", "DEMO", "UsageError"]


class UsageError(ValueError):
    """Bad command-line input the user can fix (printed as one line, exit status 2)."""


#: the main job: a β-VAE on procedural sprites (dSprites' factor grid, rendered here, no
#: download); about 2,000 steps, a few minutes on 2 cores
DEMO = RunConfig(
    model="beta_vae",
    model_options={"z_dim": 10, "beta": 4.0, "channels": [16, 16, 32, 32], "hidden": [128]},
    dataset="sprites",
    dataset_options={"num_train": 8000},
    epochs=16,
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

    # train's flags default to None (not given): RunConfig holds the defaults, and --resume
    # can tell which flags were given (every one but --epochs and --no-progress is refused)
    train = sub.add_parser("train", help="train a model", epilog=_tables(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--model", choices=sorted(MODELS), help=f"(default: {RunConfig.model})")
    train.add_argument("--dataset", choices=sorted(DATASETS), help=f"(default: {RunConfig.dataset})")
    train.add_argument("--objective", choices=sorted(OBJECTIVES), help="(default: the model's default_objective, elbo for most)")
    train.add_argument("--num-particles", type=int, default=None, help="samples per point (iwae's K)")
    train.add_argument("--alpha", type=float, default=None, help="Rényi order (objective renyi)")
    train.add_argument("--beta", type=float, default=None,
                       help="fit's KL weight on every latent site in training (the model's own constructor "
                            "arguments, e.g. beta_tcvae's beta or factor_vae's gamma, are set with -o)")
    train.add_argument("--z-dim", type=int, default=None)
    train.add_argument("-O", "--objective-option", action="append", default=[], metavar="KEY=VALUE",
                       type=_key_value, help="an option of the named objective, e.g. --objective free_bits "
                                             "-O free_bits=0.25 (VALUE read as JSON); repeatable")
    train.add_argument("-o", "--model-option", action="append", default=[], metavar="KEY=VALUE", type=_key_value,
                       help="a constructor argument of the model, e.g. -o gamma=40 -o capacity_steps=2000 "
                            "(VALUE read as JSON, else as text); repeatable")
    train.add_argument("--likelihood", default=None, help="observation family (default: from the data's support)")
    train.add_argument("--epochs", type=int, default=None,
                       help=f"epochs in total (default: {RunConfig.epochs}); with --resume, extends the run to this many")
    train.add_argument("--batch-size", type=int, default=None, help=f"(default: {RunConfig.batch_size})")
    train.add_argument("--lr", type=float, default=None, help=f"(default: {RunConfig.lr})")
    train.add_argument("--seed", type=int, default=None, help=f"(default: {RunConfig.seed})")
    train.add_argument("--device", default=None, help=f"cpu, cuda or auto (default: {RunConfig.device})")
    train.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    train.add_argument("--no-jit", action="store_true", help="run every training step eagerly (no torch.jit.trace)")
    train.add_argument("--binarize", nargs="?", const=True, default=None, metavar="MODE",
                       help="binarize the data (digits: a flag; mnist, fashion_mnist: dynamic or static)")
    train.add_argument("--data-root", default=None, help="data folder (default: $PYROVAE_DATA_DIR or ~/.cache/pyrovae)")
    train.add_argument("--num-train", type=int, default=None, help="training points (sprites, dsprites)")
    train.add_argument("--out", default=None, help="run folder (default: runs/<model>-<dataset>)")
    train.add_argument("--resume", metavar="RUN", default=None,
                       help="continue the run in this folder, as its config.json records it (only --epochs and --lr "
                            "may change; a changed lr is recorded)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace a run already in --out (without it, a folder holding a run is refused)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = sub.add_parser("evaluate", help="log p(x), ELBO, IWAE-k bounds (and disentanglement metrics) of a run")
    evaluate.add_argument("run_dir", metavar="RUN", help="a run folder written by train or demo")
    evaluate.add_argument("--num-samples", type=int, default=5000, help="importance samples per point (K)")
    evaluate.add_argument("--num-points", type=int, default=None, help="test points to use (default: all)")
    evaluate.add_argument("--metrics", nargs="*", default=[], metavar="NAME",
                          help=f"disentanglement metrics: all or some of {', '.join(METRICS)}; posterior-collapse "
                               f"diagnostics: {', '.join(COLLAPSE_METRICS)} (names apart or comma-separated)")
    evaluate.add_argument("--metric-points", type=int, default=None,
                          help="train points per metric (default: disentanglement_lib's 10,000; test = half)")

    compare = sub.add_parser("compare-estimators", help="bound, gradient variance and SNR of several objectives")
    compare.add_argument("--model", default="vae", choices=sorted(MODELS))
    compare.add_argument("--dataset", default="digits", choices=sorted(DATASETS))
    compare.add_argument("--binarize", nargs="?", const=True, default=None, metavar="MODE",
                         help="binarize the data (digits: a flag; mnist, fashion_mnist: dynamic or static)")
    compare.add_argument("--data-root", default=None, help="data folder")
    compare.add_argument("--num-train", type=int, default=None, help="training points (sprites, dsprites)")
    compare.add_argument("--objectives", nargs="+", default=list(DEFAULT_OBJECTIVES), metavar="SPEC",
                         help="names or name:key=value,... (e.g. iwae:num_particles=10 graph:pathwise=False)")
    compare.add_argument("--num-repeats", type=int, default=50)
    compare.add_argument("--batch-size", type=int, default=64)
    compare.add_argument("--epochs", type=int, default=5, help="train first (untrained gradients say little)")
    compare.add_argument("--seed", type=int, default=0)

    sweep_ = sub.add_parser("sweep", help="one run per value of a model's trade-off weight (β, γ, ...) and the "
                                          "reconstruction/disentanglement trade-off figure")
    sweep_.add_argument("--model", default="beta_vae", choices=sorted(MODELS))
    values = sweep_.add_mutually_exclusive_group(required=True)
    values.add_argument("--values", type=_number, nargs="+",
                        help="values of the model's trade-off weight: β (beta_vae, beta_tcvae), γ (factor_vae), "
                             "C_max (capacity_vae), λ_od (dip_vae), the KL weight (vae); see --parameter")
    values.add_argument("--beta", type=_number, nargs="+",
                        help="the same, for models whose trade-off weight is β (or with --parameter kl_weight)")
    sweep_.add_argument("--parameter", default=None,
                        help="the constructor argument to vary instead (kl_weight: fit's KL weight)")
    sweep_.add_argument("-o", "--model-option", action="append", default=[], metavar="KEY=VALUE", type=_key_value,
                        help="a constructor argument every run shares (as for train); repeatable")
    sweep_.add_argument("--dataset", default="sprites", choices=sorted(DATASETS))
    sweep_.add_argument("--num-train", type=int, default=None)
    sweep_.add_argument("--z-dim", type=int, default=None, help="latent dimensions (default: 10)")
    sweep_.add_argument("--epochs", type=int, default=10)
    sweep_.add_argument("--batch-size", type=int, default=64)
    sweep_.add_argument("--seed", type=int, default=0)
    sweep_.add_argument("--metrics", nargs="*", default=["all"], metavar="NAME",
                        help=f"all (the default) or some of {', '.join(METRICS)}")
    sweep_.add_argument("--metric-points", type=int, default=None)
    sweep_.add_argument("--out", default="runs/sweep")
    sweep_.add_argument("--no-progress", action="store_true")
    return parser


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``, the value read as JSON when it parses (numbers, lists, true/false)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY an argument name, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _number(text: str) -> int | float:
    """An int where the text is one (``5``), else a float (``0.5``, ``1e3``)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _metric_options(points: int | None) -> dict:
    return {} if points is None else {"num_train": points, "num_test": max(points // 2, 1)}


def _print_table(rows: dict) -> None:
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")


def _dataset_options(args: argparse.Namespace) -> dict:
    options = {"binarize": args.binarize, "root": args.data_root, "num_train": args.num_train}
    return {k: v for k, v in options.items() if v is not None}


def _model_options(args: argparse.Namespace, **flags: Any) -> dict[str, Any]:
    """``-o`` options plus the dedicated flags that were given; the same argument twice is an error."""
    options = dict(args.model_option)
    for key, value in flags.items():
        if value is None:
            continue
        if key in options and options[key] != value:
            raise UsageError(f"{key} is given twice, as --{key.replace('_', '-')} {value} and as -o {key}={options[key]}")
        options[key] = value
    return options


#: train's flags that may go with --resume (the others would change what the run computes)
_RESUME_FLAGS = {"command", "resume", "epochs", "lr", "no_progress"}


def _train_config(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of the flags given (RunConfig's defaults for the others); checks them all."""
    given = {
        "model": args.model,
        "model_options": _model_options(args, z_dim=args.z_dim, likelihood=args.likelihood),
        "dataset": args.dataset,
        "dataset_options": _dataset_options(args),
        "objective": args.objective,
        "objective_options": dict(args.objective_option) or None,
        "num_particles": args.num_particles,
        "alpha": args.alpha,
        "kl_weight": args.beta,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "device": args.device,
        "checkpoint_every": args.checkpoint_every,
        "jit": False if args.no_jit else None,
    }
    return RunConfig(**{key: value for key, value in given.items() if value is not None})


def _report(numbers: dict, out: Path) -> None:
    active = numbers["active_dimensions"]  # None where KL per dimension does not apply (a mixture prior, codes)
    dims = "" if active is None else f" {active} active latent dimensions;"
    print(f"\ntest ELBO (β = 1): {numbers['test_elbo']:.2f} nats per point on {numbers['test_points']} test points;"
          f"{dims} {numbers['train_seconds']} s of training")
    print(f"numbers:  {out / 'results.json'}  and  {out / 'history.csv'}")
    print(f"pictures: {', '.join(str(Path(p)) for p in numbers['pictures'].values())}")


def _demo(args: argparse.Namespace) -> None:
    out = Path(args.out)
    again = (out / "config.json").exists()
    print(f"pyrovae demo: β-VAE (β = {DEMO.model_options['beta']}) on {DEMO.dataset}, writing to {out}"
          + (" (replacing the demo run there)" if again else ""))
    _report(run(DEMO, out, epochs=args.epochs, overwrite=True), out)


def _train(args: argparse.Namespace) -> None:
    if args.resume:
        # "not given" is None, False (a store_true flag) or [] (-o); by identity, so that --seed 0 counts as given
        given = [f"--{dest.replace('_', '-')}" for dest, value in vars(args).items()
                 if dest not in _RESUME_FLAGS and value is not None and value is not False and value != []]
        if given:
            raise UsageError(f"{', '.join(given)} cannot change a resumed run ({args.resume}/config.json holds its "
                             "settings); with --resume give only --epochs N (to train N epochs in total), --lr "
                             "(recorded) and --no-progress")
        out = Path(args.resume)
        before = RunConfig.load(out).epochs
        after = resume_config(out, args.epochs).epochs  # refuses fewer epochs than the run has done
        if after != before:
            print(f"pyrovae: {out}: epochs {before} -> {after} in total (recorded in {out / 'config.json'})")
        if args.lr is not None:
            print(f"pyrovae: {out}: lr -> {args.lr} from here on (recorded in {out / 'config.json'} and the history)")
        numbers = run(None, out, resume=True, epochs=args.epochs, lr=args.lr, progress=not args.no_progress)
    else:
        config = _train_config(args)
        out = Path(args.out or f"runs/{config.model}-{config.dataset}")
        numbers = run(config, out, progress=not args.no_progress, overwrite=args.overwrite)
    _report(numbers, out)


def _evaluate(args: argparse.Namespace) -> None:
    names = [name for arg in args.metrics for name in arg.split(",") if name]
    metrics = list(METRICS) if "all" in names else names
    numbers = evaluate_run(args.run_dir, num_samples=args.num_samples, num_points=args.num_points,
                           metrics=metrics, metric_options=_metric_options(args.metric_points))
    print(f"evaluation of {args.run_dir} (true model, β = 1; K = {args.num_samples}):")
    _print_table(numbers)
    print(f"written to {Path(args.run_dir) / 'evaluation.json'}")


def _compare_estimators(args: argparse.Namespace) -> None:
    check_dataset_options(args.dataset, _dataset_options(args))
    data = load(args.dataset, "train", **_dataset_options(args))
    model = make_model(args.model, x_shape=data.shape, likelihood=data.likelihood)
    if args.epochs:
        fit(model, data, epochs=args.epochs, seed=args.seed, device="cpu", progress=False)
    compare_estimators(model, data, args.objectives, num_repeats=args.num_repeats,
                       batch_size=args.batch_size, seed=args.seed, verbose=True)


def _sweep(args: argparse.Namespace) -> None:
    dataset_options = {} if args.num_train is None else {"num_train": args.num_train}
    values = args.values if args.values is not None else args.beta
    parameter = sweep_parameter(args.model, args.parameter)
    if args.beta is not None and parameter not in ("beta", "kl_weight"):
        raise UsageError(f"--beta sets β, but {args.model} sweeps {parameter}: use --values (or --parameter kl_weight)")
    model_options = _model_options(args, z_dim=args.z_dim)
    model_options.setdefault("z_dim", 10)
    config = RunConfig(model=args.model, model_options=model_options, dataset=args.dataset,
                       dataset_options=dataset_options, epochs=args.epochs, batch_size=args.batch_size,
                       seed=args.seed)
    rows = sweep(config, values, args.out, parameter=parameter, metrics=args.metrics,
                 metric_options=_metric_options(args.metric_points), progress=not args.no_progress)
    for row in rows:
        print(", ".join(f"{k}={v:.3f}" for k, v in row.items()))
    print(f"trade-off figure: {Path(args.out) / 'tradeoff.png'}; numbers: {Path(args.out) / 'sweep.json'}")


#: sub-command -> its handler
COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "demo": _demo,
    "train": _train,
    "evaluate": _evaluate,
    "compare-estimators": _compare_estimators,
    "sweep": _sweep,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        COMMANDS[args.command](args)
    # UsageError and json.JSONDecodeError (a damaged config.json) are ValueErrors
    except (ValueError, FileNotFoundError, TrainingDiverged) as e:
        print(f"pyrovae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\npyrovae: interrupted; continue with: pyrovae train --resume <run folder>", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
