"""Is a trial's data ready on this node?  Cheap checks for a cluster pre-flight.

    >>> from pipeline.data.ready import check_data_ready, resolve_backend
    >>> resolve_backend({"dataset": "digits"})            # "ffcv" or "torch" on this node
    >>> check_data_ready({"dataset": "imagenet", "root": "/x", "beton_dir": "/y"})
    ['data.root: path does not exist: /x', 'FFCV files for imagenet missing in beton_dir /y: ...']

Nothing here reads an image, unpickles a batch or opens a ``.beton``: it looks at paths,
folder layouts, manifests and file sizes.  Torch is not imported in this process: where FFCV
is installed but not yet imported, whether it imports (numba, OpenCV, its C extension) is
probed once in a child process.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Union

from pipeline import catalog
from pipeline.errors import ConfigError

from . import AUTO_WRITE_MAX, store

PROBE_TIMEOUT_S = 300

_probe: dict[str, Any] = {}


def _config(data_cfg):
    from pipeline.config import DataConfig

    if isinstance(data_cfg, DataConfig):
        return data_cfg
    return DataConfig.model_validate(data_cfg)


def ffcv_importable() -> tuple[bool, str]:
    """``(ok, why not)``: whether ``pipeline.data.ffcv_backend`` imports here (cached).

    In this process when FFCV or torch is loaded already (nothing left to save), else in a
    child process, so that the caller does not pay for torch, numba and FFCV.
    """
    if "ok" in _probe:
        return _probe["ok"], _probe.get("why", "")
    if importlib.util.find_spec("ffcv") is None:
        ok, why = False, "ModuleNotFoundError: No module named 'ffcv'"
    elif "pipeline.data.ffcv_backend" in sys.modules or "torch" in sys.modules:
        from . import ffcv_available, ffcv_failure

        ok = ffcv_available()
        why = "" if ok else ffcv_failure()
    else:
        try:
            r = subprocess.run([sys.executable, "-c", "import pipeline.data.ffcv_backend"],
                               capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                               cwd=str(Path(__file__).resolve().parents[2]))
            ok = r.returncode == 0
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            why = "" if ok else (lines[-1].strip() if lines else f"exit code {r.returncode}")
        except subprocess.TimeoutExpired:
            ok, why = False, f"importing it took over {PROBE_TIMEOUT_S} s"
    _probe.update(ok=ok, why=why)
    return ok, why


def image_count(cfg) -> Optional[int]:
    """Train + val images without reading the data (``None``: unknown without a listing)."""
    if cfg.dataset == "synthetic":
        return cfg.synthetic.train_count + cfg.synthetic.val_count
    info = catalog.info(cfg.dataset)
    if info.train_images is not None and info.val_images is not None:
        return info.train_images + info.val_images
    return None


def _count_files(root: Path, limit: int) -> int:
    """Image files under ``root`` (an image folder), stopping once past ``limit``."""
    n = 0
    for _dirpath, _dirs, files in os.walk(root):
        n += len(files)
        if n > limit:
            break
    return n


def _beton_state(cfg) -> tuple[Optional[dict], list[str]]:
    """``data.beton_dir``'s manifest (None when absent) and problems with what is there."""
    folder = cfg.beton_dir
    if folder.exists() and not folder.is_dir():
        return None, [f"data.beton_dir {folder}: not a folder"]
    try:
        m = store.read_manifest(folder)
    except ConfigError as e:
        return None, [f"data.beton_dir: {e}"]
    if m is None:
        return None, []
    if m.get("dataset") != cfg.dataset:
        return m, [f"data.beton_dir {folder}: holds {m.get('dataset')!r}, not {cfg.dataset!r}"]
    problems = []
    for split, rec in (m.get("files") or {}).items():
        path = folder / rec.get("name", f"{split}.beton")
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"data.beton_dir: {path} missing (the manifest lists it)")
            continue
        if size != rec.get("bytes"):
            problems.append(f"data.beton_dir: {path} is {size} bytes, the manifest says "
                            f"{rec.get('bytes')}; rewrite it with --force")
        elif not os.access(path, os.R_OK):
            problems.append(f"data.beton_dir: {path} is not readable")
    return m, problems


def _large(cfg) -> bool:
    """Too many images for make_loaders to write .beton files on first use."""
    n = image_count(cfg)
    if n is None and cfg.root is not None and cfg.root.is_dir():
        n = _count_files(cfg.root, AUTO_WRITE_MAX)
    return n is not None and n > AUTO_WRITE_MAX


def resolve_backend(data_cfg: Union[dict, Any, str]) -> str:
    """``"ffcv"`` or ``"torch"``: what a trial with this ``data`` section reads with here.

    ``backend: torch`` is torch; ``ffcv`` is ffcv (a ConfigError when FFCV does not import);
    ``auto`` is ffcv when FFCV imports and the .beton files are there or may be written on
    first use (up to 200,000 images), else torch.  A bare backend name is accepted too.
    """
    if isinstance(data_cfg, str):
        cfg = None
        backend = data_cfg
    else:
        cfg = _config(data_cfg)
        backend = cfg.backend
    if backend == "torch":
        return "torch"
    ok, why = ffcv_importable()
    if not ok:
        if backend == "ffcv":
            raise ConfigError(f"data.backend: 'ffcv' is not importable ({why}); install it "
                              "(make install-ffcv) or use backend 'torch'")
        return "torch"
    if backend == "ffcv" or cfg is None:
        return "ffcv"
    if cfg.beton_dir is not None:
        m, problems = _beton_state(cfg)
        if m is not None and not problems:
            return "ffcv"
    return "torch" if _large(cfg) else "ffcv"


