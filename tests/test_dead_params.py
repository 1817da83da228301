"""No dead parameters of our own making (float64 gradients, every registered block).

A parameter is dead when no input can move the output through it: its gradient is zero for
every input.  We test on a generic point — random weights, random BN statistics, a random
non-square odd input, a random projection of the output — in float64, where a dead
parameter's gradient is exactly 0 or rounding noise (~1e-16 of the largest gradient) and a
live one is not.  The allow-list holds only parameters that are dead by construction but kept
because the papers' reference code has them (so parameter counts keep matching); each must
really be dead (the list cannot go stale) and is named in its block's docstring.
"""
import pytest
import torch

import blocks
from _reference import BLOCK_CONFIGS

C = 24
X_SHAPE = (2, C, 7, 5)  # batch 2 (training-mode BN), odd, non-square
REL_TOL = 1e-10  # dead: max|grad| < REL_TOL · (largest max|grad| of the block)

CONFIGS = BLOCK_CONFIGS

# (block, parameter) -> the modes in which it is dead by construction, and why.
ALLOWED = {
    # a key bias b adds q_p·b to every score of query p: constant over the keys, the softmax
    # over keys cancels it (present in DANet's official code)
    ("pam", "key.bias"): ("train", "eval"),
    ("danet", "pam.key.bias"): ("train", "eval"),
    # the same for the non-local φ (embedded Gaussian, softmax over j; in both reference codes)
    ("nonlocal", "phi.bias"): ("train", "eval"),
    # a bias right before a training-mode BN is removed by its mean subtraction
    # (g.bias passes through the softmax-weighted average unchanged: the rows sum to 1)
    ("nonlocal", "g.bias"): ("train",),
    ("nonlocal", "out.bias"): ("train",),
    ("spa", "out.bias"): ("train",),
}


def randomise(m: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for b in m.buffers():
            if b.is_floating_point() and b.dim() == 1:  # BN running stats
                b.copy_(b.abs() + 0.5 * torch.rand(b.shape, generator=g, dtype=b.dtype))


def dead_parameters(m: torch.nn.Module, forward, mode: str) -> tuple[list[str], dict[str, float]]:
    """Names whose gradient is (numerically) zero, and every parameter's max|grad|."""
    m.train(mode == "train")
    m.zero_grad(set_to_none=True)
    out = forward(m)
    r = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(2))
    (out * r).sum().backward()
    size = {n: (p.grad.abs().max().item() if p.grad is not None else 0.0) for n, p in m.named_parameters()}
    top = max(size.values())
    assert top > 0, "no parameter got a gradient at all"
    return [n for n, s in size.items() if s < REL_TOL * top], size


def test_configs_cover_the_registry():
    assert set(CONFIGS) == set(blocks.names("stage"))
    assert {name for name, _ in ALLOWED} <= set(CONFIGS)


CASES = [(name, params) for name, cfgs in CONFIGS.items() for params in cfgs]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_stage_block_has_no_dead_parameter(name, params, mode):
    m = blocks.create(name, C, **params).double()
    randomise(m)
    x = torch.randn(*X_SHAPE, dtype=torch.float64)
    dead, size = dead_parameters(m, lambda mod: mod(x), mode)
    allowed = {p for (b, p), modes in ALLOWED.items() if b == name and mode in modes}
    assert not set(dead) - allowed, f"{name} {params} ({mode}): dead parameters {sorted(set(dead) - allowed)}"
    if not params:  # the allow-list holds only parameters that are really dead
        present = allowed & set(size)
        assert present == allowed, f"{name}: allow-listed but absent: {sorted(allowed - present)}"
        assert set(dead) == allowed, f"{name} ({mode}): allow-listed but live: {sorted(allowed - set(dead))}"


# replace_conv: a training-mode BN follows the block directly and cancels any per-channel
# constant the block adds — its output bias, like a conv bias before BN (blocks.insert says so).
REPLACE_CONV_SHIFTS = {
    "pam": {"value.bias"}, "danet": {"pam.value.bias"}, "nonlocal": {"bn.bias"}, "spa": {"bn.bias"},
    "gaussian": {"bn.bias"},
}


