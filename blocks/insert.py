"""Applying an attention spec to a backbone; ``build_model``.

An attention spec names a block and where it goes (timm's byobnet-style attention slots):

* ``gate``        — on the residual branch, after its last BN, before the identity add
                    (SE/CBAM/SSA placement, paper Fig. 3 of arXiv:1709.01507): the residual
                    block's ``attn`` attribute;
* ``after_block`` — a stage block after every ``every``-th residual block of the stage
                    (the official non-local placement: every other block of res3/res4);
* ``stage_end``   — one stage block after the last residual block of the stage;
* ``replace_conv``— the block replaces the residual branch's 3×3 conv (GSA, SASA); where that
                    conv had stride 2 the block is followed by a 2×2 average pool.  The
                    branch's BN follows the block directly, so in training any per-channel
                    constant the block adds (an output bias: PAM's value bias, the output BN β
                    of non-local/SPA/Gaussian) is cancelled there, as a conv bias before BN is.

``after_block``/``stage_end`` blocks are held in the stage's ``attn`` ModuleDict (keyed by the
index of the residual block they follow), so the backbone's own state-dict keys never change —
except under ``replace_conv``, where the replaced conv is gone (:mod:`blocks.backbones.base`).

``build_model(..., pretrained=PATH)`` loads the backbone's weights from a local checkpoint
before the attention is inserted, so the attention stays at its initialisation
(:func:`blocks.backbones.pretrained.load_backbone_weights`).

Specs are plain mappings (YAML/JSON friendly).  Every key that is not ``kind``, ``stages``,
``slot`` or ``every`` is a parameter of the block and is checked against its constructor::

    {"kind": "spa", "stages": [1, 2], "topk_ratio": 0.25}
    {"kind": "nonlocal", "slot": "after_block", "stages": [3], "every": 2}
    "cbam"                       # the paper's placement and defaults
    None / "none"                # the plain backbone

Stages are numbered from 1; negative numbers count from the last stage (-1 = last).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from . import registry
from .backbones import Backbone, build_backbone, get_backbone, residual_blocks
from .backbones.pretrained import load_backbone_weights

SPEC_KEYS = ("kind", "stages", "slot", "every")
NONE_NAMES = (None, "none", "baseline")


@dataclass(frozen=True)
class AttentionSpec:
    """A resolved attention spec: concrete stages, slot and parameters for one backbone."""

    kind: str
    stages: tuple[int, ...]
    slot: str | None  # None for model-level attention
    every: int = 1
    params: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "stages": list(self.stages), "slot": self.slot}
        if self.slot == "after_block":
            d["every"] = self.every
        d.update(self.params)
        return d


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, str):  # "1,2,3" from a command line
        try:  # every item an integer: "1,,2" is a slip, not (1, 2)
            return tuple(int(v) for v in value.split(","))
        except ValueError:
            raise ValueError(f"{what}: expected integers like '1,2,3', got {value!r}") from None
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise ValueError(f"{what}: expected a list of stage numbers, got {value!r}")


def resolve_spec(attention: Any, backbone: str | int) -> AttentionSpec | None:
    """Validate ``attention`` for ``backbone`` (a name, or a stage count) and fill the defaults.

    Raises ``ValueError``/``TypeError``/``KeyError`` with one line naming what is wrong.
    """
    if isinstance(attention, AttentionSpec):
        attention = attention.as_dict()
    if attention in NONE_NAMES:
        return None
    if isinstance(attention, str):
        attention = {"kind": attention}
    if not isinstance(attention, Mapping):
        raise TypeError(f"attention spec must be a name or a mapping, got {type(attention).__name__}")
    if "kind" not in attention:
        raise ValueError("attention spec has no 'kind'")
    kind = attention["kind"]
    if kind in NONE_NAMES:
        extra = sorted(set(attention) - {"kind"})
        if extra:
            raise ValueError(f"attention 'none' takes no other keys, got {', '.join(extra)}")
        return None
    entry = registry.get(kind)
    params = {k: v for k, v in attention.items() if k not in SPEC_KEYS}
    if isinstance(attention.get("params"), Mapping):  # also accept {"params": {...}}
        params.pop("params")
        params.update(attention["params"])
    try:
        registry.validate(kind, params)
    except ValueError as e:
        raise ValueError(f"attention {kind!r}: {e}") from None

    num_stages = backbone if isinstance(backbone, int) else get_backbone(backbone).num_stages
    where = f"backbone {backbone!r}" if isinstance(backbone, str) else f"a {num_stages}-stage backbone"

    raw_stages = attention.get("stages")
    if raw_stages is None:
        stages = entry.default_stages if entry.default_stages is not None else tuple(range(1, num_stages + 1))
    else:
        stages = _as_int_tuple(raw_stages, f"attention {kind!r} stages")
        if not stages:
            raise ValueError(f"attention {kind!r}: stages is empty")
    resolved = []
    for s in stages:
        r = s + num_stages + 1 if s < 0 else s
        if not 1 <= r <= num_stages:
            raise ValueError(f"attention {kind!r}: stage {s} does not exist in {where} (stages 1..{num_stages})")
        resolved.append(r)
    if len(set(resolved)) != len(resolved):
        negative = [f"{s} is stage {r}" for s, r in zip(stages, resolved) if s < 0]
        counted = f" ({', '.join(negative)} of {num_stages}: negative numbers count from the last stage)" \
            if negative else ""
        raise ValueError(f"attention {kind!r}: stage listed twice in {list(stages)}{counted}")
    stages = tuple(sorted(resolved))

    slot, every = None, 1
    if entry.kind == "stage":
        slot = attention.get("slot") or entry.default_slot
        if slot not in registry.SLOTS:
            raise ValueError(f"attention {kind!r}: unknown slot {slot!r}; valid: {', '.join(registry.SLOTS)}")
        if "every" in attention and attention["every"] is not None:
            if slot != "after_block":
                raise ValueError(f"attention {kind!r}: 'every' applies only to slot after_block, not {slot}")
            every = attention["every"]
            if not isinstance(every, int) or isinstance(every, bool) or every < 1:
                raise ValueError(f"attention {kind!r}: every must be an int >= 1, got {every!r}")
        elif slot == "after_block":
            every = entry.default_every
        counts = get_backbone(backbone).stage_blocks if isinstance(backbone, str) else None  # None: a stage count
        if slot == "after_block" and counts and all(every > counts[s - 1] for s in stages):
            per = ", ".join(f"stage {s}: {counts[s - 1]}" for s in stages)  # the model would be the plain backbone
            raise ValueError(f"attention {kind!r}: every {every} inserts no block in {backbone} (residual "
                             f"blocks per stage: {per})")
    elif attention.get("slot") is not None or attention.get("every") is not None:
        raise ValueError(f"attention {kind!r} is model-level: it takes no slot/every")
    return AttentionSpec(kind=kind, stages=stages, slot=slot, every=every, params=dict(params))


def insert_attention(net: Backbone, spec: AttentionSpec) -> list[nn.Module]:
    """Insert the stage block of ``spec`` into ``net`` in place; return the inserted modules."""
    inserted: list[nn.Module] = []

    def make(channels: int) -> nn.Module:
        m = registry.create(spec.kind, channels, **spec.params)
        inserted.append(m)
        return m

    for s in spec.stages:
        stage = net.stages[s - 1]
        blocks = residual_blocks(stage)
        if spec.slot == "gate":
            for b in blocks:
                if b.attn is not None:
                    raise ValueError(f"gate: a block of stage {s} already has attention {type(b.attn).__name__}")
                b.attn = make(b.out_channels)
        elif spec.slot == "replace_conv":
            for b in blocks:
                conv = getattr(b, b.spatial_conv_name)
                if conv.in_channels != conv.out_channels:
                    raise ValueError(f"replace_conv: {b.spatial_conv_name} of stage {s} maps "
                                     f"{conv.in_channels}->{conv.out_channels} channels; blocks keep C")
                attn = make(conv.out_channels)
                if conv.stride != (1, 1):
                    attn = nn.Sequential(attn, nn.AvgPool2d(conv.stride, ceil_mode=True))
                setattr(b, b.spatial_conv_name, attn)
        else:  # after_block / stage_end: held in stage.attn, keyed by the block they follow
            every = len(blocks) if spec.slot == "stage_end" else spec.every
            for i in range(len(blocks)):
                if (i + 1) % every == 0:
                    if str(i) in stage.attn:
                        raise ValueError(f"{spec.slot}: stage {s} already has attention after block {i}")
                    stage.attn[str(i)] = make(net.stage_channels[s - 1])
    return inserted


#: A model of more parameters than this is refused before it is built: 4 GB of float32 weights,
#: 16× ResNet-152's 60 M.  Only a block parameter far out of range (``inter_channels: 1e8``,
#: ``kernel_size: 100001``, a typo) gets there, and building it would fill the memory first.
MAX_PARAMS = 10**9


def size_problem(backbone: str, num_classes: int, attention: Any = None, small_stem: bool = False) -> str | None:
    """Why the model cannot be built (more than :data:`MAX_PARAMS` parameters), as one line naming
    the attention and its parameters; None when it can.  Where a block parameter exceeds
    :data:`blocks.registry.LARGE_VALUE`, the model is counted on PyTorch's meta device (shapes
    only, no memory) once per distinct model; below it no block comes near the limit."""
    spec = resolve_spec(attention, backbone)
    if spec is None or not registry.has_large_value(dict(spec.params)):
        return None  # every size at most LARGE_VALUE: far below the limit, nothing to count
    key = json.dumps(spec.as_dict(), sort_keys=True, default=str)
    return _size_problem(backbone, int(num_classes), key, bool(small_stem))


@functools.lru_cache(maxsize=1024)
def _size_problem(backbone: str, num_classes: int, attention: str | None, small_stem: bool) -> str | None:
    with torch.device("meta"):
        model = _build(backbone, num_classes, json.loads(attention) if attention else None, small_stem, None)
    count = sum(p.numel() for p in model.parameters())
    if count <= MAX_PARAMS:
        return None
    spec = model.attention_spec
    what = ", ".join(f"{k}={v}" for k, v in spec.params.items()) if spec is not None else ""
    block = f"attention {spec.kind}" + (f" ({what})" if what else "") if spec is not None else "the model"
    return (f"{backbone} with {block} would have {count:,} parameters, over the limit of {MAX_PARAMS:,}: "
            f"a block parameter is far too large")


def build_model(backbone: str, num_classes: int, attention: Any = None, small_stem: bool = False,
                pretrained: str | Path | None = None) -> nn.Module:
    """Build ``backbone`` with ``attention`` (a spec, see the module docstring) applied.

    ``pretrained``: a local checkpoint of the backbone (for the torchvision ResNets a torchvision
    state dict; also ``{"state_dict": ...}`` or ``{"model": ...}``), loaded before the attention
    is inserted; nothing is downloaded.  A classifier ``fc`` of another class count is skipped
    with a warning (and always skipped for model-level attention, which has its own classifier).

    The returned model carries ``attention_spec`` (the resolved :class:`AttentionSpec` or None)
    and ``attention_modules`` (the inserted blocks) for logging and cost reports.  A model over
    :data:`MAX_PARAMS` parameters is a ``ValueError`` (:func:`size_problem`), before any memory
    is taken.
    """
    problem = size_problem(backbone, num_classes, attention, small_stem)
    if problem:
        raise ValueError(problem)
    return _build(backbone, num_classes, attention, small_stem, pretrained)


def _build(backbone: str, num_classes: int, attention: Any, small_stem: bool, pretrained: str | Path | None) -> nn.Module:
    spec = resolve_spec(attention, backbone)
    net = build_backbone(backbone, num_classes, small_stem=small_stem)
    if pretrained is not None:
        model_level = spec is not None and registry.get(spec.kind).kind == "model"
        load_backbone_weights(net, pretrained, load_fc=not model_level)
    if spec is None:
        net.attention_spec, net.attention_modules = None, []
        return net
    entry = registry.get(spec.kind)
    if entry.kind == "stage":
        modules = insert_attention(net, spec)
        model: nn.Module = net
    else:
        model = entry.cls(net, num_classes=num_classes, stages=spec.stages, **spec.params)
        modules = list(model.attention_modules)
    model.attention_spec = spec
    # A plain list attribute: these modules are already registered as children where they sit.
    object.__setattr__(model, "attention_modules", modules)
    return model
