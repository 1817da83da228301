"""Host-side work of the in-memory loader per batch: gather, random-resized crop, flip.

    python -m benchmarks.host_augment [--res 160,224] [--batch 128] [--rounds 25] [--threads 1]

(from the repository root).  The ``synthetic`` train split (1000 classes, ``batch`` x 20 images
stored at the training resolution: what ``benchmarks.train_throughput --size full`` trains on)
and the ImageNet-style train ops (random-resized crop to ``res``, flip).  Two rows per
resolution, on the same batches, alternating, medians of ``--rounds``:

* **loader** — what :class:`pipeline.data.torch_loader.TensorLoader` runs before a batch goes to
  the device: numpy's ``take`` of the batch, ``batch_rrc`` (one resize per image, on
  ``--threads`` threads; 1: the loop of a CPU trial) and ``batch_flip`` (a copy, the chosen
  images mirrored one by one);
* **plain torch** — the same ops in their direct torch form: the batch gathered by tensor
  indexing, the same crops, then ``torch.where(mask, x.flip(2), x)``.

The two give the same bytes (checked every round).  On a GPU this is the training process's
host work per step before the upload (normalisation runs on the device); on the CPU the
normalisation comes on top.  Figures: docs/loaders.md.
"""
from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from pipeline.data import keyed_random as kr
from pipeline.data.plan import Op
from pipeline.data.synthetic import load_synthetic
from pipeline.data.torch_loader import apply_batch_ops, batch_rrc


def plain_torch(images: torch.Tensor, idx: np.ndarray, rrc: Op, keys: np.ndarray) -> torch.Tensor:
    x = images[torch.from_numpy(idx)]  # (B, H, W, 3)
    x = batch_rrc(x, rrc, keys)
    mask = torch.from_numpy(kr.flips_array(keys))
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(2), x)


def measure(res: int, batch: int, rounds: int, threads: int) -> dict[str, float]:
    array = load_synthetic(1000, res, batch * 20, 8, 0).train.array  # (N, res, res, 3) uint8
    images = torch.from_numpy(array)
    ops = (Op("rrc", res=res), Op("flip"))
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    times: dict[str, list[float]] = {"loader": [], "plain torch": []}
    for r in range(rounds):
        idx = np.random.default_rng(r).permutation(len(array))[:batch]
        keys = kr.sample_keys(kr.epoch_key(0, r), idx)
        runs = {"loader": lambda: apply_batch_ops(torch.from_numpy(array.take(idx, axis=0)), ops, keys, pool),
                "plain torch": lambda: plain_torch(images, idx, ops[0], keys)}
        order = list(runs) if r % 2 else list(reversed(runs))
        out = {}
        for name in order:
            t = time.perf_counter()
            out[name] = runs[name]()
            times[name].append(time.perf_counter() - t)
        if not torch.equal(out["loader"], out["plain torch"]):
            raise AssertionError(f"res {res}, round {r}: the loader's batch differs from the plain torch one")
    if pool is not None:
        pool.shutdown()
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import ArgumentParser, int_list, int_range

    ap = ArgumentParser(prog="python -m benchmarks.host_augment", description=__doc__.split("\n\n")[0])
    ap.add_argument("--res", type=int_list(8, 1024), default=[160, 224], help="comma list of resolutions (px)")
    ap.add_argument("--batch", type=int_range(1, 65_536), default=128)
    ap.add_argument("--rounds", type=int_range(1, 1000), default=25)
    ap.add_argument("--threads", type=int_range(1, 1024), default=1,
                    help="threads for the crops (torch runs one thread each)")
    a = ap.parse_args(argv)
    resolutions = a.res
    torch.set_num_threads(1)  # as the loader does (pipeline.data.torch_loader.one_thread)
    print(f"batch {a.batch}, crop threads {a.threads}, medians of {a.rounds} rounds, torch {torch.__version__}")
    print("| res | loader ms/batch | plain torch ms/batch | plain / loader |\n|---:|---:|---:|---:|")
    for res in resolutions:
        m = measure(res, a.batch, a.rounds, a.threads)
        print(f"| {res} | {m['loader'] * 1e3:.1f} | {m['plain torch'] * 1e3:.1f} | "
              f"{m['plain torch'] / m['loader']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
