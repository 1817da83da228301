"""Name -> constructor registry for attention blocks.

Two kinds of attention live here:

* ``stage`` blocks — ``nn.Module`` built as ``cls(channels, **params)`` with the contract
  ``(N, C, H, W) -> (N, C, H, W)`` for any H, W (odd, non-square, batch 1).  They are inserted
  into a backbone by :mod:`blocks.insert` in one of the slots ``gate``, ``after_block``,
  ``stage_end`` or ``replace_conv``.
* ``model`` attention — a change to the whole network (e.g. Learn-to-Pay-Attention's
  attended descriptors feeding the classifier).  They are built by ``blocks.build_model`` from
  the same attention spec; ``create`` refuses them because they have no single-tensor contract.

``create`` checks what it is given (channels a positive int) and installs an input check on
the block (:class:`InputCheck`): anything but ``(N, channels, H, W)`` is a one-line
``ValueError`` at the block's entry.

Every entry records its paper placement (``default_slot``, ``default_stages``) so a spec that
names only the block gets the paper's insertion.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Union, get_args, get_origin

import torch
import torch.nn as nn

SLOTS = ("gate", "after_block", "stage_end", "replace_conv")


@dataclass(frozen=True)
class BlockEntry:
    name: str
    cls: Callable[..., nn.Module]
    kind: str  # "stage" | "model"
    default_slot: str | None
    default_stages: tuple[int, ...] | None  # None = every stage of the backbone
    default_every: int = 1  # for after_block: after every n-th residual block
    paper: str = ""
    params: tuple[str, ...] = field(default=())  # accepted keyword parameters

    defaults: tuple[tuple[str, Any], ...] = field(default=())  # (param, default) pairs

    def param_defaults(self) -> dict[str, Any]:
        """Each accepted parameter's default (read once, at registration)."""
        return dict(self.defaults)


_REGISTRY: dict[str, BlockEntry] = {}


class UnknownBlockError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def _accepted_params(cls: Callable[..., nn.Module], kind: str) -> tuple[str, ...]:
    sig = inspect.signature(cls)
    skip = {"self", "channels"} if kind == "stage" else {"self", "backbone", "num_classes", "stages"}
    out = []
    for n, p in sig.parameters.items():
        if n in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out.append(n)
    return tuple(out)


def _defaults(cls: Callable[..., nn.Module], params: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    sig = inspect.signature(cls)
    return tuple((n, p.default) for n, p in sig.parameters.items()
                 if n in params and p.default is not inspect.Parameter.empty)


def register(
    name: str,
    *,
    kind: str = "stage",
    default_slot: str | None = "gate",
    default_stages: tuple[int, ...] | None = None,
    default_every: int = 1,
    paper: str = "",
):
    """Class decorator: ``@register("se", default_slot="gate", paper="arXiv:1709.01507")``."""
    if kind not in ("stage", "model"):
        raise ValueError(f"kind must be 'stage' or 'model', got {kind!r}")
    if kind == "stage" and default_slot not in SLOTS:
        raise ValueError(f"default_slot for {name!r} must be one of {SLOTS}, got {default_slot!r}")

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"attention {name!r} registered twice")
        _REGISTRY[name] = BlockEntry(
            name=name,
            cls=cls,
            kind=kind,
            default_slot=default_slot if kind == "stage" else None,
            default_stages=tuple(default_stages) if default_stages is not None else None,
            default_every=default_every,
            paper=paper,
            params=_accepted_params(cls, kind),
            defaults=_defaults(cls, _accepted_params(cls, kind)),
        )
        return cls

    return deco


def _ensure_loaded() -> None:
    # Importing the package registers every block file (blocks/__init__.py).
    import blocks  # noqa: F401 (imported for its side effect (registration) or to check that it imports)


def names(kind: str | None = None) -> list[str]:
    """Sorted names of registered attention; ``kind`` filters to ``"stage"`` or ``"model"``."""
    _ensure_loaded()
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def get(name: str) -> BlockEntry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownBlockError(
            f"unknown attention {name!r}; valid: {', '.join(names())}"
        ) from None


def check_params(name: str, params: dict[str, Any]) -> None:
    """Raise ``TypeError`` naming the unknown parameters and the valid ones."""
    entry = get(name)
    bad = sorted(set(params) - set(entry.params))
    if bad:
        valid = ", ".join(entry.params) or "(none)"
        raise TypeError(
            f"attention {name!r} got unknown parameter(s) {', '.join(bad)}; valid: {valid}"
        )


