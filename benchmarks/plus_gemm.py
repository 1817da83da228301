"""The gaussian block's residual GEMM, ``out = base + A · Y`` per sample, in the compiled CPU kernel
against torch's GEMM followed by the add, at the block's shapes.

    python -m benchmarks.plus_gemm [--threads 1] [--repeats 15] [--json]

(from the repository root.)  Shapes: the block's forward residual GEMM z = x + W'[y; 1]
(A: C × (C/8 + 1); the backward one, gz + W_vᵀ dV, has K = C/8) after a stage of ResNet-50 at
224 px with batch 8, and of the CIFAR ResNets at 32 px with batch 128.  Columns, each the median
of ``--repeats`` interleaved rounds (one untimed call before each timed one; the allocator keeps
freed memory, as in ``benchmarks.block_speed``):

* torch: ``blocks.gaussian._plus_gemm_torch``, the block's path without the kernel (a batched
  GEMM into the output, then base added a chunk at a time while it is in the cache);
* kernel: ``blocks._cpu_kernels.plus_gemm`` on ``--threads`` threads (streaming stores or not by
  its size rule, then each store kind forced).  The block calls it only where torch runs on one
  thread; with more, the "kernel" column (timed right after torch's GEMM, whose OpenMP workers
  are still spinning) shows why;
* GEMM alone: ``torch.bmm`` without the add — the floor of either.
"""
from __future__ import annotations

import json
import os
import statistics

import torch

from benchmarks._memory import retain_freed_memory
from benchmarks._timing import interleaved_ms
from blocks import _cpu_kernels as cpu_kernels
from blocks.gaussian import _plus_gemm_torch
from pipeline.errors import ArgumentParser, int_range

#: (label, N, C, L): the block after a stage (its input (N, C, H, W), L = H·W)
SHAPES = [
    ("ResNet-50 stage 1, 56×56", 8, 256, 56 * 56),
    ("ResNet-50 stage 2, 28×28", 8, 512, 28 * 28),
    ("ResNet-50 stage 3, 14×14", 8, 1024, 14 * 14),
    ("ResNet-50 stage 4, 7×7", 8, 2048, 7 * 7),
    ("CIFAR stage 1, 32×32", 128, 16, 32 * 32),
    ("CIFAR stage 2, 16×16", 128, 32, 16 * 16),
    ("CIFAR stage 3, 8×8", 128, 64, 8 * 8),
]
COLUMNS = ("torch", "kernel", "kernel, cached stores", "kernel, streaming stores", "GEMM alone")


def measure(repeats: int, threads: int) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    for label, n, c, l in SHAPES:
        k = c // 8 + 1
        base, a, y = torch.randn(n, c, l), torch.randn(c, k), torch.randn(n, k, l)
        expect = _plus_gemm_torch(base, a, y)
        got = cpu_kernels.plus_gemm(base, a, y, threads=threads)
        torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)  # a wrong kernel is not timed
        runs = {
            "torch": lambda: _plus_gemm_torch(base, a, y),
            "kernel": lambda: cpu_kernels.plus_gemm(base, a, y, threads=threads),
            "kernel, cached stores": lambda: cpu_kernels.plus_gemm(base, a, y, stream=False, threads=threads),
            "kernel, streaming stores": lambda: cpu_kernels.plus_gemm(base, a, y, stream=True, threads=threads),
            "GEMM alone": lambda: torch.bmm(a.expand(n, c, k), y),
        }
        times = interleaved_ms(runs, repeats)
        ms = {name: statistics.median(t) for name, t in times.items()}
        rows.append({"shape": label, "n": n, "c": c, "k": k, "l": l, "mib": base.numel() * 4 / 2**20,
                     "ms": ms, "kernel_over_torch": ms["kernel"] / ms["torch"]})
    return rows


def report(rows: list[dict], threads: int, repeats: int) -> str:
    lines = [f"## base + A·Y, float32, median of {repeats} (torch {torch.__version__}, {threads} threads, "
             f"{os.cpu_count()} CPUs; CPU kernels: {cpu_kernels.status()})\n",
             "| shape | N, C, K, L | MiB | " + " | ".join(f"{c} ms" for c in COLUMNS) + " | kernel ÷ torch |",
             "|---|---|---:|" + "---:|" * len(COLUMNS) + "---:|"]
    for r in rows:
        cells = " | ".join(f"{r['ms'][c]:.3f}" for c in COLUMNS)
        lines.append(f"| {r['shape']} | {r['n']}, {r['c']}, {r['k']}, {r['l']} | {r['mib']:.1f} | {cells} | "
                     f"{r['kernel_over_torch']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m benchmarks.plus_gemm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int_range(1, 1000), default=15)
    ap.add_argument("--threads", type=int_range(1, 1024), default=1, help="torch threads, also the kernel's")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if cpu_kernels.plus_gemm(torch.zeros(1, 1, 1), torch.zeros(1, 1), torch.zeros(1, 1, 1), threads=1) is None:
        ap.error(f"the compiled kernel is not in use here: {cpu_kernels.status()}")
    retain_freed_memory()
    torch.set_num_threads(a.threads)
    rows = measure(a.repeats, a.threads)
    print(json.dumps(rows, indent=1) if a.json else report(rows, a.threads, a.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
