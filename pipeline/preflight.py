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
        dashboard = "://" in v and not v.startswith("ray://")
        try:
            answer = _dashboard_answer(v, timeout) if dashboard else _grpc_answer(host.strip("[]"), port, timeout)
        except OSError as e:
            why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e)).lower()
            return (f"RAY_ADDRESS {value!r}: nothing answers at {host}:{port} ({why}); start the cluster "
                    f"or correct the address")
        if answer is not None:
            return f"RAY_ADDRESS {value!r}: {answer}"
    return None


# An HTTP/2 client's connection preface and an empty SETTINGS frame (RFC 9113, section 3.4).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _grpc_answer(host: str, port: int, timeout: float) -> str | None:
    """None when the server at ``host:port`` speaks HTTP/2 (Ray's GCS and its client server are
    gRPC servers): it answers the connection preface with a SETTINGS frame (type 4, the 4th byte
    of the 9-byte frame header).  Else what it did instead.  ``ray.init`` against another kind of
    server retries until killed; connection errors are raised (``OSError``)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return None  # the servers then speak TLS first: a connection is all that is checked
        s.sendall(_H2_PREFACE)
        head = b""
        try:
            while len(head) < 9:
                chunk = s.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
        except TimeoutError:
            return _not_ray(host, port, "Ray (a gRPC server)", f"no reply in {timeout:g} s" if not head
                            else f"a reply that is not HTTP/2: {head[:9]!r}")
    if len(head) == 9 and head[3] == 4:
        return None
    return _not_ray(host, port, "Ray (a gRPC server)",
                    "it closed the connection" if not head else f"a reply that is not HTTP/2: {head[:9]!r}")


def _not_ray(host: str, port: int, what: str, answer: str) -> str:
    return f"something answers at {host}:{port} but not as {what} ({answer}); correct the address"


def _ray_token() -> str | None:
    """The Ray auth token a client sends, found where Ray's clients find it: ``RAY_AUTH_TOKEN``,
    else the file ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _dashboard_answer(url: str, timeout: float) -> str | None:
    """None when ``url`` is a Ray dashboard (``/api/version`` names a Ray version), else what
    answered instead; an address where nothing accepts a connection raises ``OSError``."""
    import http.client
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    socket.create_connection((host, port), timeout=timeout).close()
    token = _ray_token()
    request = urllib.request.Request(url.rstrip("/") + "/api/version",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            body = r.read(65536)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403) and token:
            return (f"the server at {host}:{port} refused the Ray token (HTTP {e.code}); give the cluster's token "
                    f"file in RAY_AUTH_TOKEN_PATH")
        if e.code in (401, 403):
            return (f"the server at {host}:{port} asks for a token (HTTP {e.code}); give the cluster's token file "
                    f"in RAY_AUTH_TOKEN_PATH (`python -m infra.stack env` prints it for the local stack)")
        return _not_ray(host, port, "a Ray dashboard", f"HTTP {e.code} for /api/version")
    except urllib.error.URLError as e:
        return _not_ray(host, port, "a Ray dashboard", f"no HTTP reply: {e.reason}")
    except TimeoutError:
        return _not_ray(host, port, "a Ray dashboard", f"no reply in {timeout:g} s")
    except (OSError, http.client.HTTPException) as e:
        return _not_ray(host, port, "a Ray dashboard", f"no HTTP reply: {type(e).__name__}")
    try:
        version = json.loads(body).get("ray_version")
    except (ValueError, AttributeError):
        version = None
    return None if isinstance(version, str) else _not_ray(host, port, "a Ray dashboard",
                                                         "/api/version names no Ray version")


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
