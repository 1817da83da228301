"""DANet PAM / CAM / danet (arXiv:1809.02983) against naive loops from the paper's equations."""
from __future__ import annotations

import math

import pytest
import torch

import blocks
from blocks.maps import capture_maps

SIZES = [(2, 8, 5, 3), (2, 8, 1, 7)]


def _softmax(v):
    mx = max(v)
    e = [math.exp(t - mx) for t in v]
    s = sum(e)
    return [t / s for t in e]


def _conv1x1(w, b, vec):
    return [sum(w[o][i][0][0] * vec[i] for i in range(len(vec))) + b[o] for o in range(len(w))]


def _set_gammas(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.randn(1, generator=g, dtype=p.dtype) + 1.0)
    return m.eval()


def naive_pam(m, x: torch.Tensor) -> torch.Tensor:
    """Eq. 1-2: E_p = α Σ_q softmax_q(Q_p·K_q) V_q + x_p (Q at the output position)."""
    sd = {k: v.tolist() for k, v in m.state_dict().items()}
    n_, c_, h_, w_ = x.shape
    xs = x.tolist()
    out = torch.empty_like(x)
    pos = [(r, s) for r in range(h_) for s in range(w_)]
    for n in range(n_):
        pix = [[xs[n][c][r][s] for c in range(c_)] for r, s in pos]
        q = [_conv1x1(sd["query.weight"], sd["query.bias"], v) for v in pix]
        k = [_conv1x1(sd["key.weight"], sd["key.bias"], v) for v in pix]
        v = [_conv1x1(sd["value.weight"], sd["value.bias"], t) for t in pix]
        for i, (r, s) in enumerate(pos):
            a = _softmax([sum(qa * kb for qa, kb in zip(q[i], k[j])) for j in range(len(pos))])
            for c in range(c_):
                agg = sum(a[j] * v[j][c] for j in range(len(pos)))
                out[n, c, r, s] = sd["gamma"][0] * agg + pix[i][c]
    return out