def _layout_problems(cfg) -> list[str]:
    """The dataset's folder layout, checked by listing (no image, pickle or text is read)."""
    from pipeline.config import check_data_root

    root, name = cfg.root, cfg.dataset
    problems = check_data_root(cfg)  # the root itself: given, there, a folder, readable
    if problems:
        return problems
    if name in ("imagenet", "imagefolder"):
        out = []
        for split in ("train", "val"):
            d = root / split
            if not d.is_dir():
                out.append(f"data.root {root}: no {split}/ folder (expected {split}/<class>/<image>)")
                continue
            with os.scandir(d) as it:
                if not any(e.is_dir() for e in it):
                    out.append(f"data.root {root}: {split}/ has no class folders")
        return out
    if name in ("cifar10", "cifar100"):
        from .cifar import _LAYOUT

        lay = _LAYOUT[name]
        for cand in (root, root / lay["folder"]):
            if (cand / lay["train"][0]).is_file():
                missing = [f for f in lay["train"] + lay["val"] + [lay["meta"]]
                           if not (cand / f).is_file()]
                return [f"data.root {cand}: missing {', '.join(missing)}"] if missing else []
        return [f"data.root {root}: no {lay['train'][0]} here or in {lay['folder']}/"]
    if name == "tiny-imagenet":
        for base in (root, root / "tiny-imagenet-200"):
            if (base / "wnids.txt").is_file():
                need = [base / "train", base / "val" / "images",
                        base / "val" / "val_annotations.txt"]
                missing = [str(p.relative_to(base)) for p in need if not p.exists()]
                return [f"data.root {base}: missing {', '.join(missing)}"] if missing else []
        return [f"data.root {root}: no wnids.txt here or in tiny-imagenet-200/"]
    return []


def _write_hint(cfg, out) -> str:
    root = cfg.root if cfg.root is not None else "ROOT"
    root_arg = f" --root {root}" if catalog.info(cfg.dataset).needs_root else ""
    return f"`python -m pipeline.data write {cfg.dataset}{root_arg} --out {out}`"


def check_data_ready(data_cfg: Union[dict, Any]) -> list[str]:
    """Problems that would stop a trial with this ``data`` section on this node (one line
    each; empty when ready).  Cheap: paths, layouts, manifests and file sizes only."""
    try:
        cfg = _config(data_cfg)
    except ValueError as e:  # pydantic's ValidationError
        parts = []
        for err in e.errors() if callable(getattr(e, "errors", None)) else []:
            loc = ".".join(str(x) for x in err.get("loc", ()))
            parts.append(f"data.{loc}: {str(err.get('msg', '')).removeprefix('Value error, ')}")
        return parts or [f"data: {' '.join(str(e).split())}"]
    try:
        backend = resolve_backend(cfg)
    except ConfigError as e:
        return [str(e)]
    info = catalog.info(cfg.dataset)
    if cfg.beton_dir is not None and cfg.backend != "torch" and ffcv_importable()[0]:
        # .beton files were pointed at: they must be there, or writable on first use
        m, problems = _beton_state(cfg)
        if problems or m is not None:
            return problems
        layout = _layout_problems(cfg) if info.needs_root else []
        if layout or _large(cfg):
            why = f" (and no source to write them from: {layout[0]})" if layout else ""
            return [f"FFCV files for {cfg.dataset} missing in beton_dir {cfg.beton_dir}: "
                    f"prepare them with {_write_hint(cfg, cfg.beton_dir)}{why}"]
        return []
    if backend == "ffcv":
        if _large(cfg) and cfg.backend == "ffcv":
            return [f"FFCV files for {cfg.dataset}: too many images to write on first use; "
                    f"prepare them with {_write_hint(cfg, 'DIR')} and set data.beton_dir"]
        return _layout_problems(cfg) if info.needs_root else []
    # torch
    problems = []
    if cfg.jpeg_dir is not None:
        try:
            m = store.read_manifest(cfg.jpeg_dir, store.JPEG_FORMAT)
        except ConfigError as e:
            return [f"data.jpeg_dir: {e}"]
        if m is None:
            return [f"data.jpeg_dir {cfg.jpeg_dir}: no JPEG copy of {cfg.dataset} (no "
                    f"{store.MANIFEST}); write it with "
                    f"{_write_hint(cfg, cfg.jpeg_dir)[:-1]} --format jpeg`"]
        if m.get("dataset") != cfg.dataset:
            return [f"data.jpeg_dir {cfg.jpeg_dir}: holds {m.get('dataset')!r}, not "
                    f"{cfg.dataset!r}"]
        if cfg.root is not None:
            problems += _layout_problems(cfg)
        return problems
    if info.needs_root:
        problems += _layout_problems(cfg)
    elif cfg.dataset == "digits" and importlib.util.find_spec("sklearn") is None:
        problems.append("data.dataset digits: scikit-learn is not installed (it ships the data)")
    return problems
