"""Forward+backward time and peak memory of every registered stage block, side by side.

    python -m benchmarks.block_speed [--sizes small,large] [--batch 8] [--repeats 5] [--json]
                                     [--only gaussian,nonlocal] [--threads N]

(from the repository root; the module was ``benchmarks/blocks.py``, renamed because a script
of that name shadows the ``blocks`` package).

Sizes: ``small`` = (C=64, 32×32), ``large`` = (C=256, 56×56); batch 8 by default.  Rows:

* every stage block in ``blocks.names("stage")`` with its registry defaults;
* ``nonlocal`` with and without sub-sampling (``create("nonlocal", C, subsample=True/False)``),
  the reference: the ratio columns divide by the sub-sampled non-local row;
* ``gaussian`` in its dense (HW×HW) form, without its output BN, and through its plain-autograd
  ``forward_reference`` (the same function unfused), and the Gaussian *aggregation step alone* (on
  values of width C' = C/8, σ = 2) separable vs dense, plus both at σ = 0.3 with and without
  the kernel truncation (τ = 0: the denormal case the truncation exists for);
* ``two 1×1 convs C→C'→C`` — the cost floor of the gaussian block (its value and output
  projections, nothing else).

A block that is not registered (other blocks land concurrently) or fails to build or run gives
a row saying so; the rest still run.

Timing: each row is built once; after one warm-up step per row, the rows are timed in turn,
``--repeats`` rounds (interleaving spreads the noise of a shared machine evenly over the rows);
in each round a row runs one untimed fwd+bwd step and then the timed one, so that a small block
is not charged for the page faults and cold caches left by the big block before it (measured:
up to 2× on the separable aggregation without it).  The median is reported.  On a machine
shared with other jobs use ``--threads 1``: with 2 intra-op threads every parallel region waits
for whichever thread is descheduled, and timings moved by 2–20× between runs here.  A step is ``y = m(x);
y.backward(g)`` with ``x`` requiring grad (the input gradient is part of a block's cost inside
a network), gradients cleared before each step, modules in training mode.

Peak memory (CPU): the allocator's own trace.  ``torch.profiler`` with ``profile_memory=True``
records every allocation and free made through PyTorch's CPU allocator (all tensor storage,
including transient buffers inside kernels and autograd's gradient buffers) with its size and
time stamp; we replay those events in time order over one fwd+bwd step and report the maximum
of the running sum — bytes live at the worst moment *above* what existed before the step (the
input, the upstream gradient and the parameters are allocated beforehand and not counted;
parameter gradients, the output and the input gradient are).  This is the figure
``torch.cuda.max_memory_allocated`` gives on a GPU.  RSS deltas are not used: the C allocator
returns and reuses pages unpredictably.  Memory is in MiB (2^20 bytes).  A second column,
"act MiB", is what autograd *saves for backward* (via ``torch.autograd.graph.saved_tensors_hooks``, storages counted once, the input
and parameters excluded) plus the output: the memory a block holds from its forward until its
backward runs, which is what accumulates over a whole network.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

import blocks
from blocks import _cpu_kernels as cpu_kernels
from benchmarks._memory import minor_faults, retain_freed_memory, traced_peak_bytes
from blocks.registry import UnknownBlockError
from pipeline.errors import ArgumentParser, int_range, name_list

SIZES = {"small": (64, 32), "large": (256, 56)}
REFERENCE = "nonlocal (sub-sampled)"
TWO_CONVS = "two 1×1 convs C→C'→C"
GAUSS_REDUCTION = 8  # the gaussian block's default value width C' = C / 8


class AggregationOnly(nn.Module):
    """The gaussian block's aggregation step alone: (N, C', H, W) -> (N, C', H, W)."""

    def __init__(self, channels: int, dense: bool, radius: float = 2.0, threshold: float = 1e-12):
        super().__init__()
        self.block = blocks.create("gaussian", channels * GAUSS_REDUCTION, radius=radius, dense=dense,
                                   threshold=threshold)
        # aggregate() uses only σ: drop the projections so the params column counts σ alone
        self.block.value = self.block.out = self.block.bn = nn.Identity()

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.block.aggregate(v)


class ReferencePath(nn.Module):
    """A gaussian block run through ``forward_reference`` (plain autograd, ``nn.BatchNorm2d``):
    the same function as the block's fused path, for a side-by-side time."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = blocks.create("gaussian", channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.forward_reference(x)


def two_convs(channels: int) -> nn.Module:
    inner = max(1, channels // GAUSS_REDUCTION)
    return nn.Sequential(nn.Conv2d(channels, inner, 1, bias=False), nn.Conv2d(inner, channels, 1, bias=False))


@dataclass
class Row:
    label: str
    build: Callable[[int], nn.Module]  # channels -> module
    in_channels: Callable[[int], int] = lambda c: c
    status: str = "ok"
    params: int = 0
    times_ms: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)  # minor page faults of each timed step
    peak_mib: float = math.nan
    act_mib: float = math.nan
    module: nn.Module | None = None
    x: torch.Tensor | None = None
    g: torch.Tensor | None = None

    @property
    def time_ms(self) -> float:
        return statistics.median(self.times_ms) if self.times_ms else math.nan


def rows_for(names: list[str]) -> list[Row]:
    rows = [Row(n, (lambda c, n=n: blocks.create(n, c))) for n in names]
    rows += [
        Row("nonlocal (no sub-sampling)", lambda c: blocks.create("nonlocal", c, subsample=False)),
        Row(REFERENCE, lambda c: blocks.create("nonlocal", c, subsample=True)),
        Row("gaussian (dense form)", lambda c: blocks.create("gaussian", c, dense=True)),
        Row("gaussian (bn=False)", lambda c: blocks.create("gaussian", c, bn=False)),
        Row("gaussian (autograd reference path)", ReferencePath),
        Row(TWO_CONVS, two_convs),
    ]
    agg_c = lambda c: max(1, c // GAUSS_REDUCTION)  # noqa: E731 (a one-line helper local to this function)
    for sigma in (2.0, 0.3):
        for dense in (False, True):
            form = "dense" if dense else "separable"
            rows.append(Row(f"gaussian aggregation, {form}, σ={sigma:g}",
                            lambda c, d=dense, s=sigma: AggregationOnly(agg_c(c), d, s), agg_c))
    for dense in (False, True):
        form = "dense" if dense else "separable"
        rows.append(Row(f"gaussian aggregation, {form}, σ=0.3, τ=0 (no truncation)",
                        lambda c, d=dense: AggregationOnly(agg_c(c), d, 0.3, threshold=0.0), agg_c))
    return rows


def step(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
    x.grad = None
    for p in m.parameters():
        p.grad = None
    y = m(x)
    y.backward(g)


def peak_bytes(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> int:
    """Maximum of live bytes over one fwd+bwd, replayed from the profiler's allocation trace."""
    x.grad = None
    for p in m.parameters():
        p.grad = None
    return traced_peak_bytes(lambda: m(x).backward(g))


def activation_bytes(m: nn.Module, x: torch.Tensor) -> int:
    """Bytes saved for backward (unique storages, input and parameters excluded) plus output."""
    skip = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for p in m.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = m(x)
    out = y.untyped_storage()
    seen[out.data_ptr()] = out.nbytes()
    del y
    return sum(seen.values())


def run_size(size: str, batch: int, repeats: int, only: set[str] | None) -> list[Row]:
    channels, hw = SIZES[size]
    rows = rows_for(blocks.names("stage"))
    if only:
        rows = [r for r in rows if r.label == REFERENCE or any(o in r.label for o in only)]
    torch.manual_seed(0)
    for r in rows:
        try:
            r.module = r.build(channels).train()
        except UnknownBlockError:
            r.status = "missing (not registered)"
            continue
        except Exception as e:  # a block under construction elsewhere: report, go on
            r.status = f"build error: {type(e).__name__}: {e}"[:120]
            continue
        c = r.in_channels(channels)
        r.params = sum(p.numel() for p in r.module.parameters())
        r.x = torch.randn(batch, c, hw, hw, requires_grad=True)
        r.g = torch.randn(batch, c, hw, hw)
        try:
            step(r.module, r.x, r.g)  # warm-up
        except Exception as e:
            r.status = f"run error: {type(e).__name__}: {e}"[:120]
            r.module = None
    live = [r for r in rows if r.module is not None]
    for _ in range(repeats):
        for r in live:
            step(r.module, r.x, r.g)  # untimed: re-warm caches/allocator after the previous row
            f0, t0 = minor_faults(), time.perf_counter()
            step(r.module, r.x, r.g)
            r.times_ms.append((time.perf_counter() - t0) * 1e3)
            r.faults.append(minor_faults() - f0)
    for r in live:
        r.peak_mib = peak_bytes(r.module, r.x, r.g) / 2**20
        r.act_mib = activation_bytes(r.module, r.x) / 2**20
        r.module = r.x = r.g = None  # free before the next size
    return rows


def fmt(v: float, spec: str) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(rows: list[Row]) -> str:
    ref = next((r for r in rows if r.label == REFERENCE and r.status == "ok"), None)
    lines = [
        "| block | params | fwd+bwd ms | × NL-sub time | peak MiB | × NL-sub peak | act MiB | faults/step | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.label} | | | | | | | | {r.status} |")
            continue
        tr = r.time_ms / ref.time_ms if ref else math.nan
        mr = r.peak_mib / ref.peak_mib if ref else math.nan
        lines.append(
            f"| {r.label} | {r.params:,} | {fmt(r.time_ms, '.1f')} | {fmt(tr, '.2f')} | "
            f"{fmt(r.peak_mib, '.1f')} | {fmt(mr, '.2f')} | {fmt(r.act_mib, '.1f')} | "
            f"{statistics.median(r.faults) if r.faults else math.nan:,.0f} | |"
        )
    if ref is None:
        lines.append("\n(no sub-sampled non-local row: ratio columns are empty)")
    paired = paired_ratio(rows, "gaussian", TWO_CONVS)
    if paired:
        lines.append(f"\ngaussian ÷ two 1×1 convs, per round (both timed in the same round): median {paired[1]:.3f}, "
                     f"quartiles {paired[0]:.3f}–{paired[2]:.3f} over {len(next(r for r in rows if r.label == TWO_CONVS).times_ms)} rounds")
    return "\n".join(lines)


def paired_ratio(rows: list[Row], num: str, den: str) -> tuple[float, float, float] | None:
    """Quartiles of row ``num``'s time ÷ row ``den``'s time, round by round (a round times every
    row once, so a slow spell of a shared machine hits both sides of a ratio)."""
    a = next((r for r in rows if r.label == num and r.times_ms), None)
    b = next((r for r in rows if r.label == den and r.times_ms), None)
    if a is None or b is None or len(a.times_ms) < 2:
        return None
    q = statistics.quantiles([x / y for x, y in zip(a.times_ms, b.times_ms)], n=4, method="inclusive")
    return q[0], q[1], q[2]


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m benchmarks.block_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="small,large", help="comma list of: " + ", ".join(SIZES))
    ap.add_argument("--batch", type=int_range(1, 4096), default=8)
    ap.add_argument("--repeats", type=int_range(1, 1000), default=5)
    ap.add_argument("--only", type=name_list(what="label substring"), default=None, help="comma list of substrings of row labels to keep "
                    "(the sub-sampled non-local reference row is always kept)")
    ap.add_argument("--threads", type=int_range(0, 1024), default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of tables")
    ap.add_argument("--allocator", choices=("retain", "default"), default="retain",
                    help="retain: glibc keeps freed memory for reuse, so no row pays page faults for "
                    "buffers it frees and re-allocates every step (see benchmarks/_memory.py); "
                    "default: glibc as configured")
    a = ap.parse_args(argv)
    allocator = a.allocator
    if allocator == "retain" and not retain_freed_memory():
        allocator = "default (not glibc)"
    sizes = [s.strip() for s in a.sizes.split(",") if s.strip()]
    bad = [s for s in sizes if s not in SIZES]
    if bad or not sizes:
        ap.error(f"--sizes: unknown size(s) {bad}; valid: {', '.join(SIZES)}" if bad else "--sizes: give at least one")
    if a.threads:
        torch.set_num_threads(a.threads)
    only = set(a.only) if a.only is not None else None
    if only:
        labels = [r.label for r in rows_for(blocks.names("stage"))]
        unmatched = sorted(o for o in only if not any(o in lab for lab in labels))
        if unmatched:
            ap.error(f"--only: {', '.join(unmatched)} match(es) no row; rows: {', '.join(labels)}")
    out = []
    for size in sizes:
        c, hw = SIZES[size]
        rows = run_size(size, a.batch, a.repeats, only)
        if a.json:
            out += [
                {"size": size, "channels": c, "hw": hw, "batch": a.batch, "label": r.label,
                 "status": r.status, "params": r.params, "time_ms": r.time_ms, "times_ms": r.times_ms,
                 "peak_mib": r.peak_mib, "act_mib": r.act_mib, "faults": r.faults, "allocator": allocator,
                 "cpu_kernels": cpu_kernels.status()}
                for r in rows
            ]
        else:
            print(f"\n## {size}: C={c}, {hw}×{hw}, batch {a.batch}, median of {a.repeats} "
                  f"(torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
                  f"allocator {allocator}; CPU kernels: {cpu_kernels.status()})\n")
            print(table(rows), flush=True)
    if a.json:
        print(json.dumps(out, indent=1, default=lambda v: None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
