"""SQLite URLs (``sqlite:///PATH``) as MLflow's tracking store and Optuna's study storage take
them (SQLAlchemy's form): the file they name, the same URL pinned to an absolute path, and
whether an existing file is the kind of store it is opened as."""
from __future__ import annotations

import contextlib
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


#: The tables that mark a SQLite file as one program's store (both also hold alembic_version).
STORES = {"an MLflow store": frozenset({"experiments", "runs"}),
          "an Optuna study": frozenset({"studies", "trials"})}


def sqlite_tables(db: Path) -> Optional[frozenset[str]]:
    """The table names of the SQLite file ``db``, read-only (an empty file has none); None when
    SQLite cannot read it (locked, damaged, not a database)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as con:
            return frozenset(row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    except sqlite3.Error:
        return None


def foreign_sqlite(db: Path, store: str, set_up: bool = False) -> Optional[str]:
    """Why the existing file ``db`` cannot be opened as ``store`` (a key of :data:`STORES`), as
    the tail of a one-line error; None when it can: a SQLite database without tables, with the
    store's tables, or an empty file SQLite initialises — with ``set_up`` (a store to read, not
    to create) only one with the store's tables.  Read-only: MLflow and Optuna would otherwise
    write their schema into another program's database."""
    empty = f"{db} holds no {store.split(' ', 1)[1]} yet (an empty database)"
    try:
        with open(db, "rb") as f:
            header = f.read(16)
    except OSError as e:
        return f"cannot read {db}: {e.strerror or e}"
    if not header:
        return empty if set_up else None
    if header != b"SQLite format 3\x00":
        return f"{db} is not an SQLite database (a file of something else)"
    tables = sqlite_tables(db)
    if tables is None:
        return None  # locked or damaged: the store's own error then
    if set_up and not tables:
        return empty
    if tables and not STORES[store] <= tables:
        what = next((name for name, marks in STORES.items() if marks <= tables), "tables of something else")
        return f"{db} holds {what}, not {store}"
    return None
