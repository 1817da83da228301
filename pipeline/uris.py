"""SQLite URLs (``sqlite:///PATH``) as MLflow's tracking store and Optuna's study storage take
them (SQLAlchemy's form): the file they name, and the same URL pinned to an absolute path."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

SQLITE = "sqlite:///"


def sqlite_path(url: str) -> Optional[Path]:
    """The database file of a ``sqlite:///PATH`` URL as SQLAlchemy opens it (relative to the
    current directory unless PATH is absolute, ``sqlite:////abs``; a ``?query`` is not part of
    it), else None."""
    if not url.startswith(SQLITE):
        return None
    return Path(url[len(SQLITE):].split("?", 1)[0])


def pinned_sqlite(url: str) -> str:
    """``url`` with a SQLite file's path made absolute (``~`` expanded), so that it names the same
    file from any working directory (Ray changes it per trial); any other URL unchanged."""
    path = sqlite_path(url)
    if path is None:
        return url
    query = url[len(SQLITE) + len(url[len(SQLITE):].split("?", 1)[0]):]
    return SQLITE + str(path.expanduser().resolve()) + query
