"""Is a process that wrote a lock, a pid file or a scratch folder still running?

A pid alone does not name a process for good: the kernel hands it to another process once the
first is gone.  Whoever records a pid to look at later records its start time as well
(:func:`start_time`), and :func:`pid_alive` checks both.
"""
from __future__ import annotations

import os
from typing import Optional


def _stat_fields(pid: int) -> Optional[list[str]]:
    """The fields of /proc/PID/stat after the command name (field 3, the state, first), or None
    where the file cannot be read (the process is gone, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # the name may hold spaces and ')'
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux /proc), or None where it cannot
    be read."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def pid_alive(pid: int, started: Optional[str] = None) -> bool:
    """True while process ``pid`` runs: it exists, is not a zombie (exited, not yet reaped) and,
    when ``started`` (a :func:`start_time`) is given, is the process that had that start time.
    Another user's process counts as running.  Without /proc (not Linux) only the pid is checked."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, someone else's
    fields = _stat_fields(pid)
    if fields is None:
        return not os.path.isdir("/proc/self")  # gone since the signal, unless there is no /proc
    if fields[0] == "Z":
        return False
    return started is None or len(fields) <= 19 or fields[19] == started
