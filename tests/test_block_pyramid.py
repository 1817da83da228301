"""Interaction-aware spatial pyramid attention (model-level ``pyramid``) against a loop."""
import math

import pytest
import torch

from _reference import assert_eval_deterministic_and_roundtrip

import blocks
from blocks.cost import attention_params, count_params
from blocks.maps import capture_maps
from conftest import needs_torchvision

BACKBONE = "cifar_resnet20"
X_SHAPE = (2, 3, 16, 20)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: with 2 intra-op threads on a shared, loaded 2-core machine each forward
    # can take 100x longer (threads wait on each other); one thread is faster here.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build(backbone=BACKBONE, num_classes=10, **params):
    params.setdefault("dim", 8)  # keep the loop test small; the default (256) is tested below
    return blocks.build_model(backbone, num_classes, attention={"kind": "pyramid", **params})


def randomise(m: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for b in m.buffers():
            if b.is_floating_point() and b.dim() == 1:  # BN running stats
                b.copy_(b.abs() + 0.5 * torch.rand(b.shape, generator=g, dtype=b.dtype))


@pytest.mark.parametrize("interaction", ("product", "none"))
@pytest.mark.parametrize("normalise", ("softmax", "sigmoid"))
def test_logits_shape_odd_input(interaction, normalise):
    m = build(interaction=interaction, normalise=normalise, dim=256).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 15, 21))
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("with_gap", (False, True))
def test_every_parameter_gets_a_gradient(with_gap):
    m = build(with_gap=with_gap)
    # v starts at 0 by design: its gradient must still be non-zero.
    assert m.pyramid.score_pair.weight.abs().sum() == 0
    m.train()
    m(torch.randn(*X_SHAPE)).logsumexp(1).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    for mod in m.attention_modules:
        for name, p in mod.named_parameters():
            assert p.grad.abs().sum() > 0, f"attention parameter {name} has an all-zero gradient"


