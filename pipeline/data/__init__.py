"""Input pipeline: a dataset registry, FFCV writers, and two loader backends of one meaning.

    >>> from pipeline.config import DataConfig
    >>> from pipeline.data import make_loaders
    >>> train, val, info = make_loaders(DataConfig(dataset="digits", backend="torch"))
    >>> x, y = next(iter(train))          # float32 N x 3 x 32 x 32 channels_last, int64 N

``backend="ffcv"`` reads ``train.beton``/``val.beton`` (written by ``python -m pipeline.data
write``, or here on first use for datasets up to 200k images); ``"torch"`` reads the source
data (or, with ``jpeg_dir``, its resized JPEG copy) with a plain DataLoader; ``"auto"`` takes
FFCV when it imports, else torch (one warning).
FFCV itself is imported only in :mod:`pipeline.data.ffcv_backend`.  Importing this package does
not import torch (the loaders do, when built); :func:`check_data_ready` and
:func:`resolve_backend` answer a pre-flight's questions without it.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from pipeline.config import DataConfig
from pipeline.errors import ConfigError

from . import store
from .plan import default_workers, make_plan
from .registry import get as get_dataset
from .registry import names as dataset_names
from .source import Source

if TYPE_CHECKING:  # the loader module imports torch: only for the annotations here
    from .loader import Loader

__all__ = ["make_loaders", "load_source", "ffcv_available", "dataset_names", "get_dataset",
           "ensure_betons", "Loader", "AUTO_WRITE_MAX", "NeedsWriteError", "check_data_ready",
           "resolve_backend"]

AUTO_WRITE_MAX = 200_000  # make_loaders writes missing .beton files itself up to this size

_ffcv_state: dict[str, Any] = {}


class NeedsWriteError(ConfigError):
    """The dataset is too large to write .beton files on first use."""

_warned: set[str] = set()


def __getattr__(name: str):
    if name == "Loader":  # imports torch: only when asked for
        from .loader import Loader

        return Loader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ffcv_available() -> bool:
    """Whether the FFCV backend imports (cached; the reason is kept for the warning)."""
    if "ok" not in _ffcv_state:
        try:
            importlib.import_module("pipeline.data.ffcv_backend")
            _ffcv_state["ok"] = True
        except Exception as e:  # noqa: BLE001 - ImportError, or a broken numba/ffcv build
            _ffcv_state["ok"] = False
            _ffcv_state["why"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
    return _ffcv_state["ok"]


def ffcv_failure() -> str:
    """Why the FFCV backend does not import ('' when it does)."""
    ffcv_available()
    return _ffcv_state.get("why", "")


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def resolve_backend(data_cfg: Union[DataConfig, dict, str]) -> str:
    """``"ffcv"`` or ``"torch"``: what a trial with this ``data`` section reads with on this
    node (see :func:`pipeline.data.ready.resolve_backend`; no torch import)."""
    from .ready import resolve_backend as resolve

    return resolve(data_cfg)


def check_data_ready(data_cfg: Union[DataConfig, dict]) -> list[str]:
    """Problems that would stop a trial with this ``data`` section on this node (see
    :func:`pipeline.data.ready.check_data_ready`; cheap, no torch import)."""
    from .ready import check_data_ready as check

    return check(data_cfg)


def _backend_name(backend: str) -> str:
    if backend == "torch":
        return "torch"
    if ffcv_available():
        return "ffcv"
    if backend == "ffcv":
        raise ConfigError(f"data.backend: 'ffcv' is not importable ({_ffcv_state['why']}); "
                          "install it (make install-ffcv) or use backend 'torch'")
    _warn_once("auto", f"data.backend auto: FFCV not importable ({_ffcv_state['why'][:80]}); "
                       "using the torch backend")
    return "torch"


def load_source(cfg: DataConfig) -> Source:
    entry = get_dataset(cfg.dataset)
    return entry.load(cfg)


def _meta_from_source(s: Source) -> dict:
    return dict(style=s.style, default_res=s.default_res, image_size=s.image_size,
                mean=s.mean, std=s.std)


def _meta_from_manifest(m: dict) -> dict:
    return dict(style=m["style"], default_res=m["default_res"],
                image_size=tuple(m["image_size"]) if m.get("image_size") else None,
                mean=tuple(m["mean"]), std=tuple(m["std"]))


def ensure_betons(cfg: DataConfig, *, workers: Optional[int] = None,
                  progress: bool = False) -> tuple[Path, dict]:
    """The beton folder for ``cfg`` and its manifest, written first if missing.

    ``beton_dir`` given: its files are used (checked against the source's fingerprint when the
    source is at hand); without a manifest they are written there.  ``beton_dir`` unset: a
    cache folder keyed by fingerprint and storage policy.  Existing files are only read.
    """
    from .write import default_dir, resolve_policy, write_betons

    entry = get_dataset(cfg.dataset)
    have_source = not entry.needs_root or cfg.root is not None
    folder = cfg.beton_dir
    if folder is not None:
        manifest = store.read_manifest(folder)
        if manifest is not None:
            if manifest.get("dataset") != cfg.dataset:
                raise ConfigError(f"data.beton_dir: {folder} holds {manifest.get('dataset')!r}, "
                                  f"not {cfg.dataset!r}")
            if have_source:
                fp = load_source(cfg).fingerprint
                if fp != manifest.get("fingerprint"):
                    raise ConfigError(
                        f"data.beton_dir: {folder} was written from other data (fingerprint "
                        f"{manifest.get('fingerprint', '')[:12]}, data.root gives {fp[:12]}); "
                        "rewrite it with --force")
            store.verify(folder, manifest)
            return folder, manifest
        if not have_source:
            raise ConfigError(f"data.beton_dir: {folder} has no {store.MANIFEST}; give data.root "
                              f"or write it: python -m pipeline.data write {cfg.dataset} --root ROOT "
                              f"--out {folder}")
    source = load_source(cfg)
    policy = resolve_policy(cfg, source)
    managed = folder is None  # our cache folder: repaired rather than reported
    folder = folder or default_dir(source, policy)
    repair = False
    if folder.is_dir():
        try:
            manifest = store.read_manifest(folder)
            if manifest is not None and manifest.get("fingerprint") == source.fingerprint:
                store.verify(folder, manifest)
                return folder, manifest
        except ConfigError:
            if not managed:
                raise
            repair = True
    total = len(source.train) + len(source.val)
    if total > AUTO_WRITE_MAX:
        raise NeedsWriteError(
            f"{cfg.dataset}: {total} images are too many to write on first use; run python -m "
            f"pipeline.data write {cfg.dataset} --root {source.root} --out DIR and set "
            "data.beton_dir")
    res = write_betons(get_dataset(cfg.dataset), source, policy, folder, force=repair,
                       workers=workers or (cfg.workers or default_workers()), progress=progress)
    return res.folder, res.manifest


def make_loaders(data_cfg: Union[DataConfig, dict], *, device: Any = "cpu", rank: int = 0,
                 world_size: int = 1, seed: int = 0) -> tuple[Loader, Loader, dict]:
    """Build the train and val loaders of a trial's ``data`` section.

    Returns ``(train_loader, val_loader, info)``.  Each loader yields ``(images, labels)``:
    images float32 normalised (uint8 as stored with ``normalize: false``),
    ``N x 3 x res x res`` on ``device``, channels_last when ``channels_last``; labels int64.
    ``rank``/``world_size`` shard both splits (train: equal counts per rank, reshuffled each
    epoch by ``seed`` + epoch; val: every sample once over all ranks).  ``batch_size`` is per
    process.  ``info``: name, backend, fingerprint, num_classes, classes, counts (whole
    dataset), samples (this rank), mean, std, style, train_res, val_res, image_size, policy
    and beton_dir (ffcv only).  Bad input raises :class:`~pipeline.errors.ConfigError`
    (a one-line message naming the path or field).

    FFCV hands out batches in buffers it reuses a few batches later: ``.clone()`` a batch to
    keep it.  ``backend: auto`` uses the torch backend, with one warning line, when FFCV does
    not import or when a dataset over ``AUTO_WRITE_MAX`` images has no .beton files yet.
    """
    cfg = data_cfg if isinstance(data_cfg, DataConfig) else DataConfig.model_validate(data_cfg)
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ConfigError(f"world_size must be an int >= 1, got {world_size!r}")
    if not (isinstance(rank, int) and 0 <= rank < world_size):
        raise ConfigError(f"rank must be in 0..{world_size - 1}, got {rank!r}")
    backend = _backend_name(cfg.backend)
    import torch

    device = torch.device(device)
    info: dict[str, Any] = {"name": cfg.dataset, "backend": backend}
    if backend == "ffcv":
        try:
            folder, manifest = ensure_betons(cfg)
        except NeedsWriteError as e:
            if cfg.backend != "auto":
                raise
            _warn_once(f"nobeton:{cfg.dataset}", f"data.backend auto: {e}; using the torch backend")
            backend = info["backend"] = "torch"
    if backend == "torch":
        from . import torch_loader

        if cfg.jpeg_dir is not None:
            from .jpeg_store import load_jpeg_source

            source = load_jpeg_source(cfg, lambda: load_source(cfg))
        else:
            source = load_source(cfg)
        plan = make_plan(cfg, seed=seed, **_meta_from_source(source))
        train, val = torch_loader.build(source, plan, device=device, rank=rank,
                                        world_size=world_size)
        info.update(fingerprint=source.fingerprint, classes=list(source.classes),
                    counts={s: len(source.split(s)) for s in ("train", "val")},
                    root=str(source.root) if source.root else None, extra=source.extra)
    else:
        from . import ffcv_backend

        plan = make_plan(cfg, seed=seed, **_meta_from_manifest(manifest))
        train, val = ffcv_backend.build(folder, manifest, plan, device=device, rank=rank,
                                        world_size=world_size, os_cache=cfg.ffcv_os_cache)
        info.update(fingerprint=manifest["fingerprint"], classes=list(manifest["classes"]),
                    counts=dict(manifest["counts"]), root=manifest.get("source_root"),
                    extra=manifest.get("extra", {}), beton_dir=str(folder),
                    policy=manifest["policy"])
    info.update(
        num_classes=len(info["classes"]), samples={"train": train.num_samples,
                                                   "val": val.num_samples},
        mean=list(plan.mean), std=list(plan.std), style=plan.style,
        train_res=plan.train.res, val_res=plan.val.res, image_size=plan.image_size,
        input_shape=(3, plan.train.res, plan.train.res), normalize=plan.normalize,
        channels_last=plan.channels_last, workers=plan.workers,
    )
    return train, val, info
