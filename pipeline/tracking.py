"""MLflow, behind one thin adapter we own (the only module that imports mlflow).

One MLflow run per trial.  A run is created once and then only re-opened: a resumed trial
(its checkpoint holds the run id) or a grid trial (the grid creates the child run up front and
passes ``tracking.run_id``) keeps logging into the same run.  Metrics whose step was already
logged are not logged again, so a trial that resumes from an older checkpoint and recomputes
an epoch (bit-exactly: see pipeline.train) leaves one point per step.

Metrics go out in one ``log_batch`` per epoch, asynchronously (MLflow's own queue); the queue
is flushed before every checkpoint so a checkpoint never claims metrics the server lacks.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .uris import foreign_sqlite, in_memory_sqlite, pinned_sqlite, sqlite_path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow prints "View run … at: URL" when a run ends on a server; those URLs open the GenAI
# view. The addresses we print (ui_url) open the training-runs table instead.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

# MLflow logs two INFO lines to stderr whenever it creates or migrates a SQLite store ("Creating
# initial MLflow database tables...", "Updating database tables"): routine, not for the user.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

PARENT_TAG = "mlflow.parentRunId"
STATUS_TAG = "attnlab.status"  # running | finished | stopped_early | diverged | failed | killed
MAX_PARAM_LEN = 6000


def _client(uri: str) -> MlflowClient:
    """MLflow's client for ``uri``.  MLflow is imported here and in the functions that build its
    entities, on first use, never at module import: a trial with tracking off does not load it."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def default_uri(work_dir: Path) -> str:
    """A local SQLite store in the work directory: a single command works with no server."""
    return f"sqlite:///{Path(work_dir).resolve() / 'mlflow.db'}"


def env_tracking_uri() -> str | None:
    """``MLFLOW_TRACKING_URI`` with a relative SQLite path made absolute, or None when unset;
    set but empty is a :class:`~pipeline.errors.ConfigError`."""
    from pipeline.errors import ConfigError

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        return None
    if not uri.strip():
        raise ConfigError("MLFLOW_TRACKING_URI is set but empty: unset it (the default local store) "
                          "or give the tracking URI")
    return pinned_sqlite(uri)


def grid_tracking_uri(base: Mapping[str, Any], storage: str) -> str:
    """Where a grid or a search tracks: ``MLFLOW_TRACKING_URI``, else the spec's
    ``base.tracking.uri``, else a SQLite file in a local storage folder (one machine only: the
    pre-flight refuses it on a multi-node cluster)."""
    from pipeline.errors import ConfigError

    uri = env_tracking_uri() or (base.get("tracking") or {}).get("uri")
    if uri:
        return pinned_sqlite(uri)  # trials run in other working directories
    if "://" in storage:
        raise ConfigError("set MLFLOW_TRACKING_URI (or base.tracking.uri): a cloud storage has no local SQLite")
    Path(storage).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(storage) / 'mlflow.db'}"


def git_commit(path: Path | None = None) -> str:
    """The commit of the source tree (ATTNLAB_GIT_COMMIT wins: Ray job uploads have no .git)."""
    if os.environ.get("ATTNLAB_GIT_COMMIT"):
        return os.environ["ATTNLAB_GIT_COMMIT"]
    path = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        if out.returncode == 0 and sha:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def host() -> str:
    return socket.gethostname()


