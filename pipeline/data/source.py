"""What a dataset module hands to the writers and loaders: a :class:`Source` with two splits.

A split holds its images in exactly one of three forms:

* ``paths`` — image files (JPEG/PNG) on disk, decoded when read;
* ``array`` — a uint8 array ``N x H x W x 3`` in memory (CIFAR, digits);
* ``make``  — a function ``index -> uint8 H x W x 3`` (procedural data).

Labels are always an int64 array.  No outside engine is imported here.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from pipeline.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass
class Split:
    labels: np.ndarray
    paths: Optional[list[str]] = None
    array: Optional[np.ndarray] = None
    make: Optional[Callable[[int], np.ndarray]] = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        given = [x is not None for x in (self.paths, self.array, self.make)]
        if sum(given) != 1:
            raise ValueError("a Split holds exactly one of paths, array, make")
        if self.array is not None:
            if self.array.dtype != np.uint8 or self.array.ndim != 4 or self.array.shape[3] != 3:
                raise ValueError(f"array must be uint8 N x H x W x 3, got {self.array.dtype} "
                                 f"{self.array.shape}")
            if len(self.array) != len(self.labels):
                raise ValueError("array and labels differ in length")
        if self.paths is not None and len(self.paths) != len(self.labels):
            raise ValueError("paths and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def kind(self) -> str:
        return "files" if self.paths is not None else "array" if self.array is not None else "make"

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 ``H x W x 3`` (files decoded with Pillow)."""
        if self.array is not None:
            return self.array[i]
        if self.make is not None:
            return self.make(i)
        return read_rgb(self.paths[i])


@dataclass
class Source:
    name: str
    classes: list[str]
    train: Split
    val: Split
    fingerprint: str  # content hash: the dataset's identity in tracking
    mean: tuple[float, float, float]  # 0..1 scale
    std: tuple[float, float, float]
    style: str  # default augmentation style
    default_res: int
    image_size: Optional[tuple[int, int]] = None  # (H, W) when every image has it
    root: Optional[Path] = None
    extra: dict = field(default_factory=dict)  # recorded in the manifest as is

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, which: str) -> Split:
        return {"train": self.train, "val": self.val}[which]


def read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


# ---------------------------------------------------------------- checks shared by dataset modules
def require_root(name: str, root: Optional[Path]) -> Path:
    if root is None:
        raise ConfigError(f"data.root: dataset {name!r} needs a root folder (data.root / --root)")
    if not root.exists():
        raise ConfigError(f"data.root: {root} does not exist")
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} is not a folder")
    return root


def read_text(path: Path, what: str) -> str:
    """A dataset's text file (a class list, an annotation file) as UTF-8; else a one-line
    ConfigError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing ({what})") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected the {what}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text (byte {e.start})") from None


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ConfigError(f"{path}: missing {what}")
    return path


def list_images(folder: Path) -> list[os.DirEntry]:
    """Image files directly in ``folder``, sorted by name."""
    with os.scandir(folder) as it:
        out = [e for e in it if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    out.sort(key=lambda e: e.name)
    return out


# ---------------------------------------------------------------- fingerprints
FINGERPRINT_VERSION = 1


def hash_arrays(*parts) -> str:
    """sha256 over arrays/strings/numbers, in order (dtype and shape included)."""
    h = hashlib.sha256(f"attnlab-fp-v{FINGERPRINT_VERSION}".encode())
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(memoryview(a).cast("B"))
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def hash_file_list(root: Path, splits: Sequence[tuple[str, Split]], classes: Sequence[str]) -> str:
    """Cheap content hash of file-based splits: sorted relative paths, sizes and labels."""
    h = hashlib.sha256(f"attnlab-files-v{FINGERPRINT_VERSION}".encode())
    h.update(json.dumps(list(classes)).encode())
    for name, split in splits:
        h.update(f"\x00split:{name}:{len(split)}".encode())
        rows = sorted(
            (os.path.relpath(p, root), os.stat(p).st_size, int(y))
            for p, y in zip(split.paths, split.labels)
        )
        for rel, size, y in rows:
            h.update(f"{rel}\t{size}\t{y}\n".encode())
    return h.hexdigest()


def _cache_dir() -> Path:
    """The data cache folder: ``$ATTNLAB_CACHE``, else ``$XDG_CACHE_HOME/attnlab``, else
    ``~/.cache/attnlab``; a ConfigError naming the variable when it cannot be a folder."""
    from pipeline.errors import ConfigError, folder_problem

    if os.environ.get("ATTNLAB_CACHE"):
        what, base = "ATTNLAB_CACHE", os.environ["ATTNLAB_CACHE"]
    elif os.environ.get("XDG_CACHE_HOME"):
        what, base = "XDG_CACHE_HOME", os.path.join(os.environ["XDG_CACHE_HOME"], "attnlab")
    else:
        what, base = "the cache folder", os.path.expanduser("~/.cache/attnlab")
    path = Path(base).expanduser().absolute()
    problem = folder_problem(path, create=False)
    if problem:
        raise ConfigError(f"{what} {path}: {problem}")
    return path


def cached_fingerprint(key_paths: Sequence[Path], kind: str, compute: Callable[[], str]) -> str:
    """Fingerprint memoised on disk, keyed by the folders' paths and modification times.

    Adding or removing a file changes its folder's mtime, so the key changes with the listing.
    ``ATTNLAB_NO_FP_CACHE=1`` turns the cache off.
    """
    if os.environ.get("ATTNLAB_NO_FP_CACHE") == "1":
        return compute()
    stamp = []
    for p in key_paths:
        try:
            stamp.append((str(p), os.stat(p).st_mtime_ns))
        except OSError:
            return compute()
    key = hashlib.sha256(json.dumps([kind, FINGERPRINT_VERSION, stamp]).encode()).hexdigest()
    try:
        path = _cache_dir() / "fingerprints" / f"{key}.txt"
    except ValueError:  # no usable cache folder: this memo is optional (cache_root() says why)
        return compute()
    try:
        return path.read_text().strip()
    except OSError:
        pass
    fp = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(fp)
        os.replace(tmp, path)
    except OSError:
        pass
    return fp


def cache_root() -> Path:
    return _cache_dir()
