"""``synthetic``: procedurally generated, class-dependent images of any size and class count.

For loader and speed tests only — never for accuracy claims.  Each class has its own colour,
stripe frequency and orientation; each image has its own phase, contrast and noise.  Image
``i`` of a split is a pure function of (seed, split, i), so the data are identical everywhere;
the fingerprint hashes the generator version and the spec.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .registry import register
from .source import Source, Split, hash_arrays

GENERATOR_VERSION = 1
MATERIALISE_BYTES = 1024 * 2**20  # smaller datasets are generated once, into memory


class Generator:
    """Picklable ``index -> uint8 H x W x 3`` for one split (DataLoader workers, FFCV writer)."""

    def __init__(self, num_classes: int, size: int, seed: int, split: int):
        self.num_classes, self.size, self.seed, self.split = num_classes, size, seed, split

    def label(self, i: int) -> int:
        return i % self.num_classes

    def _class_params(self, c: int):
        rng = np.random.default_rng([self.seed, 7919, c])
        colour = rng.uniform(40, 215, size=3)
        freq = rng.uniform(1.0, 6.0)
        angle = rng.uniform(0, np.pi)
        return colour, freq, angle

    def __call__(self, i: int) -> np.ndarray:
        c = self.label(i)
        colour, freq, angle = self._class_params(c)
        rng = np.random.default_rng([self.seed, self.split, i])
        s = self.size
        yy, xx = np.meshgrid(np.arange(s, dtype=np.float32) / s,
                             np.arange(s, dtype=np.float32) / s, indexing="ij")
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
        contrast = rng.uniform(25, 45)
        img = colour[None, None, :] + contrast * wave[..., None]
        img = img + rng.normal(0, 8, size=(s, s, 3))
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _split(num_classes: int, size: int, seed: int, which: int, count: int) -> Split:
    gen = Generator(num_classes, size, seed, which)
    labels = np.arange(count, dtype=np.int64) % num_classes
    if count * size * size * 3 <= MATERIALISE_BYTES:
        return Split(labels=labels, array=np.stack([gen(i) for i in range(count)]))
    return Split(labels=labels, make=gen)


@lru_cache(maxsize=4)
def load_synthetic(num_classes: int, size: int, train_count: int, val_count: int,
                   seed: int) -> Source:
    spec = dict(num_classes=num_classes, image_size=size, train_count=train_count,
                val_count=val_count, seed=seed, generator=GENERATOR_VERSION)
    return Source(
        name="synthetic", classes=[f"class{c:0{len(str(num_classes - 1))}d}" for c in range(num_classes)],
        train=_split(num_classes, size, seed, 0, train_count),
        val=_split(num_classes, size, seed, 1, val_count),
        fingerprint=hash_arrays("synthetic", spec),
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
        style="cifar" if size <= 64 else "imagenet", default_res=size, image_size=(size, size),
        root=None, extra={"synthetic": spec},
    )


@register("synthetic", style="cifar", needs_root=False,
          description="procedural class-dependent images (data.synthetic.*); speed tests only")
def synthetic(cfg) -> Source:
    s = cfg.synthetic
    return load_synthetic(s.num_classes, s.image_size, s.train_count, s.val_count, s.seed)
