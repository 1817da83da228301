"""The grid report: verdict rules, and a report from a small REAL grid (digits, ResNet-20,
1 epoch, 4 trials) run through experiments/grid.py on a local Ray, tracked by a real MLflow
server."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments.report import Interval, t_interval, verdict_delta, verdict_value

ROOT = Path(__file__).resolve().parents[1]
GRID = "report-digits"


# ---------------------------------------------------------------------------------------------
# verdict rules (no servers)
# ---------------------------------------------------------------------------------------------

def test_t_interval_matches_scipy():
    from scipy import stats

    v = [1.0, 2.0, 4.0]
    ci = t_interval(v)
    lo, hi = stats.t.interval(0.95, 2, loc=sum(v) / 3, scale=stats.sem(v))
    assert ci.n == 3 and ci.lo == pytest.approx(lo) and ci.hi == pytest.approx(hi)
    assert t_interval([3.0]).lo is None and t_interval([]).mean is None
    assert "n=3" in ci.text() and "95% t" in ci.text()


@pytest.mark.parametrize("lo,hi,d,op,want", [
    (0.5, 2.0, 1.37, ">=", "reproduced"),      # positive, 1.37 within reach
    (0.1, 0.9, 1.37, ">=", "contradicted"),    # the whole interval is below the claimed gain
    (-0.5, 2.0, 1.37, ">=", "inconclusive"),   # could be nothing
    (2.0, 3.0, 1.37, ">=", "reproduced"),      # a larger gain still satisfies ">="
    (2.0, 3.0, 1.37, "==", "contradicted"),    # but not "=="
    (0.1, 1.0, 2.2, "<=", "reproduced"),       # "up to 2.2"
    (2.5, 3.0, 2.2, "<=", "contradicted"),
    (-2.0, -1.0, -1.51, "==", "reproduced"),
    (-0.3, 0.2, -0.14, "==", "inconclusive"),
    (0.2, 1.0, None, ">", "reproduced"),       # direction
    (-1.0, -0.2, None, ">", "contradicted"),
    (-1.0, 0.5, None, ">", "inconclusive"),
])
def test_verdict_rules(lo, hi, d, op, want):
    assert verdict_delta(Interval(3, (lo + hi) / 2, 1.0, lo, hi), d, op)[0] == want


def test_verdict_needs_two_seeds():
    assert verdict_delta(Interval(1, 2.0, None, None, None), 1.0, ">=") == \
        ("inconclusive", "n=1 paired seed(s): no interval")
    assert verdict_value(t_interval([76.5, 76.7, 76.6]), 76.61, 0)[0] == "reproduced"
    assert verdict_value(t_interval([70.5, 70.7, 70.6]), 76.61, 0)[0] == "contradicted"


# ---------------------------------------------------------------------------------------------
# a real grid, shared with tests/test_mlflow_ui.py
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def small_grid(tmp_path_factory, mlflow_server):
    """4 trials: baseline, SPA k=0.25 and 0.5, Gaussian r=1 (stage 1), 1 epoch on digits."""
    from pipeline.tracking import grid_runs

    d = tmp_path_factory.mktemp("small-grid")
    parent, kids = grid_runs(mlflow_server, GRID)  # already run in this session (another test file)
    if parent is not None and sum(k.data.tags.get("attnlab.status") == "finished" for k in kids) == 4:
        return {"name": GRID, "uri": mlflow_server, "dir": d}
    spec = {"name": GRID,
            "base": {"model": {"backbone": "cifar_resnet20"},
                     "data": {"dataset": "digits", "batch_size": 64, "workers": 0, "backend": "torch"},
                     "optim": {"epochs": 1, "lr": 0.05}, "threads": 1, "checkpoint": {"every": 1}},
            "axes": {"attention": ["none", "spa", "gaussian"], "stages": [[1]], "topk_ratio": [0.25, 0.5],
                     "radius": [1.0]},
            "seeds": 1}
    path = d / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)  # the grid starts its own local Ray on 127.0.0.1
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "grid.py"), "--spec", str(path),
                        "--storage", str(d / "storage"), "--max-concurrent", "2"],
                       env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return {"name": GRID, "uri": mlflow_server, "dir": d}


def report(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "experiments.report", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout,
                          env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"))


@pytest.mark.cluster
@pytest.mark.slow
def test_report_from_a_real_grid(small_grid, tmp_path):
    from PIL import Image

    from pipeline.tracking import grid_runs, list_artifacts

    out = tmp_path / "report"
    r = report("--grid", GRID, "--tracking-uri", small_grid["uri"], "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"report: {out / 'report.md'}" in r.stdout
    assert f"MLflow: {small_grid['uri']}/#/experiments/" in r.stdout and "workflowType=machine_learning" in r.stdout

    md = (out / "report.md").read_text()
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    pngs = ["topk_ratio.png", "gaussian_radius.png", "stage_block_heatmap.png", "accuracy_vs_gmacs.png"]
    for name in pngs:
        with Image.open(out / name) as im:
            im.load()  # decodes
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 100
        assert "![" in md and f"]({name})" in md
    # the point rows, with n stated
    for point in ("resnet20 baseline", "resnet20 spa@s1 k=0.25", "resnet20 spa@s1 k=0.5", "resnet20 gaussian@s1 r=1.0"):
        assert f"| {point} |" in md, point
    assert "(n=1, no interval)" in md
    assert "**Scale of this grid:** dataset digits; backbone cifar_resnet20; 1 epoch(s)" in md
    # a claim on ImageNet, checked with a digits grid: not run at this scale, and says why
    row = next(line for line in md.splitlines() if line.startswith("| gaussian.imagenet.vs-resnet |"))
    assert "| not run at this scale | dataset imagenet vs digits |" in row and "verified" in row
    # SPA vs non-local needs non-local runs: not claimed to bear on this grid
    assert "spanet.cifar100.beats-nonlocal" not in md

    parent, kids = grid_runs(small_grid["uri"], GRID)
    assert len(kids) == 4
    arts = set(list_artifacts(small_grid["uri"], parent.info.run_id))
    assert {"report/report.md", "report/report.html", "report/report.json"} | {f"report/{p}" for p in pngs} <= arts


@pytest.mark.cluster
def test_report_bad_input_is_one_line_exit_2(mlflow_server, tmp_path):
    r = report("--grid", "no-such-grid", "--tracking-uri", mlflow_server, "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.startswith("error: unknown grid 'no-such-grid'") and r.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()  # the output folder is made only once every check passed

    r = report("--grid", GRID, "--tracking-uri", "http://127.0.0.1:9", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "is not reachable" in r.stderr and r.stderr.count("\n") == 1, r.stderr

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = report("--grid", GRID, "--tracking-uri", mlflow_server, "--out", str(blocker / "sub"))
    assert r.returncode == 2 and "cannot be created" in r.stderr and r.stderr.count("\n") == 1, r.stderr

    r = report("--grid", GRID, "--tracking-uri", f"sqlite:///{tmp_path}/missing.db", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no MLflow database" in r.stderr, r.stderr
