"""Run a hyper-parameter search: Optuna's sampler on Ray Tune; the entry point of ``ray job submit``.

    python experiments/search.py --spec experiments/specs/search/digits.yaml --trials 12
    python experiments/search.py --spec ... --resume --trials 24      # 12 more, same study
    python experiments/search.py --spec ... --objective top1,gmacs    # accuracy against cost
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python experiments/search.py --spec experiments/specs/search/digits.yaml

The spec (see :mod:`pipeline.search`) is a base trial config and a search space conditional on
the block.  The Optuna study lives in ``<storage>/<name>/study.db`` (or ``--study-storage``,
any SQLAlchemy URL); ``--resume`` continues it: new trials are added, finished ones never run
again.  ``--trials`` is the total the study should reach.  MLflow: one parent run per search
(``attnlab.kind=search``), one child run per trial; the best config and, with two objectives,
the Pareto front (table and plot) are artifacts of the parent run.  Usage and spec errors are
one line each, exit 2, before anything runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from experiments.cli import (DEFAULT_STORAGE, check_grace_period, check_run_flags, new_stores_removed_on_refusal,
                             storage_folder)
from pipeline.errors import ConfigError, cli_exit
from pipeline.uris import in_memory_sqlite, pinned_sqlite


def parse_args(argv: Optional[list[str]]) -> Any:
    from pipeline.errors import ArgumentParser
    from pipeline.search import MAX_TRIALS

    p = ArgumentParser(prog="experiments/search.py", description="Run an Optuna search on Ray Tune.")
    p.add_argument("--spec", required=True, help="search spec (YAML), e.g. experiments/specs/search/digits.yaml")
    p.add_argument("--name", default=None, help="search name: the study's and the parent run's (default: the spec's)")
    p.add_argument("--trials", type=int, default=None,
                   help="trials the study should have in all (default: the spec's 'trials'); with --resume the "
                        "missing ones run")
    p.add_argument("--resume", action="store_true", help="continue the study of this name (new trials are added)")
    p.add_argument("--objective", default=None,
                   help="top1 (maximise best val top-1) or top1,gmacs (and minimise GMACs: a Pareto front); "
                        "default: the spec's")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0: as the cluster's resources allow)")
    p.add_argument("--storage", default=None, help=f"Tune storage folder or URI (default {DEFAULT_STORAGE})")
    p.add_argument("--study-storage", default=None,
                   help="Optuna storage, a SQLAlchemy URL (default sqlite:///<storage>/<name>/study.db), "
                        "e.g. postgresql://user@host/optuna")
    p.add_argument("--scheduler", choices=["asha", "none"], default="asha",
                   help="asha (default): stop trials early on per-epoch val top-1 (tagged stopped_early, "
                        "PRUNED in the study)")
    p.add_argument("--grace-period", type=int, default=None,
                   help="with asha: epochs every trial runs before it may be stopped (default epochs/8, at least 1)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial (from its checkpoint)")
    p.add_argument("--check", action="store_true", help="check the spec and print the space; run nothing")
    a = p.parse_args(argv)
    if a.trials is not None and not 1 <= a.trials <= MAX_TRIALS:
        p.error(f"--trials must be 1..{MAX_TRIALS:,}, got {a.trials:,}")
    check_run_flags(p, a)
    p.refuse_blank("--study-storage", a.study_storage, "give a SQLAlchemy URL (leave the flag out for the default)")
    if a.objective is not None:
        objs = [o.strip() for o in a.objective.split(",")]
        if objs not in (["top1"], ["top1", "gmacs"], ["gmacs", "top1"]):
            p.error(f"--objective must be top1 or top1,gmacs, got {a.objective!r}")
        a.objective = ["top1", "gmacs"] if len(objs) == 2 else ["top1"]
    return a


def tracking_uri(search: Any, storage: str) -> str:
    from pipeline.tracking import grid_tracking_uri

    return grid_tracking_uri(search.base, storage)


def study_url(a: Any, storage: str, name: str) -> str:
    if a.study_storage:
        url = pinned_sqlite(a.study_storage)  # the file the refusal clean-up and Optuna both mean
        if in_memory_sqlite(url):
            raise ConfigError(f"--study-storage {url}: an in-memory SQLite study is lost when the search ends and "
                              "cannot be resumed; name a file (sqlite:///PATH)")
        return url
    if "://" in storage:
        raise ConfigError("--study-storage: a cloud --storage has no local SQLite; give a SQLAlchemy URL "
                          "(e.g. postgresql://user@host/optuna)")
    return f"sqlite:///{Path(storage) / name / 'study.db'}"


def shown_url(url: str) -> str:
    """A storage URL without its password (for logs and tags)."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def print_space(search: Any) -> None:
    print(f"search {search.spec.name}: objectives {', '.join(search.objectives)}; {search.spec.trials} trials")
    print(f"  attention: {', '.join(search.labels)}")
    for d in search.dims:
        print(f"  {d.name}: {d.describe()}" + (f"  (only with {d.block})" if d.block else ""))