def validate(name: str, params: dict[str, Any]) -> None:
    """Check ``params`` for block ``name`` — names and values — before anything is built for real.

    Names are checked against the constructor; values by the block's own constructor checks
    (e.g. ``topk_ratio`` in (0, 1], ``radius`` > 0), run once on a small instance and cached.
    """
    check_params(name, params)
    wrong = param_type_problems(name, params)
    if wrong:
        raise ValueError("; ".join(f"{k}: {why}" for k, why in wrong))
    if get(name).kind != "stage":
        return
    try:
        key = repr(sorted(params.items()))
    except TypeError:
        key = None
    if key is not None and (name, key) in _VALID:
        return
    # A size far out of range (inter_channels 1e8) would take its memory even at 64 channels: such a
    # probe runs on the meta device (shapes only).  Not every probe does: PyTorch imports its
    # compiler for random fills on meta tensors, a second of every fresh trial process.
    with torch.device("meta") if has_large_value(params) else contextlib.nullcontext():
        create(name, 64, **params)  # raises ValueError/TypeError naming the bad value
    if key is not None:
        _VALID.add((name, key))


_VALID: set[tuple[str, str]] = set()

#: A block parameter above this (a size: channels, heads, a kernel) is checked on the meta device.
LARGE_VALUE = 4096


def has_large_value(params: dict[str, Any]) -> bool:
    """Whether a numeric parameter of ``params`` exceeds :data:`LARGE_VALUE`."""
    return any(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > LARGE_VALUE
               for v in params.values())


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether ``value`` has the type a block constructor declares (strict: a bool is not a
    number, a string is not a number, a float must be finite; ints are accepted for floats)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    for t in options:
        if t is type(None):
            ok = value is None
        elif t is bool:
            ok = isinstance(value, bool)
        elif t is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif t is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif t is str:
            ok = isinstance(value, str)
        else:  # a type this check does not know: the block's constructor decides
            ok = True
        if ok:
            return True
    return False


def _describe(annotation: Any) -> str:
    names = {type(None): "null", bool: "true/false", int: "an integer", float: "a finite number", str: "a string"}
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return " or ".join(names.get(t, getattr(t, "__name__", str(t))) for t in options)


def param_type_problems(kind: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """``(param, problem)`` for each block parameter whose value has the wrong type, checked
    against the block constructor's annotations before the constructor runs (whose own checks
    would fail with "'>' not supported between 'str' and 'int'").  Unknown kinds and unknown
    parameter names are left to ``blocks.resolve_spec``, which names them."""
    try:
        entry = get(kind)
    except KeyError:
        return []
    sig = inspect.signature(entry.cls, eval_str=True)
    out = []
    for name, value in params.items():
        p = sig.parameters.get(name)
        if p is not None and not _accepts(p.annotation, value):
            out.append((name, f"expected {_describe(p.annotation)}, got {value!r}"))
    return out


class InputCheck:
    """Forward pre-hook installed by :func:`create`: the input must be ``(N, channels, H, W)``.

    Without it a 3-D ``(C, H, W)`` tensor fails deep inside a block (or, for element-wise
    blocks, silently broadcasts to a wrong shape).  A class, not a closure, so a block with the
    hook still pickles.
    """

    def __init__(self, name: str, channels: int):
        self.name, self.channels = name, channels

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if not args:  # called with keywords only: nothing positional to check
            return
        x = args[0]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"attention {self.name!r}: expected a tensor (N, C={self.channels}, H, W), "
                            f"got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"attention {self.name!r}: expected input (N, C, H, W) with C={self.channels}, "
                             f"got shape {tuple(x.shape)}")


def create(name: str, channels: int, **params: Any) -> nn.Module:
    """Build the stage block ``name`` for ``channels`` input channels.

    The block gets an :class:`InputCheck` forward pre-hook: a wrong rank or channel count raises
    a one-line ``ValueError`` naming the block, the expected shape and the shape received.
    """
    entry = get(name)
    if entry.kind != "stage":
        raise TypeError(
            f"attention {name!r} is a model-level change, not a stage block; "
            f"use blocks.build_model(..., attention={{'kind': {name!r}, ...}})"
        )
    check_params(name, params)
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels <= 0:
        raise ValueError(f"attention {name!r}: channels must be a positive int, got {channels!r}")
    channels = int(channels)
    block = entry.cls(channels, **params)
    block.register_forward_pre_hook(InputCheck(name, channels))
    return block
