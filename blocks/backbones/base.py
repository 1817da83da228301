"""The common shape of every backbone: a stem, numbered stages of residual blocks, a head.

Insertion (:mod:`blocks.insert`) and model-level attention (LTPA, pyramid) only need this
shape, so one code path serves the CIFAR ResNets, the torchvision ResNets and GSA-ResNets.

Attention is held *beside* the backbone's own modules, never wrapped around them, so the
backbone's state-dict keys do not change when a block is inserted (as timm does it).  That is
what lets a torchvision checkpoint load into a model with attention:

* every residual block has an ``attn`` attribute, None by default, applied to the residual
  branch after its last BN and before the identity add — the ``gate`` slot;
* every stage is a :class:`Stage`: the residual blocks under the keys ``0 .. n-1`` (as in an
  ``nn.Sequential``) and a ``ModuleDict`` ``attn`` of stage-level blocks, ``attn["i"]`` applied
  after residual block i — the ``after_block`` and ``stage_end`` slots.  An empty ModuleDict
  adds no key.

Residual blocks also expose ``spatial_conv_name`` (the 3×3 conv that ``replace_conv``
replaces: that slot does change the keys, the replaced conv is gone) and ``out_channels``.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn as nn


class Stage(nn.Module):
    """Residual blocks ``0 .. n-1`` and stage-level attention ``attn[str(i)]`` after block i."""

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        for i, b in enumerate(blocks):
            self.add_module(str(i), b)
        self.num_blocks = len(blocks)
        self.attn = nn.ModuleDict()

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, i: int | slice) -> nn.Module | list[nn.Module]:
        if isinstance(i, slice):
            return list(self)[i]
        return self._modules[str(range(self.num_blocks)[i])]  # negative i counts from the end

    def __iter__(self) -> Iterator[nn.Module]:
        return (self._modules[str(i)] for i in range(self.num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self):
            x = block(x)
            if str(i) in self.attn:
                x = self.attn[str(i)](x)
        return x


class Backbone(nn.Module):
    """``stem -> stages -> global average pool -> fc``, the interface every backbone keeps.

    Subclasses provide ``stages`` (the :class:`Stage` modules, first to last), ``forward_stem``,
    ``fc`` and ``stage_channels`` (``stage_channels[i]`` = channels out of stage ``i + 1``).
    """

    name: str
    num_classes: int
    stage_channels: list[int]
    fc: nn.Module
    stages: Sequence[Stage]

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_stages(self, x: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        """The outputs of stages 1..``depth`` (default: all), first to last: ``[(N, C_s, H_s, W_s)]``."""
        out = []
        x = self.forward_stem(x)
        for stage in self.stages[:depth]:
            x = stage(x)
            out.append(x)
        return out

    def forward_head(self, feat: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(feat), 1))  # (N, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.forward_head(x)


class StemStagesBackbone(Backbone):
    """A backbone held as ``stem`` + ``stages`` (a ModuleList of :class:`Stage`): our own keys
    (``stem.0.weight``, ``stages.0.0.conv1.weight``) for the CIFAR ResNets and GSA-ResNets."""

    def __init__(self, stem: nn.Module, stages: list[Stage], stage_channels: list[int],
                 num_classes: int, name: str = ""):
        super().__init__()
        if len(stages) != len(stage_channels):
            raise ValueError("one channel count per stage")
        self.name = name
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(stage_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(stage_channels[-1], num_classes)
        self.num_classes = num_classes

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


def residual_blocks(stage: Stage) -> list[nn.Module]:
    """The residual blocks of a stage (stage-level attention is held apart, in ``stage.attn``)."""
    return list(stage)
