"""SPANet salient positions attention (arXiv:2106.04996) against a naive loop of its equations."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import blocks
from _reference import conv1x1, randomise_bn
from blocks.maps import capture_maps
from blocks.spa import FORMS, choose_form, keep_count, value_path_macs

SIZES = [(2, 8, 5, 3), (2, 8, 1, 7)]


def naive_keep(m, x: torch.Tensor, k: int) -> list[list[int]]:
    """Flat indices of the k largest Σ_c θ_c(p)², most salient first, by sorting a loop."""
    sd = {kk: v.tolist() for kk, v in m.state_dict().items() if v.dim() > 0}
    n_, c_, h_, w_ = x.shape
    xs = x.tolist()
    out = []
    for n in range(n_):
        sal = []
        for p in range(h_ * w_):
            r, s = divmod(p, w_)
            th = conv1x1(sd["theta.weight"], sd["theta.bias"], [xs[n][c][r][s] for c in range(c_)])
            sal.append(sum(t * t for t in th))
        out.append(sorted(range(h_ * w_), key=lambda p: -sal[p])[:k])
    return out


def naive_spa(m, x: torch.Tensor, k: int) -> torch.Tensor:
    """z = BN(W · softmax(θ_K θ_Kᵀ) · g + b) + x, every sum an explicit loop."""
    sd = {kk: v.tolist() for kk, v in m.state_dict().items() if v.dim() > 0}
    eps = m.bn.eps
    n_, c_, h_, w_ = x.shape
    xs = x.tolist()
    keep = naive_keep(m, x, k)
    out = torch.empty_like(x)
    pos = [divmod(p, w_) for p in range(h_ * w_)]
    for n in range(n_):
        pix = [[xs[n][c][r][s] for c in range(c_)] for r, s in pos]
        theta = [conv1x1(sd["theta.weight"], sd["theta.bias"], v) for v in pix]  # HW × C'
        g = [conv1x1(sd["g.weight"], sd["g.bias"], v) for v in pix]  # HW × C'
        cp = len(theta[0])
        a = []
        for i in range(cp):  # channel affinity over the kept positions only
            row = [sum(theta[p][i] * theta[p][j] for p in keep[n]) for j in range(cp)]
            mx = max(row)
            e = [math.exp(t - mx) for t in row]
            a.append([t / sum(e) for t in e])
        for p, (r, s) in enumerate(pos):
            y = [sum(a[i][j] * g[p][j] for j in range(cp)) for i in range(cp)]
            wy = conv1x1(sd["out.weight"], sd["out.bias"], y)
            for c in range(c_):
                bn = (wy[c] - sd["bn.running_mean"][c]) / math.sqrt(sd["bn.running_var"][c] + eps)
                out[n, c, r, s] = bn * sd["bn.weight"][c] + sd["bn.bias"][c] + pix[p][c]
    return out


@pytest.mark.parametrize(
    "params,k",
    [({}, None), ({"topk": 3}, 3), ({"topk_ratio": 1.0}, None), ({"topk": 100}, None)],
)
@pytest.mark.parametrize("shape", SIZES)
def test_matches_naive_loop(shape, params, k):
    torch.manual_seed(2)
    m = randomise_bn(blocks.create("spa", shape[1], **params)).double()
    x = torch.randn(*shape, dtype=torch.float64)
    hw = shape[2] * shape[3]
    if k is None:
        k = hw if params else max(1, round(0.25 * hw))
    got = m(x)
    assert not torch.allclose(got, x)
    torch.testing.assert_close(got, naive_spa(m, x, min(k, hw)), rtol=1e-10, atol=1e-10)


# C = 8, C' = 4: folded costs 384 + 64·HW multiply-adds, per-pixel 80·HW: folded iff HW > 24
@pytest.mark.parametrize("shape,auto", [((2, 8, 5, 3), "per_pixel"), ((2, 8, 7, 5), "folded"),
                                        ((1, 8, 3, 9), "folded"), ((2, 8, 1, 7), "per_pixel")])
def test_both_association_orders_match_naive_loop(shape, auto):
    """Each order, forced, equals the naive loop in float64 on both sides of the switch; "auto"
    picks the cheaper one; eval and training forwards agree on the order."""
    torch.manual_seed(5)
    m = randomise_bn(blocks.create("spa", 8, topk=4)).double()
    x = torch.randn(*shape, dtype=torch.float64)
    want = naive_spa(m, x, min(4, shape[2] * shape[3]))
    assert m.form_for(*shape[2:]) == auto
    for form in ("auto", *FORMS):
        m.form = form
        torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10, msg=form)


def test_choose_form_takes_fewer_macs():
    for c, cp, hw in [(8, 4, 24), (8, 4, 25), (256, 128, 56 * 56), (512, 256, 28 * 28),
                      (1024, 512, 14 * 14), (2048, 1024, 7 * 7), (16, 8, 32 * 32), (64, 32, 8 * 8)]:
        macs = value_path_macs(c, cp, hw)
        assert macs[choose_form(c, cp, hw)] == min(macs.values())
    assert choose_form(8, 4, 24) == "per_pixel" and choose_form(8, 4, 25) == "folded"
    # ResNet-50 at 224 px: only stage 1 (C = 256 at 56×56) is large enough to fold
    assert [choose_form(c, c // 2, s * s) for c, s in [(256, 56), (512, 28), (1024, 14), (2048, 7)]] \
        == ["folded", "per_pixel", "per_pixel", "per_pixel"]
    m = blocks.create("spa", 8)
    m.form = "bogus"
    with pytest.raises(ValueError, match="form"):
        m.form_for(5, 5)


@pytest.mark.parametrize(
    "params,hw,k",
    [
        ({}, 15, 4),  # round(3.75)
        ({}, 7, 2),  # round(1.75)
        ({}, 1, 1),
        ({"topk_ratio": 0.1}, 7, 1),  # round(0.7) = 1
        ({"topk_ratio": 0.01}, 15, 1),  # at least one
        ({"topk_ratio": 1.0}, 15, 15),
        ({"topk": 10}, 15, 10),
        ({"topk": 10}, 7, 7),  # clamped to H·W
        ({"topk": 1}, 15, 1),
    ],
)
def test_keep_count(params, hw, k):
    m = blocks.create("spa", 8, **params)
    assert keep_count(hw, m.topk_ratio, m.topk) == k


@pytest.mark.parametrize(
    "params,k",
    [({}, 4), ({"topk": 10}, 10), ({"topk": 15}, 15), ({"topk_ratio": 1.0}, 15), ({"topk": 1}, 1)],
)
def test_topk_selection_matches_loop(params, k):
    m = randomise_bn(blocks.create("spa", 8, **params))
    x = torch.randn(2, 8, 5, 3)
    with capture_maps(m) as maps:
        m(x)
    keep = maps["keep_index"].long()
    assert keep.shape == (2, k)
    assert keep.tolist() == naive_keep(m, x, k)
    mask = maps["keep_mask"]
    assert mask.shape == (2, 5, 3)
    assert mask.flatten(1).sum(1).tolist() == [float(k)] * 2
    for n in range(2):
        assert set(mask[n].flatten().nonzero().flatten().tolist()) == set(keep[n].tolist())
    if k == 15:
        assert mask.eq(1).all()


def test_maps_shapes_h1():
    m = randomise_bn(blocks.create("spa", 8))
    x = torch.randn(2, 8, 1, 7)
    with capture_maps(m) as maps:
        m(x)
    assert maps["saliency"].shape == (2, 1, 7)
    assert maps["keep_index"].shape == (2, 2)
    assert maps["keep_mask"].shape == (2, 1, 7)
    assert maps["affinity"].shape == (2, 4, 4)
    assert maps["keep_mask"].flatten(1).sum(1).tolist() == [2.0, 2.0]


@pytest.mark.parametrize(
    "params",
    [
        {"topk_ratio": 0.0},
        {"topk_ratio": -0.5},
        {"topk_ratio": 1.5},
        {"topk_ratio": None},
        {"topk": 0},
        {"topk": -3},
        {"topk": 2.5},
        {"topk": True},
        {"topk": 4, "topk_ratio": 0.5},
        {"topk": 4, "topk_ratio": 0.25},  # both given explicitly, even if equal to the default
        {"topk_ratio": "0.5"},
    ],
)
def test_bad_topk_raises(params):
    with pytest.raises(ValueError, match="topk"):
        blocks.create("spa", 8, **params)


def test_topk_with_explicit_none_ratio():
    m = blocks.create("spa", 8, topk=5, topk_ratio=None)
    assert (m.topk, m.topk_ratio) == (5, None)


@pytest.mark.parametrize("c", [8, 16, 64, 256])
def test_param_count(c):
    m = blocks.create("spa", c)
    assert sum(p.numel() for p in m.parameters()) == 1.5 * c * c + 4 * c


@pytest.mark.parametrize("shape", SIZES + [(1, 8, 7, 1), (1, 8, 4, 6), (1, 8, 1, 1)])
def test_identity_at_init(shape):
    m = blocks.create("spa", shape[1])
    m.train(shape[0] * shape[2] * shape[3] > 1)  # BN cannot train on one value per channel
    x = torch.randn(*shape)
    assert torch.equal(m(x), x)


def _plain_forward(m, x, k):
    """The un-folded formulation with nn.BatchNorm2d: θ, g, y, W y all per pixel."""
    n, c, h, w = x.shape
    theta = m.theta(x).flatten(2)  # (N, C', HW), differentiable everywhere
    keep = theta.detach().pow(2).sum(1).topk(k, dim=1).indices
    tk = theta.gather(2, keep.unsqueeze(1).expand(n, theta.shape[1], k))
    a = torch.softmax(tk @ tk.transpose(1, 2), -1)
    y = (a @ m.g(x).flatten(2)).view(n, -1, h, w)
    return m.bn(m.out(y)) + x


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(2, 8, 5, 3), (3, 8, 1, 7), (2, 8, 7, 5)])
def test_training_step_matches_unfolded_form(shape, momentum, form):
    """Either association order, recomputed θ_K and the fused BN+add give the plain
    formulation's output, gradients and BN running statistics (training mode, two steps)."""
    torch.manual_seed(3)
    m = randomise_bn(blocks.create("spa", 8, topk=6)).double().train()
    m.bn.momentum = momentum
    m.form = form
    ref = copy.deepcopy(m)
    for step in range(2):
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_()
        gy = torch.randn(*shape, dtype=torch.float64)
        gy_copy = gy.clone()
        got_y, want_y = m(x), _plain_forward(ref, x_ref, 6)
        torch.testing.assert_close(got_y, want_y, rtol=1e-9, atol=1e-10)
        got = torch.autograd.grad(got_y, [x] + list(m.parameters()), gy)
        want = torch.autograd.grad(want_y, [x_ref] + list(ref.parameters()), gy)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
        assert torch.equal(gy, gy_copy)  # the upstream gradient is not written to
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            got_s, want_s = getattr(m.bn, name), getattr(ref.bn, name)
            torch.testing.assert_close(got_s, want_s, rtol=1e-12, atol=1e-12)


