"""The grid's pre-flight checks, run here as they run on each node (no cluster needed for these;
the two-node test in test_cluster.py runs them on a real cluster)."""
import pytest

from pipeline.preflight import cluster_checks, node_checks, remove_marker, write_marker

DIGITS = {"dataset": "digits", "backend": "torch"}


def _node(**kw):
    return {"problems": [], "backends": {"k": "torch"}, **kw}


def test_node_checks_find_missing_data_unshared_storage_and_dead_tracking(tmp_path):
    storage = tmp_path / "storage"
    marker = write_marker(str(storage))
    other = tmp_path / "other"  # a folder where the driver's marker is not: storage not shared
    other.mkdir()
    r = node_checks({"data": {"a": {"dataset": "imagefolder", "root": str(tmp_path / "nowhere"), "backend": "torch"},
                              "b": DIGITS},
                     "storage": str(other), "marker": marker, "tracking_uri": "http://127.0.0.1:9/"})
    text = "\n".join(r["problems"])
    assert "nowhere" in text and "does not exist" in text
    assert "not shared" in text and "s3://" in text
    assert "http://127.0.0.1:9/" in text and "not reachable" in text
    assert r["backends"] == {"b": "torch"}
    ok = node_checks({"data": {"b": DIGITS}, "storage": str(storage), "marker": marker, "tracking_uri": ""})
    assert ok["problems"] == [] and ok["backends"] == {"b": "torch"}
    remove_marker(str(storage), marker)
    assert not list(storage.iterdir())


def test_uri_storage_needs_no_marker():
    assert write_marker("s3://bucket/runs") is None


@pytest.mark.parametrize("uri", ["sqlite:////tmp/x/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns"])
def test_local_tracking_store_refused_on_several_nodes(uri):
    nodes = {"10.0.0.1 (a)": _node(), "10.0.0.2 (b)": _node()}
    (p,) = cluster_checks(nodes, tracking_uri=uri, storage="/shared", gpus_per_trial=0, cluster_gpus=0,
                          devices={"cpu"})
    assert "local store" in p and "2-node" in p
    assert cluster_checks({"one": _node()}, tracking_uri=uri, storage="/shared", gpus_per_trial=0,
                          cluster_gpus=0, devices={"cpu"}) == []


def test_gpus_asked_for_and_absent_and_cuda_without_gpus():
    one = {"n": _node()}
    (p,) = cluster_checks(one, tracking_uri="http://h:5000", storage="/s", gpus_per_trial=1, cluster_gpus=0,
                          devices={"auto"})
    assert "--gpus-per-trial" in p and "no GPUs" in p
    (p,) = cluster_checks(one, tracking_uri="http://h:5000", storage="/s", gpus_per_trial=0, cluster_gpus=4,
                          devices={"cuda"})
    assert "device: 'cuda'" in p and "--gpus-per-trial" in p
    assert cluster_checks(one, tracking_uri="http://h:5000", storage="/s", gpus_per_trial=0.5, cluster_gpus=1,
                          devices={"cuda"}) == []  # fractional GPUs share one


def test_backend_auto_must_resolve_the_same_everywhere():
    nodes = {"a": {"problems": [], "backends": {"k": "ffcv"}}, "b": {"problems": [], "backends": {"k": "torch"}}}
    (p,) = cluster_checks(nodes, tracking_uri="http://h:5000", storage="/s", gpus_per_trial=0, cluster_gpus=0,
                          devices={"cpu"})
    assert "resolves differently" in p and "a: ffcv" in p and "b: torch" in p


def test_problems_name_their_node():
    nodes = {"10.0.0.7 (abcd)": {"problems": ["data.root /d: not found"], "backends": {}}}
    (p,) = cluster_checks(nodes, tracking_uri="http://h:5000", storage="/s", gpus_per_trial=0, cluster_gpus=0,
                          devices={"cpu"})
    assert p == "node 10.0.0.7 (abcd): data.root /d: not found"


def test_node_checks_judge_the_pretrained_checkpoints(tmp_path):
    """model.pretrained is read where a trial runs: a path missing there, a folder or a file that
    is not a checkpoint is a pre-flight problem, not a failure of every trial after its run was
    made."""
    import torch

    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(1)}, good)
    bad = tmp_path / "bad.pt"
    bad.write_text("not weights")
    paths = [str(good), str(bad), str(tmp_path), str(tmp_path / "missing.pt")]
    r = node_checks({"data": {}, "storage": str(tmp_path), "marker": None, "tracking_uri": "", "pretrained": paths})
    assert r["problems"] == [f"model.pretrained {bad}: not a PyTorch checkpoint (neither torch.save's zip archive "
                             "nor a pickle)", f"model.pretrained {tmp_path}: not a file here",
                             f"model.pretrained {tmp_path / 'missing.pt'}: no such file here"]
