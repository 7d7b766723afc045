"""Pictures: each is a PNG of the promised layout, drawn (not blank), in a folder created on demand."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib
import numpy
import pytest
import torch
from PIL import Image

from test_contracts import make_data, small_model

from pyrovae import VAE, plots
from pyrovae.cli import main
from pyrovae.models import MODELS

PAD = 2  # torchvision's save_image padding, as plots._save uses it


def _grid_size(rows: int, cols: int, height: int = 8, width: int = 8) -> tuple[int, int]:
    """(width, height) in pixels of a save_image grid of rows x cols tiles."""
    return cols * (width + PAD) + PAD, rows * (height + PAD) + PAD


def _pixels(path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.tensor(numpy.array(image.convert("L")), dtype=torch.float32)  # (height, width)


def _drawn(path) -> bool:
    with Image.open(path) as image:
        low, high = image.convert("L").getextrema()
    return low < high


@pytest.fixture
def vae() -> VAE:
    torch.manual_seed(0)
    return VAE(x_shape=(1, 8, 8), z_dim=3, hidden=(16,)).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_traversal_grid_has_one_row_per_dimension_and_seed(vae, x, tmp_path):
    path = plots.traversal_grid(vae, x, tmp_path / "deep" / "traversals.png", num_seeds=2, num_values=7)
    with Image.open(path) as image:
        assert image.size == _grid_size(rows=2 * vae.z_dim, cols=7)
    assert _drawn(path)


def test_traversal_rows_follow_decreasing_kl(vae, x, tmp_path):
    """Ordering by a KL vector draws the same picture as naming the dimensions in that order."""
    by_kl = plots.traversal_grid(vae, x, tmp_path / "by_kl.png", order_by_kl=torch.tensor([0.1, 5.0, 1.0]))
    named = plots.traversal_grid(vae, x, tmp_path / "named.png", dims=[1, 2, 0])
    other = plots.traversal_grid(vae, x, tmp_path / "other.png", dims=[0, 1, 2])
    assert torch.equal(_pixels(by_kl), _pixels(named))
    assert not torch.equal(_pixels(by_kl), _pixels(other))


def test_traversal_sets_the_dimension_to_the_values_or_offsets_them(vae, x, tmp_path, monkeypatch):
    """Absolute values by default (the other dimensions at the posterior mean); offsets with relative=True."""
    seen = []
    monkeypatch.setattr(plots, "_decode_mean", lambda model, z: (seen.append(z.clone()), torch.zeros(len(z), 64))[1])
    plots.traversal_grid(vae, x, tmp_path / "a.png", num_seeds=1, num_values=3, limit=2.0, dims=[1])
    plots.traversal_grid(vae, x, tmp_path / "r.png", num_seeds=1, num_values=3, limit=2.0, dims=[1], relative=True)
    mean = vae.posterior(x[:1]).mean[0]
    absolute, relative = seen
    torch.testing.assert_close(absolute[:, 1], torch.tensor([-2.0, 0.0, 2.0]))
    torch.testing.assert_close(relative[:, 1], mean[1] + torch.tensor([-2.0, 0.0, 2.0]))
    for z in (absolute, relative):  # the other dimensions stay at the posterior mean
        torch.testing.assert_close(z[:, [0, 2]], mean[[0, 2]].expand(3, 2))


def test_traversal_with_fewer_images_than_seeds_draws_them_all(vae, x, tmp_path):
    path = plots.traversal_grid(vae, x[:2], tmp_path / "t.png", num_seeds=3, num_values=5)
    with Image.open(path) as image:
        assert image.size == _grid_size(rows=2 * vae.z_dim, cols=5)


@pytest.mark.parametrize(
    "options, message",
    [({"num_seeds": 0}, "num_seeds"), ({"num_values": 1}, "num_values"), ({"limit": 0.0}, "limit > 0")],
)
def test_traversal_refuses_bad_arguments(vae, x, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        plots.traversal_grid(vae, x, tmp_path / "t.png", **options)


def test_reconstruction_and_sample_grids(vae, x, tmp_path):
    recon = plots.reconstruction_grid(vae, x, tmp_path / "a" / "reconstructions.png", num=16)
    samples = plots.samples_grid(vae, tmp_path / "b" / "samples.png", num=9)
    with Image.open(recon) as image:
        assert image.size == _grid_size(rows=4, cols=8)  # data row, reconstruction row, twice
    with Image.open(samples) as image:
        assert image.size == _grid_size(rows=3, cols=3)
    assert _drawn(recon) and _drawn(samples)
    # the top-left tile is the first data point itself
    top_left = _pixels(recon)[PAD : PAD + 8, PAD : PAD + 8] / 255
    assert (top_left - x[0, 0]).abs().max() <= 1 / 255 + 1e-6


def test_charts_create_their_folder_and_are_drawn(vae, x, tmp_path):
    kl = plots.kl_per_dimension(vae, x)
    assert kl.shape == (vae.z_dim,) and (kl >= 0).all()
    history = [{"epoch": 1, "train_loss": 50.0, "valid_elbo": -49.0}, {"epoch": 2, "train_loss": 40.0, "valid_elbo": -41.0}]
    rows = [{"gamma": g, "reconstruction_error": 10.0 + g, "test_elbo": -20.0, "mig": 0.1 * g} for g in (1.0, 2.0)]
    paths = [
        plots.kl_bar_chart(kl, tmp_path / "new" / "kl.png"),
        plots.history_plot(history, tmp_path / "new2" / "history.png"),
        plots.tradeoff_plot(rows, tmp_path / "new3" / "tradeoff.png", parameter="gamma"),
    ]
    for path in paths:
        with Image.open(path) as image:
            assert min(image.size) >= 100
        assert _drawn(path)


# ------------------------------------------------- the caller's matplotlib state
def draw_every_plot(folder) -> list:
    """Every drawing function of pyrovae.plots once (self-contained: also run in a fresh interpreter)."""
    import torch

    from pyrovae import VAE, plots

    torch.manual_seed(0)
    vae = VAE(x_shape=(1, 8, 8), z_dim=2, hidden=(8,)).eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    kl = plots.kl_per_dimension(vae, x)
    history = [{"epoch": e, "train_loss": 50.0 - e, "valid_elbo": -51.0 + e} for e in (1, 2)]
    rows = [{"beta": b, "reconstruction_error": 10.0 + b, "test_elbo": -20.0, "mig": 0.1 * b} for b in (1.0, 4.0)]
    return [
        plots.reconstruction_grid(vae, x, f"{folder}/reconstructions.png", num=4),
        plots.samples_grid(vae, f"{folder}/samples.png", num=4),
        plots.traversal_grid(vae, x, f"{folder}/traversals.png", num_seeds=1, num_values=3),
        plots.kl_bar_chart(kl, f"{folder}/kl.png"),
        plots.history_plot(history, f"{folder}/history.png"),
        plots.tradeoff_plot(rows, f"{folder}/tradeoff.png"),
    ]


@pytest.fixture
def caller_backend():
    """The caller (a notebook, a GUI) has chosen a backend other than Agg; it is put back after."""
    previous = matplotlib.get_backend()
    matplotlib.use("pdf")
    yield "pdf"
    matplotlib.use(previous)


def test_drawing_leaves_the_callers_backend_alone(caller_backend, tmp_path):
    paths = draw_every_plot(tmp_path)
    assert matplotlib.get_backend() == caller_backend
    assert all(_drawn(path) for path in paths)


def test_plots_never_import_pyplot_nor_switch_backend(tmp_path):
    # a fresh interpreter: whether pyplot is imported is process-wide state the other tests may have set
    script = inspect.getsource(draw_every_plot) + textwrap.dedent(f"""
        import json, sys
        import matplotlib
        matplotlib.use("svg")
        import pyrovae.plots
        before = "matplotlib.pyplot" in sys.modules
        draw_every_plot({str(tmp_path)!r})
        print(json.dumps({{"backend": matplotlib.get_backend(), "before": before,
                          "after": "matplotlib.pyplot" in sys.modules}}))
    """)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    env.pop("MPLBACKEND", None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state == {"backend": "svg", "before": False, "after": False}
    assert len(list(tmp_path.glob("*.png"))) == 6


#: the pictures every model is asked for, each drawn or refused with PlotNotApplicable
PICTURES = {
    "reconstructions": lambda vae, x, path: plots.reconstruction_grid(vae, x, path, num=8),
    "samples": lambda vae, x, path: plots.samples_grid(vae, path, num=4),
    "traversals": lambda vae, x, path: plots.traversal_grid(vae, x, path, num_seeds=1, num_values=3),
}
#: models that must get reconstructions and samples (a plain Gaussian latent, a mixture prior,
#: two layers, a label beside z, discrete bits)
DRAWN = {"vae", "gmm_vae", "hierarchical_vae", "ss_vae", "discrete_vae"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_draws_each_picture_or_says_why(name, tmp_path):
    torch.manual_seed(0)
    vae = small_model(name, "binary_image").eval()
    x = make_data("binary_image", 8)
    drawn = set()
    for picture, draw in PICTURES.items():
        path = tmp_path / f"{picture}.png"
        try:
            draw(vae, x, path)
        except plots.PlotNotApplicable as e:
            assert type(vae).__name__ in str(e) and "\n" not in str(e)
            assert not path.exists()  # refused before drawing anything
        else:
            assert path.stat().st_size > 0
            drawn.add(picture)
    if name in DRAWN:
        assert {"reconstructions", "samples"} <= drawn
    if name == "vae":
        assert "traversals" in drawn


def test_traversal_steps_in_prior_standard_deviations_of_a_mixture_prior(x, tmp_path, monkeypatch):
    """A non-standard prior (the GMM's marginal): values are its mean plus multiples of its standard deviation,
    and without a closed-form KL the rows keep their natural order."""
    torch.manual_seed(0)
    vae = MODELS["gmm_vae"](x_shape=(1, 8, 8), z_dim=3, hidden=(16,), num_components=3).eval()
    with pytest.raises(plots.PlotNotApplicable, match="GMMVAE has no closed-form KL"):
        plots.kl_per_dimension(vae, x)
    seen = []
    monkeypatch.setattr(plots, "_decode_mean", lambda model, z: (seen.append(z.clone()), torch.zeros(len(z), 64))[1])
    plots.traversal_grid(vae, x, tmp_path / "t.png", num_seeds=1, num_values=3, limit=2.0)
    prior = vae.prior()
    z = seen[0].reshape(3, 3, 3)  # (row = dimension in natural order, column, z_dim)
    for d in range(3):
        torch.testing.assert_close(z[d, :, d], prior.mean[d] + torch.tensor([-2.0, 0.0, 2.0]) * prior.stddev[d])


def test_kl_per_dimension_of_bernoulli_bits_is_the_closed_form(x):
    """Each bit: KL(Bern(p) || Bern(1/2)) = p log 2p + (1 - p) log 2(1 - p), averaged over points (exact)."""
    torch.manual_seed(0)
    vae = MODELS["discrete_vae"](x_shape=(1, 8, 8), z_dim=5, hidden=(16,)).eval()
    p = vae.posterior(x).base_dist.probs
    expected = (p * torch.log(2 * p) + (1 - p) * torch.log(2 * (1 - p))).mean(0)
    torch.testing.assert_close(plots.kl_per_dimension(vae, x, batch_size=7), expected)


def _train(model: str, out: Path, *options: str) -> int:
    return main(["train", "--model", model, "--dataset", "digits", "--epochs", "1", "--batch-size", "256",
                 "-o", "z_dim=2", "-o", "hidden=[16]", *options, "--no-progress", "--no-jit", "--out", str(out)])


def test_a_finished_run_of_a_model_without_some_pictures_skips_them_and_says_why(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train("gmm_vae", out, "-o", "num_components=3") == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["pictures"]) == {"reconstructions", "samples", "traversals", "history"}
    for path in results["pictures"].values():
        assert Path(path).stat().st_size > 0
    assert set(results["skipped_pictures"]) == {"kl_per_dimension"}
    assert "GMMVAE" in results["skipped_pictures"]["kl_per_dimension"]
    assert results["kl_per_dimension"] is None
    assert "skipped the kl_per_dimension picture: GMMVAE" in capsys.readouterr().out


def test_a_run_lets_any_other_drawing_error_through(tmp_path, monkeypatch):
    """Only PlotNotApplicable is skipped: a bug in a picture still fails the run."""
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the samples grid")

    monkeypatch.setattr(plots, "samples_grid", broken)
    with pytest.raises(RuntimeError, match="a bug in the samples grid"):
        _train("vae", tmp_path / "run")