def nudge(m: torch.nn.Module, seed: int = 1) -> None:
    """Move every parameter off its initial value at its own scale (zeros to ±0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.copy_(p * (1 + 0.2 * noise) if p.abs().max() > 0 else 0.1 * noise)


# At C = 32 a reduction of 16 leaves 2 hidden ReLUs; fed a BN output (zero mean per channel)
# their sign is the bias's, so both can be off at a random point.  More units avoid that.
IN_NET_PARAMS = {"se": {"reduction": 4}, "cbam": {"reduction": 4}}


@pytest.mark.parametrize("slot", ["gate", "after_block", "stage_end", "replace_conv"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_stage_block_in_every_slot_has_no_dead_parameter(name, slot):
    """Inside a network (training mode), in each slot."""
    if (name, slot) == ("gsa", "after_block"):
        pytest.skip("GSA's positional branch is cubic in its input: six in a row with no BN after "
                    "them overflow the scale (softmax saturates), see blocks/backbones/gsa_resnet.py")
    spec = {"kind": name, "slot": slot, "stages": [2, 3], **IN_NET_PARAMS.get(name, {})}
    m = blocks.build_model("cifar_resnet20", 10, attention=spec)
    m = m.double()
    for a in m.attention_modules:
        nudge(a)
    x = torch.randn(2, 3, 15, 13, dtype=torch.float64)
    dead, _ = dead_parameters(m, lambda mod: mod(x), "train")
    allowed = {p for (b, p), modes in ALLOWED.items() if b == name and "train" in modes}
    if slot == "replace_conv":
        allowed |= REPLACE_CONV_SHIFTS.get(name, set())
    local = {}  # model parameter name -> its name inside its attention module
    for a in m.attention_modules:
        ids = {id(p): n for n, p in a.named_parameters()}
        local.update({n: ids[id(p)] for n, p in m.named_parameters() if id(p) in ids})
    bad = [n for n in dead if local.get(n) not in allowed]
    assert not bad, f"{name} in {slot}: dead parameters {bad}"


MODEL_CASES = [
    ("ltpa", {}),
    ("ltpa", {"compat": "dp", "stages": [-1, 2], "global_dim": 24}),
    ("ltpa", {"normalise": "sigmoid", "aggregate": "indep"}),
    ("pyramid", {"dim": 8}),
    ("pyramid", {"dim": 8, "interaction": "none", "normalise": "sigmoid", "with_gap": True}),
    ("pyramid", {"dim": 8, "stages": [2, 3]}),
]


@pytest.mark.parametrize("name,params", MODEL_CASES, ids=[f"{n}-{p}" for n, p in MODEL_CASES])
def test_model_level_attention_has_no_dead_parameter(name, params):
    assert {n for n, _ in MODEL_CASES} == set(blocks.names("model"))
    m = blocks.build_model("cifar_resnet20", 10, attention={"kind": name, **params}).double()
    randomise(m)
    x = torch.randn(2, 3, 15, 13, dtype=torch.float64)
    dead, _ = dead_parameters(m, lambda mod: mod(x), "train")
    assert not dead, f"{name} {params}: dead parameters {dead}"


def test_the_check_finds_a_dead_parameter():
    """The detector itself: a bias added before a softmax over the same axis is found."""
    class ShiftedSoftmax(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(C, dtype=torch.float64))
            self.b = torch.nn.Parameter(torch.randn(1, dtype=torch.float64))

        def forward(self, x):
            s = torch.einsum("nchw,c->nhw", x, self.w).flatten(1) + self.b  # (N, HW)
            return x * s.softmax(-1).view(x.shape[0], 1, *x.shape[2:])

    x = torch.randn(*X_SHAPE, dtype=torch.float64)
    dead, _ = dead_parameters(ShiftedSoftmax(), lambda mod: mod(x), "train")
    assert dead == ["b"]
