"""FFCV files on disk, without FFCV: the manifest, atomic replacement, integrity checks.

A beton folder holds ``train.beton``, ``val.beton`` and ``manifest.json``.  The manifest is
written last and only after both files have been renamed into place, so a folder without a
valid manifest is never mistaken for a complete one; the manifest records each file's size
and a digest that :func:`verify` checks before FFCV opens the file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from pipeline.errors import ConfigError
from pipeline.yamlio import read_text
from pipeline.procs import pid_alive, start_time

MANIFEST = "manifest.json"
FORMAT = "attnlab-beton"
JPEG_FORMAT = "attnlab-jpeg"  # the resized JPEG copy read by the torch backend
FORMAT_VERSION = 1
SPLITS = ("train", "val")
FULL_DIGEST_MAX = 256 * 2**20  # files up to this size are hashed whole, larger ones sampled
_BLOCK = 1 << 20


def beton_name(split: str) -> str:
    return f"{split}.beton"


def digest(path: Path) -> str:
    """sha256 of the whole file up to 256 MiB; beyond, of 4 MiB at each end + 64 sampled MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}:".encode())
    with open(path, "rb") as f:
        if size <= FULL_DIGEST_MAX:
            for chunk in iter(lambda: f.read(_BLOCK), b""):
                h.update(chunk)
            return "sha256:" + h.hexdigest()
        offsets = [0, 1, 2, 3] + [4 + i * (size // _BLOCK - 8) // 64 for i in range(64)]
        offsets += [size // _BLOCK - 4 + i for i in range(4)]
        for block in offsets:
            f.seek(block * _BLOCK)
            h.update(f.read(_BLOCK))
        f.seek(max(0, size - _BLOCK))
        h.update(f.read())
    return "sha256-sampled:" + h.hexdigest()


#: A manifest is a few KiB; a larger file is not one of ours (and is not read whole).
MANIFEST_MAX_BYTES = 1 << 20


def _manifest_json(folder: Path) -> Any:
    """The parsed ``manifest.json`` of ``folder``, ``None`` when absent; a ConfigError when it
    is not a readable regular file of JSON (a FIFO or a device is not read: it would block or
    never end)."""
    path = folder / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    try:
        text = read_text(path, what="manifest", max_bytes=MANIFEST_MAX_BYTES)
    except ConfigError as e:
        raise ConfigError(f"{path}: cannot be read as a manifest ({' '.join(str(e).split())})") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ConfigError(f"{path}: not valid JSON (corrupted manifest)") from None


def read_manifest(folder: Path, fmt: str = FORMAT) -> Optional[dict]:
    """The manifest, ``None`` when absent; a ConfigError when present but unreadable."""
    path = folder / MANIFEST
    m = _manifest_json(folder)
    if m is None:
        return None
    if not isinstance(m, dict) or m.get("format") != fmt:
        what = "beton" if fmt == FORMAT else "JPEG-copy"
        raise ConfigError(f"{path}: not an attnlab {what} manifest")
    if m.get("version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: manifest version {m.get('version')} (this attnlab reads "
                          f"{FORMAT_VERSION}); rewrite with --force")
    return m


#: What a write of each format replaces in its folder, besides the manifest.
WRITTEN = {FORMAT: tuple(beton_name(s) for s in SPLITS), JPEG_FORMAT: ("images",)}


def foreign_problem(folder: Path, fmt: str) -> Optional[str]:
    """Why a write of ``fmt`` files into ``folder`` must not go on without ``--force``, or None.

    The write replaces ``manifest.json`` and the files of :data:`WRITTEN`; it may do so only
    where they are its own: a manifest of this format (the writer then compares inputs).  Not
    where the manifest is another program's (or damaged, or of another version), belongs to the
    other format (beton files and a JPEG copy share the name manifest.json, and the write would
    orphan the other's files), or where those files exist without a manifest (someone else's, or
    an interrupted write)."""
    try:
        m = _manifest_json(folder)
    except ConfigError as e:
        return f"{e}; write into another folder (--out), or pass --force to replace it"
    where = "write into another folder (--out), or pass --force to replace {}"
    if m is None:
        found = [name for name in WRITTEN[fmt] if os.path.lexists(folder / name)]
        if found:
            return (f"{folder}: holds {' and '.join(found)} without a {MANIFEST} (not a complete attnlab write: "
                    f"another program's files, or an interrupted write); " + where.format("them"))
        return None
    if not isinstance(m, dict) or m.get("format") not in (FORMAT, JPEG_FORMAT):
        return f"{folder / MANIFEST}: not an attnlab manifest; " + where.format("the folder's files")
    if m.get("format") != fmt:
        what = "a JPEG copy" if m["format"] == JPEG_FORMAT else "beton files"
        return f"{folder}: holds {what} of {m.get('dataset')}; " + where.format("it")
    if m.get("version") != FORMAT_VERSION:
        return (f"{folder / MANIFEST}: manifest version {m.get('version')} (this attnlab writes {FORMAT_VERSION}); "
                + where.format("it"))
    return None


def verify(folder: Path, manifest: dict) -> None:
    """Every beton is present, of the recorded size and digest; else a one-line ConfigError."""
    for split in SPLITS:
        rec = manifest["files"][split]
        path = folder / rec["name"]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ConfigError(f"{path}: missing (the manifest lists it)") from None
        if size != rec["bytes"]:
            raise ConfigError(f"{path}: truncated or altered ({size} bytes, manifest says "
                              f"{rec['bytes']}); rewrite with --force")
        if digest(path) != rec["digest"]:
            raise ConfigError(f"{path}: corrupted (digest differs from the manifest); "
                              "rewrite with --force")


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def partial_name(folder: Path, split: str) -> Path:
    return folder / f".{beton_name(split)}.partial-{os.getpid()}"


def remove_stale_partials(folder: Path) -> None:
    """Leftovers of interrupted writes (only called while holding the folder lock)."""
    for p in folder.glob(".*.partial-*"):
        with contextlib.suppress(OSError):
            p.unlink()


LOCK = ".lock"
LOCK_POLL_S = 0.5


def _owner(lock: Path) -> Optional[dict]:
    try:
        owner = json.loads(lock.read_text())
        return owner if isinstance(owner, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or garbage: judged by its age


def _stale(lock: Path, owner: dict) -> bool:
    """A lock whose writer is gone: its pid is dead on this host (or reused), or it is an
    unreadable file older than a minute (a writer killed between create and write)."""
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not pid_alive(owner["pid"], owner.get("started"))
    if not owner:
        try:
            return time.time() - lock.stat().st_mtime > 60
        except FileNotFoundError:
            return False
    return False  # another host's writer: cannot be checked from here


def _break_stale(lock: Path, owner: dict) -> bool:
    """Remove ``lock`` if it still is ``owner``'s, one breaker at a time (two waiters must not
    both remove it: the second would remove the first one's fresh lock)."""
    guard = lock.with_name(lock.name + ".breaking")
    try:
        fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - guard.stat().st_mtime > 60:  # a breaker killed mid-way
                guard.unlink()
        time.sleep(LOCK_POLL_S)
        return False
    os.close(fd)
    try:
        if _owner(lock) == owner:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            return True
        return False
    finally:
        guard.unlink()


@contextlib.contextmanager
def folder_lock(folder: Path, *, quiet: bool = False) -> Iterator[None]:
    """One writer per folder, across processes and hosts sharing the folder.

    The lock is ``folder/.lock``, created exclusively and holding the writer's pid, host and
    start time.  It is removed when the block exits, whatever the exit (an error, Ctrl-C,
    SIGTERM in the CLI), and a folder this call created is removed again if nothing was
    written into it.  A lock left by a writer that was killed outright is detected (its pid
    is gone on this host) and taken over; a live writer's lock is waited for.
    """
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": start_time(os.getpid())}
    told = False
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:  # another writer's failed first write removed the folder
            folder.mkdir(parents=True, exist_ok=True)
            continue
        except FileExistsError:
            owner = _owner(lock)
            if owner is None:
                continue  # released in between
            if _stale(lock, owner):
                if _break_stale(lock, owner) and not quiet:
                    print(f"{lock}: removed a stale lock (writer pid {owner.get('pid')} is gone)",
                          flush=True)
                continue
            if not told and not quiet:
                print(f"waiting for another writer of {folder} (pid {owner.get('pid')} on "
                      f"{owner.get('host')}) ...", flush=True)
            told = True
            time.sleep(LOCK_POLL_S)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if _owner(lock) == me:
                lock.unlink()
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: the failed first write of a new folder


def commit(folder: Path, partials: dict[str, Path], manifest: dict) -> None:
    """Move the finished partial files into place, then write the manifest (last)."""
    files = {}
    for split, tmp in partials.items():
        fsync_path(tmp)
        files[split] = {"name": beton_name(split), "bytes": tmp.stat().st_size,
                        "digest": digest(tmp)}
    manifest = dict(manifest, files=files, written_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    old = folder / MANIFEST
    with contextlib.suppress(FileNotFoundError):
        old.unlink()  # from here until the new manifest lands, the folder reads as incomplete
    for split, tmp in partials.items():
        os.replace(tmp, folder / beton_name(split))
    write_json_atomic(folder / MANIFEST, manifest)
    with contextlib.suppress(OSError):
        fsync_path(folder)
