"""Bad inputs refused at once, in one line naming the argument (issue 11, items 9, 10, 14, 15).

Every case here used to crash deep inside torch or scikit-learn, or worse, to
give a degenerate network or a number: a width of 0 or 2.5, ``hidden="400"``
read as ``(4, 0, 0)``, an infinite weight that trains to NaN at step 0,
``binarize="yes"`` thresholding digits, 1-D codes scored as if they were ``(n, 1)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyrovae.datasets import load
from pyrovae.handlers import kl_scale
from pyrovae.metrics import evaluate_metrics, mig_from_codes
from pyrovae.metrics.beta_vae_score import beta_vae_score
from pyrovae.metrics.dci import dci_from_codes
from pyrovae.metrics.modularity import modularity_from_codes
from pyrovae.metrics.sap import sap_from_codes
from pyrovae.models import MODELS
from pyrovae.nets import MLP, ConvDecoder, ConvEncoder, make_decoder, make_encoder
from pyrovae.schedules import Constant, Cyclical, Linear, make_schedule

INF, NAN = math.inf, math.nan
SMALL = {"x_shape": (6,), "z_dim": 2, "hidden": (4,)}


# ---------------------------------------------------------------- item 9: widths and channels
BAD_HIDDEN = [[-4], [0], "400", [2.5], 5, [True], None, [4, 0]]
BAD_CHANNELS = [[], [0], [-1], "32", [2.0], 8, (4, False)]


@pytest.mark.parametrize("hidden", BAD_HIDDEN, ids=repr)
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_a_model_refuses_bad_hidden_widths(hidden, arch):
    with pytest.raises(ValueError, match=r"^Expected hidden to be a sequence of positive ints, e\.g\. \(400,\), got "):
        MODELS["vae"](x_shape=(1, 16, 16), z_dim=2, arch=arch, hidden=hidden)


@pytest.mark.parametrize("channels", BAD_CHANNELS, ids=repr)
@pytest.mark.parametrize("arch", ["conv", "auto", "mlp"])
def test_a_model_refuses_bad_channels_whatever_the_architecture(channels, arch):
    with pytest.raises(ValueError, match=r"^Expected channels to be a non-empty sequence of positive ints, e\.g\. "):
        MODELS["vae"](x_shape=(1, 16, 16), z_dim=2, arch=arch, channels=channels)


def test_the_message_shows_the_value_as_given():
    with pytest.raises(ValueError) as info:
        MODELS["vae"](x_shape=(6,), z_dim=2, hidden="400")
    assert str(info.value) == "Expected hidden to be a sequence of positive ints, e.g. (400,), got '400'"


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: MLP(6, {"loc": 2}, hidden="400"), "hidden"),
        (lambda: MLP(6, {"loc": 2}, hidden=[0]), "hidden"),
        (lambda: MLP(True, {"loc": 2}), "in_shape"),  # a bool is not a size
        (lambda: MLP(6, {"loc": True}), "heads"),
        (lambda: ConvEncoder((1, 8, 8), {"loc": 2}, channels=[]), "channels"),
        (lambda: ConvEncoder((1, 8, 8), {"loc": 2}, channels=[0]), "channels"),
        (lambda: ConvEncoder((1, 8, 8), {"loc": 2}, hidden=0), "hidden"),
        (lambda: ConvEncoder((1, 8, 8), {"loc": 2}, hidden=[16]), "hidden"),
        (lambda: ConvDecoder(2, (1, 8, 8), ("loc",), channels=[]), "channels"),
        (lambda: ConvDecoder(2, (1, 8, 8), ("loc",), hidden=2.5), "hidden"),
        (lambda: ConvDecoder(0, (1, 8, 8), ("loc",)), "in_dim"),
        (lambda: ConvDecoder(2, (1, 8, 8), ()), "head"),
        (lambda: make_encoder("conv", (1, 8, 8), {"loc": 2}, hidden="400"), "hidden"),
        (lambda: make_decoder("mlp", 2, (6,), ("loc",), hidden=[3.0]), "hidden"),
        (lambda: make_encoder("mlp", (6,), {"loc": 2}, channels=[-2]), "channels"),
    ],
)
def test_networks_refuse_bad_widths_naming_them(build, match):
    with pytest.raises(ValueError, match=f"^Expected .*{match}"):
        build()


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"x_shape": "784"}, "x_shape"),  # read as (7, 8, 4)
        ({"x_shape": (10.5,)}, "x_shape"),  # truncated to 10
        ({"x_shape": ()}, "x_shape"),
        ({"z_dim": True}, "z_dim"),
    ],
)
def test_a_model_refuses_bad_shapes(options, name):
    with pytest.raises(ValueError, match=f"^Expected {name}"):
        MODELS["vae"](**{**SMALL, **options})


@pytest.mark.parametrize("hidden", ["400", [0], [2.5], 1000], ids=repr)
def test_factor_vae_refuses_bad_discriminator_widths(hidden):
    with pytest.raises(ValueError, match="^Expected discriminator_hidden to be a sequence of positive ints"):
        MODELS["factor_vae"](**SMALL, discriminator_hidden=hidden)


@pytest.mark.parametrize(
    "options",
    [{"hidden": ()}, {"hidden": [3, 5]}, {"hidden": (np.int64(4),)}, {"x_shape": np.int64(6)}, {"x_shape": torch.Size([6])}],
    ids=repr,
)
def test_good_widths_still_build(options):
    model = MODELS["vae"](**{**SMALL, **options})
    assert model.config["hidden"] == [int(h) for h in options.get("hidden", SMALL["hidden"])]
    assert all(type(h) is int for h in model.config["hidden"])  # JSON-safe for checkpoints


# ---------------------------------------------------------------- item 10: weights and rates
NON_FINITE = [INF, -INF, NAN]

WEIGHTS = [
    ("beta_vae", "beta"),
    ("capacity_vae", "gamma"),
    ("capacity_vae", "capacity_max"),
    ("factor_vae", "gamma"),
    ("factor_vae", "discriminator_lr"),
    ("beta_tcvae", "alpha"),
    ("beta_tcvae", "beta"),
    ("beta_tcvae", "gamma"),
    ("dip_vae", "lambda_od"),
    ("dip_vae", "lambda_d"),
]


@pytest.mark.parametrize("value", [INF, -INF], ids=repr)
@pytest.mark.parametrize(("model", "name"), WEIGHTS, ids=lambda v: v if isinstance(v, str) else None)
def test_models_refuse_infinite_weights_naming_them(model, name, value):
    with pytest.raises(ValueError, match=rf"^Expected {name} .*finite, got {value!r}$"):
        MODELS[model](**SMALL, **{name: value})


@pytest.mark.parametrize(("model", "name"), WEIGHTS, ids=lambda v: v if isinstance(v, str) else None)
def test_models_refuse_bool_weights(model, name):
    # True == 1 would silently pass a numeric check
    with pytest.raises(ValueError, match=f"^Expected {name} to be a number"):
        MODELS[model](**SMALL, **{name: True})


def test_dip_vae_names_an_overflowing_default_diagonal_weight():
    with pytest.raises(ValueError, match=r"^Expected lambda_d \(by default 10 \* lambda_od\) >= 0 and finite, got inf"):
        MODELS["dip_vae"](**SMALL, lambda_od=1e308)


@pytest.mark.parametrize("lr", [3e38, 1e3, 1.5, INF], ids=repr)
def test_factor_vae_refuses_absurd_discriminator_learning_rates(lr):
    # 3e38 overflowed inside torch's Adam; an Adam step of size > 1 diverges at once
    with pytest.raises(ValueError, match="^Expected discriminator_lr"):
        MODELS["factor_vae"](**SMALL, discriminator_lr=lr)


def test_factor_vae_refuses_bool_betas():
    with pytest.raises(ValueError, match="^Expected discriminator_betas"):
        MODELS["factor_vae"](**SMALL, discriminator_betas=(False, 0.9))


@pytest.mark.parametrize("scale", [INF, True], ids=repr)
def test_a_fixed_likelihood_scale_must_be_finite(scale):
    with pytest.raises(ValueError, match="^Expected likelihood_scale"):
        MODELS["vae"](**SMALL, likelihood="gaussian", likelihood_scale=scale)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: make_schedule(INF), r"^Expected kl_weight >= 0 and finite, got inf$"),
        (lambda: make_schedule(INF, name="capacity"), r"^Expected capacity >= 0 and finite, got inf$"),
        (lambda: make_schedule({"name": "linear", "end": INF}), "^Expected end"),
        (lambda: make_schedule({"name": "cyclical", "start": INF}), "^Expected start"),
        (lambda: Constant(INF), "^Expected value"),
        (lambda: Constant(True), "^Expected value"),
        (lambda: Linear(start=0.0, end=INF), "^Expected end"),
        (lambda: Linear(num_steps=True), "^Expected num_steps"),
        (lambda: Cyclical(end=INF), "^Expected end"),
        (lambda: Cyclical(num_cycles=True), "^Expected num_cycles"),
    ],
)
def test_schedules_refuse_non_finite_values(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_kl_scale_refuses_an_infinite_weight():
    with pytest.raises(ValueError, match="^Expected kl_weight >= 0 and finite, got inf"):
        kl_scale(INF)


# ---------------------------------------------------------------- item 14: binarize per data set
@pytest.mark.parametrize("binarize", ["yes", "weird", "dynamic", "static", 1, 0.5, "True"], ids=repr)
def test_digits_accepts_only_a_flag(binarize):
    with pytest.raises(ValueError, match=r"^Expected binarize in \(False, True, None\) for digits \(a flag\), got "):
        load("digits", binarize=binarize)


@pytest.mark.parametrize(("binarize", "support"), [(True, "binary"), (False, "unit_interval"), (None, "unit_interval")])
def test_digits_documented_binarize_values_still_work(binarize, support):
    assert load("digits", "valid", binarize=binarize).support == support


@pytest.mark.parametrize(("name", "accepted"), [("mnist", r"\(None, 'dynamic', 'static'\)"), ("fashion_mnist", r"\(None, 'dynamic'\)")])
@pytest.mark.parametrize("binarize", [True, "weird"], ids=repr)
def test_mnist_like_loaders_name_their_views(tmp_path, name, accepted, binarize):
    # checked before any file is looked for (tmp_path is empty)
    with pytest.raises(ValueError, match=rf"^Expected binarize in {accepted}, got "):
        load(name, root=tmp_path, binarize=binarize)


# ---------------------------------------------------------------- item 15: codes and data of metrics
class Grid:
    """Two factors of 4 values; the images are the factor indices themselves."""

    factor_sizes = (4, 4)

    def sample_factors(self, n: int, rng: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 4, (n, 2), generator=rng)

    def images(self, factors: torch.Tensor) -> torch.Tensor:
        return factors.to(torch.float64)


def _random_codes(*shape: int):
    generator = torch.Generator().manual_seed(0)
    return lambda x: torch.randn(x.shape[0], *shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(), (2, 2), (1, 3, 1)], ids=lambda s: f"codes(n, {', '.join(map(str, s))})")
@pytest.mark.parametrize("name", ["mig", "beta_vae_score"])
def test_evaluate_metrics_refuses_codes_that_are_not_n_by_d(shape, name):
    # (n,) codes used to be reshaped to (n, 1) and scored: MIG 0.25 for random 1-D codes
    options = {"num_train": 40, "num_test": 20, "batch_size": 4}
    with pytest.raises(ValueError, match=r"^Expected the representation to return codes of shape \(n, d\)"):
        evaluate_metrics(_random_codes(*shape), Grid(), names=(name,), **options)


@pytest.mark.parametrize("bad", [NAN, INF], ids=repr)
def test_metrics_refuse_non_finite_codes_from_the_representation(bad):
    def represent(x):
        codes = x.clone()
        codes[0, 0] = bad
        return codes

    with pytest.raises(ValueError, match="^The representation returned 1 NaN/Inf code values"):
        beta_vae_score(represent, Grid(), num_train=4, num_test=2, batch_size=4)


def test_metrics_refuse_a_representation_returning_no_numbers():
    with pytest.raises(ValueError, match=r"^Expected the representation to return codes \(n, d\)"):
        evaluate_metrics(lambda x: "codes", Grid(), names=("mig",), num_train=10)


@pytest.mark.parametrize("data", [torch.zeros(10, 2), np.zeros((10, 2)), "sprites", None], ids=lambda d: type(d).__name__)
@pytest.mark.parametrize("name", ["mig", "beta_vae_score", "factor_vae_score", "dci", "sap", "modularity"])
def test_metrics_refuse_data_without_factors(data, name):
    # evaluate_metrics(rep, tensor) raised AttributeError: 'Tensor' object has no attribute 'sample_factors'
    with pytest.raises(TypeError, match="^Expected data to be a ground-truth-factor data set"):
        evaluate_metrics(lambda x: x, data, names=(name,))


@pytest.mark.parametrize("representation", [None, "mean", torch.zeros(3)], ids=lambda r: type(r).__name__)
def test_evaluate_metrics_refuses_a_representation_that_is_not_a_function(representation):
    with pytest.raises(TypeError, match="^Expected representation to be a function from images"):
        evaluate_metrics(representation, Grid(), names=("mig",))


def _codes_factors(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)), rng.integers(0, 3, size=(n, 2))


def _with_nonfinite_factor(value: float) -> np.ndarray:
    factors = _codes_factors()[1].astype(np.float64)
    factors[0, 0] = value
    return factors


CODES, FACTORS = _codes_factors()
BAD_PAIRS = {
    "no points": (CODES[:0], FACTORS[:0], r"n, d, K >= 1"),
    "no code columns": (CODES[:, :0], FACTORS, r"n, d, K >= 1"),
    "inf factor": (CODES, _with_nonfinite_factor(INF), "integer factor indices"),
    "-inf factor": (CODES, _with_nonfinite_factor(-INF), "integer factor indices"),
    "complex codes": (CODES + 1j, FACTORS, "Expected codes to be real numbers"),
    "string codes": ("codes", FACTORS, r"Expected codes to be an array of numbers of shape \(n, d\)"),
    "object factors": (CODES, np.array([[None, None]] * 60), r"Expected factors to be an array of numbers of shape \(n, K\)"),
}


def _call(metric: str, codes, factors) -> dict:
    if metric == "mig":
        return mig_from_codes(codes, factors)
    function = {"dci": dci_from_codes, "sap": sap_from_codes, "modularity": modularity_from_codes}[metric]
    options = {"num_estimators": 2} if metric == "dci" else {}
    return function(codes, factors, CODES, FACTORS, **options)


@pytest.mark.parametrize("case", sorted(BAD_PAIRS))
@pytest.mark.parametrize("metric", ["mig", "dci", "sap", "modularity"])
def test_metrics_on_arrays_refuse_bad_codes_and_factors(metric, case):
    codes, factors, match = BAD_PAIRS[case]
    with pytest.raises(ValueError, match=match):
        _call(metric, codes, factors)


def test_metrics_on_arrays_take_tensors_that_require_grad():
    codes = torch.tensor(CODES, requires_grad=True)
    assert mig_from_codes(codes, torch.tensor(FACTORS)) == mig_from_codes(CODES, FACTORS)
