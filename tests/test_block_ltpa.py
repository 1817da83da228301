"""Learn to Pay Attention (model-level ``ltpa``): shapes, gradients, Eq. 1-3 against a loop."""
import itertools

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
    return blocks.build_model(backbone, num_classes, attention={"kind": "ltpa", **params})


def randomise(m: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for b in m.buffers():
            if b.is_floating_point() and b.dim() == 1:  # BN running stats
                b.copy_(b.abs() + 0.5 * torch.rand(b.shape, generator=g, dtype=b.dtype))


VARIANTS = list(itertools.product(("pc", "dp"), ("softmax", "sigmoid"), ("concat", "indep")))


@pytest.mark.parametrize("compat,normalise,aggregate", VARIANTS)
def test_logits_shape_odd_input(compat, normalise, aggregate):
    m = build(compat=compat, normalise=normalise, aggregate=aggregate).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 15, 21))
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("compat", ("pc", "dp"))
def test_every_parameter_gets_a_gradient(compat):
    m = build(compat=compat, aggregate="concat")
    randomise(m)
    m.train()
    m(torch.randn(*X_SHAPE)).logsumexp(1).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    for mod in m.attention_modules:
        for name, p in mod.named_parameters():
            assert p.grad.abs().sum() > 0, f"attention parameter {name} has an all-zero gradient"


def naive(m, x, global_fc=None):
    """Eq. 1-3 and the concat/indep classifier, one position at a time, from the weights.

    g = W_g GAP(last stage) + b_g from ``global_fc`` if given, else from the model's own map
    (if it has one); with neither, Eq. 1 pc is ⟨u, l̂_i⟩.
    """
    feats = m.backbone.forward_stages(x)
    n = x.shape[0]
    global_fc = global_fc if global_fc is not None else m.global_fc
    logits, maps, descs = [], [], []
    for b in range(n):
        last = feats[-1][b]
        g = None
        if global_fc is not None:
            g = global_fc.weight @ (last.sum((1, 2)) / (last.shape[1] * last.shape[2])) + global_fc.bias
        ga_all, maps_b = [], []
        for s, att in zip(m.attended_stages, m.attend):
            f = feats[s - 1][b]  # (C_s, H, W)
            _, h, w = f.shape
            proj = att.project.weight[:, :, 0, 0] if att.project is not None else None
            ls, cs = [], []
            for i in range(h):
                for j in range(w):
                    l = f[:, i, j] if proj is None else proj @ f[:, i, j]  # l̂_i
                    if att.u is not None:
                        c = att.u.weight[0, :, 0, 0] @ (l + g if g is not None else l)  # Eq. 1 pc
                    else:
                        c = l @ g  # Eq. 1 dp
                    ls.append(l)
                    cs.append(c)
            c = torch.stack(cs)
            if att.normalise == "softmax":
                e = torch.exp(c - c.max())
                a = e / e.sum()  # Eq. 2
                ga = sum(a[k] * ls[k] for k in range(len(ls)))  # Eq. 3
            else:
                a = 1 / (1 + torch.exp(-c))
                ga = sum(a[k] * ls[k] for k in range(len(ls))) / len(ls)
            maps_b.append(a.reshape(h, w))
            ga_all.append(ga)
        if m.aggregate == "concat":
            y = m.classifier.weight @ torch.cat(ga_all) + m.classifier.bias
        else:
            y = sum(fc.weight @ ga + fc.bias for fc, ga in zip(m.classifier, ga_all)) / len(ga_all)
        logits.append(y)
        maps.append(maps_b)
        descs.append(ga_all)
    return torch.stack(logits), maps, descs


@pytest.mark.parametrize("compat,normalise,aggregate",
                         [("pc", "softmax", "concat"), ("dp", "softmax", "concat"),
                          ("pc", "sigmoid", "indep"), ("dp", "softmax", "indep")])
