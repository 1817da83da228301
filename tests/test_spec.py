"""Ablation specs: every shipped spec expands and validates; bad specs fail before any work."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments.spec import grid_from_tree, load_spec
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "experiments" / "specs").rglob("*.yaml"))
GRID = [sys.executable, str(ROOT / "experiments" / "grid.py")]


def with_roots(tree, tmp_path):
    """Point a shipped spec's data root at an existing folder (the real data is not here)."""
    data = tree["base"].get("data", {})
    if data.get("root"):
        data["root"] = str(tmp_path)
    return tree


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT / "experiments" / "specs")))
def test_shipped_spec_expands(path, tmp_path):
    tree = with_roots(yaml.safe_load(path.read_text()), tmp_path)
    g = grid_from_tree(tree, path)
    assert g.trials, path
    ids = [t.id for t in g.trials]
    assert len(ids) == len(set(ids))
    # deterministic: the same ids in the same order on re-expansion
    assert [t.id for t in grid_from_tree(with_roots(yaml.safe_load(path.read_text()), tmp_path), path).trials] == ids
    # every attention trial has its paired same-seed baseline
    base = {(t.point, t.coords["seed"]) for t in g.trials if t.coords["attention"] == "none"}
    for t in g.trials:
        if t.coords["attention"] != "none":
            assert (t.baseline_point, t.coords["seed"]) in base, t.point


def spec(**over):
    tree = {"name": "t", "base": {"model": {"backbone": "cifar_resnet20"}, "data": {"dataset": "digits"},
                                  "optim": {"epochs": 1}},
            "axes": {"attention": ["none", "spa", "gaussian", "se"], "stages": [[1], [2]],
                     "topk_ratio": [0.25, 0.5], "radius": [1.0]}, "seeds": 2}
    for k, v in over.items():
        node = tree
        *path, last = k.split("__")
        for p in path:
            node = node[p]
        if v is DELETE:
            del node[last]
        else:
            node[last] = v
    return tree


DELETE = object()


def test_conditional_axes_and_paired_baselines():
    g = grid_from_tree(spec())
    by = {}
    for t in g.trials:
        by.setdefault(t.coords["attention"], []).append(t)
    assert len(by["none"]) == 2  # once per seed, not multiplied by stages/topk/radius
    assert len(by["spa"]) == 2 * 2 * 2  # stages × topk_ratio × seeds
    assert len(by["gaussian"]) == 2 * 1 * 2  # stages × radius × seeds
    assert len(by["se"]) == 2 * 2
    assert all("topk_ratio" not in t.coords for t in by["gaussian"] + by["se"] + by["none"])
    assert all("radius" not in t.coords for t in by["spa"])


def test_dedupe_by_resolved_config():
    # spa's default topk_ratio is 0.25: listing it explicitly and implicitly is the same trial
    g = grid_from_tree(spec(axes={"attention": ["spa", {"kind": "spa", "topk_ratio": 0.25}]}, seeds=1,
                            baseline=False))
    assert len(g.trials) == 1 and g.duplicates == 1


def test_ids_stable_when_the_spec_grows():
    a = {t.id for t in grid_from_tree(spec()).trials}
    b = {t.id for t in grid_from_tree(spec(axes__topk_ratio=[0.25, 0.5, 0.75])).trials}
    assert a < b


