"""blocks.cost: SPA's added compute against non-local's at every stage, and the forms report."""
from __future__ import annotations

import json

import pytest
import torch

import blocks
from blocks.cost import count_macs, describe_forms, main, model_cost

# (backbone, stages): SPA (stage_end) and non-local (after_block, every 2nd) one stage at a time
STAGES = [("resnet50", s) for s in (1, 2, 3, 4)] + [
    (b, s) for b in ("cifar_resnet20", "cifar_resnet56") for s in (1, 2, 3)
]


def _added_gmacs(backbone: str, kind: str, stage: int) -> float:
    out = model_cost(backbone, {"kind": kind, "stages": [stage]})
    return out["gmacs"] - out["backbone_gmacs"]


@pytest.mark.parametrize("backbone,stage", STAGES)
def test_spa_adds_no_more_macs_than_nonlocal(backbone, stage):
    spa, nl = _added_gmacs(backbone, "spa", stage), _added_gmacs(backbone, "nonlocal", stage)
    assert 0 < spa <= nl, (backbone, stage, spa, nl)


def test_spa_resnet50_stage4_near_the_per_pixel_count():
    """7×7, C = 2048, C' = 1024, k = 12: θ on all 49 positions, θ_K, the Gram matrix and the
    per-pixel value path — and not the folded one's C·C'·(C'+C) ≈ 6.4 GMACs."""
    c, cp, hw, k = 2048, 1024, 49, 12
    expected = c * cp * hw + c * cp * k + cp * cp * k + hw * (2 * c * cp + cp * cp)
    assert _added_gmacs("resnet50", "spa", 4) == pytest.approx(expected / 1e9, rel=1e-3)


def test_describe_forms_lists_each_spa_call():
    model = blocks.build_model("resnet50", 10, attention={"kind": "spa", "stages": [1, 2, 3, 4]})
    forms = describe_forms(model, (224, 224))
    assert [(f["block"], f["input"], f["form"]) for f in forms] == [
        ("spa", [56, 56], "folded"), ("spa", [28, 28], "per_pixel"),
        ("spa", [14, 14], "per_pixel"), ("spa", [7, 7], "per_pixel"),
    ]
    names = dict(model.named_modules())
    assert all(f["module"] in names for f in forms)
    # the form follows the input size: at 448 px stage 2 (56×56, C = 512) folds too
    assert [f["form"] for f in describe_forms(model, (448, 448))][:2] == ["folded", "folded"]
    # no form-choosing block: empty
    assert describe_forms(blocks.build_model("cifar_resnet20", 10, attention={"kind": "se"}), (32, 32)) == []


def test_json_carries_forms(capsys):
    assert main(["--backbone", "cifar_resnet20", "--attention", "spa", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [f["form"] for f in out["forms"]] == ["folded", "folded", "per_pixel"]  # 32², 16², 8²
    assert main(["--backbone", "cifar_resnet20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["forms"] == []


@pytest.mark.parametrize("argv, needle", [
    (["--backbone", "resnet50", "--attention", "se", "--param", "reduction=abc"], "reduction: expected an integer"),
    (["--backbone", "resnet50", "--attention", "gaussian", "--param", "radius=wide"], "radius"),
    (["--backbone", "resnet50", "--attention", "se", "--param", "reduction=true"], "reduction"),
    (["--backbone", "resnet50", "--bogus"], "unknown flag --bogus"),
    (["--backbone", "nope"], "nope"),
    (["--backbone", "resnet50", "--input", "100000"], "--input must be 1..2048 px"),
    (["--backbone", "resnet50", "--input", "0"], "--input must be 1..2048 px"),
    (["--backbone", "resnet50", "--num-classes", "0"], "--num-classes must be >= 1"),
    (["--backbone", "resnet50", "--attention", "nonlocal", "--every", "0"], "--every must be >= 1"),
    # a --param that names a placement key silently replaced the block or its stages
    (["--backbone", "cifar_resnet20", "--attention", "se", "--param", "kind=spa"], "--param kind: give it as --attention"),
    (["--backbone", "cifar_resnet20", "--attention", "se", "--param", "stages=1"], "--param stages: give it as --stages"),
    (["--backbone", "cifar_resnet20", "--attention", "nonlocal", "--param", "slot=gate"], "--param slot"),
    # the same parameter twice: the last one silently won
    (["--backbone", "cifar_resnet20", "--attention", "spa", "--param", "topk_ratio=0.1", "--param", "topk_ratio=0.5"],
     "--param topk_ratio given twice"),
    # inputs a backbone cannot run on printed figures (a 16-px ResNet-50 has no pixel left at stage 4)
    (["--backbone", "resnet50", "--input", "16"], "16x16 px is below the 32 px that resnet50 needs"),
    (["--backbone", "resnet50", "--attention", "nonlocal", "--stages", "4", "--input", "32"],
     "below the 64 px that resnet50 with attention at stage 4 needs"),
    (["--backbone", "cifar_resnet20", "--attention", "se", "--input", "7"], "below the 8 px"),
    # 100M classes: a 25 GB classifier, then an allocation traceback
    (["--backbone", "cifar_resnet20", "--num-classes", "100000000"], "at most 100,000"),
])
def test_cost_cli_bad_input_is_one_line(argv, needle):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "blocks.cost", *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    first = r.stderr.strip().splitlines()[0]
    assert needle in first and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if "error" in ln]) == 1


@pytest.mark.parametrize("attention", [None, *blocks.names()])
def test_count_macs_equals_torchs_flop_counter(attention):
    """``count_macs`` applies torch's FLOP formulas in its own dispatch mode (no torch._dynamo
    import): on every block, at an odd non-square input, it counts what torch's counter counts."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = None if attention is None else {"kind": attention}
    model = blocks.build_model("cifar_resnet20", 10, attention=spec).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 19, 13))
    assert count_macs(model, (19, 13)) == counter.get_total_flops() // 2 > 0
