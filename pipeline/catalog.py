"""The built-in datasets as plain data: names, what each needs, and its known size.

A leaf module: it imports nothing of this project and no outside library, so validating a
config (``pipeline.config``) or estimating a grid's cost (``experiments/grid.py --dry-run``)
never imports torch or the data package.  ``pipeline.data.registry`` attaches a loader to each
name here and refuses a name that is not here, so this table is the one list of datasets.

It lives outside ``pipeline.data`` on purpose: importing any module of that package first runs
``pipeline/data/__init__.py``, which imports the loaders (and torch).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional

STYLES = ("imagenet", "cifar", "digits", "none")


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset before reading it.

    ``train_images``/``val_images``/``num_classes`` are ``None`` where they depend on the data
    (an image folder) or on the config (``synthetic``: ``data.synthetic.*``).
    """

    name: str
    style: str  # the default augmentation style
    needs_root: bool  # data.root must name its folder
    default_res: Optional[int]  # training resolution when data.train_res is unset (None: from the config)
    train_images: Optional[int] = None
    val_images: Optional[int] = None
    num_classes: Optional[int] = None
    description: str = ""
    image_files: bool = False  # root/train/ holds one file per training image (they can be counted)


_DATASETS = (
    DatasetInfo("imagenet", "imagenet", True, 224, 1_281_167, 50_000, 1000,
                "ImageNet-1k as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG", image_files=True),
    DatasetInfo("imagefolder", "imagenet", True, 224, None, None, None,
                "train/ and val/ folders of class folders of JPEG/PNG images", image_files=True),
    DatasetInfo("cifar10", "cifar", True, 32, 50_000, 10_000, 10,
                "CIFAR-10, official python pickles (cifar-10-batches-py)"),
    DatasetInfo("cifar100", "cifar", True, 32, 50_000, 10_000, 100,
                "CIFAR-100 (fine labels), official python pickles (cifar-100-python)"),
    DatasetInfo("tiny-imagenet", "cifar", True, 64, 100_000, 10_000, 200,
                "Tiny-ImageNet-200, official layout (val/val_annotations.txt)", image_files=True),
    DatasetInfo("digits", "digits", False, 32, 1_438, 359, 10,
                "scikit-learn handwritten digits, 32x32 RGB, fixed 80/20 split (embedded)"),
    DatasetInfo("synthetic", "cifar", False, None, None, None, None,
                "procedural class-dependent images (data.synthetic.*); speed tests only"),
)

DATASETS: Mapping[str, DatasetInfo] = MappingProxyType({d.name: d for d in _DATASETS})


def names() -> list[str]:
    """Every dataset name, sorted."""
    return sorted(DATASETS)


def info(name: str) -> DatasetInfo:
    """The entry of ``name``; ``KeyError`` with the valid names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; valid: {', '.join(names())}") from None