BAD = [
    (dict(axes__attention=["none", "sse"]), "axes.attention[1]: unknown attention 'sse'"),
    (dict(axes__topk_ratio=[0.25, 1.5]), "topk_ratio"),
    (dict(axes__topk_ratio=[0.0]), "topk_ratio"),
    (dict(axes__radius=[0.0]), "radius"),
    (dict(axes__radius=[-1.0]), "radius"),
    (dict(axes__stages=[[4]]), "stage 4 does not exist"),
    (dict(axes__stages=[[]]), "axes.stages[0]"),
    (dict(axes__stages=[1]), "axes.stages[0]"),
    (dict(axes__stages=[]), "non-empty"),
    (dict(axes__radius=[]), "non-empty"),
    (dict(axes__heads=[4]), "no attention in this spec takes parameter 'heads' (it belongs to: gsa)"),
    (dict(axes__bogus=[1]), "no attention in this spec takes parameter 'bogus'"),
    (dict(axes__slot=["sideways"]), "unknown slot"),
    (dict(axes__every=[0]), "every"),
    (dict(base__optim={"epochs": "many"}), "optim.epochs"),
    (dict(base__optim={"epochs": 1, "lrr": 0.1}), "optim.lrr: unknown key"),
    (dict(base__model={"backbone": "resnet9"}), "unknown backbone 'resnet9'"),
    (dict(base__data={"dataset": "cifar10"}), "needs a root"),
    (dict(base__data={"dataset": "mnist-ish"}), "unknown dataset"),
    (dict(seeds=0), "seeds"),
    (dict(seeds=[1, 1]), "seeds"),
    (dict(name="has space"), "name"),
    (dict(extra_key=1), "extra_key: unknown key"),
    (dict(axes__attention=[{"stages": [1]}]), "axes.attention[0]"),
    (dict(axes={"attention": ["spa"], "optim.lr": [0.1, -1.0]}), "optim.lr"),
]


@pytest.mark.parametrize("over,needle", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_spec_names_the_field(over, needle):
    with pytest.raises(ConfigError) as e:
        grid_from_tree(spec(**over))
    msg = str(e.value)
    assert needle in msg, msg
    assert "\n" not in msg


def test_error_carries_file_and_line(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec(axes__topk_ratio=[0.25, 3.0]), sort_keys=False))
    with pytest.raises(ConfigError) as e:
        load_spec(p)
    line = next(i for i, l in enumerate(p.read_text().splitlines(), 1) if l.strip().startswith("topk_ratio"))
    assert str(e.value).startswith(f"{p}:{line}:"), str(e.value)


def test_grid_cli_bad_spec_exit_2_before_any_cluster_work(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec(axes__attention=["nonlocal", "typo"])))
    storage = tmp_path / "storage"
    r = subprocess.run(GRID + ["--spec", str(p), "--storage", str(storage)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown attention 'typo'" in r.stderr
    assert not storage.exists()  # nothing started, nothing written
    r = subprocess.run(GRID + ["--spec", str(tmp_path / "missing.yaml")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "spec file not found" in r.stderr


def test_grid_dry_run_table_and_json(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec()))
    r = subprocess.run(GRID + ["--spec", str(p), "--dry-run", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["count"] == len(out["trials"]) == 2 + 8 + 4 + 4
    assert out["accel_hours"] > 0 and all(t["gmacs"] > 0.04 for t in out["trials"])
    r = subprocess.run(GRID + ["--spec", str(p), "--dry-run"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "18 trials" in r.stdout and "accelerator-hours" in r.stdout


def test_expanding_10k_trials():
    """Large grids expand completely and without duplicates (speed: benchmarks/grid_expand.py);
    above the default limit only when the limit is raised."""
    tree = spec(axes={"attention": ["none", "spa"], "topk_ratio": [i / 1000 for i in range(1, 1001)],
                      "stages": [[1], [2], [3], [1, 2], [2, 3]]}, seeds=2)
    with pytest.raises(ConfigError, match="10,002 trials, over the limit of 10,000"):
        grid_from_tree(tree)
    g = grid_from_tree(tree, max_trials=10_002)
    assert len(g.trials) == 2 + 1000 * 5 * 2 and g.duplicates == 0


def test_trial_id_of_a_config_matches_the_grid():
    from experiments.spec import trial_id
    from pipeline.config import TrialConfig

    g = grid_from_tree(spec())
    for t in g.trials[:6]:
        assert trial_id(TrialConfig.model_validate(t.config)) == t.id
