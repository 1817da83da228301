"""GSA (arXiv:2010.03019): the module against a loop over the paper's equations, its axes on
non-square maps, gradients, maps, and the GSA-ResNet backbone."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import blocks
from blocks.backbones.gsa_resnet import gsa_resnet
from blocks.gsa import GSA, positional_query_map
from blocks.maps import capture_maps


def _module(channels=8, heads=2, seed=0, **kw) -> GSA:
    """A float64 GSA in eval mode with random BN running stats / affine and random weights."""
    torch.manual_seed(seed)
    m = GSA(channels, heads=heads, **kw).double().eval()
    if m.positional:
        bn = m.norm
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return m


def _naive(m: GSA, x: torch.Tensor) -> torch.Tensor:
    """The paper's equations with explicit loops over heads, query pixels i and positions j."""
    n_, _, H, W = x.shape
    heads, dk, dv = m.heads, m.key_dim, m.value_dim
    conv1x1 = lambda conv: torch.einsum("oc,nchw->nohw", conv.weight[:, :, 0, 0], x)  # noqa: E731 (a one-line helper local to this function)
    q, k, v = conv1x1(m.query), conv1x1(m.key), conv1x1(m.value)  # (N, heads·d, H, W)
    if m.rel_length is not None:
        half = (m.rel_length - 1) // 2
    else:
        half = m.max_len - 1
    out = torch.zeros(n_, heads * dv, H, W, dtype=x.dtype)
    for n in range(n_):
        for h in range(heads):
            qh, kh, vh = q[n, h * dk:(h + 1) * dk], k[n, h * dk:(h + 1) * dk], v[n, h * dv:(h + 1) * dv]
            pix = [(a, b) for a in range(H) for b in range(W)]
            # Content: k̂[d, j] = exp(k[d, j]) / Σ_j' exp(k[d, j']);  f_i = Σ_j (q_i · k̂_j) v_j
            denom = torch.stack([kh[:, a, b].exp() for a, b in pix]).sum(0)  # (dk,)
            for a, b in pix:
                acc = torch.zeros(dv, dtype=x.dtype)
                for a2, b2 in pix:
                    acc = acc + (qh[:, a, b] * kh[:, a2, b2].exp() / denom).sum() * vh[:, a2, b2]
                out[n, h * dv:(h + 1) * dv, a, b] += acc
            if not m.positional:
                continue
            # Column step along H: g_{a,b} = Σ_{a'} w(a,b,a') v_{a',b},  w = q_{a,b}·r^col_{a'-a}
            g = torch.zeros(dv, H, W, dtype=x.dtype)
            for a, b in pix:
                ws = {a2: qh[:, a, b] @ m.rel_col[a2 - a + half] for a2 in range(H) if abs(a2 - a) <= half}
                if m.positional_softmax:
                    z = sum(math.exp(float(w)) for w in ws.values())
                    ws = {key: w.exp() / z for key, w in ws.items()}
                for a2, w in ws.items():
                    g[:, a, b] += w * vh[:, a2, b]
            # BN (eval): per value channel of this head
            sl = slice(h * dv, (h + 1) * dv)
            bn = m.norm
            g = (g - bn.running_mean[sl, None, None]) / (bn.running_var[sl, None, None] + bn.eps).sqrt()
            g = g * bn.weight[sl, None, None] + bn.bias[sl, None, None]
            # Row step along W: f_{a,b} = Σ_{b'} (q_{a,b}·r^row_{b'-b}) g_{a,b'}
            for a, b in pix:
                ws = {b2: qh[:, a, b] @ m.rel_row[b2 - b + half] for b2 in range(W) if abs(b2 - b) <= half}
                if m.positional_softmax:
                    z = sum(math.exp(float(w)) for w in ws.values())
                    ws = {key: w.exp() / z for key, w in ws.items()}
                for b2, w in ws.items():
                    out[n, sl, a, b] += w * g[:, a, b2]
    if m.out is not None:
        out = torch.einsum("oc,nchw->nohw", m.out.weight[:, :, 0, 0], out) + m.out.bias[None, :, None, None]
    return out


CASES = [
    ((5, 3), dict(max_len=8)),
    ((3, 7), dict(max_len=7, key_dim=3, value_dim=4)),  # key width ≠ value width
    ((1, 4), dict(max_len=4)),
    ((4, 1), dict(max_len=5)),
    ((5, 3), dict(rel_length=3)),  # a finite neighbourhood: |offset| ≤ 1
    ((3, 7), dict(rel_length=5, value_dim=3, positional_softmax=True)),  # 6 ≠ 8 → output conv
    ((3, 5), dict(positional=False)),
]


