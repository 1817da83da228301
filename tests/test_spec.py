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
# every shipped ablation spec; search specs (specs/search/) are a format of their own, checked
# in tests/test_search.py
SPECS = sorted(p for p in (ROOT / "experiments" / "specs").rglob("*.yaml")
               if "search" not in p.relative_to(ROOT / "experiments" / "specs").parts)
GRID = [sys.executable, str(ROOT / "experiments" / "grid.py")]


def _spec_id(p: Path) -> str:
    return str(p.relative_to(ROOT / "experiments" / "specs"))


def _paired(trials) -> None:
    """Every attention trial has its paired same-seed baseline."""
    base = {(t.point, t.coords["seed"]) for t in trials if t.coords["attention"] == "none"}
    for t in trials:
        if t.coords["attention"] != "none":
            assert (t.baseline_point, t.coords["seed"]) in base, t.point


@pytest.mark.parametrize("path", SPECS, ids=_spec_id)
def test_shipped_spec_expands(path):
    """As shipped, on a machine without the data (its roots are checked where trials run)."""
    g = load_spec(path)
    assert g.trials, path
    ids = [t.id for t in g.trials]
    assert len(ids) == len(set(ids))
    # deterministic: the same ids in the same order on re-expansion
    assert [t.id for t in load_spec(path).trials] == ids
    _paired(g.trials)


# ImageNet specs build several ResNet-50s to count MACs: minutes on 2 busy CPU cores.
@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if "imagenet" in p.parts else p
                                  for p in SPECS], ids=_spec_id)
