"""Tracking tells the truth: flushes, runs that end, early stops, reused names, changed specs,
and more runs than one page of results — against a real MLflow server and a real Ray head."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.tracking import Tracker, ensure_child_runs, find_runs, get_run, metric_history

pytestmark = [pytest.mark.cluster]
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SYN = {"dataset": "synthetic", "batch_size": 16, "workers": 0, "backend": "torch",
       "synthetic": {"num_classes": 3, "image_size": 12, "train_count": 48, "val_count": 24}}


def _env(ray_head, uri):
    env = dict(os.environ, **ray_head["env"])
    env.update({"RAY_ADDRESS": ray_head["address"], "MLFLOW_TRACKING_URI": uri})
    return env


def _spec(tmp_path, name, axes, epochs=1, base_data=None, **top):
    p = tmp_path / f"{name}-{len(list(tmp_path.glob('*.yaml')))}.yaml"
    p.write_text(yaml.safe_dump({"name": name, "base": {"model": {"backbone": "cifar_resnet20"}, "data": base_data or SYN,
                                                        "optim": {"epochs": epochs, "lr": 0.05}, "threads": 1},
                                 "axes": axes, **top}))
    return p


def _grid(spec, storage, env, *extra, timeout=900):
    return subprocess.run([PY, str(ROOT / "experiments" / "grid.py"), "--spec", str(spec), "--storage", str(storage),
                           "--cpus-per-trial", "1", *extra], env=env, capture_output=True, text=True, timeout=timeout)


def test_flush_reaches_a_server_given_only_in_the_config(tmp_path, mlflow_server):
    """The URI only in the config (no MLFLOW_TRACKING_URI); the trial is SIGKILLed one batch after
    its epoch-2 checkpoint: every metric of epochs 1-2 is in MLflow."""
    cfg = {"model": {"backbone": "cifar_resnet20"}, "data": {**SYN, "synthetic": {**SYN["synthetic"], "train_count": 96}},
           "optim": {"epochs": 4, "lr": 0.05}, "threads": 1, "work_dir": str(tmp_path), "checkpoint": {"every": 1},
           "tracking": {"uri": mlflow_server, "experiment": "flush-config-uri"},
           "fault": {"kill_at_epoch": 2, "once_file": str(tmp_path / "once")}}
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    r = subprocess.run([PY, "-m", "pipeline.train", "--config", str(path)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    (run,) = find_runs(mlflow_server, "flush-config-uri", "")
    for key in ("train_loss", "val_top1", "val_loss", "lr", "epoch_time"):
        assert [s for s, _ in metric_history(mlflow_server, run.info.run_id, key)] == [1, 2], key


def test_trial_that_cannot_start_ends_its_run_failed(tmp_path, mlflow_server):
    from pipeline.config import TrialConfig
    from pipeline.train import fit

    pre = Tracker(mlflow_server, "fail-before-train").create_run("made by a grid")
    cfg = TrialConfig.model_validate({
        "model": {"backbone": "cifar_resnet20"}, "work_dir": str(tmp_path),
        "data": {"dataset": "imagefolder", "root": str(tmp_path / "missing"), "backend": "torch"},
        "tracking": {"uri": mlflow_server, "experiment": "fail-before-train", "run_id": pre}})
    with pytest.raises(Exception):
        fit(cfg)
    run = get_run(mlflow_server, pre)
    assert run.info.status == "FAILED"
    assert "missing" in run.data.tags["attnlab.error"]


def test_paging_reads_every_run_and_never_doubles_a_child(mlflow_server):
    t = Tracker(mlflow_server, "paging")
    parent = t.create_run("parent", {"attnlab.grid": "paging"})
    trials = [(f"t{i:03d}", f"trial {i}", {}) for i in range(23)]
    first = ensure_child_runs(mlflow_server, "paging", parent, trials)
    assert len(find_runs(mlflow_server, "paging", f"tags.`mlflow.parentRunId` = '{parent}'", page_size=5)) == 23
    again = ensure_child_runs(mlflow_server, "paging", parent, trials)
    assert again == first
    assert len(find_runs(mlflow_server, "paging", "")) == 24


@pytest.mark.slow
def test_same_name_without_resume_and_resume_after_spec_change(tmp_path, ray_head, mlflow_server):
    env = _env(ray_head, mlflow_server)
    r = _grid(_spec(tmp_path, "again", {"attention": ["se"]}), tmp_path / "s1", env)
    assert r.returncode == 0, r.stderr[-3000:]
    # a new storage folder, same name, no --resume: refused, the old runs untouched
    r = _grid(_spec(tmp_path, "again", {"attention": ["se"]}), tmp_path / "s2", env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "--resume" in line and "--name" in line
    # --resume with a changed spec: the error names what was added and removed
    r = _grid(_spec(tmp_path, "again", {"attention": ["cbam"]}), tmp_path / "s1", env, "--resume")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "1 trial(s) added" in line and "1 removed" in line
    assert len(find_runs(mlflow_server, "again", "")) == 3  # parent, se, its baseline


@pytest.mark.slow
def test_asha_stopped_trials_are_finished_tagged_and_kept_apart(tmp_path, ray_head, mlflow_server):
    # digits at 16 px: lr 0.1 is well above chance after two epochs, lr ~1e-6 stays at it, so
    # ASHA (a rung at epoch 2, keeps the top quarter) must stop the trials that come last
    spec = _spec(tmp_path, "asha", {"attention": ["none"], "optim.lr": [0.1, 1.0e-6, 2.0e-6, 3.0e-6]}, epochs=4,
                 base_data={"dataset": "digits", "batch_size": 64, "workers": 0, "backend": "torch",
                            "train_res": 16, "val_res": 16})
    r = _grid(spec, tmp_path / "st", _env(ray_head, mlflow_server), "--scheduler", "asha", "--grace-period", "2",
              "--max-concurrent", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    kids = [k for k in find_runs(mlflow_server, "asha", "") if "mlflow.parentRunId" in k.data.tags]
    assert len(kids) == 4 and all(k.info.status == "FINISHED" for k in kids), \
        [(k.info.run_name, k.info.status, k.data.tags.get("attnlab.status"), k.data.tags.get("attnlab.error")) for k in kids]
    stopped = [k for k in kids if k.data.tags["attnlab.status"] == "stopped_early"]
    done = [k for k in kids if k.data.tags["attnlab.status"] == "finished"]
    assert stopped and done and len(stopped) + len(done) == 4
    for k in stopped:
        assert len(metric_history(mlflow_server, k.info.run_id, "val_top1")) < 4
    assert "stopped early by the scheduler" in r.stdout
