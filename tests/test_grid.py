"""The main job end to end: specs → Ray Tune on a real head → MLflow parent/child runs.

Reliability: a trial that raises once, a trial whose worker is SIGKILLed mid-epoch, a driver
killed mid-grid and resumed, a diverging trial — each ends with one MLflow run per trial and a
complete metric history.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from pipeline.tracking import find_runs, list_artifacts, metric_history

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
DATA = {"dataset": "synthetic", "synthetic": {"num_classes": 3, "image_size": 12, "train_count": 48, "val_count": 24},
        "batch_size": 16, "workers": 0, "backend": "torch"}


def write_spec(tmp_path, name, axes, epochs=2, seeds=1, baseline=True, **base):
    tree = {"name": name, "baseline": baseline,
            "base": {"model": {"backbone": "cifar_resnet20"}, "data": DATA, "optim": {"epochs": epochs, "lr": 0.05},
                     "threads": 1, "checkpoint": {"every": 1}, **base},
            "axes": axes, "seeds": seeds}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(tree))
    return p


def grid_env(ray_head, mlflow_server):
    env = dict(os.environ)
    env.update(ray_head["env"])
    env.update({"RAY_ADDRESS": ray_head["address"], "MLFLOW_TRACKING_URI": mlflow_server})
    return env


def run_grid(spec, tmp_path, env, *extra, timeout=900):
    cmd = [sys.executable, str(ROOT / "experiments" / "grid.py"), "--spec", str(spec),
           "--storage", str(tmp_path / "storage"), "--cpus-per-trial", "1", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def children(uri, experiment):
    runs = find_runs(uri, experiment, "")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, kids


def test_ray_job_submit_smoke_with_divergence(tmp_path, ray_head, mlflow_server):
    spec = write_spec(tmp_path, "jobsmoke", {"attention": ["none", "se"], "optim.lr": [0.05, 1.0e8]})
    env = dict(os.environ, **ray_head["env"])
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_DISABLE_TELEMETRY": "true"}})
    r = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_head["dashboard"],
                        "--working-dir", str(ROOT), "--runtime-env-json", runtime_env, "--",
                        "python", "experiments/grid.py", "--spec", str(spec), "--storage", str(tmp_path / "storage")],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "succeeded" in (r.stdout + r.stderr).lower()
    (parent,), kids = children(mlflow_server, "jobsmoke")
    assert len(kids) == 4 and all(k.data.tags["mlflow.parentRunId"] == parent.info.run_id for k in kids)
    status = sorted(k.data.tags["attnlab.status"] for k in kids)
    assert status == ["diverged", "diverged", "finished", "finished"]
    arts = list_artifacts(mlflow_server, parent.info.run_id)
    assert {"spec.yaml", "expansion.jsonl", "summary.md", "summary.json"} <= set(arts)
    assert parent.info.status == "FINISHED"
    assert "Δ vs same-seed baseline" in r.stdout


@pytest.mark.parametrize("fault", ["raise_at_epoch", "kill_at_epoch"])
def test_failed_trial_resumes_from_checkpoint_one_run(tmp_path, ray_head, mlflow_server, fault):
    name = f"retry-{fault.split('_')[0]}"
    spec = write_spec(tmp_path, name, {"attention": ["se"]}, epochs=3, baseline=False,
                      fault={fault: 1, "once_file": str(tmp_path / "fault.once")})
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("attnlab-*")) | set(temp.glob("checkpoint_tmp_*"))
    r = run_grid(spec, tmp_path, grid_env(ray_head, mlflow_server))
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert (tmp_path / "fault.once").exists()  # the fault did fire
    _, kids = children(mlflow_server, name)
    assert len(kids) == 1 and kids[0].data.tags["attnlab.status"] == "finished"
    for key in ("train_loss", "val_top1", "lr"):
        assert [s for s, _ in metric_history(mlflow_server, kids[0].info.run_id, key)] == [1, 2, 3]
    # the node keeps no checkpoint folder of a trial process that is gone: the failed attempt's
    # (killed: swept by the retry; raised: removed on the way out) nor the finished one's, nor
    # the copy of the checkpoint the retry resumed from (Ray's checkpoint_tmp_*), nor the trial's
    # scratch work folder (a killed attempt leaves it; the retry, same trial id, removes it)
    from pipeline.tune import orphaned_staging

    assert orphaned_staging() == []
    new = {p.name for p in (set(temp.glob("attnlab-*")) | set(temp.glob("checkpoint_tmp_*"))) - before}
    left = new - {p.name for p in temp.glob("attnlab-ckpt-*")}  # of live processes, if any
    assert left == set(), left


def test_driver_killed_then_resume(tmp_path, ray_head, mlflow_server):
    epochs = 4  # the grid must still be running when the test sees its first finished trial
    spec = write_spec(tmp_path, "resume", {"attention": ["none", "se", "ssa"]}, epochs=epochs)
    env = grid_env(ray_head, mlflow_server)
    cmd = [sys.executable, str(ROOT / "experiments" / "grid.py"), "--spec", str(spec),
           "--storage", str(tmp_path / "storage"), "--max-concurrent", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    first = None
    while time.time() < deadline and first is None:
        time.sleep(0.5)
        _, kids = children(mlflow_server, "resume")
        done = [k for k in kids if k.info.status == "FINISHED"]
        first = done[0] if done else None
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    assert first is not None
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started locally
    proc.wait()
    history_before = metric_history(mlflow_server, first.info.run_id, "epoch_time")

    r = run_grid(spec, tmp_path, env, "--resume")
    errors = {str(f.relative_to(tmp_path)): f.read_text()[-2000:] for f in (tmp_path / "storage").rglob("error.txt")}
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:], errors)  # with the failed trials' errors
    parents, kids = children(mlflow_server, "resume")
    assert len(parents) == 1 and len(kids) == 3  # still one run per trial
    assert all(k.data.tags["attnlab.status"] == "finished" for k in kids)
    for k in kids:
        assert [s for s, _ in metric_history(mlflow_server, k.info.run_id, "val_top1")] == list(range(1, epochs + 1))
    # the trial that had finished was not trained again
    assert metric_history(mlflow_server, first.info.run_id, "epoch_time") == history_before


def test_rerun_without_resume_refuses(tmp_path):
    spec = write_spec(tmp_path, "again", {"attention": ["se"]})
    (tmp_path / "storage" / "again").mkdir(parents=True)
    r = run_grid(spec, tmp_path, dict(os.environ))
    assert r.returncode == 2 and "--resume" in r.stderr


def test_sweep_removes_only_dead_processes_checkpoint_folders(tmp_path):
    """A trial process that Tune stops, or that is killed, leaves its node-local checkpoint
    folder (a full checkpoint each); the next trial's sweep removes those of processes that are
    gone and nothing else."""
    from pipeline.tune import STAGING_PREFIX, sweep_staging

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"{STAGING_PREFIX}{gone.pid}-t1-abc"
    live = tmp_path / f"{STAGING_PREFIX}{os.getpid()}-t2-abc"
    other = [tmp_path / f"{STAGING_PREFIX}report-xyz", tmp_path / f"attnlab-{gone.pid}-t3", tmp_path / "keep"]
    for d in (dead, live, *other):
        d.mkdir()
        (d / "last.pt").write_bytes(b"x")
    assert sweep_staging(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and all(d.exists() for d in other)
