"""Small on-disk datasets in the official layouts, made by the data tests (no downloads)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _image(rng: np.random.Generator, label: int, h: int, w: int) -> np.ndarray:
    base = np.array([(label * 70) % 256, (label * 130 + 60) % 256, (label * 40 + 120) % 256])
    img = base[None, None, :] + rng.normal(0, 20, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_imagefolder(root: Path, *, classes=("cat", "dog", "emu"), train_per_class=4,
                     val_per_class=2, sizes=((48, 64), (64, 40), (56, 56)), seed=0) -> Path:
    """root/{train,val}/<class>/<n>.jpg, JPEGs of several sizes."""
    rng = np.random.default_rng(seed)
    k = 0
    for split, per in (("train", train_per_class), ("val", val_per_class)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per):
                h, w = sizes[k % len(sizes)]
                k += 1
                Image.fromarray(_image(rng, c, h, w)).save(d / f"{name}_{i:03d}.jpg", quality=95)
    return root


def make_cifar(root: Path, *, hundred=False, train_per_batch=8, n_val=12, seed=0):
    """The official python-pickle layout (bytes keys), tiny; returns (dir, x_tr, y_tr, x_va, y_va)."""
    rng = np.random.default_rng(seed)
    nclass = 100 if hundred else 10
    d = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    d.mkdir(parents=True, exist_ok=True)
    label_key = b"fine_labels" if hundred else b"labels"

    def batch(n, start):
        y = [(start + i) % nclass for i in range(n)]
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        out = {b"batch_label": b"x", b"data": x, label_key: y,
               b"filenames": [f"img{start + i}.png".encode() for i in range(n)]}
        if hundred:
            out[b"coarse_labels"] = [v // 5 for v in y]
        return out, x, np.asarray(y)

    xs, ys = [], []
    if hundred:
        names = ["train"]
        per = max(train_per_batch, nclass)
    else:
        names = [f"data_batch_{i}" for i in range(1, 6)]
        per = train_per_batch
    start = 0
    for name in names:
        b, x, y = batch(per, start)
        start += per
        xs.append(x)
        ys.append(y)
        with open(d / name, "wb") as f:
            pickle.dump(b, f)
    b, xv, yv = batch(n_val, 0)
    with open(d / ("test" if hundred else "test_batch"), "wb") as f:
        pickle.dump(b, f)
    meta = ({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
             b"coarse_label_names": [f"s{i}".encode() for i in range(20)]} if hundred else
            {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": per})
    with open(d / ("meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump(meta, f)

    def hwc(x):
        return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)

    return d, hwc(np.concatenate(xs)), np.concatenate(ys), hwc(xv), yv


def make_tiny(root: Path, *, wnids=("n02", "n01", "n03"), train_per_class=3, n_val=5,
              seed=0) -> Path:
    """tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images, val/images, val_annotations}."""
    rng = np.random.default_rng(seed)
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}, other\n" for w in wnids))
    order = sorted(wnids)
    for w in wnids:
        d = base / "train" / w / "images"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(train_per_class):
            Image.fromarray(_image(rng, order.index(w), 64, 64)).save(d / f"{w}_{i}.JPEG", quality=95)
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
    lines = []
    for i in range(n_val):
        w = wnids[i % len(wnids)]
        img = _image(rng, order.index(w), 64, 64)
        if i == 0:  # Tiny-ImageNet has greyscale JPEGs; they are read as RGB
            Image.fromarray(img[..., 0], mode="L").save(base / "val" / "images" / f"val_{i}.JPEG")
        else:
            Image.fromarray(img).save(base / "val" / "images" / f"val_{i}.JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


# ---------------------------------------------------------------- the FFCV test policy
SKIP_FFCV_VAR = "ATTNLAB_SKIP_FFCV"


def ffcv_import_error() -> str:
    """'' when FFCV and our backend import, else why not (one line)."""
    try:
        import pipeline.data.ffcv_backend  # noqa: F401 (imported for its side effect (registration) or to check that it imports)
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken numba/ffcv build
        return f"{type(e).__name__}: {' '.join(str(e).split())}"
    return ""


def require_ffcv(module_level: bool = False) -> None:
    """FFCV tests run, or fail: they are skipped only when ATTNLAB_SKIP_FFCV=1 says so.

    A missing FFCV is a broken test environment (CI must test the FFCV backend), not a reason
    to skip silently.
    """
    import pytest

    if os.environ.get(SKIP_FFCV_VAR) == "1":
        pytest.skip(f"{SKIP_FFCV_VAR}=1: FFCV tests skipped by choice",
                    allow_module_level=module_level)
    why = ffcv_import_error()
    if why:
        pytest.fail(f"FFCV does not import ({why}): install it with `make install-ffcv`, or set "
                    f"{SKIP_FFCV_VAR}=1 to skip the FFCV tests on purpose", pytrace=False)
