"""Backbone registry: name -> builder, listable, unknown names error with the valid list."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .base import Backbone, Stage, StemStagesBackbone, residual_blocks
from .cifar import CIFAR_DEPTHS, cifar_resnet
from .gsa_resnet import GSA_DEPTHS, gsa_resnet
from .pretrained import load_backbone_weights
from .tv_resnet import TV_DEPTHS, TVResNet, tv_resnet


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    build: Callable[..., Backbone]  # (num_classes, small_stem) -> Backbone
    num_stages: int
    default_input: int  # the resolution its papers use (for cost figures)
    default_classes: int  # CIFAR-10 / ImageNet-1k
    small_stem_option: bool


_BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(name: str, build: Callable[..., Backbone], num_stages: int,
                      default_input: int, small_stem_option: bool, default_classes: int = 1000) -> None:
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} registered twice")
    _BACKBONES[name] = BackboneEntry(name, build, num_stages, default_input, default_classes, small_stem_option)


for _d in CIFAR_DEPTHS:
    register_backbone(f"cifar_resnet{_d}", lambda num_classes, small_stem=False, d=_d: cifar_resnet(d, num_classes),
                      num_stages=3, default_input=32, small_stem_option=False, default_classes=10)
for _d in TV_DEPTHS:
    register_backbone(f"resnet{_d}", lambda num_classes, small_stem=False, d=_d: tv_resnet(d, num_classes, small_stem),
                      num_stages=4, default_input=224, small_stem_option=True)
for _d in GSA_DEPTHS:  # every bottleneck 3×3 conv replaced by GSA (arXiv:2010.03019)
    register_backbone(f"gsa_resnet{_d}", lambda num_classes, small_stem=False, d=_d: gsa_resnet(d, num_classes, small_stem),
                      num_stages=4, default_input=224, small_stem_option=True)


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def get_backbone(name: str) -> BackboneEntry:
    try:
        return _BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; valid: {', '.join(backbone_names())}") from None


def build_backbone(name: str, num_classes: int, small_stem: bool = False) -> Backbone:
    entry = get_backbone(name)
    if small_stem and not entry.small_stem_option:
        raise ValueError(f"backbone {name!r} has no small_stem option (its stem is already 3×3/1)")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return entry.build(num_classes, small_stem=small_stem)


__all__ = ["Backbone", "BackboneEntry", "Stage", "StemStagesBackbone", "TVResNet", "backbone_names",
           "build_backbone", "get_backbone", "load_backbone_weights", "register_backbone", "residual_blocks"]
