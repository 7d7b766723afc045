"""Data sets: the table, the data folder, every loader on files the tests write, and the shared copies.

Loaders that read files are always tested on tiny files written here (IDX, amat,
npz), so the parsing and every "missing" and "corrupt" message are tested on
every machine; tests marked ``data`` also read the verified copies in
``../shared/data`` and skip when it is absent.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import importlib
import math
import pkgutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import pyrovae.datasets as datasets
from pyrovae.datasets import DATASETS, DynamicallyBinarized, data_dir, load
from pyrovae.datasets import binarized_mnist, dsprites, fashion_mnist, mnist
from pyrovae.datasets.base import SUPPORTS
from pyrovae.datasets.dsprites import DSprites
from pyrovae.datasets.files import download_file
from pyrovae.datasets.idx import read_idx
from pyrovae.datasets.sprites import Sprites

SQUARE, ELLIPSE, HEART = 0, 1, 2
LARGEST = 5  # scale index of 1.0
CENTRE = 16  # position index whose centre is the canvas centre (32, 32)


# ---------------------------------------------------------------- the table
def test_every_loader_module_is_in_the_table():
    for info in pkgutil.iter_modules(datasets.__path__):
        module = importlib.import_module(f"pyrovae.datasets.{info.name}")
        if callable(getattr(module, "load", None)):
            assert DATASETS.get(info.name) is module.load, f"{info.name}.load is not DATASETS[{info.name!r}]"
    assert set(DATASETS) >= {"sprites", "dsprites", "mnist", "fashion_mnist", "binarized_mnist", "digits", "synthetic"}


def test_unknown_name_lists_the_table():
    with pytest.raises(ValueError, match="Expected dataset in .*'sprites'.*got 'nope'"):
        load("nope")


@pytest.mark.parametrize(
    "name, options",
    [("digits", {}), ("digits", {"binarize": True}), ("synthetic", {}),
     ("sprites", {"num_train": 50, "num_valid": 10, "num_test": 10})],
)
def test_built_in_data_sets_keep_their_declared_form(name, options):
    for split in ("train", "valid", "test"):
        data = load(name, split, **options)
        assert data.x.dtype == torch.float32 and data.x.dim() in (2, 4)
        assert data.support in SUPPORTS and data.name == name and data.split == split
        if data.support == "binary":
            assert set(data.x.unique().tolist()) <= {0.0, 1.0}
        elif data.support == "unit_interval":
            assert 0.0 <= float(data.x.min()) and float(data.x.max()) <= 1.0
        assert torch.equal(data.epoch_view(3), data.x)  # fixed data sets are the same every epoch


def test_data_dir_is_root_else_environment_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("PYROVAE_DATA_DIR", str(tmp_path / "env"))
    assert data_dir(tmp_path / "root") == tmp_path / "root"
    assert data_dir() == tmp_path / "env"
    monkeypatch.delenv("PYROVAE_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".cache" / "pyrovae"


# ---------------------------------------------------------------- sprites
def _sprite(shape=SQUARE, scale=LARGEST, orientation=0, x=CENTRE, y=CENTRE) -> torch.Tensor:
    return Sprites().images(torch.tensor([[shape, scale, orientation, x, y]]))[0, 0]


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    """Centre of mass in pixel units (pixel j spans [j, j + 1]): (x, y)."""
    rows, cols = torch.nonzero(image, as_tuple=True)
    return float(cols.double().mean()) + 0.5, float(rows.double().mean()) + 0.5


def test_sprites_factor_grid_is_dsprites():
    s = Sprites()
    assert s.factor_names == ("shape", "scale", "orientation", "posX", "posY")
    assert s.factor_sizes == (3, 6, 40, 32, 32) and s.num_factors == 5
    assert s.num_combinations == 737_280
    expected = [
        [1.0, 2.0, 3.0],
        [0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        [k * 2 * math.pi / 39 for k in range(40)],
        [k / 31 for k in range(32)],
        [k / 31 for k in range(32)],
    ]
    for values, want in zip(s.factor_values, expected):
        assert values.dtype == torch.float64
        torch.testing.assert_close(values, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)


def test_square_at_scale_one_orientation_zero_centre_is_a_filled_centred_square():
    image = _sprite()
    assert image.shape == (64, 64) and image.dtype == torch.float32
    expected = torch.zeros(64, 64)
    expected[22:42, 22:42] = 1.0  # 20 x 20 pixels centred on (32, 32)
    assert torch.equal(image, expected)


def test_square_side_is_twenty_times_the_scale():
    for k, scale in enumerate([0.5, 0.6, 0.7, 0.8, 0.9, 1.0]):
        image = _sprite(scale=k)
        side = round(20 * scale)
        assert int(image.sum()) == side * side
        assert int(image.any(0).sum()) == side and int(image.any(1).sum()) == side


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE, HEART])
def test_moving_pos_x_and_pos_y_moves_the_mass_one_pixel_a_step(shape):
    base = _sprite(shape, orientation=7, x=0, y=0)
    cx0, cy0 = _centroid(base)
    for k in (1, 10, 31):
        moved_x = _sprite(shape, orientation=7, x=k, y=0)
        moved_y = _sprite(shape, orientation=7, x=0, y=k)
        assert moved_x.sum() == base.sum() == moved_y.sum()
        assert _centroid(moved_x) == pytest.approx((cx0 + k, cy0), abs=1e-9)
        assert _centroid(moved_y) == pytest.approx((cx0, cy0 + k), abs=1e-9)  # posY grows downward
    # a centrally symmetric square sits with its centre of mass at 16 + index pixels
    assert _centroid(_sprite(SQUARE, x=3, y=29)) == pytest.approx((19.0, 45.0), abs=1e-9)


def test_every_sprite_stays_inside_the_canvas():
    # each drawing lives in a 32 x 32 window placed at offset (posX, posY) in 0..31;
    # an empty window border means no sprite is ever clipped by the canvas or the window
    t = Sprites().templates
    assert t.shape == (3, 6, 40, 32, 32)
    for border in (t[..., 0, :], t[..., -1, :], t[..., :, 0], t[..., :, -1]):
        assert float(border.sum()) == 0.0
    assert bool((t.flatten(-2).sum(-1) > 0).all())  # and no drawing is empty


@pytest.mark.parametrize(
    "shape, area", [(SQUARE, 400.0), (ELLIPSE, math.pi * 10 * 5), (HEART, 100 * 3.6601 / 1.118**2)]
)
def test_area_matches_the_shape_at_every_orientation(shape, area):
    # pixel-centre sampling miscounts only boundary pixels: a few percent of the area at this size
    images = Sprites().images(torch.tensor([[shape, LARGEST, o, CENTRE, CENTRE] for o in range(40)]))
    areas = images.sum(dim=(1, 2, 3))
    assert float((areas / area - 1).abs().max()) < 0.05


def test_orientation_turns_the_shape_and_a_full_turn_returns_it():
    assert torch.equal(_sprite(HEART, orientation=0), _sprite(HEART, orientation=39))  # 0 and 2 pi
    wide = _sprite(ELLIPSE, orientation=0)
    assert int(wide.any(0).sum()) == 20 and int(wide.any(1).sum()) == 10
    turned = _sprite(ELLIPSE, orientation=10)  # 10 * 2 pi / 39 = 92 degrees
    assert int(turned.any(0).sum()) < int(turned.any(1).sum())
    tilted = _sprite(ELLIPSE, orientation=3)  # 28 degrees counter-clockwise: the right end rises
    rows, cols = torch.nonzero(tilted, as_tuple=True)
    assert float(rows[cols >= 32].double().mean()) < 31.5 < float(rows[cols < 32].double().mean())
    heart = _sprite(HEART)
    assert torch.equal(heart, heart.flip(1))  # mirror-symmetric left to right about the centre
    assert heart[:32].sum() > heart[32:].sum()  # lobes up, point down
    square_45 = _sprite(SQUARE, orientation=5)  # 46 degrees: a diamond, wider than the square
    assert int(square_45.any(0).sum()) > 20


def test_rendering_is_deterministic_chunked_and_equal_to_direct_drawing():
    s = Sprites()
    factors = s.sample_factors(300, torch.Generator().manual_seed(1))
    images = s.images(factors)
    assert images.shape == (300, 1, 64, 64) and images.dtype == torch.float32
    assert set(images.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(images, s.images(factors))
    assert torch.equal(images, Sprites(chunk_size=7).images(factors))
    assert torch.equal(images[[5, 17]], s.images(factors[[5, 17]]))
    # the fast path (templates moved by whole pixels) equals drawing each image on the full canvas
    f = factors[:100]
    direct = s.draw(f[:, 0], f[:, 1], f[:, 2], 16.0 + f[:, 3], 16.0 + f[:, 4])
    assert torch.equal(images[:100, 0], direct)


def test_sample_factors_is_seeded_and_uniform_over_the_grid():
    s = Sprites()
    n = 20_000
    factors = s.sample_factors(n, torch.Generator().manual_seed(0))
    assert factors.shape == (n, 5) and factors.dtype == torch.long
    assert torch.equal(factors, s.sample_factors(n, torch.Generator().manual_seed(0)))
    for k, size in enumerate(s.factor_sizes):
        column = factors[:, k].double()
        assert int(column.min()) == 0 and int(column.max()) == size - 1
        se = math.sqrt((size**2 - 1) / 12 / n)  # sd of a discrete uniform over n draws
        assert abs(float(column.mean()) - (size - 1) / 2) < 4 * se
    sampled, images = s.sample(5, torch.Generator().manual_seed(3))
    assert torch.equal(images, s.images(sampled))


def test_factor_indices_are_validated_and_convert_both_ways():
    s = Sprites()
    with pytest.raises(ValueError, match=r"shape \(n, 5\)"):
        s.images(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="orientation indices in 0..39"):
        s.images(torch.tensor([[0, 0, 40, 0, 0]]))
    with pytest.raises(ValueError, match="integer factor indices"):
        s.images(torch.zeros(1, 5))
    factors = s.sample_factors(100, torch.Generator().manual_seed(2))
    assert torch.equal(s.factors_of(s.flat_index(factors)), factors)
    assert int(s.flat_index(torch.tensor([[2, 5, 39, 31, 31]]))) == 737_279
    torch.testing.assert_close(s.values(torch.tensor([[2, 5, 0, 31, 0]])),
                               torch.tensor([[3.0, 1.0, 0.0, 1.0, 0.0]], dtype=torch.float64))


def test_sprites_splits_are_disjoint_sized_and_carry_their_factors():
    sizes = {"num_train": 200, "num_valid": 30, "num_test": 20}
    splits = {split: load("sprites", split, **sizes) for split in ("train", "valid", "test")}
    flat = {}
    for split, data in splits.items():
        assert len(data) == sizes[f"num_{split}"] and data.shape == (1, 64, 64)
        assert data.support == "binary" and data.likelihood == "bernoulli"
        factors = data.info["factors"]
        assert isinstance(factors, Sprites) and data.info["factor_names"] == factors.factor_names
        assert torch.equal(data.x, factors.images(data.info["factor_indices"]))
        flat[split] = set(factors.flat_index(data.info["factor_indices"]).tolist())
        assert len(flat[split]) == len(data)  # distinct settings
    assert not flat["train"] & flat["test"] and not flat["valid"] & flat["test"] and not flat["train"] & flat["valid"]
    # the test split depends on the seed and its own size only
    other = load("sprites", "test", num_train=10, num_valid=5, num_test=20)
    assert torch.equal(other.info["factor_indices"], splits["test"].info["factor_indices"])
    with pytest.raises(ValueError, match="exceed"):
        load("sprites", "train", num_train=737_280)


# ---------------------------------------------------------------- dsprites (a small file in the official format)
def _write_dsprites(path: Path, sizes=(1, 3, 2, 3, 2, 2), compressed=True, **replace) -> dict[str, np.ndarray]:
    n = math.prod(sizes)
    classes = np.stack(np.unravel_index(np.arange(n), sizes), axis=1).astype(np.int64)
    grids = [np.linspace(0.5, 1.0, s) if s > 1 else np.ones(1) for s in sizes]
    values = np.stack([grids[k][classes[:, k]] for k in range(len(sizes))], axis=1)
    imgs = (np.random.default_rng(0).random((n, 64, 64)) < 0.3).astype(np.uint8)
    arrays = {"imgs": imgs, "latents_values": values, "latents_classes": classes,
              "metadata": np.array({"description": "test"}, dtype=object)}
    arrays.update(replace)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return arrays


@pytest.fixture
def dsprites_file(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / dsprites.FILENAME
    return path, _write_dsprites(path)


def test_dsprites_reads_the_official_keys_and_serves_the_factor_interface(dsprites_file):
    path, arrays = dsprites_file
    d = DSprites(path, verify=False)
    assert d.factor_names == ("shape", "scale", "orientation", "posX", "posY")
    assert d.factor_sizes == (3, 2, 3, 2, 2)
    torch.testing.assert_close(d.factor_values[2], torch.tensor([0.5, 0.75, 1.0], dtype=torch.float64))
    factors = d.sample_factors(40, torch.Generator().manual_seed(0))
    images = d.images(factors)
    assert images.shape == (40, 1, 64, 64) and images.dtype == torch.float32
    rows = d.flat_index(factors).numpy()  # colour has one value, so grid rows are file rows
    assert np.array_equal(images[:, 0].numpy(), arrays["imgs"][rows].astype(np.float32))


def test_dsprites_load_gives_disjoint_splits(dsprites_file, tmp_path):
    _, arrays = dsprites_file
    train = load("dsprites", "train", root=tmp_path, verify=False, num_train=50, num_valid=10, num_test=12)
    test = load("dsprites", "test", root=tmp_path, verify=False, num_train=50, num_valid=10, num_test=12)
    assert train.x.shape == (50, 1, 64, 64) and test.x.shape == (12, 1, 64, 64) and train.support == "binary"
    d = train.info["factors"]
    train_settings = set(d.flat_index(train.info["factor_indices"]).tolist())
    assert not train_settings & set(d.flat_index(test.info["factor_indices"]).tolist())
    rows = d.flat_index(train.info["factor_indices"]).numpy()
    assert np.array_equal(train.x[:, 0].numpy(), arrays["imgs"][rows].astype(np.float32))


def test_dsprites_checks_the_published_md5(dsprites_file):
    path, _ = dsprites_file
    with pytest.raises(ValueError, match=f"{path}.*md5 is [0-9a-f]{{32}}, expected {dsprites.MD5}"):
        DSprites(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "npz archive cannot be read"),
        ("flip_bit", "npz archive cannot be read.*CRC"),
        ("no_imgs", r"keys \['imgs'\] are missing"),
        ("float_imgs", "imgs is float32"),
        ("grey_imgs", "values other than 0 and 1"),
        ("fewer_imgs", "it has 71 images but 72 rows"),
        ("int32_classes", "latents_classes is int32"),
        ("shuffled_classes", "does not enumerate the factor grid"),
        ("missing_rows", "has 71 rows, but its classes span a grid of 72"),
        ("inconsistent_values", "several values for one class"),
    ],
)
def test_dsprites_corrupt_files_are_reported_never_loaded(tmp_path, damage, message):
    path = tmp_path / dsprites.FILENAME
    good = _write_dsprites(tmp_path / "good.npz")
    edits = {
        "no_imgs": {"imgs": None},
        "float_imgs": {"imgs": good["imgs"].astype(np.float32)},
        "grey_imgs": {"imgs": good["imgs"] * 2},
        "fewer_imgs": {"imgs": good["imgs"][:-1]},
        "int32_classes": {"latents_classes": good["latents_classes"].astype(np.int32)},
        "shuffled_classes": {"latents_classes": good["latents_classes"][::-1].copy()},
        "missing_rows": {"latents_classes": good["latents_classes"][:-1],
                         "latents_values": good["latents_values"][:-1]},
        "inconsistent_values": {"latents_values": good["latents_values"] + np.eye(72, 6)},
    }
    if damage == "truncate":
        data = (tmp_path / "good.npz").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_bit":  # inside the stored image bytes: still 0/1, so only the CRC can tell
        _write_dsprites(path, compressed=False)
        data = bytearray(path.read_bytes())
        data[4000] ^= 1
        path.write_bytes(bytes(data))
    else:
        _write_dsprites(path, **edits[damage])
    with pytest.raises(ValueError, match=f"{path} is corrupt or truncated: .*{message}"):
        load("dsprites", root=tmp_path, verify=False, num_train=5, num_valid=1, num_test=1)


# ---------------------------------------------------------------- missing files: one line, what, where, how
@pytest.mark.parametrize(
    "name, options, file_name, folder",
    [
        ("mnist", {}, "train-images-idx3-ubyte.gz", "MNIST/raw"),
        ("mnist", {"binarize": "dynamic"}, "train-images-idx3-ubyte.gz", "MNIST/raw"),
        ("mnist", {"binarize": "static"}, "binarized_mnist_train.amat", "binarized_mnist"),
        ("fashion_mnist", {}, "train-images-idx3-ubyte.gz", "FashionMNIST/raw"),
        ("binarized_mnist", {}, "binarized_mnist_train.amat", "binarized_mnist"),
        ("dsprites", {}, dsprites.FILENAME, ""),
    ],
)
def test_missing_file_says_what_where_and_how_in_one_line(tmp_path, name, options, file_name, folder):
    with pytest.raises(FileNotFoundError) as info:
        load(name, "train", root=tmp_path, **options)
    message = str(info.value)
    assert "\n" not in message
    assert file_name in message
    assert str(tmp_path / folder / file_name) in message
    assert "download=True" in message and "PYROVAE_DATA_DIR" in message


def test_missing_file_uses_the_environment_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "env" / "binarized_mnist")):
        load("binarized_mnist", "valid")


# ---------------------------------------------------------------- IDX files: MNIST and Fashion-MNIST
def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_set(folder: Path, gz: bool = True, num_train: int = 12, num_test: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, num_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, num_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


FAMILIES = [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]


@pytest.mark.parametrize("name, folder", FAMILIES)
@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader_reads_splits_and_labels(tmp_path, name, folder, gz):
    arrays = _write_idx_set(tmp_path / folder / "raw", gz=gz)
    options = {"root": tmp_path, "verify": False, "num_valid": 2}
    train, valid, test = (load(name, split, **options) for split in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (10, 2, 5)
    images, labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    assert train.x.shape == (10, 1, 28, 28) and train.x.dtype == torch.float32 and train.support == "unit_interval"
    assert torch.equal(train.x[:, 0], torch.from_numpy(images[:10]).float() / 255)
    assert torch.equal(valid.x[:, 0], torch.from_numpy(images[10:]).float() / 255)  # the end of the training file
    assert torch.equal(test.x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255)
    assert torch.equal(train.labels, torch.from_numpy(labels[:10]).long()) and valid.labels.dtype == torch.long
    assert float(train.x.max()) <= 1.0 and float(train.x.min()) >= 0.0


@pytest.mark.parametrize("name, folder", FAMILIES)
def test_idx_loader_checks_published_md5_and_counts(tmp_path, name, folder):
    _write_idx_set(tmp_path / folder / "raw", gz=True)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz is corrupt or truncated: its md5 is .*expected"):
        load(name, root=tmp_path)
    _write_idx_set(tmp_path / "raw" / folder / "raw", gz=False)  # extracted files have no published sum
    with pytest.raises(ValueError, match="it holds 12 images, expected 60,000"):
        load(name, root=tmp_path / "raw")


def test_md5_tables_are_torchvisions():
    import torchvision.datasets

    assert mnist.MD5 == dict(torchvision.datasets.MNIST.resources)
    assert fashion_mnist.MD5 == dict(torchvision.datasets.FashionMNIST.resources)


@contextlib.contextmanager
def _serve(folder: Path):
    """A local HTTP server for ``folder`` (downloads tested without the internet)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_download_goes_through_torchvision_into_the_data_folder(tmp_path, monkeypatch):
    import torchvision.datasets

    source = tmp_path / "mirror"
    _write_idx_set(source, gz=True)
    resources = [(f"{stem}.gz", hashlib.md5((source / f"{stem}.gz").read_bytes()).hexdigest())
                 for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", resources)
    monkeypatch.setattr(mnist, "MD5", dict(resources))  # the tiny files' sums stand in for the published ones
    root = tmp_path / "data"
    with _serve(source) as url:
        monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [url])
        with pytest.raises(ValueError, match="it holds 12 images, expected 60,000"):
            load("mnist", root=root, download=True, num_valid=2)  # downloaded, md5-checked, then counted
        train = load("mnist", root=root, num_valid=2, verify=False)
    assert len(train) == 10 and (root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated_gzip", "the gzip stream is damaged"),
        ("not_gzip", "the gzip stream is damaged"),
        ("bad_magic", "does not start with an IDX magic number"),
        ("short_data", r"header promises shape \(12, 28, 28\) \(9424 bytes\) but it holds 9423 bytes"),
        ("long_data", r"but it holds 9425 bytes"),
        ("short_header", "header promises 3 dimensions"),
        ("label_count", "expected 12 uint8 labels"),
        ("label_value", "label 10, expected classes 0..9"),
    ],
)
def test_idx_corrupt_files_are_reported_never_loaded(tmp_path, damage, message):
    folder = tmp_path / "MNIST" / "raw"
    arrays = _write_idx_set(folder, gz=True)
    images = _idx_bytes(arrays["train-images-idx3-ubyte"])
    target = folder / "train-images-idx3-ubyte.gz"
    if damage == "truncated_gzip":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) - 20])
    elif damage == "not_gzip":
        target.write_bytes(images)
    elif damage == "bad_magic":
        target.write_bytes(gzip.compress(b"\x00\x00\x07\x03" + images[4:]))
    elif damage == "short_data":
        target.write_bytes(gzip.compress(images[:-1]))
    elif damage == "long_data":
        target.write_bytes(gzip.compress(images + b"\x00"))
    elif damage == "short_header":
        target.write_bytes(gzip.compress(images[:10]))
    elif damage == "label_count":
        target = folder / "train-labels-idx1-ubyte.gz"
        target.write_bytes(gzip.compress(_idx_bytes(arrays["train-labels-idx1-ubyte"][:-1])))
    elif damage == "label_value":
        target = folder / "train-labels-idx1-ubyte.gz"
        target.write_bytes(gzip.compress(_idx_bytes(np.full(12, 10, dtype=np.uint8))))
    with pytest.raises(ValueError, match=f"{target} is corrupt or truncated: .*{message}"):
        load("mnist", root=tmp_path, verify=False, num_valid=2)


