"""pipeline.uris: the file a SQLite URL names, and the URL pinned to an absolute path."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.uris import pinned_sqlite, sqlite_path


@pytest.mark.parametrize("url, path", [
    ("sqlite:///runs/mlflow.db", Path("runs/mlflow.db")),
    ("sqlite:////abs/mlflow.db", Path("/abs/mlflow.db")),
    ("sqlite:///study.db?timeout=30", Path("study.db")),
    ("http://127.0.0.1:5000", None),
    ("postgresql://u@h/db", None),
    ("sqlite://", None),
    ("sqlite:///:memory:", None),
])
def test_sqlite_path(url, path):
    assert sqlite_path(url) == path


def test_pinned_sqlite_is_absolute_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pinned_sqlite("sqlite:///a/b.db") == f"sqlite:///{tmp_path.resolve()}/a/b.db"
    assert pinned_sqlite("sqlite:///~/s.db?timeout=5") == f"sqlite:///{(tmp_path / 'home').resolve()}/s.db?timeout=5"
    assert pinned_sqlite("sqlite:////x/y.db") == "sqlite:////x/y.db"
    for other in ("http://h:5000", "postgresql://u@h/db", "databricks"):
        assert pinned_sqlite(other) == other


def test_grid_tracking_uri_pins_a_relative_sqlite_environment_uri(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI=sqlite:///runs.db is the driver's file: trials run in other working
    directories, so the grid hands them the absolute path."""
    from pipeline.tracking import grid_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs.db")
    assert grid_tracking_uri({}, str(tmp_path / "storage")) == f"sqlite:///{tmp_path.resolve()}/runs.db"


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite:///:memory:", "sqlite:///?cache=shared"])
def test_in_memory_sqlite_names_no_file_and_is_no_tracking_store(url):
    """An in-memory database is private to the process that opens it: trials (other processes)
    would each track into their own, lost at exit."""
    from pipeline.tracking import uri_problem

    assert sqlite_path(url) is None and pinned_sqlite(url) == url
    assert "in-memory" in uri_problem(url)


def test_a_sqlite_file_of_something_else_is_refused_and_left_as_it_was(tmp_path):
    """A database that holds other tables (an Optuna study beside the runs, another program's
    file) is refused in one line; MLflow would otherwise write its schema into it."""
    import sqlite3

    from pipeline.errors import ConfigError
    from pipeline.tracking import check_reachable, check_store

    cases = {"optuna.db": (["studies", "trials"], "an Optuna study"), "other.db": (["t"], "tables of something else")}
    for name, (tables, what) in cases.items():
        db = tmp_path / name
        with sqlite3.connect(db) as con:
            for t in tables:
                con.execute(f"CREATE TABLE {t} (x)")
        before = db.read_bytes()
        with pytest.raises(ConfigError, match=f"holds {what}, not an MLflow store"):
            check_store(f"sqlite:///{db}")
        with pytest.raises(ConnectionError, match=f"holds {what}"):
            check_reachable(f"sqlite:///{db}")
        assert db.read_bytes() == before
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # a database with no table yet: MLflow sets it up
    check_store(f"sqlite:///{empty}")


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("tables,what", [(["experiments", "runs"], "an MLflow store"), (["t"], "tables of something else")])
def test_a_study_storage_of_something_else_is_refused_and_left_as_it_was(tables, what, resume, tmp_path):
    """``search --study-storage`` naming an MLflow store or another program's database (before:
    Optuna wrote its schema into the file during the check, then the search refused), with and
    without --resume: one line, exit 2 before any trial, the file byte for byte as it was."""
    import sqlite3
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as con:
        for t in tables:
            con.execute(f"CREATE TABLE {t} (x)")
    before = db.read_bytes()
    r = subprocess.run([sys.executable, str(root / "experiments" / "search.py"), "--spec",
                        str(root / "experiments" / "specs" / "search" / "digits.yaml"), "--storage",
                        str(tmp_path / "runs"), "--study-storage", f"sqlite:///{db}",
                        *(["--resume"] if resume else [])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"holds {what}, not an Optuna study" in r.stderr, r.stderr
    assert db.read_bytes() == before
