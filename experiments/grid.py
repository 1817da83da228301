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
import contextlib
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Optional


from experiments.cli import (DEFAULT_STORAGE, check_grace_period, check_run_flags, new_stores_removed_on_refusal,
                             storage_folder)
from experiments.spec import Grid, Trial, load_spec
from pipeline.errors import ConfigError, cli_exit


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
    (a dataset stored otherwise, e.g. CIFAR's pickles: its published size once the folder is found); if it does
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
    if not info.image_files:  # e.g. CIFAR's pickles: a fixed size, nothing to count
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
    from blocks.cost import macs_and_forms
    from pipeline.config import DataConfig

    cache: dict[str, tuple[float, str]] = {}
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
            macs, forms = macs_and_forms(m, (res, res))
            # the computation form a shape-dependent block (SPA) runs at this size, per call
            cache[key] = (macs / 1e9, ",".join(sorted({f"{f['block']}:{f['form']}" for f in forms})))
        dkey = json.dumps(c["data"], sort_keys=True, default=str)
        if dkey not in sizes:
            try:
                sizes[dkey] = train_images(c)
            except ConfigError as e:  # name the spec line the root comes from
                raise ConfigError(f"{grid.where('data.root')}: {e}") from None
        (n, source), epochs = sizes[dkey], c["optim"]["epochs"]
        gmacs, forms = cache[key]
        flops = 3 * 2 * gmacs * 1e9 * n * epochs  # fwd + bwd ≈ 3 forwards; 2 FLOPs per MAC
        rows.append({"trial": t.id, "gmacs": gmacs, "forms": forms, "images": n, "images_from": source,
                     "epochs": epochs, "accel_hours": flops / (tflops * 1e12) / 3600})
    return rows


def print_table(grid: Grid, est: list[dict[str, Any]], tflops: float) -> None:
    keys: list[str] = []
    for t in grid.trials:
        keys += [k for k in t.coords if k not in keys and k != "seed"]
    keys.append("seed")
    with_forms = any(e.get("forms") for e in est)
    head = ["trial"] + keys + ["GMACs", "acc-h"] + (["form"] if with_forms else [])
    body = [[t.id] + [_cell(t.coords.get(k, "")) for k in keys] + [f"{e['gmacs']:.3f}", f"{e['accel_hours']:.3g}"]
            + ([e.get("forms") or ""] if with_forms else []) for t, e in zip(grid.trials, est)]
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
    """Per point: mean ± std over the seeds that completed, and the paired (same-seed) delta.

    Only completed trials count: a trial stopped early by the scheduler (ASHA) has a shorter
    schedule and would bias the mean, so it is counted apart (``stopped``), never averaged in.
    ``n_delta`` is the number of paired deltas behind the Δ column.
    """
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
            "stopped": sum(s == "stopped_early" for s in status),
            "mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None,
            "delta": statistics.fmean(deltas) if deltas else None,
            "delta_std": statistics.stdev(deltas) if len(deltas) > 1 else 0.0 if deltas else None,
            "n_delta": len(deltas),
            "status": ",".join(sorted(set(status))),
        })
    return rows


def paired_deltas(grid: Grid, results: dict[str, dict[str, Any]], metric: str = "best_top1") -> dict[str, float]:
    """Trial id -> its metric minus its same-seed baseline's (both completed), for attention trials."""
    base_of_seed = {(t.point, t.coords["seed"]): t.id for t in grid.trials if t.coords["attention"] == "none"}
    out = {}
    for t in grid.trials:
        r = results.get(t.id, {})
        b = results.get(base_of_seed.get((t.baseline_point, t.coords["seed"]), ""), {})
        if (t.coords["attention"] != "none" and r.get("status") == "finished" and b.get("status") == "finished"
                and r.get(metric) is not None and b.get(metric) is not None):
            out[t.id] = r[metric] - b[metric]
    return out


