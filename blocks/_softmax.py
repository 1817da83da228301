"""A softmax that keeps subnormal (denormal) floats out of the forward and backward passes.

Attention maps over many keys (non-local, DANet PAM/CAM, SPANet) easily get rows whose logits
span more than ~87 (float32): ``exp`` of the shifted logits then lands in the subnormal range
(< 1.18e-38), where x86 CPUs take microcode assists and run many times slower (measured
factors: docs/blocks.md, "Denormals").  ``torch.set_flush_denormal`` is no fix with several
threads (it only switches the calling thread).

:func:`safe_softmax` is ``softmax`` with one change: after the usual max-shift, logits more
than ``-floor`` (default 50) below the row maximum give an exact 0 instead of ``exp(z)``
(within a few ulps of the boundary).  How: the shifted logits are clamped at ``floor`` before
``exp`` — ``exp`` of very negative inputs (even of -inf) is itself slow, as its result is
subnormal or underflows — and a branch-free in-place ``threshold_`` then zeroes the clamped
entries (cheaper than ``masked_fill_`` with a scattered mask).  Every kept probability is
at least ``exp(floor) / n`` (≈ 2e-22 / n at the default), and no subnormal is ever produced by
``exp`` or stored for backward.  The probability mass dropped is at most ``n · e^floor`` of the
row — at the default, 15 orders of magnitude below float32 resolution — so outputs match
``torch.softmax`` to rounding.  Gradients of the zeroed entries are 0 (the true ones are below
``e^floor`` times the upstream gradient).

Like ``torch.softmax`` it saves only its output for backward and its backward allocates one
buffer (the shifted logits are turned into the output in place), so it costs the same memory.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

#: Logits more than this far below the row maximum are dropped (exp(-50) ≈ 1.9e-22).
FLOOR = -50.0


class _SafeSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, dim: int, floor: float, cut: float) -> torch.Tensor:
        z = logits - logits.amax(dim, keepdim=True)  # (…, n, …)   max-shifted, ≤ 0
        p = z.clamp_(min=floor).exp_()  # in place; exp never sees an input below floor
        F.threshold_(p, cut, 0.0)  # clamped entries → 0, branch-free, in place
        p = p.div_(p.sum(dim, keepdim=True))  # row sums ≥ 1 (the max entry gives exp(0))
        ctx.dim = dim
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (p,) = ctx.saved_tensors
        # d softmax: p ⊙ g − p · Σ_j p_j g_j, built in one buffer like torch's softmax backward
        gp = grad * p  # (…, n, …)
        gp.addcmul_(p, gp.sum(ctx.dim, keepdim=True), value=-1.0)
        return gp, None, None, None


def _autocast_half(t: torch.Tensor) -> bool:
    """``t`` is float16/bfloat16 inside an autocast region of its device."""
    return t.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(t.device.type)


@contextlib.contextmanager
def float32_logits(like: torch.Tensor):
    """Autocast off for the attention logits computed inside; yields a cast to float32 (identity
    outside autocast).  See :func:`logits_bmm`."""
    dev = like.device.type
    if not torch.is_autocast_enabled(dev):
        yield lambda t: t
        return
    with torch.autocast(dev, enabled=False):
        yield lambda t: t.float()


def logits_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.bmm(a, b)`` for attention logits, in float32 inside an autocast region.

    Autocast runs ``bmm`` in bfloat16/float16, whose 8/11-bit mantissas cannot hold dot products
    over many terms: DANet's CAM energies X·Xᵀ sum HW·C products and reach the hundreds, where
    bfloat16's step is 1-4, and the softmax of such rounded logits is wrong by factors of e^1-e^4.
    The logits are therefore computed in float32, as is the softmax that follows
    (:func:`safe_softmax`; torch's autocast applies that policy to ``softmax`` itself); the
    product of the probabilities with the values runs in autocast's dtype (docs/blocks.md,
    "bfloat16 autocast")."""
    with float32_logits(a) as f32:
        return torch.bmm(f32(a), f32(b))


def safe_softmax(logits: torch.Tensor, dim: int = -1, floor: float = FLOOR) -> torch.Tensor:
    """``softmax(logits, dim)`` without subnormals: entries below ``exp(floor)`` become 0.

    Inside an autocast region float16/bfloat16 logits are taken in float32 and the result is
    float32, as autocast does for ``torch.softmax``."""
    if _autocast_half(logits):
        logits = logits.float()
    # p ≤ e^floor·(1 + 4ε) → 0: the margin covers exp's own rounding (≤ 1 ulp), so every
    # clamped entry is caught; the row maximum (exp(0) = 1) must stay well above the cut.
    cut = math.exp(floor) * (1.0 + 4.0 * torch.finfo(logits.dtype).eps)
    if not cut < 0.5:
        raise ValueError(f"floor must be below ln 0.5 (a log-probability cut-off), got {floor}")
    return _SafeSoftmax.apply(logits, dim, floor, cut)
