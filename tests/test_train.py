"""The trainer and its MLflow record, against a real MLflow server on 127.0.0.1."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_trial_config
from pipeline.tracking import get_run, list_artifacts, metric_history
from pipeline.train import fit

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
SMALL = {"dataset": "synthetic", "synthetic": {"num_classes": 4, "image_size": 16, "train_count": 96, "val_count": 32},
         "batch_size": 32, "workers": 0, "backend": "torch"}


def trial(tmp_path, uri, experiment, **over):
    tree = {"model": {"backbone": "cifar_resnet20", "attention": {"kind": "spa", "stages": [1]}},
            "data": dict(SMALL), "optim": {"epochs": 2, "lr": 0.05}, "threads": 1, "work_dir": str(tmp_path),
            "tracking": {"uri": uri, "experiment": experiment}}
    for k, v in over.items():
        node = tree
        *path, last = k.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return tree


def test_se_on_digits_lands_in_mlflow(tmp_path, mlflow_server):
    cfg = load_trial_config(None, base={
        "model": {"backbone": "cifar_resnet20", "attention": "se"},
        "data": {"dataset": "digits", "batch_size": 64, "workers": 0, "backend": "torch"}, "optim": {"epochs": 2, "lr": 0.05},
        "threads": 1, "work_dir": str(tmp_path), "tracking": {"uri": mlflow_server, "experiment": "t-digits"}})
    s = fit(cfg)
    assert s["status"] == "finished" and s["epochs"] == 2
    run = get_run(mlflow_server, s["run_id"])
    assert run.info.status == "FINISHED"
    p, t = run.data.params, run.data.tags
    assert p["model.backbone"] == "cifar_resnet20" and p["attn.kind"] == "se" and p["attn.stages"] == "1,2,3"
    assert p["attn.slot"] == "gate" and p["seed"] == "0" and p["optim.lr"] == "0.05"
    for tag in ("git_commit", "dataset_fingerprint", "torch_version", "device", "host"):
        assert t.get(tag), tag
    assert t["attnlab.status"] == "finished"
    assert run.info.run_name == "resnet20 se@s123 seed0"
    for key in ("train_loss", "val_loss", "val_top1", "val_top5", "lr", "images_per_s", "epoch_time"):
        assert [st for st, _ in metric_history(mlflow_server, s["run_id"], key)] == [1, 2], key
    assert run.data.metrics["params"] == s["params"] > 269_722
    assert run.data.metrics["gmacs"] > 0.04
    # the share of training time spent in tracking calls: measured, so above zero, and small
    assert 0 < run.data.metrics["tracking_overhead_pct"] < 50
    # only the params that apply: a digits trial has no synthetic-data or FFCV-only keys
    assert not [k for k in p if k.startswith(("data.synthetic.", "threads", "work_dir", "tracking."))]
    arts = list_artifacts(mlflow_server, s["run_id"])
    assert "config.json" in arts and "learning_curve.png" in arts
    assert [i.dataset.digest for i in run.inputs.dataset_inputs] == [t["dataset_fingerprint"][:36]]


def test_maps_artifacts_for_spa(tmp_path, mlflow_server):
    cfg = load_trial_config(None, base=trial(tmp_path, mlflow_server, "t-maps", optim__epochs=1))
    s = fit(cfg)
    arts = list_artifacts(mlflow_server, s["run_id"])
    assert "attention/maps.png" in arts


def _write(tmp_path, tree, name):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(tree))
    return p


def _train_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline.train", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_kill_and_resume_is_exact_and_one_run(tmp_path, mlflow_server):
    uri = mlflow_server
    full = _write(tmp_path, trial(tmp_path / "a", uri, "t-full", optim__epochs=3), "full.yaml")
    r = _train_cli("--config", full, "--checkpoint-dir", tmp_path / "ck-full", cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]

    tree = trial(tmp_path / "b", uri, "t-killed", optim__epochs=3)
    tree["fault"] = {"kill_at_epoch": 1, "once_file": str(tmp_path / "killed.once")}
    killed = _write(tmp_path, tree, "killed.yaml")
    r = _train_cli("--config", killed, "--checkpoint-dir", tmp_path / "ck", cwd=ROOT)
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])  # a real SIGKILL, mid-epoch 2
    ckpt = tmp_path / "ck" / "last.pt"
    assert ckpt.exists()
    r = _train_cli("--config", killed, "--checkpoint-dir", tmp_path / "ck", "--resume", ckpt, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]

    from pipeline.tracking import find_runs
    (full_run,) = find_runs(uri, "t-full", "")
    runs = find_runs(uri, "t-killed", "")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key in ("train_loss", "val_loss", "val_top1", "lr"):
        a = metric_history(uri, full_run.info.run_id, key)
        b = metric_history(uri, runs[0].info.run_id, key)
        assert [s for s, _ in b] == [1, 2, 3], key  # one point per epoch, none doubled
        assert a == b, key  # bit-exact resume


def test_diverged_trial_is_recorded(tmp_path, mlflow_server):
    cfg = load_trial_config(None, base=trial(tmp_path, mlflow_server, "t-div", optim__lr=1e8,
                                             model__attention=None))
    s = fit(cfg)
    assert s["status"] == "diverged" and "loss is" in s["message"]
    run = get_run(mlflow_server, s["run_id"])
    assert run.data.tags["attnlab.status"] == "diverged" and run.info.status == "FAILED"


@pytest.mark.parametrize("override,needle", [
    ("optim.lrr=0.1", "optim.lrr: unknown key"),
    ("optim.epochs=ten", "optim.epochs"),
    ("model.attention=nope", "unknown attention 'nope'"),
    ("model.attention.topk_ratio=2", "topk_ratio must be in (0, 1]"),  # the base attention is spa
    ("data.dataset=cifar10", "root"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, override, needle):
    base = {"model": {"backbone": "cifar_resnet20", "attention": "spa"}, "data": dict(SMALL),
            "tracking": {"enabled": False}, "work_dir": str(tmp_path)}
    cfg = _write(tmp_path, base, "c.yaml")
    args = ["--config", cfg, "--set", override]
    if override.startswith("data.dataset"):
        args += ["--set", f"data.root={tmp_path / 'missing'}"]
    r = _train_cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    if needle:
        assert needle in lines[0]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    cfg = _write(tmp_path, {"data": dict(SMALL), "tracking": {"enabled": False}, "work_dir": str(tmp_path)}, "c.yaml")
    r = _train_cli("--config", cfg, "--resume", bad, cwd=tmp_path)
    assert r.returncode == 2 and "corrupt" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_concurrent_trials_register_one_dataset(mlflow_server):
    """Grid trials log the same dataset at once: none fails on the server's unique constraint."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.tracking import Tracker

    trackers = []
    for i in range(4):
        t = Tracker(mlflow_server, "t-dataset-race")
        t.start(f"r{i}", {}, {})
        trackers.append(t)
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda t: t.log_dataset("digits", "f" * 64, "builtin:digits"), trackers))
    for t in trackers:
        run = get_run(mlflow_server, t.run_id)
        assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["digits"]


def test_fewer_model_classes_than_the_folder_has_is_one_line_exit_2(tmp_path):
    """A folder data set's classes are known once it is read: fewer logits than classes is a
    one-line error before training (it used to fail in the first step, 'Target 2 is out of bounds')."""
    from _data_makers import make_imagefolder

    make_imagefolder(tmp_path / "data", classes=("cat", "dog", "emu"))
    cfg = _write(tmp_path, {"model": {"num_classes": 2},
                            "data": {"dataset": "imagefolder", "root": str(tmp_path / "data"), "train_res": 32,
                                     "batch_size": 4, "workers": 0},
                            "optim": {"epochs": 1}, "tracking": {"enabled": False}, "work_dir": str(tmp_path)}, "c.yaml")
    r = _train_cli("--config", cfg, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.num_classes: 2 is fewer than the 3 classes" in lines[0], r.stderr
