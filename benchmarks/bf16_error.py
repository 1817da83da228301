"""How far bfloat16 autocast moves each stage block from its float32 self, on CPU.

    python -m benchmarks.bf16_error [--channels 64] [--size 15x11] [--batch 4] [--device cpu] [--json]

(from the repository root).  Every registered stage block, in training mode, with its
zero-initialised gates (γ, the last BN's weight) set to 0.5 so the attention path counts, runs
the same input twice: in float32, and inside ``torch.autocast(device, dtype=torch.bfloat16)`` —
what ``precision: bf16`` trains with (on CUDA the float32 reference runs with TF32 off).  The input is ``relu(randn) * 2`` (post-ReLU scale) of an
odd, non-square size; the upstream gradient is a fixed ramp.  Columns: relative L2 distance of
the output and of the input gradient from float32's, ``‖a − b‖ / ‖b‖``.  bfloat16 keeps 8
mantissa bits (relative step 2^-8 ≈ 0.004), so a few 1e-3 is rounding; tens of percent is a
block whose computation bfloat16 cannot hold.  Figures: docs/blocks.md.
"""
from __future__ import annotations

import json

import torch

import blocks
from pipeline.errors import ArgumentParser, int_range


def run_block(name: str, x: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, input gradient) of block ``name`` on ``x`` (on ``x``'s device), in float32 or in
    bf16 autocast; both returned in float32."""
    torch.manual_seed(1)
    m = blocks.create(name, x.shape[1]).to(x.device).train()
    with torch.no_grad():  # zero-initialised gates (γ, last BN) would hide the attention path
        for p in m.parameters():
            if not p.any():
                p.fill_(0.5)
    x = x.clone().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        y = m(x)
    (y.float() * torch.linspace(-1, 1, y.numel(), device=x.device).view_as(y)).sum().backward()
    return y.detach().float(), x.grad.float()


def bf16_error(name: str, x: torch.Tensor) -> tuple[float, float]:
    """Relative distance of the bf16-autocast output and input gradient from float32's."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        y32, g32 = run_block(name, x, autocast=False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    y16, g16 = run_block(name, x, autocast=True)
    return float((y16 - y32).norm() / y32.norm()), float((g16 - g32).norm() / g32.norm())


def sample_input(batch: int = 4, channels: int = 64, h: int = 15, w: int = 11, device: str = "cpu") -> torch.Tensor:
    torch.manual_seed(0)
    return (torch.relu(torch.randn(batch, channels, h, w)) * 2).to(device)  # (N, C, H, W)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m benchmarks.bf16_error", description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int_range(1, 4096), default=64)
    ap.add_argument("--size", default="15x11", help="H x W")
    ap.add_argument("--batch", type=int_range(1, 1024), default=4)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        h, w = (int(v) for v in a.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size: expected HxW such as 15x11, got {a.size!r}")
    if not (1 <= h <= 1024 and 1 <= w <= 1024) or h * w * a.batch < 2:  # BatchNorm needs 2 values
        ap.error(f"--size: H and W must be 1..1024, with batch x H x W >= 2, got {a.size!r}")
    if a.device not in ("cpu", "cuda") or (a.device == "cuda" and not torch.cuda.is_available()):
        ap.error(f"--device: {a.device!r} is not available here (cpu, or cuda on a machine with a GPU)")
    x = sample_input(a.batch, a.channels, h, w, a.device)
    rows = {name: bf16_error(name, x) for name in blocks.names("stage")}
    if a.json:
        print(json.dumps({n: {"output": y, "input_grad": g} for n, (y, g) in rows.items()}, indent=1))
        return 0
    print(f"bf16 autocast vs float32 on {a.device}, x = relu(randn({a.batch}, {a.channels}, {h}, {w})) * 2, "
          f"torch {torch.__version__}")
    print("| block | output | input gradient |\n|---|---:|---:|")
    for n, (y, g) in rows.items():
        print(f"| {n} | {y:.4f} | {g:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