def artifact_location(uri: str | None, experiment: str) -> str | None:
    """For a local store, artifacts beside the database (absolute); a server decides itself.

    MLflow's default for a SQLite store is ``./mlruns`` relative to the current directory,
    which moves with Ray's per-trial working directory.
    """
    db = sqlite_path(uri) if uri else None
    return None if db is None else (db.parent / "mlartifacts" / experiment).resolve().as_uri()


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name))
    except MlflowException:  # created concurrently by another trial
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class Tracker:
    """One trial's MLflow run.  ``Tracker(None)`` is a no-op with the same interface."""

    def __init__(self, uri: str | None, experiment: str = "attnlab"):
        self.enabled = uri is not None
        db = sqlite_path(uri) if uri else None
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.experiment = experiment
        self.run_id: str | None = None
        self._logged: dict[str, int] = {}  # metric key -> last step already in the run
        self._pending: list[Any] = []  # futures of asynchronous batches not yet waited for
        self.client = _client(uri) if self.enabled else None

    # -- runs ----------------------------------------------------------------------------------
    def create_run(self, run_name: str, tags: Mapping[str, str] | None = None,
                   parent_run_id: str | None = None) -> str:
        """Create a run (RUNNING) and return its id; does not attach this tracker to it."""
        exp_id = get_or_create_experiment(self.client, self.experiment)
        tags = dict(tags or {})
        if parent_run_id:
            tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(exp_id, run_name=run_name, tags=tags)
        return run.info.run_id

    def start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str],
              run_id: str | None = None, parent_run_id: str | None = None) -> str | None:
        """Attach to ``run_id`` (re-opening it) or create a new run; log params and tags."""
        if not self.enabled:
            return None
        from mlflow.entities import Param, RunTag

        if run_id is None:
            run_id = self.create_run(run_name, tags, parent_run_id)
            existing_params: dict[str, str] = {}
        else:
            run = self.client.get_run(run_id)
            existing_params = dict(run.data.params)
            for key in run.data.metrics:
                hist = self.client.get_metric_history(run_id, key)
                self._logged[key] = max(m.step for m in hist) if hist else -1
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        new_params = [Param(k, v[:MAX_PARAM_LEN]) for k, v in params.items() if k not in existing_params]
        all_tags = dict(tags)
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        all_tags[STATUS_TAG] = "running"
        for i in range(0, max(len(new_params), 1), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run_id, params=new_params[i:i + 100],
                                  tags=[RunTag(k, str(v)) for k, v in all_tags.items()] if i == 0 else [],
                                  synchronous=True)
        return run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """One batch per call, asynchronous; steps already in the run are skipped."""
        if not self.enabled:
            return
        import time
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                 if v is not None and step > self._logged.get(k, -1)]
        if not batch:
            return
        op = self.client.log_batch(self.run_id, metrics=batch, synchronous=False)
        if op is not None:
            self._pending.append(op)
        for m in batch:
            self._logged[m.key] = step

    def flush(self) -> None:
        """Wait until every asynchronous batch of *this* tracker's client reached the store.

        ``mlflow.flush_async_logging()`` flushes the fluent API's global store only, not a
        client made for a tracking URI given in the config, so the tracker keeps the futures of
        its own batches and waits on them (an error surfaces here, not silently later).
        """
        pending, self._pending = self._pending, []
        for op in pending:
            op.wait()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            from mlflow.entities import RunTag

            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def finish(self, status: str) -> None:
        """``status``: finished | diverged | failed | killed.  MLflow's run status follows."""
        if not self.enabled or self.run_id is None:
            return
        self.flush()
        self.set_tags({STATUS_TAG: status})
        if status == "finished" and "attnlab.error" in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, "attnlab.error")  # an earlier attempt's error, retried since
        mlflow_status = {"finished": "FINISHED", "killed": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, status=mlflow_status)

    # -- artifacts -----------------------------------------------------------------------------
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Any, name: str) -> None:
        if self.enabled:
            self.client.log_dict(self.run_id, obj, name)

    def log_figure(self, fig: Any, name: str) -> None:
        if self.enabled:
            self.client.log_figure(self.run_id, fig, name)

    def log_dataset(self, name: str, fingerprint: str, source: str, context: str = "train") -> None:
        """The dataset as an MLflow input (name + content fingerprint as its digest)."""
        if not self.enabled:
            return
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException
        import tenacity

        ds = MetaDataset(LocalArtifactDatasetSource(source), name=name, digest=fingerprint[:36])
        tag = InputTag(key="mlflow.data.context", value=context)
        # Trials of one grid register the same dataset at once; the server's unique constraint
        # rejects all but the first insert, and a retry then links the existing dataset row.
        retry = tenacity.Retrying(retry=tenacity.retry_if_exception_type(MlflowException),
                                  stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_incrementing(0.2, 0.2),
                                  reraise=True)
        retry(self.client.log_inputs, self.run_id, [DatasetInput(ds._to_mlflow_entity(), tags=[tag])])


