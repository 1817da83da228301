"""The Gaussian (explicitly modeled) attention block against a naive loop over the paper's map."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import blocks
from blocks.gaussian import GaussianAttention, _SeparableBlock, gaussian_kernel_1d, gaussian_kernel_2d
from blocks.maps import capture_maps

SIZES = [(5, 7), (1, 7), (5, 1), (4, 4)]
SIGMAS = [0.3, 1.5, 10.0]


def naive_aggregate(v: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """y_i = Σ_j a_ij v_j with a_ij = softmax_j(−‖p_i − p_j‖² / 2σ²), by loops over i and j."""
    n, c, h, w = v.shape
    pos = [(y, x) for y in range(h) for x in range(w)]
    rows = []
    for yi, xi in pos:  # query i
        logits = [-((yi - yj) ** 2 + (xi - xj) ** 2) / (2 * sigma**2) for yj, xj in pos]  # keys j
        logits = [torch.as_tensor(l, dtype=v.dtype) for l in logits]
        m = max(l.detach() for l in logits)  # shift for stability; cancels in e / z
        e = [torch.exp(l - m) for l in logits]
        z = sum(e)
        acc = torch.zeros(n, c, dtype=v.dtype)
        for (yj, xj), ej in zip(pos, e):
            acc = acc + (ej / z) * v[:, :, yj, xj]
        rows.append(acc)
    return torch.stack(rows, -1).view(n, c, h, w)


def _block(sigma: float, dense: bool, **kw) -> GaussianAttention:
    return blocks.create("gaussian", 6, radius=sigma, dense=dense, **kw)


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("hw", SIZES)
def test_naive_loop_equals_separable_and_dense(sigma, hw):
    """Math, so float64: equal up to the truncation bound (< 2·HW·τ·max|v| ≈ 1e-10 here)."""
    torch.manual_seed(0)
    v = torch.randn(2, 6, *hw, dtype=torch.float64)
    for dense in (False, True):
        m = _block(sigma, dense).double()
        ref = naive_aggregate(v, m.sigma.item())  # σ as stored (log σ was a float32 at init)
        got = m.aggregate(v)
        assert got.shape == v.shape
        torch.testing.assert_close(got, ref, atol=1e-9, rtol=0)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_full_block_equals_naive(sigma):
    torch.manual_seed(1)
    m = blocks.create("gaussian", 6, radius=sigma, reduction=2).double().eval()
    with torch.no_grad():  # leave the identity init: a random BN affine and statistics
        m.bn.weight.normal_()
        m.bn.bias.normal_()
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        ref = x + m.bn(m.out(naive_aggregate(m.value(x), m.sigma.item())))
        torch.testing.assert_close(m(x), ref, atol=1e-9, rtol=0)
        m.dense = True
        torch.testing.assert_close(m(x), ref, atol=1e-9, rtol=0)


def _random_block(sigma: float, bn: bool = True, dense: bool = False) -> GaussianAttention:
    """float64 block, training mode, with a non-trivial output path (so every gradient flows)."""
    m = blocks.create("gaussian", 6, radius=sigma, reduction=2, bn=bn, dense=dense).double()
    with torch.no_grad():
        m.out.weight.normal_()
        if bn:
            m.bn.weight.normal_()
            m.bn.bias.normal_()
            m.bn.running_mean.normal_()
            m.bn.running_var.uniform_(0.5, 2.0)
    return m


def _step(m, x, g, forward=None):
    """Output, gradients (x and every parameter) and the BN buffers after one step."""
    xi = x.clone().requires_grad_()
    y = (forward or m)(xi)
    grads = torch.autograd.grad(y, [xi, *m.parameters()], g)
    return y.detach(), grads, [b.clone() for b in m.buffers()]


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("hw", [(5, 7), (1, 7), (9, 4)])
def test_separable_equals_dense_values_and_grads(sigma, hw):
    """The block (separable, fused) against the paper's dense map through plain autograd and
    nn.BatchNorm2d in training mode: outputs, all gradients, running statistics.  float64;
    the two truncate different supports (module docstring), so they agree to ~1e-10."""
    torch.manual_seed(2)
    x = torch.randn(2, 6, *hw, dtype=torch.float64)
    g = torch.randn(2, 6, *hw, dtype=torch.float64)
    sep = _random_block(sigma).train()
    den = _random_block(sigma, dense=True).train()
    den.load_state_dict(sep.state_dict())
    (ys, gs, bs), (yd, gd, bd) = _step(sep, x, g), _step(den, x, g)
    torch.testing.assert_close(ys, yd, atol=1e-8, rtol=0)
    for a, b in zip(gs, gd):
        torch.testing.assert_close(a, b, atol=1e-8 * (1 + b.abs().max().item()), rtol=0)
    for a, b in zip(bs, bd):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("chunk", ["whole batch", "one sample", "one column"])
@pytest.mark.parametrize("bn", [True, False])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (3, 6, 1, 7), (1, 6, 9, 4), (2, 6, 7, 1), (3, 6, 5, 5)])
def test_fused_path_equals_autograd_reference(shape, train, bn, chunk, monkeypatch):
    """forward (one autograd Function, BN folded into the output GEMM) == forward_reference
    (value conv, aggregation, nn.BatchNorm2d, add through autograd): same kernels, so equal to
    float64 rounding — outputs, every gradient, running statistics, two steps, momentum None.
    With the CPU's batch chunks of one sample (as at large maps) and of the whole batch, and
    its column blocks of dL/dz of one column and of a whole sample; a square map (one kernel for
    both axes) and non-square ones."""
    import blocks.gaussian as gaussian

    monkeypatch.setattr(gaussian, "CPU_CHUNK_BYTES", 2**40 if chunk == "whole batch" else 1)
    monkeypatch.setattr(gaussian, "CPU_BLOCK_BYTES", 1 if chunk == "one column" else 2**40)
    torch.manual_seed(8)
    m = _random_block(1.5, bn=bn).train(train)
    if bn:
        m.bn.momentum = None
    ref = copy.deepcopy(m)
    for _ in range(2):
        x = torch.randn(*shape, dtype=torch.float64)
        g = torch.randn(*shape, dtype=torch.float64)
        (y, gr, b), (yr, grr, br) = _step(m, x, g), _step(ref, x, g, ref.forward_reference)
        torch.testing.assert_close(y, yr, atol=1e-12, rtol=1e-12)
        for a, c in zip(gr, grr):
            torch.testing.assert_close(a, c, atol=1e-12 * (1 + c.abs().max().item()), rtol=1e-12)
        for a, c in zip(b, br):
            torch.testing.assert_close(a, c, atol=1e-12, rtol=1e-12)


def test_fused_path_channels_last_and_float32():
    """A channels_last input gives the contiguous input's result; float32 agrees with the
    reference to tolerances relative to each tensor's magnitude (other CPUs, thread counts)."""
    torch.manual_seed(9)
    m = _random_block(2.0).float().train()
    ref = copy.deepcopy(m)
    x = torch.randn(4, 6, 9, 11)
    g = torch.randn(4, 6, 9, 11)
    y, gr, _ = _step(m, x, g)
    yc, grc, _ = _step(m, x.to(memory_format=torch.channels_last), g)
    yr, grr, _ = _step(ref, x, g, ref.forward_reference)
    for a, b in zip([y, yc, *gr, *grc], [yr, yr, *grr, *grr]):
        scale = b.abs().max().item()
        torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("offsets", ["channel", "one sample"])
