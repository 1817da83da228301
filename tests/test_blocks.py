"""The contract every registered stage block keeps (parametrized over the registry)."""

import pickle

import pytest
import torch

import blocks
from _reference import BLOCK_CONFIGS, assert_eval_deterministic_and_roundtrip
from blocks.maps import capture_maps

STAGE = blocks.names("stage")
SHAPES = [(2, 7, 5), (1, 4, 9), (1, 1, 5), (2, 6, 1)]  # (N, H, W): odd, non-square, a 1-wide axis
C = 32


def randomise(m: torch.nn.Module) -> None:
    """Move zero-initialised gates/γ away from zero so every path carries signal."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for b in m.buffers():
            if b.is_floating_point() and b.dim() == 1:  # BN running stats
                b.copy_(b.abs() + 0.5 * torch.rand(b.shape, generator=g))


def test_registry_lists_and_errors():
    assert {"se", "cbam", "ssa"} <= set(blocks.names())
    with pytest.raises(KeyError, match="valid: .*se"):
        blocks.create("no_such_block", 8)
    with pytest.raises(TypeError, match="valid: reduction"):
        blocks.create("se", 8, radius=3)


def test_names_cover_the_seed_papers():
    expected = {"se", "cbam", "ssa", "nonlocal", "pam", "cam", "danet", "spa", "gsa", "gaussian",
                "spatial_weights", "ltpa", "pyramid"}
    missing = expected - set(blocks.names())
    assert not missing, f"not registered: {missing}"


@pytest.mark.parametrize("name", STAGE)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shape_finite_and_grad(name, shape):
    n, h, w = shape
    m = blocks.create(name, C)
    randomise(m)
    m.train(n * h * w > 1)  # BN cannot train on a single value per channel
    x = torch.randn(n, C, h, w, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"


# Dead parameters: tests/test_dead_params.py (float64, every block, several configurations).


@pytest.mark.parametrize("name", STAGE)
def test_eval_deterministic_and_state_dict_roundtrip(name):
    m = blocks.create(name, C)
    randomise(m)
    assert_eval_deterministic_and_roundtrip(m, lambda: blocks.create(name, C), torch.randn(2, C, 5, 7))


@pytest.mark.parametrize("name", STAGE)
def test_capture_does_not_change_forward(name):
    m = blocks.create(name, C)
    randomise(m)
    m.eval()
    x = torch.randn(1, C, 5, 7)
    with torch.no_grad():
        plain = m(x)
        with capture_maps(m) as maps:
            captured = m(x)
    assert torch.equal(plain, captured)
    for v in maps.values():
        assert torch.isfinite(v).all()
    # switched off again afterwards
    with torch.no_grad():
        m(x)
    assert not getattr(m, "_capture", False)


@pytest.mark.parametrize("name", STAGE)
def test_default_placement_puts_the_block_where_its_slot_says(name):
    """The registered paper placement (slot, stages, every) is what build_model inserts."""
    entry = blocks.get(name)
    m = blocks.build_model("cifar_resnet20", 10, attention=name)  # 3 stages of 3 blocks, 16/32/64
    stages = entry.default_stages or (1, 2, 3)
    stages = sorted(s if s > 0 else s + 4 for s in stages)
    assert m.attention_spec.stages == tuple(stages) and m.attention_spec.slot == entry.default_slot
    found = []  # (stage, where) of every inserted block, read from the model's structure
    for s in stages:
        stage = m.stages[s - 1]
        for i, b in enumerate(stage):
            if b.attn is not None:
                found.append((s, f"gate {i}", b.attn))
            conv = b.conv2[0] if isinstance(b.conv2, torch.nn.Sequential) else b.conv2
            if not isinstance(conv, torch.nn.Conv2d):
                found.append((s, f"conv {i}", conv))
        found += [(s, f"after {k}", a) for k, a in stage.attn.items()]
    every = entry.default_every if entry.default_slot == "after_block" else 1
    expected = {
        "gate": [(s, f"gate {i}") for s in stages for i in range(3)],
        "replace_conv": [(s, f"conv {i}") for s in stages for i in range(3)],
        "after_block": [(s, f"after {i}") for s in stages for i in range(3) if (i + 1) % every == 0],
        "stage_end": [(s, "after 2") for s in stages],
    }[entry.default_slot]
    assert [(s, w) for s, w, _ in found] == expected
    assert [a for *_, a in found] == m.attention_modules
    assert all(type(a) is entry.cls for a in m.attention_modules)
    # each block checks its input's channels at entry, so a block built for the wrong width fails here
    y = m(torch.randn(2, 3, 15, 13))
    assert y.shape == (2, 10) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", STAGE)
def test_input_checked_at_entry(name):
    m = blocks.create(name, C).eval()
    for bad in [(C, 7, 5), (2, C + 1, 7, 5), (2, C, 7, 5, 1), (2, 7, 5, C)]:
        msg = rf"^attention '{name}': expected input \(N, C, H, W\) with C={C}, got shape \({', '.join(map(str, bad))}\)$"
        with pytest.raises(ValueError, match=msg):
            m(torch.randn(*bad))
    assert m(torch.randn(1, C, 3, 4)).shape == (1, C, 3, 4)


@pytest.mark.parametrize("name", STAGE)
def test_block_with_its_entry_check_pickles(name):
    m = blocks.create(name, C).eval()
    m2 = pickle.loads(pickle.dumps(m))
    x = torch.randn(1, C, 3, 5)
    with torch.no_grad():
        assert torch.equal(m2(x), m(x))
    with pytest.raises(ValueError, match=f"C={C}"):  # the check came along
        m2(torch.randn(C, 3, 5))


@pytest.mark.parametrize("bad", [True, False, 0, -4, 2.0, "32", None])
def test_channels_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=r"^attention 'se': channels must be a positive int, got "):
        blocks.create("se", bad)


@pytest.mark.parametrize("name", STAGE)
def test_dtype_methods_are_not_shadowed(name):
    """``.half()`` etc. are nn.Module's on every block (no attribute of the same name)."""
    module_attrs = set(dir(torch.nn.Module)) - {"training"}
    m = blocks.create(name, C)
    for sub in m.modules():
        own = {k for k in vars(sub) if not k.startswith("_")} | set(sub._modules) | set(sub._parameters)
        assert not own & module_attrs, f"{name}: {type(sub).__name__} shadows {sorted(own & module_attrs)}"
    for method, dtype in [("half", torch.float16), ("bfloat16", torch.bfloat16), ("double", torch.float64),
                          ("float", torch.float32)]:
        assert getattr(m, method)() is m
        assert {p.dtype for p in m.parameters()} <= {dtype}
    x = torch.randn(2, C, 5, 3, dtype=torch.float64)
    m.double().eval()
    assert m(x).dtype == torch.float64