def find_runs(uri: str, experiment: str, filter_string: str, page_size: int = 1000) -> list[Any]:
    """Runs of ``experiment`` matching an MLflow filter (e.g. ``tags.`attnlab.trial` = 'ab12'``)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs, token = [], None
    while True:  # page through all of them: a grid can have more runs than one page holds
        page = client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=page_size,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    client = _client(uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def get_run(uri: str, run_id: str) -> Any:
    return _client(uri).get_run(run_id)


def list_artifacts(uri: str, run_id: str, path: str | None = None) -> list[str]:
    client = _client(uri)
    out = []
    for a in client.list_artifacts(run_id, path):
        out.extend(list_artifacts(uri, run_id, a.path) if a.is_dir else [a.path])
    return out


# ---------------------------------------------------------------------------------------------
# grids: one parent run per grid, one child run per trial, found again on re-runs
# ---------------------------------------------------------------------------------------------

GRID_TAG = "attnlab.grid"
TRIAL_TAG = "attnlab.trial"


def find_parent_run(uri: str, experiment: str, grid_name: str) -> Any | None:
    """The grid's parent run in ``experiment`` (the oldest, should there be several), or None."""
    found = [r for r in find_runs(uri, experiment, f"tags.`{GRID_TAG}` = '{grid_name}'")
             if PARENT_TAG not in r.data.tags]
    return sorted(found, key=lambda r: r.info.start_time)[0] if found else None


def ensure_parent_run(uri: str, experiment: str, grid_name: str, tags: Mapping[str, str]) -> str:
    """The grid's parent run: the existing one of that name (resume) or a new one."""
    found = find_parent_run(uri, experiment, grid_name)
    client = _client(uri)
    if found is not None:
        client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    t = Tracker(uri, experiment)
    return t.create_run(grid_name, {GRID_TAG: grid_name, "attnlab.kind": "grid", **tags})


def child_trial_ids(uri: str, experiment: str, parent_id: str) -> dict[str, Any]:
    """Trial id -> child run of ``parent_id`` (every page)."""
    return {r.data.tags.get(TRIAL_TAG): r for r in find_runs(uri, experiment, f"tags.`{PARENT_TAG}` = '{parent_id}'")}


def close_run(uri: str, run_id: str, status: str, tags: Mapping[str, Any] | None = None,
              metrics: Mapping[str, float] | None = None) -> None:
    """End a run from outside its trial (the grid driver): ``status`` is attnlab's
    (finished | stopped_early | failed | diverged | killed); MLflow's status follows."""
    import time
    from mlflow.entities import Metric, RunTag

    client = _client(uri)
    ts = int(time.time() * 1000)
    all_tags = {STATUS_TAG: status, **(tags or {})}
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in (metrics or {}).items()],
                     tags=[RunTag(k, str(v)[:5000]) for k, v in all_tags.items()], synchronous=True)
    mlflow_status = {"finished": "FINISHED", "stopped_early": "FINISHED", "killed": "KILLED"}.get(status, "FAILED")
    client.set_terminated(run_id, status=mlflow_status)


