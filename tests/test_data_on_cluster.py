"""``python -m pipeline.data write ... --on-cluster``: the write runs as a Ray task on a node that
has the data, its output streams back, and a root no node has is one line. Real Ray head."""
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.cluster]


def _env(ray_head):
    return dict(os.environ, **ray_head["env"], RAY_ADDRESS=ray_head["address"])


def test_write_on_cluster_lands_in_the_shared_folder(tmp_path, ray_head):
    out = tmp_path / "betons"
    r = subprocess.run([sys.executable, "-m", "pipeline.data", "write", "digits", "--out", str(out), "--quiet",
                        "--on-cluster"], env=_env(ray_head), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "writing on node 127.0.0.1" in r.stdout
    assert (out / "manifest.json").is_file() and (out / "train.beton").is_file()


def test_root_on_no_node_is_one_line(tmp_path, ray_head):
    r = subprocess.run([sys.executable, "-m", "pipeline.data", "write", "imagefolder", "--root",
                        str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--on-cluster"],
                       env=_env(ray_head), capture_output=True, text=True, timeout=600)
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no node of the cluster" in errors[0] and "nowhere" in errors[0]
    assert "Traceback" not in r.stderr
