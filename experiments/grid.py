"""Run an ablation grid: the entry point of ``ray job submit``.

    python experiments/grid.py --spec experiments/specs/smoke.yaml --dry-run
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python experiments/grid.py --spec experiments/specs/smoke.yaml

Without ``RAY_ADDRESS`` it starts (or joins) a local Ray on 127.0.0.1.  Tracking goes to
``MLFLOW_TRACKING_URI`` (or the spec's ``base.tracking.uri``, else a SQLite file under the
storage folder): one parent run per grid, one child run per trial, never two for one trial.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any cwd

from experiments.spec import Grid, Trial, load_spec  # noqa: E402
from pipeline.errors import ConfigError, cli_exit  # noqa: E402

DEFAULT_STORAGE = Path("~/attnlab-runs").expanduser()


# ---------------------------------------------------------------------------------------------
# dry run: table and cost
# ---------------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


def _count_images(folder: Path) -> int:
    """Image files under ``folder`` (any depth), by suffix; ``os.scandir`` keeps ImageNet's 1.3M
    files to seconds."""
    n, stack = 0, [folder]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=True):
                    stack.append(Path(e.path))
                elif os.path.splitext(e.name)[1].lower() in _IMAGE_SUFFIXES:
                    n += 1
    return n


def train_images(cfg: dict[str, Any]) -> tuple[int, str]:
    """Training images of a trial's ``data`` and where the figure comes from.

    Built-in data (digits) and ``synthetic`` are known without reading anything.  For a dataset
    in a folder: if ``data.root`` exists on this machine the images under ``train/`` are counted
    (CIFAR's fixed-size pickles: their published size once the folder is found); if it does
    not, the dataset's published size is used and the note says the data was not checked (a
    dry run is a cost estimate, run where the data may be absent).  A root that is a file, or
    a folder without training images, is a :class:`ConfigError`; so is a folder dataset of
    unknown size (``imagefolder``) whose root is absent.
    """
    from pipeline import catalog
    from pipeline.config import DataConfig, check_data_root

    d = cfg["data"]
    info = catalog.info(d["dataset"])
    if d["dataset"] == "synthetic":
        return int(d["synthetic"]["train_count"]), "from data.synthetic"
    if not info.needs_root:
        return int(info.train_images), "built in"
    root = Path(d["root"])
    if not root.exists():
        if info.train_images is None:
            raise ConfigError(f"data.root: {root} is not on this machine and {info.name!r} has no known size; "
                              "run the dry run where the data is")
        return info.train_images, f"published size; data not checked ({root} is not on this machine)"
    problems = check_data_root(DataConfig.model_validate({"dataset": d["dataset"], "root": str(root)}))
    if problems:
        raise ConfigError(problems[0])
    if info.style == "cifar" and info.name.startswith("cifar"):
        return int(info.train_images), f"published size; {root} found"
    n = _count_images(root / "train") if (root / "train").is_dir() else 0
    if n == 0:
        raise ConfigError(f"data.root: {root} has no training images under train/")
    return n, f"counted in {root / 'train'}"


def estimate(grid: Grid, tflops: float) -> list[dict[str, Any]]:
    """Per trial: GMACs/image (at its training resolution and class count), training images
    and where that figure comes from (``images_from``), and accelerator-hours at ``tflops``
    effective.  Each distinct model is built once; nothing touches the data beyond counting."""
    from blocks import build_model
    from blocks.cost import count_macs
    from pipeline.config import DataConfig

    cache: dict[str, float] = {}
    sizes: dict[str, tuple[int, str]] = {}
    rows = []
    for t in grid.trials:
        c = t.config
        data = DataConfig.model_validate(c["data"])
        res = data.resolutions()[0]
        classes = c["model"].get("num_classes") or data.num_classes() or 1000
        key = json.dumps([c["model"], res, classes], sort_keys=True, default=str)
        if key not in cache:
            m = build_model(c["model"]["backbone"], classes, attention=c["model"]["attention"],
                            small_stem=c["model"]["small_stem"])
            cache[key] = count_macs(m, (res, res)) / 1e9
        dkey = json.dumps(c["data"], sort_keys=True, default=str)
        if dkey not in sizes:
            sizes[dkey] = train_images(c)
        (n, source), epochs = sizes[dkey], c["optim"]["epochs"]
        flops = 3 * 2 * cache[key] * 1e9 * n * epochs  # fwd + bwd ≈ 3 forwards; 2 FLOPs per MAC
        rows.append({"trial": t.id, "gmacs": cache[key], "images": n, "images_from": source, "epochs": epochs,
                     "accel_hours": flops / (tflops * 1e12) / 3600})
    return rows


def print_table(grid: Grid, est: list[dict[str, Any]], tflops: float) -> None:
    keys: list[str] = []
    for t in grid.trials:
        keys += [k for k in t.coords if k not in keys and k != "seed"]
    keys.append("seed")
    head = ["trial"] + keys + ["GMACs", "acc-h"]
    body = [[t.id] + [_cell(t.coords.get(k, "")) for k in keys] + [f"{e['gmacs']:.3f}", f"{e['accel_hours']:.3g}"]
            for t, e in zip(grid.trials, est)]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    for r in [head] + body:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    total = sum(e["accel_hours"] for e in est)
    print(f"\n{len(grid.trials)} trials ({grid.duplicates} duplicates removed); "
          f"estimated {total:.3g} accelerator-hours at {tflops:g} effective TFLOP/s "
          f"(fwd+bwd = 3 forwards; 1 MAC = 2 FLOPs)")
    for dataset, images, source in sorted({(t.config["data"]["dataset"], e["images"], e["images_from"])
                                           for t, e in zip(grid.trials, est)}):
        print(f"training images: {dataset}: {images:,} ({source})")


def _cell(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------

def summarise(grid: Grid, results: dict[str, dict[str, Any]], metric: str = "best_top1") -> list[dict[str, Any]]:
    """Per point: mean ± std over seeds, and the mean ± std of the paired (same-seed) delta."""
    by_point: dict[str, list[Trial]] = {}
    for t in grid.trials:
        by_point.setdefault(t.point, []).append(t)
    base_of_seed = {(t.point, t.coords["seed"]): t.id for t in grid.trials if t.coords["attention"] == "none"}
    rows = []
    for point, trials in by_point.items():
        vals, deltas, status = [], [], []
        for t in trials:
            r = results.get(t.id, {})
            status.append(r.get("status", "missing"))
            v = r.get(metric)
            if r.get("status") == "finished" and v is not None and not math.isnan(v):
                vals.append(v)
                b = results.get(base_of_seed.get((t.baseline_point, t.coords["seed"]), ""), {})
                if t.coords["attention"] != "none" and b.get("status") == "finished" and b.get(metric) is not None:
                    deltas.append(v - b[metric])
        rows.append({
            "point": point, "n": len(vals), "seeds": len(trials),
            "mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None,
            "delta": statistics.fmean(deltas) if deltas else None,
            "delta_std": statistics.stdev(deltas) if len(deltas) > 1 else 0.0 if deltas else None,
            "status": ",".join(sorted(set(status))),
        })
    return rows


def format_summary(rows: list[dict[str, Any]], metric: str) -> str:
    def pm(m, s, n):
        if m is None:
            return "—"
        return f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"

    out = [f"| point | {metric} (mean ± std) | Δ vs paired baseline | seeds | status |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['point']} | {pm(r['mean'], r['std'], r['n'])} | {pm(r['delta'], r['delta_std'], r['n'])} | "
                   f"{r['n']}/{r['seeds']} | {r['status']} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """The command line; a usage error is one line (``experiments/grid.py: error: ...``), exit 2."""
    from experiments.spec import DEFAULT_MAX_TRIALS
    from pipeline.errors import ArgumentParser

    p = ArgumentParser(prog="experiments/grid.py", description="Run an ablation grid on Ray Tune.")
    p.add_argument("--spec", required=True, help="ablation spec (YAML), e.g. experiments/specs/smoke.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the expanded trials and the cost; run nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: machine-readable output")
    p.add_argument("--name", default=None, help="grid name (default: the spec's name)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted grid of the same name")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0: as resources allow)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions share a GPU, e.g. 0.25")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--scheduler", choices=["none", "asha"], default="none")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial (from its checkpoint)")
    p.add_argument("--storage", default=None, help=f"Tune storage path or URI (default {DEFAULT_STORAGE})")
    p.add_argument("--tflops", type=float, default=100.0,
                   help="effective accelerator TFLOP/s for the --dry-run estimate (default 100)")
    p.add_argument("--metric", default="best_top1", choices=["best_top1", "final_top1"])
    p.add_argument("--max-trials", type=int, default=DEFAULT_MAX_TRIALS,
                   help=f"refuse a spec that asks for more trials (default {DEFAULT_MAX_TRIALS:,})")
    a = p.parse_args(argv)
    if a.max_trials < 1:
        p.error("--max-trials must be >= 1")
    for flag in ("max_concurrent", "max_failures"):
        if getattr(a, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} must be >= 0")
    if a.gpus_per_trial < 0 or a.cpus_per_trial <= 0:
        p.error("--gpus-per-trial must be >= 0 and --cpus-per-trial > 0")
    if not (0 < a.tflops < float("inf")):
        p.error("--tflops must be a finite number > 0")
    return a


def main(argv: Optional[list[str]] = None) -> int:
    a = parse_args(argv)
    try:
        grid = load_spec(a.spec, max_trials=a.max_trials)
        name = a.name or grid.spec.name
        storage = a.storage or str(DEFAULT_STORAGE)
        if "://" not in storage:
            storage = str(Path(storage).expanduser().resolve())
        if a.dry_run:
            est = estimate(grid, a.tflops)
            if a.json:
                print(json.dumps({"name": name, "count": len(grid.trials), "duplicates": grid.duplicates,
                                  "accel_hours": sum(e["accel_hours"] for e in est), "tflops": a.tflops,
                                  "data_checked": all(not e["images_from"].startswith("published size; data not")
                                                      for e in est),
                                  "trials": [{"id": t.id, "coords": t.coords, **e} for t, e in zip(grid.trials, est)]}))
            else:
                print_table(grid, est, a.tflops)
            return 0
        exp_dir = Path(storage) / name if "://" not in storage else None
        if exp_dir is not None and exp_dir.exists() and not a.resume:
            raise ConfigError(f"grid {name!r} already exists at {exp_dir}; add --resume to continue it, "
                              f"or --name to start a new one")
    except ConfigError as e:
        cli_exit(e)
    return run(grid, a, name, storage)


def tracking_uri(grid: Grid, storage: str) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (grid.spec.base.get("tracking") or {}).get("uri")
    if uri:
        return uri
    if "://" in storage:
        raise ConfigError("set MLFLOW_TRACKING_URI (or base.tracking.uri): a cloud storage has no local SQLite")
    Path(storage).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(storage) / 'mlflow.db'}"


def attach_runs(grid: Grid, uri: str, experiment: str, name: str, spec_path: str) -> tuple[str, list[dict[str, Any]]]:
    """Create (or find again) the parent run and one child run per trial; put the run ids and the
    tracking target into each trial's config, so a trial never makes a run of its own."""
    from pipeline.config import TrialConfig
    from pipeline.tracking import ensure_child_runs, ensure_parent_run, git_commit, log_parent_artifacts
    from pipeline.train import run_name

    commit = git_commit(Path(__file__).resolve().parent)
    parent = ensure_parent_run(uri, experiment, name, {"git_commit": commit, "attnlab.spec": str(spec_path)})
    names = {t.id: run_name(TrialConfig.model_validate(t.config)) for t in grid.trials}
    runs = ensure_child_runs(uri, experiment, parent,
                             [(t.id, names[t.id], {"attnlab.point": t.point[:5000]}) for t in grid.trials])
    trials = []
    for t in grid.trials:
        cfg = json.loads(json.dumps(t.config))
        cfg["tracking"].update({"uri": uri, "experiment": experiment, "run_id": runs[t.id],
                                "parent_run_id": parent, "run_name": names[t.id],
                                "tags": {**cfg["tracking"].get("tags", {}), "attnlab.trial": t.id, "attnlab.grid": name}})
        trials.append(cfg)
    table = "\n".join(json.dumps({"trial": t.id, "run_id": runs[t.id], **t.coords}) for t in grid.trials)
    log_parent_artifacts(uri, parent, {"spec.yaml": Path(spec_path).read_text(), "expansion.jsonl": table})
    os.environ.setdefault("ATTNLAB_GIT_COMMIT", commit)
    return parent, trials


