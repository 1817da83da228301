"""pipeline.procs: whether the process behind a recorded pid (and start time) still runs."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from pipeline.procs import pid_alive, start_time


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_running_process_is_alive_with_and_without_its_start_time():
    p = _sleeper()
    try:
        started = start_time(p.pid)
        assert started is not None and started.isdigit()
        assert pid_alive(p.pid)
        assert pid_alive(p.pid, started)
        assert not pid_alive(p.pid, str(int(started) + 1))  # same pid, another process
    finally:
        p.kill()
        p.wait()


def test_an_exited_process_is_gone_reaped_or_not():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while start_time(p.pid) is not None and time.time() < deadline:  # until it is a zombie
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    assert not pid_alive(p.pid)  # exited, not yet reaped
    p.wait()
    assert not pid_alive(p.pid)
    assert start_time(p.pid) is None


def test_this_process_and_another_users_count_as_running():
    assert pid_alive(os.getpid(), start_time(os.getpid()))
    assert pid_alive(1)  # init: signalling it may be refused, it runs all the same
