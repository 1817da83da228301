"""Non-local block (arXiv:1711.07971) against a naive loop written from the paper's equations."""
from __future__ import annotations

import math

import pytest
import torch

import blocks
from _reference import conv1x1, randomise_bn
from blocks.maps import capture_maps, query_map

SIZES = [(2, 8, 5, 3), (2, 8, 1, 7), (1, 8, 4, 6), (1, 8, 7, 1)]


def naive_nonlocal(m, x: torch.Tensor) -> torch.Tensor:
    """Eq. 1 + 3 with explicit loops: z_i = BN(W_z Σ_j softmax_j(θ_iᵀφ_j) g_j) + x_i."""
    sd = {k: v.tolist() for k, v in m.state_dict().items() if v.dim() > 0}
    eps = m.bn.eps
    n_, c_, h_, w_ = x.shape
    xs = x.tolist()
    out = torch.empty_like(x)
    for n in range(n_):
        pix = {(r, s): [xs[n][c][r][s] for c in range(c_)] for r in range(h_) for s in range(w_)}
        theta = {p: conv1x1(sd["theta.weight"], sd["theta.bias"], v) for p, v in pix.items()}
        phi = {p: conv1x1(sd["phi.weight"], sd["phi.bias"], v) for p, v in pix.items()}
        g = {p: conv1x1(sd["g.weight"], sd["g.bias"], v) for p, v in pix.items()}
        if m.subsample:  # 2×2 max-pool after φ and g, floor: an odd last row/column is dropped
            ph, pw = min(2, h_), min(2, w_)  # a side of length 1 is pooled by a window of 1
            keys = []
            cp = len(theta[(0, 0)])
            for a in range(h_ // ph):
                for b in range(w_ // pw):
                    win = [(ph * a + i, pw * b + j) for i in range(ph) for j in range(pw)]
                    keys.append(
                        (
                            [max(phi[q][c] for q in win) for c in range(cp)],
                            [max(g[q][c] for q in win) for c in range(cp)],
                        )
                    )
        else:
            keys = [(phi[(r, s)], g[(r, s)]) for r in range(h_) for s in range(w_)]
        cp = len(theta[(0, 0)])
        sc = cp**-0.5 if m.scale else 1.0
        for (r, s), th in theta.items():
            logits = [sc * sum(th[c] * ph[c] for c in range(cp)) for ph, _ in keys]
            mx = max(logits)
            e = [math.exp(v - mx) for v in logits]
            tot = sum(e)
            y = [sum(e[j] / tot * keys[j][1][c] for j in range(len(keys))) for c in range(cp)]
            wy = conv1x1(sd["out.weight"], sd["out.bias"], y)
            for c in range(c_):
                bn = (wy[c] - sd["bn.running_mean"][c]) / math.sqrt(sd["bn.running_var"][c] + eps)
                out[n, c, r, s] = bn * sd["bn.weight"][c] + sd["bn.bias"][c] + pix[(r, s)][c]
    return out


@pytest.mark.parametrize("subsample,scale", [(True, False), (False, True)])
@pytest.mark.parametrize("shape", SIZES[:2] + [(1, 8, 7, 7)])
def test_matches_naive_loop(shape, subsample, scale):
    torch.manual_seed(1)
    m = randomise_bn(blocks.create("nonlocal", shape[1], subsample=subsample, scale=scale)).double()
    x = torch.randn(*shape, dtype=torch.float64)
    got = m(x)
    want = naive_nonlocal(m, x)
    assert not torch.allclose(got, x)  # the attention path contributes
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)  # float64: the same math


def test_odd_map_pools_with_floor_like_the_official_code():
    """7×7 → 3×3 keys (the official code and the common port; ceil mode would give 4×4), and the
    output equals the naive loop that pools only the full 2×2 windows."""
    torch.manual_seed(4)
    m = randomise_bn(blocks.create("nonlocal", 8)).double()
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    with capture_maps(m) as maps:
        got = m(x)
    assert tuple(int(v) for v in maps["key_hw"]) == (3, 3)
    assert maps["affinity"].shape == (2, 49, 9)
    torch.testing.assert_close(got, naive_nonlocal(m, x), rtol=1e-10, atol=1e-10)
    # the last row and column are never keys: changing x there moves no other position's
    # output; they are still queries, so their own outputs move
    x2 = x.clone()
    x2[:, :, 6, :] += 10.0
    x2[:, :, :, 6] += 10.0
    y2 = m(x2)
    torch.testing.assert_close(y2[:, :, :6, :6], got[:, :, :6, :6], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(y2[:, :, 6, :], got[:, :, 6, :])


def test_dead_parameters_have_zero_gradient_in_training():
    """phi.bias (softmax-invariant), g.bias and out.bias (constant before a training BN)."""
    torch.manual_seed(5)
    m = randomise_bn(blocks.create("nonlocal", 8)).double().train()
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    m(x).square().sum().backward()
    live = m.theta.bias.grad.abs().max().item()
    assert live > 1e-3
    for name in ("phi.bias", "g.bias", "out.bias"):  # zero up to float64 rounding
        assert m.get_parameter(name).grad.abs().max().item() < 1e-9 * live, name


@pytest.mark.parametrize("c", [8, 16, 64, 256])
def test_param_count(c):
    m = blocks.create("nonlocal", c)
    assert sum(p.numel() for p in m.parameters()) == 2 * c * c + 4.5 * c
    if c == 256:
        assert sum(p.numel() for p in m.parameters()) == 132_224


@pytest.mark.parametrize("shape", SIZES + [(1, 8, 1, 1)])
def test_identity_at_init_and_shapes(shape):
    m = blocks.create("nonlocal", shape[1])
    m.train(shape[2] * shape[3] * shape[0] > 1)  # BN cannot train on one value per channel
    x = torch.randn(*shape)
    assert torch.equal(m(x), x)


def test_gradients_flow():
    m = randomise_bn(blocks.create("nonlocal", 8)).train()
    x = torch.randn(2, 8, 5, 3, requires_grad=True)
    m(x).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("subsample,key_hw", [(True, (2, 1)), (False, (5, 3))])
def test_maps(subsample, key_hw):
    m = randomise_bn(blocks.create("nonlocal", 8, subsample=subsample))
    x = torch.randn(2, 8, 5, 3)
    with capture_maps(m) as maps:
        m(x)
    aff = maps["affinity"]
    assert aff.shape == (2, 15, key_hw[0] * key_hw[1])
    torch.testing.assert_close(aff.sum(-1), torch.ones(2, 15))
    assert tuple(int(v) for v in maps["key_hw"]) == key_hw
    assert query_map(aff, key_hw, 0).shape == (2, *key_hw)
    m(x)  # capturing is off again
    assert m._maps is None


def test_registry_entry():
    e = blocks.get("nonlocal")
    assert (e.default_slot, e.default_stages, e.default_every) == ("after_block", (2, 3), 2)
    assert e.paper == "arXiv:1711.07971"
