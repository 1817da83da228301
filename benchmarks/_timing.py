"""Interleaved timing rounds, shared by the benchmarks that compare callables side by side."""
from __future__ import annotations

import time
from typing import Callable


def interleaved_ms(runs: dict[str, Callable[[], object]], repeats: int, warm_up: bool = True) -> dict[str, list[float]]:
    """Times of each callable in ms, ``repeats`` rounds in which every one runs in turn: once
    untimed (it re-warms the caches and the allocator after the one before), then timed.  Rounds
    spread a shared machine's slow spells evenly over the callables; ``warm_up`` runs each once
    before the first round."""
    if warm_up:
        for f in runs.values():
            f()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, f in runs.items():
            f()
            t0 = time.perf_counter()
            f()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times
