"""What the grid and the search command lines share: the run name, the storage folder and the
checks of the resource flags — each bad value one line, before any cluster work."""
from __future__ import annotations

import argparse
import contextlib
import math
import re
from pathlib import Path
from typing import Iterator, Optional

from pipeline.config import NAME_PATTERN
from pipeline.errors import ConfigError, folder_problem
from pipeline.uris import sqlite_path

#: URI schemes of ``--storage`` (pyarrow's filesystems, which Tune's storage uses).
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")

#: Where Tune keeps trial folders and checkpoints unless ``--storage`` says otherwise.
DEFAULT_STORAGE = Path("~/attnlab-runs").expanduser()


def check_run_flags(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """The flags both commands take: ``p.error`` (one line, exit 2) on the first bad one."""
    if a.name is not None and not re.fullmatch(NAME_PATTERN, a.name):
        p.error(f"--name {a.name!r}: a letter or digit, then letters, digits, '_', '.' or '-' (at most 200; "
                "it names a folder and an MLflow experiment)")
    for flag in ("max_concurrent", "max_failures"):
        if not 0 <= getattr(a, flag) <= 100_000:
            p.error(f"--{flag.replace('_', '-')} must be 0..100,000, got {getattr(a, flag):,}")
    if a.grace_period is not None and a.grace_period < 1:
        p.error("--grace-period must be >= 1")
    if a.grace_period is not None and a.scheduler != "asha":
        p.error(f"--grace-period applies to --scheduler asha only, not --scheduler {a.scheduler}")
    p.refuse_blank("--storage", a.storage, "give a folder or a URI (leave the flag out for the default)")
    if not (math.isfinite(a.cpus_per_trial) and a.cpus_per_trial > 0):
        p.error(f"--cpus-per-trial must be a finite number > 0, got {a.cpus_per_trial}")
    g = a.gpus_per_trial
    if g is not None and not (math.isfinite(g) and g >= 0 and (g <= 1 or g == int(g))):
        p.error(f"--gpus-per-trial must be >= 0: a fraction up to 1 (trials share a GPU) or a whole number, got {g}")


def check_grace_period(grace_period: Optional[int], epochs: int) -> None:
    """``--grace-period`` against the longest trial (``epochs``): at or beyond it, ASHA has no
    rung to stop a trial at, and the flag would silently do nothing.  ConfigError (one line)."""
    if grace_period is not None and grace_period >= epochs:
        hint = f"give 1..{epochs - 1}" if epochs > 1 else "trials of 1 epoch cannot be stopped early"
        raise ConfigError(f"--grace-period {grace_period} is not below the trials' {epochs} epoch(s): ASHA would "
                          f"stop no trial early; {hint}, or --scheduler none")


def storage_path(arg: Optional[str]) -> str:
    """``--storage`` as Tune takes it: a URI as given, a local path absolute — a folder this user
    can write, created if missing.  ConfigError (one line) otherwise."""
    storage = arg or str(DEFAULT_STORAGE)
    if "://" in storage:
        scheme, rest = storage.split("://", 1)
        if scheme.lower() not in STORAGE_SCHEMES:
            raise ConfigError(f"--storage {storage}: unknown scheme {scheme!r}; give a folder every node sees, or "
                              f"a URI of {', '.join(s + '://' for s in STORAGE_SCHEMES if s != 'file')}")
        if not rest.strip("/"):
            raise ConfigError(f"--storage {storage}: no bucket or path after {scheme}://")
        return storage
    path = Path(storage).expanduser().resolve()
    problem = folder_problem(path)
    if problem:
        raise ConfigError(f"--storage {path}: {problem}")
    return str(path)


@contextlib.contextmanager
def storage_folder(arg: Optional[str]) -> Iterator[str]:
    """:func:`storage_path` for the length of a run: the folders it had to create (the storage
    folder and missing parents) are removed again on the way out while they are still empty, so
    a run refused or failed before writing anything leaves nothing behind; nothing else is
    touched."""
    storage = arg or str(DEFAULT_STORAGE)
    made: list[Path] = []  # deepest first
    if "://" not in storage:
        path = Path(storage).expanduser().resolve()
        while not path.exists() and path != path.parent:
            made.append(path)
            path = path.parent
    try:
        yield storage_path(arg)
    finally:
        for folder in made:
            try:
                folder.rmdir()  # only an empty folder goes
            except OSError:
                break


class _Stores:
    def __init__(self) -> None:
        self.kept = False

    def keep(self) -> None:
        """The refusal zone is over (runs exist): whatever happens next, the files stay."""
        self.kept = True


@contextlib.contextmanager
def new_stores_removed_on_refusal(*urls: str) -> Iterator[_Stores]:
    """The SQLite files named by ``urls`` that do not exist yet (with the folders made for them)
    are removed again if the block ends in a refusal — a :class:`ConfigError` or an exit with a
    non-zero code, e.g. a Ray that cannot be joined or a failed pre-flight after the tracking
    store or the study was opened — unless ``keep()`` was called on the handle it yields (call
    it once the first run exists).  Such a file was made by this command and holds nothing
    else; a file that existed before is never touched."""
    fresh: list[Path] = []
    folders: list[Path] = []  # deepest first
    for path in filter(None, map(sqlite_path, urls)):
        path = path.resolve()
        if not path.exists():
            fresh.append(path)
            parent = path.parent
            while not parent.exists() and parent != parent.parent:
                folders.append(parent)
                parent = parent.parent
    handle = _Stores()
    try:
        yield handle
    except BaseException as e:
        refused = isinstance(e, ConfigError) or (isinstance(e, SystemExit) and e.code not in (0, None))
        if refused and not handle.kept:
            for path in fresh:
                for suffix in ("", "-journal", "-wal", "-shm"):
                    try:
                        Path(f"{path}{suffix}").unlink(missing_ok=True)
                    except OSError:  # never made (its folder is a file, unreadable, ...)
                        pass
            for folder in folders:
                try:
                    folder.rmdir()
                except OSError:
                    break
        raise
