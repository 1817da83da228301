"""The local stack: a Ray head and an MLflow server, both on 127.0.0.1.

    python -m infra.stack up     [--state DIR] [--mlflow-port 5000] [--ray-port 6379]
                                 [--dashboard-port 8265] [--num-cpus N]
                                 [--backend sqlite|postgres] [--pg-port 5432]
    python -m infra.stack env    [--state DIR]      # `export ...` lines for clients
    python -m infra.stack down   [--state DIR]
    python -m infra.stack status [--state DIR]

Single-machine default: every server listens on 127.0.0.1 (Ray binds to the machine's address
unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is in its environment). A multi-node cluster is
the business of the cluster configs (``infra/cluster/``).

Everything the stack needs is created in its state folder (``--state``, default
``$ATTNLAB_STATE`` or ``~/.attnlab/stack``; ``make demo`` uses ``.stack/`` in the checkout);
nothing is taken from Ray's or MLflow's files in the home folder: Ray's token (token auth stays on) is written to ``<state>/ray_auth_token`` and handed to
every client through ``RAY_AUTH_TOKEN_PATH`` (``env`` prints the exports; ``make demo`` uses
them). Each server runs in its own process group, recorded in the state folder; ``down`` stops
exactly those groups (and any process still naming the stack's Ray temp folder), never other
Ray clusters of the user (``ray stop`` would stop them all).

MLflow runs with one worker and without its job runner (2 processes, ~400 MB instead of 15 and
2.3 GB). Its backend store is a SQLite file in the state folder, or with ``--backend postgres`` a
private PostgreSQL server (Debian's ``postgresql`` package) initialised in the state folder and
listening on 127.0.0.1 only: SQLite under many concurrent writers raises "database is locked".
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_STATE = Path(os.environ.get("ATTNLAB_STATE", "~/.attnlab/stack")).expanduser()
TOKEN_FILE = "ray_auth_token"
PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


class StackError(RuntimeError):
    """A server of the stack could not be started; the message is one line."""


# ---------------------------------------------------------------------------------------------
# environment shared by the servers and their clients
# ---------------------------------------------------------------------------------------------

def ensure_token(state: Path) -> Path:
    """The stack's Ray auth token file (created once, mode 0600)."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / TOKEN_FILE
    if not path.exists() or not path.read_text().strip():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def read_info(state: Path) -> dict | None:
    """The stack's ``stack.json`` (``None`` when there is none); a damaged one is a one-line
    :class:`StackError` that says how to clear it."""
    info = state / "stack.json"
    if not info.exists():
        return None
    try:
        s = json.loads(info.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        s = e
    if not (isinstance(s, dict) and all(isinstance(s.get(k), str) for k in ("mlflow_url", "dashboard_url"))):
        why = f"{type(s).__name__}: {' '.join(str(s).split())[:200]}" if isinstance(s, Exception) else \
            "no mlflow_url/dashboard_url"
        raise StackError(f"{info} is damaged ({why}); clear it with `python -m infra.stack down --state {state}`")
    return s


def state_folder(p, arg: str | None) -> Path:
    """``--state`` (or ``$ATTNLAB_STATE``, else ``~/.attnlab/stack``) as an absolute folder; an
    empty value would be the current folder: ``p.error`` (one line, exit 2)."""
    if arg is None:
        env = os.environ.get("ATTNLAB_STATE")
        if env is not None and not env.strip():
            p.error("ATTNLAB_STATE is set but empty: unset it, or give a folder (or --state DIR)")
        arg = DEFAULT_STATE
    p.refuse_blank("--state", str(arg), "give a folder")  # Path("") is the current folder
    state = Path(arg).expanduser().resolve()
    if state.exists() and not state.is_dir():
        p.error(f"--state {state}: not a folder")
    return state


def client_env(state: Path) -> dict[str, str]:
    """The variables a client of this stack needs (ray job submit, the grid driver, tests)."""
    env = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep Ray on 127.0.0.1
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(ensure_token(state)),
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    s = read_info(state)
    if s is not None:
        env["MLFLOW_TRACKING_URI"] = s["mlflow_url"]
        env["RAY_ADDRESS"] = s["dashboard_url"]
    return env


def local_env(state: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(client_env(state))
    env.pop("RAY_ADDRESS", None)  # a server never joins another cluster
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    # Ray jobs run `python` from the head's PATH: make it this interpreter's.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


# ---------------------------------------------------------------------------------------------
# process groups recorded in the state folder
# ---------------------------------------------------------------------------------------------

def _spawn(state: Path, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    log = open(state / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    from pipeline.procs import start_time

    # a pid and its start time name one process for good; a pid alone can be reused by another
    (state / f"{name}.pid").write_text(f"{proc.pid} {start_time(proc.pid) or ''}".strip())
    return proc


def _recorded_group(state: Path, name: str) -> int | None:
    """The process group the stack recorded as ``name`` (its leader's pid), or None when there is
    none or its leader is gone (a stale file: removed, nothing is signalled).  A file that does
    not hold a process id, or names this process's own group or pid 0/1, is refused in one line:
    signalling it would hit the caller (``killpg(0)`` is the caller's own group) or init."""
    pidfile = state / f"{name}.pid"
    if not pidfile.exists():
        return None
    text = pidfile.read_text(errors="replace").strip()
    parts = text.split()
    if not (1 <= len(parts) <= 2 and all(x.isdigit() for x in parts)):
        raise StackError(f"{pidfile}: not a process id ({text[:40]!r}); if the stack is not running, remove it")
    pgid = int(parts[0])
    if pgid <= 1 or pgid == os.getpgid(0):
        raise StackError(f"{pidfile}: process id {pgid} is not one the stack started (it would signal "
                         f"{'init' if pgid == 1 else 'this command itself'}); if the stack is not running, remove it")
    from pipeline.procs import pid_alive

    if not pid_alive(pgid, parts[1] if len(parts) == 2 else None):
        pidfile.unlink(missing_ok=True)  # that process is gone; its pid may belong to another now
        return None
    return pgid


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _stop_group(state: Path, name: str, grace: float = 15.0) -> None:
    """SIGTERM the group recorded as ``name``; SIGKILL what is left after ``grace`` seconds."""
    pidfile = state / f"{name}.pid"
    pgid = _recorded_group(state, name)
    if pgid is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        t0 = time.time()
        while time.time() - t0 < wait and _group_alive(pgid):
            try:
                os.waitpid(-pgid, os.WNOHANG)  # reap our own children
            except ChildProcessError:
                pass
            time.sleep(0.2)
        if not _group_alive(pgid):
            break
    pidfile.unlink(missing_ok=True)


def _pids_naming(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (e.g. the stack's Ray temp folder)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmdline = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            out.append(int(p.name))
    return out


def _wait_http(url: str, timeout: float, what: str, proc: subprocess.Popen | None = None,
               log: Path | None = None) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise StackError(f"{what} exited with code {proc.returncode}; see {log}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):  # up, and asking for Ray's token: healthy
                return
        except OSError:
            pass
        except ValueError:  # not a URL at all (a damaged stack.json): nothing will ever answer
            raise StackError(f"{what}: {url!r} is not an http:// address") from None
        time.sleep(0.5)
    raise StackError(f"{what} not healthy at {url} after {timeout:.0f}s" + (f"; see {log}" if log else ""))


def free_ports(n: int, avoid: tuple[int, ...] = ()) -> list[int]:
    """``n`` distinct ports of 127.0.0.1 on which nothing listens now, none of them in ``avoid``.

    Each is a port the OS hands out for a bind to port 0; all the sockets stay open until every
    port is chosen, so the OS cannot hand out one port twice (closing each socket before the next
    bind gave two servers the same port, and Ray refused to start)."""
    import socket

    socks: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < n:
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One port of 127.0.0.1 on which nothing listens now (see :func:`free_ports`)."""
    return free_ports(1)[0]


def _wait_port(port: int, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    import socket

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode}; see {log}")
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise StackError(f"{what} not listening on 127.0.0.1:{port} after {timeout:.0f}s; see {log}")


def _port_free(port: int) -> bool:
    """No process listens on ``port`` of 127.0.0.1.  With ``SO_REUSEADDR``, as the servers bind:
    connections of a stack stopped a moment ago linger in TIME_WAIT for a minute and do not stop
    a new server from binding (a plain bind refused, and ``up`` right after ``down`` failed)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# PostgreSQL (optional MLflow backend)
# ---------------------------------------------------------------------------------------------

def _pg_bin(name: str) -> str:
    for d in PG_BINS:
        if (d / name).exists():
            return str(d / name)
    found = shutil.which(name)
    if not found:
        raise StackError(f"PostgreSQL's {name} not found: install the Debian package postgresql "
                         "(make install-services) or use --backend sqlite")
    return found


def _pg_run(cmd: list[str], env: dict[str, str]) -> None:
    pre = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    r = subprocess.run(pre + cmd, env=env, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise StackError(f"{Path(cmd[0]).name} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def start_postgres(state: Path, port: int, timeout: float = 60) -> str:
    """A private PostgreSQL server in ``state/pg`` on 127.0.0.1:``port``; returns its SQLAlchemy URL.

    PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` system user
    (created by the Debian package), and owns its data folder.
    """
    data, sock = state / "pg", state / "pg-sock"
    if os.geteuid() == 0:
        # the server runs as `postgres`, which may not traverse the state folder's parents
        # (pytest's and many home folders are 0700): its folders then live under /tmp,
        # recorded in the state folder so the same database is found again.
        rec = state / "pg_dir"
        if not rec.exists():
            import tempfile

            rec.write_text(tempfile.mkdtemp(prefix="attnlab-pg-"))
        base = Path(rec.read_text().strip())
        base.mkdir(parents=True, exist_ok=True)
        data, sock = base / "pg", base / "sock"
    env = dict(os.environ, LC_ALL="C.UTF-8")
    as_root = os.geteuid() == 0
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        sock.mkdir(parents=True, exist_ok=True)
        if as_root:
            data.parent.chmod(0o711)
            shutil.chown(data, "postgres", "postgres")
            shutil.chown(sock, "postgres", "postgres")
        _pg_run([_pg_bin("initdb"), "-D", str(data), "-U", "attnlab", "--auth=trust", "-E", "UTF8"], env)
    cmd = [_pg_bin("postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(sock),
           "-c", "max_connections=200"]
    if as_root:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    proc = _spawn(state, "postgres", cmd, env)
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise StackError(f"postgres exited with code {proc.returncode}; see {state / 'postgres.log'}")
        r = subprocess.run([_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True)
        if r.returncode == 0:
            break
        time.sleep(0.3)
    else:
        raise StackError(f"postgres not ready on 127.0.0.1:{port} after {timeout:.0f}s")
    r = subprocess.run([_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "attnlab", "-d", "postgres",
                        "-tAc", "SELECT 1 FROM pg_database WHERE datname='mlflow'"], capture_output=True, text=True)
    if r.stdout.strip() != "1":
        subprocess.run([_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "attnlab", "mlflow"],
                       check=True, capture_output=True)
    # +psycopg2: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed
    return f"postgresql+psycopg2://attnlab@127.0.0.1:{port}/mlflow"


# ---------------------------------------------------------------------------------------------
# MLflow and Ray
# ---------------------------------------------------------------------------------------------

def start_mlflow(state: Path, port: int = 5000, backend_uri: str | None = None,
                 artifacts: str | None = None, timeout: float = 120) -> tuple[str, int]:
    state.mkdir(parents=True, exist_ok=True)
    if not _port_free(port):
        raise StackError(f"port {port} on 127.0.0.1 is in use: pass another --mlflow-port")
    backend_uri = backend_uri or f"sqlite:///{state / 'mlflow.db'}"
    cmd = [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_uri,
           "--artifacts-destination", artifacts or str(state / "artifacts"), "--serve-artifacts"]
    proc = _spawn(state, "mlflow", cmd, local_env(state))
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health", timeout, "MLflow server", proc, state / "mlflow.log")
    except StackError:
        _stop_group(state, "mlflow")
        raise
    return url, proc.pid


def stop_mlflow(state: Path) -> None:
    _stop_group(state, "mlflow")


def start_ray(state: Path, port: int = 6379, dashboard_port: int = 8265, num_cpus: int | None = None,
              temp_dir: str | None = None, timeout: float = 120,
              resources: dict[str, float] | None = None) -> tuple[str, str, str]:
    """``ray start --head --block`` in a process group of its own; returns (GCS, dashboard, temp)."""
    if port == dashboard_port:
        raise StackError(f"--ray-port and --dashboard-port are both {port}: each server needs a port of its own")
    state.mkdir(parents=True, exist_ok=True)
    for p, flag in ((port, "--ray-port"), (dashboard_port, "--dashboard-port")):
        if not _port_free(p):
            raise StackError(f"port {p} on 127.0.0.1 is in use: pass another {flag}")
    # Unix socket paths must stay short, so the temp folder is under /tmp, one per head.
    temp_dir = temp_dir or f"/tmp/ray-attnlab-{port}"
    cmd = [_bin("ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
           "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    # The job agent's port: Ray's fixed default would clash between two heads on one machine,
    # and `ray job submit` fails ("No available agent") until the agent listens.
    (agent_port,) = free_ports(1, avoid=(port, dashboard_port))
    cmd.append(f"--dashboard-agent-listen-port={agent_port}")
    if num_cpus:
        cmd.append(f"--num-cpus={num_cpus}")
    if resources:
        cmd.append(f"--resources={json.dumps(resources)}")
    (state / "ray_temp_dir").write_text(temp_dir)
    proc = _spawn(state, "ray", cmd, local_env(state))
    dash = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_http(dash + "/api/version", timeout, "Ray head", proc, state / "ray.log")
        _wait_ray_ready(state, f"127.0.0.1:{port}", timeout, proc)
        _wait_port(agent_port, timeout, "Ray job agent", proc, state / "ray.log")
    except StackError:
        stop_ray(state)
        raise
    return f"127.0.0.1:{port}", dash, temp_dir


def _wait_ray_ready(state: Path, address: str, timeout: float, proc: subprocess.Popen) -> None:
    """The dashboard answers before the raylet registers: wait until the node is alive."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise StackError(f"Ray head exited with code {proc.returncode}; see {state / 'ray.log'}")
        r = subprocess.run([_bin("ray"), "status", f"--address={address}"], env=local_env(state),
                           capture_output=True, text=True, timeout=60)
        if r.returncode == 0 and "Active:" in r.stdout:
            return
        time.sleep(1)
    raise StackError(f"Ray head at {address} not ready after {timeout:.0f}s; see {state / 'ray.log'}")


def stop_ray(state: Path) -> None:
    """Stop this stack's Ray head only: its process group, then stragglers naming its temp folder."""
    _stop_group(state, "ray")
    marker = state / "ray_temp_dir"
    if marker.exists():
        temp = marker.read_text().strip()
        if temp:
            pids = _pids_naming(temp)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        marker.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# the stack
# ---------------------------------------------------------------------------------------------

@dataclass
class Stack:
    state: str
    mlflow_url: str
    ray_address: str
    dashboard_url: str
    mlflow_pid: int
    ray_temp_dir: str
    backend_uri: str


def up(state: Path, mlflow_port: int, ray_port: int, dashboard_port: int, num_cpus: int | None,
       backend: str = "sqlite", pg_port: int = 5432) -> Stack:
    backend_uri = start_postgres(state, pg_port) if backend == "postgres" else None
    try:
        url, pid = start_mlflow(state, mlflow_port, backend_uri)
        address, dash, temp = start_ray(state, ray_port, dashboard_port, num_cpus)
    except Exception:
        down(state)
        raise
    s = Stack(str(state), url, address, dash, pid, temp, backend_uri or f"sqlite:///{state / 'mlflow.db'}")
    (state / "stack.json").write_text(json.dumps(asdict(s), indent=1))
    return s


def down(state: Path) -> None:
    stop_ray(state)
    stop_mlflow(state)
    _stop_group(state, "postgres")
    (state / "stack.json").unlink(missing_ok=True)


def healthy(state: Path) -> bool:
    s = read_info(state)
    if s is None:
        return False
    try:
        _wait_http(s["mlflow_url"] + "/health", 3, "MLflow")
        _wait_http(s["dashboard_url"] + "/api/version", 3, "Ray")
    except StackError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import ArgumentParser, cli_exit, folder_problem

    p = ArgumentParser(prog="python -m infra.stack", description="Local Ray head + MLflow server on 127.0.0.1.")
    p.add_argument("action", choices=["up", "down", "status", "env"])
    p.add_argument("--state", default=None, help=f"state folder (default {DEFAULT_STATE})")
    # the flags of `up` (None: not given; a flag given where it does nothing is refused)
    up_flags = {"mlflow_port": 5000, "ray_port": 6379, "dashboard_port": 8265, "num_cpus": None,
                "backend": "sqlite", "pg_port": 5432}
    p.add_argument("--mlflow-port", type=int, default=None, help="up: default 5000")
    p.add_argument("--ray-port", type=int, default=None, help="up: default 6379")
    p.add_argument("--dashboard-port", type=int, default=None, help="up: default 8265")
    p.add_argument("--num-cpus", type=int, default=None, help="up: CPUs of the Ray head (default: all)")
    p.add_argument("--backend", choices=["sqlite", "postgres"], default=None,
                   help="up: MLflow backend store (default sqlite; postgres: a private server in the state folder)")
    p.add_argument("--pg-port", type=int, default=None, help="up --backend postgres: default 5432")
    a = p.parse_args(argv)
    given = [k for k in up_flags if getattr(a, k) is not None]
    if a.action != "up" and given:
        p.error(f"--{given[0].replace('_', '-')} applies to `up` only, not `{a.action}`")
    if a.pg_port is not None and a.backend != "postgres":
        p.error("--pg-port applies to --backend postgres only")
    for k, default in up_flags.items():
        if getattr(a, k) is None:
            setattr(a, k, default)
    for flag in ("mlflow_port", "ray_port", "dashboard_port", "pg_port"):
        if not 1 <= getattr(a, flag) <= 65535:
            p.error(f"--{flag.replace('_', '-')} must be a port number 1..65535, got {getattr(a, flag)}")
    if a.num_cpus is not None and a.num_cpus < 1:
        p.error(f"--num-cpus must be >= 1, got {a.num_cpus}")
    ports: list[tuple[str, int]] = []
    if a.action == "up":
        ports = [("--mlflow-port", a.mlflow_port), ("--ray-port", a.ray_port), ("--dashboard-port", a.dashboard_port)]
        ports += [("--pg-port", a.pg_port)] if a.backend == "postgres" else []
        for i, (flag, port) in enumerate(ports):
            same = [f for f, q in ports[:i] if q == port]
            if same:
                p.error(f"{same[0]} and {flag} are both {port}: each server needs a port of its own")
    state = state_folder(p, a.state)
    try:
        if a.action == "up":
            problem = folder_problem(state, create=False)
            if problem:
                raise StackError(f"--state {state}: {problem}")
            if healthy(state):
                s = json.loads((state / "stack.json").read_text())
                print(f"stack already up: MLflow {s['mlflow_url']}  Ray {s['dashboard_url']}; state {state}")
                return 0
            down(state)  # whatever is left of an earlier stack in this folder
            for flag, port in ports:  # every port before any server starts or any file is written
                if not _port_free(port):
                    raise StackError(f"port {port} on 127.0.0.1 is in use: pass another {flag}")
            problem = folder_problem(state)
            if problem:
                raise StackError(f"--state {state}: {problem}")
            s = up(state, a.mlflow_port, a.ray_port, a.dashboard_port, a.num_cpus, a.backend, a.pg_port)
            print(f"stack up: MLflow {s.mlflow_url}  Ray {s.dashboard_url} (GCS {s.ray_address}); state {state}")
            print(f"clients: eval \"$(python -m infra.stack env --state {shlex.quote(str(state))})\"")
        elif a.action == "down":
            down(state)
            print("stack down")
        elif a.action == "env":
            if read_info(state) is None:  # exports without RAY_ADDRESS would send a grid to a local Ray
                raise StackError(f"no stack in {state}: start it with `python -m infra.stack up --state {state}`")
            if not healthy(state):  # exports of a dead stack would send a grid to nowhere
                raise StackError(f"the stack in {state} is not running: start it with "
                                 f"`python -m infra.stack up --state {state}`")
            for k, v in client_env(state).items():
                print(f"export {k}={shlex.quote(v)}")
        else:
            print((state / "stack.json").read_text() if healthy(state) else "stack not running")
    except StackError as e:
        cli_exit(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
