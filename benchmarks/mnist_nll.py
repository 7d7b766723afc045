"""Reproduce Burda et al.'s MNIST table: VAE and IWAE, k = 1, 5, 50, one and two stochastic layers.

Architectures (tanh MLPs, Bernoulli likelihood), as in Burda et al. (2016), section 5:

* one stochastic layer: 784-200-200-50, ``VAE((784,), 50, hidden=(200, 200), activation="tanh")``;
* two stochastic layers: 784-200-200-100 then 100-100-50,
  :class:`~pyrovae.models.hierarchical_vae.HierarchicalVAE` (its defaults).

Objectives: ``VAE k`` is the ELBO averaged over k samples (``objective="elbo", num_particles=k``),
``IWAE k`` the importance-weighted bound (``objective="iwae", num_particles=k``).  With k = 1 the two
are the same objective (the Rényi bound at alpha = 0 with one sample is the ELBO), so one run fills
both k = 1 rows, as in the paper's table.

Schedule: the paper's Adam schedule, stage i = 0..7 of :math:`3^i` passes at learning rate
:math:`10^{-3} \\cdot 10^{-i/7}` (3,280 passes), batch 20, scaled to a budget of ``--passes``: stage i gets
``max(1, round(3^i * passes / 3280))`` passes, and the last stages are dropped while the total is over
the budget (at a small budget the early, larger learning rates matter most); or, with ``--schedule
prefix``, the paper's own first ``--passes`` passes (1 at 1e-3, 3 at 7.2e-4, 9 at 5.2e-4, 27 at 3.7e-4,
...), the stage the budget ends in cut short: the learning rate never falls below the paper's at the
same pass, which the scaled schedule's does after the first pass.  Each stage is one
:func:`pyrovae.fit` call continuing the run folder's checkpoint (``resume=True``) with its learning rate;
Adam's state carries over.  One difference: ``fit``'s Adam has eps = 1e-8, the paper's 1e-4.

Data: MNIST from ``<data>/MNIST/raw`` (``--data-root``, default ``../shared/data``), training on the
60,000 training images (the paper's split), test on the 10,000 test images.  ``dynamic``: grey levels
redrawn as binary images every epoch (:class:`pyrovae.datasets.DynamicallyBinarized`, ``fit`` asks
``epoch_view``), the test set one fixed draw; ``static``: Larochelle's binarization (train + valid,
50,000 + 10,000, as the training set).  ``--data digits`` runs the same code on scikit-learn's 8x8
digits, dynamically binarized, for CI (no file needed).

Evaluation: test log p(x) by importance sampling with 5,000 samples (``pyrovae.log_likelihood``),
reported as NLL in nats with its Monte Carlo standard error, on the first ``--num-test`` test images
(all 10,000 by default); active units (Burda et al.'s :math:`\\operatorname{Cov}_x(\\mathbb E_q[z_j]) > 0.01`,
:func:`pyrovae.metrics.collapse.active_units`), for the top layer of the two-layer model with
:math:`\\mathbb E_q[z_2 \\mid x]` averaged over 100 draws of z1.

Writes ``benchmarks/results/mnist_nll.md`` (``--results``): our numbers beside the paper's, with the
passes used, wall time and machine.  Each configuration has a run folder under ``--out``
(``benchmarks/runs/mnist_nll``); ``--resume`` continues every run from its folder (a configuration whose
evaluation is already stored there for the same passes is not run again).

Run::

    python benchmarks/mnist_nll.py --passes 3280                       # the paper's budget (GPU: days)
    python benchmarks/mnist_nll.py --passes 1 --num-test 500 --binarization dynamic
    python benchmarks/mnist_nll.py --smoke --results /tmp/mnist_nll.md  # CI: seconds, digits

Reference numbers (Burda et al. 2016, Table 1, dynamic binarization, test NLL in nats, k = 1 / 5 / 50):
one layer VAE 86.76 / 86.47 / 86.35, IWAE 86.76 / 85.54 / 84.78; two layers VAE 85.33 / 85.01 / 84.78,
IWAE 85.33 / 83.89 / 82.90.  Appendix D (Larochelle's static binarization): one layer VAE 88.71, IWAE
k = 50 87.10; two layers IWAE k = 50 85.32.

References:
  1. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. arXiv:1509.00519.
  2. H. Larochelle, I. Murray. The Neural Autoregressive Distribution Estimator. AISTATS 2011.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import pyrovae
from pyrovae.datasets import DynamicallyBinarized, load
from pyrovae.metrics.collapse import active_units, active_units_from_means
from pyrovae.models.hierarchical_vae import HierarchicalVAE

HERE = Path(__file__).resolve().parent
PAPER_PASSES = 3280
BATCH_SIZE = 20

#: Burda et al. 2016: (binarization, layers, objective, k) -> test NLL in nats (Table 1; Appendix D)
PAPER_NLL = {
    ("dynamic", 1, "vae", 1): 86.76, ("dynamic", 1, "vae", 5): 86.47, ("dynamic", 1, "vae", 50): 86.35,
    ("dynamic", 1, "iwae", 1): 86.76, ("dynamic", 1, "iwae", 5): 85.54, ("dynamic", 1, "iwae", 50): 84.78,
    ("dynamic", 2, "vae", 1): 85.33, ("dynamic", 2, "vae", 5): 85.01, ("dynamic", 2, "vae", 50): 84.78,
    ("dynamic", 2, "iwae", 1): 85.33, ("dynamic", 2, "iwae", 5): 83.89, ("dynamic", 2, "iwae", 50): 82.90,
    ("static", 1, "vae", 1): 88.71, ("static", 1, "iwae", 50): 87.10, ("static", 2, "iwae", 50): 85.32,
}
#: the paper's active units where this benchmark quotes them (Table 1; "26+7": layer 1 + layer 2)
PAPER_ACTIVE = {("dynamic", 1, "vae", 1): "19", ("dynamic", 1, "vae", 5): "20", ("dynamic", 1, "vae", 50): "20",
                ("dynamic", 2, "iwae", 50): "26+7"}
#: the static rows the paper reports (Appendix D)
STATIC = [(1, "vae", 1), (1, "iwae", 50), (2, "iwae", 50)]


#: how a budget below the paper's is spent: its stages scaled down, or its first passes
SCHEDULES = ("scaled", "prefix")


def schedule(passes: int, kind: str = "scaled") -> list[tuple[int, float]]:
    """The paper's stages for a budget of ``passes``: a list of (passes, learning rate).

    ``scaled``: every stage shrunk by ``passes / 3280`` (at least one pass each), the last stages
    dropped while the total is over the budget, so the learning rate decays within the budget;
    ``prefix``: the paper's own first ``passes`` passes (the stage that the budget ends in cut short),
    so the model is the paper's model after that many passes, its learning rate no lower than theirs.
    """
    paper = [(3**i, 1e-3 * 10 ** (-i / 7)) for i in range(8)]
    if kind == "prefix":
        if passes > PAPER_PASSES:
            raise ValueError(f"The prefix schedule has at most the paper's {PAPER_PASSES} passes, got {passes}")
        stages, left = [], passes
        for n, lr in paper:
            if left <= 0:
                break
            stages.append((min(n, left), lr))
            left -= n
        return stages
    if kind != "scaled":
        raise ValueError(f"Expected kind in {SCHEDULES}, got {kind!r}")
    stages = [(max(1, round(n * passes / PAPER_PASSES)), lr) for n, lr in paper]
    while len(stages) > 1 and sum(n for n, _ in stages) > passes:
        stages.pop()
    return stages


def load_data(args: argparse.Namespace, binarization: str) -> tuple[object, torch.Tensor]:
    """(training data, test images flattened to (N, D)) for one binarization."""
    if args.data == "digits":
        grey = torch.cat([load("digits", s).x for s in ("train", "valid")]).flatten(1)
        test = load("digits", "test").x.flatten(1)
        if binarization == "static":
            return (grey > 0.5).float(), (test > 0.5).float()
        train = DynamicallyBinarized.from_probs(grey, seed=args.seed, name="digits", split="train")
        return train, DynamicallyBinarized.from_probs(test, seed=args.seed + 1, name="digits", split="test").x
    root = args.data_root
    if binarization == "static":
        train = torch.cat([load("binarized_mnist", s, root=root).x for s in ("train", "valid")]).flatten(1)
        return train, load("binarized_mnist", "test", root=root).x.flatten(1)
    grey = torch.cat([load("mnist", s, root=root).x for s in ("train", "valid")]).flatten(1)
    test = load("mnist", "test", root=root, binarize="dynamic", seed=args.seed + 1).x.flatten(1)
    return DynamicallyBinarized.from_probs(grey, seed=args.seed, name="mnist", split="train"), test


def first(data, n: int | None):
    """The first ``n`` training points, keeping a dynamic binarization dynamic."""
    if n is None:
        return data
    if isinstance(data, DynamicallyBinarized):
        return DynamicallyBinarized.from_probs(data.probs[:n], seed=data.seed, name=data.name, split=data.split)
    return data[:n]


def build(layers: int, dim: int) -> pyrovae.VAE:
    if layers == 1:
        return pyrovae.VAE((dim,), 50, hidden=(200, 200), activation="tanh")
    return HierarchicalVAE((dim,))


def label(binarization: str, layers: int, objective: str, k: int, schedule_kind: str = "scaled") -> str:
    """A configuration's run folder; a prefix-schedule run has its own, so resuming never mixes the two."""
    return f"{binarization}-{layers}layer-{objective}-k{k}" + ("-prefix" if schedule_kind == "prefix" else "")


