"""Salient Positions Attention — SPANet ("Salient Positions based Attention Network for Image
Classification", arXiv:2106.04996).  Not the unrelated *Spatial Pyramid Attention Network*
(Guo et al., 2020), which shares the acronym.

A non-local block (arXiv:1711.07971) in which (i) only the k most salient positions take part
in the affinity, and (ii) the affinity is between channels, not positions:

    θ = W_θ x + b_θ,  g = W_g x + b_g                     (1×1 convs, C → C' = C/2)
    saliency(p) = Σ_c θ_c(p)²                             (the paper's squared-power metric)
    K = the k positions of largest saliency;  θ_K = θ[:, K]           (C' × k)
    A = softmax(θ_K θ_Kᵀ) over the last dim                           (C' × C')
    y = A g                                                             (C' × HW)
    z = BN(W y + b) + x                                   (W: 1×1 conv C' → C; BN γ₀ = 0)

(θ_K θ_Kᵀ is the C'×C' Gram matrix of θ over the kept positions.)  The abstract describes the
salient-position selection, the squared-power saliency "along the channel dimension" and the
channel-wise (not spatial) context; the exact equations above are read from the authors' code
(likyoo/SPANet, ``SPANet.py``, linked from the abstract).  Where that code differs from the
method, and what we do:

* it builds a φ conv that it never uses (C·C' + C' dead parameters) — we build no φ;
* it hard-codes the CUDA device inside ``forward`` — we stay on the input's device;
* it keeps PyTorch's default BN init (γ = 1), so the block does *not* start as the identity —
  we zero-initialise the BN γ like the non-local paper, so inserting the block into a
  pretrained network changes nothing at first;
* k: a fixed ``k = 8`` or, ``adaptive``, HW // 16 — we take ``topk`` (a count) or ``topk_ratio``
  (a fraction of HW, default 0.25), see below; positions are kept in descending saliency
  order (``torch.topk`` with ``sorted=True``, as the code);
* its optional 2×2 sub-sampling + bilinear up-sampling (off by default there) is omitted.

Parameters: θ, g: 2 (C·C' + C'); W: C'·C + C; BN: 2C  →  1.5C² + 4C at C' = C/2.

k.  ``topk`` (int ≥ 1) gives the count; otherwise ``topk_ratio`` ∈ (0, 1] gives
k = max(1, round(topk_ratio · H·W)) (Python ``round``: half to even).  k is clamped to H·W, so
``topk_ratio=1`` or a large ``topk`` keeps every position.  ``topk_ratio`` has a default, so
``create("spa", 64, topk=10)`` works; passing *both* explicitly raises ``ValueError``.  Whether
``topk_ratio`` was passed is told by identity with the default object ``DEFAULT_TOPK_RATIO``
(a float the caller writes, e.g. from a YAML spec, is a different object); pass
``topk_ratio=None`` with ``topk`` to be explicit.

Association order (cost).  The value path u = W·A·(W_g x + b_g) + b is a product of three
linear maps, computed in one of two orders, chosen per call from the shapes (C, C', H·W):

* ``"per_pixel"`` — g = W_g x + b_g, y = A g, u = W y + b: H·W·(2·C·C' + C'²) multiply-adds
  per sample (at C' = C/2: 1.25·C²·HW);
* ``"folded"`` — M = (W A) W_g (C×C, per sample), v = W A b_g + b, u = M x + v:
  C·C'·(C' + C) + C²·HW (at C' = C/2: 0.75·C³ + C²·HW).  Building M costs the same whatever
  the map size, so this form pays off only on large maps (at C' = C/2 when H·W > 3C: ResNet-50
  at 224 px folds at stage 1 (56×56, C = 256) only; at stage 4 (7×7, C = 2048) the folded
  order would cost 26× the per-pixel one).  Its benefit is memory: g and y never exist per pixel.

:func:`choose_form` takes the order with fewer multiply-adds (ties: per-pixel), the same rule
in training and eval; ``form_for(h, w)`` says which one a module runs, and setting the
attribute ``form`` to ``"folded"`` or ``"per_pixel"`` (default ``"auto"``) forces one (tests,
benchmarks).  :func:`blocks.cost.describe_forms` lists the order every spa module of a model
runs at an input size (and ``python -m blocks.cost ... --json`` carries it as ``"forms"``).
Both orders compute the same function (up to float rounding order).  (A third order,
(W A)·(W_g x), has fewer multiply-adds than the folded one but keeps W_g x per pixel for
backward; we do not use it.)

Memory (both orders).  Saliency and top-k run under ``no_grad`` on a full θ that is freed at
once (top-k is piecewise constant, so no gradient flows through the selection); θ_K is then
recomputed, differentiably, from x at the k gathered positions only: θ_K = W_θ x[:, K] + b_θ.
In training, BN and the residual add run as one autograd function (:class:`_BatchNormAdd`): the
same batch statistics, running-stat update and gradients as ``nn.BatchNorm2d`` followed by
``+ x``, but its forward writes the output in one buffer (BN's output is not a separate tensor)
and its backward builds dL/du in one buffer (PyTorch's CPU BN backward uses a second full-size
temporary).  Eval mode, autocast, low-precision dtypes and a replaced ``bn`` (e.g.
``SyncBatchNorm``) take the plain ``self.bn(u) + x`` path.  In the folded order the only
per-pixel tensor kept for backward is u (BN's input); x itself is the caller's.  Measured peak
memory: docs/benchmarks.md (``python -m benchmarks.spa_memory``).

Dead parameter, kept on purpose: ``out.bias`` (b) adds a per-channel constant right before a
BatchNorm, which subtracts the batch mean in training: no effect on the training output and a
zero gradient.  The authors' code has it (its W is an ``nn.Conv2d`` with bias), so parameter
counts match theirs.  (b_g is not dead here: A b_g differs between samples.)

Placement: not verified from the paper here (we could not read its experimental section); our
choice is ``stage_end`` after stages (1, 2, 3) (res2-res4 = torchvision's layer1-layer3), in
line with the abstract's claim that SPA helps most "at low network levels" where non-local is
too costly.

Maps (:mod:`blocks.maps`): ``"saliency"`` ``(N, H, W)``; ``"keep_index"`` ``(N, k)``
flat indices into H·W (row-major), most salient first; ``"keep_mask"`` ``(N, H, W)`` 1.0 at the
kept positions, 0.0 elsewhere (sums to k per sample); ``"affinity"`` ``(N, C', C')`` the channel
affinity A (rows sum to 1).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._softmax import float32_logits, safe_softmax
from .maps import MapsMixin
from .registry import register
from .se import reduced

#: Default ``topk_ratio``; identity with this object means "not passed" (module docstring).
DEFAULT_TOPK_RATIO = 0.25


#: The value path's association orders (module docstring, "Association order").
FORMS = ("folded", "per_pixel")


def value_path_macs(channels: int, inter_channels: int, hw: int) -> dict[str, int]:
    """Multiply-adds per sample of u = W·A·(W_g x + b_g) + b in each association order."""
    c, cp = channels, inter_channels
    return {
        "folded": c * cp * (cp + c) + c * c * hw,  # W A: C·C'², (W A) W_g: C²·C', M x: C²·HW
        "per_pixel": hw * (2 * c * cp + cp * cp),  # W_g x: C'·C·HW, A g: C'²·HW, W y: C·C'·HW
    }


def choose_form(channels: int, inter_channels: int, hw: int) -> str:
    """The association order with fewer multiply-adds for this shape (ties: ``"per_pixel"``)."""
    macs = value_path_macs(channels, inter_channels, hw)
    return "folded" if macs["folded"] < macs["per_pixel"] else "per_pixel"


def keep_count(hw: int, topk_ratio: float | None, topk: int | None) -> int:
    """Number of kept positions for an ``hw``-position map (count wins; clamped to ``hw``)."""
    if topk is not None:
        return min(topk, hw)
    return min(hw, max(1, round(topk_ratio * hw)))


class _BatchNormAdd(torch.autograd.Function):
    """z = γ (u − μ) / √(σ² + ε) + β + x with batch statistics μ, σ² over (N, L) per channel.

    ``nn.BatchNorm2d`` in training mode followed by ``+ x``, fused so that the forward and the
    backward each allocate one (N, C, L) buffer.  Also returns μ and the biased σ² (not
    differentiable) for the running-statistics update.
    """

    @staticmethod
    def forward(ctx, u, x, weight, bias, eps: float):
        n, c, l = u.shape
        var, mean = torch.var_mean(u, dim=(0, 2), unbiased=False)  # (C,), (C,)
        invstd = torch.rsqrt(var + eps)  # (C,)
        z = u - mean.view(1, c, 1)  # (N, C, L)   the output buffer
        z.mul_((weight * invstd).view(1, c, 1)).add_(bias.view(1, c, 1)).add_(x)
        ctx.save_for_backward(u, mean, invstd, weight)
        ctx.mark_non_differentiable(mean, var)
        return z, mean, var

    @staticmethod
    def backward(ctx, gz, _gmean, _gvar):
        u, mean, invstd, weight = ctx.saved_tensors
        n, c, l = u.shape
        count = n * l
        gz = gz.contiguous()
        sum_g = gz.sum((0, 2))  # (C,)   Σ g  = dL/dβ
        gu = u - mean.view(1, c, 1)  # (N, C, L)   u − μ, becomes dL/du in place
        # Σ g·(u − μ) per channel as N·C dot products of length L (no full-size temporary)
        dot = torch.bmm(gz.view(n * c, 1, l), gu.view(n * c, l, 1)).view(n, c).sum(0)  # (C,)
        sum_gxhat = dot * invstd  # (C,)   Σ g·x̂  = dL/dγ
        # dL/du = γ·invstd·(g − Σg/M − x̂·Σ(g·x̂)/M),  x̂ = (u − μ)·invstd
        gu.mul_((-invstd * sum_gxhat / count).view(1, c, 1)).add_(gz)
        gu.sub_((sum_g / count).view(1, c, 1)).mul_((weight * invstd).view(1, c, 1))
        return gu, gz, sum_gxhat, sum_g, None


@register(
    "spa",
    default_slot="stage_end",
    default_stages=(1, 2, 3),
    paper="arXiv:2106.04996",
)
class SalientPositionsAttention(MapsMixin, nn.Module):
    def __init__(
        self,
        channels: int,
        inter_channels: int | None = None,
        reduction: int = 2,
        topk_ratio: float | None = DEFAULT_TOPK_RATIO,
        topk: int | None = None,
    ):
        super().__init__()
        if topk is not None:
            if topk_ratio is not None and topk_ratio is not DEFAULT_TOPK_RATIO:
                raise ValueError(
                    f"give topk_ratio or topk, not both (got topk_ratio={topk_ratio!r}, "
                    f"topk={topk!r})"
                )
            if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or topk < 1:
                raise ValueError(f"topk must be an int >= 1, got {topk!r}")
            topk_ratio = None
        else:
            if topk_ratio is None:
                raise ValueError("one of topk_ratio or topk must be given")
            if (
                isinstance(topk_ratio, bool)
                or not isinstance(topk_ratio, numbers.Real)
                or not 0.0 < topk_ratio <= 1.0
            ):
                raise ValueError(f"topk_ratio must be in (0, 1], got {topk_ratio!r}")
        if inter_channels is None:
            inter_channels = reduced(channels, reduction)
        if inter_channels <= 0:
            raise ValueError(f"inter_channels must be > 0, got {inter_channels}")
        self.inter_channels = inter_channels
        self.topk = int(topk) if topk is not None else None
        self.topk_ratio = float(topk_ratio) if topk_ratio is not None else None
        self.theta = nn.Conv2d(channels, inter_channels, 1)  # W_θ
        self.g = nn.Conv2d(channels, inter_channels, 1)  # W_g
        self.out = nn.Conv2d(inter_channels, channels, 1)  # W
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)  # γ = 0: the block starts as the identity
        self.form = "auto"  # or one of FORMS, to force an association order

    def extra_repr(self) -> str:
        k = f"topk={self.topk}" if self.topk is not None else f"topk_ratio={self.topk_ratio}"
        return f"inter_channels={self.inter_channels}, {k}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        cp = self.inter_channels
        k = keep_count(h * w, self.topk_ratio, self.topk)
        xf = x.flatten(2)  # (N, C, HW)
        w_theta = self.theta.weight.view(cp, c)  # (C', C)
        # The selection, θ_K and its Gram matrix A in float32 under autocast (see
        # _softmax.logits_bmm): bfloat16 saliencies tie and swap near-equal positions, a different
        # selection from the float32 block's.
        with float32_logits(x) as f32:
            with torch.no_grad():  # selection only: top-k has no gradient
                theta = F.conv2d(f32(x), f32(self.theta.weight), f32(self.theta.bias))  # (N, C', H, W)
                saliency = theta.flatten(2).pow(2).sum(1)  # (N, HW)   Σ_c θ_c(p)²
                keep = saliency.topk(k, dim=1, sorted=True).indices  # (N, k)
            x_k = xf.gather(2, keep.unsqueeze(1).expand(n, c, k))  # (N, C, k)
            # θ_K = W_θ x_K + b_θ as one batched GEMM on the expanded (not copied) weight
            b_theta = self.theta.bias.view(1, cp, 1)
            theta_k = torch.baddbmm(f32(b_theta), f32(w_theta).expand(n, cp, c), f32(x_k))  # (N, C', k)
            a = safe_softmax(torch.bmm(theta_k, theta_k.transpose(1, 2)), dim=-1)  # (N, C', C')
        if self._capture:
            self._keep("affinity", a)
            self._keep("saliency", saliency.view(n, h, w))
            self._keep("keep_index", keep)
            mask = torch.zeros(n, h * w, device=x.device).scatter_(1, keep, 1.0)
            self._keep("keep_mask", mask.view(n, h, w))
        w_g, b_g = self.g.weight.view(cp, c), self.g.bias  # (C', C), (C',)
        w_out, b_out = self.out.weight.view(c, cp), self.out.bias  # (C, C'), (C,)
        if self.form_for(h, w) == "folded":  # W·A·(W_g x + b_g) + b = M x + v
            wa = torch.matmul(w_out, a)  # (N, C, C')   W A
            m = torch.matmul(wa, w_g)  # (N, C, C)    W A W_g
            v = torch.matmul(wa, b_g) + b_out  # (N, C)       W A b_g + b
            u = torch.baddbmm(v.unsqueeze(-1), m, xf)  # (N, C, HW)   = W y + b
        else:  # per pixel: g = W_g x + b_g, y = A g, u = W y + b
            g = torch.baddbmm(b_g.view(1, cp, 1), w_g.expand(n, cp, c), xf)  # (N, C', HW)
            y = torch.bmm(a, g)  # (N, C', HW)
            u = torch.baddbmm(b_out.view(1, c, 1), w_out.expand(n, c, cp), y)  # (N, C, HW)
        if self._fused_bn(u):
            return self._bn_add_train(u, xf).view(n, c, h, w)  # z = BN(W y + b) + x
        return self.bn(u.view(n, c, h, w)) + x  # (N, C, H, W)   z = BN(W y + b) + x

    def form_for(self, h: int, w: int) -> str:
        """The value path's association order for an ``h``×``w`` input (module docstring)."""
        if self.form == "auto":
            return choose_form(self.out.out_channels, self.inter_channels, h * w)
        if self.form not in FORMS:
            raise ValueError(f"form must be 'auto' or one of {FORMS}, got {self.form!r}")
        return self.form

    def _fused_bn(self, u: torch.Tensor) -> bool:
        bn = self.bn
        return (
            type(bn) is nn.BatchNorm2d
            and bn.training
            and bn.affine
            and bn.track_running_stats
            and u.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled(u.device.type)
        )

    def _bn_add_train(self, u: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
        """``self.bn(u) + x`` in training mode, running statistics included (as BatchNorm2d)."""
        bn = self.bn
        n, _, l = u.shape
        if n * l <= 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got input size {tuple(u.shape)}"
            )
        z, mean, var = _BatchNormAdd.apply(u, xf, bn.weight, bn.bias, bn.eps)  # (N, C, L)
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            f = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1.0 - f).add_(mean, alpha=f)
            bn.running_var.mul_(1.0 - f).add_(var * (n * l / (n * l - 1)), alpha=f)
        return z
