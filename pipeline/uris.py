"""SQLite URLs (``sqlite:///PATH``) as MLflow's tracking store and Optuna's study storage take
them (SQLAlchemy's form): the file they name, and the same URL pinned to an absolute path."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

SQLITE = "sqlite:///"
_IN_MEMORY = ("", ":memory:")


def sqlite_path(url: str) -> Optional[Path]:
    """The database file of a ``sqlite:///PATH`` URL as SQLAlchemy opens it (relative to the
    current directory unless PATH is absolute, ``sqlite:////abs``; a ``?query`` is not part of
    it), else None — also for an in-memory database (no PATH, or ``:memory:``)."""
    if not url.startswith(SQLITE):
        return None
    path = url[len(SQLITE):].partition("?")[0]
    return None if path in _IN_MEMORY else Path(path)


def in_memory_sqlite(url: str) -> bool:
    """A SQLite URL that names no file (``sqlite://``, ``sqlite:///``, ``sqlite:///:memory:``): a
    database private to the process that opens it, gone when it exits."""
    return url.lower().startswith("sqlite:") and sqlite_path(url) is None


def pinned_sqlite(url: str) -> str:
    """``url`` with a SQLite file's path made absolute (``~`` expanded), so that it names the same
    file from any working directory (Ray changes it per trial); any other URL unchanged."""
    path = sqlite_path(url)
    if path is None:
        return url
    _, sep, query = url[len(SQLITE):].partition("?")
    return SQLITE + str(path.expanduser().resolve()) + sep + query