def evaluate(model: pyrovae.VAE, test: torch.Tensor, args: argparse.Namespace) -> dict[str, object]:
    ll = pyrovae.log_likelihood(model, test, num_samples=args.num_eval_samples, bounds=(), seed=args.seed)
    with torch.no_grad():
        model.eval()
        if isinstance(model, HierarchicalVAE):  # each layer's E_q[z | x]
            means = [model.layer_means(xb) for xb in test.split(500)]
            units = "+".join(str(active_units_from_means(torch.cat(layer))) for layer in zip(*means))
        else:
            units = str(active_units(model.posterior, test)["active_units"])
        model.train()
    # the spread over test images: how far the mean of this subset may sit from the whole test set's
    test_se = float(ll.log_px.std() / len(test) ** 0.5) if len(test) > 1 else float("nan")
    # per image, so two rows (which use the same images) compare by the standard error of their difference
    return {"nll": -ll.mean, "nll_se": ll.mean_stderr, "nll_test_se": test_se, "active_units": units,
            "share_khat_above_0_7": ll.share_khat_above_0_7, "log_px": [round(v, 5) for v in ll.log_px.tolist()]}


def run_one(config: tuple[str, int, str, int], data, test, args: argparse.Namespace) -> dict[str, object]:
    binarization, layers, objective, k = config
    run_dir = Path(args.out) / label(*config, args.schedule)
    stored = run_dir / "result.json"
    if (args.resume or args.table_only) and stored.exists():
        result = json.loads(stored.read_text())
        if args.table_only or (result.get("passes") == args.passes and result.get("num_test") == len(test)
                               and "log_px" in result):  # an older evaluation lacks the per-image values
            return result
    if args.table_only:
        return None
    if not args.resume and run_dir.exists():  # a run folder is never replaced silently
        raise SystemExit(f"{run_dir} holds a run: pass --resume to continue it (to --passes {args.passes}), "
                         "or remove the folder to start it again")
    torch.manual_seed(args.seed)
    model = build(layers, test.shape[1])
    start, epochs = time.perf_counter(), 0
    for stage_passes, lr in schedule(args.passes, args.schedule):
        epochs += stage_passes
        result = pyrovae.fit(model, data, objective="elbo" if objective == "vae" else "iwae", num_particles=k,
                             epochs=epochs, batch_size=BATCH_SIZE, lr=lr, seed=args.seed, device=args.device,
                             out=run_dir, resume=True, progress=False)
    trained = result.history[-1]["epoch"] if result.history else epochs
    if trained > epochs:  # fit never trains backwards: the folder's model is not this budget's
        raise SystemExit(f"{run_dir} holds a run trained for {trained} passes, more than --passes {args.passes} "
                         f"gives ({epochs}): use a larger --passes or another --out")
    # fit's history counts the seconds of every invocation, so a resumed run reports its whole training
    train_seconds = result.history[-1]["seconds"] if result.history else time.perf_counter() - start
    test_on = test.to(next(model.parameters()).device)
    start = time.perf_counter()
    out = {"config": list(config), "passes": args.passes, "schedule": args.schedule, "passes_used": epochs,
           "num_test": len(test),
           "train_seconds": train_seconds, "final_train_loss": result.final["train_loss"]}
    out.update(evaluate(model, test_on, args))
    out["eval_seconds"] = time.perf_counter() - start
    run_dir.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(out, indent=1))
    return out