def test_read_idx_parses_other_types(tmp_path):
    array = np.arange(6, dtype=">i4").reshape(2, 3)
    path = tmp_path / "ints-idx2"
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x0C, 2) + struct.pack(">2I", 2, 3) + array.tobytes())
    out = read_idx(path)
    assert out.dtype == np.int32 and np.array_equal(out, np.arange(6).reshape(2, 3))


def test_options_are_validated(tmp_path):
    with pytest.raises(ValueError, match=r"Expected binarize in \(None, 'dynamic', 'static'\), got 'threshold'"):
        load("mnist", root=tmp_path, binarize="threshold")
    with pytest.raises(ValueError, match=r"Expected binarize in \(None, 'dynamic'\), got 'static'"):
        load("fashion_mnist", root=tmp_path, binarize="static")
    with pytest.raises(ValueError, match="Expected split in"):
        load("mnist", "validation", root=tmp_path)


# ---------------------------------------------------------------- dynamic binarization
def test_dynamic_binarization_redraws_each_epoch_deterministically(tmp_path):
    arrays = _write_idx_set(tmp_path / "MNIST" / "raw")
    data = load("mnist", root=tmp_path, verify=False, num_valid=2, binarize="dynamic", seed=3)
    assert isinstance(data, DynamicallyBinarized) and data.support == "binary"
    assert torch.equal(data.probs[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"][:10]).float() / 255)
    assert torch.equal(data.epoch_view(0), data.x)
    one = data.epoch_view(1)
    assert torch.equal(one, data.epoch_view(1)) and not torch.equal(one, data.x)
    assert one.dtype == torch.float32 and set(one.unique().tolist()) == {0.0, 1.0}
    again = load("mnist", root=tmp_path, verify=False, num_valid=2, binarize="dynamic", seed=3)
    assert torch.equal(again.epoch_view(5), data.epoch_view(5))
    other_seed = load("mnist", root=tmp_path, verify=False, num_valid=2, binarize="dynamic", seed=4)
    assert not torch.equal(other_seed.epoch_view(5), data.epoch_view(5))
    # pixels that are 0 or 255 are always 0 or 1
    assert torch.equal(one[data.probs == 0], torch.zeros_like(one[data.probs == 0]))
    assert torch.equal(one[data.probs == 1], torch.ones_like(one[data.probs == 1]))


def test_dynamic_binarization_mean_is_the_grey_mean():
    probs = torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    data = DynamicallyBinarized.from_probs(probs, seed=0, name="test", split="train")
    # the mean of independent Bernoulli(p) pixels has standard error sqrt(sum p(1-p)) / n
    se = float(torch.sqrt((probs * (1 - probs)).sum())) / probs.numel()
    for epoch in range(3):
        assert abs(float(data.epoch_view(epoch).mean()) - float(probs.mean())) < 4 * se
    with pytest.raises(ValueError, match=r"probs in \[0, 1\]"):
        DynamicallyBinarized.from_probs(probs + 1, seed=0, name="test", split="train")


# ---------------------------------------------------------------- binarized MNIST (.amat)
def _amat_line(row) -> str:
    return " ".join(str(int(v)) for v in row) + "\n"


def _write_amat(path: Path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(_amat_line(r) for r in rows))


def _amat_rows(n: int) -> np.ndarray:
    return (np.random.default_rng(0).random((n, 784)) < 0.2).astype(np.uint8)


def test_binarized_mnist_reads_amat_files(tmp_path):
    rows = _amat_rows(3)
    _write_amat(tmp_path / "binarized_mnist" / "binarized_mnist_valid.amat", rows)
    data = load("binarized_mnist", "valid", root=tmp_path, verify=False)
    assert data.x.shape == (3, 1, 28, 28) and data.x.dtype == torch.float32 and data.support == "binary"
    assert np.array_equal(data.x.reshape(3, 784).numpy(), rows.astype(np.float32))  # row-major 28 x 28
    # any whitespace layout parses to the same values
    loose = tmp_path / "loose" / "binarized_mnist" / "binarized_mnist_valid.amat"
    loose.parent.mkdir(parents=True)
    loose.write_text("\r\n".join("  ".join(str(v) for v in r) + " " for r in rows) + "\r\n\n")
    assert torch.equal(load("binarized_mnist", "valid", root=tmp_path / "loose", verify=False).x, data.x)
    # the static view of mnist is this data set
    assert torch.equal(load("mnist", "valid", root=tmp_path, binarize="static", verify=False).x, data.x)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("short_row", "line 2 has 783 values, expected 784"),
        ("long_row", "line 3 has 785 values, expected 784"),
        ("two", "line 1 holds '2', expected only 0 and 1"),
        ("fraction", "line 2 holds '0.5', expected only 0 and 1"),
        ("empty", "it holds no rows"),
        ("row_count", "it has 3 rows, expected 10,000"),
    ],
)
def test_binarized_mnist_corrupt_files_are_reported_never_loaded(tmp_path, damage, message):
    path = tmp_path / "binarized_mnist" / "binarized_mnist_valid.amat"
    lines = [_amat_line(r) for r in _amat_rows(3)]
    if damage == "short_row":
        lines[1] = lines[1][2:]
    elif damage == "long_row":
        lines[2] = "1 " + lines[2]
    elif damage == "two":
        lines[0] = "2" + lines[0][1:]
    elif damage == "fraction":
        lines[1] = "0.5" + lines[1][1:]
    elif damage == "empty":
        lines = []
    path.parent.mkdir(parents=True)
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=f"{path} is corrupt or truncated: {message}"):
        load("binarized_mnist", "valid", root=tmp_path, verify=damage == "row_count")


