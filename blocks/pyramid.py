"""Interaction-aware spatial pyramid attention, image-only (Du, Yuan, Li, Zhao, Li, Hu,
"Interaction-aware Spatio-temporal Pyramid Attention Networks for Action Classification",
arXiv:1808.01106, ECCV 2018), model-level.

Not to be confused with "Spatial-Temporal Pyramid Attention Network for Action Recognition"
(another group's pyramid module) nor with SPANet's *Spatial Pyramid Attention* (Guo et al.).

What the paper does (Sec. 3; its exact equations were not available to us — this is from the
abstract and two independent summaries of Sec. 3, so treat the details as unverified):

* feature maps of several layers form a spatial pyramid; a sampling function R downsamples
  them to one common scale (the current, deepest layer's);
* per scale k, each position's local feature (a row of the flattened ``HW × C`` map) is mapped
  by a learnt linear projection ``w_k`` (+ bias) to a score — read as projecting the local
  features onto a PCA basis vector; the per-scale score maps are fused into one attention map,
  which weights the local features of all positions;
* "interaction-aware" refers to interactions *among local features* (neighbouring positions are
  highly correlated): the PCA view gives a loss term — maximise the variance of the projected
  features ``w_k^T X^T X w_k`` under ``‖w_k‖ = 1`` via a Lagrangian — plus a term that keeps
  the scales' (L2-normalised) attention maps diverse, added to the classification loss;
* the number of inputs is unrestricted, so stacking frames gives the spatio-temporal version.

What we implement (image-only: no temporal part):

* Stages: default (-3, -2, -1), the last three stages (every stage of a CIFAR ResNet).
* R: adaptive average pooling of every chosen stage to the resolution of the *last chosen*
  stage (the deepest, smallest map; downsampling, as in the paper, so no interpolation is
  invented).  For the last stage R is the identity.
* Reduction to a common width ``dim`` by a 1×1 conv (no bias) + BatchNorm per scale:
  ``x_p^k = BN_k(W_k R(F_k)_p)`` (pooling before the conv: the two commute, pooling first is
  cheaper).  BN puts the scales on one footing for the products below.
* Score (our choice; the paper's exact form is unavailable):
  ``s_p = Σ_k ⟨u_k, x_p^k⟩ + Σ_{k<m} ⟨v_km, x_p^k ⊙ x_p^m⟩``.  No bias: the paper's
  per-scale projection has one (``w_k`` + bias), but a constant added to every score cannot
  change the softmax over positions, so under the default normalisation it would be a dead
  parameter; we leave it out under both normalisations (with ``sigmoid`` a bias would act).
  The first sum is the paper's per-scale linear projection with the score maps fused by sum
  (summing logits before a softmax = multiplying the per-scale softmax maps).  The second sum,
  ``interaction="product"`` (default), scores the *cross-scale interaction* at each position:
  the channel-wise products of every pair of scales (a second-order, factorisation-machine-like
  term), so a position scores high where the scales' features agree.  ``v`` starts at 0, so the
  model starts as the linear fused scorer.  ``interaction="none"`` keeps only the linear terms.
* ``normalise="softmax"`` (default): ``a = softmax_p(s)`` over the H·W positions;
  ``"sigmoid"``: ``a_p = σ(s_p)``, then the pooling below is a mean instead of a sum.
* Pooling: ``z^k = Σ_p a_p x_p^k`` per scale, concatenated (``K·dim``) — this *replaces* the
  backbone's global average pooling; ``with_gap=True`` appends GAP of the last backbone stage.
  A linear classifier maps it to the classes.
* Not implemented: the paper's auxiliary loss terms (the PCA variance/unit-norm term and the
  scale-diversity term); the model only returns logits and the training code has no hook for
  extra losses.  Also not implemented: the temporal pyramid.
* The backbone's ``fc`` is replaced by ``nn.Identity`` (never used), so the parameters are
  ``backbone − fc + attention_modules``; ``attention_modules`` = [pyramid, classifier].

Maps: the :class:`SpatialPyramidAttention` keeps ``"attention"`` ``(N, H, W)`` at the common
resolution (sums to 1 over positions with softmax); key ``"pyramid/attention"`` under
:func:`blocks.maps.capture_maps`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._softmax import safe_softmax
from .backbones.base import Backbone
from .maps import MapsMixin
from .registry import register

INTERACTION = ("product", "none")
NORMALISE = ("softmax", "sigmoid")


class SpatialPyramidAttention(MapsMixin, nn.Module):
    """``[(N, C_k, H_k, W_k)] -> (N, K·dim)``: resample, reduce, score, attention-pool."""

    def __init__(self, channels: list[int], dim: int, interaction: str, normalise: str):
        super().__init__()
        self.normalise = normalise
        self.reduce = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1, bias=False), nn.BatchNorm2d(dim)) for c in channels
        )
        k = len(channels)
        self.pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        self.score = nn.Conv2d(k * dim, 1, 1, bias=False)  # Σ_k ⟨u_k, x^k⟩ (no bias: see module doc)
        self.score_pair: nn.Conv2d | None = None
        if interaction == "product" and self.pairs:
            self.score_pair = nn.Conv2d(len(self.pairs) * dim, 1, 1, bias=False)  # Σ ⟨v_km, x^k ⊙ x^m⟩
            nn.init.zeros_(self.score_pair.weight)

    def features(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """``x^k``: every scale resampled to the last one's grid and reduced, (N, dim, H, W)."""
        size = feats[-1].shape[-2:]
        return [red(F.adaptive_avg_pool2d(f, size)) for red, f in zip(self.reduce, feats)]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        xs = self.features(feats)
        x = torch.cat(xs, 1)  # (N, K·dim, H, W)
        n, c, h, w = x.shape
        s = self.score(x)  # (N, 1, H, W)
        if self.score_pair is not None:
            prods = torch.cat([xs[i] * xs[j] for i, j in self.pairs], 1)  # (N, P·dim, H, W)
            s = s + self.score_pair(prods)
        s = s.reshape(n, 1, h * w)
        if self.normalise == "softmax":
            a = safe_softmax(s, dim=-1)  # (N, 1, HW)
            z = (x.reshape(n, c, h * w) * a).sum(-1)  # (N, K·dim)
        else:
            a = torch.sigmoid(s)  # (N, 1, HW)
            z = (x.reshape(n, c, h * w) * a).mean(-1)  # (N, K·dim)
        self._keep("attention", a.reshape(n, h, w))
        return z


