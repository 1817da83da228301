"""Parameters and compute of a backbone with attention.

Compute comes from torch's own per-operator FLOP formulas (those of
``torch.utils.flop_counter.FlopCounterMode``, applied by :class:`_MacCounter`), which count a
multiply-add as 2 FLOPs and cover convolutions and matrix products (not element-wise ops).
We report GMACs = FLOPs / 2 / 1e9, the unit the papers call "GFLOPs"
(torchvision ResNet-50 v1.5 at 224×224: 4.089 GMACs; v1, as in the papers: 3.858).

    python -m blocks.cost --backbone resnet50 --attention cbam --stages 1,2,3,4 --input 224 --json

Computation forms.  Some blocks compute the same function in one of several orders chosen per
call from the input's shape (``spa``: its value path is ``"folded"`` on large maps, ``"per_pixel"``
on small ones, whichever has fewer multiply-adds).  Such a block has a method
``form_for(h, w) -> str``; :func:`describe_forms` runs one forward and lists, for every such
module, its name in the model, its input size and the form it runs.  ``model_cost`` (and so the
``--json`` output) carries the same list under ``"forms"`` (empty when no block has forms).
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
from typing import Any

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .backbones import backbone_names, get_backbone, min_input
from .insert import build_model, resolve_spec
from .registry import get, names


#: The largest square input ``python -m blocks.cost`` builds (one image's activations at 2048 px
#: are about a gigabyte in a ResNet-50; larger is an allocation failure, not a cost).
MAX_INPUT = 2048
MAX_CLASSES = 100_000  # as pipeline.config.MAX_CLASSES (blocks imports nothing of pipeline)


class _MacCounter(TorchDispatchMode):
    """Multiply-adds of the operators run under it, by torch's per-operator FLOP formulas.

    The count is ``torch.utils.flop_counter.FlopCounterMode``'s (the same formulas, operators
    without one decomposed the same way; a test keeps the two equal for every block), without
    two things we do not use: the per-module table, and the ``torch._dynamo`` import on the first
    operator. torch wraps every dispatch mode's ``__torch_dispatch__`` in ``torch._disable_dynamo``,
    which imports ``torch._dynamo`` (with inductor and sympy: docs/grid.md) the first time it
    runs — in every fresh process that counts a model, i.e. every trial's first start in a Ray
    worker. The wrapper only matters when the mode runs inside a ``torch.compile``-d region;
    ours never does (an eager forward on one image), so this mode opts out of it.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in flop_registry and func is not torch.ops.prim.device.default:
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def macs_and_forms(model: nn.Module, input_size: tuple[int, int], channels: int = 3
                  ) -> tuple[int, list[dict[str, Any]]]:
    """One eval forward on a ``(1, channels, H, W)`` zero image: (multiply-adds, forms) —
    :func:`count_macs` and :func:`describe_forms` in a single pass."""
    forms: list[dict[str, Any]] = []
    block_name = {get(n).cls: n for n in names()}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            h, w = args[0].shape[-2:]
            forms.append({"module": name, "block": block_name.get(type(module), type(module).__name__),
                          "input": [int(h), int(w)], "form": module.form_for(int(h), int(w))})
        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules()
               if callable(getattr(m, "form_for", None))]
    was_training = model.training
    model.eval()
    x = torch.zeros(1, channels, *input_size)
    try:
        with torch.no_grad(), _MacCounter() as counter:
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return counter.flops // 2, forms


def count_macs(model: nn.Module, input_size: tuple[int, int], channels: int = 3) -> int:
    """Multiply-adds of one forward pass on a single ``(1, channels, H, W)`` image."""
    return macs_and_forms(model, input_size, channels)[0]


def describe_forms(model: nn.Module, input_size: tuple[int, int], channels: int = 3
                   ) -> list[dict[str, Any]]:
    """Which computation form each shape-dependent block runs at this input size.

    One eval forward on a zero image; a list of ``{"module": name in the model, "block":
    registry name (e.g. "spa"), "input": [H, W] of the block's input, "form": e.g. "folded"}`` in call order, one
    entry per call of a module with a ``form_for(h, w)`` method (module docstring).
    """
    return macs_and_forms(model, input_size, channels)[1]


def attention_params(model: nn.Module) -> int:
    return sum(count_params(m) for m in getattr(model, "attention_modules", []))