def log_run_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Summary metrics from outside a trial; a value the run already holds is not logged again
    (a resumed grid re-closes its runs)."""
    import time
    from mlflow.entities import Metric

    client = _client(uri)
    have = client.get_run(run_id).data.metrics
    ts = int(time.time() * 1000)
    new = [Metric(k, float(v), ts, step) for k, v in metrics.items() if have.get(k) != float(v)]
    if new:
        client.log_batch(run_id, metrics=new, synchronous=True)


def ensure_child_runs(uri: str, experiment: str, parent_id: str,
                      trials: Iterable[tuple[str, str, Mapping[str, str]]]) -> dict[str, str]:
    """``(trial id, run name, tags)`` -> run id: existing child runs are reused, never doubled."""
    existing = {tid: r.info.run_id for tid, r in child_trial_ids(uri, experiment, parent_id).items()}
    t = Tracker(uri, experiment)
    out = {}
    for tid, name, tags in trials:
        out[tid] = existing.get(tid) or t.create_run(name, {TRIAL_TAG: tid, **tags}, parent_run_id=parent_id)
    return out


def log_parent_artifacts(uri: str, run_id: str, files: Mapping[str, str | bytes]) -> None:
    """Small text artifacts (spec, expansion table, summary) onto a run."""
    client = _client(uri)
    with tempfile.TemporaryDirectory() as d:
        for name, content in files.items():
            p = Path(d) / name
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
            client.log_artifact(run_id, str(p))


def finish_parent(uri: str, run_id: str, ok: bool, metrics: Mapping[str, float] | None = None) -> None:
    client = _client(uri)
    if metrics:
        log_run_metrics(uri, run_id, metrics)
    client.set_tag(run_id, STATUS_TAG, "finished" if ok else "failed")
    client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


# ---------------------------------------------------------------------------------------------
# claims, reports and UI links
# ---------------------------------------------------------------------------------------------

CLAIM_TAG = "attnlab.claim"  # the claim id: one active run per claim in the claims experiment
CLAIM_HASH_TAG = "attnlab.claim.hash"  # content hash: an unchanged claim is not written again
CLAIM_STATE_TAG = "attnlab.claim.state"  # active | removed (the claim left the registry)
SOURCE_TAG = "source"  # "paper" on claim runs


def is_server_uri(uri: str | None) -> bool:
    return bool(uri) and uri.startswith(("http://", "https://"))


#: URI schemes MLflow has a tracking store for (a database scheme may name its driver: postgresql+psycopg2)
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")


def _scheme(uri: str) -> str:
    """The URI's scheme without a driver: ``postgresql+psycopg2://…`` -> ``postgresql``."""
    return uri.split("://", 1)[0].split("+", 1)[0].lower()


def uri_problem(uri: str | None) -> str | None:
    """What makes ``uri`` no tracking URI MLflow can use, as one line; ``None`` when its form is
    fine.  Nothing is contacted: the scheme, a server's host and port, SQLite's three slashes,
    a database URL's syntax and driver (SQLAlchemy loads it) are checked."""
    if not uri or not uri.strip():
        return "the tracking URI is empty"
    if uri in ("databricks", "databricks-uc", "uc"):  # MLflow's bare forms (the default profile)
        return None
    if "://" not in uri or uri.startswith("file:"):
        return (f"tracking URI {uri!r}: MLflow's file store is not supported (MLflow keeps it in maintenance "
                "mode); use a server (http://HOST:5000) or a database (sqlite:///PATH, "
                "postgresql+psycopg2://USER@HOST/DB)")
    scheme = _scheme(uri)
    if scheme not in TRACKING_SCHEMES:
        return (f"tracking URI {uri!r}: unknown scheme {scheme!r}; use http(s)://HOST:PORT, sqlite:///PATH or a "
                f"database URL ({', '.join(s + '://' for s in DATABASE_SCHEMES)})")
    if scheme == "sqlite" and not uri.startswith("sqlite:///"):
        return f"tracking URI {uri!r}: a SQLite URI is sqlite:///PATH (sqlite:////abs/path for an absolute path)"
    if in_memory_sqlite(uri):
        return (f"tracking URI {uri!r}: an in-memory SQLite database lives and dies with one process, and trials "
                "run in others; name a file (sqlite:///PATH)")
    if scheme in ("http", "https"):
        from .errors import url_problem

        problem = url_problem(uri)
        if problem:
            return f"tracking URI {uri!r}: {problem}" + (" (http://HOST:PORT)" if problem == "no host" else "")
    if scheme in DATABASE_SCHEMES:
        from sqlalchemy import create_engine

        try:
            create_engine(uri).dispose()  # parses the URL and loads its driver; connects to nothing
        except Exception as e:  # noqa: BLE001 - ArgumentError, ValueError (a bad port), a missing driver
            hint = (f"; install it, or name an installed driver ({scheme}+DRIVER://…"
                    + (", e.g. postgresql+psycopg2://…)" if scheme == "postgresql" else ")")
                    if isinstance(e, ModuleNotFoundError) else "")
            return f"tracking URI {_hide_password(uri)}: {type(e).__name__}: {_first_line(e)}{hint}"
    return None