def adaptive_bins(n_in: int, n_out: int) -> list[tuple[int, int]]:
    return [((i * n_in) // n_out, math.ceil((i + 1) * n_in / n_out)) for i in range(n_out)]


def naive(m, x):
    """Resample, reduce (eval BN), score, softmax/sigmoid, pool, classify — per position."""
    att = m.pyramid
    feats = [m.backbone.forward_stages(x)[s - 1] for s in m.attended_stages]
    last = m.backbone.forward_stages(x)[-1]
    h, w = feats[-1].shape[-2:]
    k_scales = len(feats)
    dim = att.reduce[0][0].out_channels
    u = att.score.weight[0, :, 0, 0].split(dim)  # u_k
    v = att.score_pair.weight[0, :, 0, 0].split(dim) if att.score_pair is not None else None
    out, maps = [], []
    for b in range(x.shape[0]):
        xs = {}  # (k, i, j) -> x_p^k
        for k, f in enumerate(feats):
            conv, bn = att.reduce[k]
            wk = conv.weight[:, :, 0, 0]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            for i, (r0, r1) in enumerate(adaptive_bins(f.shape[2], h)):
                for j, (c0, c1) in enumerate(adaptive_bins(f.shape[3], w)):
                    pooled = f[b, :, r0:r1, c0:c1].sum((1, 2)) / ((r1 - r0) * (c1 - c0))  # R
                    xs[k, i, j] = (wk @ pooled - bn.running_mean) * scale + bn.bias
        s = torch.empty(h, w, dtype=x.dtype)
        for i in range(h):
            for j in range(w):
                sc = sum(u[k] @ xs[k, i, j] for k in range(k_scales))
                if v is not None:
                    for q, (k1, k2) in enumerate(att.pairs):
                        sc = sc + v[q] @ (xs[k1, i, j] * xs[k2, i, j])
                s[i, j] = sc
        if att.normalise == "softmax":
            e = torch.exp(s - s.max())
            a = e / e.sum()
            z = [sum(a[i, j] * xs[k, i, j] for i in range(h) for j in range(w)) for k in range(k_scales)]
        else:
            a = 1 / (1 + torch.exp(-s))
            z = [sum(a[i, j] * xs[k, i, j] for i in range(h) for j in range(w)) / (h * w)
                 for k in range(k_scales)]
        if m.with_gap:
            z.append(last[b].sum((1, 2)) / (last.shape[2] * last.shape[3]))
        out.append(m.classifier.weight @ torch.cat(z) + m.classifier.bias)
        maps.append(a)
    return torch.stack(out), torch.stack(maps)


@pytest.mark.parametrize("interaction,normalise,with_gap,shape",
                         [("product", "softmax", False, (2, 3, 16, 20)),
                          ("product", "softmax", True, (2, 3, 15, 21)),
                          ("none", "softmax", False, (1, 3, 15, 21)),
                          ("product", "sigmoid", False, (1, 3, 16, 20))])
def test_matches_naive_loop(interaction, normalise, with_gap, shape):
    m = build(interaction=interaction, normalise=normalise, with_gap=with_gap).double()
    randomise(m)
    m.eval()
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad(), capture_maps(m) as maps:
        y = m(x)
        ref_y, ref_a = naive(m, x)
    torch.testing.assert_close(y, ref_y)
    a = maps["pyramid/attention"]
    assert a.shape == ref_a.shape == (shape[0], (shape[2] + 3) // 4, (shape[3] + 3) // 4)
    torch.testing.assert_close(a.double(), ref_a, rtol=1e-5, atol=1e-6)
    if normalise == "softmax":
        torch.testing.assert_close(a.sum((1, 2)), torch.ones(shape[0]), rtol=0, atol=1e-5)


def test_attention_sums_to_one_float32():
    m = build(dim=256).eval()
    with torch.no_grad(), capture_maps(m) as maps:
        m(torch.randn(2, 3, 15, 21))
    assert list(maps) == ["pyramid/attention"]
    a = maps["pyramid/attention"]
    assert a.shape == (2, 4, 6) and (a >= 0).all()
    torch.testing.assert_close(a.sum((1, 2)), torch.ones(2), rtol=0, atol=1e-5)


def test_parameter_accounting():
    m = blocks.build_model(BACKBONE, 10, attention="pyramid")  # defaults: dim 256, product
    base = blocks.build_model(BACKBONE, 10)
    expected = count_params(m) - (count_params(base) - count_params(base.fc))
    assert attention_params(m) == expected
    d = 256
    # 1×1 reductions 16/32/64→d with BN (γ, β), u (3d, no bias), v (3 pairs · d), classifier 3d→10
    assert expected == (16 + 32 + 64) * d + 3 * 2 * d + 3 * d + 3 * d + (3 * d * 10 + 10)
    assert m.pyramid.score.bias is None  # a shift of every score: the softmax ignores it
    att_ids = {id(p) for mod in m.attention_modules for p in mod.parameters()}
    bb_ids = {id(p) for p in m.backbone.parameters()}
    assert not att_ids & bb_ids
    assert att_ids | bb_ids == {id(p) for p in m.parameters()}
    assert isinstance(m.attention_modules, list)


def test_stages_and_spec():
    assert blocks.resolve_spec("pyramid", BACKBONE).stages == (1, 2, 3)
    m = build(stages=[-1])  # one scale: no pairs, no interaction term
    assert m.attended_stages == (3,) and m.pyramid.score_pair is None
    assert m(torch.randn(*X_SHAPE)).shape == (2, 10)
    m = build(stages="2,3", with_gap=True)
    assert m.attended_stages == (2, 3) and len(m.pyramid.pairs) == 1
    assert m.classifier.in_features == 2 * 8 + 64
    assert m(torch.randn(*X_SHAPE)).shape == (2, 10)


def test_unknown_and_bad_params():
    with pytest.raises(TypeError, match="valid: dim"):
        blocks.resolve_spec({"kind": "pyramid", "bogus": 1}, BACKBONE)
    with pytest.raises(TypeError):
        build(reduction=4)
    with pytest.raises(ValueError, match="interaction"):
        build(interaction="bilinear")
    with pytest.raises(ValueError, match="normalise"):
        build(normalise="relu")
    with pytest.raises(ValueError, match="dim"):
        build(dim=0)
    with pytest.raises(ValueError, match="model-level"):
        blocks.resolve_spec({"kind": "pyramid", "every": 2}, BACKBONE)


def test_eval_deterministic_and_state_dict_round_trip():
    m = build()
    randomise(m)
    assert_eval_deterministic_and_roundtrip(m, build, torch.randn(*X_SHAPE))
    assert not any(k.startswith("backbone.fc") for k in m.state_dict())


@needs_torchvision
def test_resnet18():
    m = build("resnet18", dim=32)
    assert m.attention_spec.stages == (2, 3, 4)
    base = blocks.build_model("resnet18", 10)
    assert attention_params(m) == count_params(m) - (count_params(base) - count_params(base.fc))
    m.eval()
    with torch.no_grad(), capture_maps(m) as maps:
        y = m(torch.randn(2, 3, 49, 37))
    assert y.shape == (2, 10)
    a = maps["pyramid/attention"]
    assert a.shape == (2, 2, 2)
    torch.testing.assert_close(a.sum((1, 2)), torch.ones(2), rtol=0, atol=1e-5)