def test_shipped_spec_dry_runs_without_the_data(path, capsys):
    from experiments.grid import main

    assert main(["--spec", str(path), "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == len(load_spec(path).trials) and out["accel_hours"] > 0
    has_root = bool(yaml.safe_load(path.read_text())["base"].get("data", {}).get("root"))
    if has_root and not Path(yaml.safe_load(path.read_text())["base"]["data"]["root"]).exists():
        assert out["data_checked"] is False  # and the output says so
        assert all("data not checked" in t["images_from"] for t in out["trials"])
    elif not has_root:
        assert out["data_checked"] is True


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


def test_paired_baselines_are_added_unless_turned_off():
    tree = spec(axes={"attention": ["spa", "se"], "stages": [[1]]}, seeds=[3, 7])
    g = grid_from_tree(tree)
    none = [t for t in g.trials if t.coords["attention"] == "none"]
    assert sorted(t.coords["seed"] for t in none) == [3, 7] and len(g.trials) == 2 + 2 * 2
    _paired(g.trials)
    # per base point: a dotted axis gives one baseline per value and seed
    g = grid_from_tree(spec(axes={"attention": ["spa"], "optim.lr": [0.1, 0.05]}, seeds=2))
    assert sum(t.coords["attention"] == "none" for t in g.trials) == 2 * 2
    _paired(g.trials)
    off = grid_from_tree(spec(axes={"attention": ["spa", "se"], "stages": [[1]]}, seeds=[3, 7], baseline=False))
    assert all(t.coords["attention"] != "none" for t in off.trials) and len(off.trials) == 4
    # base.model.attention alone is an attention trial too
    g = grid_from_tree(spec(axes={}, base__model={"backbone": "cifar_resnet20", "attention": "se"}))
    assert sorted(t.coords["attention"] for t in g.trials) == ["none", "none", "se", "se"]


@pytest.mark.parametrize("over,needle", [
    (dict(axes={"attention": ["spa"], "seed": [1, 2]}), "axes.seed: seeds are set by 'seeds:'"),
    (dict(axes={"attention": [{"kind": "none", "stages": [1]}, "se"]}), "attention 'none' takes no other keys"),
    (dict(axes={"attention": ["gaussian"], "radius": ["wide"]}), "axes.radius[0]: expected a finite number, got 'wide'"),
    (dict(axes={"attention": ["gaussian"], "radius": [float("inf")]}), "axes.radius[0]: inf is not a finite number"),
    (dict(base__optim={"epochs": 1, "lr": float("nan")}), "base.optim.lr: nan is not a finite number"),
    (dict(seeds="3"), "seeds: expected a count"),
    (dict(seeds=True), "seeds: expected a count"),
    (dict(axes={"attention": ["se"], "reduction": [True]}), "axes.reduction[0]: expected an integer, got True"),
    (dict(axes={"attention": ["spa"], "model.attention.topk_ratio": [0.5]}), "axes.model.attention.topk_ratio"),
    (dict(base__data={"dataset": "digits", "train_res": 4}), "base.data.train_res"),
])
def test_specs_mean_what_they_say(over, needle):
    with pytest.raises(ConfigError) as e:
        grid_from_tree(spec(**over))
    assert needle in str(e.value), str(e.value)


def test_trial_count_is_refused_before_anything_is_built():
    import time

    t = time.perf_counter()
    with pytest.raises(ConfigError, match="2,000,000,000 trials"):  # spa and its baselines
        grid_from_tree(spec(axes={"attention": ["spa"]}, seeds=1_000_000_000))
    with pytest.raises(ConfigError, match="over the limit of 10,000"):
        grid_from_tree(spec(axes={"attention": ["spa"], "topk_ratio": [i / 100 for i in range(1, 101)],
                                  "optim.lr": [i / 100 for i in range(1, 101)],
                                  "optim.momentum": [i / 101 for i in range(100)]}))
    assert time.perf_counter() - t < 1.0


IDENTITY_BASE = {"model": {"backbone": "cifar_resnet20"},
                 "data": {"dataset": "cifar10", "root": "/data/cifar-10-batches-py", "workers": 4},
                 "optim": {"epochs": 1, "lr": 0.1}}


def _ids(**base_over):
    import copy

    base = copy.deepcopy(IDENTITY_BASE)
    for k, v in base_over.items():
        node = base
        *path, last = k.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    g = grid_from_tree({"name": "t", "base": base, "axes": {"attention": ["none", "spa"]}, "seeds": 2})
    return [t.id for t in g.trials]


@pytest.mark.parametrize("key,value", [
    ("data__root", "/mnt/elsewhere/cifar"), ("data__workers", 16), ("data__beton_dir", "/fast/betons"),
    ("data__val_batch_size", 1000), ("threads", 4), ("work_dir", "/tmp/other"),
    ("checkpoint__dir", "/ckpt"), ("checkpoint__every", 5), ("tracking__uri", "http://127.0.0.1:5000"),
    ("tracking__experiment", "other"), ("name", "label"),
])
def test_execution_only_keys_keep_trial_ids(key, value):
    """Moving the data or changing the worker count keeps every id: --resume still finds them."""
    assert _ids(**{key: value}) == _ids()


@pytest.mark.parametrize("key,value", [("optim__lr", 0.05), ("data__train_res", 40), ("data__backend", "torch"),
                                       ("model__backbone", "cifar_resnet32"), ("precision", "fp32")])
def test_what_changes_the_math_changes_trial_ids(key, value):
    assert not set(_ids(**{key: value})) & set(_ids())


def test_seed_and_attention_change_trial_ids():
    ids = _ids()
    assert len(set(ids)) == 4  # none/spa × 2 seeds
    g = grid_from_tree({"name": "t", "base": IDENTITY_BASE, "axes": {"attention": ["spa"], "topk_ratio": [0.5]},
                        "seeds": [5]})
    assert not {t.id for t in g.trials} & set(ids)


def test_dry_run_counts_a_root_that_is_here(tmp_path, capsys):
    from experiments.grid import main

    for cls in ("a", "b"):
        (tmp_path / "data" / "train" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "data" / "train" / cls / f"{i}.JPEG").write_bytes(b"")
    (tmp_path / "cifar").mkdir()
    p = tmp_path / "s.yaml"
    for data, images, source, classes in [
            ({"dataset": "imagefolder", "root": str(tmp_path / "data")}, 6, "counted in", 2),
            ({"dataset": "cifar10", "root": str(tmp_path / "cifar")}, 50_000, "found", 10)]:
        p.write_text(yaml.safe_dump({"name": "t", "base": {"model": {"backbone": "cifar_resnet20", "num_classes": classes},
                                                           "data": {**data, "train_res": 32}, "optim": {"epochs": 1}}}))
        assert main(["--spec", str(p), "--dry-run", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["trials"][0]["images"] == images and source in out["trials"][0]["images_from"]
        assert out["data_checked"] is True


def test_summary_counts_paired_deltas_and_keeps_early_stops_apart():
    """The grid summary: the Δ's ± and its count come from the paired deltas, not from the seeds
    that finished; trials stopped early are counted apart and never averaged in."""
    from experiments.grid import format_summary, summarise
    from experiments.spec import grid_from_tree

    g = grid_from_tree({"name": "s", "base": {"model": {"backbone": "cifar_resnet20"}, "data": {"dataset": "digits"},
                                              "optim": {"epochs": 4}},
                        "axes": {"attention": ["se"]}, "seeds": 3})
    se = sorted((t for t in g.trials if t.coords["attention"] == "se"), key=lambda t: t.coords["seed"])
    base = {t.coords["seed"]: t for t in g.trials if t.coords["attention"] == "none"}
    res = {base[0].id: {"status": "finished", "best_top1": 90.0}, base[1].id: {"status": "finished", "best_top1": 91.0},
           base[2].id: {"status": "stopped_early", "best_top1": 50.0},
           se[0].id: {"status": "finished", "best_top1": 91.0}, se[1].id: {"status": "finished", "best_top1": 93.0},
           se[2].id: {"status": "finished", "best_top1": 95.0}}
    rows = {r["point"].split("attention=")[1].split()[0]: r for r in summarise(g, res)}
    assert rows["se"]["n"] == 3 and rows["se"]["n_delta"] == 2  # seed 2's baseline stopped early
    assert rows["se"]["delta"] == pytest.approx(1.5) and rows["se"]["delta_std"] == pytest.approx(0.7071, abs=1e-4)
    assert rows["none"]["n"] == 2 and rows["none"]["stopped"] == 1 and rows["none"]["mean"] == pytest.approx(90.5)
    text = format_summary(list(rows.values()), "best_top1")
    assert "1.50 ± 0.71" in text and "stopped early by the scheduler" in text