def _hide_password(uri: str) -> str:
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", uri)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(getattr(e, "orig", None) or e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


#: the connect-timeout keyword of each database driver (``scheme+`` is the scheme's default driver)
_TIMEOUT_ARG = {"postgresql+": "connect_timeout", "postgresql+psycopg2": "connect_timeout",
                "postgresql+psycopg": "connect_timeout", "postgresql+pg8000": "timeout",
                "mysql+": "connect_timeout", "mysql+mysqldb": "connect_timeout", "mysql+pymysql": "connect_timeout",
                "mysql+mysqlconnector": "connection_timeout"}


def _database_problem(uri: str, timeout: float) -> str | None:
    """``None`` when the database of ``uri`` accepts a connection within ``timeout`` seconds."""
    from sqlalchemy import create_engine

    # each driver names its connect timeout differently (an unknown keyword is a TypeError)
    driver = uri.split("://", 1)[0].lower()
    key = _TIMEOUT_ARG.get(driver if "+" in driver else driver + "+")
    args = {key: max(1, int(timeout))} if key else {}
    engine = None
    try:
        engine = create_engine(uri, connect_args=args)
        with engine.connect():
            pass
    except Exception as e:  # noqa: BLE001 - refused, unknown host, bad credentials, no such database
        return f"tracking URI {_hide_password(uri)}: cannot connect: {_first_line(e)}"
    finally:
        if engine is not None:
            engine.dispose()
    return None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise ``ConnectionError`` (one line) unless ``uri`` answers: a server's ``/health``, or a
    local store that exists (a SQLite file that holds MLflow's tables: an empty file would be
    set up as a new store by the first client that opens it).  MLflow's client would otherwise
    retry for minutes."""
    import urllib.error
    import urllib.request

    if is_server_uri(uri):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status == 200:
                    return
                raise ConnectionError(f"MLflow server {uri} answered /health with HTTP {r.status}")
        except urllib.error.HTTPError as e:
            raise ConnectionError(f"MLflow server {uri} answered /health with HTTP {e.code}") from None
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise ConnectionError(f"MLflow server {uri} is not reachable: {reason}") from None
    db = sqlite_path(uri)
    if db is not None:
        if not db.is_file():
            raise ConnectionError(f"no MLflow database at {db}")
        problem = foreign_sqlite(db, "an MLflow store", set_up=True)
        if problem:
            raise ConnectionError(f"tracking URI {uri}: {problem}")
        return
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    if "://" in uri and not uri.startswith("file://"):
        if _scheme(uri) in DATABASE_SCHEMES:
            problem = _database_problem(uri, timeout)
            if problem:
                raise ConnectionError(problem)
        return  # another backend (databricks…): let MLflow itself judge
    if not path.is_dir():
        raise ConnectionError(f"no MLflow file store at {path}")


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`~pipeline.errors.ConfigError` (one line) unless runs can be written to
    ``uri``: a server that answers, a SQLite file that exists or can be created, a database that
    accepts a connection, or another MLflow backend (databricks: judged by MLflow).  A malformed
    URI (:func:`uri_problem`) and MLflow's file store (a plain path or ``file://``) are refused:
    MLflow keeps the file store in maintenance mode and raises on first use."""
    from .errors import ConfigError, folder_problem

    problem = uri_problem(uri)
    if problem:
        raise ConfigError(problem)
    if is_server_uri(uri):
        try:
            check_reachable(uri, timeout=timeout)
        except ConnectionError as e:
            raise ConfigError(str(e)) from None
        return
    db = sqlite_path(uri)
    if db is not None:
        if db.exists() and not db.is_file():
            raise ConfigError(f"tracking URI {uri}: {db} is not a file")
        problem = foreign_sqlite(db, "an MLflow store") if db.is_file() else None
        if problem:
            raise ConfigError(f"tracking URI {uri}: {problem}")
        problem = folder_problem(db.parent, create=False)  # made when the store is opened
        if problem:
            raise ConfigError(f"tracking URI {uri}: cannot create the database in {db.parent}: {problem}")
        return
    if _scheme(uri) in DATABASE_SCHEMES:
        try:
            check_reachable(uri, timeout=timeout)
        except ConnectionError as e:
            raise ConfigError(str(e)) from None


