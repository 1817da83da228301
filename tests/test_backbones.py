"""Every registered backbone, with and without attention in every slot; published counts."""
import subprocess
import sys
import json

import pytest
import torch

import blocks
from blocks.backbones import get_backbone
from blocks.cost import count_params, model_cost
BACKBONES = blocks.backbone_names()  # none of them imports torchvision


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_forward_grad_roundtrip(name):
    from blocks.backbones import get_backbone
    entry = get_backbone(name)
    m = blocks.build_model(name, 7, small_stem=entry.small_stem_option)
    x = torch.randn(2, 3, 19, 13)  # odd, non-square
    y = m(x)
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.eval()
    m2 = blocks.build_model(name, 7, small_stem=entry.small_stem_option)
    m2.load_state_dict(m.state_dict())
    m2.eval()
    with torch.no_grad():
        assert torch.equal(m(x[:1]), m2(x[:1]))
        assert torch.equal(m(x[:1]), m(x[:1]))


CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}
CIFAR_MMACS = {20: 40.55, 32: 68.86, 44: 97.17, 56: 125.49, 110: 252.89}


@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS))
def test_cifar_resnet_counts(depth):
    c = model_cost(f"cifar_resnet{depth}")
    assert c["params"] == CIFAR_PARAMS[depth]
    assert c["gmacs"] * 1e3 == pytest.approx(CIFAR_MMACS[depth], abs=0.01)


@pytest.mark.parametrize("depth,params,gmacs", [(18, 11_689_512, 1.814), (34, 21_797_672, 3.664),
                                                (50, 25_557_032, 4.089), (101, 44_549_160, 7.801)])
def test_torchvision_resnet_counts(depth, params, gmacs):
    c = model_cost(f"resnet{depth}")
    assert c["params"] == params
    assert c["gmacs"] == pytest.approx(gmacs, abs=0.001)


@pytest.mark.parametrize("backbone,attention,params", [
    ("resnet50", "se", 28_088_024),
    ("resnet50", {"kind": "se", "bias": False}, 28_071_976),
    ("resnet50", "cbam", 28_089_624),
    ("resnet34", "cbam", 21_960_468),
    ("resnet18", "cbam", 11_779_392),
    ("resnet50", "ssa", 25_557_032 + 32),
])
def test_published_attention_param_counts(backbone, attention, params):
    m = blocks.build_model(backbone, 1000, attention=attention)
    assert count_params(m) == params
    base = count_params(blocks.build_model(backbone, 1000))
    assert sum(count_params(a) for a in m.attention_modules) == params - base


SLOT_CASES = [
    ({"kind": "se", "slot": "gate", "stages": [1, 3]}, 3 + 3),
    ({"kind": "se", "slot": "after_block", "stages": [2], "every": 2}, 1),
    ({"kind": "se", "slot": "after_block", "stages": [1, 2, 3], "every": 1}, 9),
    ({"kind": "cbam", "slot": "stage_end", "stages": [-1]}, 1),
    ({"kind": "ssa", "slot": "replace_conv", "stages": [2, 3]}, 6),
]


@pytest.mark.parametrize("spec,count", SLOT_CASES, ids=lambda v: str(v))
def test_slots_insert_where_asked(spec, count):
    m = blocks.build_model("cifar_resnet20", 10, attention=spec)
    assert len(m.attention_modules) == count
    for a in m.attention_modules:
        assert type(a) is blocks.get(spec["kind"]).cls
    x = torch.randn(1, 3, 17, 11)
    assert m(x).shape == (1, 10)


@pytest.mark.parametrize("backbone,bn,x_shape", [("cifar_resnet20", "bn2", (1, 16, 8, 8)),
                                                  ("resnet18", "bn2", (1, 64, 8, 8)),
                                                  ("resnet50", "bn3", (1, 64, 8, 8)),
                                                  ("gsa_resnet50", "bn3", (1, 64, 8, 8))])
def test_gate_sits_after_last_bn_before_add(backbone, bn, x_shape):
    m = blocks.build_model(backbone, 10, attention={"kind": "se", "stages": [1]}).eval()
    block = m.stages[0][0]
    seen = []
    getattr(block, bn).register_forward_hook(lambda mod, i, o: seen.append(("bn", o)))
    block.attn.register_forward_hook(lambda mod, i, o: seen.append(("attn", i[0], o)))
    x = torch.randn(*x_shape)
    shortcut = getattr(block, "downsample", None) or getattr(block, "shortcut", None)
    idt = shortcut(x) if shortcut is not None else x
    out = block(x)
    assert [s[0] for s in seen] == ["bn", "attn"]
    assert torch.equal(seen[1][1], seen[0][1])  # gate input is the BN output
    assert torch.allclose(out, torch.relu(seen[1][2] + idt))  # then the identity add


@pytest.mark.parametrize("backbone", ["cifar_resnet20", "resnet18", "resnet50"])
@pytest.mark.parametrize("slot", ["gate", "after_block", "stage_end", "replace_conv"])
def test_attention_leaves_backbone_keys_unchanged(backbone, slot):
    """Every slot adds keys of its own; only replace_conv removes the conv it replaces."""
    base = blocks.build_model(backbone, 10)
    m = blocks.build_model(backbone, 10, attention={"kind": "se", "slot": slot})
    keys, base_keys = set(m.state_dict()), set(base.state_dict())
    own = {k for k in keys if ".attn." in k or ".conv2." in k and slot == "replace_conv"}
    assert keys - base_keys == own and own
    removed = base_keys - keys
    if slot == "replace_conv":
        assert removed and all(k.endswith("conv2.weight") for k in removed)
    else:
        assert not removed
    # the keys name the module that holds them
    for k in own:
        assert m.get_submodule(k.rsplit(".", 1)[0]) in {mod for a in m.attention_modules for mod in a.modules()}
    x = torch.randn(2, 3, 19, 13)
    assert m(x).shape == (2, 10)


