"""The local stack on a fresh machine: an empty home folder, its own Ray token, own-process stop."""
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_ports

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def _listening_addresses(ports: set[int]) -> set[str]:
    """Local addresses of listening TCP sockets on ``ports`` (from /proc/net/tcp{,6})."""
    out = set()
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, port = local.split(":")
            if state == "0A" and int(port, 16) in ports:  # 0A = LISTEN
                out.add(addr)
    return out


def _pids_naming(text: str) -> list[int]:
    from infra.stack import _pids_naming as f

    return f(text)


def test_stack_on_an_empty_home_then_down_spares_other_clusters(tmp_path, ray_head):
    home, state = tmp_path / "home", tmp_path / "state"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_TRACKING"))}
    env["HOME"] = str(home)
    ports = dict(zip(("--mlflow-port", "--ray-port", "--dashboard-port"), free_ports(3)))
    args = [f"{k}={v}" for k, v in ports.items()]
    py = sys.executable
    up = subprocess.run([py, "-m", "infra.stack", "up", "--state", str(state), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        token = state / "ray_auth_token"
        assert token.exists() and stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) >= 32
        # every server of the stack listens on 127.0.0.1 only (0100007F is 127.0.0.1 in /proc)
        addrs = _listening_addresses(set(ports.values()))
        assert addrs and all(a.endswith("0100007F") for a in addrs), addrs
        job = subprocess.run([py, "-m", "infra.submit", "--state", str(state), "--", "python", "-c",
                              "import os; print('COMMIT', os.environ['ATTNLAB_GIT_COMMIT'])"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
        commit = [ln for ln in job.stdout.splitlines() if ln.startswith("COMMIT ")][0].split()[1]
        assert commit != "unknown" and len(commit.split("-")[0]) == 40
        # nothing was written to the home folder: the token lives in the stack's state folder
        assert not (home / ".ray").exists()
    finally:
        down = subprocess.run([py, "-m", "infra.stack", "down", "--state", str(state)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert _pids_naming(f"ray-attnlab-{ports['--ray-port']}") == []
    shutil.rmtree(f"/tmp/ray-attnlab-{ports['--ray-port']}", ignore_errors=True)  # the head's logs
    assert not _listening_addresses(set(ports.values()))
    # the other Ray cluster (the session's head) is untouched
    st = subprocess.run([str(Path(py).parent / "ray"), "status", f"--address={ray_head['address']}"],
                        env={**os.environ, **ray_head["env"]}, capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and "Active:" in st.stdout, st.stderr[-1000:]


@pytest.mark.parametrize("flag", ["--mlflow-port", "--ray-port", "--dashboard-port"])
def test_stack_refuses_a_port_in_use_in_one_line(tmp_path, flag):
    """Every port is checked before any server starts and before the state folder is made (a
    busy Ray port was found only after the MLflow server had been spawned)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        others = dict(zip([f for f in ("--mlflow-port", "--ray-port", "--dashboard-port") if f != flag],
                          free_ports(2, avoid=(busy,))))
        r = subprocess.run([sys.executable, "-m", "infra.stack", "up", "--state", str(tmp_path / "st" / "nested"),
                            f"{flag}={busy}", *[f"{f}={v}" for f, v in others.items()]],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and f"port {busy}" in r.stderr and flag in r.stderr, r.stderr
    assert not (tmp_path / "st").exists()


def test_a_port_left_in_time_wait_by_a_stopped_server_counts_as_free():
    """``up`` right after ``down``: the stopped server's side of its connections sits in TIME_WAIT
    for a minute.  Servers bind over that (SO_REUSEADDR); the port check must agree, and still
    refuse a port somebody listens on."""
    import socket

    from infra.stack import _port_free

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    assert not _port_free(port)  # listening
    conn.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
    server.close()
    client.close()
    with socket.socket() as plain:  # what the check did before: a bind without SO_REUSEADDR
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    assert _port_free(port)


@pytest.mark.parametrize("args,needle", [
    (["up", "--state", "{afile}"], "not a folder"),
    (["status", "--state", "{afile}"], "not a folder"),
    (["up", "--state", "{afile}/stack"], "cannot be created"),
    (["up", "--mlflow-port", "0"], "--mlflow-port must be a port number 1..65535"),
    (["up", "--ray-port", "70000"], "--ray-port must be a port number 1..65535"),
    (["up", "--num-cpus", "0"], "--num-cpus must be >= 1"),
    # flags that do nothing where they are given (they were ignored)
    (["up", "--pg-port", "5433"], "--pg-port applies to --backend postgres only"),
    (["status", "--num-cpus", "4"], "--num-cpus applies to `up` only, not `status`"),
    (["down", "--ray-port", "7000"], "--ray-port applies to `up` only, not `down`"),
    (["env", "--backend", "postgres"], "--backend applies to `up` only, not `env`"),
])
def test_stack_bad_flags_are_one_line_and_start_nothing(tmp_path, args, needle):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    argv = [a.format(afile=afile) for a in args]
    if "--state" not in argv:
        argv += ["--state", str(tmp_path / "state")]
    r = subprocess.run([sys.executable, "-m", "infra.stack", *argv], capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env=dict(os.environ, HOME=str(tmp_path / "home")))
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert afile.read_text() == "keep me" and not (tmp_path / "state").exists()


@pytest.mark.parametrize("content,needle", [("abc", "not a process id"), ("0", "would signal this command"),
                                            ("1", "would signal init"), ("", "not a process id")])
def test_down_refuses_a_pid_file_it_did_not_write(tmp_path, content, needle):
    """``down`` signals the process groups named in the state folder's pid files: a damaged file
    is one line, and pid 0 (``killpg(0)`` is the caller's own group) or 1 is never signalled."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "mlflow.pid").write_text(content)
    # in a session of its own: were the caller's group signalled, the shell would die with it
    r = subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)} -m infra.stack down --state "
                                      f"{shlex.quote(str(state))}; echo survived $?"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert r.stdout.split() == ["survived", "2"], (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "mlflow.pid" in lines[0], r.stderr


def test_down_skips_a_stale_pid_whose_process_is_another(tmp_path):
    """A pid file whose process has exited, its pid now another program's (same pid, another
    start time): that program is not signalled, the stale file goes."""
    state = tmp_path / "state"
    state.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (state / "mlflow.pid").write_text(f"{other.pid} 1")  # started at tick 1: not this process
        r = subprocess.run([sys.executable, "-m", "infra.stack", "down", "--state", str(state)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert other.poll() is None  # still running
        assert not (state / "mlflow.pid").exists()
    finally:
        other.kill()
        other.wait()


def test_env_of_a_stopped_stack_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "stack.json").write_text(json.dumps({
        "state": str(state), "mlflow_url": "http://127.0.0.1:9", "ray_address": "127.0.0.1:9",
        "dashboard_url": "http://127.0.0.1:9", "mlflow_pid": 999999, "ray_temp_dir": "/nonexistent",
        "backend_uri": f"sqlite:///{state / 'mlflow.db'}"}))
    r = subprocess.run([sys.executable, "-m", "infra.stack", "env", "--state", str(state)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not running" in r.stderr and not r.stdout, (r.stdout, r.stderr)
    assert not (state / "ray_auth_token").exists()


def test_ray_address_check_accepts_a_real_ray_head_and_its_dashboard(ray_head, monkeypatch):
    """The pre-flight's handshake checks pass against a real Ray head with token auth: its GCS
    (HTTP/2 preface) and its dashboard (/api/version, with the stack's token; without the token
    it is one line naming RAY_AUTH_TOKEN_PATH, the run would fail there)."""
    from pipeline.preflight import ray_address_problem

    for k in [k for k in os.environ if k.startswith("RAY_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.ray/auth_token
    for k, v in ray_head["env"].items():
        monkeypatch.setenv(k, v)
    assert ray_address_problem(ray_head["address"]) is None
    assert ray_address_problem(ray_head["dashboard"]) is None
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    problem = ray_address_problem(ray_head["dashboard"])
    assert problem is not None and "asks for a token (HTTP 401)" in problem and "RAY_AUTH_TOKEN_PATH" in problem
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    assert "refused the Ray token" in ray_address_problem(ray_head["dashboard"])
