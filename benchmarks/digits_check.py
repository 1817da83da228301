"""Real-data check: ResNet-20 on ``digits``, baseline and with SE / CBAM / SPA / Gaussian.

    python -m benchmarks.digits_check [--only none,se] [--epochs 20] [--lr 0.1] [--batch 64]
                                      [--warmup 1] [--threads 1] [--seed 0]
                                      [--tracking sqlite|server|off] [--checkpoint-every N] [--json]

Every model is trained by :func:`pipeline.train.fit` with one shared recipe (the defaults
below: SGD momentum 0.9, lr 0.1, 1 warm-up epoch from lr/10, cosine to 0 over 20 epochs,
batch 64, weight decay 5e-4 on conv/linear weights, the ``digits`` augmentation = pad 4 and
random crop, fp32), each block at its registry default placement (the placement column).  No
block gets its own settings.  The models run one after the other in this process, on the CPU
by default (``--device``).

Tracking (``--tracking``): ``sqlite`` (the default) — a local SQLite MLflow store in a temporary
folder (removed at the end; ``--keep`` keeps it and prints its URI), so the check also exercises
the trainer's MLflow path; ``server`` — a local MLflow server on 127.0.0.1
(``infra.stack.start_mlflow``, SQLite behind it, stopped at the end), as a grid uses;
``off`` (or ``--no-tracking``) — no tracking.  ``--checkpoint-every N`` writes a checkpoint every
N epochs (default 0: only the final one), each preceded by the tracker's flush, which is what
the tracking overhead is made of; checkpoints are not kept.

Tracking overhead: ``fit`` logs ``tracking_overhead_pct`` = time in tracking calls during the
epochs (each epoch's asynchronous ``log_batch`` and the flush before each checkpoint) / time in
training epochs.  The table gives it with the absolute seconds per epoch behind it, and the
script also times a synchronous one-metric ``log_batch`` to the store (the round trip every
flush waits for at least; median of 20).

Columns: params (whole model), best and final val top-1 (%, 359-image val split), the first
epoch at which val top-1 reached the target (``--target``, default 95), epochs run, wall time
of the whole ``fit`` call (model build, training, evaluation, MLflow logging and the final
artifacts) and the time spent in training epochs alone.  Exits 1 when a model misses the target.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("none", "se", "cbam", "spa", "gaussian")


def placement(cfg) -> str:
    spec = cfg.model.resolved_attention()
    if spec is None:
        return "-"
    where = "stages " + ",".join(str(s) for s in spec.stages)
    every = f", every {spec.every}" if spec.slot == "after_block" else ""
    return f"{spec.slot}, {where}{every}"


def log_round_trip(uri: str, n: int = 20) -> float:
    """Median seconds of a synchronous one-metric ``log_batch`` to ``uri`` (a scratch run)."""
    from pipeline.tracking import Tracker

    t = Tracker(uri, "digits-check-probe")
    t.start("round-trip probe", {}, {})
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        t.log_metrics({"probe": float(i)}, step=i)
        t.flush()
        times.append(time.perf_counter() - t0)
    t.finish("finished")
    return statistics.median(times)


@contextlib.contextmanager
def clocked_tracker(calls: dict[str, list[float]]):
    """Clock every ``Tracker.log_metrics`` and ``Tracker.flush`` call (where the overhead goes)."""
    from pipeline.tracking import Tracker

    real = {name: getattr(Tracker, name) for name in calls}

    def clock(name):
        def wrapped(self, *a, **k):
            t = time.perf_counter()
            try:
                return real[name](self, *a, **k)
            finally:
                if self.enabled:
                    calls[name].append(time.perf_counter() - t)
        return wrapped

    for name in calls:
        setattr(Tracker, name, clock(name))
    try:
        yield
    finally:
        for name, fn in real.items():
            setattr(Tracker, name, fn)


def trial_tree(attention: str, a: argparse.Namespace, work_dir: Path, uri: str | None) -> dict:
    return {
        "model": {"backbone": "cifar_resnet20", "attention": None if attention == "none" else attention},
        "data": {"dataset": "digits", "batch_size": a.batch, "workers": 0, "backend": "torch"},
        "optim": {"epochs": a.epochs, "lr": a.lr, "momentum": 0.9, "weight_decay": a.weight_decay,
                  "warmup_epochs": a.warmup, "schedule": "cosine"},
        "precision": "fp32", "device": a.device, "threads": a.threads, "seed": a.seed,
        "work_dir": str(work_dir),
        "checkpoint": {"every": a.checkpoint_every, "keep_final": False},
        "tracking": {"enabled": uri is not None, "uri": uri, "experiment": "digits-check"},
    }


def run_one(attention: str, a: argparse.Namespace, work_dir: Path, uri: str | None) -> dict:
    from pipeline.config import validate_trial
    from pipeline.train import fit

    cfg = validate_trial(trial_tree(attention, a, work_dir, uri))
    history: list[dict] = []

    def reporter(m: dict, _ckpt) -> None:
        if "train_loss" in m:
            history.append(m)
            if a.verbose:
                print(f"  {attention:8s} epoch {m['epoch']:2d}  loss {m['train_loss']:.4f}  "
                      f"val top-1 {m['val_top1']:5.1f}  lr {m['lr']:.4f}  {m['epoch_time']:.1f} s",
                      file=sys.stderr, flush=True)

    calls: dict[str, list[float]] = {"log_metrics": [], "flush": []}
    t0 = time.perf_counter()
    with clocked_tracker(calls):
        s = fit(cfg, reporter=reporter)
    wall = time.perf_counter() - t0
    reached = next((h["epoch"] for h in history if h["val_top1"] >= a.target), None)
    return {
        "model": "baseline" if attention == "none" else attention, "placement": placement(cfg),
        "status": s["status"], "params": s["params"], "attention_params": s["attention_params"],
        "gmacs": s["gmacs"], "best_top1": s["best_top1"], "final_top1": s["final_top1"],
        "epoch_reached": reached, "epochs": s["epochs"], "wall_s": wall,
        "train_s": sum(h["epoch_time"] for h in history),
        "tracking_overhead_pct": s.get("tracking_overhead_pct", float("nan")) if uri else float("nan"),
        # every Tracker.log_metrics / Tracker.flush call of the run (seconds): one log per epoch
        # plus the final one; a flush before each checkpoint plus the one in finish()
        "log_metrics_s": calls["log_metrics"], "flush_s": calls["flush"],
        "first_loss": history[0]["train_loss"] if history else float("nan"),
        "last_loss": history[-1]["train_loss"] if history else float("nan"),
        "run_id": s["run_id"],
    }


def table(rows: list[dict], target: float) -> str:
    head = (f"| model | placement | params | best top-1 | final top-1 | epoch ≥{target:g}% | epochs "
            f"| train loss first→last | wall s | train s | s/epoch | tracking % | tracking s/epoch |")
    out = [head, "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        pct = r["tracking_overhead_pct"]
        per_epoch = r["train_s"] / max(r["epochs"], 1)
        track = "-" if pct != pct else f"{pct:.2f}"
        track_s = "-" if pct != pct else f"{pct / 100 * per_epoch:.3f}"
        out.append(f"| {r['model']} | {r['placement']} | {r['params']:,} | {r['best_top1']:.1f} | "
                   f"{r['final_top1']:.1f} | {r['epoch_reached'] or 'never'} | {r['epochs']} | "
                   f"{r['first_loss']:.3f}→{r['last_loss']:.4f} | {r['wall_s']:.0f} | {r['train_s']:.0f} | "
                   f"{per_epoch:.1f} | {track} | {track_s} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import ArgumentParser, float_range, name_list

    p = ArgumentParser(prog="python -m benchmarks.digits_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", type=name_list(MODELS, "model"), default=list(MODELS), help=f"comma list from {','.join(MODELS)}")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up epochs")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--target", type=float_range(0, 100), default=95.0, help="val top-1 (%%) to reach")
    p.add_argument("--tracking", choices=("sqlite", "server", "off"), default=None, help="default sqlite")
    p.add_argument("--no-tracking", action="store_true", help="the same as --tracking off")
    p.add_argument("--checkpoint-every", type=int, default=0, help="epochs between checkpoints (0: the final one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary MLflow store")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per epoch on stderr")
    p.add_argument("--json", action="store_true", help="rows as JSON instead of the table")
    a = p.parse_args(argv)
    models = a.only
    from pipeline.config import validate_trial
    from pipeline.errors import ConfigError

    try:  # the recipe flags as the trial config judges them, before anything is started
        for m in models:
            validate_trial(trial_tree(m, a, Path(tempfile.gettempdir()), None))
    except ConfigError as e:
        p.error(f"the recipe flags (--epochs, --lr, --batch, --warmup, ...): {e}")

    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available on this machine (use --device cpu or auto)")

    tmp = Path(tempfile.mkdtemp(prefix="digits-check-"))
    if a.no_tracking and a.tracking not in (None, "off"):
        p.error(f"--no-tracking and --tracking {a.tracking} contradict each other: give one")
    tracking = "off" if a.no_tracking else (a.tracking or "sqlite")
    uri = None if tracking == "off" else f"sqlite:///{tmp / 'mlflow.db'}"
    server_state = None
    rows = []
    round_trip = float("nan")
    try:
        if tracking == "server":
            from infra.stack import free_port, start_mlflow

            server_state = tmp / "mlflow-server"
            uri, _ = start_mlflow(server_state, port=free_port())
        if uri is not None:
            round_trip = log_round_trip(uri)
        for m in models:
            rows.append(run_one(m, a, tmp / m, uri))
            if not a.json:
                r = rows[-1]
                print(f"{r['model']}: best {r['best_top1']:.1f}  final {r['final_top1']:.1f}  "
                      f"{r['wall_s']:.0f} s", file=sys.stderr, flush=True)
    finally:
        if server_state is not None:
            from infra.stack import stop_mlflow

            stop_mlflow(server_state)
        if a.keep:
            print(f"MLflow store kept: {uri}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    recipe = {"epochs": a.epochs, "lr": a.lr, "batch": a.batch, "warmup_epochs": a.warmup,
              "weight_decay": a.weight_decay, "schedule": "cosine", "momentum": 0.9, "seed": a.seed,
              "threads": a.threads, "precision": "fp32", "checkpoint_every": a.checkpoint_every}
    if a.json:
        print(json.dumps({"recipe": recipe, "torch": torch.__version__, "machine": platform.machine(),
                          "tracking": tracking, "log_round_trip_s": round_trip, "rows": rows}, indent=1))
    else:
        print(f"ResNet-20 on digits; recipe {json.dumps(recipe)}; torch {torch.__version__}")
        print(table(rows, a.target))
        if uri is not None:
            print(f"tracking: {tracking}; one-metric log_batch + flush round trip {1000 * round_trip:.0f} ms "
                  f"(median of 20)")
            for r in rows:
                lm, fl = r["log_metrics_s"], r["flush_s"]
                print(f"  {r['model']}: Tracker.log_metrics {len(lm)} calls, median {1000 * statistics.median(lm):.1f} ms; "
                      f"Tracker.flush {len(fl)} calls, median {1000 * statistics.median(fl):.1f} ms, "
                      f"max {1000 * max(fl):.1f} ms")
    return 0 if all(r["best_top1"] >= a.target and r["status"] == "finished" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