def check_runs(uri: str, **run_ids: str | None) -> None:
    """Raise :class:`~pipeline.errors.ConfigError` (one line) unless each given run id
    (``check_runs(uri, run_id=..., parent_run_id=...)``, named after its ``tracking.`` key) is an
    active run of the store at ``uri`` — checked before a trial attaches to it, not as MLflow's
    traceback after the data and the model were built.  A SQLite file that does not exist yet
    holds no run (and is not created here)."""
    from .errors import ConfigError

    given = {key: rid for key, rid in run_ids.items() if rid}
    if not given:
        return
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        key, rid = next(iter(given.items()))
        raise ConfigError(f"tracking.{key} {rid!r}: no such run (the tracking database {db} does not exist)")
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    for key, rid in given.items():
        try:
            run = client.get_run(rid)
        except MlflowException as e:
            reason = "no such run" if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") \
                else " ".join(str(e.message).split())[:300]
            raise ConfigError(f"tracking.{key} {rid!r}: {reason} in {uri}") from None
        if run.info.lifecycle_stage == "deleted":
            raise ConfigError(f"tracking.{key} {rid!r}: the run was deleted in {uri} (restore it in the UI, "
                              "or leave the key out for a new run)")


def _experiment_id(client: MlflowClient, experiment_name_or_id: str) -> str | None:
    ref = str(experiment_name_or_id)
    if ref.isdigit():
        return ref
    exp = client.get_experiment_by_name(ref)
    return exp.experiment_id if exp is not None else None


def ui_url(tracking_uri: str, experiment_name_or_id: str, run_id: str | None = None,
           order_by: str | None = None) -> str:
    """The MLflow UI address of an experiment's training-runs table (or of one run's page).

    MLflow 3 opens an experiment in its GenAI (traces) view unless the URL asks for
    ``workflowType=machine_learning``; this address always does.  ``order_by`` (a metric, e.g.
    ``best_top1``) sorts the table by it, best first; sorted by anything but the start time,
    MLflow lists a grid's child runs flat instead of folding them under the parent run.
    A local store (SQLite or a folder) has no UI server: the answer then says so and gives the
    command that starts one, with the address to open once it runs.
    """
    client = _client(tracking_uri)
    try:
        exp_id = _experiment_id(client, experiment_name_or_id)
    except Exception:  # noqa: BLE001 - an unreachable server: the name stays unresolved
        exp_id = None
    where = exp_id if exp_id is not None else f"<id of experiment {experiment_name_or_id!r}>"
    page = f"#/experiments/{where}/runs" + (f"/{run_id}" if run_id else "") + "?workflowType=machine_learning"
    if order_by and not run_id:
        import urllib.parse

        page += "&orderByKey=" + urllib.parse.quote(f"metrics.`{order_by}`") + "&orderByAsc=false"
    if is_server_uri(tracking_uri):
        return f"{tracking_uri.rstrip('/')}/{page}"
    store = tracking_uri if "://" in tracking_uri else Path(tracking_uri).resolve().as_uri()
    return (f"no MLflow UI server behind {tracking_uri} (a local store); start one with "
            f"`mlflow server --backend-store-uri {store} --host 127.0.0.1 --port 5000 --workers 1`, "
            f"then open http://127.0.0.1:5000/{page}")


