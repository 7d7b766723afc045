"""The reproduction benchmarks run end to end at a tiny budget (CI), on built-in data."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_schedule_is_the_papers_at_its_budget_and_starts_at_the_top_when_scaled_down():
    schedule = load_benchmark("mnist_nll").schedule
    full = schedule(3280)
    assert [n for n, _ in full] == [3**i for i in range(8)]
    assert [lr for _, lr in full] == pytest.approx([1e-3 * 10 ** (-i / 7) for i in range(8)])
    assert schedule(1) == [(1, 1e-3)]
    assert schedule(3) == [(1, full[0][1]), (1, full[1][1]), (1, full[2][1])]
    assert sum(n for n, _ in schedule(100)) <= 100
    # the prefix schedule: the paper's own first passes, the last stage cut short
    assert schedule(3280, "prefix") == full
    assert schedule(1, "prefix") == [(1, 1e-3)]
    assert schedule(6, "prefix") == [(1, full[0][1]), (3, full[1][1]), (2, full[2][1])]
    assert schedule(40, "prefix") == full[:4]
    with pytest.raises(ValueError, match="Expected kind in"):
        schedule(10, "cosine")
    with pytest.raises(ValueError, match="at most the paper's 3280 passes"):
        schedule(3281, "prefix")


def test_mnist_nll_smoke_writes_the_table_and_resumes_from_its_run_folders(tmp_path):
    bench = load_benchmark("mnist_nll")
    # two layers only (the one-layer model is the plain VAE): VAE k = 1, 5 and IWAE k = 5
    argv = ["--smoke", "--binarization", "dynamic", "--layers", "2", "--k", "1", "5",
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "mnist_nll.md")]
    rows = bench.main(argv)
    # VAE k = 1 fills the IWAE k = 1 row too (the same objective), so it is not trained twice
    assert set(rows) == {("dynamic", 2, objective, k) for objective, k in (("vae", 1), ("vae", 5), ("iwae", 5))}
    for run in rows.values():
        # a Bernoulli model's NLL on 64 binary pixels lies in (0, 64 log 2]-ish at one pass
        assert 0 < run["nll"] < 64 * math.log(2) + 10 and run["nll_se"] > 0
        assert run["passes_used"] == 1
    assert "+" in rows[("dynamic", 2, "vae", 1)]["active_units"]  # per layer for two layers
    text = (tmp_path / "mnist_nll.md").read_text()
    assert text.count("| dynamic |") == 4 and "Orderings at this budget" in text and "machine:" in text
    # each evaluation keeps its per-image log p(x), whose mean is the row's NLL, so rows compare pairwise
    for run in rows.values():
        assert len(run["log_px"]) == 20 and -sum(run["log_px"]) / 20 == pytest.approx(run["nll"], abs=1e-4)
    iwae, vae = rows[("dynamic", 2, "iwae", 5)], rows[("dynamic", 2, "vae", 5)]
    assert f"IWAE {'<' if iwae['nll'] < vae['nll'] else '>='} VAE ({iwae['nll']:.2f} vs {vae['nll']:.2f}; " \
           f"difference {iwae['nll'] - vae['nll']:+.2f} ± " in text
    k1 = rows[("dynamic", 2, "vae", 1)]
    assert f"IWAE NLL by k [1, 5]: [{k1['nll']:.2f}, {iwae['nll']:.2f}] (" in text
    assert f"k=5 vs k=1: difference {iwae['nll'] - k1['nll']:+.2f} ± " in text
    # --resume reuses each run folder's stored evaluation instead of training again
    again = bench.main(argv + ["--resume"])
    assert again == rows
    # an evaluation stored without per-image values (before they were kept) is evaluated again, not retrained
    stored = tmp_path / "runs" / "dynamic-2layer-iwae-k5" / "result.json"
    history = (stored.parent / "history.csv").read_text()
    stored.write_text(json.dumps({k: v for k, v in rows[("dynamic", 2, "iwae", 5)].items() if k != "log_px"}))
    reevaluated = bench.main(argv + ["--resume"])[("dynamic", 2, "iwae", 5)]
    assert reevaluated["log_px"] == rows[("dynamic", 2, "iwae", 5)]["log_px"]  # the same seed, the same number
    assert (stored.parent / "history.csv").read_text() == history
    rows[("dynamic", 2, "iwae", 5)] = reevaluated  # its eval_seconds are the new evaluation's
    # a configuration without a stored evaluation is named under the table, never dropped silently
    layers = argv.index("--layers") + 1
    table_only = argv[:layers] + ["1", "2"] + argv[layers + 1:] + ["--table-only"]  # one layer: never trained
    assert bench.main(table_only) == rows
    text = (tmp_path / "mnist_nll.md").read_text()
    assert "Not finished at this budget (no stored evaluation, so no row): dynamic-1layer-vae-k1, " \
           "dynamic-1layer-vae-k5, dynamic-1layer-iwae-k5." in text
    # the prefix schedule keeps run folders of its own: the scaled runs above are not resumed by it
    prefix_argv = argv[:layers + 1] + ["--k", "1"] + argv[argv.index("--out"):] + ["--schedule", "prefix"]
    prefix = bench.main(prefix_argv)
    assert (tmp_path / "runs" / "dynamic-2layer-vae-k1-prefix" / "result.json").exists()
    assert prefix[("dynamic", 2, "vae", 1)]["schedule"] == "prefix"
    assert "schedule 'prefix'" in (tmp_path / "mnist_nll.md").read_text()
    # resumed to a larger budget, a prefix run continues with the paper's next stage (3 passes at 7.2e-4)
    longer = bench.main(prefix_argv + ["--passes", "3", "--resume"])
    assert longer[("dynamic", 2, "vae", 1)]["passes_used"] == 3
    history = (tmp_path / "runs" / "dynamic-2layer-vae-k1-prefix" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3
    # and a run trained past a smaller budget is refused, not relabelled
    with pytest.raises(SystemExit, match="trained for 3 passes, more than --passes 2"):
        bench.main(prefix_argv + ["--passes", "2", "--resume"])
    text = bench.main(prefix_argv[:layers] + ["1", "2"] + prefix_argv[layers + 1:] + ["--table-only"])
    assert "dynamic-1layer-vae-k1-prefix." in (tmp_path / "mnist_nll.md").read_text()


def test_paired_difference_of_two_rows_is_the_mean_and_standard_error_of_the_per_image_differences():
    paired = load_benchmark("mnist_nll").paired
    # NLL 2 and 7/3: a - b = -1/3; per-image differences (-0.5, -0.5, 0) have sd sqrt(1/12), SE 1/6, so 2.0 SE
    a, b = {"log_px": [-1.0, -2.0, -3.0]}, {"log_px": [-1.5, -2.5, -3.0]}
    assert paired(a, b) == "; difference -0.33 ± 0.17 (paired SE over the same images: 2.0 SE)"
    assert paired(b, a) == "; difference +0.33 ± 0.17 (paired SE over the same images: 2.0 SE)"
    # rows without per-image values (older evaluations), or on other images, get no paired difference
    assert paired({"nll": 1.0}, b) == "" and paired(a, {"log_px": [-1.0, -2.0]}) == ""
    assert paired(a, a) == "; difference +0.00 ± 0.00 (paired SE over the same images: the same on every image)"


@pytest.mark.slow  # reads and checks the 70,000 MNIST images: ~10 s alone, more on a loaded machine
@pytest.mark.skipif(not (DATA / "MNIST" / "raw").exists(), reason="no ../shared/data/MNIST/raw")
def test_mnist_dynamic_view_trains_on_60000_images_redrawn_every_epoch():
    bench = load_benchmark("mnist_nll")
    args = bench.main.__globals__["argparse"].Namespace(data="mnist", data_root=str(DATA), seed=0)
    train, test = bench.load_data(args, "dynamic")
    assert train.x.shape == (60_000, 784) and test.shape == (10_000, 784)
    assert not torch.equal(train.epoch_view(0), train.epoch_view(1))
    assert set(torch.unique(train.epoch_view(1)).tolist()) == {0.0, 1.0}
