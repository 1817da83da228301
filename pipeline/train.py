"""One trial: a model (backbone + attention spec) trained on one dataset with one recipe.

    python -m pipeline.train --config FILE [--set optim.lr=0.05 --set model.attention=se ...]
    python -m pipeline.train --config FILE --resume CHECKPOINT

The same :func:`fit` runs stand-alone and inside Ray Tune (``pipeline.tune`` passes a
``reporter`` and a checkpoint folder).  Every trial lands in MLflow once (``pipeline.tracking``).

Exact resume: every epoch starts by seeding all RNGs from ``(seed, epoch)`` and the loaders
order their samples by ``(seed, epoch)``, so epoch ``e`` computes the same numbers whether the
process ran epochs ``0..e-1`` itself or loaded them from a checkpoint.  On CPU, with
deterministic algorithms, a resumed trial's metrics equal an uninterrupted one's bit for bit.
The checkpoint also stores the RNG states, for code that draws outside an epoch.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from blocks import build_model
from blocks.cost import count_macs, count_params

from .config import TrialConfig, load_trial_config
from .errors import ConfigError
from .optim import SGD, StepSchedule

Reporter = Callable[[dict[str, Any], Optional[Path]], None]
CKPT_NAME = "last.pt"
SYNC_EVERY = 50  # training steps between host reads of the running loss (divergence check)


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------

def resolve_device(cfg: TrialConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but CUDA is not available")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def resolve_precision(cfg: TrialConfig, device: torch.device) -> str:
    if cfg.precision == "auto":
        # bf16 where the GPU computes it natively (Ampere and later), else fp16 with the grad
        # scaler (V100, T4: emulated bf16 would be slow), fp32 on CPU.
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision: fp16 needs CUDA (use fp32 or bf16 on CPU)")
    return cfg.precision


def deterministic_algorithms(compiling: bool) -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)``, without its import of inductor
    when nothing is compiled.

    The public call also sets ``torch._inductor.config.deterministic``, which only
    ``torch.compile`` reads, and imports ``torch._inductor`` to do it (docs/grid.md). A trial
    that compiles, or a process where inductor is loaded already, gets the public call.
    """
    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)  # private: absent in some torch
    if compiling or set_flag is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        set_flag(True, warn_only=True)