@pytest.mark.parametrize("hw,kw", CASES, ids=[f"{h}x{w}-{'-'.join(kw)}" for (h, w), kw in CASES])
def test_matches_loop_over_equations(hw, kw):
    m = _module(**kw)
    x = torch.randn(2, 8, *hw, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        ref = _naive(m, x)
    assert y.shape == (2, 8, *hw)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_loop_reference_catches_swapped_axes():
    """Sanity of the reference: with the two tables swapped the module no longer matches it."""
    m = _module(max_len=7)
    x = torch.randn(2, 8, 3, 7, dtype=torch.float64)
    with torch.no_grad():
        ref = _naive(m, x)
        m.rel_col.data, m.rel_row.data = m.rel_row.data.clone(), m.rel_col.data.clone()
        assert (m(x) - ref).abs().max() > 1e-3


def _shift_module(col_offset: int, row_offset: int) -> GSA:
    """One head, q = input channel 0, v = x, BN = identity, one-hot relative tables."""
    m = GSA(4, heads=1, key_dim=1, value_dim=4, max_len=8).double().eval()
    with torch.no_grad():
        m.query.weight.zero_()
        m.query.weight[0, 0] = 1.0
        m.key.weight.zero_()
        m.value.weight.copy_(torch.eye(4, dtype=torch.float64)[:, :, None, None])
        m.norm.running_var.fill_(1.0 - m.norm.eps)
        m.rel_col.zero_()
        m.rel_col[m.max_offset + col_offset] = 1.0
        m.rel_row.zero_()
        m.rel_row[m.max_offset + row_offset] = 1.0
    return m


def test_axes_pure_shift_on_non_square_map():
    """Column attention with r^col = δ(Δy=+1) shifts the map along H; row attention with
    r^row = δ(Δx=+2) shifts it along W — on a 3×7 map, where a transposed axis cannot pass."""
    x = torch.randn(1, 4, 3, 7, dtype=torch.float64)
    x[:, 0] = 1.0  # q ≡ 1, so the positional weights are the table entries themselves
    m = _shift_module(col_offset=1, row_offset=0)
    with torch.no_grad():
        q, k, v = m.qkv(x)
        p = m.positional_branch(q, v)[:, 0]  # (1, 4, 3, 7)
    expect = torch.zeros_like(x)
    expect[:, :, :-1, :] = x[:, :, 1:, :]  # out[a, b] = x[a+1, b]
    torch.testing.assert_close(p, expect)

    m = _shift_module(col_offset=0, row_offset=2)
    with torch.no_grad():
        q, k, v = m.qkv(x)
        p = m.positional_branch(q, v)[:, 0]
    expect = torch.zeros_like(x)
    expect[:, :, :, :-2] = x[:, :, :, 2:]  # out[a, b] = x[a, b+2]
    torch.testing.assert_close(p, expect)


def test_axis_longer_than_max_len_is_a_clear_error():
    m = GSA(8, heads=2, max_len=4).eval()
    with pytest.raises(ValueError, match="height 5 exceeds max_len=4"):
        m(torch.randn(1, 8, 5, 3))
    with pytest.raises(ValueError, match="width 6 exceeds max_len=4"):
        m(torch.randn(1, 8, 3, 6))
    m = GSA(8, heads=2, rel_length=3).eval()  # a finite neighbourhood fits any size
    assert m(torch.randn(1, 8, 9, 2)).shape == (1, 8, 9, 2)
    with pytest.raises(ValueError, match="odd"):
        GSA(8, rel_length=4)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    m = GSA(8, heads=2, value_dim=3, max_len=5).train()  # value_dim 3 → output conv too
    x = torch.randn(2, 8, 5, 3)
    y = m(x)
    (y * torch.randn_like(y)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_maps_shapes_and_query_map():
    m = _module(max_len=7)
    with torch.no_grad():
        m.norm.running_mean.zero_()
        m.norm.running_var.fill_(1.0 - m.norm.eps)
        m.norm.weight.fill_(1.0)
        m.norm.bias.zero_()
    x = torch.randn(2, 8, 3, 7, dtype=torch.float64)
    with capture_maps(m) as maps, torch.no_grad():
        m(x)
    assert maps["key_softmax"].shape == (2, 2, 3, 7)
    torch.testing.assert_close(maps["key_softmax"].sum((2, 3)), torch.ones(2, 2))
    col, row = maps["column_attention"].double(), maps["row_attention"].double()
    assert col.shape == (2, 2, 3, 7, 3) and row.shape == (2, 2, 3, 7, 7)
    # With BN = identity the composed map reproduces the positional output at a query pixel.
    with torch.no_grad():
        q, k, v = m.qkv(x)
        p = m.positional_branch(q, v)  # (N, heads, dv, H, W)
    a, b = 2, 5
    w = positional_query_map(col, row, a, b)  # (N, heads, H, W)
    assert w.shape == (2, 2, 3, 7)
    torch.testing.assert_close(torch.einsum("nhij,nheij->nhe", w, v), p[..., a, b], rtol=1e-5, atol=1e-5)
    assert m._maps is None  # capture switched off again


@pytest.mark.parametrize("shape", [(1, 16, 1, 1), (1, 16, 1, 5), (1, 16, 7, 1), (3, 16, 5, 9)])
def test_registry_contract(shape):
    m = blocks.create("gsa", 16, heads=4).eval()
    assert blocks.get("gsa").default_slot == "replace_conv" and blocks.get("gsa").default_stages is None
    with torch.no_grad():
        assert m(torch.randn(shape)).shape == shape
    assert blocks.create("gsa", 6).out is not None  # 8 heads do not divide 6: output conv


def test_gsa_resnet_forward_and_params():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 40)
    net = gsa_resnet(50, num_classes=10, small_stem=True).eval()
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 10) and torch.isfinite(y).all()
    # Without the zero-init the residual branches are live; train-mode BN keeps them finite.
    net = gsa_resnet(50, num_classes=10, small_stem=True, zero_init_residual=False).train()
    y = net(x)
    assert y.shape == (1, 10) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    gsas = [m for m in net.modules() if isinstance(m, GSA)]
    assert len(gsas) == 16
    pools = [m for m in net.modules() if isinstance(m, nn.AvgPool2d)]
    assert len(pools) == 3  # GSA + 2×2 average pool in the three stride-2 bottlenecks
    # gsa_resnet(50): 18,139,640 (paper: 18.1M, unverified); here a 10-way fc and the 3×3 stem.
    expect = 18_139_640 - (2048 * 1000 + 1000) + (2048 * 10 + 10) - 64 * 3 * 7 * 7 + 64 * 3 * 3 * 3
    assert sum(p.numel() for p in net.parameters()) == expect


