"""Dataset plug-ins on small generated files in each real layout: shapes, labels, class names, the
decoded-tensor cache (and loading without writing it), the errors promised for missing and corrupt
files, and received files read as data (crafted pickles refused, nothing in them run)."""
from __future__ import annotations

import builtins
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from bench.datasets import CorruptDataError, DataNotFoundError, check_dataset, load_dataset
from bench.datasets.standins import write_cifar10, write_cifar100, write_imagenette, write_tinyimagenet
from bench.registry import DATASETS, ParamsError


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("BENCH_NO_DOWNLOAD", "1")
    monkeypatch.setenv("BENCH_DECODE_THREADS", "2")


def _load(name, root, tmp_path, **params):
    return load_dataset(name, root, tmp_path / "cache", **params)


# -- CIFAR ----------------------------------------------------------------------------------------
def _cifar_images(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def _dump(path, obj, protocol=2):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)


def make_cifar10(root, per_batch=4):
    """Five batches of ``per_batch`` images (image k of a file labelled k % 10), 3 test images."""
    return write_cifar10(root, per_batch=per_batch, n_test=3)


def make_cifar100(root):
    """6 training and 2 test images, fine labels 17 k % 100, coarse labels 3 k % 20."""
    return write_cifar100(root, n_train=6, n_test=2)


def _no_decode(*args, **kwargs):
    raise AssertionError("decode called on a cached dataset")


