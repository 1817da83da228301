"""``digits``: the embedded default dataset.

scikit-learn's handwritten digits (1,797 real 8 x 8 greyscale scans, shipped inside the
scikit-learn package: no download), upscaled to 32 x 32 RGB and split 80/20 per class with a
fixed seed, so every run, machine and backend sees the same 1,438 / 359 images.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError

from .registry import register
from .source import Source, Split, hash_arrays

SPLIT_SEED = 20240229
VAL_FRACTION = 0.2
SIZE = 32


def _upscale(images8: np.ndarray) -> np.ndarray:
    """(N, 8, 8) floats in 0..16 -> (N, 32, 32, 3) uint8, bilinear (half-pixel centres)."""
    n, h, w = images8.shape
    scale = SIZE // h
    # sample positions of the output pixel centres in input coordinates, clamped at the edges
    pos = (np.arange(SIZE) + 0.5) / scale - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, h - 1)
    hi = np.clip(lo + 1, 0, h - 1)
    t = np.clip(pos - lo, 0.0, 1.0)
    x = images8.astype(np.float64) * (255.0 / 16.0)
    rows = x[:, lo, :] * (1 - t)[None, :, None] + x[:, hi, :] * t[None, :, None]
    out = rows[:, :, lo] * (1 - t)[None, None, :] + rows[:, :, hi] * t[None, None, :]
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(out[..., None], 3, axis=3))


def split_indices(labels: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: in each class, a seeded permutation's first 20% go to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(VAL_FRACTION * len(idx)))
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (1,797 8×8 images and labels), read from the CSV file the
    package ships — what ``sklearn.datasets.load_digits`` reads, without importing scikit-learn
    (over a second of every trial's start-up)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("dataset 'digits' needs scikit-learn (a dependency of attnlab): pip install scikit-learn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",")  # (1797, 65): 64 pixels (0..16), then the label
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


@lru_cache(maxsize=1)
def load_digits_source() -> Source:
    pixels, target = _read_digits()
    images = _upscale(pixels)
    labels = np.asarray(target, dtype=np.int64)
    tr, va = split_indices(labels)
    xtr = np.ascontiguousarray(images[tr])
    mean = tuple(float(v) for v in xtr.reshape(-1, 3).mean(0) / 255.0)
    std = tuple(float(v) for v in xtr.reshape(-1, 3).std(0) / 255.0)
    classes = [str(i) for i in range(10)]
    return Source(
        name="digits", classes=classes,
        train=Split(labels=labels[tr], array=xtr),
        val=Split(labels=labels[va], array=np.ascontiguousarray(images[va])),
        fingerprint=hash_arrays("digits", classes, images, labels, tr, va),
        mean=mean, std=std, style="digits", default_res=SIZE, image_size=(SIZE, SIZE),
        root=None, extra={"split_seed": SPLIT_SEED, "source": "sklearn.datasets.load_digits"},
    )


@register("digits", style="digits", needs_root=False,
          description="scikit-learn handwritten digits, 32x32 RGB, fixed 80/20 split (embedded)")
def digits(cfg) -> Source:
    return load_digits_source()
