"""Loader throughput, side by side: our FFCV backend, FFCV used directly, our torch backend,
and a plain torch DataLoader over torchvision's ImageFolder.

Our torch backend is measured on the resized JPEG copy (``--format jpeg``, max side 256: the
stored resolution of the .beton files) and, for reference, on the original files
(``ours_torch_orig``).  Both FFCV loaders read the same .beton.

    python -m benchmarks.loaders [--images 3000] [--res 160,224] [--batch 128] [--workers 2]
                                 [--rounds 5] [--data /tmp/attnlab-bench]

It generates an ImageFolder of JPEGs (256-500 px, kept in --data for later runs), writes the
.beton files with our writer (max side 256, the default policy), then measures train-epoch
throughput (random-resized-crop at --res, horizontal flip, normalise; same batch size and
worker count everywhere) in rounds: each round runs every loader once, in a rotated order,
and figures are medians over rounds.  One warm-up epoch per loader is not counted (FFCV
compiles its pipeline then).  FFCV is imported here directly, on purpose: it is one of the
things measured.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


LOADERS = ("ours_ffcv", "ffcv_direct", "ours_torch", "ours_torch_orig", "ours_torch_orig_mainnorm", "plain_torch")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- data
def _picture(rng: np.random.Generator, label: int, h: int, w: int) -> np.ndarray:
    """Photo-like content (smooth shading, a few shapes, mild noise): JPEG sizes like photos."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(30, 220, size=3).astype(np.float32)
    grad = rng.uniform(-0.3, 0.3, size=(2, 3)).astype(np.float32)
    img = base + yy[..., None] * grad[0] + xx[..., None] * grad[1]
    for _ in range(4 + label % 4):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.05, 0.3) * min(h, w)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        img[mask] = rng.uniform(0, 255, size=3)
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root: Path, n: int, classes: int, seed: int = 0) -> Path:
    from PIL import Image

    done = root / f".complete-{n}-{classes}-{seed}"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    n_val = max(classes, n // 10)
    t = time.time()
    for split, count in (("train", n), ("val", n_val)):
        for i in range(count):
            c = i % classes
            d = root / split / f"class{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            h, w = (int(v) for v in rng.integers(256, 501, size=2))
            Image.fromarray(_picture(rng, c, h, w)).save(d / f"{i:06d}.jpg", quality=90)
    done.touch()
    print(f"generated {n} + {n_val} JPEGs in {time.time() - t:.0f} s -> {root}", flush=True)
    return root


# ---------------------------------------------------------------- loaders
def ours(backend: str, folder: Path, betons: Path, res: int, batch: int, workers: int,
         jpeg_dir=None, main_normalise: bool = False):
    from pipeline.config import DataConfig
    from pipeline.data import make_loaders
    from pipeline.data.torch_loader import FileLoader

    cfg = DataConfig(dataset="imagefolder", root=folder, backend=backend, beton_dir=betons,
                     jpeg_dir=jpeg_dir, train_res=res, batch_size=batch, workers=workers,
                     augment="imagenet")
    FileLoader.finish_in_workers = not main_normalise  # the previous design, for comparison
    try:
        return make_loaders(cfg)[0]
    finally:
        FileLoader.finish_in_workers = True


def ffcv_direct(betons: Path, res: int, batch: int, workers: int):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import (NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor,
                                 ToTorchImage)

    image = [RandomResizedCropRGBImageDecoder((res, res)), RandomHorizontalFlip(),
             NormalizeImage(np.array(MEAN) * 255, np.array(STD) * 255, np.float32),
             ToTensor(), ToTorchImage()]
    label = [IntDecoder(), ToTensor(), Squeeze()]
    return Loader(str(betons / "train.beton"), batch_size=batch, num_workers=workers,
                  order=OrderOption.RANDOM, os_cache=True, drop_last=True,
                  pipelines={"image": image, "label": label})


def plain_torch(folder: Path, res: int, batch: int, workers: int):
    import torch
    import torchvision
    import torchvision.transforms as T

    tf = T.Compose([T.RandomResizedCrop(res), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(MEAN, STD)])
    ds = torchvision.datasets.ImageFolder(str(folder / "train"), transform=tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                       drop_last=True)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, its live descendants (persistent workers)
    and its finished children (workers that ended with their epoch)."""
    import resource

    import psutil

    me = psutil.Process()
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = sum(me.cpu_times()[:2]) + done.ru_utime + done.ru_stime
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def epoch(loader) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds of this process and its workers) of one epoch.

    CPU seconds per image is the loader's work, which the other jobs of a shared machine
    barely change; wall time is what a dedicated machine would see only when idle."""
    n = 0
    c = cpu_seconds()
    t = time.perf_counter()
    for x, y in loader:
        n += len(y)
    return n, time.perf_counter() - t, cpu_seconds() - c


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    from pipeline.errors import ArgumentParser, file_problem, folder_problem, int_list, int_range, name_list, path_flag_problem

    p = ArgumentParser(prog="python -m benchmarks.loaders", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int_range(1, 10_000_000), default=3000)
    p.add_argument("--classes", type=int_range(1, 100_000), default=10)
    p.add_argument("--res", type=int_list(8, 1024), default=[160, 224])
    p.add_argument("--batch", type=int_range(1, 65_536), default=128)
    p.add_argument("--workers", type=int_range(0, 512), default=2)
    p.add_argument("--rounds", type=int_range(1, 1000), default=5)
    p.add_argument("--data", default="/tmp/attnlab-bench")
    p.add_argument("--only", type=name_list(LOADERS, "loader"), default=None, help=f"comma list of loaders to run (default all: {', '.join(LOADERS)})")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.classes > args.images:
        p.error(f"--classes ({args.classes}) must not exceed --images ({args.images})")
    if args.batch > args.images:  # every loader drops the last partial batch
        p.error(f"--batch ({args.batch}) must not exceed --images ({args.images}): an epoch would hold no batch")
    def data_folder_problem(path: Path):  # judged only: made once every flag passed
        return folder_problem(path, create=False)

    for flag, value, check in (("--data", args.data, data_folder_problem), ("--json", args.json, file_problem)):
        if value is not None:
            problem = path_flag_problem(value, check)
            if problem:
                p.error(f"{flag} {value!r}: {problem}")

    data = Path(args.data).resolve()
    folder = make_folder(data / f"imagefolder-{args.images}", args.images, args.classes)
    betons = data / f"betons-{args.images}"
    jpeg = data / f"jpeg-{args.images}"
    only = set(args.only) if args.only is not None else None
    from pipeline.config import DataConfig
    from pipeline.data import ensure_betons

    if only is None or only & {"ours_ffcv", "ffcv_direct"}:
        t = time.time()
        ensure_betons(DataConfig(dataset="imagefolder", root=folder, beton_dir=betons,
                                 workers=args.workers), progress=True)
        print(f"betons ready in {time.time() - t:.0f} s: {betons}", flush=True)
    if only is None or "ours_torch" in only:
        from pipeline.data import get_dataset, load_source
        from pipeline.data.jpeg_store import jpeg_policy, write_jpeg_store

        t = time.time()
        cfg = DataConfig(dataset="imagefolder", root=folder)
        write_jpeg_store(get_dataset("imagefolder"), load_source(cfg), jpeg_policy(cfg), jpeg,
                         workers=args.workers, progress=False)
        print(f"JPEG copy (max side 256) ready in {time.time() - t:.0f} s: {jpeg}", flush=True)

    results = {}
    for res in args.res:
        makers = {
            "ours_ffcv": lambda: ours("ffcv", folder, betons, res, args.batch, args.workers),
            "ffcv_direct": lambda: ffcv_direct(betons, res, args.batch, args.workers),
            "ours_torch": lambda: ours("torch", folder, betons, res, args.batch, args.workers,
                                       jpeg_dir=jpeg),
            "ours_torch_orig": lambda: ours("torch", folder, betons, res, args.batch,
                                            args.workers),
            "ours_torch_orig_mainnorm": lambda: ours("torch", folder, betons, res, args.batch,
                                                     args.workers, main_normalise=True),
            "plain_torch": lambda: plain_torch(folder, res, args.batch, args.workers),
        }
        if only is not None:
            makers = {k: v for k, v in makers.items() if k in only}
        loaders = {}
        for name, make in makers.items():
            t = time.perf_counter()
            loaders[name] = make()
            n, dt, _ = epoch(loaders[name])  # warm-up: FFCV compiles here
            print(f"res {res} {name:12s} built {time.perf_counter() - t - dt:5.1f} s, "
                  f"warm-up epoch {n} img in {dt:5.1f} s", flush=True)
        rates: dict[str, list[float]] = {k: [] for k in loaders}
        cpu_ms: dict[str, list[float]] = {k: [] for k in loaders}
        names = list(loaders)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                n, dt, cpu = epoch(loaders[name])
                rates[name].append(n / dt)
                cpu_ms[name].append(1000 * cpu / n)
            print(f"res {res} round {r + 1}: " + "  ".join(
                f"{k} {rates[k][-1]:6.0f} img/s {cpu_ms[k][-1]:5.2f} cpu-ms/img" for k in names),
                flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}
        results[res] = {"median_img_s": med, "runs": rates,
                        "median_cpu_ms_per_img": {k: statistics.median(v)
                                                  for k, v in cpu_ms.items()},
                        "cpu_runs": cpu_ms}
        del loaders
    print()
    print(f"images {args.images} (+val), 256-500 px JPEG; betons max side 256; batch "
          f"{args.batch}; workers {args.workers}; rounds {args.rounds}; cpus {os.cpu_count()}")
    print("| loader | " + " | ".join(f"crop {r} img/s | crop {r} CPU ms/img" for r in results)
          + " |")
    print("|---|" + "---|---|" * len(results))
    for name in next(iter(results.values()))["median_img_s"]:
        print(f"| {name} | " + " | ".join(
            f"{results[r]['median_img_s'][name]:.0f} | "
            f"{results[r]['median_cpu_ms_per_img'][name]:.2f}" for r in results) + " |")
    print("paired ratios (median over rounds of the ratio within each round):")
    for r, res_ in results.items():
        runs = res_["runs"]
        pairs = [(k, "plain_torch") for k in ("ours_ffcv", "ffcv_direct", "ours_torch",
                                              "ours_torch_orig", "ours_torch_orig_mainnorm")]
        pairs += [("ours_ffcv", "ffcv_direct"), ("ours_torch_orig", "ours_torch_orig_mainnorm")]
        ratios, cpu_ratios = {}, {}
        for a, b in pairs:
            if a in runs and b in runs:
                ratios[f"{a}/{b}"] = statistics.median(x / y for x, y in zip(runs[a], runs[b]))
                cruns = res_["cpu_runs"]  # speed-up in work per image: b's CPU time / a's
                cpu_ratios[f"{a}/{b}"] = statistics.median(
                    y / x for x, y in zip(cruns[a], cruns[b]))
        res_["paired_ratios"], res_["paired_cpu_ratios"] = ratios, cpu_ratios
        print(f"  crop {r} wall: " + "  ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
        print(f"  crop {r} CPU:  " + "  ".join(f"{k} {v:.2f}" for k, v in cpu_ratios.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
