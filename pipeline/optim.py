"""The trainer's optimizer and learning-rate schedule: SGD with momentum, and a per-step factor.

Why not ``torch.optim.SGD`` and ``torch.optim.lr_scheduler.LambdaLR``: every
``torch.optim.Optimizer`` method (the constructor's ``add_param_group``, ``zero_grad``,
``step``, ``state_dict``) imports ``torch._dynamo`` on its first call, with ``torch._inductor``
and sympy: in every fresh process, paid by the first trial of every Ray worker (docs/grid.md)
although no trial of ours is compiled unless ``compile: true``.
The update itself is a few lines, and it is checked against ``torch.optim.SGD`` bit for bit
(``tests/test_optim.py``).

:class:`SGD` computes exactly what ``torch.optim.SGD`` computes with ``dampening=0`` and
``maximize=False`` (the only settings a trial config can ask for)::

    g = grad + weight_decay * p
    b = g                      (first step)       b = momentum * b + g   (later steps)
    g = g + momentum * b       (nesterov)         g = b                  (otherwise)
    p = p - lr * g

with the same tensor operations in the same order (``_foreach_*`` over a group's parameters),
so a run is the same whichever of the two optimizers it uses. Its ``state_dict`` has the layout
of ``torch.optim.SGD``'s (``state`` keyed by parameter index, ``param_groups`` with ``params``
as indices), and :meth:`SGD.load_state_dict` reads checkpoints written by ``torch.optim.SGD``.
It works with ``torch.amp.GradScaler``, which reads ``param_groups`` and calls ``step()``.

:class:`StepSchedule` sets ``lr = base_lr * factor(step)`` after every ``step()`` — what
``LambdaLR`` does — and reads ``LambdaLR`` state dicts (``base_lrs``, ``last_epoch``).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

_GROUP_DEFAULTS = ("lr", "momentum", "weight_decay", "nesterov")


class SGD:
    """SGD with (Nesterov) momentum and per-group weight decay; see the module docstring."""

    def __init__(self, groups: Iterable[dict[str, Any]] | Iterable[torch.nn.Parameter], *, lr: float,
                 momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0 (got {lr}, {momentum}, {weight_decay})")
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov needs a momentum > 0")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov}
        groups = list(groups)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        seen: set[int] = set()
        for g in groups:
            params = list(g["params"])
            if any(id(p) in seen for p in params):
                raise ValueError("SGD: a parameter appears in more than one group")
            seen.update(id(p) for p in params)
            unknown = set(g) - {"params", *_GROUP_DEFAULTS}
            if unknown:
                raise ValueError(f"SGD: unknown group keys {sorted(unknown)}")
            self.param_groups.append({**defaults, **{k: v for k, v in g.items() if k != "params"},
                                      "params": params})

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            decayed = g["weight_decay"] != 0
            if decayed:
                grads = torch._foreach_add(grads, params, alpha=g["weight_decay"])  # new tensors
            momentum = g["momentum"]
            if momentum != 0:
                bufs = [self.state.get(p, {}).get("momentum_buffer") for p in params]
                if all(b is not None for b in bufs):
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, grads)
                else:
                    for i, (p, b) in enumerate(zip(params, bufs)):
                        if b is None:
                            bufs[i] = torch.clone(grads[i]).detach()
                            self.state.setdefault(p, {})["momentum_buffer"] = bufs[i]
                        else:
                            b.mul_(momentum).add_(grads[i])
                if g["nesterov"]:
                    if decayed:  # grads are our own tensors
                        torch._foreach_add_(grads, bufs, alpha=momentum)
                    else:  # grads are the .grad tensors: not changed in place
                        grads = torch._foreach_add(grads, bufs, alpha=momentum)
                else:
                    grads = bufs
            torch._foreach_add_(params, grads, alpha=-g["lr"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.zero_()

    # -- checkpoints (the layout of torch.optim.SGD's) -----------------------------------------
    def state_dict(self) -> dict[str, Any]:
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                ids.append(index.setdefault(id(p), len(index)))
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: {"momentum_buffer": s["momentum_buffer"]}
                 for g in self.param_groups for p in g["params"] if (s := self.state.get(p))}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, blob: dict[str, Any]) -> None:
        groups = blob.get("param_groups")
        if not isinstance(groups, list) or len(groups) != len(self.param_groups) or any(
                len(a["params"]) != len(b.get("params", ())) for a, b in zip(self.param_groups, groups)):
            raise ValueError("optimizer state does not fit this model's parameter groups")
        by_index: dict[int, torch.Tensor] = {}
        for mine, saved in zip(self.param_groups, groups):
            for key in _GROUP_DEFAULTS:
                if key in saved:
                    mine[key] = saved[key]
            for p, i in zip(mine["params"], saved["params"]):
                by_index[i] = p
        self.state = {}
        for i, s in blob.get("state", {}).items():
            p = by_index[int(i)]
            buf = s.get("momentum_buffer")
            if buf is not None:
                self.state[p] = {"momentum_buffer": buf.to(device=p.device, dtype=p.dtype).clone()}


class StepSchedule:
    """``lr = base_lr * factor(step)`` for every group, set now (step 0) and after each ``step()``."""

    def __init__(self, optimizer: SGD, factor: Callable[[int], float]):
        self.optimizer, self.factor = optimizer, factor
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_epoch = 0  # LambdaLR's name for the number of steps taken
        self._apply()

    def _apply(self) -> None:
        f = self.factor(self.last_epoch)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}

    def load_state_dict(self, blob: dict[str, Any]) -> None:
        self.base_lrs = list(blob["base_lrs"])
        self.last_epoch = int(blob["last_epoch"])
        self._apply()