def compare_url(tracking_uri: str, experiment_ids: Iterable[str], run_ids: Iterable[str]) -> str:
    """MLflow's compare-runs page for ``run_ids`` (a server URI only): their params and metrics side
    by side (a paper's ``paper: …`` claim run beside a grid's trials), in the training-runs mode."""
    import json
    import urllib.parse

    runs = urllib.parse.quote(json.dumps(list(run_ids), separators=(",", ":")))
    exps = urllib.parse.quote(json.dumps([str(e) for e in experiment_ids], separators=(",", ":")))
    return f"{tracking_uri.rstrip('/')}/#/compare-runs?runs={runs}&experiments={exps}&workflowType=machine_learning"


def sync_keyed_runs(uri: str, experiment: str, records: list[Mapping[str, Any]],
                    key_tag: str = CLAIM_TAG, scope: Any = None) -> dict[str, dict[str, str]]:
    """Make ``experiment`` hold exactly one active, FINISHED run per record; idempotent.

    A record is ``{"key", "run_name", "params", "metrics", "tags"}`` (params/tags: str -> str,
    metrics: str -> float).  Per key the run is found by its ``key_tag`` tag and:

    * ``created``   — no run yet;
    * ``unchanged`` — same content hash, active: nothing is written (a second sync is a no-op);
    * ``updated``   — same params, other metrics/tags/name: re-logged on the same run;
    * ``replaced``  — params changed (MLflow params are immutable): the old run is tagged
      ``attnlab.claim.state=replaced`` and deleted (restorable), a new run takes its place;
    * ``removed``   — a run whose key is no longer in ``records``: tagged
      ``attnlab.claim.state=removed`` and its status set to KILLED (kept, not deleted).
      ``scope(run) -> bool`` limits this to the runs a partial sync is about (e.g. one file's).

    Returns ``{action: {key: run_id}}``.
    """
    # MLflow prints "View run … at: URL" for every run it terminates on a server: 100+ lines here
    quiet = os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    try:
        return _sync_keyed_runs(uri, experiment, records, key_tag, scope)
    finally:
        if quiet is None:
            os.environ.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)
        else:
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = quiet


