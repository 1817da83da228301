"""The writer's folder lock: gone after every failure, stale ones taken over, live ones waited for.

(The FFCV-format write with corrupt JPEGs is in ``tests/test_data_ffcv.py``; here the JPEG-copy
format, which needs no FFCV, and the lock itself.)
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from _data_makers import make_imagefolder
from pipeline.data import store
from pipeline.procs import start_time
from pipeline.data.__main__ import main as cli

ROOT = Path(__file__).resolve().parents[1]


def corrupt_folder(tmp_path: Path) -> tuple[Path, Path]:
    root = make_imagefolder(tmp_path / "if")
    bad = root / "train" / "emu" / "emu_002.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    return root, bad


def test_failed_write_removes_its_lock_and_the_folder_it_created(tmp_path, capsys):
    root, bad = corrupt_folder(tmp_path)
    out = tmp_path / "copy"
    with pytest.raises(SystemExit) as e:
        cli(["write", "imagefolder", "--root", str(root), "--out", str(out), "--quiet",
             "--workers", "1", "--format", "jpeg"])
    assert e.value.code == 2 and str(bad) in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()  # an existing folder is kept, and left without a lock
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        cli(["write", "imagefolder", "--root", str(root), "--out", str(out), "--quiet",
             "--workers", "1", "--format", "jpeg"])
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    bad.unlink()  # fixed: the next write goes through
    assert cli(["write", "imagefolder", "--root", str(root), "--out", str(out), "--quiet",
                "--workers", "1", "--format", "jpeg"]) == 0
    assert (out / "manifest.json").is_file() and not (out / ".lock").exists()


def test_sigterm_mid_write_leaves_no_lock(tmp_path):
    """A CLI write stopped with SIGTERM (a scheduler's kill) unwinds like an error."""
    root = make_imagefolder(tmp_path / "if", train_per_class=150, val_per_class=2,
                            sizes=((400, 500),))
    out = tmp_path / "copy"
    p = subprocess.Popen([sys.executable, "-m", "pipeline.data", "write", "imagefolder",
                          "--root", str(root), "--out", str(out), "--format", "jpeg",
                          "--workers", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / ".lock").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert (out / ".lock").exists(), "the writer never took the lock"
    p.terminate()
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "Traceback" not in err
    assert not out.exists() or [x.name for x in out.iterdir()] == []


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_lock_of_a_killed_writer_is_taken_over(tmp_path, capsys):
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / store.LOCK).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(),
                                                 "started": "1"}))
    t0 = time.time()
    with store.folder_lock(folder):
        mine = json.loads((folder / store.LOCK).read_text())
        assert mine["pid"] == os.getpid()
    assert time.time() - t0 < 10
    assert "stale lock" in capsys.readouterr().out
    assert not (folder / store.LOCK).exists()


def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()  # our own pid, but a different start time: the writer was someone else
    (folder / store.LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                 "started": "-1"}))
    with store.folder_lock(folder, quiet=True):
        pass
    assert not (folder / store.LOCK).exists()


def test_a_live_writer_is_waited_for(tmp_path, capsys):
    folder = tmp_path / "b"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder).mkdir()
        (folder / store.LOCK).write_text(json.dumps({
            "pid": holder.pid, "host": socket.gethostname(),
            "started": start_time(holder.pid)}))
        got = threading.Event()

        def take():
            with store.folder_lock(folder):
                got.set()

        t = threading.Thread(target=take, daemon=True)
        t.start()
        time.sleep(1.5)
        assert not got.is_set()  # still held by a live process
        assert f"pid {holder.pid}" in capsys.readouterr().out
        holder.kill()
        holder.wait()
        t.join(timeout=20)
        assert got.is_set()  # its owner died: the lock was taken over
    finally:
        holder.kill()
    assert not (folder / store.LOCK).exists()


def test_two_writers_into_one_folder_take_turns(tmp_path):
    folder = tmp_path / "b"
    inside, overlaps = [0], []

    def work():
        for _ in range(5):
            with store.folder_lock(folder, quiet=True):
                inside[0] += 1
                overlaps.append(inside[0])
                time.sleep(0.01)
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert max(overlaps) == 1 and len(overlaps) == 15
    shutil.rmtree(folder, ignore_errors=True)
