"""Loading a backbone's weights from a local checkpoint file (nothing is downloaded).

The torchvision ResNets keep torchvision's state-dict keys (:mod:`.tv_resnet`), so a
torchvision checkpoint — ``torch.save(torchvision.models.resnet50(...).state_dict(), PATH)``, or
the ``.pth`` files torchvision itself caches — loads as it is.  The other backbones take a
checkpoint with their own keys (e.g. one saved from ``build_model(name, ...)`` without attention).

Accepted files: a state dict, or a dict holding it under ``"state_dict"`` or ``"model"`` (the
usual training-script checkpoints); a ``"module."`` prefix on every key (DistributedDataParallel)
is removed.  Every backbone key must be present and no other key may be: the error names the
first few of each.  The classifier is the exception: an ``fc`` whose shape differs (another
class count, the same feature width) is skipped with a warning and keeps its initialisation.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from .base import Backbone

STATE_KEYS = ("state_dict", "model")


def _few(keys: list[str], n: int = 4) -> str:
    more = f" … ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in checkpoint ``path`` (raw, or under ``state_dict``/``model``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {str(path)!r} is not a file")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling / zip errors of a truncated, empty or foreign file
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"pretrained checkpoint {str(path)!r} is not a PyTorch checkpoint "
                         f"({type(e).__name__}{': ' + why[:200] if why else ''})") from None
    if isinstance(obj, Mapping):
        for k in STATE_KEYS:
            if isinstance(obj.get(k), Mapping):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"pretrained checkpoint {str(path)!r}: expected a state dict (or a dict with "
                         f"one under {' or '.join(STATE_KEYS)}), got {type(obj).__name__}")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_backbone_weights(net: Backbone, path: str | Path, load_fc: bool = True) -> None:
    """Load checkpoint ``path`` into ``net`` (a backbone without attention) in place.

    ``load_fc=False`` skips the classifier (model-level attention replaces it).  Raises a
    one-line ``ValueError`` on missing or unexpected keys or on a shape mismatch.
    """
    sd = read_state_dict(path)
    own = net.state_dict()
    skip_fc = not load_fc
    ckpt_fc, own_fc = sd.get("fc.weight"), own["fc.weight"]  # (classes, features)
    if (load_fc and ckpt_fc is not None and ckpt_fc.shape[0] != own_fc.shape[0]
            and ckpt_fc.shape[1:] == own_fc.shape[1:]):
        warnings.warn(f"pretrained {str(path)!r}: fc skipped (checkpoint has {ckpt_fc.shape[0]} classes, "
                      f"the model {own_fc.shape[0]}); it keeps its initialisation", stacklevel=3)
        skip_fc = True
    if skip_fc:
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        own = {k: v for k, v in own.items() if not k.startswith("fc.")}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise ValueError(f"pretrained {str(path)!r} does not fit backbone {net.name!r}: "
                         f"missing {_few(missing) or 'none'}; unexpected {_few(unexpected) or 'none'}")
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if wrong:
        raise ValueError(f"pretrained {str(path)!r} does not fit backbone {net.name!r}: shape "
                         f"(checkpoint vs model) differs for {_few(wrong, 2)}")
    net.load_state_dict(sd, strict=not skip_fc)
