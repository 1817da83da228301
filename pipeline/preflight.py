"""The grid's pre-flight: what must hold on every node before any trial starts.

A cluster is not one machine: the driver's files, working directory, SQLite file and home folder
need not exist where a trial runs. :func:`node_checks` runs on each alive node (the Ray adapter
places one small task per node) and returns that node's problems; :func:`cluster_checks` judges
what only the whole cluster can (a node-local store on several nodes, GPUs asked for and absent).
Every problem is one line naming the node; the grid stops before training when there is any.
"""
from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

MARKER_PREFIX = ".attnlab-preflight-"


def is_uri(path: str) -> bool:
    return "://" in path


def ray_address_problem(address: str | None = None, probe: bool = True, timeout: float = 3.0) -> str | None:
    """What is wrong with ``RAY_ADDRESS`` (or ``address``), the cluster a driver joins, as one
    line; ``None`` when it is unset or well formed and (``probe``) something accepts a TCP
    connection at its host and port.  Checked before any store or run is made: Ray itself only
    judges it when it connects (``ray.init``), after the grid's tracking work, and against an
    address where nothing listens it retries for minutes.  ``auto`` is left to ``ray.init``."""
    value = os.environ.get("RAY_ADDRESS") if address is None else address
    if value is None:
        return None
    forms = "HOST:PORT, ray://HOST:PORT, http://HOST:8265 (a dashboard) or auto"
    v = value.strip()
    if not v:
        return f"RAY_ADDRESS is set but empty: unset it for a local Ray, or give {forms}"
    if v in ("auto", "local"):
        return None
    if "://" in v:
        import urllib.parse

        from .errors import url_problem

        scheme = v.split("://", 1)[0]
        if scheme not in ("ray", "http", "https"):
            return f"RAY_ADDRESS {value!r}: unknown scheme {scheme!r}; give {forms}"
        problem = url_problem(v)
        if problem:
            return f"RAY_ADDRESS {value!r}: {problem}; give {forms}"
        parts = urllib.parse.urlsplit(v)
        host, port = parts.hostname, parts.port or {"ray": 10001, "http": 80, "https": 443}[scheme]
    else:
        host, sep, port_text = v.rpartition(":")
        if not (sep and host and port_text.isdigit() and 1 <= int(port_text) <= 65535):
            return f"RAY_ADDRESS {value!r}: not an address; give {forms}"
        port = int(port_text)
    if probe:
        try:
            socket.create_connection((host.strip("[]"), port), timeout=timeout).close()
        except OSError as e:
            why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e)).lower()
            return (f"RAY_ADDRESS {value!r}: nothing answers at {host}:{port} ({why}); start the cluster "
                    f"or correct the address")
    return None


def write_marker(storage: str) -> str | None:
    """A file the driver writes into a local storage folder: every node must see it."""
    if is_uri(storage):
        return None  # s3://, gs://, …: pyarrow's filesystems are shared by construction
    name = MARKER_PREFIX + uuid.uuid4().hex
    Path(storage).mkdir(parents=True, exist_ok=True)
    (Path(storage) / name).write_text(socket.gethostname())
    return name


def remove_marker(storage: str, name: str | None) -> None:
    if name:
        (Path(storage) / name).unlink(missing_ok=True)


def _health(uri: str, timeout: float = 5.0) -> str | None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            return None if r.status == 200 else f"answered /health with HTTP {r.status}"
    except urllib.error.HTTPError as e:
        return None if e.code in (401, 403) else f"answered /health with HTTP {e.code}"  # auth: it is up
    except (OSError, ValueError) as e:
        return f"is not reachable ({getattr(e, 'reason', e)})"


def checkpoint_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a PyTorch checkpoint, judged from its first bytes (``torch.save``
    writes a zip archive; the legacy format is a pickle); None when it can."""
    if not path.is_file():
        return "not a file here" if path.exists() else "no such file here"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        return "not a PyTorch checkpoint (neither torch.save's zip archive nor a pickle)"
    return None


def node_checks(payload: dict[str, Any]) -> dict[str, Any]:
    """Run on one node: ``{"problems": [...], "backends": {data key: backend}, ...}``.

    ``payload``: ``data`` (distinct data configs, keyed), ``storage``, ``marker`` (or None),
    ``tracking_uri``, ``pretrained`` (the checkpoints the trials load, if any).
    """
    from .data.ready import check_data_ready, resolve_backend
    from .errors import ConfigError

    problems: list[str] = []
    backends: dict[str, str] = {}
    for key, tree in payload["data"].items():
        found = check_data_ready(tree)  # paths, layouts, prepared FFCV files (with the command)
        problems += found
        if found:
            continue
        try:
            backends[key] = resolve_backend(tree)
        except ConfigError as e:
            problems.append(str(e))
    for path in payload.get("pretrained", ()):
        problem = checkpoint_file_problem(Path(path))
        if problem:
            problems.append(f"model.pretrained {path}: {problem}")
    storage, marker = payload["storage"], payload.get("marker")
    if marker and not (Path(storage) / marker).exists():
        problems.append(f"storage {storage} is not shared with the driver (its marker file is not visible here): "
                        "pass --storage on a shared filesystem, or a URI such as s3://bucket/runs")
    uri = payload.get("tracking_uri") or ""
    if uri.startswith(("http://", "https://")):
        why = _health(uri)
        if why:
            problems.append(f"MLflow tracking server {uri} {why}")
    return {"problems": problems, "backends": backends, "host": socket.gethostname(), "pid": os.getpid()}


def cluster_checks(nodes: dict[str, dict[str, Any]], *, tracking_uri: str, storage: str,
                   gpus_per_trial: float, cluster_gpus: float, devices: set[str]) -> list[str]:
    """Problems only the whole cluster shows; ``nodes``: node label -> :func:`node_checks` result."""
    problems = [f"node {label}: {p}" for label, r in nodes.items() for p in r["problems"]]
    multi = len(nodes) > 1
    if multi and (tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri):
        problems.append(f"tracking {tracking_uri} is a local store on a {len(nodes)}-node cluster: trials on other "
                        "nodes would write elsewhere; set MLFLOW_TRACKING_URI to an MLflow server "
                        "(python -m infra.stack up --backend postgres, or your own)")
    if gpus_per_trial > 0 and cluster_gpus <= 0:
        problems.append(f"--gpus-per-trial {gpus_per_trial:g}: the cluster has no GPUs "
                        "(use --gpus-per-trial 0 and device: cpu)")
    if gpus_per_trial == 0 and "cuda" in devices:
        problems.append("device: 'cuda' with --gpus-per-trial 0: Ray would place every trial on one "
                        "unscheduled GPU; give each trial GPUs (--gpus-per-trial 1, or 0.5 to share)")
    by_key: dict[str, set[str]] = {}
    for r in nodes.values():
        for key, b in r["backends"].items():
            by_key.setdefault(key, set()).add(b)
    for key, found in by_key.items():
        if len(found) > 1:
            where = ", ".join(f"{lab}: {r['backends'].get(key)}" for lab, r in nodes.items())
            problems.append(f"data.backend 'auto' resolves differently across nodes ({where}): FFCV and torch "
                            "trials would mix in one grid; install FFCV on every node or set data.backend")
    return problems


def resolved_backends(nodes: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Data key -> the backend every node agrees on (call after :func:`cluster_checks`)."""
    out: dict[str, str] = {}
    for r in nodes.values():
        out.update(r["backends"])
    return out