def _sync_keyed_runs(uri: str, experiment: str, records: list[Mapping[str, Any]],
                     key_tag: str, scope: Any = None) -> dict[str, dict[str, str]]:
    import hashlib
    import json
    import time
    from mlflow.entities import Metric, Param, RunTag

    client = _client(uri)
    exp_id = get_or_create_experiment(client, experiment)
    found = client.search_runs([exp_id], filter_string=f"tags.`{key_tag}` != ''", max_results=50_000)
    by_key: dict[str, Any] = {}
    for r in sorted(found, key=lambda r: r.info.start_time):
        key = r.data.tags.get(key_tag)
        if key in by_key:  # a second run for one key (an interrupted sync): keep the oldest
            client.set_tag(r.info.run_id, CLAIM_STATE_TAG, "duplicate")
            client.delete_run(r.info.run_id)
            continue
        by_key[key] = r
    out: dict[str, dict[str, str]] = {a: {} for a in ("created", "unchanged", "updated", "replaced", "removed")}

    def content_hash(rec: Mapping[str, Any]) -> str:
        blob = json.dumps({"name": rec["run_name"], "params": rec["params"], "metrics": rec["metrics"],
                           "tags": rec["tags"]}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def write(run_id: str, rec: Mapping[str, Any], h: str, params: bool) -> None:
        ts = int(time.time() * 1000)
        tags = {**rec["tags"], key_tag: rec["key"], CLAIM_HASH_TAG: h, CLAIM_STATE_TAG: "active"}
        ps = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in rec["params"].items()] if params else []
        ms = [Metric(k, float(v), ts, 0) for k, v in rec["metrics"].items()]
        ts_ = [RunTag(k, str(v)) for k, v in tags.items()] + [RunTag("mlflow.runName", rec["run_name"])]
        for i in range(0, max(len(ps), len(ms), len(ts_)), 100):
            client.log_batch(run_id, metrics=ms[i:i + 100], params=ps[i:i + 100], tags=ts_[i:i + 100],
                             synchronous=True)
        client.set_terminated(run_id, status="FINISHED")

    def create(rec: Mapping[str, Any], h: str) -> str:
        run = client.create_run(exp_id, run_name=rec["run_name"], tags={key_tag: rec["key"]})
        write(run.info.run_id, rec, h, params=True)
        return run.info.run_id

    for rec in records:
        h = content_hash(rec)
        run = by_key.pop(rec["key"], None)
        if run is None:
            out["created"][rec["key"]] = create(rec, h)
            continue
        rid, tags = run.info.run_id, run.data.tags
        if tags.get(CLAIM_HASH_TAG) == h and tags.get(CLAIM_STATE_TAG) == "active" and run.info.status == "FINISHED":
            out["unchanged"][rec["key"]] = rid
            continue
        want = {k: str(v)[:MAX_PARAM_LEN] for k, v in rec["params"].items()}
        if dict(run.data.params) != want or set(run.data.metrics) - set(rec["metrics"]):
            client.set_tag(rid, CLAIM_STATE_TAG, "replaced")
            client.set_terminated(rid, status="KILLED")
            client.delete_run(rid)
            out["replaced"][rec["key"]] = create(rec, h)
            continue
        for k in set(tags) - set(rec["tags"]) - {key_tag, CLAIM_HASH_TAG, CLAIM_STATE_TAG, SOURCE_TAG}:
            if not k.startswith("mlflow.") and k.startswith(("attnlab.", "paper.")):
                client.delete_tag(rid, k)  # a tag the edited record no longer has
        write(rid, rec, h, params=False)
        out["updated"][rec["key"]] = rid
    for key, run in by_key.items():
        rid = run.info.run_id
        if run.data.tags.get(CLAIM_STATE_TAG) == "removed" and run.info.status == "KILLED":
            continue
        if scope is not None and not scope(run):
            continue  # a partial sync: not one of the runs it covers
        client.log_batch(rid, tags=[RunTag(CLAIM_STATE_TAG, "removed"),
                                    RunTag("attnlab.claim.removed_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))],
                         synchronous=True)
        client.set_terminated(rid, status="KILLED")
        out["removed"][key] = rid
    return out


def keyed_runs(uri: str, experiment: str, key_tag: str = CLAIM_TAG) -> dict[str, Any]:
    """Active runs of ``experiment`` by their ``key_tag`` (claim id -> run)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    return {r.data.tags[key_tag]: r for r in
            client.search_runs([exp.experiment_id], filter_string=f"tags.`{key_tag}` != ''", max_results=50_000)}


def grid_runs(uri: str, grid_name: str) -> tuple[Any, list[Any]]:
    """A grid's parent run and its child runs, from any experiment; ``(None, [])`` if none."""
    client = _client(uri)
    exp_ids = [e.experiment_id for e in client.search_experiments(max_results=50_000)]
    if not exp_ids:
        return None, []
    quoted = grid_name.replace("'", "\\'")
    parents = [r for r in client.search_runs(exp_ids, filter_string=f"tags.`{GRID_TAG}` = '{quoted}'",
                                             max_results=50_000)
               if PARENT_TAG not in r.data.tags]
    if not parents:
        return None, []
    parent = sorted(parents, key=lambda r: r.info.start_time)[0]
    kids = list(client.search_runs([parent.info.experiment_id],
                                   filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                                   max_results=50_000))
    return parent, kids


def experiment_name(uri: str, experiment_id: str) -> str:
    return _client(uri).get_experiment(experiment_id).name


def log_artifact_dir(uri: str, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
    """Every file under ``local_dir`` onto ``run_id`` (under ``artifact_path``)."""
    _client(uri).log_artifacts(run_id, str(local_dir), artifact_path)