def test_training_backward_via_backward_call():
    """``.backward`` into x.grad; the fused path's pass-through gradient stays intact (float32)."""
    m = randomise_bn(blocks.create("spa", 8)).train()
    ref = copy.deepcopy(m)
    x = torch.randn(2, 8, 5, 3, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    gy = torch.randn(2, 8, 5, 3)
    m(x).backward(gy)
    _plain_forward(ref, x_ref, keep_count(15, 0.25, None)).backward(gy)
    # float32, different summation orders: errors relative to each gradient's own magnitude
    scale = x_ref.grad.abs().max().item()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4 * scale)
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        # out.bias's gradient is exactly 0 in exact arithmetic (training BN); in float32 both
        # are rounding noise of a sum of dL/du, whose size is that of the BN bias gradient
        like = ref.bn.bias.grad if name == "out.bias" else q.grad
        scale = like.abs().max().item()
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4 * scale, msg=name)


def test_training_batch_of_one_pixel_raises_like_batchnorm():
    m = blocks.create("spa", 8).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m(torch.randn(1, 8, 1, 1))


def test_registry_entry():
    e = blocks.get("spa")
    assert (e.default_slot, e.default_stages) == ("stage_end", (1, 2, 3))
    assert e.paper == "arXiv:2106.04996"
    assert e.param_defaults()["topk_ratio"] == 0.25 and e.param_defaults()["topk"] is None


