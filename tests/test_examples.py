"""Every example runs on its smoke setting, in-process, and returns finite numbers under the expected keys."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

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


@pytest.mark.data
def test_vae_mnist_on_binarized_mnist_subset(shared_data, tmp_path):
    out = tmp_path / "vae_mnist"
    example = load_example(EXAMPLES_DIR / "vae_mnist.py")
    numbers = example.main(["--smoke", "--dataset", "binarized_mnist", "--data-root", str(shared_data),
                            "--num-train", "500", "--objective", "iwae", "--num-particles", "2", "--out", str(out)])
    check_numbers("vae_mnist", numbers, out)
    assert numbers["train_points"] == 500
    assert numbers["test_log_px"] < 0  # a probability of binary images
