"""The benchmark scripts still run: the CPU (small) mode of benchmarks/train_throughput.py, and
the block benchmarks as modules (``python -m benchmarks.<name>``, no ``sys.path`` edits)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import blocks

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), "--size", "small", "--threads", "1", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_train_throughput_small_has_a_row_per_block():
    r = _run()
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in r.stdout.splitlines() if line.startswith("| ")}
    expected = ["baseline", *blocks.names("stage"), *blocks.names("model")]
    for name in expected:
        assert name in rows, f"no row for {name}:\n{r.stdout}"
        cells = [c.strip() for c in rows[name].split("|")]
        assert cells[-2] == "ok", rows[name]
        assert float(cells[6]) > 0 and float(cells[8]) > 0, rows[name]  # images/s, peak MB
    assert rows["baseline"].split("|")[5].strip() == "1.000"  # × GMACs of the baseline itself


@pytest.mark.slow
def test_train_throughput_json():
    r = _run("--only", "se", "--no-model-level", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["settings"]["size"] == "small" and out["settings"]["device"] == "cpu"
    assert [row["attention"] for row in out["rows"]] == ["none", "se"]
    se = out["rows"][1]
    assert se["status"] == "ok" and se["images_per_s"] > 0 and se["peak_mb"] > 0
    assert se["gmacs_x"] >= 1.0 and se["placement"] == "gate, stages 1,2,3"


# --- block benchmarks: benchmarks/block_speed.py, spa_memory.py, cost_table.py -----------------

def _run_module(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_no_benchmark_module_shadows_the_blocks_package():
    assert not (ROOT / "benchmarks" / "blocks.py").exists()
    assert (ROOT / "benchmarks" / "__init__.py").exists()


@pytest.mark.slow
def test_block_speed_json_small():
    r = _run_module("block_speed", "--sizes", "small", "--repeats", "1", "--threads", "1",
                    "--only", "spa,two 1×1", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["label"]: row for row in json.loads(r.stdout)}
    assert {"spa", "nonlocal (sub-sampled)", "two 1×1 convs C→C'→C"} <= set(rows)
    for label in ("spa", "nonlocal (sub-sampled)"):
        row = rows[label]
        assert row["status"] == "ok" and row["time_ms"] > 0 and row["peak_mib"] > 0, row


@pytest.mark.slow
def test_spa_memory_at_56x56_stays_under_a_third_of_subsampled_nonlocal():
    """The issue's target: spa's fwd+bwd peak ≤ 0.35× sub-sampled non-local (batch 8, C=256)."""
    r = _run_module("spa_memory", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["spa_auto_form"] == "folded"
    rows = out["rows"]
    assert rows["spa (topk_ratio=0.25, default)"]["x_nonlocal_sub"] <= 0.35
    assert rows["nonlocal (subsample=True)"]["x_nonlocal_sub"] == 1.0
