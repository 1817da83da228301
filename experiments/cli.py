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

#: Where Tune keeps trial folders and checkpoints unless ``--storage`` says otherwise.
DEFAULT_STORAGE = Path("~/attnlab-runs").expanduser()


def check_run_flags(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """The flags both commands take: ``p.error`` (one line, exit 2) on the first bad one."""
    if a.name is not None and not re.fullmatch(NAME_PATTERN, a.name):
        p.error(f"--name {a.name!r}: a letter or digit, then letters, digits, '_', '.' or '-' (at most 200; "
                "it names a folder and an MLflow experiment)")
    for flag in ("max_concurrent", "max_failures"):
        if getattr(a, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} must be >= 0")
    if a.grace_period is not None and a.grace_period < 1:
        p.error("--grace-period must be >= 1")
    if a.grace_period is not None and a.scheduler != "asha":
        p.error(f"--grace-period applies to --scheduler asha only, not --scheduler {a.scheduler}")
    if a.storage is not None and not a.storage.strip():
        p.error("--storage '': give a folder or a URI (leave the flag out for the default)")
    if not (math.isfinite(a.cpus_per_trial) and a.cpus_per_trial > 0):
        p.error(f"--cpus-per-trial must be a finite number > 0, got {a.cpus_per_trial}")
    g = a.gpus_per_trial
    if g is not None and not (math.isfinite(g) and g >= 0 and (g <= 1 or g == int(g))):
        p.error(f"--gpus-per-trial must be >= 0: a fraction up to 1 (trials share a GPU) or a whole number, got {g}")


def storage_path(arg: Optional[str]) -> str:
    """``--storage`` as Tune takes it: a URI as given, a local path absolute — a folder this user
    can write, created if missing.  ConfigError (one line) otherwise."""
    storage = arg or str(DEFAULT_STORAGE)
    if "://" in storage:
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