def test_binarized_mnist_checks_the_published_sha256(tmp_path):
    path = tmp_path / "binarized_mnist" / "binarized_mnist_test.amat"
    path.parent.mkdir(parents=True)
    path.write_bytes(("0 " * 783 + "0\n").encode() * 10_000)  # the right shape, not the right data
    expected = binarized_mnist.SHA256["test"]
    with pytest.raises(ValueError, match=f"{path} .*sha256 is [0-9a-f]{{64}}, expected {expected}"):
        load("binarized_mnist", "test", root=tmp_path)


# ---------------------------------------------------------------- downloads (file:// URLs, no network)
def test_download_moves_the_file_into_place_only_when_its_checksum_matches(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"pyrovae" * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    target = tmp_path / "data" / "file.bin"
    with pytest.raises(ValueError, match=f"sha256 is {digest}, expected 0+; nothing was saved to {target}"):
        download_file(source.as_uri(), target, "0" * 64)
    assert not target.exists() and not target.with_name("file.bin.part").exists()
    download_file(source.as_uri(), target, digest)
    assert target.read_bytes() == source.read_bytes() and not target.with_name("file.bin.part").exists()
    with pytest.raises(ConnectionError, match="Could not download .*copy the file there by hand"):
        download_file((tmp_path / "absent").as_uri(), tmp_path / "data" / "other.bin", digest)


def test_file_loaders_download_only_when_asked(tmp_path, monkeypatch):
    source = tmp_path / "mirror.npz"
    _write_dsprites(source)
    monkeypatch.setattr(dsprites, "URL", source.as_uri())
    monkeypatch.setattr(dsprites, "MD5", hashlib.md5(source.read_bytes()).hexdigest())
    root = tmp_path / "data"
    with pytest.raises(FileNotFoundError):
        load("dsprites", root=root, num_train=5, num_valid=1, num_test=1)
    assert not root.exists()
    data = load("dsprites", root=root, download=True, num_train=5, num_valid=1, num_test=1)
    assert len(data) == 5 and (root / dsprites.FILENAME).is_file()


# ---------------------------------------------------------------- the verified copies in ../shared/data
@pytest.mark.data
def test_mnist_shared_copy_has_the_documented_splits(shared_data):
    train, valid, test = (load("mnist", split, root=shared_data) for split in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (50_000, 10_000, 10_000)
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9] and test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert torch.equal(torch.bincount(torch.cat([train.labels, valid.labels])),
                       torch.tensor([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]))


@pytest.mark.data
def test_mnist_dynamic_binarization_mean_equals_the_grey_mean(shared_data):
    grey = load("mnist", "train", root=shared_data)
    binary = load("mnist", "train", root=shared_data, binarize="dynamic", seed=0)
    p = grey.x
    se = float(torch.sqrt((p * (1 - p)).sum())) / p.numel()  # independent Bernoulli pixels
    for epoch in (0, 1):
        draw = binary.epoch_view(epoch)
        assert bool(((draw == 0) | (draw == 1)).all())
        assert abs(float(draw.mean()) - float(p.mean())) < 4 * se


@pytest.mark.data
def test_binarized_mnist_shared_copy_is_mnist_binarized(shared_data):
    sizes = {"train": 50_000, "valid": 10_000, "test": 10_000}
    means = {}
    for split, size in sizes.items():
        data = load("binarized_mnist", split, root=shared_data)  # row counts and sha256 verified
        assert data.x.shape == (size, 1, 28, 28) and bool(((data.x == 0) | (data.x == 1)).all())
        means[split] = data.x.mean(0).flatten()
    # same orientation and same images as MNIST: the mean images agree pixel by pixel
    for split in ("train", "test"):
        grey = load("mnist", split, root=shared_data).x.mean(0).flatten()
        assert float(torch.corrcoef(torch.stack([means[split], grey]))[0, 1]) > 0.99