def naive_cam(m, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3-4 as in the official code: x_ji = softmax_i(max_i' e_ji' − e_ji), e = X·Xᵀ."""
    beta = m.gamma.item()
    n_, c_, h_, w_ = x.shape
    xs = x.tolist()
    out = torch.empty_like(x)
    pos = [(r, s) for r in range(h_) for s in range(w_)]
    for n in range(n_):
        feat = [[xs[n][c][r][s] for r, s in pos] for c in range(c_)]  # C × HW
        for j in range(c_):
            e = [sum(a * b for a, b in zip(feat[j], feat[i])) for i in range(c_)]
            att = _softmax([max(e) - t for t in e])
            for p, (r, s) in enumerate(pos):
                out[n, j, r, s] = beta * sum(att[i] * feat[i][p] for i in range(c_)) + feat[j][p]
    return out


@pytest.mark.parametrize("shape", SIZES)
def test_pam_matches_naive_loop(shape):
    torch.manual_seed(0)
    m = _set_gammas(blocks.create("pam", shape[1])).double()
    x = torch.randn(*shape, dtype=torch.float64)
    got = m(x)
    assert not torch.allclose(got, x)
    torch.testing.assert_close(got, naive_pam(m, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SIZES)
def test_cam_matches_naive_loop(shape):
    torch.manual_seed(0)
    m = _set_gammas(blocks.create("cam", shape[1])).double()
    x = torch.randn(*shape, dtype=torch.float64) * 0.5
    got = m(x)
    assert not torch.allclose(got, x)
    torch.testing.assert_close(got, naive_cam(m, x), rtol=1e-5, atol=1e-5)


def test_cam_is_softmax_of_negative_energy():
    """The code's max-minus-energy equals softmax(−X·Xᵀ), not Eq. 3's softmax(X·Xᵀ)."""
    m = blocks.create("cam", 8)
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    with capture_maps(m) as maps:
        m(x)
    xf = x.flatten(2)
    want = torch.softmax(-(xf @ xf.transpose(1, 2)), dim=-1).float()
    torch.testing.assert_close(maps["channel_affinity"], want)


@pytest.mark.parametrize("shape", SIZES)
def test_danet_is_pam_plus_cam_minus_x(shape):
    torch.manual_seed(0)
    m = _set_gammas(blocks.create("danet", shape[1])).double()
    x = torch.randn(*shape, dtype=torch.float64) * 0.5
    want = naive_pam(m.pam, x) + naive_cam(m.cam, x) - x
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c", [8, 16, 64, 256])
def test_param_counts(c):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731 (a one-line helper local to this function)
    assert count(blocks.create("pam", c)) == 1.25 * c * c + 1.25 * c + 1
    assert count(blocks.create("cam", c)) == 1
    assert count(blocks.create("danet", c)) == 1.25 * c * c + 1.25 * c + 2


@pytest.mark.parametrize("name", ["pam", "cam", "danet"])
@pytest.mark.parametrize("shape", SIZES + [(1, 8, 7, 1), (1, 8, 1, 1)])
def test_identity_at_init(name, shape):
    m = blocks.create(name, shape[1])
    x = torch.randn(*shape)
    assert torch.equal(m(x), x)


def test_cam_large_magnitude_no_nan_no_subnormals():
    """CAM energies grow with HW·‖x‖²: rows span far beyond exp's range. No NaN, no subnormal."""
    m = _set_gammas(blocks.create("cam", 16)).train()
    x = (torch.randn(2, 16, 9, 7) * 1e3).requires_grad_()
    with capture_maps(m) as maps:
        y = m(x)
    y.sum().backward()
    a = maps["channel_affinity"]
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(m.gamma.grad).all()
    tiny = torch.finfo(torch.float32).tiny
    assert not ((a != 0) & (a.abs() < 1e-30)).any()  # nothing near the subnormal range
    assert not ((a != 0) & (a.abs() < tiny)).any()
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 16))


def test_pam_large_magnitude_no_nan():
    m = _set_gammas(blocks.create("pam", 16))
    x = torch.randn(1, 16, 6, 5) * 1e3
    with capture_maps(m) as maps:
        y = m(x)
    a = maps["affinity"]
    assert torch.isfinite(y).all()
    assert not ((a != 0) & (a.abs() < 1e-30)).any()


def test_maps():
    m = _set_gammas(blocks.create("danet", 8))
    x = torch.randn(2, 8, 5, 3)
    with capture_maps(m) as maps:
        m(x)
    assert maps["pam/affinity"].shape == (2, 15, 15)
    assert maps["cam/channel_affinity"].shape == (2, 8, 8)
    torch.testing.assert_close(maps["pam/affinity"].sum(-1), torch.ones(2, 15))


def test_registry_entries():
    for name in ("pam", "cam", "danet"):
        e = blocks.get(name)
        assert (e.default_slot, e.default_stages) == ("stage_end", (-1,))
        assert e.paper == "arXiv:1809.02983"


def test_safe_softmax_drops_subnormals_and_matches_softmax():
    from blocks._softmax import safe_softmax

    logits = torch.tensor([[0.0, -1.0, -30.0, -90.0, -95.0, -100.0, -300.0]]).repeat(3, 1)
    ref = torch.softmax(logits, -1)
    assert ((ref != 0) & (ref < torch.finfo(torch.float32).tiny)).any()  # plain softmax: subnormals
    p = safe_softmax(logits.requires_grad_(), -1)
    assert not ((p != 0) & (p < 1e-30)).any()
    torch.testing.assert_close(p, ref, rtol=0, atol=1e-20)
    g = torch.randn(3, 7)
    (p * g).sum().backward()
    ref_logits = logits.detach().clone().requires_grad_()
    (torch.softmax(ref_logits, -1) * g).sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)