@pytest.mark.parametrize("name", STAGE)
def test_bfloat16_autocast_stays_close_to_float32(name):
    """Under bfloat16 autocast (what ``precision: bf16`` trains with) a block's output and input
    gradient stay within bfloat16's rounding of the float32 block's.  Attention logits are dot
    products over many terms: rounded to bfloat16 they moved CAM's and DANet's outputs and
    gradients far beyond that, and SPA's bfloat16 saliencies picked other top-k positions; they
    are computed in float32 (blocks._softmax.logits_bmm, float32_logits)."""
    from benchmarks.bf16_error import bf16_error, sample_input

    y, g = bf16_error(name, sample_input())  # odd, non-square input at post-ReLU scale
    assert y < 0.015, f"{name}: output {y:.4f} from float32"
    assert g < 0.1, f"{name}: input gradient {g:.4f} from float32"



GRAD_SHAPES = [(1, 9, 1), (1, 1, 9), (2, 5, 3)]  # (N, H, W): batch 1 with a 1-wide axis, odd non-square
GRAD_CASES = [(name, params) for name, cfgs in BLOCK_CONFIGS.items() for params in cfgs]


@pytest.mark.parametrize("name,params", GRAD_CASES, ids=[f"{n}-{p}" for n, p in GRAD_CASES])
@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_gradients_match_finite_differences(name, params, shape, train):
    """Every gradient a block returns (input and parameters, float64) against central finite
    differences, for every configuration of ``BLOCK_CONFIGS``, at batch 1 with a 1-wide map too:
    an intermediate tensor whose strides were unusual for its size-1 dimensions (a reduction's
    output) made PyTorch's CPU batch-norm backward return a wrong input gradient inside GSA
    (one head), with a correct output."""
    from torch.func import functional_call

    if params.get("average_grad"):
        pytest.skip("average_grad replaces a gradient on purpose (the reference code's scaling)")
    n, h, w = shape
    m = blocks.create(name, 8, **params).double()
    randomise(m)
    m.train(train)
    names = [k for k, _ in m.named_parameters()]
    params_in = tuple(p.detach().clone().requires_grad_(True) for _, p in m.named_parameters())
    buffers = {k: b.clone() for k, b in m.named_buffers()}
    x = torch.randn(n, 8, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)

    def f(x, *ps):
        state = {**{k: b.clone() for k, b in buffers.items()}, **dict(zip(names, ps))}
        return functional_call(m, state, (x,))

    assert torch.autograd.gradcheck(f, (x, *params_in), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)
