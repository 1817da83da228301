"""``tiny-imagenet``: the official ``tiny-imagenet-200`` layout.

    wnids.txt                         the 200 class ids
    words.txt                         (optional) wnid -> words, for readable class names
    train/<wnid>/images/*.JPEG        500 per class
    val/images/*.JPEG                 10,000 images
    val/val_annotations.txt           file \t wnid \t x0 \t y0 \t x1 \t y1

``ROOT`` may be ``tiny-imagenet-200`` itself or the folder that contains it.  Labels index the
sorted wnids.  Images are 64 x 64 (some are greyscale JPEGs; they are read as RGB).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError

from .registry import register
from .source import (
    Source,
    Split,
    cached_fingerprint,
    hash_file_list,
    list_images,
    read_text,
    require_root,
)

TINY_MEAN = (0.4802, 0.4481, 0.3975)
TINY_STD = (0.2770, 0.2691, 0.2821)


def _base(root: Path) -> Path:
    for cand in (root, root / "tiny-imagenet-200"):
        if (cand / "wnids.txt").is_file():
            return cand
    raise ConfigError(f"{root}: no wnids.txt here or in tiny-imagenet-200/ "
                      "(expected the official Tiny-ImageNet layout)")


def load_tiny(root: Path | None) -> Source:
    root = require_root("tiny-imagenet", root)
    base = _base(root)
    text = read_text(base / "wnids.txt", "class list")
    wnids = sorted({w.strip() for w in text.split() if w.strip()})
    if not wnids:
        raise ConfigError(f"{base / 'wnids.txt'}: lists no classes")
    index = {w: i for i, w in enumerate(wnids)}

    paths: list[str] = []
    labels: list[int] = []
    for w in wnids:
        d = base / "train" / w / "images"
        if not d.is_dir():
            raise ConfigError(f"{d}: missing class folder (expected train/<wnid>/images/)")
        files = list_images(d)
        if not files:
            raise ConfigError(f"{d}: class folder has no images")
        paths.extend(e.path for e in files)
        labels.extend([index[w]] * len(files))
    train = Split(labels=np.asarray(labels), paths=paths)

    ann = base / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise ConfigError(f"{ann}: missing (expected val/val_annotations.txt)")
    vpaths: list[str] = []
    vlabels: list[int] = []
    img_dir = base / "val" / "images"
    for n, line in enumerate(read_text(ann, "val annotation file").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise ConfigError(f"{ann}:{n}: expected 'file<TAB>wnid<TAB>...'")
        fname, w = parts[0].strip(), parts[1].strip()
        if w not in index:
            raise ConfigError(f"{ann}:{n}: wnid {w!r} is not in wnids.txt")
        p = img_dir / fname
        if not p.is_file():
            raise ConfigError(f"{p}: listed in val_annotations.txt but missing")
        vpaths.append(str(p))
        vlabels.append(index[w])
    if not vpaths:
        raise ConfigError(f"{ann}: lists no images")
    order = np.argsort(np.asarray(vpaths), kind="stable")
    val = Split(labels=np.asarray(vlabels)[order], paths=[vpaths[i] for i in order])

    names = dict.fromkeys(wnids, "")
    words = base / "words.txt"
    if words.is_file():
        for line in read_text(words, "class names file").splitlines():
            w, _, text = line.partition("\t")
            if w in names:
                names[w] = text.split(",")[0].strip()
    keys = [base, base / "train", img_dir, ann, base / "wnids.txt"] + [
        base / "train" / w / "images" for w in wnids]
    fp = cached_fingerprint(keys, "tiny-imagenet",
                            lambda: hash_file_list(base, [("train", train), ("val", val)], wnids))
    return Source(
        name="tiny-imagenet", classes=wnids, train=train, val=val, fingerprint=fp,
        mean=TINY_MEAN, std=TINY_STD, style="cifar", default_res=64, image_size=(64, 64),
        root=base, extra={"class_words": [names[w] for w in wnids]},
    )


@register("tiny-imagenet", style="cifar", needs_root=True,
          description="Tiny-ImageNet-200, official layout (val/val_annotations.txt)")
def tiny_imagenet(cfg) -> Source:
    return load_tiny(cfg.root)

