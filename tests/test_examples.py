"""Every example runs on its smoke setting, in-process, and returns finite numbers under the expected keys."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if not p.name.startswith("_"))  # _*.py: shared bodies

SPRITES_KEYS = {"test_elbo", "reconstruction_error", "mig", "dci_disentanglement", "dci_completeness",
                "dci_informativeness", "sap", "factor_vae_score", "beta_vae_score"}
#: example -> the numbers its main() must return
EXPECTED = {
    "vae_mnist": {"test_log_px", "test_log_px_stderr", "test_elbo", "bits_per_dim"},
    "beta_vae_sprites": SPRITES_KEYS,
    "factor_vae_sprites": SPRITES_KEYS,
    "beta_tcvae_sprites": SPRITES_KEYS,
    "discrete_vae_mnist": {"test_neg_log_px", "test_log_px", "test_log_px_stderr", "test_elbo",
                           "encoder_variance[graph]", "encoder_variance[elbo [temperature=0.5]]"},
    "vq_vae_mnist": {"test_bits_per_dim", "test_bits_per_dim_uniform", "codebook_use", "dead_share_last_epoch"},
    "vq_vae2": {"test_bits_per_dim", "test_bits_per_dim_uniform", "codebook_use_top", "codebook_use_bottom"},
    "ss_vae_m2_mnist": {"test_accuracy", "valid_accuracy", "test_accuracy_at_best_valid", "test_elbo"},
}


def load_example(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_numbers(name: str, numbers: dict, out: Path) -> None:
    missing = EXPECTED[name] - set(numbers)
    assert not missing, f"{name} returned no {sorted(missing)}"
    bad = {key: numbers[key] for key in EXPECTED[name] if not math.isfinite(numbers[key])}
    assert not bad, f"{name} returned non-finite numbers {bad}"
    assert json.loads((out / "results.json").read_text()) == pytest.approx(numbers)


def test_every_example_is_tested_and_documented():
    assert {p.stem for p in EXAMPLES} == set(EXPECTED)
    readme = (EXAMPLES_DIR / "README.md").read_text()
    for path in EXAMPLES:
        assert f"examples/{path.name}" in readme, f"examples/README.md does not mention {path.name}"
        doc = load_example(path).__doc__
        assert "What it reaches" in doc and "arXiv:" in doc, f"{path.name} states no target and reference"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_smoke(path: Path, tmp_path):
    out = tmp_path / path.stem
    numbers = load_example(path).main(["--smoke", "--out", str(out)])
    check_numbers(path.stem, numbers, out)


def history_rows(out: Path) -> list[str]:
    return (out / "history.csv").read_text().splitlines()


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_resume_of_a_finished_run_trains_nothing(path: Path, tmp_path):
    """``--resume`` on a finished run reloads its checkpoint(s): no step taken, the same numbers."""
    out = tmp_path / path.stem
    example = load_example(path)
    first = example.main(["--smoke", "--out", str(out)])
    folders = sorted(p.parent for p in out.rglob("history.csv"))  # the VQ examples fit in stages
    before = {folder: history_rows(folder) for folder in folders}
    again = example.main(["--smoke", "--out", str(out), "--resume"])
    assert folders and {folder: history_rows(folder) for folder in folders} == before
    check_numbers(path.stem, again, out)
    # the same weights and seeds: the same evaluation (seconds are the record's, also unchanged)
    assert again == pytest.approx(first, rel=1e-6)


def test_killed_vae_run_resumes_where_it_stopped(tmp_path):
    """A run of 2 epochs resumed after 1 equals, row for row, the history of 2 epochs in one go."""
    example = load_example(EXAMPLES_DIR / "vae_mnist.py")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    example.main(["--smoke", "--epochs", "2", "--out", str(whole)])
    example.main(["--smoke", "--epochs", "1", "--out", str(parts)])
    example.main(["--smoke", "--epochs", "2", "--out", str(parts), "--resume"])
    drop_seconds = [[row.rsplit(",", 1)[0] for row in history_rows(folder)] for folder in (whole, parts)]
    assert len(drop_seconds[0]) == 3 and drop_seconds[0] == drop_seconds[1]


def test_killed_m2_run_keeps_its_accuracy_curve(tmp_path):
    example = load_example(EXAMPLES_DIR / "ss_vae_m2_mnist.py")
    out = tmp_path / "m2"
    example.main(["--smoke", "--epochs", "1", "--out", str(out)])
    first = (out / "accuracy.csv").read_text().splitlines()
    numbers = example.main(["--smoke", "--epochs", "2", "--out", str(out), "--resume"])
    curve = (out / "accuracy.csv").read_text().splitlines()
    assert len(curve) == 3 and curve[:2] == first and numbers["epochs"] == 2
    assert len(history_rows(out)) == 3  # epoch 1 not trained again


@pytest.mark.data
def test_vae_mnist_on_binarized_mnist_subset(shared_data, tmp_path):
    out = tmp_path / "vae_mnist"
    example = load_example(EXAMPLES_DIR / "vae_mnist.py")
    numbers = example.main(["--smoke", "--dataset", "binarized_mnist", "--data-root", str(shared_data),
                            "--num-train", "500", "--objective", "iwae", "--num-particles", "2", "--out", str(out)])
    check_numbers("vae_mnist", numbers, out)
    assert numbers["train_points"] == 500
    assert numbers["test_log_px"] < 0  # a probability of binary images


def test_discrete_vae_example_trains_jang_et_al_s_surrogate(tmp_path, capsys):
    """``--kl discrete``: relaxed draws in the reconstruction, the discrete KL; refused without relaxation."""
    example = load_example(EXAMPLES_DIR / "discrete_vae_mnist.py")
    out = tmp_path / "dkl"
    numbers = example.main(["--smoke", "--kl", "discrete", "--out", str(out)])
    check_numbers("discrete_vae_mnist", numbers, out)
    assert "discrete KL" in capsys.readouterr().out
    assert "surrogate term(s) 'z_kl': a training surrogate, not a bound" in (out / "estimators.txt").read_text()
    model = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert model["config"]["kl"] == "discrete" and model["config"]["relaxed"] is True
    with pytest.raises(SystemExit):
        example.parse_args(["--smoke", "--estimator", "graph", "--kl", "discrete"])
    assert "--kl discrete is the KL term of relaxed training" in capsys.readouterr().err
