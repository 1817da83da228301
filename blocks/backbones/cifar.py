"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", arXiv:1512.03385,
Sec. 4.2): a 3×3 conv with 16 filters, three stages of n basic blocks each with 16, 32, 64
filters (depth 6n + 2), global average pooling and a 10/100-way fc.  Shortcuts are "option A"
(Sec. 4.2): identity, with stride-2 subsampling and zero-padded extra channels where the shape
changes, so shortcuts add no parameters — ResNet-20/56/110 have 0.27M/0.85M/1.7M parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Stage, StemStagesBackbone


class PadShortcut(nn.Module):
    """Option A: take every other pixel and zero-pad the new channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (N, Cin, ceil(H/s), ceil(W/s))
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))  # (N, Cout, ...)


class CifarBasicBlock(nn.Module):
    """3×3 → BN → ReLU → 3×3 → BN [→ attn], + shortcut, ReLU (``attn``: the ``gate`` slot)."""

    spatial_conv_name = "conv2"  # the conv replace_conv replaces

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()
        self.attn: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (N, C, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (N, C, H/s, W/s)
        if self.attn is not None:
            out = self.attn(out)
        return self.relu(out + self.shortcut(x))


CIFAR_DEPTHS = (20, 32, 44, 56, 110)


def cifar_resnet(depth: int, num_classes: int = 10) -> StemStagesBackbone:
    if depth not in CIFAR_DEPTHS:
        raise ValueError(f"CIFAR ResNet depth must be one of {CIFAR_DEPTHS}, got {depth}")
    n = (depth - 2) // 6
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    widths = (16, 32, 64)
    stages, cin = [], 16
    for i, w in enumerate(widths):
        blocks = []
        for b in range(n):
            blocks.append(CifarBasicBlock(cin, w, stride=2 if (i > 0 and b == 0) else 1))
            cin = w
        stages.append(Stage(blocks))
    net = StemStagesBackbone(stem, stages, list(widths), num_classes, name=f"cifar_resnet{depth}")
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net