def test_fused_batch_statistics_are_accurate_in_float32_on_offset_data(offsets):
    """The fused path takes BN's batch moments from y centred in place on its batch mean, with the
    mean's rounding error corrected by the moments GEMM.  On data whose channels sit far from
    zero, or whose first sample is far from the rest, its float32 error against float64 stays
    at the float32 autograd reference's."""
    torch.manual_seed(11)
    m64 = _random_block(1.5).train()
    x = torch.randn(8, 6, 23, 19, dtype=torch.float64)
    if offsets == "channel":
        x += torch.linspace(-300, 300, 6, dtype=torch.float64).view(1, 6, 1, 1)
    else:
        x[0] += 500.0
    g = torch.randn_like(x)
    want = _step(copy.deepcopy(m64), x, g, None)
    m32 = copy.deepcopy(m64).float()
    ref32 = copy.deepcopy(m32)
    got = _step(m32, x.float(), g.float())
    base = _step(ref32, x.float(), g.float(), ref32.forward_reference)
    for name, a, b, w in zip(["output", "grad x", *[n for n, _ in m32.named_parameters()], "buffers"],
                             [got[0], *got[1], *got[2]], [base[0], *base[1], *base[2]],
                             [want[0], *want[1], *want[2]]):
        err, err_ref = (a.double() - w).abs().max().item(), (b.double() - w).abs().max().item()
        assert err <= 4 * err_ref + 1e-6 * w.abs().max().item(), (name, err, err_ref)


