"""pipeline.optim against torch.optim: the same numbers, bit for bit, and checkpoints of either kind."""
from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.optim import SGD, StepSchedule
from pipeline.train import param_groups


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 3, 4))


def _batches(n: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 3, 7, 5, generator=g), torch.randint(0, 4, (5,), generator=g)) for _ in range(n)]


def _factor(step: int) -> float:  # warm-up then a decay: the lr changes every step
    return (step + 1) / 4 if step < 3 else 0.9 ** (step - 3)


def _train(net, opt, sched, batches, grads_frozen: bool = False):
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        if grads_frozen:
            grads = [p.grad.clone() for p in net.parameters()]
        opt.step()
        if grads_frozen:
            assert all(torch.equal(g, p.grad) for g, p in zip(grads, net.parameters())), "step changed .grad"
        sched.step()


SETTINGS = [
    dict(momentum=0.0, nesterov=False, weight_decay=0.0, no_decay=False),
    dict(momentum=0.9, nesterov=False, weight_decay=5e-4, no_decay=False),
    dict(momentum=0.9, nesterov=True, weight_decay=5e-4, no_decay=True),
    dict(momentum=0.9, nesterov=True, weight_decay=0.0, no_decay=False),
    dict(momentum=0.5, nesterov=False, weight_decay=1e-2, no_decay=True),
]


def _pair(s):
    """(ours, torch's) optimizers and schedules on two copies of one net."""
    a, b = _net(), _net()
    ours = SGD(param_groups(a, s["weight_decay"], s["no_decay"]), lr=0.1, momentum=s["momentum"], nesterov=s["nesterov"])
    ref = torch.optim.SGD(param_groups(b, s["weight_decay"], s["no_decay"]), lr=0.1, momentum=s["momentum"],
                          nesterov=s["nesterov"])
    return (a, ours, StepSchedule(ours, _factor)), (b, ref, torch.optim.lr_scheduler.LambdaLR(ref, _factor))


def _same(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("s", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_sgd_equals_torch_sgd_bit_for_bit(s):
    (a, ours, sa), (b, ref, sb) = _pair(s)
    batches = _batches(7)
    _train(a, ours, sa, batches, grads_frozen=True)
    _train(b, ref, sb, batches)
    _same(a, b)
    assert sa.get_last_lr() == sb.get_last_lr()
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert set(mine["state"]) == set(theirs["state"])
    for i, st in theirs["state"].items():
        if s["momentum"]:
            assert torch.equal(mine["state"][i]["momentum_buffer"], st["momentum_buffer"])
    assert [g["params"] for g in mine["param_groups"]] == [g["params"] for g in theirs["param_groups"]]


def test_schedule_equals_lambda_lr():
    net = _net()
    ours = StepSchedule(SGD(net.parameters(), lr=0.3), _factor)
    ref = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(_net().parameters(), lr=0.3), _factor)
    for _ in range(9):
        assert ours.get_last_lr() == ref.get_last_lr()
        ours.step()
        ref.optimizer.step()
        ref.step()
    assert ours.state_dict()["last_epoch"] == ref.state_dict()["last_epoch"]


@pytest.mark.parametrize("source", ["ours", "torch"])
def test_resume_from_a_checkpoint_of_either_optimizer(source):
    """Stop after 4 steps, save, load into a fresh SGD: the next 3 steps equal an uninterrupted run
    (a checkpoint written by torch.optim.SGD + LambdaLR loads the same way)."""
    s = SETTINGS[2]
    batches = _batches(7)
    (a, ours, sa), _ = _pair(s)
    _train(a, ours, sa, batches)  # the uninterrupted run
    mine, torchs = _pair(s)
    net, *first = mine if source == "ours" else torchs
    _train(net, *first, batches[:4])
    blob = copy.deepcopy({"model": net.state_dict(), "opt": first[0].state_dict(), "sched": first[1].state_dict()})
    fresh = _net(seed=3)
    fresh.load_state_dict(blob["model"])
    opt = SGD(param_groups(fresh, s["weight_decay"], s["no_decay"]), lr=0.1, momentum=s["momentum"],
              nesterov=s["nesterov"])
    sched = StepSchedule(opt, _factor)
    opt.load_state_dict(blob["opt"])
    sched.load_state_dict(blob["sched"])
    _train(fresh, opt, sched, batches[4:])
    _same(fresh, a)


def test_load_rejects_a_state_of_other_groups():
    net = _net()
    opt = SGD(param_groups(net, 1e-4, True), lr=0.1, momentum=0.9)
    other = SGD(param_groups(net, 1e-4, False), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="does not fit"):
        opt.load_state_dict(other.state_dict())


def test_bad_arguments():
    with pytest.raises(ValueError, match="nesterov"):
        SGD(_net().parameters(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=">= 0"):
        SGD(_net().parameters(), lr=-0.1)
    p = list(_net().parameters())
    with pytest.raises(ValueError, match="more than one group"):
        SGD([{"params": p}, {"params": p[:1]}], lr=0.1)


def test_grad_scaler_drives_it():
    """torch.amp.GradScaler (fp16 training) unscales the grads in our param_groups and calls step:
    the result equals an unscaled step."""
    a, ours, _ = _pair(SETTINGS[1])[0]
    b, ours_b, _ = _pair(SETTINGS[1])[0]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = _batches(1)[0]
    scaler.scale(F.cross_entropy(a(x), y)).backward()
    scaler.step(ours)
    scaler.update()
    F.cross_entropy(b(x), y).backward()
    ours_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert not torch.equal(next(a.parameters()), _net().state_dict()["0.weight"])  # it did step


def test_a_trial_imports_neither_dynamo_nor_inductor(tmp_path):
    """A trial that is not compiled (the default) never imports torch._dynamo / torch._inductor:
    about a second of every fresh Ray worker's first trial (docs/grid.md).  With tracking off it
    does not import MLflow either (benchmarks, GPU machines without MLflow installed)."""
    code = textwrap.dedent(f"""
        import sys
        from pipeline.config import TrialConfig
        from pipeline.train import fit
        cfg = TrialConfig.model_validate({{
            "model": {{"backbone": "cifar_resnet20", "attention": {{"kind": "spa", "stages": [1]}}}},
            "data": {{"dataset": "digits", "batch_size": 64, "workers": 0, "train_res": 16, "val_res": 16}},
            "optim": {{"epochs": 1}}, "threads": 1, "work_dir": {str(tmp_path)!r},
            "tracking": {{"enabled": False}}}})
        fit(cfg)
        loaded = sorted(m for m in ("torch._dynamo", "torch._inductor", "mlflow") if m in sys.modules)
        print("LOADED", loaded)
        import torch
        print("DETERMINISTIC", torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout, out.stdout[-500:]
    assert "DETERMINISTIC True True" in out.stdout  # the flag is set all the same (CPU trials)
