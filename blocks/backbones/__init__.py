"""Backbone registry: name -> builder, listable, unknown names error with the valid list."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .base import Backbone, Stage, StemStagesBackbone, residual_blocks
from .cifar import CIFAR_DEPTHS, cifar_resnet
from .gsa_resnet import GSA_DEPTHS, gsa_resnet
from .pretrained import load_backbone_weights
from .tv_resnet import LAYOUT, TV_DEPTHS, TVResNet, tv_resnet


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    build: Callable[..., Backbone]  # (num_classes, small_stem) -> Backbone
    num_stages: int
    default_input: int  # the resolution its papers use (for cost figures)
    default_classes: int  # CIFAR-10 / ImageNet-1k
    small_stem_option: bool
    stage_strides: tuple[int, ...] = ()  # how far each stage's output is downsampled from the input
    small_stem_strides: tuple[int, ...] = ()  # the same with the small (3×3/1) stem
    stage_blocks: tuple[int, ...] = ()  # residual blocks per stage

    def strides(self, small_stem: bool = False) -> tuple[int, ...]:
        return self.small_stem_strides if small_stem and self.small_stem_option else self.stage_strides


_BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(name: str, build: Callable[..., Backbone], num_stages: int,
                      default_input: int, small_stem_option: bool, default_classes: int = 1000,
                      stage_strides: tuple[int, ...] = (), small_stem_strides: tuple[int, ...] = (), *,
                      stage_blocks: tuple[int, ...]) -> None:
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} registered twice")
    if stage_strides and len(stage_strides) != num_stages:
        raise ValueError(f"backbone {name!r}: {len(stage_strides)} stage strides for {num_stages} stages")
    if len(stage_blocks) != num_stages:  # what a spec's `every` is checked against
        raise ValueError(f"backbone {name!r}: {len(stage_blocks)} block counts for {num_stages} stages")
    _BACKBONES[name] = BackboneEntry(name, build, num_stages, default_input, default_classes, small_stem_option,
                                     tuple(stage_strides), tuple(small_stem_strides), tuple(stage_blocks))


# downsampling after each stage: CIFAR ResNets have a 3×3/1 stem; the ImageNet ones a 7×7/2 conv
# and a 3×3/2 max-pool (4×), or with ``small_stem`` a 3×3/1 conv and no pool
_CIFAR_STRIDES = (1, 2, 4)
_IMAGENET_STRIDES, _SMALL_STEM_STRIDES = (4, 8, 16, 32), (1, 2, 4, 8)


for _d in CIFAR_DEPTHS:
    register_backbone(f"cifar_resnet{_d}", lambda num_classes, small_stem=False, d=_d: cifar_resnet(d, num_classes),
                      num_stages=3, default_input=32, small_stem_option=False, default_classes=10,
                      stage_strides=_CIFAR_STRIDES, stage_blocks=((_d - 2) // 6,) * 3)
for _d in TV_DEPTHS:
    register_backbone(f"resnet{_d}", lambda num_classes, small_stem=False, d=_d: tv_resnet(d, num_classes, small_stem),
                      num_stages=4, default_input=224, small_stem_option=True,
                      stage_strides=_IMAGENET_STRIDES, small_stem_strides=_SMALL_STEM_STRIDES,
                      stage_blocks=LAYOUT[_d][1])
for _d in GSA_DEPTHS:  # every bottleneck 3×3 conv replaced by GSA (arXiv:2010.03019)
    register_backbone(f"gsa_resnet{_d}", lambda num_classes, small_stem=False, d=_d: gsa_resnet(d, num_classes, small_stem),
                      num_stages=4, default_input=224, small_stem_option=True,
                      stage_strides=_IMAGENET_STRIDES, small_stem_strides=_SMALL_STEM_STRIDES,
                      stage_blocks=GSA_DEPTHS[_d])


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def get_backbone(name: str) -> BackboneEntry:
    try:
        return _BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; valid: {', '.join(backbone_names())}") from None


def min_input(name: str, small_stem: bool = False, attention_stages: Sequence[int] = ()) -> int:
    """The smallest square input (px) ``name`` runs on: one pixel left after its last stage, and
    at least 2×2 positions at every stage in ``attention_stages`` (attention over one position
    is a constant: non-local's sub-sampling pool fails on it, and training on it gives NaN)."""
    strides = get_backbone(name).strides(small_stem)
    if not strides:
        return 1
    need = strides[-1]
    for s in attention_stages:
        need = max(need, 2 * strides[s - 1])
    return need


def build_backbone(name: str, num_classes: int, small_stem: bool = False) -> Backbone:
    entry = get_backbone(name)
    if small_stem and not entry.small_stem_option:
        raise ValueError(f"backbone {name!r} has no small_stem option (its stem is already 3×3/1)")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return entry.build(num_classes, small_stem=small_stem)


__all__ = ["Backbone", "BackboneEntry", "Stage", "StemStagesBackbone", "TVResNet", "backbone_names",
           "build_backbone", "get_backbone", "load_backbone_weights", "min_input", "register_backbone",
           "residual_blocks"]