@pytest.mark.parametrize("hw", [(3, 4), (4, 4)])
@pytest.mark.parametrize("stats", ["batch", "batch, updating running", "running", "no bn"])
def test_separable_block_function_gradcheck(stats, hw):
    """Finite differences (float64) on every input of the fused Function, log σ included (its
    gradient comes from the kernels' in closed form; a square map shares one kernel)."""
    torch.manual_seed(10)
    n, c, cp = 2, 3, 2
    h, w = hw
    d = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, c, h * w, **d)
    w_v, w_out = torch.randn(cp, c, **d), torch.randn(c, cp, **d)
    log_sigma = torch.tensor(math.log(0.9), **d)
    gamma, beta = torch.randn(c, **d), torch.randn(c, **d)
    run = (torch.randn(c, dtype=torch.float64), torch.rand(c, dtype=torch.float64) + 0.5)
    args = {
        "batch": (gamma, beta, None, None, None),
        "batch, updating running": (gamma, beta, *run, 0.1),
        "running": (gamma, beta, *run, None),
        "no bn": (None, None, None, None, None),
    }[stats]

    def f(x, w_v, log_sigma, w_out, *bn_args):
        return _SeparableBlock.apply(x, w_v, log_sigma, w_out, *bn_args, *args[len(bn_args):], 1e-5, h, 1e-12)

    inputs = (x, w_v, log_sigma, w_out) + tuple(a for a in args[:2] if a is not None)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_fused_path_saves_no_width_c_tensor_but_x():
    """Memory: between forward and backward the block keeps, besides x itself, only tensors of
    at most C' + 1 channels per position (V, T, [y; 1]) and weights."""
    m = blocks.create("gaussian", 48).train()  # C' = 6
    x = torch.randn(2, 48, 9, 7, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    others = [t for t in saved if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()]
    assert len(others) < len(saved)  # x is saved (for dL/dW_v)
    assert max(t.numel() for t in others) <= 2 * 7 * 9 * 7  # N · (C' + 1) · H · W


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_sigma_gradient_matches_finite_difference(sigma, dense):
    torch.manual_seed(3)
    m = _block(sigma, dense).double()
    v = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    g = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    (m.aggregate(v) * g).sum().backward()
    auto = m.log_sigma.grad.item()
    eps = 1e-6
    with torch.no_grad():
        base = m.log_sigma.item()
        m.log_sigma.fill_(base + eps)
        fp = (m.aggregate(v) * g).sum().item()
        m.log_sigma.fill_(base - eps)
        fm = (m.aggregate(v) * g).sum().item()
    fd = (fp - fm) / (2 * eps)
    assert auto == pytest.approx(fd, rel=1e-6, abs=1e-9)
    # and the truncated kernel's gradient equals the untruncated one (τ = 0) to O(τ)
    exact = _block(sigma, dense, threshold=0.0).double()
    (exact.aggregate(v) * g).sum().backward()
    assert auto == pytest.approx(exact.log_sigma.grad.item(), rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_naive_sigma_gradient_equals_separable(sigma):
    torch.manual_seed(4)
    v = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    g = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    s = torch.tensor(sigma, dtype=torch.float64, requires_grad=True)
    (naive_aggregate(v, s) * g).sum().backward()
    m = _block(sigma, False).double()
    (m.aggregate(v) * g).sum().backward()
    # d/d logσ = σ · d/dσ
    assert m.log_sigma.grad.item() == pytest.approx(sigma * s.grad.item(), rel=1e-6, abs=1e-10)


def test_sigma_stays_positive():
    m = _block(1.0, False)
    assert m.sigma.item() == pytest.approx(1.0)
    x = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        m.bn.weight.fill_(1.0)
    opt = torch.optim.SGD([m.log_sigma], lr=1e4)
    for _ in range(3):  # huge steps on log σ: σ = exp(log σ) cannot cross 0
        opt.zero_grad()
        m(x).square().sum().backward()
        opt.step()
        assert m.sigma.item() > 0 and math.isfinite(m.sigma.item())
        assert torch.isfinite(m(x)).all()
    for wild in (-1e4, 1e4):  # far outside any trained value: still a positive finite σ
        with torch.no_grad():
            m.log_sigma.fill_(wild)
        assert 0 < m.sigma.item() < math.inf
        assert torch.isfinite(m(x)).all()
    with torch.no_grad():
        m.log_sigma.fill_(-30.0)  # used as e^-20 (clamp): the map is the identity
    v = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(m.aggregate(v), v)
    m.dense = True
    torch.testing.assert_close(m.aggregate(v), v)
    with pytest.raises(ValueError):
        _block(0.0, False)


@pytest.mark.parametrize("bn", [True, False])
def test_identity_at_init(bn):
    torch.manual_seed(5)
    m = blocks.create("gaussian", 16, bn=bn)
    x = torch.randn(2, 16, 5, 7, requires_grad=True)
    y = m(x)
    assert torch.equal(y, x)
    y.square().sum().backward()
    first = m.bn.weight if bn else m.out.weight  # learns first, as in the non-local block
    assert first.grad.abs().sum() > 0
    torch.testing.assert_close(x.grad, 2 * x.detach())


def test_without_bn_equals_naive():
    torch.manual_seed(7)
    m = blocks.create("gaussian", 6, radius=1.5, reduction=2, bn=False).double()
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    with torch.no_grad():
        m.out.weight.normal_()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x + m.out(naive_aggregate(m.value(x), m.sigma.item())), atol=1e-10, rtol=0)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_truncation_changes_output_below_bound(sigma):
    torch.manual_seed(6)
    v = torch.randn(2, 6, 16, 12, dtype=torch.float64)
    tau = 1e-12
    for dense, n_bound in ((False, 16 + 12 - 2), (True, 16 * 12 - 1)):
        a = _block(sigma, dense, threshold=tau).double().aggregate(v)
        b = _block(sigma, dense, threshold=0.0).double().aggregate(v)
        bound = 2 * n_bound * tau * v.abs().max().item()
        assert (a - b).abs().max().item() <= bound
        assert (a - b).abs().max().item() < 1e-6


def _is_subnormal(t: torch.Tensor) -> bool:
    tiny = torch.finfo(t.dtype).tiny
    return bool(((t != 0) & (t.abs() < tiny)).any())


@pytest.mark.parametrize("sigma", [0.3, 0.5, 1.0])
def test_no_subnormals_in_kernels_or_gradients(sigma):
    s = torch.tensor(sigma)
    kh = gaussian_kernel_1d(24, s)
    k2 = gaussian_kernel_2d(12, 10, s)
    assert not _is_subnormal(kh) and not _is_subnormal(k2)
    assert (kh == 0).any()  # small σ: the truncation did zero the far entries
    # without truncation the same kernels do hold subnormals (what the threshold is for)
    assert _is_subnormal(gaussian_kernel_1d(24, torch.tensor(0.15), threshold=0.0))
    for dense in (False, True):
        m = _block(sigma, dense)
        v = torch.randn(2, 6, 12, 10, requires_grad=True)
        y = m.aggregate(v)
        y.backward(torch.randn_like(y))
        assert not _is_subnormal(y) and not _is_subnormal(v.grad)


def test_maps_and_registry():
    entry = blocks.get("gaussian")
    assert entry.default_slot == "after_block" and entry.default_stages is None
    assert set(entry.params) >= {"radius", "reduction", "dense", "threshold", "bn"}
    assert entry.param_defaults()["radius"] == 2.0
    m = blocks.create("gaussian", 16, radius=1.5)
    assert sum(p.numel() for p in m.parameters()) == 2 * 16 * 2 + 2 * 16 + 1
    x = torch.randn(2, 16, 5, 7)
    with capture_maps(m) as maps:
        m(x)
    assert maps["sigma"].shape == () and maps["sigma"].item() == pytest.approx(1.5)
    assert maps["kernel_h"].shape == (5, 5) and maps["kernel_w"].shape == (7, 7)
    assert maps["centre"].shape == (2, 5, 7)
    assert maps["centre"][0].sum().item() == pytest.approx(1.0)
    assert maps["centre"][0].argmax().item() == 2 * 7 + 3
    m.dense = True
    with capture_maps(m) as dmaps:
        m(x)
    torch.testing.assert_close(dmaps["centre"], maps["centre"], atol=1e-6, rtol=0)
    assert m._maps is None  # capturing is off again
    assert math.isclose(maps["kernel_h"].sum(1)[0].item(), 1.0, rel_tol=1e-6)


def test_fused_path_with_frozen_sigma_and_input_without_grad():
    """Gradients that are not needed are not computed; the others are unchanged."""
    torch.manual_seed(11)
    m = _random_block(1.5).train()
    ref = copy.deepcopy(m)
    m.log_sigma.requires_grad_(False)
    ref.log_sigma.requires_grad_(False)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)  # no grad
    g = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    m(x).backward(g)
    ref.forward_reference(x).backward(g)
    assert m.log_sigma.grad is None
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-12, rtol=1e-12, msg=name)