def test_out_bias_is_dead_in_training():
    """out.bias sits right before a training-mode BN: zero gradient (module docstring)."""
    torch.manual_seed(6)
    for form in FORMS:
        m = randomise_bn(blocks.create("spa", 8, topk=4)).double().train()
        m.form = form
        m(torch.randn(2, 8, 7, 5, dtype=torch.float64)).square().sum().backward()
        live = m.g.bias.grad.abs().max().item()
        assert live > 1e-3  # b_g is not dead: A b_g differs between samples
        assert m.out.bias.grad.abs().max().item() < 1e-9 * live


def test_no_per_pixel_activations_saved_except_bn_input():
    """Memory design of the folded order: θ, g and y are never saved per pixel; only BN's
    input u (N, C, HW) is."""
    m = randomise_bn(blocks.create("spa", 16, topk=3)).train()
    assert m.form_for(9, 7) == "folded"  # 63 > 3·16 positions
    x = torch.randn(2, 16, 9, 7, requires_grad=True)
    skip = {t.untyped_storage().data_ptr() for t in [x, *m.parameters()]}
    big: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip and t.untyped_storage().nbytes() >= 2 * 8 * 63 * 4:  # ≥ one θ map
            big[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    assert list(big.values()) == [2 * 16 * 63 * 4]
