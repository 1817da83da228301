"""Training throughput of the trainer's own step: the whole trainer (loader included) beside the
model-only step on a fixed in-memory batch, each block at its default placement.

    python -m benchmarks.train_throughput [--size auto|small|full] [--threads 1,2] [--res 160,224]
                                          [--batch N] [--steps N] [--repeats N] [--workers N]
                                          [--only se,cbam]
                                          [--no-model-level] [--json]

Both figures time :meth:`pipeline.train.Trial.train_epoch` — the function :func:`pipeline.train.fit`
runs every epoch, with its host syncs (the loss read back every ``SYNC_EVERY`` steps and once per
epoch), autocast, grad scaler, scheduler step and SGD — on a :class:`~pipeline.train.Trial` built
from a :class:`~pipeline.config.TrialConfig`:

* **trainer** — ``Trial.train_epoch`` over the trial's own train loader: data loading and
  augmentation included, as in a real run.
* **model only** — the same ``Trial.train_epoch`` with the trial's loader swapped for one that
  hands out the loader's first batch (already augmented, normalised, on the device, in the
  trainer's memory format) as many times as the real loader has batches: forward, backward and
  optimizer step with nothing else in the loop.

images/s = images of the epoch / wall time of the ``train_epoch`` call (it ends with a host
read of the loss, so the device has finished).  Every setting first runs one untimed warm-up
epoch of each kind; the timed epochs then alternate trainer / model-only (and, on the CPU, the
thread counts), ``--repeats`` of each, and the tables give medians.  Every epoch starts from
the trial's initial weights and optimizer state (restored outside the timed call).

Sizes (``auto``: ``full`` when CUDA is available, else ``small``):

* ``small`` — CIFAR ResNet-20 on the built-in ``digits`` (32x32, 1,438 train images, batch 64,
  22 steps per epoch), fp32, on the CPU, at each ``--threads`` count (default ``1,2``), the
  loader in the training process (no workers); the plain model unless ``--only`` names blocks.
* ``full`` — torchvision ResNet-50 on CUDA at each ``--res`` (default ``160,224``), bf16 autocast
  and channels_last, batch 128, the ``synthetic`` dataset stored at the training resolution
  (1000 classes, ``--steps`` x batch train images, ImageNet-style random-resized-crop and flip
  done on the host by the in-memory loader, its crops on ``data.workers`` threads, by default
  min(8, CPUs)), cuDNN benchmark mode; a row per block (``blocks.names("stage")`` at its
  registry default placement, then the model-level ``ltpa`` / ``pyramid``) with its ratio to
  the baseline's images/s beside the ratio of their GMACs, and the peak of
  ``torch.cuda.max_memory_allocated()`` in MiB (2^20 bytes) over the row's epochs.

Optimizer: SGD with momentum 0.9 and the linear scaling rule (Goyal et al., arXiv 1706.02677):
``full`` takes the ImageNet specs' recipe, lr 0.1 per 256 images and weight decay 1e-4 (at lr 0.1
for batch 128, twice that rule, pam, danet, gsa and ltpa drove the loss to NaN within the first
20 steps on a GPU, and the row reported the divergence instead of a speed); ``small`` keeps lr 0.1
at batch 64 and weight decay 5e-4.

GMACs: the trial's own count (:func:`blocks.cost.count_macs`, one forward pass of one image at
the validation resolution; convolutions and matrix products only).
"""
from __future__ import annotations

import copy
import gc
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from pipeline.config import MAX_BATCH, MAX_RES, MIN_RES, validate_trial
from pipeline.errors import ArgumentParser, int_list, int_range, name_list
from pipeline.train import Trial

BASELINE = "none"
SIZES: dict[str, dict[str, Any]] = {
    "small": dict(backbone="cifar_resnet20", dataset="digits", res=[32], batch=64, precision="fp32",
                  channels_last=False, device="cpu", threads=[1, 2], repeats=5, steps=None, workers=0,
                  lr_per_256=0.4, weight_decay=5e-4),
    "full": dict(backbone="resnet50", dataset="synthetic", res=[160, 224], batch=128, precision="bf16",
                 channels_last=True, device="cuda", threads=[None], repeats=3, steps=20, workers=None,
                 lr_per_256=0.1, weight_decay=1e-4),
}