def test_after_block_runs_after_the_right_blocks():
    m = blocks.build_model("cifar_resnet20", 10, attention={"kind": "se", "slot": "after_block",
                                                             "stages": [2], "every": 2})
    stage = m.stages[1]
    assert sorted(stage.attn) == ["1"] and len(stage) == 3
    order = []
    for i, b in enumerate(stage):
        b.register_forward_hook(lambda mod, i_, o, i=i: order.append(f"block{i}"))
    stage.attn["1"].register_forward_hook(lambda mod, i_, o: order.append("attn"))
    stage(torch.randn(1, 16, 8, 8))
    assert order == ["block0", "block1", "attn", "block2"]


def test_replace_conv_keeps_stride_on_odd_inputs():
    spec = {"kind": "se", "slot": "replace_conv", "stages": [2]}
    m = blocks.build_model("cifar_resnet20", 10, attention=spec)
    base = blocks.build_model("cifar_resnet20", 10)
    x = torch.randn(1, 3, 17, 11)
    assert m.forward_stages(x)[1].shape == base.forward_stages(x)[1].shape


@pytest.mark.parametrize("bad,match", [
    ({"kind": "se", "stages": [4]}, "stage 4 does not exist"),
    ({"kind": "se", "stages": []}, "empty"),
    ({"kind": "se", "stages": [1, 1]}, "twice"),
    ({"kind": "se", "slot": "everywhere"}, "unknown slot"),
    ({"kind": "se", "slot": "gate", "every": 2}, "every"),
    ({"kind": "se", "slot": "after_block", "every": 0}, "every"),
    ({"kind": "se", "radius": 2.0}, "unknown parameter"),
    ({"kind": "nope"}, "unknown attention"),
    ({"stages": [1]}, "no 'kind'"),
])
def test_bad_specs(bad, match):
    with pytest.raises((ValueError, TypeError, KeyError), match=match):
        blocks.resolve_spec(bad, "cifar_resnet20")


def test_unknown_backbone_lists_valid():
    with pytest.raises(KeyError, match="cifar_resnet20"):
        blocks.build_model("resnet9000", 10)


def test_cost_cli_json_and_errors():
    r = subprocess.run([sys.executable, "-m", "blocks.cost", "--backbone", "cifar_resnet20", "--attention", "se",
                        "--stages", "1,2,3", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["params"] == out["backbone_params"] + out["attention_params"]
    assert isinstance(out["params"], int) and isinstance(out["gmacs"], float) and out["gmacs"] > 0.04
    r = subprocess.run([sys.executable, "-m", "blocks.cost", "--backbone", "cifar_resnet20", "--attention", "se",
                        "--stages", "4"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "stage 4" in r.stderr


def test_attention_model_compiles_without_graph_breaks():
    """Stage-level and gate attention (with the entry check hooks) trace as one graph."""
    for spec in [{"kind": "cbam", "slot": "after_block", "stages": [2]}, {"kind": "se", "stages": [3]}]:
        m = blocks.build_model("cifar_resnet20", 10, attention=spec).eval()
        x = torch.randn(2, 3, 12, 10)
        compiled = torch.compile(m, backend="eager", fullgraph=True)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), m(x))


@pytest.mark.parametrize("name, small_stem", [(n, False) for n in BACKBONES] + [
    (n, True) for n in BACKBONES if get_backbone(n).small_stem_option])
def test_declared_stage_strides_are_the_models(name, small_stem):
    """The registry's stage strides (what input sizes are refused on, here and in the trial
    config) are those of the built model: each stage's map is input / stride at a power-of-two
    input, and at ``min_input`` with attention everywhere every stage keeps 2x2 positions."""
    from blocks.backbones import min_input

    entry = get_backbone(name)
    strides = entry.strides(small_stem)
    assert len(strides) == entry.num_stages
    net = blocks.build_backbone(name, 10, small_stem=small_stem).eval()
    side = 2 * strides[-1]
    with torch.no_grad():
        feats = net.forward_stages(torch.zeros(1, 3, side, side))
    assert [f.shape[-1] for f in feats] == [side // s for s in strides]
    need = min_input(name, small_stem, range(1, entry.num_stages + 1))
    with torch.no_grad():
        feats = net.forward_stages(torch.zeros(1, 3, need, need))
    assert all(min(f.shape[-2:]) >= 2 for f in feats)
    assert min_input(name, small_stem) == strides[-1]


@pytest.mark.parametrize("name", BACKBONES)
def test_registered_block_counts_are_the_built_ones(name):
    """The registry's residual blocks per stage (what a spec's ``every`` is checked against before
    anything is built) are those of the built backbone."""
    from blocks.insert import residual_blocks

    entry = get_backbone(name)
    with torch.device("meta"):
        net = entry.build(10)
    assert tuple(len(residual_blocks(s)) for s in net.stages) == entry.stage_blocks


@pytest.mark.parametrize("backbone,every,ok", [("cifar_resnet20", 3, True), ("cifar_resnet20", 4, False),
                                               ("resnet50", 6, True), ("resnet50", 7, False)])
def test_an_every_beyond_the_blocks_of_every_stage_is_refused(backbone, every, ok):
    from blocks import resolve_spec

    spec = {"kind": "se", "slot": "after_block", "every": every, "stages": [1, 2, 3]}
    if ok:
        assert resolve_spec(spec, backbone).every == every
    else:
        with pytest.raises(ValueError, match=f"every {every} inserts no block in {backbone}"):
            resolve_spec(spec, backbone)