def check_parent(uri: str, experiment: str, name: str, resume: bool) -> None:
    from pipeline.tracking import find_parent_run

    old = find_parent_run(uri, experiment, name)
    if old is None:
        return
    if old.data.tags.get("attnlab.kind") != "search":
        raise ConfigError(f"{name!r} is a {old.data.tags.get('attnlab.kind', 'grid')} in MLflow experiment "
                          f"{experiment!r}; give the search another --name")
    if not resume:
        raise ConfigError(f"search {name!r} already has runs in MLflow experiment {experiment!r} (parent run "
                          f"{old.info.run_id}); add --resume to continue it, or --name to start a new one")


def preflight(search: Any, uri: str, storage: str, a: Any) -> None:
    """The grid's pre-flight on every node, for the search's base data; the backend ``auto``
    resolves to is written into the base."""
    from experiments.grid import _data_key, run_preflight
    from experiments.spec import Grid, Trial
    from pipeline.config import TrialConfig

    dump = TrialConfig.model_validate(search.tree({})).model_dump(mode="json")
    grid = Grid(spec=None, path=None, trials=[Trial(id="base", config=dump, coords={}, point="", baseline_point="")])
    backends = run_preflight(grid, uri, storage, a)
    search.base.setdefault("data", {})["backend"] = backends[_data_key(dump["data"])]


def close_runs(uri: str, experiment: str, parent: str, rows: list[dict[str, Any]]) -> dict[int, str]:
    """Every child run in a final state: a stopped trial FINISHED (``stopped_early``), one still
    RUNNING (its retries ran out, its worker died) FAILED; also those left by an interrupted
    session. Returns trial number -> run id."""
    from pipeline.tracking import child_trial_ids, close_run

    kids = child_trial_ids(uri, experiment, parent)
    by_trial = {r["trial"]: r for r in rows}
    runs = {}
    for key, run in kids.items():
        if key is None:
            continue
        r = by_trial.get(key)
        if run.data.tags.get("attnlab.optuna_trial", "").isdigit():
            runs[int(run.data.tags["attnlab.optuna_trial"])] = run.info.run_id
        if r is not None and r["status"] == "stopped_early":
            close_run(uri, run.info.run_id, "stopped_early", tags={"attnlab.stopped_at_epoch": r.get("epochs")})
        elif run.info.status == "RUNNING":
            why = (r or {}).get("error") or ("the trial ended without closing its run" if r else
                                             "interrupted: its search session ended before it did")
            close_run(uri, run.info.run_id, "failed", tags={"attnlab.error": why})
    return runs


def main(argv: Optional[list[str]] = None) -> int:
    a = parse_args(argv)
    with contextlib.ExitStack() as stack:
        return _main(a, stack)


