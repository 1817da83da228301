"""Name -> dataset loader registry (like ``blocks.registry``).

A dataset module declares one :class:`DatasetEntry` per name with ``@register``; its loader
turns a :class:`~pipeline.config.DataConfig` into a :class:`~pipeline.data.source.Source`.

The names, and what is known about each dataset without reading it, are plain data in the leaf
:mod:`pipeline.catalog` (the only module of ours imported here; ``pipeline.config`` uses the
catalog alone, so validating a config imports neither this package nor torch).  ``register``
refuses a name the catalog does not list, or one whose style/root need disagrees with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from pipeline import catalog
from pipeline.catalog import STYLES

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import DataConfig
    from pipeline.data.source import Source

# Field kinds a dataset can declare; pipeline/data/ffcv_backend.py maps each to a writer field
# and a decoding pipeline, pipeline/data/torch_loader.py to tensors of the same meaning.
FIELD_KINDS = ("rgb_image", "int_label")
DEFAULT_FIELDS: tuple[tuple[str, str], ...] = (("image", "rgb_image"), ("label", "int_label"))


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    load: Callable[["DataConfig"], "Source"]
    style: str  # default augmentation style
    needs_root: bool
    description: str = ""
    fields: tuple[tuple[str, str], ...] = DEFAULT_FIELDS


_REGISTRY: dict[str, DatasetEntry] = {}


class UnknownDatasetError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def register(name: str, *, style: str, needs_root: bool, description: str = "",
             fields: tuple[tuple[str, str], ...] = DEFAULT_FIELDS):
    """Function decorator: ``@register("cifar10", style="cifar", needs_root=True)``."""
    if style not in STYLES:
        raise ValueError(f"style for {name!r} must be one of {STYLES}, got {style!r}")
    for fname, kind in fields:
        if kind not in FIELD_KINDS:
            raise ValueError(f"field {fname!r} of {name!r}: kind must be one of {FIELD_KINDS}")

    known = catalog.DATASETS.get(name)
    if known is None:
        raise ValueError(f"dataset {name!r} is not in pipeline/catalog.py; add it there first")
    if (known.style, known.needs_root) != (style, needs_root):
        raise ValueError(f"dataset {name!r}: style/needs_root ({style}, {needs_root}) disagree with "
                         f"pipeline/catalog.py ({known.style}, {known.needs_root})")

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} registered twice")
        _REGISTRY[name] = DatasetEntry(name, fn, style, needs_root, description, tuple(fields))
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the dataset modules registers them (pipeline/data/datasets.py).
    import pipeline.data.datasets  # noqa: F401 (imported for its side effect (registration) or to check that it imports)


def names() -> list[str]:
    """Every dataset name (the catalog's; each has a loader once the modules are imported)."""
    return catalog.names()


def get(name: str) -> DatasetEntry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown dataset {name!r}; valid: {', '.join(names())}") from None