@register("pyramid", kind="model", default_stages=(-3, -2, -1), paper="arXiv:1808.01106")
class PyramidAttentionNet(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, stages: tuple[int, ...],
                 dim: int = 256, interaction: str = "product", normalise: str = "softmax",
                 with_gap: bool = False):
        super().__init__()
        if interaction not in INTERACTION:
            raise ValueError(f"pyramid: interaction must be one of {INTERACTION}, got {interaction!r}")
        if normalise not in NORMALISE:
            raise ValueError(f"pyramid: normalise must be one of {NORMALISE}, got {normalise!r}")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"pyramid: dim must be a positive int, got {dim!r}")
        if not isinstance(with_gap, bool):
            raise ValueError(f"pyramid: with_gap must be a bool, got {with_gap!r}")
        stages = tuple(sorted(stages))
        if not stages or any(not 1 <= s <= backbone.num_stages for s in stages):
            raise ValueError(f"pyramid: stages must be in 1..{backbone.num_stages}, got {stages}")

        self.backbone = backbone
        backbone.fc = nn.Identity()  # replaced by self.classifier; kept out of the parameters
        self.attended_stages = stages
        self.with_gap = with_gap
        self.pyramid = SpatialPyramidAttention(
            [backbone.stage_channels[s - 1] for s in stages], dim, interaction, normalise
        )
        width = dim * len(stages) + (backbone.stage_channels[-1] if with_gap else 0)
        self.classifier = nn.Linear(width, num_classes)
        # A plain list (not registered twice): what this model adds to the backbone.
        object.__setattr__(self, "attention_modules", [self.pyramid, self.classifier])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's input: ``[z^1; …; z^K (; GAP(last stage))]``, (N, width)."""
        feats = self.backbone.forward_stages(x)  # [(N, C_s, H_s, W_s)]
        z = self.pyramid([feats[s - 1] for s in self.attended_stages])  # (N, K·dim)
        if self.with_gap:
            z = torch.cat([z, feats[-1].mean((2, 3))], 1)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))  # (N, num_classes)