def _main(a: Any, stack: contextlib.ExitStack) -> int:
    try:
        from pipeline.search import load_search

        search = load_search(a.spec)
        if a.objective:
            search.objectives = a.objective
        name = a.name or search.spec.name
        total = a.trials or search.spec.trials
        epochs = next((max(d.choices if d.choices is not None else [d.high]) for d in search.dims
                       if d.key == "optim.epochs"), search.config({}).optim.epochs)
        check_grace_period(a.grace_period, int(epochs))
        if a.check:
            print_space(search)
            return 0
        from pipeline.preflight import ray_address_problem

        if problem := ray_address_problem():
            raise ConfigError(problem)
        storage = stack.enter_context(storage_folder(a.storage))  # made now, removed if left empty
        url = study_url(a, storage, name)
        uri = tracking_uri(search, storage)
        experiment = (search.base.get("tracking") or {}).get("experiment") or name
        from pipeline.tracking import check_store
        from pipeline.search import open_study

        fingerprint = search.fingerprint()
        check_store(uri)  # a malformed or dead tracking URI before the study file is made
        stores = stack.enter_context(new_stores_removed_on_refusal(uri, url))  # a refused search leaves neither
        open_study(name, url, search, a.resume, fingerprint, check_only=True)  # the study before any run
        check_parent(uri, experiment, name, a.resume)
    except ConfigError as e:
        cli_exit(e)
    return run(search, a, name, total, storage, url, uri, experiment, fingerprint, stores)


def run(search: Any, a: Any, name: str, total: int, storage: str, url: str, uri: str, experiment: str,
        fingerprint: str, stores: Any = None) -> int:
    from pipeline.search import SpaceFn, make_sampler, make_storage, objective_metrics, open_study
    from pipeline.tracking import ensure_parent_run, finish_parent, git_commit, log_parent_artifacts, ui_url
    from pipeline.tune import cluster_gpus, connect, run_search

    try:
        print(f"ray: {connect()}")
        if a.gpus_per_trial is None:
            a.gpus_per_trial = 1.0 if cluster_gpus() > 0 else 0.0
        preflight(search, uri, storage, a)
        commit = git_commit(Path(__file__).resolve().parent)
        parent = ensure_parent_run(uri, experiment, name, {
            "attnlab.kind": "search", "attnlab.search": name, "git_commit": commit,
            "attnlab.spec": str(a.spec), "attnlab.study": shown_url(url),
            "attnlab.objectives": ",".join(search.objectives)})
        info = open_study(name, url, search, a.resume, fingerprint)
    except ConfigError as e:
        cli_exit(e)
    if stores is not None:
        stores.keep()  # the parent run and the study exist: from here on they stay
    os.environ.setdefault("ATTNLAB_GIT_COMMIT", commit)
    if a.resume:
        close_runs(uri, experiment, parent, [])  # runs an interrupted session left RUNNING
        if info["interrupted"]:
            print(f"resume: trial(s) {', '.join(map(str, info['interrupted']))} were interrupted: marked FAIL "
                  f"in the study (not re-run)")
    log_parent_artifacts(uri, parent, {"spec.yaml": Path(a.spec).read_bytes()})
    new = max(total - info["done"], 0)
    metrics, modes = objective_metrics(search.objectives)
    epochs = int(search.config({}).optim.epochs)
    print(f"search {name}: {info['done']} trial(s) in the study, {new} to run (of {total}); objectives "
          f"{', '.join(search.objectives)}; study {shown_url(url)}; MLflow {uri} experiment {experiment!r} "
          f"parent run {parent}")
    rows: list[dict[str, Any]] = []
    if new:
        rows = run_search(SpaceFn(search), sampler=make_sampler(search.spec.sampler), study_storage=make_storage(url),
                          study_name=name, metrics=metrics, modes=modes, num_samples=new,
                          context={"search": search, "name": name, "uri": uri, "experiment": experiment,
                                   "parent_run_id": parent, "tags": {"git_commit": commit}},
                          storage=storage, session=time.strftime("session-%Y%m%d-%H%M%S"),
                          max_concurrent=a.max_concurrent, cpus_per_trial=a.cpus_per_trial,
                          gpus_per_trial=a.gpus_per_trial, max_failures=a.max_failures, scheduler=a.scheduler,
                          epochs=epochs, grace_period=a.grace_period)
    runs = close_runs(uri, experiment, parent, rows)
    from pipeline.search import record_runs

    record_runs(name, url, runs)
    ok = report(search, name, url, uri, parent, storage, rows, modes)
    failed = [r for r in rows if r["status"] == "failed"]
    finish_parent(uri, parent, ok=ok and not failed, metrics={
        "trials": len(rows), "failed": len(failed), "stopped_early": sum(r["status"] == "stopped_early" for r in rows),
        "diverged": sum(r["status"] == "diverged" for r in rows)})
    print(f"\nMLflow runs of this search, best first: {ui_url(uri, experiment, order_by='best_top1')}")
    print(f"Optuna dashboard: optuna-dashboard {shown_url(url)}")
    return 1 if failed else 0


