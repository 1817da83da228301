"""Grid overheads: expanding a large spec, where a trial's start-up goes, and Ray Tune's share.

    python -m benchmarks.grid_overhead [--trials 6] [--cpus 2] [--tracking server|sqlite|off]
                                       [--ratios 1000] [--skip-expand] [--skip-startup]
                                       [--skip-tune] [--json]

The trial everywhere is the smoke grid's (``experiments/specs/smoke.yaml``): CIFAR ResNet-20
on the built-in ``digits`` at 16 px, batch 64, 1 thread, attention none / se / spa / gaussian
on stage 1 — here 1 epoch each.

1. **Expansion**: a 10,002-trial spec (spa x 1000 top-k ratios x 5 stage sets x 2 seeds, plus
   the paired baselines) validated and expanded; median of 3.
2. **Start-up breakdown** (``--skip-startup`` skips it): a fresh Python process does what a
   fresh Tune worker does for a trial — ``import pipeline.tune`` (torch, Ray Tune, our
   packages), then :func:`pipeline.train.fit` with ``stop_after=0`` (everything before the
   first epoch: config, data, model, MAC count, MLflow run) under ``cProfile`` — and then the
   same ``fit`` start again in the same process (what a reused worker pays).  The report lists
   the cumulative time of the named steps.  cProfile inflates Python-heavy steps; the
   un-profiled second column is the wall time of the same start without it.
3. **Tune**: ``--trials`` such trials through :func:`pipeline.tune.run_grid` on a local Ray
   with ``--cpus`` CPUs (1 CPU per trial, so ``--cpus`` trials at a time; ``reuse_actors`` is
   on: each worker process runs one trial after the other).  For every trial: Tune starting
   it (driver callback) -> the trainable's function entered (Tune + a worker process start,
   or nothing for a reused worker) -> the trial's first ``Trial.train_epoch`` call.  A trial is
   "first of its worker" when no earlier trial ran in its process.  The trainable is
   :func:`pipeline.tune.trainable` itself, called from a wrapper that only records those two
   moments (the wrapper is what ``run_grid`` hands Tune, through the same ``with_resources``).

Tracking (``--tracking``): ``server`` (the default) starts a local MLflow server on 127.0.0.1
(``infra.stack.start_mlflow``, SQLite behind it) as a grid does; ``sqlite`` gives every trial
its own SQLite store; ``off`` disables tracking (no ``mlflow`` import in the trial).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

SMOKE_BASE = {
    "model": {"backbone": "cifar_resnet20"},
    "data": {"dataset": "digits", "batch_size": 64, "workers": 0, "backend": "torch", "train_res": 16, "val_res": 16},
    "optim": {"epochs": 1, "lr": 0.1, "weight_decay": 5.0e-4, "warmup_epochs": 0},
    "threads": 1,
    "checkpoint": {"every": 1, "keep_final": False},
}
MODELS = ("none", "se", "spa", "gaussian")
# steps timed inside the first fit start: (label, module, attribute, owner class or None)
STEPS = [
    ("Trial(cfg): data, model, optimizer", "pipeline.train", "Trial", "__init__"),
    ("  deterministic_algorithms (the flag, no torch._inductor import)", "pipeline.train", "deterministic_algorithms", None),
    ("  make_loaders", "pipeline.data", "make_loaders", None),
    ("    digits source (the scans from scikit-learn's digits.csv.gz)", "pipeline.data.digits", "load_digits_source", None),
    ("  build_model", "pipeline.train", "build_model", None),
    ("  count_macs (torch's FLOP formulas)", "pipeline.train", "count_macs", None),
    ("  SGD (pipeline.optim)", "pipeline.train", "SGD", "__init__"),
    ("Tracker.start (MLflow run, params, tags)", "pipeline.tracking", "Tracker", "start"),
    ("Tracker.log_dict (config.json artifact)", "pipeline.tracking", "Tracker", "log_dict"),
    ("Tracker.log_dataset", "pipeline.tracking", "Tracker", "log_dataset"),
    ("git_commit", "pipeline.tracking", "git_commit", None),
]

def smoke_tree(i: int, tracking: dict[str, Any], work_dir: str) -> dict[str, Any]:
    a = MODELS[i % len(MODELS)]
    tree = json.loads(json.dumps(SMOKE_BASE))
    tree["model"]["attention"] = None if a == "none" else {"kind": a, "stages": [1], **(
        {"topk_ratio": 0.25} if a == "spa" else {})}
    tree.update(name=f"t{i:02d}-{a}", seed=i // len(MODELS), tracking=tracking, work_dir=work_dir)
    return tree


# -- 1. expansion -------------------------------------------------------------------------------

def bench_expand(n_ratios: int) -> tuple[int, float]:
    from experiments.spec import grid_from_tree

    tree = {"name": "big", "base": {"model": {"backbone": "cifar_resnet20"}, "data": {"dataset": "digits"},
                                    "optim": {"epochs": 1}},
            "axes": {"attention": ["none", "spa"], "topk_ratio": [i / n_ratios for i in range(1, n_ratios + 1)],
                     "stages": [[1], [2], [3], [1, 2], [2, 3]]}, "seeds": 2}
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        g = grid_from_tree(tree, max_trials=10 * n_ratios + 2)
        times.append(time.perf_counter() - t0)
    return len(g.trials), statistics.median(times)


# -- 2. start-up breakdown (runs in a fresh process: --startup-child) ----------------------------

class _Clock:
    """Wall and CPU seconds (this process) of a block."""

    def __init__(self, out: dict[str, Any], label: str):
        self.out, self.label = out, label

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        w, c = self.out.get(self.label, (0.0, 0.0))
        self.out[self.label] = (w + time.perf_counter() - self.w, c + time.process_time() - self.c)


def _time_calls(sink: list[dict[str, Any]]) -> None:
    """Wrap the functions of STEPS so that each call is clocked into ``sink[0]`` (summed over
    calls; a call inside another call of the same function is not counted twice)."""
    import functools
    import importlib

    for label, mod, attr, meth in STEPS:
        owner = getattr(importlib.import_module(mod), attr) if meth else importlib.import_module(mod)
        name = meth or attr
        fn = getattr(owner, name)
        depth = [0]

        def wrapped(*a, _fn=fn, _label=label, _depth=depth, **k):
            if _depth[0]:
                return _fn(*a, **k)
            _depth[0] += 1
            try:
                with _Clock(sink[0], _label):
                    return _fn(*a, **k)
            finally:
                _depth[0] -= 1

        setattr(owner, name, functools.wraps(fn)(wrapped))


def startup_child(tracking: dict[str, Any], work_dir: str, profile_out: Optional[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"python start -> main (interpreter, argparse)": (
        time.perf_counter() - float(os.environ.get("GRID_OVERHEAD_T0", time.perf_counter())), time.process_time())}
    with _Clock(out, "import torch"):
        import torch  # noqa: F401
    with _Clock(out, "import pipeline.tune (Ray Tune, pipeline, blocks)"):
        import pipeline.tune  # noqa: F401 - what a Tune worker imports to run the trainable
    with _Clock(out, "import pipeline.tracking (mlflow)"):
        import pipeline.tracking  # noqa: F401 - fit imports it first thing
    from pipeline.config import validate_trial
    from pipeline.train import fit

    first: dict[str, Any] = {}
    later: dict[str, Any] = {}
    sink = [first]
    _time_calls(sink)
    cfg = validate_trial(smoke_tree(0, tracking, work_dir))
    prof = None
    if profile_out:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    with _Clock(out, "fit start (stop_after=0): the first trial of a process"):
        fit(cfg, stop_after=0)
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile_out)
    out["  of which (first start)"] = first
    sink[0] = later
    n = 3
    for i in range(1, n + 1):  # a reused worker: the same start again
        cfg = validate_trial(smoke_tree(i, tracking, work_dir))
        with _Clock(later, "fit start (stop_after=0)"):
            fit(cfg, stop_after=0)
    out[f"a later trial in the same process (mean of {n})"] = {k: (w / n, c / n) for k, (w, c) in later.items()}
    return out


def bench_startup(tracking: dict[str, Any], work_dir: str, profile_out: Optional[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    child = {"tracking": tracking, "work_dir": work_dir, "profile_out": profile_out}
    r = subprocess.run([sys.executable, "-m", "benchmarks.grid_overhead", "--startup-child", json.dumps(child)],
                       capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, GRID_OVERHEAD_T0=repr(time.perf_counter())))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"start-up child failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["whole process, python start to exit"] = (wall, math.nan)
    return out


# -- 3. Tune ------------------------------------------------------------------------------------

def _timed_trainable(config: dict[str, Any], configs: Optional[dict[str, Any]] = None) -> None:
    """pipeline.tune.trainable (same arguments), plus timestamps written next to the grid's storage."""
    entered, cpu_entered = time.time(), time.process_time()
    from ray import tune

    import psutil  # a Ray dependency

    import pipeline.train as train_mod
    import pipeline.tune as tune_mod

    tree = configs[config["trial"]["id"]] if configs is not None else config["trial"]
    rec = {"trial": tune.get_context().get_trial_id(), "name": tree["name"], "pid": os.getpid(),
           "entered": entered, "imported": time.time(), "cpu_entered": cpu_entered,
           "process_started": psutil.Process().create_time()}
    real = train_mod.Trial.train_epoch

    def train_epoch(self, epoch):
        if "first_epoch" not in rec:
            rec["first_epoch"], rec["cpu_first_epoch"] = time.time(), time.process_time()
        return real(self, epoch)

    train_mod.Trial.train_epoch = train_epoch
    try:
        tune_mod.trainable(config) if configs is None else tune_mod.trainable(config, configs=configs)
    finally:
        train_mod.Trial.train_epoch = real
        with open(Path(config["storage"]) / "timestamps.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


def bench_tune(n: int, cpus: int, tracking: dict[str, Any], storage: str) -> list[dict[str, Any]]:
    import ray
    from ray import tune

    import pipeline.tune as tune_mod

    started: dict[str, float] = {}
    first_result: dict[str, float] = {}

    class Timer(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            started.setdefault(trial.trial_id, time.time())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            first_result.setdefault(trial.trial_id, time.time())

    trees = [smoke_tree(i, tracking, storage) for i in range(n)]
    tune_mod.connect(num_cpus=cpus)
    # functions of __main__ travel by value; the workers need not find this module
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    real = tune_mod.trainable
    tune_mod.trainable = _timed_trainable  # run_grid wraps whatever this name holds
    submitted = time.time()
    try:
        rows = tune_mod.run_grid(trees, name="overhead", storage=storage, cpus_per_trial=1, verbose=0,
                                 max_failures=0, callbacks=[Timer()])
    finally:
        tune_mod.trainable = real
        ray.shutdown()
    bad = [r for r in rows if r["status"] != "finished"]
    if bad:
        raise RuntimeError(f"trials failed: {bad}")
    recs = [json.loads(line) for line in (Path(storage) / "timestamps.jsonl").read_text().splitlines()]
    recs.sort(key=lambda r: r["entered"])
    seen: set[int] = set()
    out = []
    for r in recs:
        tid = r["trial"]
        out.append({"name": r["name"], "pid": r["pid"], "first_of_worker": r["pid"] not in seen,
                    "queued_s": started[tid] - submitted,
                    "start_to_entry_s": r["entered"] - started[tid],
                    "entry_to_first_epoch_s": r["first_epoch"] - r["entered"],
                    "start_to_first_epoch_s": r["first_epoch"] - started[tid],
                    "start_to_first_result_s": first_result[tid] - started[tid],
                    # first trial of a worker: the worker process started before Tune marked
                    # the trial started; this counts from the process start instead
                    "process_start_to_first_epoch_s": r["first_epoch"] - r["process_started"]
                    if r["pid"] not in seen else None,
                    # CPU seconds of the worker process: since it started (first trial of a
                    # worker: process start, imports, set-up) or since the trainable was entered
                    "worker_cpu_to_first_epoch_s": r["cpu_first_epoch"] - (0.0 if r["pid"] not in seen
                                                                           else r["cpu_entered"])})
        seen.add(r["pid"])
    return out


def main(argv: Optional[list[str]] = None) -> int:
    from pipeline.errors import ArgumentParser, int_range, path_flag_problem

    p = ArgumentParser(prog="python -m benchmarks.grid_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--ratios", type=int_range(1, 100_000), default=1000,
                   help="top-k ratios of the expansion spec (10 x ratios + 2 trials)")
    p.add_argument("--trials", type=int_range(1, 10_000), default=6, help="smoke trials through Tune")
    p.add_argument("--cpus", type=int_range(1, 1024), default=2, help="CPUs of the local Ray (= trials at a time)")
    p.add_argument("--tracking", choices=("server", "sqlite", "off"), default="server")
    p.add_argument("--skip-expand", action="store_true")
    p.add_argument("--skip-startup", action="store_true")
    p.add_argument("--skip-tune", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile-out", default=None, help="save the cProfile stats of the first fit start here")
    p.add_argument("--startup-child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.profile_out is not None and a.skip_startup:
        p.error("--profile-out profiles the start-up breakdown, which --skip-startup leaves out")
    if a.profile_out is not None:
        problem = path_flag_problem(a.profile_out)
        if problem:
            p.error(f"--profile-out {a.profile_out!r}: {problem}")
    if a.startup_child is not None:
        try:
            args = json.loads(a.startup_child)
            args = {k: args[k] for k in ("tracking", "work_dir", "profile_out")}
        except (ValueError, TypeError, KeyError) as e:
            p.error(f"--startup-child: not the JSON this benchmark passes its child ({type(e).__name__}: {e})")
        print(json.dumps(startup_child(args["tracking"], args["work_dir"], args["profile_out"])))
        return 0

    if a.json:  # Tune and Ray print to stdout: keep it for the JSON alone
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
        try:
            out = run(a, say=lambda *x: None)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        print(json.dumps(out, indent=1))
    else:
        run(a, say=print)
    return 0


def run(a: argparse.Namespace, say: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                       "python": platform.python_version(), "load_avg_at_start": os.getloadavg()},
                           "tracking": a.tracking}
    say(f"machine: {out['machine']['cpu']}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"load average at start {os.getloadavg()[0]:.1f}")
    if not a.skip_expand:
        n, t = bench_expand(a.ratios)
        out["expand"] = {"trials": n, "median_s": t}
        say(f"expand+validate: {n} trials in {t:.2f} s (median of 3) = {1e6 * t / n:.0f} µs/trial")

    with tempfile.TemporaryDirectory(prefix="grid-overhead-") as tmp:
        state = Path(tmp) / "mlflow"
        tracking: dict[str, Any] = {"enabled": a.tracking != "off", "experiment": "grid-overhead"}
        if a.tracking == "server" and not (a.skip_startup and a.skip_tune):
            from infra.stack import free_port, start_mlflow, stop_mlflow

            url, _ = start_mlflow(state, port=free_port())
            tracking["uri"] = url
        try:
            if not a.skip_startup:
                s = bench_startup(tracking, str(Path(tmp) / "startup"), a.profile_out)
                out["startup"] = s
                say("start-up of one smoke trial in a fresh process (seconds: wall / CPU of the process):")
                for k, v in s.items():
                    if isinstance(v, dict):
                        say(f"  {k}:")
                        for kk, (w, c) in v.items():
                            say(f"    {kk:68s} {w:6.2f} / {c:5.2f}")
                    else:
                        say(f"  {k:70s} {v[0]:6.2f} / {v[1]:5.2f}")
            if not a.skip_tune:
                rows = bench_tune(a.trials, a.cpus, tracking, str(Path(tmp) / "storage"))
                out["tune"] = rows
                say(f"tune: {len(rows)} trials, {a.cpus} at a time, reuse_actors on (s):")
                say("| trial | worker pid | first of its worker | queued | start → trainable | trainable → "
                    "first epoch | start → first epoch | start → first result | worker process start → first "
                    "epoch | worker CPU s to first epoch |")
                say("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
                for r in rows:
                    say(f"| {r['name']} | {r['pid']} | {'yes' if r['first_of_worker'] else 'no'} | {r['queued_s']:.2f} | "
                        f"{r['start_to_entry_s']:.2f} | {r['entry_to_first_epoch_s']:.2f} | "
                        f"{r['start_to_first_epoch_s']:.2f} | {r['start_to_first_result_s']:.2f} | "
                        + (f"{r['process_start_to_first_epoch_s']:.2f}" if r["first_of_worker"] else "-")
                        + f" | {r['worker_cpu_to_first_epoch_s']:.2f} |")
                summary = {}
                for label, first in (("first trial of a worker", True), ("later trials (reused worker)", False)):
                    sel = [r for r in rows if r["first_of_worker"] == first]
                    if sel:
                        wall = [r["process_start_to_first_epoch_s" if first else "start_to_first_epoch_s"] for r in sel]
                        cpu = [r["worker_cpu_to_first_epoch_s"] for r in sel]
                        summary[label] = {"n": len(sel), "median_s": statistics.median(wall), "max_s": max(wall),
                                          "median_worker_cpu_s": statistics.median(cpu)}
                        say(f"  {label}: {'worker process start' if first else 'trial start'} → first epoch median {statistics.median(wall):.2f} s, "
                            f"max {max(wall):.2f} s; worker CPU median {statistics.median(cpu):.2f} s "
                            f"({len(sel)} trials)")
                out["tune_summary"] = summary
        finally:
            if "uri" in tracking:
                stop_mlflow(state)
    return out


if __name__ == "__main__":
    sys.exit(main())
