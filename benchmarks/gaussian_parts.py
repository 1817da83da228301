"""The gaussian block's fused step taken apart: each GEMM it runs, timed alone, beside the whole
block and its two 1×1 convs, in the same rounds.

    python -m benchmarks.gaussian_parts [--batch 8] [--channels 256] [--hw 56] [--repeats 11]
                                        [--threads 1] [--json]

(from the repository root.)  What it answers: how far the block (``blocks/gaussian.py``,
``_SeparableBlock``) is from the sum of its own parts, and what that sum is against the two
1×1 convs — the floor of the ratio ``benchmarks.block_speed`` reports, on this machine's GEMMs.

Parts, each a torch call of the same kind, shape and memory layout as in the block (the
block's own helpers ``_plus_gemm``, ``_outer_and_project`` and ``_aggregate_y_into`` where it runs them, see
its docstring), on random tensors:

* projections (the same multiply-adds as the two convs, forward and backward): V = W_v x;
  z = x + [W' | b'] [y; 1] (the residual add included: x is the GEMM's initial value in the
  compiled kernel, ``blocks/_cpu_kernels.py``, else a GEMM then x added); Σ gz [y; 1]ᵀ and
  W'ᵀ gz in one pass over gz; dL/dx = gz + W_vᵀ dV (the same); dW_v = Σ dV xᵀ;
* aggregation: T = V Kwᵀ, y = Kh T; backward dT = Khᵀ dy, dV = dT Kw, and the two kernel
  gradients that reach σ (dKh = Σ dy Tᵀ, dKw = Σ dTᵀ V);
* BN statistics folded onto y (C' channels): the batch mean k of y from V, the moments of
  [y − k; 1] forward, the BN term of dy backward.

Each row gives its multiply-adds (the analytic count) and the median time; "GMAC/s" is their
ratio.  Rounds are interleaved (every part, the block and the convs once per round, each
after one untimed run) and the allocator keeps freed memory (benchmarks/_memory.py), as in
``benchmarks.block_speed``.
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

import blocks
from blocks import _cpu_kernels as cpu_kernels
from blocks.gaussian import _aggregate_y_into, _outer_and_project, _plus_gemm
from blocks.se import reduced
from benchmarks._memory import retain_freed_memory
from benchmarks._timing import interleaved_ms
from pipeline.errors import ArgumentParser, int_range

GROUPS = ("projections", "aggregation", "BN statistics")


@dataclass
class Part:
    group: str
    label: str
    macs: int
    run: Callable[[], object]
    times_ms: list[float] = field(default_factory=list)

    @property
    def ms(self) -> float:
        return statistics.median(self.times_ms)


def parts(n: int, c: int, hw: int, reduction: int = 8) -> list[Part]:
    """The block's GEMMs at batch n, C = c, an hw×hw map, value width C' = c // reduction."""
    cp = reduced(c, reduction)  # the block's value width
    h, w, l = hw, hw, hw * hw
    b = n * cp
    x, gz = torch.randn(n, c, l), torch.randn(n, c, l)
    w_v, w_aug = torch.randn(cp, c), torch.randn(c, cp + 1)
    v, ya, gy = torch.randn(n, cp, l), torch.randn(n, cp + 1, l), torch.randn(n, cp, l)
    t, g_t = torch.randn(b, h, w), torch.randn(b, h, w)
    kh = torch.softmax(torch.randn(h, h), 1)
    kw = kh
    g_bn = torch.randn(cp, cp + 1)
    shift = torch.randn(cp)
    col_sums = torch.outer(kh.sum(0), kw.sum(0)).view(l)
    out_cp = torch.empty(n, cp, l)
    w2t = w_aug[:, :cp].t()

    proj = n * c * cp * l  # multiply-adds of one 1×1 conv's GEMM
    agg_x, agg_y = b * h * w * w, b * h * h * w  # along x (W-wide), along y (H-wide)
    return [
        Part("projections", "V = W_v x", proj, lambda: torch.bmm(w_v.expand(n, cp, c), x, out=out_cp)),
        Part("projections", "z = x + W'[y; 1], residual add included", n * c * (cp + 1) * l,
             lambda: _plus_gemm(x, w_aug, ya)),
        Part("projections", "Σ gz [y; 1]ᵀ and W'ᵀ gz, one pass over gz", n * c * (2 * cp + 1) * l,
             lambda: _outer_and_project(ya, gz, w2t)),
        Part("projections", "dx = gz + W_vᵀ dV, residual add included", proj, lambda: _plus_gemm(gz, w_v.t(), v)),
        Part("projections", "dW_v = Σ dV xᵀ", proj, lambda: _outer_and_project(v, x)),
        Part("aggregation", "T = V Kwᵀ", agg_x, lambda: torch.mm(v.view(b * h, w), kw.t())),
        Part("aggregation", "y − k = Kh T − k, into [y − k; 1]", agg_y, lambda: _aggregate_y_into(ya, kh, t, shift)),
        Part("aggregation", "dT = Khᵀ dy", agg_y, lambda: torch.bmm(kh.t().expand(b, h, h), gy.view(b, h, w))),
        Part("aggregation", "dV = dT Kw", agg_x, lambda: torch.mm(g_t.view(b * h, w), kw)),
        Part("aggregation", "dKh = Σ dy Tᵀ (σ)", agg_x,
             lambda: torch.bmm(gy.view(b, h, w), t.transpose(1, 2)).sum(0)),
        Part("aggregation", "dKw = Σ dTᵀ V (σ)", agg_y, lambda: torch.mm(g_t.view(b * h, w).t(), v.view(b * h, w))),
        Part("BN statistics", "k = Σ_n a_hᵀ V_n a_w / M (the batch mean of y)", b * l,
             lambda: torch.mv(v.view(b, l), col_sums).view(n, cp).sum(0)),
        Part("BN statistics", "moments of [y − k; 1]", n * (cp + 1) ** 2 * l,
             lambda: torch.bmm(ya, ya.transpose(1, 2)).sum(0)),
        Part("BN statistics", "dy += (2/M) dS (y − m) + dm/M, in place", n * cp * (cp + 1) * l,
             lambda: torch.baddbmm(gy, g_bn.expand(n, cp, cp + 1), ya, out=gy)),
    ]