def report(search: Any, name: str, url: str, uri: str, parent: str, storage: str,
           rows: list[dict[str, Any]], modes: list[str]) -> bool:
    """The study's table (every session), the best config, the Pareto front with two
    objectives; printed and logged to the parent run. False when no trial completed."""
    from pipeline.search import completed, format_rows, pareto_front, plot_pareto, study_rows
    from pipeline.tracking import log_parent_artifacts

    every = study_rows(name, url)
    states: dict[str, int] = {}
    for r in every:
        key = r["status"] or r["state"].lower()
        states[key] = states.get(key, 0) + 1
    print(f"\nstudy {name}: {len(every)} trial(s): " + ", ".join(f"{v} {k}" for k, v in sorted(states.items())))
    done = completed(every)
    files: dict[str, Any] = {"trials.json": json.dumps(every, indent=1, default=str)}
    if not done:
        print("no trial ran its whole schedule: no best config")
        log_parent_artifacts(uri, parent, files)
        return False
    objectives = search.objectives
    best = max(done, key=lambda r: r["values"][0])
    best_cfg = search.config(best["params"]).model_dump(mode="json")
    best_cfg.pop("tracking", None)
    best_cfg.pop("work_dir", None)
    files["best_config.json"] = json.dumps({"trial": best["number"], "values": dict(zip(objectives, best["values"])),
                                            "params": best["params"], "mlflow_run_id": best["run_id"],
                                            "config": best_cfg}, indent=1, default=str)
    if len(objectives) == 1:
        top = sorted(done, key=lambda r: -r["values"][0])[:10]
        text = format_rows(top, objectives)
        print(f"\nbest trials (completed, of the whole study):\n{text}")
        files["best_trials.md"] = text + "\n"
    else:
        front = pareto_front(done, modes)
        text = format_rows(front, objectives)
        print(f"\nPareto front ({len(front)} of {len(done)} completed trials; top1 up, gmacs down):\n{text}")
        files["pareto.md"] = text + "\n"
        files["pareto.json"] = json.dumps(front, indent=1, default=str)
        out = Path(storage) / name if "://" not in storage else Path(os.environ.get("TMPDIR", "/tmp")) / f"attnlab-{name}"
        png = plot_pareto(done, front, objectives, out / "pareto.png", f"{name}: val top-1 vs GMACs")
        (out / "pareto.json").write_text(files["pareto.json"])
        _log_file(uri, parent, png)
        print(f"Pareto plot: {png} (and on the parent run)")
    print(f"best config (trial {best['number']}, top1 {best['values'][0]:.2f}): on the parent run, best_config.json")
    log_parent_artifacts(uri, parent, files)
    return True


def _log_file(uri: str, run_id: str, path: Path) -> None:
    from pipeline.tracking import log_parent_artifacts

    log_parent_artifacts(uri, run_id, {path.name: path.read_bytes()})


if __name__ == "__main__":
    sys.exit(main())
