"""From one machine to a cluster: a real two-node Ray cluster (network namespaces), a node lost
mid-trial, and a PostgreSQL-backed MLflow server under concurrent trials.

No mocks: real Ray nodes, a real MLflow server, a real PostgreSQL (Debian's package).
"""
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.tracking import find_runs, metric_history
from tests import _netns
from tests.conftest import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _spec(tmp_path: Path, name: str, axes: dict, epochs: int, train_count: int = 96, seeds: int = 1) -> Path:
    tree = {"name": name, "baseline": False,
            "base": {"model": {"backbone": "cifar_resnet20"},
                     "data": {"dataset": "synthetic", "batch_size": 16, "workers": 0, "backend": "torch",
                              "synthetic": {"num_classes": 3, "image_size": 12, "train_count": train_count,
                                            "val_count": 24}},
                     "optim": {"epochs": epochs, "lr": 0.05}, "threads": 1, "checkpoint": {"every": 1}},
            "axes": axes, "seeds": seeds}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(tree))
    return p


def _kids(uri: str, experiment: str):
    runs = find_runs(uri, experiment, "")
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _assert_complete(uri: str, kids, epochs: int) -> None:
    for k in kids:
        assert k.info.status == "FINISHED", (k.info.run_name, k.info.status, k.data.tags.get("attnlab.error"))
        for key in ("val_top1", "train_loss", "epoch_time"):
            steps = [s for s, _ in metric_history(uri, k.info.run_id, key)]
            assert steps == list(range(1, epochs + 1)), (k.info.run_name, key, steps)


