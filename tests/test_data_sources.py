"""Dataset kinds: layouts read correctly, fingerprints, and bad input (no FFCV needed)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from _data_makers import make_cifar, make_imagefolder, make_tiny
from pipeline.config import DataConfig
from pipeline.data import dataset_names, get_dataset, load_source
from pipeline.data.__main__ import main as cli
from pipeline.data.registry import UnknownDatasetError, register
from pipeline.data.source import read_rgb
from pipeline.errors import ConfigError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))


def src(name, root=None, **kw):
    return load_source(DataConfig(dataset=name, root=root, **kw))


def test_registry_lists_and_rejects():
    assert {"imagenet", "imagefolder", "cifar10", "cifar100", "tiny-imagenet", "digits",
            "synthetic"} <= set(dataset_names())
    with pytest.raises(UnknownDatasetError, match="valid: .*cifar10"):
        get_dataset("mnist")
    with pytest.raises(ValueError, match="twice"):
        register("digits", style="digits", needs_root=False)(lambda cfg: None)


def test_digits_is_fixed_real_and_split_80_20():
    s = src("digits")
    assert (len(s.train), len(s.val)) == (1438, 359)
    assert s.train.array.shape[1:] == (32, 32, 3) and s.train.array.dtype == np.uint8
    assert s.classes == [str(i) for i in range(10)]
    for y in (s.train.labels, s.val.labels):  # stratified: every class on both sides
        assert set(np.unique(y)) == set(range(10))
    # the three channels are the same grey scan; strokes are bright, background dark
    assert (s.train.array[..., 0] == s.train.array[..., 2]).all()
    assert s.train.array.max() == 255 and (s.train.array == 0).mean() > 0.25
    assert s.fingerprint == src("digits").fingerprint  # deterministic


def test_synthetic_is_deterministic_and_class_dependent():
    a = src("synthetic", synthetic={"num_classes": 4, "image_size": 24, "train_count": 40,
                                    "val_count": 8})
    b = src("synthetic", synthetic={"num_classes": 4, "image_size": 24, "train_count": 40,
                                    "val_count": 8})
    assert a.fingerprint == b.fingerprint and np.array_equal(a.train.array, b.train.array)
    assert a.train.array.shape == (40, 24, 24, 3) and a.num_classes == 4
    means = [a.train.array[a.train.labels == c].mean(axis=(0, 1, 2)) for c in range(4)]
    assert min(np.abs(means[i] - means[j]).max() for i in range(4) for j in range(i)) > 5
    c = src("synthetic", synthetic={"num_classes": 4, "image_size": 24, "train_count": 40,
                                    "val_count": 8, "seed": 1})
    assert c.fingerprint != a.fingerprint


def test_imagefolder_layout(tmp_path):
    root = make_imagefolder(tmp_path / "if")
    s = src("imagefolder", root)
    assert s.classes == ["cat", "dog", "emu"]
    assert list(s.train.labels) == [0] * 4 + [1] * 4 + [2] * 4
    assert list(s.val.labels) == [0, 0, 1, 1, 2, 2]
    assert all(os.path.isabs(p) for p in s.train.paths)
    assert read_rgb(s.train.paths[0]).shape[2] == 3 and s.image_size is None


def test_imagefolder_fingerprint_tracks_content(tmp_path):
    root = make_imagefolder(tmp_path / "if")
    fp = src("imagefolder", root).fingerprint
    assert src("imagefolder", root).fingerprint == fp
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)  # same content elsewhere: same identity
    assert src("imagefolder", copy).fingerprint == fp
    (copy / "train" / "cat" / "cat_000.jpg").unlink()
    assert src("imagefolder", copy).fingerprint != fp


def test_cifar_layouts(tmp_path):
    d, xtr, ytr, xva, yva = make_cifar(tmp_path / "c10")
    for root in (tmp_path / "c10", d):  # parent folder or the batch folder itself
        s = src("cifar10", root)
        assert np.array_equal(s.train.array, xtr) and np.array_equal(s.train.labels, ytr)
        assert np.array_equal(s.val.array, xva) and np.array_equal(s.val.labels, yva)
        assert s.classes[:2] == ["c0", "c1"] and s.image_size == (32, 32)
    d, xtr, ytr, _, _ = make_cifar(tmp_path / "c100", hundred=True)
    s = src("cifar100", tmp_path / "c100")
    assert s.num_classes == 100 and np.array_equal(s.train.labels, ytr)


def test_tiny_imagenet_layout(tmp_path):
    base = make_tiny(tmp_path / "tiny")
    s = src("tiny-imagenet", tmp_path / "tiny")
    assert s.classes == ["n01", "n02", "n03"]  # sorted wnids
    assert sorted(np.bincount(s.train.labels).tolist()) == [3, 3, 3]
    # val labels come from val_annotations.txt
    ann = dict(line.split("\t")[:2] for line in
               (base / "val" / "val_annotations.txt").read_text().splitlines())
    for p, y in zip(s.val.paths, s.val.labels):
        assert s.classes[y] == ann[os.path.basename(p)]
    assert read_rgb(s.val.paths[0]).shape == (64, 64, 3)  # a greyscale JPEG, read as RGB
    assert s.extra["class_words"][0] == "thing n01"


# ---------------------------------------------------------------- bad input
def bad_cases(tmp_path):
    if_root = make_imagefolder(tmp_path / "good")
    no_classes = tmp_path / "noclass"
    (no_classes / "train").mkdir(parents=True)
    (no_classes / "val").mkdir()
    (no_classes / "train" / "loose.jpg").write_bytes(b"x")
    empty = tmp_path / "empty"
    shutil.copytree(if_root, empty)
    shutil.rmtree(empty / "train" / "dog")
    (empty / "train" / "dog").mkdir()
    no_val = tmp_path / "noval"
    shutil.copytree(if_root, no_val)
    shutil.rmtree(no_val / "val")
    c10 = tmp_path / "c10bad"
    d, *_ = make_cifar(c10)
    (d / "data_batch_3").write_bytes((d / "data_batch_3").read_bytes()[:100])  # truncated
    tiny = tmp_path / "tinybad"
    base = make_tiny(tiny)
    (base / "val" / "val_annotations.txt").unlink()
    return [
        ("imagefolder", tmp_path / "missing", "does not exist"),
        ("imagefolder", None, "needs a root"),
        ("imagefolder", no_classes, "no class folders"),
        ("imagefolder", empty, "dog: class folder has no images"),
        ("imagefolder", no_val, "missing val/"),
        ("cifar10", if_root, "no data_batch_1"),
        ("cifar10", c10, "data_batch_3: not a readable CIFAR pickle"),
        ("tiny-imagenet", tiny, "val_annotations.txt: missing"),
    ]


def test_bad_input_is_a_one_line_error_naming_the_path(tmp_path):
    for name, root, expect in bad_cases(tmp_path):
        with pytest.raises(ConfigError) as e:
            src(name, root)
        msg = str(e.value)
        assert expect in msg and "\n" not in msg, (name, root, msg)
        assert (str(root) in msg) if root is not None else "data.root" in msg


@pytest.mark.parametrize("args,expect", [
    (["write", "imagefolder", "--out", "OUT"], "needs a root"),
    (["write", "imagefolder", "--root", "ROOT/nowhere", "--out", "OUT"], "does not exist"),
    (["write", "imagefolder", "--root", "ROOT", "--out", "OUT"], "no class folders"),
    (["write", "digits", "--out", "OUT", "--max-res", "0"], "--max-res"),
    (["write", "mnist", "--out", "OUT"], "unknown dataset 'mnist'"),
    (["write", "digits", "--out", "OUT", "--num-classes", "3"], "--num-classes"),
    (["info", "OUT"], "no manifest.json"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, expect):
    root = tmp_path / "root"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = [a.replace("ROOT", str(root)).replace("OUT", str(out)) for a in args]
    with pytest.raises(SystemExit) as e:
        cli(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expect in err, err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_list(capsys):
    assert cli(["list"]) == 0
    assert "tiny-imagenet" in capsys.readouterr().out


def test_digits_read_without_sklearn_equals_load_digits():
    """The digits are read from the CSV scikit-learn ships (no sklearn import at trial start):
    the same 1,797 images and labels as ``sklearn.datasets.load_digits``."""
    import numpy as np
    from sklearn.datasets import load_digits

    from pipeline.data.digits import _read_digits

    pixels, target = _read_digits()
    d = load_digits()
    assert np.array_equal(pixels, d.images) and np.array_equal(target, d.target)
