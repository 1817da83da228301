"""``check_data_ready`` / ``resolve_backend``: a node's answer to "can this trial's data be read
here, and with which backend", from paths, layouts, manifests and sizes only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _data_makers import make_cifar, make_imagefolder, make_tiny
from pipeline.data import ready
from pipeline.data.ready import check_data_ready, resolve_backend
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ffcv_here(monkeypatch):
    """Pretend FFCV imports on this node (the probe's answer), without importing it."""
    monkeypatch.setattr(ready, "_probe", {"ok": True, "why": ""})


@pytest.fixture
def no_ffcv_here(monkeypatch):
    monkeypatch.setattr(ready, "_probe", {"ok": False, "why": "ModuleNotFoundError: ffcv"})


def fake_betons(folder: Path, dataset: str, sizes=(100, 40)) -> Path:
    """A beton folder as the manifest describes it (contents are not looked at)."""
    folder.mkdir(parents=True)
    files = {}
    for split, n in zip(("train", "val"), sizes):
        (folder / f"{split}.beton").write_bytes(b"\0" * n)
        files[split] = {"name": f"{split}.beton", "bytes": n, "digest": "sha256:x"}
    (folder / "manifest.json").write_text(json.dumps(
        {"format": "attnlab-beton", "version": 1, "dataset": dataset, "files": files}))
    return folder


def test_torch_backend_layouts(tmp_path):
    assert check_data_ready({"dataset": "digits", "backend": "torch"}) == []
    good_if = make_imagefolder(tmp_path / "if")
    assert check_data_ready({"dataset": "imagefolder", "root": str(good_if),
                             "backend": "torch"}) == []
    c10, *_ = make_cifar(tmp_path / "c10")
    assert check_data_ready({"dataset": "cifar10", "root": str(tmp_path / "c10"),
                             "backend": "torch"}) == []
    tiny = make_tiny(tmp_path / "tiny")
    assert check_data_ready({"dataset": "tiny-imagenet", "root": str(tmp_path / "tiny"),
                             "backend": "torch"}) == []
    (c10 / "test_batch").unlink()
    (tiny / "val" / "val_annotations.txt").unlink()
    (tmp_path / "plain").write_text("x")
    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    cases = {
        ("imagenet", tmp_path / "nowhere"): "does not exist",
        ("imagenet", tmp_path / "plain"): "not a folder",
        ("imagenet", None): "needs a root folder",
        ("imagefolder", tmp_path / "empty"): "no val/ folder",
        ("cifar10", tmp_path / "c10"): "missing test_batch",
        ("tiny-imagenet", tmp_path / "tiny"): "val_annotations.txt",
        ("cifar100", tmp_path / "if"): "no train here",
    }
    for (name, root), expect in cases.items():
        cfg = {"dataset": name, "backend": "torch"}
        if root is not None:
            cfg["root"] = str(root)
        problems = check_data_ready(cfg)
        assert len(problems) == 1 and expect in problems[0], (name, problems)
        assert "\n" not in problems[0]


def test_bad_config_is_a_problem_not_an_exception():
    assert check_data_ready({"dataset": "mnist"}) == [
        "data.dataset: unknown dataset 'mnist'; valid: cifar10, cifar100, digits, imagefolder, "
        "imagenet, synthetic, tiny-imagenet"]
    assert check_data_ready({"dataset": "digits", "batch_size": 0})[0].startswith(
        "data.batch_size:")


def test_ffcv_files_missing_for_a_large_dataset_names_the_write_command(tmp_path, ffcv_here):
    root = make_imagefolder(tmp_path / "in")  # stands for ImageNet's layout
    cfg = {"dataset": "imagenet", "root": str(root), "beton_dir": str(tmp_path / "b")}
    (problem,) = check_data_ready(cfg)
    assert problem == (f"FFCV files for imagenet missing in beton_dir {tmp_path / 'b'}: prepare "
                       f"them with `python -m pipeline.data write imagenet --root {root} --out "
                       f"{tmp_path / 'b'}`")
    assert resolve_backend(cfg) == "torch"  # what auto would fall back to
    fake_betons(tmp_path / "b", "imagenet")
    assert check_data_ready(cfg) == [] and resolve_backend(cfg) == "ffcv"
    assert check_data_ready(dict(cfg, root=None)) == []  # the files alone are enough
    (tmp_path / "b" / "val.beton").write_bytes(b"\0" * 7)  # truncated
    (problem,) = check_data_ready(cfg)
    assert "val.beton is 7 bytes, the manifest says 40" in problem
    other = {"dataset": "cifar10", "beton_dir": str(tmp_path / "b"), "root": str(root)}
    assert "holds 'imagenet', not 'cifar10'" in check_data_ready(other)[0]


def test_small_datasets_are_written_on_first_use(tmp_path, ffcv_here):
    assert resolve_backend({"dataset": "digits"}) == "ffcv"
    assert check_data_ready({"dataset": "digits", "beton_dir": str(tmp_path / "b")}) == []
    root = make_imagefolder(tmp_path / "if")
    cfg = {"dataset": "imagefolder", "root": str(root), "beton_dir": str(tmp_path / "b")}
    assert check_data_ready(cfg) == [] and resolve_backend(cfg) == "ffcv"
    big = {"dataset": "synthetic", "synthetic": {"train_count": 300_000}}
    assert resolve_backend(big) == "torch"
    assert "too many images" in check_data_ready(dict(big, backend="ffcv"))[0]


def test_without_ffcv(tmp_path, no_ffcv_here):
    assert resolve_backend({"dataset": "digits"}) == "torch"
    assert resolve_backend("auto") == "torch" and resolve_backend("torch") == "torch"
    with pytest.raises(ConfigError, match="make install-ffcv"):
        resolve_backend({"dataset": "digits", "backend": "ffcv"})
    (problem,) = check_data_ready({"dataset": "digits", "backend": "ffcv"})
    assert "not importable" in problem
    (problem,) = check_data_ready({"dataset": "digits", "jpeg_dir": str(tmp_path / "j")})
    assert "no JPEG copy of digits" in problem and "--format jpeg" in problem


def test_no_torch_import_and_a_real_probe():
    code = ("import sys, json; from pipeline.data import check_data_ready, resolve_backend; "
            "b = resolve_backend({'dataset': 'digits'}); p = check_data_ready({'dataset': 'digits'}); "
            "print(json.dumps([b, p, 'torch' in sys.modules, 'ffcv' in sys.modules]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr[-2000:]
    backend, problems, torch_loaded, ffcv_loaded = json.loads(r.stdout.strip().splitlines()[-1])
    from _data_makers import ffcv_import_error

    assert backend == ("torch" if ffcv_import_error() else "ffcv")
    assert problems == [] and not torch_loaded and not ffcv_loaded