def test_cifar10_loads_pickles_warns_on_checksum_and_caches(tmp_path, monkeypatch):
    root = tmp_path / "data"
    d = make_cifar10(root)
    with pytest.warns(UserWarning, match="md5"):
        b = _load("cifar10", root, tmp_path)
    assert b.train.x.shape == (20, 3, 32, 32) and b.train.x.dtype == torch.uint8
    assert b.test.x.shape == (3, 3, 32, 32)
    assert b.test.y.tolist() == [0, 1, 2]
    assert b.train.y[:4].tolist() == [0, 1, 2, 3]
    assert b.classes[0] == "airplane" and len(b.classes) == 10
    # channel-major rows: the first 1024 values are the red plane
    raw = pickle.load(open(d / "data_batch_1", "rb"))["data"]
    assert torch.equal(b.train.x[0, 0].flatten(), torch.from_numpy(raw[0, :1024]))
    assert torch.equal(b.train.x[0, 2].flatten(), torch.from_numpy(raw[0, 2048:]))

    # second load: served from the cache, decode is not called
    from bench.datasets.cifar import Cifar10

    monkeypatch.setattr(Cifar10, "decode", _no_decode)
    b2 = _load("cifar10", root, tmp_path)
    assert b2.fingerprint == b.fingerprint and torch.equal(b2.train.x, b.train.x)

    # changing a file changes the fingerprint (and so decodes again)
    monkeypatch.undo()
    monkeypatch.setenv("BENCH_NO_DOWNLOAD", "1")
    _dump(d / "test_batch", {"data": _cifar_images(3, 10), "labels": [4, 5, 6]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b3 = _load("cifar10", root, tmp_path)
    assert b3.fingerprint != b.fingerprint and b3.test.y.tolist() == [4, 5, 6]


def test_cifar10_missing_says_where_and_how(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as err:
        _load("cifar10", root, tmp_path)
    msg = str(err.value)
    assert str(root / "cifar-10-batches-py") in msg and "data_batch_1" in msg and "download=True" in msg
    with pytest.raises(DataNotFoundError):
        check_dataset("cifar10", root)


def test_cifar10_partial_folder_names_missing_files(tmp_path):
    root = tmp_path / "data"
    d = make_cifar10(root)
    (d / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match="lacks test_batch"):
        _load("cifar10", root, tmp_path)


def test_cifar10_tries_download_then_reports(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    def offline(root, train=True, download=False):
        calls.append(root)
        raise OSError("network unreachable")

    monkeypatch.delenv("BENCH_NO_DOWNLOAD")
    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DataNotFoundError, match="Automatic download failed .*network unreachable"):
        _load("cifar10", tmp_path / "data", tmp_path)
    assert calls == [str(tmp_path / "data")]

    def works(root, train=True, download=False):  # a download that lays out the files
        make_cifar10(tmp_path / "data")

    monkeypatch.setattr(tvd, "CIFAR10", works)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(_load("cifar10", tmp_path / "data", tmp_path).train) == 20


@pytest.mark.parametrize("damage", ["truncate", "garble", "wrong_keys"])
def test_cifar10_corrupt_batch_names_the_file(tmp_path, damage):
    root = tmp_path / "data"
    d = make_cifar10(root)
    f = d / "data_batch_3"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:200])
    elif damage == "garble":
        f.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    else:
        _dump(f, {"pixels": _cifar_images(4, 0)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CorruptDataError, match="data_batch_3"):
            _load("cifar10", root, tmp_path)


# -- received files are data ----------------------------------------------------------------------
class _Calls:
    """A pickled object whose unpickling calls ``fn(*args)`` (what a crafted batch file does)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _crafted_calls(marker):
    return {"shell": _Calls(os.system, f"touch {marker}"), "open": _Calls(builtins.open, str(marker), "w")}


@pytest.mark.parametrize("route", ["shell", "open"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_crafted_cifar_batch_is_refused_and_never_runs(tmp_path, route, protocol):
    root = tmp_path / "data"
    d = make_cifar10(root)
    marker = tmp_path / "marker"
    call = _crafted_calls(marker)[route]
    _dump(d / "data_batch_2", {"data": _cifar_images(4, 0), "labels": [0, 1, 2, 3], "x": call}, protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CorruptDataError) as err:
            _load("cifar10", root, tmp_path)
    msg = str(err.value)
    assert "data_batch_2" in msg and call.fn.__name__ in msg and "refused" in msg, msg
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_genuine_batches_with_bytes_keys_and_numpy_labels_load(tmp_path, protocol):
    """Batches as CIFAR's own files are (a pickled dict of a numpy array), also with bytes keys (a
    batch re-dumped after ``pickle.load(encoding="bytes")``) and numpy labels, under any protocol."""
    root = tmp_path / "data"
    d = make_cifar10(root)
    x = _cifar_images(4, 5)
    for i in range(1, 6):
        _dump(d / f"data_batch_{i}", {b"batch_label": b"re-dumped", b"data": x,
                                      b"labels": np.arange(i, i + 4) % 10, b"filenames": [b"a"] * 4}, protocol)
    _dump(d / "test_batch", {"data": x[:2], "labels": [np.int64(3), np.int64(4)]}, protocol)
    _dump(d / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = _load("cifar10", root, tmp_path)
    assert b.train.y[:4].tolist() == [1, 2, 3, 4] and b.test.y.tolist() == [3, 4]
    assert torch.equal(b.train.x[:4], torch.from_numpy(x).reshape(4, 3, 32, 32))
    assert b.classes[:2] == ["c0", "c1"]


def test_load_without_writing_the_cache(tmp_path, monkeypatch):
    """``write_cache=False`` decodes in memory, creates nothing under the cache folder, and still
    reads (never deletes) an entry that is there."""
    root = tmp_path / "data"
    make_cifar10(root)
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = load_dataset("cifar10", root, cache, write_cache=False)
        assert not cache.exists()
        written = load_dataset("cifar10", root, cache)
    assert torch.equal(first.train.x, written.train.x) and first.fingerprint == written.fingerprint
    entries = sorted((cache / "datasets").iterdir())
    assert any(p.suffix == ".pt" for p in entries)

    from bench.datasets.cifar import Cifar10

    monkeypatch.setattr(Cifar10, "decode", _no_decode)
    again = load_dataset("cifar10", root, cache, write_cache=False)
    assert torch.equal(again.test.x, written.test.x)
    monkeypatch.undo()
    monkeypatch.setenv("BENCH_NO_DOWNLOAD", "1")
    pt = next(p for p in entries if p.suffix == ".pt")
    pt.write_bytes(b"damaged")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_dataset("cifar10", root, cache, write_cache=False)
    assert pt.read_bytes() == b"damaged" and sorted((cache / "datasets").iterdir()) == entries


def test_crafted_dataset_cache_file_is_not_run_and_is_rebuilt(tmp_path):
    """The decoded-tensor cache is loaded with ``weights_only=True``: a cache file replaced by a
    pickle that calls a function is refused (nothing runs) and rebuilt from the sources."""
    root = tmp_path / "data"
    make_cifar10(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = _load("cifar10", root, tmp_path)
        pt = next((tmp_path / "cache" / "datasets").glob("cifar10-*.pt"))
        marker = tmp_path / "marker"
        torch.save({"train_x": _Calls(os.system, f"touch {marker}")}, pt)
        again = _load("cifar10", root, tmp_path)
    assert not marker.exists()
    assert torch.equal(again.train.x, b.train.x)
    assert torch.load(pt, weights_only=True)["train_x"].shape == b.train.x.shape


def test_cifar100_fine_and_coarse(tmp_path):
    root = tmp_path / "data"
    make_cifar100(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fine = _load("cifar100", root, tmp_path)
        coarse = _load("cifar100", root, tmp_path, label="coarse")
    assert fine.train.x.shape == (6, 3, 32, 32) and fine.test.x.shape == (2, 3, 32, 32)
    assert fine.train.y.tolist() == [0, 17, 34, 51, 68, 85] and len(fine.classes) == 100
    assert coarse.train.y.tolist() == [0, 3, 6, 9, 12, 15] and coarse.classes[1] == "coarse1"
    assert len(coarse.classes) == 20 and torch.equal(fine.train.x, coarse.train.x)
    with pytest.raises(ParamsError, match="fine"):
        _load("cifar100", root, tmp_path, label="medium")
    with pytest.raises(DataNotFoundError, match="cifar-100-python"):
        _load("cifar100", tmp_path / "empty", tmp_path)


# -- image trees ----------------------------------------------------------------------------------
def _img(path, w, h, seed, mode="RGB", fmt=None):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
    Image.fromarray(arr, mode).save(path, format=fmt)
    return arr


def make_tiny(root):
    # wnids.txt is unsorted in the real release; n01 and n03 share the first synonym "goldfish"
    return write_tinyimagenet(
        root, wnids=["n02", "n01", "n03"], train_per_class=2, val_labels=["n03", "n01", "n02", "n01"],
        words={"n00": "unused", "n01": "goldfish, Carassius auratus", "n02": "bullfrog, Rana catesbeiana",
               "n03": "goldfish, other sense"})


def test_tinyimagenet_layout_names_and_grayscale(tmp_path):
    root = tmp_path / "data"
    make_tiny(root)
    b = _load("tinyimagenet", root, tmp_path)
    assert b.train.x.shape == (7, 3, 64, 64) and b.test.x.shape == (4, 3, 64, 64)
    # sorted wnids n01, n02, n03; first synonyms unless they collide (n01 and n03 are both goldfish)
    assert b.classes == ["goldfish, Carassius auratus", "bullfrog", "goldfish, other sense"]
    assert b.info["wnids"] == ["n01", "n02", "n03"]
    assert b.train.y.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert b.test.y.tolist() == [2, 0, 1, 0]  # from val_annotations.txt
    gray = b.train.x[6].int()
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert not torch.equal(b.train.x[0, 0], b.train.x[0, 1])
    b2 = _load("tinyimagenet", root, tmp_path)
    assert b2.fingerprint == b.fingerprint and torch.equal(b2.test.x, b.test.x)


def test_tinyimagenet_errors(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(DataNotFoundError, match="tiny-imagenet-200"):
        _load("tinyimagenet", root, tmp_path)
    base = make_tiny(root)
    (base / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataNotFoundError, match="val_annotations.txt"):
        _load("tinyimagenet", root, tmp_path)
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t1\t1\nval_9.JPEG\tn01\t0\t0\t1\t1\n")
    with pytest.raises(CorruptDataError, match="val_9.JPEG"):
        _load("tinyimagenet", root, tmp_path)
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t1\t1\n")
    bad = base / "train" / "n02" / "images" / "n02_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(CorruptDataError, match="n02_1.JPEG"):
        _load("tinyimagenet", root, tmp_path)


def make_imagenette(root, variant="imagenette2-160", side=40):
    return write_imagenette(root, variant, side, wnids=["n01440764", "n02102040"], train_per_class=3,
                            val_per_class=1)


def test_imagenette_resize_and_names(tmp_path):
    root = tmp_path / "data"
    make_imagenette(root)
    b = _load("imagenette", root, tmp_path, image_size=24)
    assert b.train.x.shape == (7, 3, 24, 24) and b.test.x.shape == (2, 3, 24, 24)
    assert b.classes == ["tench", "English springer"]
    assert b.train.y.tolist() == [0, 0, 0, 0, 1, 1, 1] and b.test.y.tolist() == [0, 1]
    with pytest.warns(UserWarning, match="upscaled"):
        big = _load("imagenette", root, tmp_path)
    assert big.train.x.shape[2:] == (224, 224)
    with pytest.raises(ParamsError):
        _load("imagenette", root, tmp_path, variant="imagenette3")


def test_imagenette_picks_smallest_sufficient_release(tmp_path):
    root = tmp_path / "data"
    make_imagenette(root, "imagenette2-160", 40)
    make_imagenette(root, "imagenette2-320", 48)
    assert _load("imagenette", root, tmp_path, image_size=200).info["origin"].endswith("imagenette2-320")
    assert _load("imagenette", root, tmp_path, image_size=100).info["origin"].endswith("imagenette2-160")
    b = _load("imagenette", root, tmp_path, image_size=32, variant="imagenette2-320")
    assert b.info["origin"].endswith("imagenette2-320")


def test_imagenette_missing(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        _load("imagenette", tmp_path / "data", tmp_path)
    assert "imagenette2-160" in str(err.value) and "imagenette2-320" in str(err.value)


def make_folder(base):
    _img(base / "train" / "zebra" / "a.png", 8, 8, 1, fmt="PNG")
    _img(base / "train" / "zebra" / "b.JPG", 8, 8, 2, fmt="JPEG")
    _img(base / "train" / "ant" / "c.bmp", 8, 8, 3, fmt="BMP")
    _img(base / "train" / "ant" / "d.jpeg", 8, 8, 4, mode="L", fmt="JPEG")
    (base / "train" / "ant" / "notes.txt").write_text("not an image")
    _img(base / "test" / "zebra" / "e.png", 8, 8, 5, fmt="PNG")
    _img(base / "test" / "ant" / "f.png", 8, 8, 6, fmt="PNG")


def test_imagefolder_relative_and_absolute(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "mine")
    b = _load("imagefolder", root, tmp_path, path="mine")
    assert b.classes == ["ant", "zebra"]
    assert b.train.x.shape == (4, 3, 8, 8) and b.test.x.shape == (2, 3, 8, 8)
    assert b.train.y.tolist() == [0, 0, 1, 1] and b.test.y.tolist() == [0, 1]
    png = np.asarray(Image.open(root / "mine" / "test" / "zebra" / "e.png"))
    assert torch.equal(b.test.x[1], torch.from_numpy(png.copy()).permute(2, 0, 1))  # lossless, exact
    b2 = _load("imagefolder", tmp_path / "elsewhere", tmp_path, path=str(root / "mine"))
    assert torch.equal(b2.train.x, b.train.x)
    resized = _load("imagefolder", root, tmp_path, path="mine", image_size=5)
    assert resized.train.x.shape == (4, 3, 5, 5)


def test_imagefolder_errors(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(ParamsError, match="path"):
        _load("imagefolder", root, tmp_path)
    with pytest.raises(DataNotFoundError, match="mine"):
        _load("imagefolder", root, tmp_path, path="mine")
    make_folder(root / "mine")
    _img(root / "mine" / "train" / "ant" / "big.png", 12, 9, 7, fmt="PNG")
    with pytest.raises(CorruptDataError, match="image_size"):
        _load("imagefolder", root, tmp_path, path="mine")
    assert _load("imagefolder", root, tmp_path, path="mine", image_size=8).train.x.shape == (5, 3, 8, 8)
    (root / "mine" / "train" / "ant" / "big.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(CorruptDataError, match="big.png"):
        _load("imagefolder", root, tmp_path, path="mine", image_size=8)
    (root / "mine" / "train" / "ant" / "big.png").unlink()
    _img(root / "mine" / "test" / "yak" / "g.png", 8, 8, 8, fmt="PNG")
    with pytest.raises(CorruptDataError, match="yak"):
        _load("imagefolder", root, tmp_path, path="mine")


def test_imagefolder_file_change_changes_fingerprint(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "mine")
    fp = _load("imagefolder", root, tmp_path, path="mine").fingerprint
    assert _load("imagefolder", root, tmp_path, path="mine").fingerprint == fp
    _img(root / "mine" / "test" / "ant" / "f.png", 8, 8, 60, fmt="PNG")
    b = _load("imagefolder", root, tmp_path, path="mine")
    assert b.fingerprint != fp
    assert torch.equal(b.test.x[0], torch.from_numpy(np.array(
        Image.open(root / "mine" / "test" / "ant" / "f.png"))).permute(2, 0, 1))


def test_list_datasets_cli(capsys):
    from bench.cli import main

    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"cifar10", "cifar100", "tinyimagenet", "imagenette", "imagefolder", "digits"} <= listed
    assert {"cifar10", "cifar100", "tinyimagenet", "imagenette", "imagefolder", "digits"} <= set(DATASETS.names())