class FixedBatch:
    """A stand-in for a trial's train loader: one batch, ``steps`` times (the model-only step)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int):
        self.x, self.y, self.steps = x, y, steps

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.x, self.y


@dataclass
class Row:
    attention: str
    res: int
    threads: Optional[int] = None
    placement: str = "-"
    status: str = "ok"
    params: int = 0
    gmacs: float = math.nan
    trainer_ips: float = math.nan  # images/s of Trial.train_epoch over the real loader (median)
    model_ips: float = math.nan  # images/s of Trial.train_epoch over a fixed batch (median)
    trainer_runs: list[float] = field(default_factory=list)
    model_runs: list[float] = field(default_factory=list)
    peak_mib: float = math.nan
    gmacs_x: float = math.nan
    trainer_x: float = math.nan
    model_x: float = math.nan


def trial_tree(s: dict[str, Any], attention: str, res: int, work_dir: str) -> dict[str, Any]:
    data: dict[str, Any] = {"dataset": s["dataset"], "batch_size": s["batch"], "workers": s["workers"],
                            "backend": "torch", "channels_last": s["channels_last"]}
    if s["dataset"] == "synthetic":
        data["synthetic"] = {"num_classes": 1000, "image_size": res, "train_count": s["batch"] * s["steps"],
                             "val_count": 8}
    else:
        data.update(train_res=res, val_res=res)
    return {"model": {"backbone": s["backbone"], "attention": None if attention == BASELINE else attention},
            "data": data, "optim": {"epochs": 100, "lr": s["lr_per_256"] * s["batch"] / 256, "momentum": 0.9,
                                    "weight_decay": s["weight_decay"]},
            "precision": s["precision"], "device": s["device"], "channels_last": s["channels_last"],
            "seed": 0, "work_dir": work_dir, "tracking": {"enabled": False}, "checkpoint": {"every": 0}}


def placement(trial: Trial) -> str:
    spec = trial.cfg.model.resolved_attention()
    if spec is None:
        return "-"
    where = "stages " + ",".join(str(x) for x in spec.stages)
    if spec.slot is None:
        return f"model-level, {where}"
    every = f", every {spec.every}" if spec.slot == "after_block" else ""
    return f"{spec.slot}, {where}{every}"


def _threads(n: Optional[int]) -> None:
    if n:
        torch.set_num_threads(n)


def measure(attention: str, res: int, s: dict[str, Any], work_dir: str) -> list[Row]:
    """One trial for ``attention`` at ``res``; a row per thread count (the CPU) or one row."""
    rows = [Row(attention, res, t) for t in s["threads"]]
    trial = None
    try:
        trial = Trial(validate_trial(trial_tree(s, attention, res, work_dir)))
        real = trial.train_loader
        x, y = next(iter(real))
        fixed = FixedBatch(x, y, len(real))
        cuda = trial.device.type == "cuda"
        epoch = 0
        # every epoch starts from the initial weights and optimizer state: the same work each
        # time, and no drift (epochs of one repeated batch at a constant lr of 0.1 drove the
        # position-attention blocks, pam and danet, to NaN by the third epoch)
        start = copy.deepcopy((trial.model.state_dict(), trial.opt.state_dict()))

        def run(loader, n_threads) -> float:
            nonlocal epoch
            _threads(n_threads)
            trial.model.load_state_dict(start[0])
            trial.opt.load_state_dict(start[1])
            trial.train_loader = loader
            n = len(loader) * s["batch"]
            t0 = time.perf_counter()
            trial.train_epoch(epoch)  # ends with a host read of the summed loss
            dt = time.perf_counter() - t0
            epoch += 1
            return n / dt

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for r in rows:  # warm-up: one epoch of each kind per setting (cuDNN autotuning, caches)
            run(real, r.threads)
            run(fixed, r.threads)
        for _ in range(s["repeats"]):
            for r in rows:
                r.trainer_runs.append(run(real, r.threads))
                r.model_runs.append(run(fixed, r.threads))
        for r in rows:
            r.placement, r.params, r.gmacs = placement(trial), trial.params, trial.gmacs
            r.trainer_ips = statistics.median(r.trainer_runs)
            r.model_ips = statistics.median(r.model_runs)
            if cuda:
                r.peak_mib = torch.cuda.max_memory_allocated() / 2**20
    except Exception as e:  # noqa: BLE001 - reported in the row; the other rows still run
        oom = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()
        msg = f"out of memory at batch {s['batch']}" if oom else \
            f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        if not oom:
            traceback.print_exc(file=sys.stderr)
        for r in rows:
            r.status = msg
    finally:
        trial = None  # noqa: F841 - free before the next row
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def fill_ratios(rows: list[Row]) -> None:
    for r in rows:
        base = next((b for b in rows if b.attention == BASELINE and b.res == r.res and b.threads == r.threads
                     and b.status == "ok"), None)
        if base is not None and r.status == "ok":
            r.gmacs_x = r.gmacs / base.gmacs
            r.trainer_x = r.trainer_ips / base.trainer_ips
            r.model_x = r.model_ips / base.model_ips


def table(rows: list[Row], gpu: bool) -> str:
    def f(v: float, fmt: str) -> str:
        return "-" if math.isnan(v) else format(v, fmt)

    head = "| attention | placement | res | threads | GMACs | × GMACs | trainer img/s | model-only img/s | " \
           "trainer / model-only | × trainer | × model-only |"
    sep = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if gpu:
        head, sep = head + " peak MiB | status |", sep + "---:|---|"
    else:
        head, sep = head + " status |", sep + "---|"
    out = [head, sep]
    for r in rows:
        name = "baseline" if r.attention == BASELINE else r.attention
        share = r.trainer_ips / r.model_ips if r.status == "ok" else math.nan
        line = (f"| {name} | {r.placement} | {r.res} | {r.threads or '-'} | {f(r.gmacs, '.3f')} | "
                f"{f(r.gmacs_x, '.3f')} | {f(r.trainer_ips, '.0f')} | {f(r.model_ips, '.0f')} | {f(share, '.2f')} | "
                f"{f(r.trainer_x, '.2f')} | {f(r.model_x, '.2f')} |")
        out.append(line + (f" {f(r.peak_mib, '.0f')} |" if gpu else "") + f" {r.status} |")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("auto", "full", "small"), default="auto")
    p.add_argument("--threads", type=int_list(1, 1024), default=None, help="comma list of torch thread counts (CPU)")
    p.add_argument("--res", type=int_list(MIN_RES, MAX_RES), default=None, help="comma list of resolutions (px)")
    p.add_argument("--batch", type=int_range(1, MAX_BATCH), default=None)
    p.add_argument("--steps", type=int_range(1, 100_000), default=None,
                   help="steps per epoch (full size: synthetic train images / batch)")
    p.add_argument("--repeats", type=int_range(1, 1000), default=None, help="timed epochs of each kind per setting")
    p.add_argument("--workers", type=int_range(0, 512), default=None,
                   help="data.workers: worker processes of a file loader, crop threads of the in-memory one on "
                        "a GPU (small: 0; full: the trainer's default, min(8, CPUs))")
    p.add_argument("--only", type=name_list(what="attention"), default=None, help="comma list of attentions (the baseline always runs)")
    p.add_argument("--no-model-level", action="store_true", help="skip ltpa/pyramid (full size)")
    p.add_argument("--json", action="store_true", help="settings and rows as JSON instead of the table")
    a = p.parse_args(argv)

    import blocks

    size = a.size if a.size != "auto" else ("full" if torch.cuda.is_available() else "small")
    s = dict(SIZES[size], size=size)
    for k in ("threads", "res", "batch", "steps", "repeats", "workers"):
        if getattr(a, k) is not None:
            s[k] = getattr(a, k)
    if s["device"] == "cuda":
        if not torch.cuda.is_available():
            p.error("--size full runs on CUDA, which is not available here; use --size small")
        torch.backends.cudnn.benchmark = True
        s["threads"] = [None]
    if size == "small":
        names = [BASELINE]
        if a.only is not None:
            names += [n for n in a.only if n != BASELINE]
    else:
        names = [BASELINE, *blocks.names("stage")] + ([] if a.no_model_level else blocks.names("model"))
        if a.only is not None:
            names = [n for n in names if n == BASELINE or n in a.only]
    known = {BASELINE, *blocks.names()}
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error(f"--only: unknown {', '.join(unknown)}; valid: {', '.join(sorted(known - {BASELINE}))}")

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as work:
        for res in s["res"]:
            for n in names:
                for r in measure(n, res, s, work):
                    rows.append(r)
                    print(f"{n} @ {res}px, threads {r.threads or '-'}: {r.status}  trainer {r.trainer_ips:.0f} "
                          f"img/s  model-only {r.model_ips:.0f} img/s  GMACs {r.gmacs:.3f}  peak {r.peak_mib:.0f} MiB  "
                          f"runs {[round(v) for v in r.trainer_runs]} / {[round(v) for v in r.model_runs]}",
                          file=sys.stderr, flush=True)
    fill_ratios(rows)
    gpu = s["device"] == "cuda"
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpus": __import__("os").cpu_count(),
           "device_name": torch.cuda.get_device_name() if gpu else "cpu",
           "timed": "pipeline.train.Trial.train_epoch",
           "model_only": "Trial.train_epoch over a fixed on-device batch (FixedBatch)"}
    if a.json:
        print(json.dumps({"settings": s, "env": env, "rows": [asdict(r) for r in rows]}, indent=1))
    else:
        print(f"{s['backbone']} on {s['dataset']}, batch {s['batch']}, {s['precision']}, "
              f"{'channels_last' if s['channels_last'] else 'contiguous'}, {env['device_name']}; "
              f"timed: {env['timed']}; medians of {s['repeats']} epochs each, alternating; torch {env['torch']}")
        print(table(rows, gpu))
    failed = [r for r in rows if r.status != "ok" and not r.status.startswith("out of memory")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
