"""Dual Attention Network (Fu et al., "Dual Attention Network for Scene Segmentation",
arXiv:1809.02983): the position attention module (PAM) and channel attention module (CAM).

PAM (Sec. 3.2, Eq. 1-2).  B, C, D are 1×1 convs of the input A (B, C: C→C/8, D: C→C, with
biases as in the official code).  s_ji = exp(B_i·C_j) / Σ_i exp(B_i·C_j) is the impact of
position i on position j, and E_j = α Σ_i s_ji D_i + A_j with a scalar α initialised to 0.
In code terms we call the conv evaluated at the output position the query (Q) and the one
evaluated at the attended positions the key (K): out_p = Σ_q softmax_q(Q_p·K_q) V_q — the
official code's layout (``query_conv`` at the output position, softmax over the last dim).  It
is the paper's Eq. 1-2 with the names of the two learned convs B and C swapped, so the family
of functions is identical.  No 1/√d scale (neither paper nor code has one).

A dead parameter kept on purpose: the key conv's bias (``key.bias``, C/8 values).  A key bias
b adds Q_p·b to every score of query p — the same for all keys q — and the softmax over keys
cancels it, so it never changes the output (its gradient is 0).  The official code has it, and
keeping it keeps the module's parameter count the reference's (1.25C² + 1.25C + 1);
``tests/test_dead_params.py`` allows exactly this one.  The query bias is live (it adds b·K_q,
which varies over keys), as is the value bias.

CAM (Sec. 3.3, Eq. 3-4).  With X = A reshaped to C×N (N = HW), the paper's Eq. 3 is
x_ji = exp(A_i·A_j) / Σ_i exp(A_i·A_j), a plain softmax of X·Xᵀ, and Eq. 4 is
E_j = β Σ_i x_ji A_i + A_j with β initialised to 0.  The official code (junfu1115/DANet,
``CAM_Module``) differs: it takes energy = X·Xᵀ, then energy_new = max(energy, dim=-1,
keepdim) − energy, then softmax over the last dim.  Because softmax is shift-invariant per row,
that equals softmax(−X·Xᵀ): channels attend most to the channels *least* similar to them —
the opposite of Eq. 3.  As asked for this project we follow the code (it is what the published
numbers were trained with); the difference is a sign, documented here and in the tests.

The softmaxes use :func:`blocks._softmax.safe_softmax`: CAM's energies scale with HW·‖x‖², so
rows span hundreds of units and exp() would otherwise produce subnormal floats, which are 10×+
slower on x86 CPUs (subnormal floats).

``danet`` — fusion.  The paper (Sec. 3.4, Fig. 2) sends the backbone output through both
modules in parallel, transforms each output by a conv layer and sums them (then a conv for the
segmentation head).  For a classification stage block with an identity contract we drop the
segmentation convs and sum the two residual outputs, subtracting x once so the identity path is
counted once: danet(x) = pam(x) + cam(x) − x = x + α·PAM-term + β·CAM-term.  It starts as the
identity (α = β = 0).

Parameters: PAM 2(C·C/8 + C/8) + C² + C + 1 = 1.25C² + 1.25C + 1 (C a multiple of 8);
CAM 1 (β); danet the sum.

Placement: DANet appends both modules to the output of a dilated ResNet (last two stages
dilated, output stride 8; Sec. 3.1, Fig. 2).  Our nearest equivalent on an ordinary backbone is
``stage_end`` of the last stage (``-1``: res5 = torchvision's layer4, stage 3 of a CIFAR ResNet) — feature maps there are 7×7 at 224 px,
not the 28×28 of the dilated network.

Maps (:mod:`blocks.maps`): PAM ``"affinity"`` ``(N, HW, HW)`` (rows = output/query positions,
each row sums to 1); CAM ``"channel_affinity"`` ``(N, C, C)`` (row j = weights over channels i
for output channel j, each row sums to 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._softmax import logits_bmm, safe_softmax
from .maps import MapsMixin
from .registry import register
from .se import reduced


@register("pam", default_slot="stage_end", default_stages=(-1,), paper="arXiv:1809.02983")
class PositionAttention(MapsMixin, nn.Module):
    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        inner = reduced(channels, reduction)
        self.query = nn.Conv2d(channels, inner, 1)  # paper's B/C (see module docstring)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)  # paper's D
        self.gamma = nn.Parameter(torch.zeros(1))  # α, Eq. 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2)  # (N, C/8, HW)
        k = self.key(x).flatten(2)  # (N, C/8, HW)
        v = self.value(x).flatten(2)  # (N, C, HW)
        s = safe_softmax(logits_bmm(q.transpose(1, 2), k), dim=-1)  # (N, HW_q, HW_k)   Eq. 1
        self._keep("affinity", s)
        out = torch.bmm(v, s.transpose(1, 2)).view(n, c, h, w)  # (N, C, H, W)   Σ_q s_pq V_q
        return self.gamma * out + x  # Eq. 2


@register("cam", default_slot="stage_end", default_stages=(-1,), paper="arXiv:1809.02983")
class ChannelAttention(MapsMixin, nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))  # β, Eq. 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        xf = x.flatten(2)  # (N, C, HW)
        energy = logits_bmm(xf, xf.transpose(1, 2))  # (N, C, C)   X·Xᵀ
        # Official code: max-minus-energy, i.e. softmax(−X·Xᵀ) (module docstring).
        logits = energy.amax(-1, keepdim=True) - energy  # (N, C, C)
        a = safe_softmax(logits, dim=-1)  # (N, C, C)   Eq. 3 (code variant)
        self._keep("channel_affinity", a)
        out = torch.bmm(a, xf).view(n, c, h, w)  # (N, C, H, W)   Σ_i x_ji A_i
        return self.gamma * out + x  # Eq. 4


@register("danet", default_slot="stage_end", default_stages=(-1,), paper="arXiv:1809.02983")
class DualAttention(nn.Module):
    """PAM and CAM in parallel, summed with the identity counted once (module docstring)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.pam = PositionAttention(channels, reduction=reduction)
        self.cam = ChannelAttention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pam(x) + self.cam(x) - x  # (N, C, H, W)