FACTORED = [
    ((5, 7), dict(max_len=8)),  # d_k = d_v = 2 (8 channels, 4 heads)
    ((6, 3), dict(rel_length=3)),  # a finite neighbourhood
    ((3, 5), dict(max_len=5, key_dim=1, value_dim=2)),  # 2 + 1 > 2: factored
    ((1, 4), dict(max_len=4)),
]


@pytest.mark.parametrize("hw,kw", FACTORED, ids=[f"{h}x{w}-{'-'.join(kw)}" for (h, w), kw in FACTORED])
def test_factored_positional_branch_matches_the_equations(hw, kw, monkeypatch):
    """Narrow heads (d_k·d_v ≤ d_k + d_v) take the factored positional branch, which never builds
    the weight maps: the block still equals the loop over the equations, and its gradients equal
    the map form's (float64, train mode, non-square odd maps)."""
    m = _module(heads=4, **kw)
    assert m.key_dim * m.value_dim <= m.key_dim + m.value_dim
    x = torch.randn(2, 8, *hw, dtype=torch.float64)
    with torch.no_grad():
        ref = _naive(m, x)
    calls = []
    monkeypatch.setattr(GSA, "_positional_maps", lambda self, q, v: calls.append(1) or 1 / 0)
    with torch.no_grad():
        y = m(x)
    assert not calls
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    monkeypatch.undo()

    m.train()
    xs = x.clone().requires_grad_()
    q, k, v = m.qkv(xs)
    grads = []
    for form in (m._positional_factored, m._positional_maps):
        out = form(q, v)
        grads.append(torch.autograd.grad(out.square().sum(), [xs, m.rel_col, m.rel_row, m.norm.weight],
                                         retain_graph=True))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * (1 + b.abs().max().item()))


def test_wide_heads_capture_and_softmax_use_the_weight_maps():
    m = _module(heads=2)  # d_k = d_v = 4: 16 > 8
    q, _, v = m.qkv(torch.randn(1, 8, 4, 5, dtype=torch.float64))
    calls = []
    orig = GSA._positional_maps
    GSA._positional_maps = lambda self, q, v: calls.append(1) or orig(self, q, v)
    try:
        m.positional_branch(q, v)
        narrow = _module(heads=4, positional_softmax=True)
        narrow.positional_branch(*narrow.qkv(torch.randn(1, 8, 4, 5, dtype=torch.float64))[::2])
    finally:
        GSA._positional_maps = orig
    assert len(calls) == 2
