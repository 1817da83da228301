"""Non-local block, embedded-Gaussian form (Wang et al., "Non-local Neural Networks",
arXiv:1711.07971).

Sec. 3.1, Eq. 1: y_i = 1/C(x) Σ_j f(x_i, x_j) g(x_j).  Sec. 3.2, Eq. 3 (embedded Gaussian):
f(x_i, x_j) = exp(θ(x_i)ᵀ φ(x_j)) with C(x) = Σ_j f, i.e. y = softmax_j(θᵀφ) · g — the form
the paper notes is self-attention.  Sec. 3.3 and Fig. 2: the block is z_i = W_z y_i + x_i, with
θ, φ, g, W_z 1×1 convolutions and C' = C/2 channels inside.  The paper's implementation details
add BN after W_z with its scale initialised to zero, so the whole block starts as the identity:

    z = BN(W_z · softmax(θᵀφ) · g) + x

Sub-sampling (Sec. 3.3): "adding a max pooling layer after φ and g" (2×2 in space), so keys and
values come from HW' ≈ HW/4 positions.  We follow the paper's text: conv, then pool (a popular
PyTorch port does the same).  The official Caffe2 code (facebookresearch/video-nonlocal-net,
``nonlocal_helper.py``) instead pools ``x`` once and applies the φ and g convs to the pooled
input; the two differ because a max-pool does not commute with a 1×1 conv.  Odd sizes: the
official code's pool has no padding and rounds down, and so does the popular port
(``nn.MaxPool2d(2)``); we follow them (floor, ``ceil_mode=False``), so a 7×7 map has 3×3 keys
and its last row and column never become keys (they are still queries).  A side of length 1
cannot be pooled by a 2-window; there we pool with a window of 1 along that side
(H = 1: 1 × ⌊W/2⌋ keys; 1×1 maps: one key).

Scale: Eq. 3 has no scale; the official Caffe2 code multiplies θᵀφ by C'^-½ (``USE_SCALE``),
the popular port does not.  ``scale=False`` (default) follows the paper; ``scale=True`` the
official code.  The official code also uses Gaussian(0.01) conv init; we keep PyTorch's default
init (only the BN γ = 0 matters for the identity start).

Dead parameters, kept on purpose.  The 1×1 convs carry biases, as in both reference codes, so
parameter counts match theirs; three of them cannot change the function:

* ``phi.bias`` — adds θ_iᵀ b_φ to every logit of query i, a constant along the softmax's key
  axis j, so the softmax removes it (its gradient is exactly 0);
* ``g.bias`` and ``out.bias`` — each adds a per-channel constant to W_z y (the softmax rows sum
  to 1, so b_g passes through as W_z b_g), right before a BatchNorm that subtracts the batch
  mean in training: no effect on the training output, gradient 0.  (In eval mode they shift
  the running mean equally, so they cancel there too once the statistics have been learnt.)

Parameters at C' = C/2: θ, φ, g: 3 (C·C' + C') ; W_z: C'·C + C ; BN: 2C  →  2C² + 4.5C
(132,224 at C = 256).

Placement: the paper's best Kinetics models (Sec. 4.1, Table 2) add 5 blocks to a ResNet-50,
"to every other residual block": 2 in res3 and 3 in res4.  Here that is ``after_block`` in
stages (2, 3) (= res3, res4 = torchvision's layer2, layer3) with ``default_every=2``: res3 has
4 blocks and res4 6, so every second block gives 2 + 3 = 5.

Maps (:mod:`blocks.maps`): ``"affinity"`` — softmax(θᵀφ), ``(N, HW, HW')`` rows = query
positions (row-major over H, W), columns = key positions on the (sub-sampled) key grid;
``"key_hw"`` — that key grid's size ``(H', W')`` as a float tensor of shape ``(2,)`` so
:func:`blocks.maps.query_map` can reshape a row.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._softmax import logits_bmm, safe_softmax
from .maps import MapsMixin
from .registry import register
from .se import reduced


@register(
    "nonlocal",
    default_slot="after_block",
    default_stages=(2, 3),
    default_every=2,
    paper="arXiv:1711.07971",
)
class NonLocal(MapsMixin, nn.Module):
    def __init__(
        self,
        channels: int,
        inter_channels: int | None = None,
        reduction: int = 2,
        subsample: bool = True,
        scale: bool = False,
    ):
        super().__init__()
        if inter_channels is None:
            inter_channels = reduced(channels, reduction)
        if inter_channels <= 0:
            raise ValueError(f"inter_channels must be > 0, got {inter_channels}")
        self.inter_channels = inter_channels
        self.subsample = subsample
        self.scale = scale
        self.theta = nn.Conv2d(channels, inter_channels, 1)  # W_θ
        self.phi = nn.Conv2d(channels, inter_channels, 1)  # W_φ
        self.g = nn.Conv2d(channels, inter_channels, 1)  # W_g
        self.out = nn.Conv2d(inter_channels, channels, 1)  # W_z
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)  # γ = 0: the block starts as the identity

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        if not self.subsample:
            return t
        kh, kw = min(2, t.shape[-2]), min(2, t.shape[-1])  # a side of 1 is pooled by 1
        return F.max_pool2d(t, (kh, kw), (kh, kw))  # (N, C', ⌊H/2⌋, ⌊W/2⌋)   floor, as the official code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        cp = self.inter_channels
        theta = self.theta(x).flatten(2)  # (N, C', HW)
        phi = self._pool(self.phi(x))  # (N, C', H', W')
        hk, wk = phi.shape[-2:]
        phi = phi.flatten(2)  # (N, C', H'W')
        g = self._pool(self.g(x)).flatten(2)  # (N, C', H'W')
        logits = logits_bmm(theta.transpose(1, 2), phi)  # (N, HW, H'W')   θ_iᵀ φ_j
        if self.scale:
            logits = logits * cp**-0.5
        f = safe_softmax(logits, dim=-1)  # (N, HW, H'W')   Eq. 3, normalised over j
        self._keep("affinity", f)
        self._keep("key_hw", torch.tensor([hk, wk]))
        y = torch.bmm(g, f.transpose(1, 2))  # (N, C', HW)   y_i = Σ_j f_ij g_j
        y = y.view(n, cp, h, w)  # (N, C', H, W)
        return self.bn(self.out(y)) + x  # (N, C, H, W)   z = BN(W_z y) + x