def test_matches_naive_loop(compat, normalise, aggregate):
    m = build(compat=compat, normalise=normalise, aggregate=aggregate).double()
    randomise(m)
    m.eval()
    x = torch.randn(*X_SHAPE, dtype=torch.float64)
    with torch.no_grad(), capture_maps(m) as maps:
        y = m(x)
        _, descs = m.forward_features(x)
        ref_y, ref_maps, ref_descs = naive(m, x)
    torch.testing.assert_close(y, ref_y)
    assert len(m.attend) == 3
    for k in range(len(m.attend)):
        a = maps[f"attend.{k}/attention"]
        assert a.shape == (2, 16 >> k, 20 >> k)  # (N, H_s, W_s)
        for b in range(2):
            torch.testing.assert_close(a[b].double(), ref_maps[b][k], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(descs[k][b], ref_descs[b][k])
        if normalise == "softmax":
            torch.testing.assert_close(a.sum((1, 2)), torch.ones(2), rtol=0, atol=1e-5)


def test_paper_default_is_pc_softmax_without_global_map():
    """pc is the default (the paper's); under the softmax ⟨u, g⟩ is a per-image constant, so g
    and its linear map are not built — and the model is the same function as one that has them."""
    defaults = blocks.get("ltpa").param_defaults()
    assert (defaults["compat"], defaults["normalise"]) == ("pc", "softmax")
    m = build().double()
    randomise(m)
    m.eval()
    assert m.global_fc is None
    assert not any("global" in n for n, _ in m.named_parameters())
    proj = torch.nn.Linear(64, 64).double()  # the version with the projection: W_g, b_g random
    with torch.no_grad():
        proj.weight.mul_(5.0)
        proj.bias.normal_(0.0, 3.0)
    x = torch.randn(*X_SHAPE, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        with_g, _, _ = naive(m, x, global_fc=proj)
        without_g, _, _ = naive(m, x)
    torch.testing.assert_close(y, with_g, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(with_g, without_g, rtol=1e-10, atol=1e-12)
    # the g term is not small: it shifts the scores by ⟨u, g⟩, which differs per image
    feats = m.backbone.forward_stages(x)
    g = proj(feats[-1].mean((2, 3)))  # (N, 64)
    shift = g @ m.attend[0].u.weight[0, :, 0, 0]  # (N,)
    assert shift.abs().min() > 0.1 and (shift[0] - shift[1]).abs() > 0.1


@pytest.mark.parametrize("compat,normalise", [("dp", "softmax"), ("pc", "sigmoid"), ("dp", "sigmoid")])
def test_global_map_acts_with_dp_or_sigmoid(compat, normalise):
    m = build(compat=compat, normalise=normalise).double()
    randomise(m)
    m.train()
    assert m.global_fc is not None
    m(torch.randn(*X_SHAPE, dtype=torch.float64)).logsumexp(1).mean().backward()
    for name in ("weight", "bias"):
        grad = getattr(m.global_fc, name).grad
        assert grad.abs().max() > 1e-6, f"global_fc.{name} has no effect with {compat}/{normalise}"


def test_pc_softmax_stops_at_the_deepest_attended_stage():
    """Without g nothing after the deepest attended stage reaches the logits (module doc)."""
    m = build(stages=[1, 2])
    m(torch.randn(*X_SHAPE)).sum().backward()
    assert all(p.grad is None for p in m.backbone.stages[2].parameters())
    assert all(p.grad is not None for p in m.backbone.stages[1].parameters())


def test_attention_sums_to_one_float32():
    m = build().eval()
    with torch.no_grad(), capture_maps(m) as maps:
        m(torch.randn(2, 3, 15, 21))
    assert sorted(maps) == ["attend.0/attention", "attend.1/attention", "attend.2/attention"]
    for a in maps.values():
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum((1, 2)), torch.ones(2), rtol=0, atol=1e-5)


def test_parameter_accounting():
    m = build()
    base = blocks.build_model(BACKBONE, 10)
    # The model replaces the backbone's classifier: model = backbone − fc + attention.
    expected = count_params(m) - (count_params(base) - count_params(base.fc))
    assert attention_params(m) == expected
    # pc + softmax: no global map; projections 16→64 and 32→64 (stage 3 already 64), u ×3,
    # classifier 192→10
    assert expected == (16 * 64 + 32 * 64) + 3 * 64 + (3 * 64 * 10 + 10)
    # dp builds the global map 64→64 (g acts there)
    dp = build(compat="dp")
    assert attention_params(dp) == (64 * 64 + 64) + (16 * 64 + 32 * 64) + (3 * 64 * 10 + 10)
    att_ids = {id(p) for mod in m.attention_modules for p in mod.parameters()}
    bb_ids = {id(p) for p in m.backbone.parameters()}
    assert not att_ids & bb_ids
    assert att_ids | bb_ids == {id(p) for p in m.parameters()}
    assert isinstance(m.attention_modules, list)
    assert not any(n.startswith("attention_modules") for n, _ in m.named_modules())


def test_stages_and_spec():
    spec = blocks.resolve_spec("ltpa", BACKBONE)
    assert spec.stages == (1, 2, 3) and spec.slot is None
    m = build(stages=[-1, 2], global_dim=24, compat="dp")
    assert m.attended_stages == (2, 3)
    assert m.attention_spec.stages == (2, 3)
    assert m.global_fc.out_features == 24
    assert all(a.project is not None for a in m.attend)  # 32→24 and 64→24
    assert m(torch.randn(*X_SHAPE)).shape == (2, 10)


def test_unknown_and_bad_params():
    with pytest.raises(TypeError, match="valid: compat"):
        blocks.resolve_spec({"kind": "ltpa", "bogus": 1}, BACKBONE)
    with pytest.raises(TypeError):
        build(reduction=4)
    with pytest.raises(ValueError, match="compat"):
        build(compat="cosine")
    with pytest.raises(ValueError, match="normalise"):
        build(normalise="relu")
    with pytest.raises(ValueError, match="aggregate"):
        build(aggregate="sum")
    with pytest.raises(ValueError, match="global_dim"):
        build(global_dim=0)
    with pytest.raises(ValueError, match="model-level"):
        blocks.resolve_spec({"kind": "ltpa", "slot": "gate"}, BACKBONE)
    with pytest.raises(TypeError, match="model-level"):
        blocks.create("ltpa", 16)


def test_eval_deterministic_and_state_dict_round_trip():
    m = build()
    randomise(m)
    assert_eval_deterministic_and_roundtrip(m, build, torch.randn(*X_SHAPE))
    assert not any(k.startswith("backbone.fc") for k in m.state_dict())


@needs_torchvision
def test_resnet18():
    m = build("resnet18")
    spec = m.attention_spec
    assert spec.stages == (2, 3, 4)
    base = blocks.build_model("resnet18", 10)
    assert attention_params(m) == count_params(m) - (count_params(base) - count_params(base.fc))
    m.eval()
    with torch.no_grad(), capture_maps(m) as maps:
        y = m(torch.randn(2, 3, 49, 37))
    assert y.shape == (2, 10)
    assert maps["attend.2/attention"].shape == (2, 2, 2)
    for a in maps.values():
        torch.testing.assert_close(a.sum((1, 2)), torch.ones(2), rtol=0, atol=1e-5)