def seed_everything(seed: int, epoch: int) -> None:
    s = (seed * 1_000_003 + epoch) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def rng_state() -> dict[str, Any]:
    """RNG states as plain types and tensors, loadable with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"python": random.getstate(), "torch": torch.get_rng_state(),
          "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """Weight decay on conv/linear weights only (not on norm parameters, biases, scalar gates)."""
    if not no_decay_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(cfg: TrialConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of ``optim.lr`` at iteration ``step`` (warm-up, then cosine/step/constant)."""
    o = cfg.optim
    epoch = step / steps_per_epoch
    if epoch < o.warmup_epochs:
        return o.warmup_start + (1 - o.warmup_start) * epoch / o.warmup_epochs
    if o.schedule == "cosine":
        t = (epoch - o.warmup_epochs) / max(o.epochs - o.warmup_epochs, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if o.schedule == "step":
        return o.gamma ** sum(epoch >= m for m in o.milestones)
    return 1.0


def checkpoint_path(cfg: TrialConfig, checkpoint_dir: Optional[Path] = None) -> Path:
    """Where a trial keeps its checkpoint: ``checkpoint_dir``, else ``checkpoint.dir``, else
    ``<work_dir>/checkpoints/<run name>``, then ``last.pt``."""
    name = cfg.tracking.run_name or run_name(cfg)
    folder = checkpoint_dir or cfg.checkpoint.dir or Path(cfg.work_dir) / "checkpoints" / name.replace(" ", "_")
    return Path(folder) / CKPT_NAME


def run_name(cfg: TrialConfig) -> str:
    """The ablation coordinates, e.g. ``resnet20 spa@s1 k=0.25 seed0``."""
    short = {"topk_ratio": "k", "topk": "topk", "radius": "r", "heads": "h", "reduction": "r"}
    parts = [cfg.model.backbone.removeprefix("cifar_")]
    spec = cfg.model.resolved_attention()
    if spec is None:
        parts.append("baseline")
    else:
        where = "s" + "".join(str(s) for s in spec.stages)
        slot = "" if spec.slot in (None, spec_default_slot(spec.kind)) else f":{spec.slot}"
        parts.append(f"{spec.kind}@{where}{slot}")
        parts += [f"{short.get(k, k)}={v}" for k, v in sorted(spec.params.items())]
    parts.append(f"seed{cfg.seed}")
    return " ".join(parts)


def spec_default_slot(kind: str) -> str | None:
    from blocks import get

    return get(kind).default_slot


def flat_params(cfg: TrialConfig) -> dict[str, str]:
    """MLflow params: the dotted keys that apply to this trial (``pipeline.config.applicable_params``)."""
    from .config import applicable_params

    return applicable_params(cfg)


def accuracy(logits: torch.Tensor, y: torch.Tensor, ks=(1, 5)) -> list[int]:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (N, k)
    hit = top == y[:, None]
    return [int(hit[:, :k].any(1).sum()) for k in ks]


@dataclass
class TrialState:
    epoch: int = 0  # epochs completed
    best_top1: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

class Trial:
    """Everything one trial needs, built from its config."""

    def __init__(self, cfg: TrialConfig, rank: int = 0, world_size: int = 1):
        from .data import make_loaders

        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg)
        self.precision = resolve_precision(cfg, self.device)
        if self.device.type == "cpu":
            deterministic_algorithms(compiling=cfg.compile)
        seed_everything(cfg.seed, -1)
        self.train_loader, self.val_loader, self.data_info = make_loaders(
            cfg.data, device=self.device, seed=cfg.seed, rank=rank, world_size=world_size)
        num_classes = cfg.model.num_classes or self.data_info["num_classes"]
        if num_classes < self.data_info["num_classes"]:  # a folder data set: its classes are known now
            raise ConfigError(f"model.num_classes: {num_classes} is fewer than the {self.data_info['num_classes']} "
                              f"classes of the data ({cfg.data.dataset})")
        try:
            self.model = build_model(cfg.model.backbone, num_classes, attention=cfg.model.attention,
                                     small_stem=cfg.model.small_stem, pretrained=cfg.model.pretrained)
        except (ValueError, OSError) as e:  # a checkpoint that is missing or does not fit
            if cfg.model.pretrained is None:
                raise
            raise ConfigError(f"model.pretrained: {' '.join(str(e).split())}") from None
        self.res = self.data_info["val_res"]
        self.params = count_params(self.model)
        self.attention_params = sum(count_params(m) for m in self.model.attention_modules)
        # count_macs feeds a CPU tensor: count before the model moves to the device
        self.gmacs = count_macs(self.model, (self.res, self.res)) / 1e9
        self.model = self.model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = self.model
        if world_size > 1:  # the process group is set up by the caller (Ray Train's TorchTrainer)
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.net = torch.compile(self.net)
        o = cfg.optim
        self.opt = SGD(param_groups(self.model, o.weight_decay, o.no_decay_norm_bias),
                       lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
        self.steps_per_epoch = max(len(self.train_loader), 1)
        self.sched = StepSchedule(self.opt, lambda s: lr_factor(cfg, s, self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.state = TrialState()

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": rng_state(), "epoch": self.state.epoch, "best_top1": self.state.best_top1,
            "history": self.state.history, "run_id": self.state.run_id,
            "config": self.cfg.model_dump(mode="json"),
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)  # a kill mid-write never leaves a half checkpoint under the name

    def load(self, path: Path) -> None:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ConfigError(f"checkpoint not found: {path}") from None
        except Exception as e:  # unpickling/zip errors of a truncated or foreign file
            raise ConfigError(f"checkpoint {path} is corrupt or not an attnlab checkpoint: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        if not isinstance(blob, dict) or "model" not in blob or "epoch" not in blob:
            raise ConfigError(f"checkpoint {path} is not an attnlab checkpoint")
        try:
            self.model.load_state_dict(blob["model"])
        except RuntimeError as e:
            raise ConfigError(f"checkpoint {path} does not fit this model: {str(e).splitlines()[0]}") from None
        self.opt.load_state_dict(blob["optimizer"])
        self.sched.load_state_dict(blob["scheduler"])
        self.scaler.load_state_dict(blob["scaler"])
        rng = blob.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if "python" in rng:
            v, state, g = rng["python"]
            random.setstate((v, tuple(state), g))
        if "numpy" in rng:
            name, keys, pos, has_gauss, cached = rng["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        self.state = TrialState(epoch=int(blob["epoch"]), best_top1=float(blob["best_top1"]),
                                history=list(blob["history"]), run_id=blob.get("run_id"))

    # -- epochs --------------------------------------------------------------------------------
    def autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _fault(self, kind: str, epoch: int) -> bool:
        f = self.cfg.fault
        if getattr(f, f"{kind}_at_epoch") != epoch or f.once_file is None or f.once_file.exists():
            return False
        f.once_file.parent.mkdir(parents=True, exist_ok=True)
        f.once_file.write_text(f"{kind} at epoch {epoch}, pid {os.getpid()}\n")
        return True

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.net.train()
        self.train_loader.set_epoch(epoch)
        if self._fault("raise", epoch):
            raise RuntimeError(f"injected fault: raise at epoch {epoch}")
        # The loss is summed on the device and read back every SYNC_EVERY steps and at the end:
        # a `.item()` per step would stall the GPU's queue on every iteration.
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        n, t0 = 0, time.perf_counter()
        for i, (x, y) in enumerate(self.train_loader):
            if i == 1 and self._fault("kill", epoch):
                import signal

                os.kill(os.getpid(), signal.SIGKILL)  # mid-epoch, as a lost node would
            with self.autocast():
                loss = F.cross_entropy(self.net(x), y, label_smoothing=self.cfg.optim.label_smoothing)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.optim.grad_clip:
                self.scaler.unscale_(self.opt)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            total += loss.detach().double() * len(y)
            n += len(y)
            if (i + 1) % SYNC_EVERY == 0:
                self._check_finite(total, epoch)
        sums = self._all_reduce([total, n])  # one host sync per epoch (across ranks with DDP)
        self._check_finite(sums[0], epoch)
        dt = time.perf_counter() - t0
        total_n = int(sums[1])
        return {"train_loss": float(sums[0]) / max(total_n, 1), "images_per_s": total_n / dt if dt > 0 else 0.0,
                "epoch_time": dt}

    def _check_finite(self, total: torch.Tensor, epoch: int) -> None:
        if not torch.isfinite(total):
            raise Diverged(f"loss is {float(total)} at epoch {epoch} (lr {self.sched.get_last_lr()[0]:.4g})")

    def _all_reduce(self, values: list) -> torch.Tensor:
        """Sums over the ranks of a DDP trial (float64); the values themselves otherwise."""
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in values])
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t.cpu()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.net.eval()
        loss, c1, c5, n = 0.0, 0, 0, 0
        for x, y in self.val_loader:
            with self.autocast():
                logits = self.net(x)
            loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
            a1, a5 = accuracy(logits, y)
            c1, c5, n = c1 + a1, c5 + a5, n + len(y)
        loss, c1, c5, n = self._all_reduce([loss, c1, c5, n]).tolist()  # every val sample once over the ranks
        n = max(n, 1)
        return {"val_loss": loss / n, "val_top1": 100.0 * c1 / n, "val_top5": 100.0 * c5 / n}


def fit(cfg: TrialConfig, *, reporter: Optional[Reporter] = None, checkpoint_dir: Optional[Path] = None,
        resume_from: Optional[Path] = None, stop_after: Optional[int] = None,
        rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Train one trial; return its final summary (``status`` finished | diverged).

    ``checkpoint_dir``: where ``last.pt`` goes (default ``checkpoint.dir`` or
    ``<work_dir>/checkpoints/<run name>``); ``resume_from``: a checkpoint to continue from (the
    same MLflow run continues); ``stop_after``: stop after this many epochs in total (tests).
    ``rank``/``world_size``: one process of a DDP trial (the process group already set up);
    rank 0 alone tracks to MLflow and writes checkpoints.
    """
    from .tracking import Tracker, close_run, default_uri, git_commit, host

    t = cfg.tracking
    lead = rank == 0
    uri = t.uri or default_uri(cfg.work_dir)
    tracking = t.enabled and lead
    try:
        trial = Trial(cfg, rank, world_size)
        if resume_from is not None:
            trial.load(Path(resume_from))
    except BaseException as e:
        # A grid made this trial's run up front: it must not stay RUNNING when the trial cannot
        # even start (a model that does not build, data that is not there).
        if tracking and t.run_id:
            close_run(uri, t.run_id, "failed",
                      tags={"attnlab.error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:4000]})
        raise
    # the store is opened (a default SQLite file created) only once the data and model are built
    tracker = Tracker(uri, t.experiment) if tracking else Tracker(None)
    name = cfg.tracking.run_name or run_name(cfg)
    ckpt_path = checkpoint_path(cfg, checkpoint_dir)
    info = trial.data_info
    tags = {"git_commit": git_commit(), "dataset_fingerprint": info["fingerprint"], "torch_version": torch.__version__,
            "device": str(trial.device) + (f" ({torch.cuda.get_device_name()})" if trial.device.type == "cuda" else ""),
            "host": host(), "attnlab.precision": trial.precision, **t.tags}
    run_id = tracker.start(name, flat_params(cfg), tags, run_id=trial.state.run_id or t.run_id,
                           parent_run_id=t.parent_run_id)
    trial.state.run_id = run_id
    if resume_from is None and trial.state.epoch == 0:
        tracker.log_dict(cfg.model_dump(mode="json"), "config.json")
        tracker.log_dataset(info["name"], info["fingerprint"], str(cfg.data.root or f"builtin:{info['name']}"))

    status, message = "finished", ""
    final_report = None  # the last epoch's report waits until the run is complete (see below)
    log_s, train_s = 0.0, 0.0  # time in tracking calls vs in training, for the overhead figure
    try:
        last = cfg.optim.epochs if stop_after is None else min(stop_after, cfg.optim.epochs)
        for epoch in range(trial.state.epoch, last):
            seed_everything(cfg.seed, epoch)
            if trial.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            m = {"lr": trial.sched.get_last_lr()[0]}
            m.update(trial.train_epoch(epoch))
            m.update(trial.evaluate())
            if trial.device.type == "cuda":
                m["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
            trial.state.epoch = epoch + 1
            trial.state.best_top1 = max(trial.state.best_top1, m["val_top1"])
            m["best_top1"] = trial.state.best_top1
            trial.state.history.append({"epoch": epoch + 1, **m})
            train_s += m["epoch_time"]
            t_log = time.perf_counter()
            tracker.log_metrics(m, step=epoch + 1)
            log_s += time.perf_counter() - t_log
            saved = None
            every = cfg.checkpoint.every
            if (every and (epoch + 1) % every == 0) or epoch + 1 == cfg.optim.epochs:
                t_log = time.perf_counter()
                tracker.flush()
                log_s += time.perf_counter() - t_log
                if lead:
                    trial.save(ckpt_path)
                    saved = ckpt_path
            final_report = ({**m, "epoch": epoch + 1, "diverged": 0.0}, saved)
            if reporter is not None and epoch + 1 < cfg.optim.epochs:
                reporter(*final_report)
                final_report = None
    except Diverged as e:
        status, message = "diverged", str(e)
        print(f"trial {name!r} diverged: {e}", file=sys.stderr)
    except SystemExit:
        # Ray Tune ends a trial it stops (a scheduler's early stop) by raising SystemExit in its
        # thread: not a failure of the trial. The grid driver closes the run (stopped early).
        tracker.flush()
        raise
    except BaseException as e:  # the run is closed honestly; a retry re-opens it
        tracker.set_tags({"attnlab.error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:4000]})
        tracker.finish("killed" if isinstance(e, KeyboardInterrupt) else "failed")
        raise

    summary = {
        "status": status, "message": message, "run_id": run_id, "run_name": name,
        "epochs": trial.state.epoch, "best_top1": trial.state.best_top1,
        "final_top1": trial.state.history[-1]["val_top1"] if trial.state.history else float("nan"),
        "params": trial.params, "attention_params": trial.attention_params, "gmacs": trial.gmacs,
        "checkpoint": str(ckpt_path) if ckpt_path.exists() else None,
    }
    done = trial.state.epoch >= cfg.optim.epochs or status == "diverged"
    if done:
        if train_s > 0:
            summary["tracking_overhead_pct"] = 100.0 * log_s / train_s
        tracker.log_metrics({"final_top1": summary["final_top1"], "params": trial.params,
                             "tracking_overhead_pct": summary.get("tracking_overhead_pct"),
                             "attention_params": trial.attention_params, "gmacs": trial.gmacs},
                            step=trial.state.epoch)
        if status == "finished" and lead:
            from .artifacts import log_trial_artifacts

            log_trial_artifacts(tracker, trial, cfg)
            if cfg.checkpoint.log_final and ckpt_path.exists():
                tracker.log_artifact(ckpt_path, "checkpoint")
        tracker.finish(status)
    else:
        tracker.flush()  # stopped early on purpose (stop_after): the run stays open for a resume
    if reporter is not None and final_report is not None:
        # Reported only now: Tune ends a trial as soon as it has its last result, which would
        # cut the artifacts and the run's closing short.
        reporter(*final_report)
    if done and not cfg.checkpoint.keep_final and ckpt_path.exists():
        ckpt_path.unlink()
    if reporter is not None and status == "diverged":
        reporter({"diverged": 1.0, "epoch": trial.state.epoch, "val_top1": summary["final_top1"],
                  "best_top1": trial.state.best_top1}, None)
    return summary


class EpochPrinter:
    """One line per epoch on stdout: loss, top-1, images/s and the time left (a reporter)."""

    def __init__(self, epochs: int):
        self.epochs, self.t0, self.first = epochs, time.perf_counter(), None

    def __call__(self, m: dict[str, Any], saved: Optional[Path]) -> None:
        if m.get("diverged"):
            return
        e = int(m["epoch"])
        self.first = e - 1 if self.first is None else self.first
        per = (time.perf_counter() - self.t0) / max(e - self.first, 1)
        left = int(per * (self.epochs - e))
        print(f"epoch {e}/{self.epochs}  loss {m['train_loss']:.4f}  val top-1 {m['val_top1']:.2f}  "
              f"best {m['best_top1']:.2f}  {m['images_per_s']:.0f} img/s  left {left // 60}:{left % 60:02d}"
              + ("  [checkpoint]" if saved else ""), flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    from .errors import cli_exit

    from .errors import ArgumentParser

    p = ArgumentParser(prog="python -m pipeline.train", description="Train one trial.")
    p.add_argument("--config", help="YAML trial config (see pipeline.config.TrialConfig)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted key, e.g. optim.lr=0.05 (repeatable)")
    p.add_argument("--resume", default=None, help="continue from this checkpoint (same MLflow run)")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.stop_after is not None and a.stop_after < 1:
        p.error(f"--stop-after must be >= 1, got {a.stop_after}")
    try:
        from .errors import folder_problem

        # path flags as typed: an empty one would be the current folder
        for flag, value in (("--resume", a.resume), ("--checkpoint-dir", a.checkpoint_dir)):
            if value is not None and not value.strip():
                raise ConfigError(f"{flag} {value!r}: the path is empty")
        resume = Path(a.resume).expanduser() if a.resume is not None else None
        checkpoint_dir = Path(a.checkpoint_dir).expanduser() if a.checkpoint_dir is not None else None
        cfg = load_trial_config(a.config, a.overrides)
        if resume is not None and not resume.is_file():
            raise ConfigError(f"--resume: checkpoint not found: {resume}")
        # the folders the trial writes, judged without making them (a later refusal leaves
        # nothing behind): a file in the way is one line now, not a traceback after its MLflow
        # run was created
        for what, folder in (("work_dir", cfg.work_dir), ("--checkpoint-dir", checkpoint_dir),
                             ("checkpoint.dir", None if checkpoint_dir else cfg.checkpoint.dir)):
            problem = folder_problem(Path(folder).resolve(), create=False) if folder is not None else None
            if problem:
                raise ConfigError(f"{what} {Path(folder).resolve()}: {problem}")
        if cfg.tracking.enabled:
            from .tracking import check_runs, check_store, default_uri, env_tracking_uri

            if not cfg.tracking.uri:  # the config's tracking.uri, else MLFLOW_TRACKING_URI, else a local file
                env_uri = env_tracking_uri()
                if env_uri:
                    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": env_uri})})
            uri = cfg.tracking.uri or default_uri(cfg.work_dir)
            if cfg.tracking.uri:
                check_store(uri)  # before any data or model work
            check_runs(uri, run_id=cfg.tracking.run_id, parent_run_id=cfg.tracking.parent_run_id)
        # a checkpoint already there is another run's: training from scratch would overwrite it
        # (and, with checkpoint.keep_final off, delete it at the end)
        ckpt = checkpoint_path(cfg, checkpoint_dir)
        if resume is None and ckpt.exists():
            raise ConfigError(f"{ckpt.resolve()} already exists (an earlier run's checkpoint): add --resume {ckpt} "
                              f"to continue it, or give another --checkpoint-dir (or move it away)")
        summary = fit(cfg, checkpoint_dir=checkpoint_dir, resume_from=resume, stop_after=a.stop_after,
                      reporter=EpochPrinter(cfg.optim.epochs))
    except ConfigError as e:
        cli_exit(e)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    return 0 if summary["status"] == "finished" else 3


if __name__ == "__main__":
    sys.exit(main())
