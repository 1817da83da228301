"""Capturing attention maps for visualisation without changing the forward.

A block that has maps to show subclasses :class:`MapsMixin` and, in ``forward``, calls
``self._keep(name, tensor)`` for each map.  ``_keep`` stores a detached copy only while
capturing is switched on, so training pays nothing.  :func:`capture_maps` switches it on for
every such block of a model and collects the maps keyed by ``"<module path>/<map name>"``.

    with capture_maps(model) as maps:
        model(x)
    maps["stages.0.attn.2/keep_index"]   # e.g. the positions kept by SPA after block 2 of stage 1

Map conventions (documented per block): spatial maps are ``(N, H, W)`` or ``(N, heads, H, W)``;
affinities are ``(N, HW_query, HW_key)`` (use :func:`query_map` to cut one query's row back
to an image); scalars (a learned σ) are 0-d tensors.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn


class MapsMixin:
    """Mixin for blocks with capturable maps (call ``_keep`` in ``forward``)."""

    _capture: bool = False
    _maps: dict[str, torch.Tensor] | None = None

    def _keep(self, name: str, value: torch.Tensor) -> None:
        if self._capture:
            if self._maps is None:
                self._maps = {}
            self._maps[name] = value.detach().float().cpu()


@contextmanager
def capture_maps(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the maps of every :class:`MapsMixin` block in ``model`` during the ``with``."""
    out: dict[str, torch.Tensor] = {}
    holders = [(n, m) for n, m in model.named_modules() if isinstance(m, MapsMixin)]
    for _, m in holders:
        m._capture, m._maps = True, {}
    try:
        yield out
    finally:
        for n, m in holders:
            for k, v in (m._maps or {}).items():
                out[f"{n}/{k}" if n else k] = v
            m._capture, m._maps = False, None


def query_map(affinity: torch.Tensor, key_hw: tuple[int, int], query_index: int) -> torch.Tensor:
    """One query's attention over key positions as an image: ``(N, Q, Hk*Wk) -> (N, Hk, Wk)``."""
    n, _, k = affinity.shape
    hk, wk = key_hw
    if hk * wk != k:
        raise ValueError(f"key grid {key_hw} does not match affinity width {k}")
    return affinity[:, query_index, :].reshape(n, hk, wk)