def format_summary(rows: list[dict[str, Any]], metric: str) -> str:
    """The summary as a Markdown table (pandas), then a line on trials stopped early."""
    import pandas as pd

    def pm(m, s, n):
        if m is None:
            return "—"
        return f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"

    table = pd.DataFrame([{
        "point": r["point"],
        f"{metric} (mean ± std over seeds)": pm(r["mean"], r["std"], r["n"]),
        "Δ vs same-seed baseline (mean ± std)": pm(r["delta"], r["delta_std"], r["n_delta"]),
        "paired deltas": r["n_delta"], "completed": f"{r['n']}/{r['seeds']}",
        "stopped early": r["stopped"], "status": r["status"]} for r in rows])
    out = table.to_markdown(index=False, disable_numparse=True)
    stopped = sum(r["stopped"] for r in rows)
    if stopped:
        out += f"\n\n{stopped} trial(s) stopped early by the scheduler: not in the means (shorter schedules)."
    return out


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
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial; fractions share a GPU, e.g. 0.5 (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--scheduler", choices=["none", "asha"], default="none",
                   help="asha: stop trials early on per-epoch val top-1 (they are tagged stopped_early)")
    p.add_argument("--grace-period", type=int, default=None,
                   help="with asha: epochs every trial runs before it may be stopped (default epochs/8, at least 1)")
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
    check_run_flags(p, a)
    if a.json and not a.dry_run:
        p.error("--json applies to --dry-run only (a run prints its summary as a table)")
    if not (1e-3 <= a.tflops <= 1e6):  # a GFLOP/s .. an exaFLOP/s; below, the hours overflow to inf
        p.error(f"--tflops must be an effective rate of 0.001..1,000,000 TFLOP/s, got {a.tflops:g}")
    return a


def main(argv: Optional[list[str]] = None) -> int:
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `grid.py --dry-run | head` ends quietly
    a = parse_args(argv)
    with contextlib.ExitStack() as stack:
        return _main(a, stack)