def model_cost(backbone: str, attention: Any = None, input_size: int | tuple[int, int] | None = None,
               num_classes: int | None = None, small_stem: bool = False) -> dict[str, Any]:
    """Total/attention parameters and GMACs, with the plain backbone's figures beside them.

    ``input_size`` and ``num_classes`` default to the backbone's papers' (32/10 for CIFAR
    ResNets, 224/1000 for ImageNet ResNets).
    """
    if num_classes is None:
        num_classes = get_backbone(backbone).default_classes
    if input_size is None:
        input_size = get_backbone(backbone).default_input
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    spec = resolve_spec(attention, backbone)
    stages = spec.stages if spec is not None else ()
    need = min_input(backbone, small_stem, stages)
    if min(hw) < need:
        why = f" with attention at stage {max(stages)}" if stages and need > min_input(backbone, small_stem) else ""
        raise ValueError(f"input {hw[0]}x{hw[1]} px is below the {need} px that {backbone}{why} needs "
                         "(one pixel after the last stage, 2x2 where a block attends)")
    model = build_model(backbone, num_classes, attention=attention, small_stem=small_stem)
    base = build_model(backbone, num_classes, small_stem=small_stem)
    (macs, forms), base_macs = macs_and_forms(model, hw), count_macs(base, hw)
    spec = model.attention_spec
    return {
        "backbone": backbone,
        "attention": spec.as_dict() if spec else None,
        "input": list(hw),
        "num_classes": num_classes,
        "params": count_params(model),
        "attention_params": attention_params(model),
        "backbone_params": count_params(base),
        "gmacs": macs / 1e9,
        "backbone_gmacs": base_macs / 1e9,
        "forms": forms,
    }


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


class _Parser(argparse.ArgumentParser):
    """A usage error is one line and exit 2; no abbreviated flags (``blocks`` imports nothing of
    ``pipeline``, so it does not share ``pipeline.errors.ArgumentParser``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m blocks.cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", required=True, help=f"one of: {', '.join(backbone_names())}")
    p.add_argument("--attention", default=None, help="block name (default: none)")
    p.add_argument("--stages", default=None, help="e.g. 1,2,3,4 (default: the paper's)")
    p.add_argument("--slot", default=None, help="gate | after_block | stage_end | replace_conv")
    p.add_argument("--every", type=int, default=None, help="after_block: every n-th residual block")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="block parameter")
    p.add_argument("--input", type=int, default=None, help="square input size (default: backbone's)")
    p.add_argument("--num-classes", type=int, default=None, help="default: 10 for CIFAR ResNets, else 1000")
    p.add_argument("--small-stem", action="store_true")
    p.add_argument("--json", action="store_true")
    typed = [t.split("=", 1)[0] for t in (sys.argv[1:] if argv is None else argv) if t.startswith("--")]
    flags = {s for a in p._actions for s in a.option_strings}
    unknown = next((f for f in typed if f not in flags), None)
    if unknown:  # argparse would first say "--backbone is required" for --backb
        close = difflib.get_close_matches(unknown, sorted(flags), n=1, cutoff=0.75)
        p.error(f"unknown flag {unknown}" + (f" (did you mean {close[0]}?)" if close else ""))
    twice = next((f for f in typed if f != "--param" and typed.count(f) > 1), None)
    if twice:  # argparse would keep the last value silently
        p.error(f"{twice} given twice: give it once")
    a = p.parse_args(argv)
    try:
        if a.input is not None and not 0 < a.input <= MAX_INPUT:
            raise ValueError(f"--input must be 1..{MAX_INPUT} px, got {a.input}")
        if a.num_classes is not None and not 0 < a.num_classes <= MAX_CLASSES:
            raise ValueError(f"--num-classes must be >= 1 and at most {MAX_CLASSES:,}, got {a.num_classes:,}")
        if a.every is not None and a.every < 1:
            raise ValueError(f"--every must be >= 1, got {a.every}")
        for flag, value in (("--attention", a.attention), ("--stages", a.stages), ("--slot", a.slot)):
            if value is not None and not value.strip():  # "" is not "none" or "the default"
                raise ValueError(f"{flag} is {'empty' if not value else 'blank'}: leave the flag out for the default")
        attention = None
        if a.attention and a.attention != "none":
            attention = {"kind": a.attention, "stages": a.stages, "slot": a.slot, "every": a.every}
            for kv in a.param:
                k, eq, v = kv.partition("=")
                k = k.strip()
                if not eq or not k:
                    raise ValueError(f"--param expects KEY=VALUE, got {kv!r}")
                if k in ("kind", "stages", "slot", "every"):
                    raise ValueError(f"--param {k}: give it as --{'attention' if k == 'kind' else k}")
                if k in attention:
                    raise ValueError(f"--param {k} given twice")
                attention[k] = _parse_value(v)
        elif a.stages or a.slot or a.param or a.every:
            raise ValueError("--stages/--slot/--every/--param need --attention")
        out = model_cost(a.backbone, attention, a.input, a.num_classes, a.small_stem)
    except (ValueError, TypeError, KeyError) as e:
        print(f"error: {e if not isinstance(e, KeyError) else e.args[0]}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(out))
    else:
        att = out["attention"]
        print(f"backbone          {out['backbone']} @ {out['input'][0]}x{out['input'][1]}")
        print(f"attention         {json.dumps(att) if att else 'none'}")
        print(f"params            {out['params']:,}  (backbone {out['backbone_params']:,}, attention {out['attention_params']:,})")
        print(f"GMACs             {out['gmacs']:.4f}  (backbone {out['backbone_gmacs']:.4f}; 1 MAC = 2 FLOPs)")
        for f in out["forms"]:
            print(f"form              {f['module']} ({f['block']}, {f['input'][0]}x{f['input'][1]}): {f['form']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
