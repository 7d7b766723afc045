"""Disentanglement metrics: closed forms, known answers on a small factor data set, and contracts.

The known-answer tests follow disentanglement_lib's own metric tests: a
ground-truth data set whose observations are the factor indices themselves
(4 factors of 4, 6, 10 and 20 values), and representations built from them
whose answer is known -- the factors, a permutation with monotone rescalings,
noise, a duplicated factor, a random rotation.  Sample sizes are small
(1,000 train / 500 test points) and the tolerances below are justified at
those sizes.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrovae.metrics import METRICS, evaluate_metrics
from pyrovae.metrics.base import (
    GroundTruth,
    Representation,
    discrete_entropy,
    discrete_mutual_info,
    histogram_discretize,
    sample_codes,
)
from pyrovae.metrics.beta_vae_score import beta_vae_score
from pyrovae.metrics.dci import dci_completeness, dci_disentanglement
from pyrovae.metrics.factor_vae_score import factor_vae_score, majority_vote_accuracy
from pyrovae.metrics.mig import mig, mig_from_codes, mutual_information_gaps
from pyrovae.metrics.modularity import modularity_from_mi
from pyrovae.metrics.sap import sap

METRICS_DIR = Path(__file__).resolve().parents[1] / "pyrovae" / "metrics"
FACTOR_SIZES = (4, 6, 10, 20)
NUM_FACTORS = len(FACTOR_SIZES)
#: small settings: 1,000 / 500 points and 20 boosting stages keep the file well under its time budget
SMALL = dict(num_train=1000, num_test=500, num_variance_estimate=1000, num_estimators=20, rng=0)
#: standard error of an accuracy near chance 1/K on SMALL's 500 test points
CHANCE = 1 / NUM_FACTORS
CHANCE_SE = math.sqrt(CHANCE * (1 - CHANCE) / SMALL["num_test"])


class IdentityObservations:
    """A ground-truth data set whose observations are its factor indices, as floats (no images needed)."""

    def __init__(self, factor_sizes: tuple[int, ...] = FACTOR_SIZES) -> None:
        self.factor_sizes = factor_sizes

    def sample_factors(self, n: int, rng: torch.Generator) -> torch.Tensor:
        return torch.stack([torch.randint(size, (n,), generator=rng) for size in self.factor_sizes], dim=1)

    def images(self, factors: torch.Tensor) -> torch.Tensor:
        return factors.double()


# ----------------------------------------------------------------------- representations
# Each entry makes a fresh representation, so a random one replays the same draws every time.


def _truth() -> Representation:
    return lambda x: x


PERMUTATION = (2, 0, 3, 1)


def _permuted_rescaled() -> Representation:
    # monotone maps that keep the <= 20 values of each factor in distinct bins of a 20-bin histogram
    # (consecutive values at least 1/19 of the range apart), so MIG sees the same partitions
    rescale = (lambda v: -2 * v + 3, lambda v: torch.exp(v), lambda v: 0.5 * v + 1, lambda v: torch.sqrt(v + 1))
    return lambda x: torch.stack([f(x[:, k]) for f, k in zip(rescale, PERMUTATION)], dim=1)


def _noise() -> Representation:
    generator = torch.Generator().manual_seed(1)
    return lambda x: torch.randn(x.shape[0], NUM_FACTORS, generator=generator, dtype=torch.float64)


def _duplicate() -> Representation:
    return lambda x: torch.cat([x, x[:, :1]], dim=1)


def _standardized(x: torch.Tensor) -> torch.Tensor:
    sizes = torch.tensor(FACTOR_SIZES, dtype=torch.float64)
    return (x - (sizes - 1) / 2) / torch.sqrt((sizes**2 - 1) / 12)


#: a Haar-random rotation (QR of a Gaussian matrix), fixed by its seed
ROTATION = torch.linalg.qr(
    torch.randn(NUM_FACTORS, NUM_FACTORS, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
)[0]


def _rotation() -> Representation:
    # rotate the standardized factors, so no factor dominates a code by its scale alone
    return lambda x: _standardized(x) @ ROTATION


REPRESENTATIONS = {
    "truth": _truth,
    "permuted_rescaled": _permuted_rescaled,
    "noise": _noise,
    "duplicate": _duplicate,
    "rotation": _rotation,
}


#: the metrics each representation's tests read (all of them where not listed), to save time
METRICS_READ = {"duplicate": ("mig", "dci"), "rotation": ("mig", "dci", "modularity")}


@functools.lru_cache(maxsize=None)
def scores(name: str) -> dict[str, float]:
    """The metrics of representation ``name`` at the SMALL settings (computed once per session)."""
    names = METRICS_READ.get(name, ("all",))
    return evaluate_metrics(REPRESENTATIONS[name](), IdentityObservations(), names=names, **SMALL)


@functools.lru_cache(maxsize=None)
def codes(name: str, num: int = SMALL["num_train"]) -> tuple[np.ndarray, np.ndarray]:
    return sample_codes(REPRESENTATIONS[name](), IdentityObservations(), num, rng=0)


def _mi_bias(num_code_bins: int, num_values: int, n: int) -> float:
    """Expected plug-in mutual information of independent discrete variables: (R - 1)(C - 1) / 2n nats."""
    return (num_code_bins - 1) * (num_values - 1) / (2 * n)


# ----------------------------------------------------------------------- closed forms


def test_ground_truth_protocol_is_structural():
    assert isinstance(IdentityObservations(), GroundTruth)
    assert not isinstance(object(), GroundTruth)


def test_histogram_discretize_gives_each_equally_spaced_value_its_own_bin():
    # 20 equally spaced values are 1/19 of the range apart, more than a bin (1/20): bins 1..20 in order
    values = np.linspace(-3.0, 5.0, 20)[:, None]
    np.testing.assert_array_equal(histogram_discretize(values, 20)[:, 0], np.arange(1, 21))
    # a constant code falls in a single bin
    assert np.unique(histogram_discretize(np.ones((7, 1)), 20)).size == 1


def test_plugin_entropy_and_mutual_information_closed_form():
    # each of n values exactly m times: H = log n exactly; a bijective code has I = H, a constant one 0
    n, m = 6, 5
    factors = np.repeat(np.arange(n), m)[:, None]
    np.testing.assert_allclose(discrete_entropy(factors), [math.log(n)], rtol=1e-12)
    codes_ = np.stack([factors[:, 0] * 7 + 2, np.zeros(n * m, dtype=int)], axis=1)
    np.testing.assert_allclose(discrete_mutual_info(codes_, factors), [[math.log(n)], [0.0]], atol=1e-12)


def test_dci_closed_forms():
    eye = np.eye(4)
    assert dci_disentanglement(eye) == pytest.approx(1.0, abs=1e-12)
    assert dci_completeness(eye) == pytest.approx(1.0, abs=1e-12)
    # every code equally important for every factor: maximal entropy both ways
    uniform = np.ones((5, 3))
    assert dci_disentanglement(uniform) == pytest.approx(0.0, abs=1e-12)
    assert dci_completeness(uniform) == pytest.approx(0.0, abs=1e-12)
    # one code serves all 3 factors (others unused): not disentangled, but complete
    one_code = np.zeros((4, 3))
    one_code[0] = 1.0
    assert dci_disentanglement(one_code) == pytest.approx(0.0, abs=1e-12)
    assert dci_completeness(one_code) == pytest.approx(1.0, abs=1e-12)
    # each factor split evenly over two of 2K codes: C = 1 - log(2) / log(2K), D still 1
    doubled = np.vstack([eye, eye])
    assert dci_disentanglement(doubled) == pytest.approx(1.0, abs=1e-12)
    assert dci_completeness(doubled) == pytest.approx(1 - math.log(2) / math.log(8), abs=1e-12)
    # unused codes carry no weight
    assert dci_disentanglement(np.vstack([eye, np.zeros((3, 4))])) == pytest.approx(1.0, abs=1e-12)
    assert dci_disentanglement(np.zeros((3, 3))) == 0.0


def test_modularity_closed_forms():
    diagonal = np.diag(np.full(5, 5.0))
    assert modularity_from_mi(diagonal) == pytest.approx(1.0, abs=1e-12)
    # codes that know nothing score 0: two perfect codes and one empty -> 2/3
    assert modularity_from_mi(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])) == pytest.approx(2 / 3, abs=1e-12)
    assert modularity_from_mi(np.zeros((4, 4))) == 0.0
    # redundancy is not penalised by modularity
    assert modularity_from_mi(np.vstack([diagonal, diagonal])) == pytest.approx(1.0, abs=1e-12)
    # each code equally informative about 2 of 10 factors: delta = 1/9
    assert modularity_from_mi(np.hstack([diagonal, diagonal])) == pytest.approx(1 - 1 / 9, abs=1e-12)


def test_majority_vote_accuracy_closed_form():
    train = np.array([[5, 0, 1], [1, 4, 0]])  # code 0 -> factor 0, code 1 -> factor 1, code 2 -> factor 0
    test = np.array([[3, 1, 2], [1, 2, 1]])
    assert majority_vote_accuracy(train, test) == pytest.approx((3 + 2 + 2) / 10)


def test_mig_from_codes_is_exact_for_a_bijective_code_on_a_balanced_grid():
    # every combination of two factors once: codes copying them have I = H and cross terms exactly 0
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(5), indexing="ij"), -1).reshape(-1, 2)
    assert mig_from_codes(grid.astype(float), grid)["mig"] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(mutual_information_gaps(grid[:, ::-1].astype(float), grid), [1.0, 1.0], atol=1e-12)


# ----------------------------------------------------------------------- known answers


@pytest.mark.parametrize("name", ["truth", "permuted_rescaled"])
def test_true_factors_score_at_the_top(name):
    s = scores(name)
    # MIG: the matching code has I = H exactly (values in distinct bins); the runner-up is an
    # independent code whose plug-in MI is biased up by (R-1)(C-1)/2n, at most 19*19/2000 nats,
    # i.e. 0.06 of H for the 20-value factor: MIG > 0.9 holds with that bias three times over.
    assert _mi_bias(20, 20, SMALL["num_train"]) / math.log(20) < 0.07
    assert s["mig"] > 0.9
    assert s["dci_disentanglement"] > 0.9
    assert s["dci_completeness"] > 0.9
    # fixing factor k zeroes code k exactly: separable (BetaVAE) or a zero-variance winner (FactorVAE)
    assert s["beta_vae_score"] > 0.95
    assert s["factor_vae_score"] > 0.95
    assert s["factor_vae_num_active_dims"] == NUM_FACTORS
    # modularity: delta_j is a sum of squared biases over H^2, below 0.01 at these sizes
    assert s["modularity"] > 0.99
    # explicitness: each value of a factor is an interval of one code; the one-vs-rest AUC of a
    # linear softmax is near 1 (standard error of a 500-point AUC about 0.01)
    assert s["explicitness"] > 0.95


def test_permutation_and_monotone_rescaling_leave_mig_unchanged():
    # same draws (same rng); each code's histogram partition is the same partition of factor values
    assert scores("permuted_rescaled")["mig"] == pytest.approx(scores("truth")["mig"], abs=1e-12)


def test_true_factors_have_top_sap_for_continuous_factors():
    # R^2 is 1 for the matching code and ~ chi2_1 / n for the others: SAP ~ 1 - O(1/n)
    result = sap(lambda x: x, IdentityObservations(), num_train=1000, num_test=500, continuous_factors=True, rng=0)
    assert result["sap"] > 0.95


def test_noise_scores_at_the_bottom():
    s = scores("noise")
    # chance level for both intervention scores: any classifier independent of the 500 fresh
    # test labels scores 1/K in expectation, with standard error CHANCE_SE ~ 0.019 (5 se margin)
    assert abs(s["beta_vae_score"] - CHANCE) < 5 * CHANCE_SE
    assert abs(s["factor_vae_score"] - CHANCE) < 5 * CHANCE_SE
    # MIG: plug-in MI of independent variables fluctuates with sd sqrt(2 df) / 2n nats
    # (df = 19*19 at most): 0.013 nats, 0.005 of H; the gap of the top two is of that order
    mi_sd = math.sqrt(2 * 19 * 19) / (2 * SMALL["num_train"]) / math.log(4)
    assert s["mig"] < 5 * mi_sd
    # importances of trees fitted to noise are spread evenly: high entropy both ways
    assert s["dci_disentanglement"] < 0.1
    assert s["dci_completeness"] < 0.1
    # test accuracy of noise is chance, mean_k 1/n_k = 0.14; train accuracy is overfitting
    assert s["dci_informativeness"] < np.mean(1 / np.array(FACTOR_SIZES)) + 5 * CHANCE_SE
    # SAP: differences of SVM accuracies on independent test data, se ~ 0.02 each
    assert s["sap"] < 0.1
    # explicitness: AUC of an independent score is 0.5; averaged over 40 one-vs-rest AUCs its se is < 0.02
    assert abs(s["explicitness"] - 0.5) < 0.1


def test_noise_has_no_continuous_sap():
    noise = _noise()
    result = sap(noise, IdentityObservations(), num_train=1000, num_test=500, continuous_factors=True, rng=0)
    # R^2 of independent variables is ~ chi2_1 / n: a few thousandths
    assert result["sap"] < 0.02


def test_discrete_sap_ranks_true_factors_far_above_noise():
    # with discrete factors a linear SVM on one code separates only the extreme values of a
    # factor, so even the true factors score well below 1 (disentanglement_lib's definition);
    # the ranking against noise (se ~ 0.02) is what the score is for
    assert scores("truth")["sap"] > scores("noise")["sap"] + 0.2


def test_duplicated_factor_has_zero_mig_for_that_factor():
    gaps = mutual_information_gaps(*codes("duplicate"))
    # two identical codes have identical MI with every factor: the gap is exactly 0
    assert gaps[0] == pytest.approx(0.0, abs=1e-12)
    assert np.all(gaps[1:] > 0.9)
    # the average loses a quarter
    assert scores("duplicate")["mig"] == pytest.approx(np.mean(gaps), abs=1e-12)
    assert scores("duplicate")["mig"] < 0.76
    # DCI: disentanglement is untouched, completeness drops (factor 0 spread over two codes)
    assert scores("duplicate")["dci_disentanglement"] > 0.9
    assert scores("duplicate")["dci_completeness"] < scores("truth")["dci_completeness"] - 0.05
    # continuous SAP: the duplicated factor's top-two gap is exactly 0
    result = sap(_duplicate(), IdentityObservations(), num_train=1000, num_test=500, continuous_factors=True, rng=0)
    assert result["sap"] < 0.76


def test_random_rotation_lowers_dci_disentanglement_and_mig_markedly():
    truth, rotated = scores("truth"), scores("rotation")
    # a rotation mixes every factor into every code; the rotation is fixed by its seed,
    # and both scores fall to under half of the truth's (measured ~0.38 vs ~1)
    assert rotated["dci_disentanglement"] < 0.5 * truth["dci_disentanglement"]
    assert rotated["mig"] < 0.5 * truth["mig"]
    # the information is all still there, linearly: explicitness stays high
    assert rotated["explicitness"] > 0.95


def test_a_code_that_mixes_factors_per_point_has_low_modularity():
    # disentanglement_lib's bad case: each point's codes are its factors in a random order, so
    # every code carries the same information about every factor (10 values each, as there)
    generator = torch.Generator().manual_seed(3)

    def shuffled(x: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(torch.rand(x.shape, generator=generator), dim=1)
        return torch.gather(x, 1, order)

    data = IdentityObservations((10, 10, 10, 10))
    result = METRICS["modularity"](shuffled, data, num_train=1000, num_test=500, rng=0)
    # the four MI estimates per code are equal in expectation (~0.19 nats) with relative sd ~0.1 at
    # n = 1,000, so 1 - delta is ~0.2-0.3; under 0.5 needs the largest 4 sd above the others
    assert result["modularity"] < 0.5


# ----------------------------------------------------------------------- FactorVAE pruning and factors of one value


def test_factor_vae_prunes_collapsed_codes():
    # a fifth code with sd 0.01 < 0.05 is left out, and cannot win a vote
    def with_collapsed(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, 0.01 * x[:, :1] / 3], dim=1)

    data = IdentityObservations()
    result = factor_vae_score(with_collapsed, data, num_train=200, num_test=100, num_variance_estimate=500)
    assert result["factor_vae_num_active_dims"] == NUM_FACTORS
    assert result["factor_vae_score"] == 1.0
    collapsed = factor_vae_score(lambda x: 1e-3 * x, data, num_train=10, num_test=10, num_variance_estimate=100)
    assert collapsed == {"factor_vae_score": 0.0, "factor_vae_score_train": 0.0, "factor_vae_num_active_dims": 0.0}


def test_factors_with_one_value_are_never_fixed_or_scored():
    data = IdentityObservations((1, 4, 6))
    assert beta_vae_score(lambda x: x, data, num_train=200, num_test=100)["beta_vae_score"] > 0.95
    result = factor_vae_score(lambda x: x, data, num_train=200, num_test=100, num_variance_estimate=200)
    assert result["factor_vae_score"] == 1.0
    assert mig(lambda x: x, data, num_train=500)["mig"] > 0.9


# ----------------------------------------------------------------------- images: any data set with the interface


def test_metrics_run_on_sprites():
    sprites = pytest.importorskip("pyrovae.datasets.sprites")
    data = sprites.Sprites()
    grid = torch.arange(64, dtype=torch.float32) + 0.5

    def centroid_and_area(images: torch.Tensor) -> torch.Tensor:
        # a hand-written encoder: the sprite's centre of mass and its area
        mass = images.sum(dim=(1, 2, 3))
        x = (images.sum(dim=(1, 2)) * grid).sum(dim=1) / mass
        y = (images.sum(dim=(1, 3)) * grid).sum(dim=1) / mass
        return torch.stack([x, y, mass], dim=1)

    assert isinstance(data, GroundTruth)
    gaps = mutual_information_gaps(*_sample(centroid_and_area, data, 1000))
    # posX and posY (factors 3 and 4) are read off one code each: the centroid moves a pixel per
    # position step, and 20 bins over ~31 pixels merge about two steps (losing log 2 of log 32,
    # a gap near 0.8; measured 0.64 with the shapes' own offsets); orientation is read by none
    assert gaps[3] > 0.4 and gaps[4] > 0.4
    assert gaps[2] < 0.1
    result = factor_vae_score(centroid_and_area, data, num_train=100, num_test=100, num_variance_estimate=500)
    assert 0.0 <= result["factor_vae_score"] <= 1.0


def _sample(representation: Representation, data: GroundTruth, num: int) -> tuple[np.ndarray, np.ndarray]:
    return sample_codes(representation, data, num, images_per_call=128, rng=0)


# ----------------------------------------------------------------------- determinism and options


def test_same_rng_same_scores_and_batching_does_not_change_them():
    # factors are drawn before the representation is called, so batching changes nothing
    data, rotation = IdentityObservations(), _rotation()
    first = mig(rotation, data, num_train=300, images_per_call=300, rng=5)
    assert mig(rotation, data, num_train=300, images_per_call=7, rng=5) == first
    assert mig(rotation, data, num_train=300, rng=torch.Generator().manual_seed(5)) == first
    a = beta_vae_score(rotation, data, num_train=60, num_test=30, points_per_call=16, rng=4)
    assert beta_vae_score(rotation, data, num_train=60, num_test=30, points_per_call=3, rng=4) == a
    assert mig(rotation, data, num_train=300, rng=6) != first


def test_evaluate_metrics_seeds_each_metric_afresh():
    data = IdentityObservations()
    both = evaluate_metrics(_truth(), data, names=("mig", "sap"), num_train=300, num_test=200, rng=7)
    alone = evaluate_metrics(_truth(), data, names="sap", num_train=300, num_test=200, rng=7)
    assert both["sap"] == alone["sap"]
    assert set(both) == {"mig", "sap"}


def test_evaluate_metrics_rejects_unknown_names_and_options():
    data = IdentityObservations()
    with pytest.raises(ValueError, match="Expected metric names"):
        evaluate_metrics(_truth(), data, names=("mig", "nope"))
    with pytest.raises(ValueError, match="num_trian"):
        evaluate_metrics(_truth(), data, names=("mig",), num_trian=3)
    with pytest.raises(ValueError, match="Expected num_train to be an int >= 1"):
        mig(_truth(), data, num_train=0)
    with pytest.raises(ValueError, match="as many codes"):
        mig_from_codes(np.zeros((3, 2)), np.zeros((4, 2), dtype=int))
    with pytest.raises(TypeError, match="rng"):
        mig(_truth(), data, num_train=10, rng=0.5)


# ----------------------------------------------------------------------- contracts over the table


def _defined_functions(path: Path) -> set[str]:
    return {node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)}


def test_every_metric_file_is_in_the_table_under_its_stem():
    # a module defining a function named after itself is a metric (rule: one metric per file)
    stems = {p.stem for p in METRICS_DIR.glob("*.py") if p.stem in _defined_functions(p)}
    assert stems == set(METRICS)
    for name, metric in METRICS.items():
        assert metric.__module__ == f"pyrovae.metrics.{name}"


#: a cheaper data set and settings for the contract checks
TINY_DATA = IdentityObservations((3, 5))
TINY = dict(num_train=200, num_test=100, num_variance_estimate=200, num_estimators=10, rng=1)


@functools.lru_cache(maxsize=None)
def tiny_scores() -> dict[str, float]:
    return evaluate_metrics(_rotation_2d(), TINY_DATA, **TINY)


def _rotation_2d() -> Representation:
    angle = torch.tensor(0.3, dtype=torch.float64)
    matrix = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    return lambda x: x @ matrix


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_contract(name):
    metric = METRICS[name]
    parameters = inspect.signature(metric).parameters
    assert list(parameters)[:2] == ["representation", "data"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(parameters.values())[2:])
    assert parameters["rng"].default == 0 and "num_train" in parameters
    own = metric(_rotation_2d(), TINY_DATA, **{k: v for k, v in TINY.items() if k in parameters})
    assert own and all(isinstance(v, float) and math.isfinite(v) for v in own.values())
    # evaluate_metrics gives each metric what it accepts and a fresh seed: the same numbers as alone
    assert {key: tiny_scores()[key] for key in own} == own


#: disentanglement_lib's defaults, which the issue asks to be the documented defaults
DISENTANGLEMENT_LIB_DEFAULTS = {
    "mig": {"num_train": 10_000, "num_bins": 20},
    "dci": {"num_train": 10_000, "num_test": 5_000},
    "beta_vae_score": {"num_train": 10_000, "num_test": 5_000, "batch_size": 64},
    "factor_vae_score": {"num_train": 10_000, "num_test": 5_000, "num_variance_estimate": 10_000,
                         "batch_size": 64, "prune_threshold": 0.05},
    "sap": {"num_train": 10_000, "num_test": 5_000, "continuous_factors": False},
    "modularity": {"num_train": 10_000, "num_test": 5_000, "num_bins": 20},
}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_defaults_are_disentanglement_libs(name):
    parameters = inspect.signature(METRICS[name]).parameters
    assert {key: parameters[key].default for key in DISENTANGLEMENT_LIB_DEFAULTS[name]} == DISENTANGLEMENT_LIB_DEFAULTS[name]


def test_sap_svm_uses_c_0_01(monkeypatch):
    """The SVM's C is disentanglement_lib's 0.01, and it is the constant the SVMs are built with."""
    sap_module = importlib.import_module("pyrovae.metrics.sap")  # the function of the same name shadows it
    assert sap_module.SVM_C == 0.01
    built = []
    original = sap_module.LinearSVC
    monkeypatch.setattr(sap_module, "LinearSVC", lambda **kw: (built.append(kw["C"]), original(**kw))[1])
    sap(_rotation_2d(), TINY_DATA, num_train=100, num_test=50, rng=0)
    assert built and set(built) == {0.01}


def test_batch_size_means_the_score_groups_only():
    """``batch_size`` is the BetaVAE and FactorVAE scores' group size and no other metric's
    argument (their memory knob is ``images_per_call``), so evaluate_metrics cannot pass it to them."""
    takes = {name for name, metric in METRICS.items() if "batch_size" in inspect.signature(metric).parameters}
    assert takes == {"beta_vae_score", "factor_vae_score"}
    with pytest.raises(TypeError):
        mig(_rotation_2d(), TINY_DATA, num_train=100, batch_size=3)
    # the group size changes what the score measures (groups of 2 average far less noise away)
    noisy = _noise_added(0.5)
    large = beta_vae_score(noisy, TINY_DATA, num_train=200, num_test=100, batch_size=64, rng=1)["beta_vae_score"]
    small = beta_vae_score(noisy, TINY_DATA, num_train=200, num_test=100, batch_size=2, rng=1)["beta_vae_score"]
    assert small < large
    # and images_per_call changes nothing
    assert mig(_rotation_2d(), TINY_DATA, num_train=200, images_per_call=7, rng=1) == \
        mig(_rotation_2d(), TINY_DATA, num_train=200, rng=1)


def _noise_added(sd: float) -> Representation:
    generator = torch.Generator().manual_seed(7)

    def represent(x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        return x + sd * torch.randn(x.shape, generator=generator, dtype=torch.float64)

    return represent


def test_metrics_never_import_models_or_training():
    # the floor: metrics on arrays depend on torch, numpy and scikit-learn, and on each other
    forbidden = ("pyrovae.models", "pyrovae.train", "pyrovae.objectives", "pyrovae.datasets")
    for name in METRICS:
        tree = ast.parse((METRICS_DIR / f"{name}.py").read_text())
        imported = {
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        }
        assert not [m for m in imported if m and m.startswith(forbidden)], name
    base = ast.parse((METRICS_DIR / "base.py").read_text())
    assert not [n for n in ast.walk(base) if isinstance(n, ast.ImportFrom) and n.module.startswith(forbidden)]
    importlib.import_module("pyrovae.metrics")


def test_encoder_calls_are_capped_at_the_measured_size():
    """Calls of 256 sprites cost 3x the time of 128 on these machines (the heap grown and trimmed
    every call, benchmarks/encode_calls.py): however many images a metric asks for, each call holds
    at most BYTES_PER_CALL (128 sprites), and the codes do not depend on the split."""
    from pyrovae import datasets
    from pyrovae.metrics.base import BYTES_PER_CALL, IMAGES_PER_CALL, sample_codes

    data = datasets.load("sprites", "test", num_train=64).info["factors"]
    sizes = []

    def representation(x):
        sizes.append(x.shape[0])
        return x.flatten(1)[:, :3] * 2.0

    big = sample_codes(representation, data, 300, images_per_call=2048, rng=0)
    per_image = 64 * 64 * 4  # one float32 64x64 sprite
    assert max(sizes) <= BYTES_PER_CALL // per_image == IMAGES_PER_CALL == 128
    sizes.clear()
    small = sample_codes(representation, data, 300, images_per_call=7, rng=0)
    assert max(sizes) == 7
    assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(big, small))
