"""SE, CBAM and SSA (the residual-branch gates) against loops written from their papers' equations.

Float64, odd and non-square maps, random weights and BN statistics; forward and every gradient
(the loops are differentiable, so autograd through them is the reference gradient), in eval
(running statistics) and in training mode (batch statistics).
"""
from __future__ import annotations

import pytest
import torch

import blocks
from blocks.maps import capture_maps

SHAPES = [(2, 6, 5, 7), (3, 5, 1, 3), (2, 4, 3, 1)]  # (N, C, H, W): odd, non-square, one-pixel rows/columns


def _randomise(m: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter and BN statistic random and O(1), so no gate sits at its init value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
    return m


def _sigmoid(v):
    return 1.0 / (1.0 + torch.exp(-v))


def _mlp(w1, b1, w2, b2, z):
    """C → C/r → C with ReLU, as a loop over output units; z a list of C scalars."""
    hid = [torch.clamp(sum(w1[o, i] * z[i] for i in range(len(z))) + (b1[o] if b1 is not None else 0), min=0)
           for o in range(w1.shape[0])]
    return [sum(w2[o, i] * hid[i] for i in range(len(hid))) + (b2[o] if b2 is not None else 0)
            for o in range(w2.shape[0])]


def _bn1(bn, s, training: bool):
    """BatchNorm2d(1) on a (N, H, W) map of scalars, written out (biased batch variance in training)."""
    n, h, w = len(s), len(s[0]), len(s[0][0])
    if training:
        vals = [s[b][i][j] for b in range(n) for i in range(h) for j in range(w)]
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / len(vals)
    else:
        mean, var = bn.running_mean[0], bn.running_var[0]
    inv = 1.0 / torch.sqrt(var + bn.eps)
    return [[[(s[b][i][j] - mean) * inv * bn.weight[0] + bn.bias[0] for j in range(w)] for i in range(h)]
            for b in range(n)]


def se_naive(m, x):
    """Hu et al. (arXiv:1709.01507) Eq. 2-4: z_c = (1/HW) Σ_ij x_cij;  s = σ(W2 δ(W1 z));  y_c = s_c x_c."""
    n, c, h, w = x.shape
    w1, w2 = m.fc1.weight[:, :, 0, 0], m.fc2.weight[:, :, 0, 0]
    out = torch.empty_like(x)
    for b in range(n):
        z = [sum(x[b, k, i, j] for i in range(h) for j in range(w)) / (h * w) for k in range(c)]
        s = [_sigmoid(v) for v in _mlp(w1, m.fc1.bias, w2, m.fc2.bias, z)]
        for k in range(c):
            out[b, k] = s[k] * x[b, k]
    return out


def cbam_naive(m, x, training: bool):
    """Woo et al. (arXiv:1807.06521) Eq. 2-3, with the official code's [max, mean] order and the
    BatchNorm after the spatial conv (see the block's docstring)."""
    n, c, h, w = x.shape
    w1, w2 = m.mlp[0].weight[:, :, 0, 0], m.mlp[2].weight[:, :, 0, 0]
    b1, b2 = m.mlp[0].bias, m.mlp[2].bias
    f1 = torch.empty_like(x)
    for b in range(n):
        avg = [sum(x[b, k, i, j] for i in range(h) for j in range(w)) / (h * w) for k in range(c)]
        mx = [max(x[b, k, i, j] for i in range(h) for j in range(w)) for k in range(c)]
        ma, mm = _mlp(w1, b1, w2, b2, avg), _mlp(w1, b1, w2, b2, mx)
        for k in range(c):
            f1[b, k] = _sigmoid(ma[k] + mm[k]) * x[b, k]  # F' = M_c ⊗ F
    if not m.spatial:
        return f1
    kk = m.conv.kernel_size[0]
    r = kk // 2
    wk = m.conv.weight[0]  # (2, k, k): input channel 0 = max over channels, 1 = mean
    pooled = [[[(max(f1[b, k, i, j] for k in range(c)), sum(f1[b, k, i, j] for k in range(c)) / c)
                for j in range(w)] for i in range(h)] for b in range(n)]
    conv = [[[sum(wk[ch, di + r, dj + r] * pooled[b][i + di][j + dj][ch]
                  for ch in range(2) for di in range(-r, r + 1) for dj in range(-r, r + 1)
                  if 0 <= i + di < h and 0 <= j + dj < w)  # zero padding
              for j in range(w)] for i in range(h)] for b in range(n)]
    ms = _bn1(m.bn, conv, training)
    out = torch.empty_like(x)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                out[b, :, i, j] = _sigmoid(ms[b][i][j]) * f1[b, :, i, j]  # F'' = M_s ⊗ F'
    return out


def ssa_naive(m, x, training: bool):
    """SSANet: w_c = GAP(x)_c;  s_ij = (1/C) Σ_c w_c x_cij;  y = σ(BN(s)) ⊙ x."""
    n, c, h, w = x.shape
    s = []
    for b in range(n):
        wc = [sum(x[b, k, i, j] for i in range(h) for j in range(w)) / (h * w) for k in range(c)]
        s.append([[sum(wc[k] * x[b, k, i, j] for k in range(c)) / c for j in range(w)] for i in range(h)])
    a = _bn1(m.bn, s, training)
    out = torch.empty_like(x)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                out[b, :, i, j] = _sigmoid(a[b][i][j]) * x[b, :, i, j]
    return out


CASES = {
    "se": (lambda c: blocks.create("se", c, reduction=2), lambda m, x, tr: se_naive(m, x)),
    "se-no-bias": (lambda c: blocks.create("se", c, reduction=3, bias=False), lambda m, x, tr: se_naive(m, x)),
    "cbam": (lambda c: blocks.create("cbam", c, reduction=2), cbam_naive),
    "cbam-k3": (lambda c: blocks.create("cbam", c, reduction=2, kernel_size=3), cbam_naive),
    "cbam-channel-only": (lambda c: blocks.create("cbam", c, reduction=2, spatial=False), cbam_naive),
    "ssa": (lambda c: blocks.create("ssa", c), ssa_naive),
}


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", list(CASES))
def test_equals_the_papers_equations(case, shape, training):
    make, naive = CASES[case]
    n, c, h, w = shape
    if training and n * h * w < 2:
        pytest.skip("BatchNorm needs more than one value per channel in training")
    m = _randomise(make(c).double(), seed=len(case) + c).train(training)
    g = torch.Generator().manual_seed(h * 10 + w)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    y = m(x1)
    params = list(m.parameters())
    ref = naive(m, x2, training)
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=1e-10)
    assert not torch.allclose(y, x)  # the gate does something
    gy = torch.randn(shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(y, [x1, *params], gy)
    want = torch.autograd.grad(ref, [x2, *params], gy, allow_unused=True)
    for name, a, b in zip(["x"] + [nm for nm, _ in m.named_parameters()], got, want):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, atol=1e-10, rtol=1e-8,
                                   msg=lambda s, name=name: f"gradient of {name}: {s}")


