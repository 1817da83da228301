"""ResNet-18/34/50/101 as torchvision builds them (He et al., arXiv:1512.03385; torchvision's
v1.5: the stride of a downsampling bottleneck sits on its 3×3 conv — the papers' ResNet-50
"3.86 GFLOPs" is v1, with the stride on the first 1×1 conv, and those "FLOPs" are
multiply-adds), written here so that attention can sit beside the modules.

State-dict keys are torchvision's exactly (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``,
``layer1.0.downsample.0.weight``, ``fc.weight`` …), so a torchvision checkpoint loads with no
renaming (:func:`blocks.backbones.pretrained.load_backbone_weights`), also into a model with
attention: the ``gate`` slot is each block's ``attn`` attribute (after ``bn2``/``bn3``, before the
add), stage-level blocks sit in ``layer{i}.attn`` (see :mod:`.base`).  Layout, initialisation
(Kaiming-normal fan-out convs, BN γ = 1, β = 0, ``nn.Linear``'s default fc, no zero-init of the
last BN) and parameter counts are torchvision's; ``tests/test_pretrained.py`` checks the logits
of a loaded torchvision model.  torchvision is not imported.

``small_stem=True`` swaps the 7×7/2 conv + max-pool for a 3×3/1 conv (still ``conv1``) without
pooling — the usual CIFAR/Tiny-ImageNet adaptation; such a ``conv1`` does not take ImageNet
weights.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import Backbone, Stage

TV_DEPTHS = (18, 34, 50, 101)
LAYOUT = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """Projection shortcut (1×1 conv with the stride, BN) where the shape changes."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """3×3/s → BN → ReLU → 3×3 → BN [→ attn], + shortcut, ReLU."""

    expansion = 1
    spatial_conv_name = "conv2"

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        self.out_channels = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(in_channels, width, stride)
        self.attn: nn.Module | None = None  # the gate slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)  # (N, C, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))  # (N, C, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (N, C, H/s, W/s)
        if self.attn is not None:
            out = self.attn(out)
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    """1×1 → BN → ReLU → 3×3/s → BN → ReLU → 1×1 → BN [→ attn], + shortcut, ReLU (v1.5)."""

    expansion = 4
    spatial_conv_name = "conv2"

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.out_channels = out_channels
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)
        self.attn: nn.Module | None = None  # the gate slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)  # (N, 4w, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))  # (N, w, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # (N, w, H/s, W/s)
        out = self.bn3(self.conv3(out))  # (N, 4w, H/s, W/s)
        if self.attn is not None:
            out = self.attn(out)
        return self.relu(out + idt)


class TVResNet(Backbone):
    """torchvision's ResNet layout and keys; ``stages`` = (layer1, layer2, layer3, layer4)."""

    def __init__(self, depth: int, num_classes: int = 1000, small_stem: bool = False):
        super().__init__()
        if depth not in TV_DEPTHS:
            raise ValueError(f"torchvision ResNet depth must be one of {TV_DEPTHS}, got {depth}")
        kind, counts = LAYOUT[depth]
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        self.name, self.num_classes = f"resnet{depth}", num_classes
        if small_stem:
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(3, 2, 1)
        c_in, channels = 64, []
        for i, n in enumerate(counts):
            width = 64 * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(c_in, width, stride=2 if (i > 0 and j == 0) else 1))
                c_in = width * block.expansion
            self.add_module(f"layer{i + 1}", Stage(blocks))
            channels.append(c_in)
        self.stage_channels = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():  # torchvision's initialisation (fc keeps nn.Linear's)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)


def tv_resnet(depth: int, num_classes: int = 1000, small_stem: bool = False) -> TVResNet:
    return TVResNet(depth, num_classes, small_stem)
