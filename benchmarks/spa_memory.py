"""Peak memory of one forward+backward: SPANet (``spa``) vs sub-sampled non-local, on CPU.

    python -m benchmarks.spa_memory [--batch 8 --channels 256 --size 56] [--json]

(from the repository root).  Two measurements per block, both in training mode, with ``x``
requiring grad and a full upstream gradient ``gy`` allocated before measuring (as inside a
network):

1. **peak** — every CPU allocation and free made through PyTorch's allocator during the
   forward+backward, replayed in order from ``torch.profiler``'s allocation trace
   (:func:`benchmarks._memory.traced_peak_bytes`); the maximum of the running sum is the peak
   of memory *added* by the block's forward+backward — activations kept for backward,
   transients such as the affinity map, the output, and all gradients (of x and of the
   parameters).  It counts tensor bytes, not allocator slack or RSS, so it does not depend on
   glibc's caching, and it is deterministic for a given thread count.
2. **saved** — bytes of the distinct tensors autograd keeps for backward
   (``torch.autograd.graph.saved_tensors_hooks``), not counting x and the parameters, which
   exist anyway.  A lower bound that explains where the peak comes from.

Rows: non-local with and without sub-sampling; ``spa`` at three k, in the association order it
chooses for this shape ("auto") and forced into each order (``SalientPositionsAttention.form``);
and the reference SPANet formulation (θ, g, y, W y per pixel, as the authors' code).  Memory in
MiB (2^20 bytes).  Figures: docs/benchmarks.md.
"""
from __future__ import annotations

import json

import torch
import torch.nn as nn

import blocks
from benchmarks._memory import traced_peak_bytes
from blocks.spa import keep_count

REFERENCE = "nonlocal (subsample=True)"


class ReferenceSPA(nn.Module):
    """The un-folded formulation (as the authors' code, minus its unused φ): for comparison."""

    def __init__(self, spa: nn.Module):
        super().__init__()
        self.spa = spa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.spa
        n, c, h, w = x.shape
        k = keep_count(h * w, m.topk_ratio, m.topk)
        theta = m.theta(x).flatten(2)  # (N, C', HW), kept for backward
        keep = theta.detach().pow(2).sum(1).topk(k, dim=1).indices  # (N, k)
        tk = theta.gather(2, keep.unsqueeze(1).expand(n, theta.shape[1], k))  # (N, C', k)
        a = torch.softmax(tk @ tk.transpose(1, 2), -1)  # (N, C', C')
        y = (a @ m.g(x).flatten(2)).view(n, -1, h, w)  # (N, C', H, W)
        return m.bn(m.out(y)) + x  # (N, C, H, W)


def spa_with_form(channels: int, form: str, **params) -> nn.Module:
    m = blocks.create("spa", channels, **params)
    m.form = form
    return m


def measure(block: nn.Module, x0: torch.Tensor) -> dict[str, float]:
    """Peak and saved-for-backward MiB of one training fwd+bwd of ``block`` on ``x0``."""
    block.train()
    gy = torch.randn_like(x0)
    x = x0.clone().requires_grad_()
    block(x).backward(gy)  # warm-up (one-time buffers)
    block.zero_grad(set_to_none=True)
    x = x0.clone().requires_grad_()
    existing = {p.untyped_storage().data_ptr() for p in block.parameters()}
    existing.add(x.untyped_storage().data_ptr())
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in existing:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    def work() -> None:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = block(x)
        y.backward(gy)

    peak = traced_peak_bytes(work)
    block.zero_grad(set_to_none=True)
    return {"peak_mib": peak / 2**20, "saved_mib": sum(saved.values()) / 2**20}


def cases(c: int) -> dict[str, nn.Module]:
    return {
        REFERENCE: blocks.create("nonlocal", c, subsample=True),
        "nonlocal (subsample=False)": blocks.create("nonlocal", c, subsample=False),
        "spa (topk_ratio=0.25, default)": blocks.create("spa", c),
        "spa (topk_ratio=0.25, folded)": spa_with_form(c, "folded"),
        "spa (topk_ratio=0.25, per_pixel)": spa_with_form(c, "per_pixel"),
        "spa (topk=8)": blocks.create("spa", c, topk=8),
        "spa (topk_ratio=1.0)": blocks.create("spa", c, topk_ratio=1.0),
        "spa reference form (topk_ratio=0.25)": ReferenceSPA(blocks.create("spa", c)),
    }


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import ArgumentParser, int_range

    ap = ArgumentParser(prog="python -m benchmarks.spa_memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int_range(1, 4096), default=8)
    ap.add_argument("--channels", type=int_range(1, 4096), default=256)
    ap.add_argument("--size", type=int_range(2, 1024), default=56, help="side of the square map")
    ap.add_argument("--threads", type=int_range(1, 1024), default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x0 = torch.randn(a.batch, a.channels, a.size, a.size)
    rows = {name: measure(m, x0) for name, m in cases(a.channels).items()}
    base = rows[REFERENCE]["peak_mib"]
    for r in rows.values():
        r["x_nonlocal_sub"] = r["peak_mib"] / base
    spa_form = blocks.create("spa", a.channels).form_for(a.size, a.size)
    if a.json:
        print(json.dumps({"settings": vars(a), "spa_auto_form": spa_form, "rows": rows}))
        return 0
    cmap = x0.numel() * 4 / 2**20
    print(f"x: {tuple(x0.shape)}, one (N,C,H,W) float32 map = {cmap:.1f} MiB; "
          f"spa's automatic order here: {spa_form}")
    print("| block | peak MiB | × nonlocal(sub) | saved MiB |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['peak_mib']:.1f} | {r['x_nonlocal_sub']:.3f} | {r['saved_mib']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
