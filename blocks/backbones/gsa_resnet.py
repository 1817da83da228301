"""GSA-ResNet-50/101 (Shen et al., arXiv:2010.03019, Sec. 3.2 / 4): the torchvision ResNet
layout (v1.5 bottlenecks, 3/4/6/3 or 3/4/23/3 blocks, widths 64/128/256/512, expansion 4) with
every bottleneck's 3×3 conv replaced by a :class:`blocks.gsa.GSA` module; the stem stays
convolutional.  Where the 3×3 conv had stride 2 the GSA module runs at full resolution and a
2×2 average pool follows it (as in the paper, by our reading; the same convention as
``replace_conv`` in :mod:`blocks.insert`, ``ceil_mode=True`` so odd sizes match the 1×1/2
projection shortcut).  Own Bottleneck: torchvision is not imported.

``small_stem=True`` swaps the 7×7/2 conv + max-pool for a 3×3/1 conv without pooling (the
project's CIFAR/Tiny-ImageNet adaptation, as in :mod:`.tv_resnet`).  ``gsa_params`` go to every
GSA module (e.g. ``heads``, ``max_len``, ``rel_length``).  Note the default ``max_len=64``: with
the standard stem the first stage sees input/4, so inputs up to 256 px work; larger inputs need
``max_len`` (or a finite ``rel_length``).

Initialisation: torchvision's for convs and BNs, except that ``zero_init_residual=True`` (our
default; torchvision's is False, the paper says nothing we could read) starts each bottleneck's
last BN at γ = 0.  Reason: the positional branch is cubic in its input (q·r weights times q·r
weights times v, no softmax) and the content branch quadratic, so an *untrained* GSA-ResNet in
eval mode — BN running stats still 0/1, nothing normalising — overflows to inf/NaN within
stage 2 (block outputs ~4, 3e2, 2e7, 1e21 on a 32×40 input).  Train-mode BN, or any trained
running stats, keep it finite either way.

Parameters: 18,139,640 for GSA-ResNet-50 (1000 classes, defaults), against the paper's 18.1M
(unverified figure); 30,593,976 for GSA-ResNet-101 (paper: 30.2M, unverified).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..gsa import GSA
from .base import Stage, StemStagesBackbone

GSA_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class GSABottleneck(nn.Module):
    """1×1 → BN → ReLU → GSA [→ 2×2 avg-pool] → BN → ReLU → 1×1 → BN [→ attn], + shortcut, ReLU."""

    expansion = 4
    spatial_conv_name = "conv2"  # the slot replace_conv of blocks.insert; attn is the gate slot

    def __init__(self, in_channels: int, width: int, stride: int = 1, **gsa_params):
        super().__init__()
        out_channels = width * self.expansion
        self.out_channels = out_channels
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        gsa = GSA(width, **gsa_params)
        self.conv2 = nn.Sequential(gsa, nn.AvgPool2d(2, ceil_mode=True)) if stride == 2 else gsa
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.attn: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)  # (N, 4w, H/s, W/s)
        y = self.relu(self.bn1(self.conv1(x)))  # (N, w, H, W)
        y = self.relu(self.bn2(self.conv2(y)))  # (N, w, H/s, W/s)
        y = self.bn3(self.conv3(y))  # (N, 4w, H/s, W/s)
        if self.attn is not None:
            y = self.attn(y)
        return self.relu(y + idt)


def gsa_resnet(depth: int = 50, num_classes: int = 1000, small_stem: bool = False,
               zero_init_residual: bool = True, **gsa_params) -> StemStagesBackbone:
    """GSA-ResNet-``depth``: ``(N, 3, H, W) -> (N, num_classes)``.

    ``zero_init_residual``: start every bottleneck's last BN at γ = 0 (see the module doc).
    """
    if depth not in GSA_DEPTHS:
        raise ValueError(f"GSA-ResNet depth must be one of {tuple(GSA_DEPTHS)}, got {depth}")
    if small_stem:
        stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
    else:
        stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, 2, 1))
    stages, channels, c_in = [], [], 64
    for i, n_blocks in enumerate(GSA_DEPTHS[depth]):
        width = 64 * 2 ** i
        blocks = []
        for j in range(n_blocks):
            stride = 2 if (i > 0 and j == 0) else 1
            blocks.append(GSABottleneck(c_in, width, stride, **gsa_params))
            c_in = width * GSABottleneck.expansion
        stages.append(Stage(blocks))
        channels.append(c_in)
    model = StemStagesBackbone(stem, stages, channels, num_classes, name=f"gsa_resnet{depth}")
    for m in model.modules():  # torchvision's init for the conv/BN layers; GSA's own tables untouched
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for stage in stages:
            for b in stage:
                nn.init.zeros_(b.bn3.weight)
    return model