# ---------------------------------------------------------------------------------------------
# two nodes in network namespaces
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    if os.environ.get("ATTNLAB_SKIP_NETNS") == "1":
        pytest.skip("ATTNLAB_SKIP_NETNS=1: the two-node tests are skipped by choice")
    why = _netns.why_unavailable()
    if why:
        pytest.fail(f"{why} (set ATTNLAB_SKIP_NETNS=1 to skip the two-node tests by choice)")
    cluster = _netns.make_cluster(tmp_path_factory.mktemp("two-nodes"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _grid(cluster, spec: Path, storage: Path, *extra: str, **popen) -> list[str]:
    return cluster.exec(cluster.head, [PY, str(ROOT / "experiments" / "grid.py"), "--spec", str(spec),
                                       "--storage", str(storage), "--cpus-per-trial", "1", *extra])


def _grid_env(cluster, tracking: str | None = None) -> dict[str, str]:
    env = cluster.env()
    env.update({"RAY_ADDRESS": cluster.address, "MLFLOW_TRACKING_URI": tracking or cluster.mlflow_url})
    return env


def test_preflight_names_the_node_and_refuses_local_stores(two_nodes, tmp_path):
    """Before any trial: a missing data root on the nodes, a local SQLite store on a multi-node
    cluster and the node-local default storage are one line each, exit 2, no run created."""
    spec = tmp_path / "pf.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "preflight", "baseline": False,
        "base": {"model": {"backbone": "cifar_resnet20"}, "optim": {"epochs": 1},
                 "data": {"dataset": "imagefolder", "root": str(tmp_path / "nowhere"), "backend": "torch"}},
        "axes": {"attention": ["none"]}}))
    r = subprocess.run(_grid(two_nodes, spec, tmp_path / "storage"),
                       env=_grid_env(two_nodes, f"sqlite:///{tmp_path / 'local.db'}"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in r.stderr
    for addr in (two_nodes.head.addr, two_nodes.worker.addr):
        assert any(addr in ln and "nowhere" in ln for ln in errors), errors
    assert any("local store" in ln and "2-node" in ln for ln in errors), errors
    assert not (tmp_path / "local.db").exists() or not find_runs(f"sqlite:///{tmp_path / 'local.db'}", "preflight", "")
    # the node-local default storage is refused on a multi-node cluster, naming what to pass
    r = subprocess.run(cluster_cmd := two_nodes.exec(two_nodes.head, [
        PY, str(ROOT / "experiments" / "grid.py"), "--spec", str(_spec(tmp_path, "pfdefault", {"attention": ["none"]}, 1))]),
        env=_grid_env(two_nodes), capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, (cluster_cmd, r.stderr[-2000:])
    assert "--storage" in r.stderr and "node-local" in r.stderr and "s3://" in r.stderr


def test_grid_places_trials_on_both_nodes_then_survives_losing_one(two_nodes, tmp_path):
    # long enough that the worker's trial is still mid-run when the test sees its second epoch
    # (an epoch here is well under a second: a 6-epoch trial could end before the kill landed)
    epochs = 12
    spec = _spec(tmp_path, "twonode", {"attention": ["none", "se"]}, epochs=epochs, train_count=480)
    storage = tmp_path / "storage"  # one filesystem, seen by both nodes: shared storage
    proc = subprocess.Popen(_grid(two_nodes, spec, storage, "--max-failures", "3"), env=_grid_env(two_nodes),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    store = two_nodes.mlflow_store
    worker = two_nodes.worker.addr
    kept: dict[int, float] = {}
    victim = None
    t0 = time.time()
    try:
        while time.time() - t0 < 600 and proc.poll() is None:
            time.sleep(0.3)
            try:
                kids = _kids(store, "twonode")
            except Exception:  # noqa: BLE001 - the store is being created
                continue
            on_worker = [k for k in kids if k.data.tags.get("attnlab.node") == worker]
            if on_worker:
                hist = metric_history(store, on_worker[0].info.run_id, "val_top1")
                if len(hist) >= 2:  # two epochs logged, a checkpoint at least at epoch 1
                    two_nodes.kill_worker()
                    victim = on_worker[0].info.run_id
                    kept = dict(metric_history(store, victim, "val_top1"))  # all it logged before the kill
                    break
        assert victim is not None, "no trial reached epoch 2 on the worker node:\n" + "".join(out)[-3000:]
        assert len(kept) < epochs, f"the worker's trial ended before the kill ({len(kept)} epochs): the test proves nothing"
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    text = "".join(out)
    assert rc == 0, text[-4000:]
    kids = _kids(store, "twonode")
    assert len(kids) == 2
    nodes = {k.data.tags.get("attnlab.node") for k in kids}
    _assert_complete(store, kids, epochs)
    # the lost trial continued on the head, into the same run, keeping what was logged before
    (lost,) = [k for k in kids if k.info.run_id == victim]
    assert lost.data.tags["attnlab.node"] == two_nodes.head.addr
    after = dict(metric_history(store, victim, "val_top1"))
    for step, value in kept.items():
        assert after[step] == value
    # both nodes ran trials: the survivor's tag says head, and the worker ran the lost trial
    assert two_nodes.head.addr in nodes
    assert "pre-flight: 2 node(s) ok" in text, text[-3000:]


# ---------------------------------------------------------------------------------------------
# PostgreSQL-backed MLflow under concurrent trials
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg_mlflow(tmp_path_factory):
    from infra.stack import _stop_group, start_mlflow, start_postgres, stop_mlflow

    state = tmp_path_factory.mktemp("pg-stack")
    backend = start_postgres(state, free_port())
    try:
        url, _ = start_mlflow(state, free_port(), backend_uri=backend)
        yield url, backend
        stop_mlflow(state)
    finally:
        _stop_group(state, "postgres")
        if (state / "pg_dir").exists():  # as root the database lives under /tmp (docs/tracking.md)
            shutil.rmtree((state / "pg_dir").read_text().strip(), ignore_errors=True)


def test_postgres_backend_concurrent_trials_every_metric_once(pg_mlflow, ray_head, tmp_path):
    url, backend = pg_mlflow
    assert backend.startswith("postgresql+psycopg2://")
    epochs = 3
    spec = _spec(tmp_path, "pgconc", {"attention": ["none", "se", "cbam", "spa"]}, epochs=epochs, train_count=48)
    env = dict(os.environ, **ray_head["env"], RAY_ADDRESS=ray_head["address"], MLFLOW_TRACKING_URI=url)
    r = subprocess.run([PY, str(ROOT / "experiments" / "grid.py"), "--spec", str(spec), "--storage",
                        str(tmp_path / "storage"), "--cpus-per-trial", "0.5", "--max-concurrent", "4"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    kids = _kids(url, "pgconc")
    assert len(kids) == 4 and len({k.data.tags["attnlab.trial"] for k in kids}) == 4
    _assert_complete(url, kids, epochs)
    parents = [x for x in find_runs(url, "pgconc", "") if "mlflow.parentRunId" not in x.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