def run(grid: Grid, a: argparse.Namespace, name: str, storage: str) -> int:
    from pipeline.tracking import finish_parent, log_parent_artifacts
    from pipeline.tune import connect, run_grid

    uri = tracking_uri(grid, storage)
    experiment = (grid.spec.base.get("tracking") or {}).get("experiment") or name
    parent_id, trials = attach_runs(grid, uri, experiment, name, a.spec)
    print(f"grid {name}: {len(trials)} trials; MLflow {uri} experiment {experiment!r} parent run {parent_id}")
    print(f"ray: {connect()}")
    rows = run_grid(trials, name=name, storage=storage, resume=a.resume, max_concurrent=a.max_concurrent,
                    cpus_per_trial=a.cpus_per_trial, gpus_per_trial=a.gpus_per_trial,
                    max_failures=a.max_failures, scheduler=a.scheduler,
                    epochs=max(t["optim"]["epochs"] for t in trials))
    results = {r["trial"]: r for r in rows}
    summary = summarise(grid, results, a.metric)
    text = format_summary(summary, a.metric)
    print("\n" + text)
    failed = [r for r in rows if r["status"] == "error"]
    log_parent_artifacts(uri, parent_id, {"summary.md": text + "\n", "summary.json": json.dumps(summary, indent=1),
                                          "results.json": json.dumps(rows, indent=1)})
    finish_parent(uri, parent_id, ok=not failed, metrics={"trials": len(rows), "failed": len(failed),
                                                         "diverged": sum(r["status"] == "diverged" for r in rows)})
    print(f"\nMLflow: {uri}  (experiment {experiment!r}, parent run {parent_id})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