def configurations(args: argparse.Namespace) -> list[tuple[str, int, str, int]]:
    configs = []
    for binarization in args.binarization:
        for layers in args.layers:
            for objective in args.objectives:
                for k in args.k:
                    if binarization == "static" and (layers, objective, k) not in STATIC and not args.smoke:
                        continue
                    if objective == "iwae" and k == 1:
                        continue  # the same objective as VAE k = 1: that run fills both rows
                    configs.append((binarization, layers, objective, k))
    return configs


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (CUDA)"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, torch on {torch.get_num_threads()} threads ({os.cpu_count()} cores visible, shared)"


def write_markdown(rows: dict, args: argparse.Namespace, wall: float, path: Path) -> str:
    lines = [
        "# MNIST test NLL: Burda et al. (2016) architectures, VAE and IWAE",
        "",
        f"Generated by `python benchmarks/mnist_nll.py {' '.join(args.argv)}`.",
        "",
        f"* data: {args.data} ({args.num_train or 'all'} training images); training budget {args.passes} passes of the paper's {PAPER_PASSES}, "
        f"schedule '{args.schedule}' (stages {schedule(args.passes, args.schedule)} as (passes, lr)), batch {BATCH_SIZE}, Adam",
        f"* evaluation: test NLL = -log p(x) with {args.num_eval_samples} importance samples on "
        f"the first {rows and next(iter(rows.values()))['num_test']} test images, ± one Monte Carlo standard error",
        f"* machine: {machine(args.device)}; "
        + ("this table written by --table-only from the stored runs (run it with the runs' thread count), "
           if args.table_only else f"wall time {wall / 60:.1f} min for this command, ")
        + f"{sum(r['train_seconds'] + r['eval_seconds'] for r in rows.values()) / 60:.1f} min summed over the runs' "
        "training and evaluation",
        "* VAE k = 1 and IWAE k = 1 are the same objective: one run fills both rows",
        f"* share of the paper's training: {args.passes} / {PAPER_PASSES} passes over "
        f"{args.num_train or 'all'} of its {60_000 if args.data == 'mnist' else 'digits'} images; "
        "± is the importance-sampling standard error; 'test SE' the standard error of the mean over "
        "the test images evaluated (where recorded), which is larger, but every row uses the same images, "
        "so rows compare pairwise: the orderings under the table give each difference with its paired SE",
        "* differences from the paper's set-up: fit's Adam eps is 1e-8 (paper 1e-4); "
        + ("the schedule is scaled down" if args.schedule == "scaled" else "the schedule is the paper's first passes")
        + " (see the module docstring)",
        "",
        "| binarization | layers | objective | k | NLL (ours) | test SE | paper | active units (ours) | paper | "
        "passes used | train s | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for binarization in args.binarization:
        for layers in args.layers:
            for objective in ("vae", "iwae"):
                for k in args.k:
                    key = (binarization, layers, objective, k)
                    run = rows.get((binarization, layers, "vae", 1) if k == 1 else key)
                    if run is None:
                        continue
                    paper = PAPER_NLL.get(key) if args.data == "mnist" else None
                    lines.append(
                        f"| {binarization} | {layers} | {objective.upper()} | {k} | {run['nll']:.2f} ± {run['nll_se']:.2f} "
                        f"| {format(run['nll_test_se'], '.2f') if 'nll_test_se' in run else '—'} "
                        f"| {paper if paper is not None else '—'} | {run['active_units']} "
                        f"| {PAPER_ACTIVE.get(key, '—') if args.data == 'mnist' else '—'} | {run['passes_used']} "
                        f"| {run['train_seconds']:.0f} | {run['eval_seconds']:.0f} |"
                    )
    missing = [label(*config, args.schedule) for config in configurations(args) if config not in rows]
    if missing:  # a row is never left out silently
        lines += ["", "Not finished at this budget (no stored evaluation, so no row): " + ", ".join(missing) + "."]
    lines += ["", ordering_notes(rows, args), ""]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def paired(a: dict, b: dict) -> str:
    """Row a's NLL minus row b's, with the standard error of that difference over the test images both used.

    The rows are evaluated on the same images, so the spread between images (the 'test SE') cancels
    from their difference; what remains is the spread of the per-image differences (each carrying its own
    importance-sampling noise).  Empty where a row stored no per-image values (older evaluations).
    """
    if len(a.get("log_px", ())) != len(b.get("log_px", ())) or len(a.get("log_px", ())) < 2:
        return ""
    diff = torch.tensor(b["log_px"], dtype=torch.float64) - torch.tensor(a["log_px"], dtype=torch.float64)
    mean, se = float(diff.mean()), float(diff.std() / len(diff) ** 0.5)
    ratio = f"{abs(mean) / se:.1f} SE" if se > 0 else "the same on every image"
    return f"; difference {mean:+.2f} ± {se:.2f} (paired SE over the same images: {ratio})"


def ordering_notes(rows: dict, args: argparse.Namespace) -> str:
    """Which of the paper's orderings hold at this budget (lower NLL is better), with paired differences."""
    notes = []

    def row(b, l, o, k):
        return rows.get((b, l, "vae", 1) if k == 1 else (b, l, o, k))

    for b in args.binarization:
        for layers in args.layers:
            for k in (5, 50):
                vae, iwae = row(b, layers, "vae", k), row(b, layers, "iwae", k)
                if vae is not None and iwae is not None:
                    notes.append(f"{b}, {layers} layer(s), k={k}: IWAE {'<' if iwae['nll'] < vae['nll'] else '>='} "
                                 f"VAE ({iwae['nll']:.2f} vs {vae['nll']:.2f}{paired(iwae, vae)})")
            ks = [(k, row(b, layers, "iwae", k)) for k in sorted(args.k)]
            ks = [(k, run) for k, run in ks if run is not None]
            if len(ks) > 1:
                ordered = all(a["nll"] > c["nll"] for (_, a), (_, c) in zip(ks, ks[1:]))
                steps = "".join(f"; k={k2} vs k={k1}:{step[1:]}"
                                for (k1, r1), (k2, r2) in zip(ks, ks[1:]) if (step := paired(r2, r1)))
                notes.append(f"{b}, {layers} layer(s), IWAE NLL by k {[k for k, _ in ks]}: "
                             f"{[round(r['nll'], 2) for _, r in ks]} ({'decreasing' if ordered else 'not monotone'}"
                             f"{steps})")
        if 1 in args.layers and 2 in args.layers:
            for o in ("vae", "iwae"):
                for k in args.k:
                    if o == "iwae" and k == 1:
                        continue  # the VAE k = 1 run
                    one, two = row(b, 1, o, k), row(b, 2, o, k)
                    if one is not None and two is not None:
                        notes.append(f"{b}, {o.upper()} k={k}: two layers {'<' if two['nll'] < one['nll'] else '>='} "
                                     f"one ({two['nll']:.2f} vs {one['nll']:.2f}{paired(two, one)})")
    return "Orderings at this budget (the paper's: IWAE < VAE, NLL falling with k, two layers < one):\n\n" + \
        "\n".join(f"* {n}" for n in notes)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passes", type=int, default=None,
                        help=f"training passes over the data, in all (default {PAPER_PASSES}; --smoke: 1)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="scaled",
                        help="a budget below the paper's: its stages scaled down, or its first --passes passes")
    parser.add_argument("--data", choices=("mnist", "digits"), default="mnist")
    parser.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--binarization", nargs="+", choices=("dynamic", "static"), default=["dynamic", "static"])
    parser.add_argument("--layers", nargs="+", type=int, choices=(1, 2), default=[1, 2])
    parser.add_argument("--objectives", nargs="+", choices=("vae", "iwae"), default=["vae", "iwae"])
    parser.add_argument("--k", nargs="+", type=int, default=[1, 5, 50])
    parser.add_argument("--num-train", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--num-test", type=int, default=None, help="test images to evaluate (default: all)")
    parser.add_argument("--num-eval-samples", type=int, default=5000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "runs" / "mnist_nll"), help="run folders, one per configuration")
    parser.add_argument("--resume", action="store_true", help="continue the runs in --out")
    parser.add_argument("--table-only", action="store_true",
                        help="write the table from the results stored under --out; train nothing")
    parser.add_argument("--results", default=str(HERE / "results" / "mnist_nll.md"))
    parser.add_argument("--smoke", action="store_true",
                        help="CI: digits, 400 training and 20 test points, 1 pass (unless --passes), 50 samples")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else []
    if args.smoke:
        args.data, args.num_eval_samples = "digits", 50
        args.passes = args.passes or 1
        args.num_test = args.num_test or 20
        args.num_train = args.num_train or 400
        args.k = [k for k in args.k if k <= 5] or [1]
    if args.passes is None:
        args.passes = PAPER_PASSES
    if args.passes < 1 or args.num_eval_samples < 1 or any(k < 1 for k in args.k):
        parser.error("--passes, --num-eval-samples and --k must be >= 1")
    if args.schedule == "prefix" and args.passes > PAPER_PASSES:
        parser.error(f"--schedule prefix runs at most the paper's {PAPER_PASSES} passes")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    args.device = device
    start = time.perf_counter()
    rows = {}
    for binarization in args.binarization:
        data, test = load_data(args, binarization)
        data, test = first(data, args.num_train), test[: args.num_test]
        for config in configurations(args):
            if config[0] != binarization:
                continue
            row = run_one(config, data, test, args)
            if row is None:  # --table-only, and this configuration has not finished
                continue
            rows[config] = row
            print(label(*config), {k: v for k, v in rows[config].items() if k not in ("config", "log_px")}, flush=True)
    text = write_markdown(rows, args, time.perf_counter() - start, Path(args.results))
    print(text)
    return rows


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