def _step(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
    m.zero_grad(set_to_none=True)
    x.grad = None
    m(x).backward(g)


def measure(n: int, c: int, hw: int, repeats: int) -> dict:
    torch.manual_seed(0)
    ps = parts(n, c, hw)
    cp = reduced(c, 8)  # the block's default reduction
    block = blocks.create("gaussian", c).train()
    nn.init.normal_(block.bn.weight)  # a trained block's γ ≠ 0 (the function is the same either way)
    convs = nn.Sequential(nn.Conv2d(c, cp, 1, bias=False), nn.Conv2d(cp, c, 1, bias=False)).train()
    x = torch.randn(n, c, hw, hw, requires_grad=True)
    g = torch.randn(n, c, hw, hw)
    whole = {"gaussian block": lambda: _step(block, x, g), "two 1×1 convs": lambda: _step(convs, x, g)}
    times = interleaved_ms({**whole, **{p.label: p.run for p in ps}}, repeats)
    for p in ps:
        p.times_ms = times[p.label]
    block_ms = statistics.median(times["gaussian block"])
    convs_ms = statistics.median(times["two 1×1 convs"])
    sums = {grp: sum(p.ms for p in ps if p.group == grp) for grp in GROUPS}
    total = sum(sums.values())
    return {
        "batch": n, "channels": c, "hw": hw, "repeats": repeats, "threads": torch.get_num_threads(),
        "cpu_kernels": cpu_kernels.status(),
        "parts": [{"group": p.group, "label": p.label, "macs": p.macs, "ms": p.ms} for p in ps],
        "groups_ms": sums, "parts_ms": total, "block_ms": block_ms, "convs_ms": convs_ms,
        "parts_over_convs": total / convs_ms, "block_over_convs": block_ms / convs_ms,
        "block_over_parts": block_ms / total,
        "block_over_convs_paired": statistics.median(
            a / b for a, b in zip(times["gaussian block"], times["two 1×1 convs"])),
    }


def report(r: dict) -> str:
    lines = [
        f"## batch {r['batch']}, C={r['channels']}, {r['hw']}×{r['hw']}, median of {r['repeats']} "
        f"(torch {torch.__version__}, {r['threads']} threads, {os.cpu_count()} CPUs)\n",
        f"CPU kernels: {r['cpu_kernels']}\n",
        "| group | part | M multiply-adds | ms | GMAC/s |",
        "|---|---|---:|---:|---:|",
    ]
    for p in r["parts"]:
        lines.append(f"| {p['group']} | {p['label']} | {p['macs'] / 1e6:,.1f} | {p['ms']:.2f} | "
                     f"{p['macs'] / p['ms'] / 1e6:.1f} |")
    lines += ["", "| | ms | × two 1×1 convs |", "|---|---:|---:|"]
    for grp, ms in r["groups_ms"].items():
        lines.append(f"| sum: {grp} | {ms:.2f} | {ms / r['convs_ms']:.3f} |")
    lines += [
        f"| **sum of the parts** | **{r['parts_ms']:.2f}** | **{r['parts_over_convs']:.3f}** |",
        f"| whole gaussian block (fwd+bwd) | {r['block_ms']:.2f} | {r['block_over_convs']:.3f} "
        f"(paired per round: {r['block_over_convs_paired']:.3f}) |",
        f"| two 1×1 convs (fwd+bwd) | {r['convs_ms']:.2f} | 1 |",
        "",
        f"block ÷ sum of its parts: {r['block_over_parts']:.3f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m benchmarks.gaussian_parts", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int_range(1, 4096), default=8)
    ap.add_argument("--channels", type=int_range(8, 4096), default=256,
                    help="at least 8: the block's value width is C / 8")
    ap.add_argument("--hw", type=int_range(1, 1024), default=56, help="side of the square map")
    ap.add_argument("--repeats", type=int_range(1, 1000), default=11)
    ap.add_argument("--threads", type=int_range(1, 1024), default=1, help="torch threads (1: the figure the docs quote)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.batch * a.hw * a.hw < 2:  # the block's batch norm needs two values per channel
        ap.error(f"--batch {a.batch} with --hw {a.hw} gives one value per channel; training-mode batch norm "
                 "needs at least two (a larger --batch or --hw)")
    retain_freed_memory()
    torch.set_num_threads(a.threads)
    r = measure(a.batch, a.channels, a.hw, a.repeats)
    print(json.dumps(r, indent=1) if a.json else report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
