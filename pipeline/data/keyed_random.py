"""Augmentation randomness as a pure function of ``(seed, epoch, sample index)``.

Every random choice of a train augmentation (random-resized-crop window, pad-and-crop offset,
flip) is drawn from a counter-based generator keyed by the trial's seed, the epoch and the
sample's index in the dataset, never from a generator whose state depends on what ran before
(numba's per-thread state, a DataLoader worker's torch state).  So:

* two processes with the same seed hand out the same batches (any worker count, any backend);
* a run restarted at epoch ``k`` gets the same augmentations as one that ran epochs ``0..k-1``;
* both backends draw the *same* parameters for the same sample and epoch: on images stored
  exactly (raw) with no resize, the FFCV and torch batches are equal.

The generator is SplitMix64's output function applied to ``key + counter * golden``.  It is
written three times with identical results: on Python ints (:func:`uniform`), on numpy uint64
arrays (:func:`uniform_array`) and in numba inside FFCV's compiled pipeline
(``pipeline/data/ffcv_backend.py``); ``tests/test_data_determinism.py`` checks that they agree.
Nothing here imports torch.
"""
from __future__ import annotations

import math

import numpy as np

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MUL1 = 0xBF58476D1CE4E5B9
MUL2 = 0x94D049BB133111EB
INV_2_53 = 1.0 / (1 << 53)

# One counter range per kind of draw, so the draws of different ops never coincide.
RRC, PAD, FLIP = 1, 2, 3
RRC_TRIES = 10


def mix(z: int) -> int:
    """SplitMix64's finaliser on a Python int (mod 2**64)."""
    z &= MASK
    z = ((z ^ (z >> 30)) * MUL1) & MASK
    z = ((z ^ (z >> 27)) * MUL2) & MASK
    return z ^ (z >> 31)


def epoch_key(seed: int, epoch: int) -> int:
    """The key of one epoch of one trial; a sample's key adds its index (:func:`sample_key`)."""
    k = mix((int(seed) * GOLDEN + 0x5EED) & MASK)
    return mix((k + (int(epoch) + 1) * GOLDEN) & MASK)


def sample_key(ekey: int, index: int) -> int:
    return mix((ekey + (int(index) + 1) * GOLDEN) & MASK)


def uniform(key: int, stream: int, k: int) -> float:
    """Draw ``k`` of ``stream`` for a sample key: a float in [0, 1) with 53 random bits."""
    return (mix((key + (stream * 64 + k + 1) * GOLDEN) & MASK) >> 11) * INV_2_53


# ---------------------------------------------------------------- numpy (whole batches)
def _mix_array(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MUL1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MUL2)
    return z ^ (z >> np.uint64(31))


def sample_keys(ekey: int, indices) -> np.ndarray:
    """:func:`sample_key` for many indices at once (uint64 array)."""
    idx = np.asarray(indices).astype(np.uint64)
    with np.errstate(over="ignore"):
        return _mix_array(np.uint64(ekey) + (idx + np.uint64(1)) * np.uint64(GOLDEN))


def uniform_array(keys: np.ndarray, stream: int, k: int) -> np.ndarray:
    """:func:`uniform` for an array of sample keys."""
    with np.errstate(over="ignore"):
        z = _mix_array(keys + np.uint64((stream * 64 + k + 1) * GOLDEN & MASK))
    return (z >> np.uint64(11)).astype(np.float64) * INV_2_53


# ---------------------------------------------------------------- the draws of each op
def offset(key: int, padding: int, axis: int) -> int:
    """Pad-and-crop: where the ``h x w`` window starts in the padded image, ``0..2p``."""
    return int(uniform(key, PAD, axis) * (2 * padding + 1))


def offsets_array(keys: np.ndarray, padding: int, axis: int) -> np.ndarray:
    return (uniform_array(keys, PAD, axis) * (2 * padding + 1)).astype(np.int64)


def flips_array(keys: np.ndarray) -> np.ndarray:
    return uniform_array(keys, FLIP, 0) < 0.5


def flip(key: int) -> bool:
    return uniform(key, FLIP, 0) < 0.5


def rrc_window(h: int, w: int, scale, aspect, key: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random-resized-crop window of an ``h x w`` image.

    torchvision's rule: up to 10 tries of an area share in ``scale`` and a log-uniform aspect
    ratio in ``aspect``; the first window that fits is placed uniformly; else the centred
    crop of the image clamped to the aspect range.
    """
    area = h * w
    lo, hi = math.log(aspect[0]), math.log(aspect[1])
    for t in range(RRC_TRIES):
        target = area * (scale[0] + (scale[1] - scale[0]) * uniform(key, RRC, 2 * t))
        ar = math.exp(lo + (hi - lo) * uniform(key, RRC, 2 * t + 1))
        cw = int(round(math.sqrt(target * ar)))
        ch = int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(uniform(key, RRC, 2 * RRC_TRIES) * (h - ch + 1))
            left = int(uniform(key, RRC, 2 * RRC_TRIES + 1) * (w - cw + 1))
            return top, left, ch, cw
    r = w / h
    if r < aspect[0]:
        cw, ch = w, int(round(w / aspect[0]))
    elif r > aspect[1]:
        ch, cw = h, int(round(h * aspect[1]))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw
