"""Writing a dataset's FFCV files: policy, no-op check, lock, atomic commit.

The FFCV calls themselves are in :mod:`pipeline.data.ffcv_backend`; everything around them
(what to write, whether it is already there, how it lands on disk) is here.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.errors import ConfigError

from . import store
from .registry import DatasetEntry
from .source import Source, cache_root

RAW_MAX_SIDE = 128  # fixed-size images up to this side are stored raw (exact) under "auto"


def resolve_policy(cfg, source: Source) -> dict:
    mode = cfg.write_mode
    if mode == "auto":
        small = source.image_size is not None and max(source.image_size) <= RAW_MAX_SIDE
        mode = "raw" if small else "proportion"
    policy = {"write_mode": mode, "max_res": cfg.max_res}
    if mode in ("jpg", "proportion"):
        policy["jpeg_quality"] = cfg.jpeg_quality
    if mode == "proportion":
        policy["compress_prob"] = cfg.compress_prob
    return policy


def policy_key(policy: dict) -> str:
    return hashlib.sha256(json.dumps(policy, sort_keys=True).encode()).hexdigest()[:8]


def default_dir(source: Source, policy: dict) -> Path:
    return cache_root() / "beton" / f"{source.name}-{source.fingerprint[:16]}-{policy_key(policy)}"


def stored_size(image_size, max_res: int):
    """(H, W) of fixed-size images after the writer's max-resolution cap."""
    if image_size is None:
        return None
    h, w = image_size
    if max(h, w) <= max_res:
        return [h, w]
    s = max_res / max(h, w)
    return [int(h * s), int(w * s)]


def base_manifest(entry: DatasetEntry, source: Source, policy: dict) -> dict:
    counts = {s: len(source.split(s)) for s in store.SPLITS}
    import numpy as np

    return {
        "format": store.FORMAT,
        "version": store.FORMAT_VERSION,
        "dataset": source.name,
        "fingerprint": source.fingerprint,
        "classes": list(source.classes),
        "num_classes": source.num_classes,
        "counts": counts,
        "class_counts": {s: np.bincount(source.split(s).labels, minlength=source.num_classes)
                         .tolist() for s in store.SPLITS},
        "policy": policy,
        "image_size": stored_size(source.image_size, policy["max_res"]),
        "style": source.style,
        "default_res": source.default_res,
        "mean": list(source.mean),
        "std": list(source.std),
        "fields": [list(f) for f in entry.fields],
        "source_root": str(source.root) if source.root else None,
        "extra": source.extra,
    }


def same_inputs(manifest: dict, wanted: dict) -> bool:
    keys = ("dataset", "fingerprint", "policy", "fields")
    return all(manifest.get(k) == wanted.get(k) for k in keys)


@dataclass
class WriteResult:
    folder: Path
    manifest: dict
    written: bool  # False: it was already up to date


def write_betons(entry: DatasetEntry, source: Source, policy: dict, out: Path, *,
                 workers: int, force: bool = False, progress: bool = True,
                 on_conflict: str = "error") -> WriteResult:
    """Write ``train.beton``/``val.beton``/manifest into ``out`` unless already up to date.

    An existing manifest for *other* inputs is an error (``on_conflict="error"``) unless
    ``force``; nothing in ``out`` is touched until the new files are complete.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    problem = None if force else store.foreign_problem(out, store.FORMAT)
    if problem:  # before FFCV is looked for: the folder is wrong either way
        raise ConfigError(problem)
    try:
        from . import ffcv_backend  # the only place FFCV is imported
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken numba/ffcv build
        raise ConfigError(f"FFCV is not importable here ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:120]}); run make install-ffcv, or write a "
                          "JPEG copy for the torch backend with --format jpeg") from None
    wanted = base_manifest(entry, source, policy)
    with store.folder_lock(out, quiet=not progress):
        old = None
        with contextlib.suppress(ConfigError):
            old = store.read_manifest(out)
        if old is not None and not force:
            if same_inputs(old, wanted):
                store.verify(out, old)  # up to date only if the files are intact
                return WriteResult(out, old, False)
            if on_conflict == "error":
                raise ConfigError(
                    f"{out}: holds {old.get('dataset')} files with another fingerprint or "
                    f"policy ({str(old.get('fingerprint'))[:12]}, {old.get('policy')}); "
                    "pass --force to replace them")
        store.remove_stale_partials(out)
        partials: dict[str, Path] = {}
        try:
            for split in store.SPLITS:
                partials[split] = store.partial_name(out, split)
                ffcv_backend.write_split(source.split(split), partials[split], policy,
                                         fields=entry.fields, workers=workers,
                                         image_size=source.image_size,
                                         desc=f"{source.name} {split}" if progress else None)
            store.commit(out, partials, wanted)
        finally:
            for p in partials.values():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        manifest = store.read_manifest(out)
    return WriteResult(out, manifest, True)


def find_manifest(folder: Optional[Path]) -> Optional[dict]:
    return store.read_manifest(folder) if folder is not None else None
