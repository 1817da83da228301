"""Helpers shared by the block tests: naive-loop building blocks and module round trips."""
from __future__ import annotations

import io
from typing import Callable

import torch

#: Non-default parameters worth covering, per stage block; {} = the defaults (the
#: dead-parameter and the finite-difference tests run every one).
BLOCK_CONFIGS = {
    "se": [{}, {"reduction": 4}, {"bias": False, "reduction": 4}],  # 1 hidden unit without bias: a dead ReLU
    "cbam": [{}, {"reduction": 4, "kernel_size": 3}, {"spatial": False}],
    "ssa": [{}],
    "pam": [{}, {"reduction": 4}],
    "cam": [{}],
    "danet": [{}, {"reduction": 2}],
    "nonlocal": [{}, {"subsample": False, "scale": True}, {"inter_channels": 5}],
    "spa": [{}, {"topk": 3, "topk_ratio": None}, {"topk_ratio": 1.0}, {"reduction": 4}],
    "gaussian": [{}, {"radius": 0.7, "dense": True}, {"bn": False, "reduction": 4}],
    "gsa": [{}, {"heads": 2, "rel_length": 3}, {"heads": 3, "positional_softmax": True, "out_proj": True},
            {"positional": False}, {"heads": 5}, {"heads": 1}],
    "spatial_weights": [{}, {"hidden": 7, "average_grad": True}],
}


def randomise_bn(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero random affine and running stats on ``m.bn`` (so the attention path shows), eval."""
    g = torch.Generator().manual_seed(seed)
    bn = m.bn
    with torch.no_grad():
        bn.weight.copy_(torch.randn(bn.weight.shape, generator=g, dtype=bn.weight.dtype))
        bn.bias.copy_(torch.randn(bn.bias.shape, generator=g, dtype=bn.bias.dtype))
        rm, rv = bn.running_mean, bn.running_var
        rm.copy_(torch.randn(rm.shape, generator=g, dtype=rm.dtype))
        rv.copy_(torch.rand(rv.shape, generator=g, dtype=rv.dtype) + 0.5)
    return m.eval()


def conv1x1(w, b, vec):
    """Apply a 1×1 conv (weight (O, I, 1, 1), bias (O,)) to a list of I floats."""
    return [sum(w[o][i][0][0] * vec[i] for i in range(len(vec))) + b[o] for o in range(len(w))]


def assert_eval_deterministic_and_roundtrip(m: torch.nn.Module, make: Callable[[], torch.nn.Module],
                                            x: torch.Tensor) -> None:
    """Two eval forwards are equal; a fresh module loading ``m``'s state_dict (strict,
    ``weights_only``) gives the same output."""
    m.eval()
    with torch.no_grad():
        y1, y2 = m(x), m(x)
    assert torch.equal(y1, y2)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = make()
    m2.load_state_dict(torch.load(buf, weights_only=True))
    m2.eval()
    with torch.no_grad():
        assert torch.equal(m2(x), y1)
