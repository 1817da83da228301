"""A multi-worker trial: ``workers_per_trial: 2`` runs one trial as a Ray Train TorchTrainer (DDP,
gloo on CPU) inside Tune — one MLflow run with the usual metric names, resumed from its
checkpoint after a failure. Real Ray head, real MLflow server."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.tracking import find_runs, metric_history

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def test_ddp_trial_one_run_same_metrics_resumes(tmp_path, ray_head, mlflow_server):
    spec = tmp_path / "ddp.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "ddp", "baseline": False,
        "base": {"model": {"backbone": "cifar_resnet20"}, "workers_per_trial": 2, "threads": 1,
                 "data": {"dataset": "synthetic", "batch_size": 8, "workers": 0, "backend": "torch",
                          "synthetic": {"num_classes": 3, "image_size": 12, "train_count": 64, "val_count": 24}},
                 "optim": {"epochs": 3, "lr": 0.05}, "checkpoint": {"every": 1},
                 "fault": {"raise_at_epoch": 1, "once_file": str(tmp_path / "fault.once")}},
        "axes": {"attention": ["se"]}}))
    env = dict(os.environ, **ray_head["env"], RAY_ADDRESS=ray_head["address"], MLFLOW_TRACKING_URI=mlflow_server)
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "grid.py"), "--spec", str(spec), "--storage",
                        str(tmp_path / "storage"), "--cpus-per-trial", "0.5"], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert (tmp_path / "fault.once").exists()  # the failure did happen, and the trial was retried
    kids = [k for k in find_runs(mlflow_server, "ddp", "") if "mlflow.parentRunId" in k.data.tags]
    assert len(kids) == 1
    (k,) = kids
    assert k.info.status == "FINISHED" and k.data.tags["attnlab.status"] == "finished"
    assert {"train_loss", "val_top1", "val_top5", "val_loss", "lr", "images_per_s", "best_top1"} <= set(k.data.metrics)
    for key in ("train_loss", "val_top1", "lr"):
        assert [s for s, _ in metric_history(mlflow_server, k.info.run_id, key)] == [1, 2, 3], key
    assert k.data.params["workers_per_trial"] == "2"