def _main(a: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    try:
        grid = load_spec(a.spec, max_trials=a.max_trials)
        name = a.name or grid.spec.name
        check_grace_period(a.grace_period, max((t.config["optim"]["epochs"] for t in grid.trials), default=1))
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
        from pipeline.preflight import ray_address_problem

        if problem := ray_address_problem():
            raise ConfigError(problem)
        storage = stack.enter_context(storage_folder(a.storage))  # made now, removed if left empty
        exp_dir = Path(storage) / name if "://" not in storage else None
        if exp_dir is not None and exp_dir.exists() and not a.resume:
            raise ConfigError(f"grid {name!r} already exists at {exp_dir}; add --resume to continue it, "
                              f"or --name to start a new one")
    except ConfigError as e:
        cli_exit(e)
    return run(grid, a, name, storage)


def tracking_uri(grid: Grid, storage: str) -> str:
    from pipeline.tracking import grid_tracking_uri

    return grid_tracking_uri(grid.spec.base, storage)


def check_existing_grid(grid: Grid, uri: str, experiment: str, name: str, resume: bool) -> None:
    """Without ``resume`` an existing grid of that name in the experiment is an error (its runs
    are never silently reused); with ``resume`` the trials must be the ones the grid started
    with (Tune's restore ignores added trials and changed flags): the error names what changed."""
    from pipeline.tracking import child_trial_ids, find_parent_run

    old = find_parent_run(uri, experiment, name)
    if old is None:
        return
    if not resume:
        raise ConfigError(f"grid {name!r} already has runs in MLflow experiment {experiment!r} (parent run "
                          f"{old.info.run_id}); add --resume to continue it, or --name to start a new one")
    before = set(child_trial_ids(uri, experiment, old.info.run_id)) - {None}
    now = {t.id for t in grid.trials}
    added, removed = sorted(now - before), sorted(before - now)
    if before and (added or removed):
        def few(ids: list[str]) -> str:
            return ", ".join(ids[:5]) + (", …" if len(ids) > 5 else "")

        raise ConfigError(f"--resume: the spec changed since grid {name!r} started: {len(added)} trial(s) added "
                          f"({few(added)}), {len(removed)} removed ({few(removed)}); restore the spec, or start "
                          f"a new grid with --name")


def _data_key(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def run_preflight(grid: Grid, uri: str, storage: str, a: argparse.Namespace) -> dict[str, str]:
    """Once per grid, before any trial: checks on every alive node (data, prepared FFCV files,
    shared storage, tracking reachable, GPUs, the backend `auto` resolves to). Returns data key
    -> backend; raises ConfigError with one line per problem, each naming its node."""
    from pipeline.preflight import cluster_checks, remove_marker, resolved_backends, write_marker
    from pipeline.tune import alive_nodes, cluster_gpus, run_on_every_node

    nodes_alive = alive_nodes()
    if len(nodes_alive) > 1 and "://" not in storage and storage == str(DEFAULT_STORAGE.resolve()):
        raise ConfigError(f"--storage: the default {DEFAULT_STORAGE} is node-local and this cluster has "
                          f"{len(nodes_alive)} nodes; pass --storage on a shared filesystem or a URI (s3://bucket/runs)")
    data = {_data_key(t.config["data"]): t.config["data"] for t in grid.trials}
    marker = write_marker(storage)
    try:
        from pipeline.preflight import node_checks

        pretrained = sorted({t.config["model"].get("pretrained") for t in grid.trials} - {None})
        nodes = run_on_every_node(node_checks, {"data": data, "storage": storage, "marker": marker,
                                                "tracking_uri": uri, "pretrained": pretrained})
    finally:
        remove_marker(storage, marker)
    devices = {t.config.get("device", "auto") for t in grid.trials}
    if "cuda" not in devices and cluster_gpus() > 0 and "auto" in devices:
        devices.add("cuda")  # device auto on a GPU cluster is CUDA
    problems = cluster_checks(nodes, tracking_uri=uri, storage=storage, gpus_per_trial=a.gpus_per_trial,
                              cluster_gpus=cluster_gpus(), devices=devices)
    if problems:
        raise ConfigError.many([f"pre-flight: {p}" for p in problems])
    backends = resolved_backends(nodes)
    print(f"pre-flight: {len(nodes)} node(s) ok; data backend " +
          ", ".join(sorted(set(backends.values()))) + f"; {a.gpus_per_trial:g} GPU(s) per trial")
    return backends


def attach_runs(grid: Grid, uri: str, experiment: str, name: str, spec_path: str,
                resume: bool) -> tuple[str, list[dict[str, Any]]]:
    """Create (or, with ``resume``, find again) the parent run and one child run per trial; put
    the run ids and the tracking target into each trial's config, so a trial never makes a run
    of its own.

    Without ``resume`` an existing grid of that name in the experiment is an error (its runs
    are never silently reused); with ``resume`` the trials must be the ones the grid started
    with (Tune's restore ignores added trials), else the error names what changed.
    """
    from pipeline.config import TrialConfig
    from pipeline.tracking import ensure_child_runs, ensure_parent_run, git_commit, log_parent_artifacts
    from pipeline.train import run_name

    check_existing_grid(grid, uri, experiment, name, resume)
    commit = git_commit(Path(__file__).resolve().parent)
    parent = ensure_parent_run(uri, experiment, name, {"git_commit": commit, "attnlab.spec": str(spec_path)})
    names = {t.id: run_name(TrialConfig.model_validate(t.config)) for t in grid.trials}
    runs = ensure_child_runs(uri, experiment, parent,
                             [(t.id, names[t.id], {"attnlab.point": t.point[:5000], **_coord_tags(t)})
                              for t in grid.trials])
    trials = []
    for t in grid.trials:
        cfg = json.loads(json.dumps(t.config))
        cfg["tracking"].update({"uri": uri, "experiment": experiment, "run_id": runs[t.id],
                                "parent_run_id": parent, "run_name": names[t.id],
                                "tags": {**cfg["tracking"].get("tags", {}), "attnlab.trial": t.id, "attnlab.grid": name,
                                         "git_commit": commit}})
        trials.append(cfg)
    table = "\n".join(json.dumps({"trial": t.id, "run_id": runs[t.id], **t.coords}) for t in grid.trials)
    log_parent_artifacts(uri, parent, {"spec.yaml": Path(spec_path).read_bytes(), "expansion.jsonl": table})
    os.environ.setdefault("ATTNLAB_GIT_COMMIT", commit)
    return parent, trials


def _coord_tags(t: Trial) -> dict[str, str]:
    """The ablation coordinates as ``coord.*`` tags: columns of the MLflow runs table."""
    return {f"coord.{k}": _cell(v)[:250] for k, v in t.coords.items()}


def close_trial_runs(uri: str, trials: list[dict[str, Any]], rows: list[dict[str, Any]],
                     deltas: dict[str, float], max_epochs: dict[str, int]) -> None:
    """After the grid: every child run ends in a final state, and carries its paired delta.

    A trial stopped by the scheduler is FINISHED and tagged ``stopped_early``; a trial whose
    retries ran out (its worker killed, its node lost) is FAILED with the error, never left
    RUNNING.
    """
    from pipeline.tracking import close_run, get_run, log_run_metrics

    run_of = {c["name"]: c["tracking"]["run_id"] for c in trials}
    for r in rows:
        run_id = run_of.get(r["trial"])
        if run_id is None:
            continue
        if r["trial"] in deltas:
            log_run_metrics(uri, run_id, {"delta_top1": deltas[r["trial"]]})
        if r["status"] == "stopped_early":
            close_run(uri, run_id, "stopped_early", tags={"attnlab.stopped_at_epoch": r.get("epochs")})
        elif get_run(uri, run_id).info.status == "RUNNING":
            close_run(uri, run_id, "failed" if r["status"] == "error" else r["status"],
                      tags={"attnlab.error": r.get("error") or "the trial ended without closing its run"})


def run(grid: Grid, a: argparse.Namespace, name: str, storage: str) -> int:
    from pipeline.tracking import check_store, finish_parent, log_parent_artifacts, ui_url
    from pipeline.tune import cluster_gpus, connect, run_grid

    try:
        uri = tracking_uri(grid, storage)
    except ConfigError as e:
        cli_exit(e)
    with new_stores_removed_on_refusal(uri):  # a refused grid leaves no tracking database behind
        try:
            experiment = (grid.spec.base.get("tracking") or {}).get("experiment") or name
            check_store(uri)  # one line now, not minutes of client retries or a traceback in every trial
            check_existing_grid(grid, uri, experiment, name, a.resume)
            print(f"ray: {connect()}")
            if a.gpus_per_trial is None:
                a.gpus_per_trial = 1.0 if cluster_gpus() > 0 else 0.0
            backends = run_preflight(grid, uri, storage, a)
            for t in grid.trials:  # the backend `auto` resolved to, the same on every node
                t.config["data"]["backend"] = backends[_data_key(t.config["data"])]
            parent_id, trials = attach_runs(grid, uri, experiment, name, a.spec, a.resume)
        except ConfigError as e:
            cli_exit(e)
    print(f"grid {name}: {len(trials)} trials; MLflow {uri} experiment {experiment!r} parent run {parent_id}")
    epochs = {c["name"]: c["optim"]["epochs"] for c in trials}
    rows = run_grid(trials, name=name, storage=storage, resume=a.resume, max_concurrent=a.max_concurrent,
                    cpus_per_trial=a.cpus_per_trial, gpus_per_trial=a.gpus_per_trial,
                    max_failures=a.max_failures, scheduler=a.scheduler, grace_period=a.grace_period,
                    epochs=max(epochs.values()))
    for r in rows:  # a trial that ended cleanly before its last epoch was stopped by the scheduler
        if r["status"] == "finished" and r.get("epochs") is not None and r["epochs"] < epochs.get(r["trial"], 0):
            r["status"] = "stopped_early"
    results = {r["trial"]: r for r in rows}
    deltas = paired_deltas(grid, results, a.metric)
    close_trial_runs(uri, trials, rows, deltas, epochs)
    summary = summarise(grid, results, a.metric)
    text = format_summary(summary, a.metric)
    seeds = sorted({t.coords["seed"] for t in grid.trials})
    print("\n" + text)
    print(f"\n{len(seeds)} seed(s) per point ({', '.join(map(str, seeds))}); each Δ is the mean of the paired "
          f"deltas counted in its row.")
    failed = [r for r in rows if r["status"] == "error"]
    log_parent_artifacts(uri, parent_id, {"summary.md": text + "\n", "summary.json": json.dumps(summary, indent=1),
                                          "results.json": json.dumps(rows, indent=1)})
    finish_parent(uri, parent_id, ok=not failed, metrics={
        "trials": len(rows), "failed": len(failed), "diverged": sum(r["status"] == "diverged" for r in rows),
        "stopped_early": sum(r["status"] == "stopped_early" for r in rows)})
    print(f"\nMLflow runs of this grid, best first: {ui_url(uri, experiment, order_by='best_top1')}")
    print(f"report: python -m experiments.report --grid {name} --tracking-uri {uri}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
