"""Learn to Pay Attention (Jetley, Lord, Lee, Torr, arXiv:1804.02391, ICLR 2018), model-level.

Sec. 3.  Local features ``l_i^s`` (position ``i`` of the output of a chosen stage ``s``) are
scored against one global feature ``g`` of the image, the scores are normalised over the
positions of the stage, and the attention-weighted sum of the local features replaces the
usual pooled feature as the input of the classifier:

* Eq. 1  compatibility:  ``c_i^s = ⟨u^s, l_i^s + g⟩``  ("pc", parametrised; ``u^s`` is learnt,
  one per stage) or ``c_i^s = ⟨l_i^s, g⟩``  ("dp", dot product, no parameters);
* Eq. 2  ``a_i^s = exp(c_i^s) / Σ_j exp(c_j^s)``  (softmax over the positions of stage s);
* Eq. 3  ``g_a^s = Σ_i a_i^s l_i^s``;
* "concat" (the paper's best, (VGG-att3)-concat-pc): ``logits = W [g_a^1; …; g_a^S] + b``.
  "indep" (also in the paper): one linear classifier per ``g_a^s``, their logits averaged.

Where ``l_i^s`` and ``g`` differ in dimension the paper first projects the local features onto
the space of ``g`` with a learnt linear map (Sec. 3); we use a 1×1 conv without bias, and the
projected ``l̂_i^s`` stands in for ``l_i^s`` in Eq. 1 *and* Eq. 3 (so every ``g_a^s`` has g's
dimension).  A stage whose width already equals g's gets no projection.

Choices the paper leaves open on a ResNet (it builds on VGG, where ``g`` is the output of the
fully connected layers before the classifier and the attended layers have g's 512 channels):

* ``g = W_g · GAP(last stage) + b_g`` — global average pooling of the last backbone stage (the
  ResNet's own pre-classifier feature) followed by one learnt linear map to ``global_dim``
  (default: the last stage's width, so that stage needs no projection, as in the paper's VGG).
  No non-linearity after it.  ``g`` comes from the last backbone stage even when it is not
  among the attended stages.  Costs per configuration: ``python -m blocks.cost``.
* g is built only where it can act.  With the paper's default, ``pc`` compatibility and the
  softmax, ``⟨u, l_i + g⟩ = ⟨u, l_i⟩ + ⟨u, g⟩`` and the second term is the same at every
  position i, so the softmax over positions cancels it: g, and the linear map that makes it,
  cannot change the output (their gradients are exactly zero).  We keep ``pc`` + softmax as the
  default (the paper's best model) and build no global map for it — the function is the same
  one, with ``W_g``, ``b_g`` removed (``global_fc`` is None).  With ``dp`` (``⟨l_i, g⟩`` varies
  with i) or with the sigmoid (no normalisation over positions) g matters and the map is built.
  A consequence: with ``pc`` + softmax and the last stage not attended, the stages after the
  deepest attended one do not reach the logits (the forward stops there).
* Default stages (-3, -2, -1): the last three stages, the paper's three attended layers
  (VGG-att3: layers 7, 10, 13).  On a 3-stage CIFAR ResNet that is every stage.
* Local features are the stage outputs (after the residual add and ReLU).
* ``u^s`` as a 1×1 conv to one channel without bias (a bias is a shift every softmax ignores).
* The backbone's ``fc`` is replaced by ``nn.Identity`` (it is never used), so the model's
  parameters are ``backbone − fc + attention_modules`` and, at the default stages, every
  parameter gets a gradient (``tests/test_dead_params.py``).
  ``attention_modules`` = [global map (where built), projections, compatibility vectors,
  classifier].
* ``normalise="sigmoid"``: not one of the paper's evaluated variants; a widely used unofficial
  PyTorch port offers it (``normalize_attn=False``).  There ``a_i = σ(c_i)`` and we take the *mean* over positions
  ``g_a^s = (1/n) Σ_i a_i l̂_i`` so the descriptor keeps a pooled feature's scale.  The paper's
  softmax is the default.

Sources: the paper's full text was not in our reference store; Eq. 1-3, the projection onto
g's space and the concat/indep variants are as recalled from the paper and as the unofficial
port implements them; the CIFAR-100 figure (VGG-att3)-concat-pc is in the claims registry's figures.

Softmax uses :func:`blocks._softmax.safe_softmax` ("dp" logits are unbounded dot products).

Maps: each per-stage :class:`LTPAAttend` keeps ``"attention"`` ``(N, H_s, W_s)`` (sums to 1
over positions with softmax); with :func:`blocks.maps.capture_maps` the keys are
``"attend.<k>/attention"`` for the k-th attended stage (0-based, in stage order).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._softmax import safe_softmax
from .backbones.base import Backbone
from .maps import MapsMixin
from .registry import register

COMPAT = ("pc", "dp")
NORMALISE = ("softmax", "sigmoid")
AGGREGATE = ("concat", "indep")


class LTPAAttend(MapsMixin, nn.Module):
    """One attended stage: projection (if needed), compatibility, normalisation, Eq. 1-3."""

    def __init__(self, channels: int, global_dim: int, compat: str, normalise: str):
        super().__init__()
        self.compat, self.normalise = compat, normalise
        # Sec. 3: project l onto g's space where the dimensions differ.
        self.project = nn.Conv2d(channels, global_dim, 1, bias=False) if channels != global_dim else None
        self.u = nn.Conv2d(global_dim, 1, 1, bias=False) if compat == "pc" else None  # u^s, Eq. 1

    def forward(self, l: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        """``l``: (N, C_s, H, W), ``g``: (N, D) or None (pc + softmax) -> ``g_a``: (N, D)."""
        if self.project is not None:
            l = self.project(l)  # (N, D, H, W)   l̂
        n, d, h, w = l.shape
        if self.u is not None:
            # Eq. 1, pc: ⟨u, l̂_i + g⟩ = ⟨u, l̂_i⟩ + ⟨u, g⟩; the second term only where g is built
            c = self.u(l)  # (N, 1, H, W)
            if g is not None:
                c = c + self.u(g[:, :, None, None])  # (N, 1, 1, 1) broadcast over positions
        else:
            c = (l * g[:, :, None, None]).sum(1, keepdim=True)  # (N, 1, H, W)   Eq. 1, dp
        c = c.reshape(n, 1, h * w)
        if self.normalise == "softmax":
            a = safe_softmax(c, dim=-1)  # (N, 1, HW)   Eq. 2
            ga = (l.reshape(n, d, h * w) * a).sum(-1)  # (N, D)   Eq. 3
        else:
            a = torch.sigmoid(c)  # (N, 1, HW)
            ga = (l.reshape(n, d, h * w) * a).mean(-1)  # (N, D)
        self._keep("attention", a.reshape(n, h, w))
        return ga


@register("ltpa", kind="model", default_stages=(-3, -2, -1), paper="arXiv:1804.02391")
class LearnToPayAttention(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, stages: tuple[int, ...],
                 compat: str = "pc", normalise: str = "softmax", aggregate: str = "concat",
                 global_dim: int | None = None):
        super().__init__()
        if compat not in COMPAT:
            raise ValueError(f"ltpa: compat must be one of {COMPAT}, got {compat!r}")
        if normalise not in NORMALISE:
            raise ValueError(f"ltpa: normalise must be one of {NORMALISE}, got {normalise!r}")
        if aggregate not in AGGREGATE:
            raise ValueError(f"ltpa: aggregate must be one of {AGGREGATE}, got {aggregate!r}")
        stages = tuple(stages)
        if not stages or any(not 1 <= s <= backbone.num_stages for s in stages):
            raise ValueError(f"ltpa: stages must be in 1..{backbone.num_stages}, got {stages}")
        last = backbone.stage_channels[-1]
        dim = last if global_dim is None else global_dim
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"ltpa: global_dim must be a positive int, got {global_dim!r}")

        self.backbone = backbone
        backbone.fc = nn.Identity()  # replaced by self.classifier; kept out of the parameters
        self.attended_stages = stages
        self.aggregate = aggregate
        # g = W_g GAP(last stage) + b_g, only where it acts (module doc: pc + softmax cancels it)
        needs_g = compat == "dp" or normalise == "sigmoid"
        self.global_fc = nn.Linear(last, dim) if needs_g else None
        self.attend = nn.ModuleList(
            LTPAAttend(backbone.stage_channels[s - 1], dim, compat, normalise) for s in stages
        )
        if aggregate == "concat":
            self.classifier: nn.Module = nn.Linear(dim * len(stages), num_classes)
        else:
            self.classifier = nn.ModuleList(nn.Linear(dim, num_classes) for _ in stages)
        # A plain list (not registered twice): what this model adds to the backbone.
        modules = [self.global_fc] if self.global_fc is not None else []
        object.__setattr__(self, "attention_modules", modules + [self.attend, self.classifier])

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """``g`` (N, D; None where not built) and the descriptors ``[g_a^s]`` (N, D each)."""
        depth = self.backbone.num_stages if self.global_fc is not None else max(self.attended_stages)
        feats = self.backbone.forward_stages(x, depth)  # [(N, C_s, H_s, W_s)], stages 1..depth
        g = self.global_fc(feats[-1].mean((2, 3))) if self.global_fc is not None else None  # (N, D)
        return g, [att(feats[s - 1], g) for s, att in zip(self.attended_stages, self.attend)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, descs = self.forward_features(x)
        if self.aggregate == "concat":
            return self.classifier(torch.cat(descs, 1))  # (N, num_classes)
        return torch.stack([fc(d) for fc, d in zip(self.classifier, descs)]).mean(0)