def test_cbam_pools_max_then_mean_as_the_official_code():
    """The spatial conv's input channel 0 is the channel-wise max, 1 the mean (the paper writes
    [avg; max]): with only channel 0's weights non-zero the gate follows the max."""
    m = blocks.create("cbam", 4, reduction=2).double().eval()
    with torch.no_grad():
        m.conv.weight.zero_()
        m.conv.weight[0, 0, 3, 3] = 1.0  # centre tap of channel 0 only
        m.bn.weight.fill_(1.0)
        m.mlp[2].bias.fill_(50.0)  # channel gate saturated at 1: F' = F
    x = torch.randn(1, 4, 3, 5, dtype=torch.float64)
    with capture_maps(m) as maps:
        m(x)
    bn = m.bn
    want = torch.sigmoid((x.amax(1) - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps))
    torch.testing.assert_close(maps["spatial"], want.float(), atol=1e-6, rtol=0)


def test_inits_and_parameter_counts():
    """SE and CBAM keep their MLP biases (the official code); CBAM's spatial BN starts at γ = 0,
    so its spatial gate is ½ everywhere in training; SSA has BN's γ, β only."""
    c, r = 64, 16
    assert sum(p.numel() for p in blocks.create("se", c).parameters()) == 2 * c * (c // r) + c // r + c
    assert sum(p.numel() for p in blocks.create("se", c, bias=False).parameters()) == 2 * c * (c // r)
    cbam = blocks.create("cbam", c)
    assert sum(p.numel() for p in cbam.parameters()) == 2 * c * (c // r) + c // r + c + 2 * 49 + 2
    assert sum(p.numel() for p in blocks.create("ssa", c).parameters()) == 2
    assert sum(p.numel() for p in blocks.create("se", 8).parameters()) == 2 * 8 * 1 + 1 + 8  # hidden ≥ 1
    x = torch.randn(2, c, 5, 7)
    with capture_maps(cbam) as maps:
        cbam.train()(x)
    torch.testing.assert_close(maps["spatial"], torch.full((2, 5, 7), 0.5), atol=0, rtol=0)
