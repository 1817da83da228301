"""The resized JPEG copy (``write --format jpeg``) read by the torch backend (no FFCV)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline.data.jpeg_store as js
from _data_makers import make_imagefolder
from pipeline.config import DataConfig
from pipeline.data import load_source, make_loaders
from pipeline.data.__main__ import main as cli
from pipeline.errors import ConfigError


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    return make_imagefolder(tmp_path / "if")


def write(root, out, *extra):
    return cli(["write", "imagefolder", "--root", str(root), "--out", str(out), "--format",
                "jpeg", "--max-res", "40", "--quiet", "--workers", "1", *extra])


def test_copy_keeps_order_labels_identity_and_caps_size(folder, tmp_path, capsys):
    out = tmp_path / "jpeg"
    assert write(folder, out) == 0 and "wrote" in capsys.readouterr().out
    src = load_source(DataConfig(dataset="imagefolder", root=folder))
    copy = js.load_jpeg_source(DataConfig(dataset="imagefolder", jpeg_dir=out), None)
    assert copy.fingerprint == src.fingerprint and copy.classes == src.classes
    for s in ("train", "val"):
        a, b = src.split(s), copy.split(s)
        assert np.array_equal(a.labels, b.labels)
        for pa, pb in zip(a.paths, b.paths):
            with Image.open(pa) as ia, Image.open(pb) as ib:
                assert ib.size == js.capped_size(ia.width, ia.height, 40)
                assert max(ib.size) == 40
    train, val, info = make_loaders(DataConfig(dataset="imagefolder", backend="torch", jpeg_dir=out,
                                               train_res=24, shuffle=False, workers=0,
                                               batch_size=4))
    assert info["fingerprint"] == src.fingerprint and info["extra"]["jpeg_copy"]["max_res"] == 40
    y = torch.cat([y for _, y in train])
    assert y.tolist() == src.train.labels.tolist()
    assert write(folder, out) == 0 and "up to date" in capsys.readouterr().out
    assert cli(["info", str(out)]) == 0 and "attnlab-jpeg" in capsys.readouterr().out


def test_conflicts_and_bad_input_are_exit_2_and_touch_nothing(folder, tmp_path, capsys):
    out = tmp_path / "jpeg"
    write(folder, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    mtime = (out / "manifest.json").stat().st_mtime_ns
    for args in (["--max-res", "30"], ["--jpeg-quality", "50"]):
        with pytest.raises(SystemExit) as e:
            cli(["write", "imagefolder", "--root", str(folder), "--out", str(out), "--format",
                 "jpeg", "--quiet", "--workers", "1", *args])
        assert e.value.code == 2 and "--force" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli(["write", "digits", "--out", str(tmp_path / "d"), "--format", "jpeg"])
    assert e.value.code == 2 and "not a file dataset" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="has no manifest.json"):
        make_loaders(DataConfig(dataset="imagefolder", backend="torch", jpeg_dir=tmp_path / "d"))
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    (other / "val" / "emu" / "emu_000.jpg").unlink()
    with pytest.raises(ConfigError, match="written from other data"):
        make_loaders(DataConfig(dataset="imagefolder", root=other, backend="torch", jpeg_dir=out))


def test_interrupted_copy_leaves_nothing_that_looks_complete(folder, tmp_path, monkeypatch):
    out = tmp_path / "jpeg"
    real = js._write_split

    def dies_on_val(split, path, *a, **kw):
        if path.name == "val":
            path.mkdir(parents=True)
            raise KeyboardInterrupt
        return real(split, path, *a, **kw)

    monkeypatch.setattr(js, "_write_split", dies_on_val)
    assert write(folder, out) == 130  # the CLI's answer to Ctrl-C
    assert not out.exists()  # the folder it created is gone again, lock included
    monkeypatch.setattr(js, "_write_split", real)
    assert write(folder, out) == 0 and (out / "manifest.json").exists()
