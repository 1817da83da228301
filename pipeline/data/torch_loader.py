"""The plain PyTorch backend: same :class:`~pipeline.data.plan.Plan` as FFCV, no FFCV.

* In-memory splits (CIFAR, digits, small synthetic) go through :class:`TensorLoader`: whole
  batches are gathered from one uint8 tensor and augmented with vectorised tensor ops in the
  main process (no worker start-up; tens of thousands of images per second on one core); the
  per-image random-resized crops run on ``data.workers`` threads when training on a GPU.
* File splits (ImageFolder, ImageNet, Tiny-ImageNet) and generated ones go through
  :class:`FileLoader`: a ``torch.utils.data.DataLoader`` whose workers read bytes, decode with
  ``torchvision.io.decode_jpeg`` (libjpeg-turbo) and augment uint8 tensors the way
  ``transforms.v2`` does, but resizing channels-last (torch's uint8 antialiased kernel is about
  twice as fast on that layout, which is also the HWC layout batches are stacked in).  For a
  CUDA device workers hand back uint8 NHWC batches (a quarter of float32's bytes), normalised
  on the device; for the CPU they finish the batch themselves (:class:`WorkerBatch`), so the
  main process, which also trains, does no per-pixel work.

Random choices come from :mod:`pipeline.data.keyed_random`, keyed by (seed, epoch, index).
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import keyed_random as kr
from .loader import Loader, Normaliser, ShardSampler, epoch_indices
from .plan import Op, Plan, SplitPlan
from .source import Source, Split

# ---------------------------------------------------------------- geometry shared by both paths
def fit_window(h: int, w: int, ratio: float) -> tuple[int, int, int]:
    """(top, left, side) of the centred square that ``fit`` keeps."""
    side = max(1, int(ratio * min(h, w)))
    return (h - side) // 2, (w - side) // 2, side


# ---------------------------------------------------------------- per-sample transforms (workers)
class Fit(torch.nn.Module):
    """Centred square crop of side ``int(ratio * min(h, w))``, resized to ``res x res``."""

    def __init__(self, res: int, ratio: float = 1.0):
        super().__init__()
        self.res, self.ratio = res, ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # C x H x W
        h, w = x.shape[-2:]
        if self.ratio == 1.0 and h == w == self.res:
            return x
        top, left, side = fit_window(h, w, self.ratio)
        return resize_cl(x[..., top:top + side, left:left + side], self.res)


def resize_cl(x: torch.Tensor, res: int) -> torch.Tensor:
    """uint8 C x h x w (any strides) -> C x res x res with channels-last strides.

    Antialiased bilinear, like ``transforms.v2.Resize``; torch's uint8 kernel is about twice
    as fast on channels-last input, and the result is already the HWC layout batches use.
    """
    if x.shape[-2:] == (res, res):
        return x
    y = x.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    return F.interpolate(y, size=(res, res), mode="bilinear", antialias=True,
                         align_corners=False)[0]


class SampleTransform:
    """The plan's ops on one uint8 3 x H x W image -> uint8 res x res x 3 (HWC).

    Random choices come from :mod:`~pipeline.data.keyed_random` for the sample's key (seed,
    epoch, index): the same windows, offsets and flips as the FFCV backend and the in-memory
    path, in any worker and after any resume.
    """

    def __init__(self, ops: tuple[Op, ...], seed: int = 0):
        self.ops = ops
        self.seed = seed

    def key(self, index: int, epoch: int) -> int:
        return kr.sample_key(kr.epoch_key(self.seed, epoch), index)

    def __call__(self, x: torch.Tensor, index: int = 0, epoch: int = 0) -> torch.Tensor:
        return self.run(x, self.key(index, epoch), self.ops)

    def from_file(self, path: str, index: int = 0, epoch: int = 0) -> torch.Tensor:
        """Read, decode (libjpeg-turbo) and transform one image file."""
        from torchvision.io import read_file

        return self.run(decode(read_file(path)), self.key(index, epoch), self.ops)

    @staticmethod
    def run(x: torch.Tensor, key: int, ops) -> torch.Tensor:
        for op in ops:
            h, w = x.shape[-2:]
            if op.kind == "rrc":
                top, left, ch, cw = kr.rrc_window(h, w, op.scale, op.aspect, key)
                x = resize_cl(x[:, top:top + ch, left:left + cw], op.res)
            elif op.kind == "fit":
                if not (op.ratio == 1.0 and h == w == op.res):
                    top, left, side = fit_window(h, w, op.ratio)
                    x = resize_cl(x[:, top:top + side, left:left + side], op.res)
            elif op.kind == "padcrop":
                p = op.padding
                dy, dx = kr.offset(key, p, 0), kr.offset(key, p, 1)
                x = F.pad(x, (p, p, p, p))[:, dy:dy + h, dx:dx + w]
            elif op.kind == "flip":
                if kr.flip(key):
                    x = x.flip(-1)
            else:  # pragma: no cover
                raise ValueError(op.kind)
        return x.permute(1, 2, 0).contiguous()


def sample_transform(ops: tuple[Op, ...], seed: int = 0) -> SampleTransform:
    return SampleTransform(ops, seed)


def decode(data: torch.Tensor) -> torch.Tensor:
    """Encoded bytes -> uint8 3 x H x W (libjpeg-turbo for JPEG)."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    if data.numel() > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8:
        return decode_jpeg(data, mode=ImageReadMode.RGB)
    return decode_image(data, mode=ImageReadMode.RGB)


class SampleDataset(torch.utils.data.Dataset):
    def __init__(self, split: Split, transform):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item):
        i, epoch = item if isinstance(item, tuple) else (item, 0)  # the sampler sends (i, epoch)
        s = self.split
        if s.paths is not None:
            x = self.transform.from_file(s.paths[i], i, epoch)
        else:
            x = self.transform(torch.from_numpy(np.ascontiguousarray(s.image(i))).permute(2, 0, 1),
                               i, epoch)
        return x, int(s.labels[i])  # HWC: the DataLoader stacks NHWC batches


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class WorkerBatch:
    """collate_fn that finishes CPU batches in the DataLoader workers: normalise the uint8 HWC
    samples into one float32 batch (channels_last or contiguous, as the plan asks), written
    straight into shared memory.  On 2 cores, normalising in the main process (3 passes over a
    float batch) took as long as a worker's decoding; spread over the workers it runs in parallel.

    A sample at a time, each sample's two passes (subtract the mean, times 1/std) run while it is
    in the cache, and with channels_last over rows of W·3 values against a repeated (mean, std)
    pattern, so the inner loop is long and contiguous rather than 3 wide; the result is the same
    float arithmetic as ``(x.float() - mean) * (1 / std)``, bit for bit."""

    def __init__(self, plan: Plan):
        self.channels_last = plan.channels_last
        self.mean = torch.tensor([m * 255.0 for m in plan.mean])  # (3,)
        self.inv_std = torch.tensor([1.0 / (s * 255.0) for s in plan.std])  # (3,)
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _row(self, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1/std) repeated along a row of W pixels: (W·3,) each."""
        if w not in self._rows:
            self._rows[w] = (self.mean.repeat(w), self.inv_std.repeat(w))
        return self._rows[w]

    def __call__(self, samples):
        xs, ys = zip(*samples)
        n, (h, w, c) = len(xs), xs[0].shape
        shape = (n, h, w * c) if self.channels_last else (n, c, h, w)
        if torch.utils.data.get_worker_info() is not None:  # sent to the main process without a copy:
            # allocated in shared memory (share_memory_() on a new tensor would copy it there)
            storage = torch.UntypedStorage._new_shared(n * h * w * c * 4)
            out = torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)
        else:
            out = torch.empty(shape, dtype=torch.float32)
        if self.channels_last:
            mean, inv_std = self._row(w)
            for o, s in zip(out, xs):  # (H, W·3) rows: float(x) − mean, then × 1/std
                torch.sub(s.reshape(h, w * c), mean, out=o).mul_(inv_std)
            x = out.view(n, h, w, c).permute(0, 3, 1, 2)  # N×3×H×W, channels_last
        else:
            mean, inv_std = self.mean.view(c, 1, 1), self.inv_std.view(c, 1, 1)
            for o, s in zip(out, xs):  # (3, H, W)
                torch.sub(s.permute(2, 0, 1), mean, out=o).mul_(inv_std)
            x = out
        return x, torch.tensor(ys, dtype=torch.int64)


class FileLoader(Loader):
    backend = "torch"
    finish_in_workers = True  # False: normalise CPU batches in the main process (benchmarks)

    def __init__(self, split: Split, split_plan: SplitPlan, plan: Plan, *, device, rank: int,
                 world_size: int):
        self.sampler = ShardSampler(len(split), shuffle=split_plan.shuffle, seed=plan.seed,
                                    rank=rank, world_size=world_size,
                                    even=split_plan.split == "train", with_epoch=True)
        super().__init__(split_plan, plan, len(self.sampler), device)
        self.normaliser = Normaliser(plan, device)
        workers = plan.workers
        # CPU batches are finished in the workers; CUDA ones travel as uint8 and are
        # normalised on the device (a quarter of the bytes to copy)
        self.in_worker = (self.finish_in_workers and workers > 0 and plan.normalize
                          and self.device.type == "cpu")
        self.dataloader = torch.utils.data.DataLoader(
            SampleDataset(split, sample_transform(split_plan.ops, plan.seed)),
            batch_size=split_plan.batch_size, sampler=self.sampler, num_workers=workers,
            drop_last=split_plan.drop_last, pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=_worker_init if workers > 0 else None,
            collate_fn=WorkerBatch(plan) if self.in_worker else None,
        )

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        for x, y in self.dataloader:
            yield (x, y) if self.in_worker else self.normaliser(x, y)


# ---------------------------------------------------------------- whole-batch path (in memory)
def batch_fit(x: torch.Tensor, op: Op) -> torch.Tensor:
    """``fit`` on a uint8 N x H x W x C batch of equal-sized images."""
    _, h, w, _ = x.shape
    if op.ratio == 1.0 and h == w == op.res:
        return x
    top, left, side = fit_window(h, w, op.ratio)
    x = x[:, top:top + side, left:left + side]
    if side != op.res:  # N x C x h x w view with channels-last strides: the fast uint8 kernel
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(op.res, op.res), mode="bilinear",
                          antialias=True, align_corners=False).permute(0, 2, 3, 1)
    return x


def batch_padcrop(x: torch.Tensor, p: int, keys: np.ndarray) -> torch.Tensor:
    """Zero-pad by ``p`` and take a random ``h x w`` window per image (N x H x W x C)."""
    n, h, w, _ = x.shape
    xp = F.pad(x, (0, 0, p, p, p, p))
    dys, dxs = kr.offsets_array(keys, p, 0).tolist(), kr.offsets_array(keys, p, 1).tolist()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for i, (dy, dx) in enumerate(zip(dys, dxs)):  # slices: faster than one gather on small images
        out[i] = xp[i, dy:dy + h, dx:dx + w]
    return out


def batch_flip(x: torch.Tensor, keys: np.ndarray) -> torch.Tensor:
    """Mirror the images whose key says so (N x H x W x C).  A copy, then each chosen image
    flipped on its own: torch's flip of the whole batch through ``where`` made two slow passes
    over every image (docs/loaders.md)."""
    out = x.clone(memory_format=torch.contiguous_format)
    for i in np.flatnonzero(kr.flips_array(keys)).tolist():
        out[i] = x[i].flip(1)  # (H, W, C): along W
    return out


RRC_RUN = 4  # images per task when the crops run on threads


def batch_rrc(x: torch.Tensor, op: Op, keys: np.ndarray, pool: Optional[ThreadPoolExecutor] = None) -> torch.Tensor:
    """Random-resized crop of each image of a uint8 N x H x W x C batch -> N x res x res x C.

    Each image has its own window, so a resize per image; with ``pool`` the batch goes to its
    threads in runs of ``RRC_RUN`` images (torch's resize releases the GIL; a run per task keeps
    the per-task overhead small).  The same result either way."""
    n, h, w, c = x.shape
    windows = [kr.rrc_window(h, w, op.scale, op.aspect, key) for key in keys.tolist()]
    out = torch.empty((n, op.res, op.res, c), dtype=x.dtype)

    def crop(images: range) -> None:
        for i in images:
            top, left, ch, cw = windows[i]
            out[i] = resize_cl(x[i, top:top + ch, left:left + cw].permute(2, 0, 1), op.res).permute(1, 2, 0)

    if pool is None:
        crop(range(n))
    else:
        for f in [pool.submit(crop, range(i, min(i + RRC_RUN, n))) for i in range(0, n, RRC_RUN)]:
            f.result()  # re-raises an image's error here
    return out


def apply_batch_ops(x: torch.Tensor, ops: tuple[Op, ...], keys: np.ndarray,
                    pool: Optional[ThreadPoolExecutor] = None) -> torch.Tensor:
    """The plan's ops on a uint8 N x H x W x C batch; ``keys``: the samples' keyed_random keys;
    ``pool``: threads for the per-image ops (random-resized crop)."""
    for op in ops:
        if op.kind == "fit":
            x = batch_fit(x, op)
        elif op.kind == "padcrop":
            x = batch_padcrop(x, op.padding, keys)
        elif op.kind == "flip":
            x = batch_flip(x, keys)
        elif op.kind == "rrc":
            x = batch_rrc(x, op, keys, pool)
        else:  # pragma: no cover
            raise ValueError(op.kind)
    return x


@contextlib.contextmanager
def one_thread(device: torch.device):
    """Small-batch tensor ops run faster on one thread than on torch's intra-op pool (which,
    on a busy machine, can be 5-10x slower); the caller's thread count is restored after."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class TensorLoader(Loader):
    backend = "torch"

    def __init__(self, split: Split, split_plan: SplitPlan, plan: Plan, *, device, rank: int,
                 world_size: int):
        # N x H x W x 3 uint8; batches are gathered with numpy's take, a copy per image (torch's
        # indexing of the uint8 tensor was several times slower: docs/loaders.md)
        self.array = np.ascontiguousarray(split.array)
        self.labels = torch.from_numpy(split.labels)
        self.rank, self.world_size = rank, world_size
        n = len(epoch_indices(len(self.labels), shuffle=False, seed=0, epoch=0, rank=rank,
                              world_size=world_size, even=split_plan.split == "train"))
        super().__init__(split_plan, plan, n, device)
        self.normaliser = Normaliser(plan, device)
        # On a GPU the training process's CPU cores are free while the device computes: the
        # per-image crops run on ``data.workers`` threads.  On the CPU they train, so one thread.
        per_image = any(op.kind == "rrc" for op in split_plan.ops)
        self.pool = (ThreadPoolExecutor(plan.workers, thread_name_prefix="attnlab-crop")
                     if per_image and self.device.type == "cuda" and plan.workers > 1 else None)

    def __iter__(self):
        sp = self.split_plan
        idx = epoch_indices(len(self.labels), shuffle=sp.shuffle, seed=self.plan.seed,
                            epoch=self.epoch, rank=self.rank, world_size=self.world_size,
                            even=sp.split == "train")
        ekey = kr.epoch_key(self.plan.seed, self.epoch)
        self.epoch += 1
        bs = sp.batch_size
        stop = len(idx) - len(idx) % bs if sp.drop_last else len(idx)
        for start in range(0, stop, bs):
            b = idx[start:start + bs]  # the batch's sample indices
            keys = kr.sample_keys(ekey, b)
            with one_thread(self.device):
                batch = torch.from_numpy(self.array.take(b, axis=0))  # (B, H, W, 3)
                x = apply_batch_ops(batch, sp.ops, keys, self.pool)
                out = self.normaliser(x, self.labels[torch.from_numpy(b)])
            yield out


def build(source: Source, plan: Plan, *, device, rank: int, world_size: int) -> tuple[Loader, Loader]:
    out = []
    for which in ("train", "val"):
        split, sp = source.split(which), plan.split(which)
        cls = TensorLoader if split.array is not None else FileLoader
        out.append(cls(split, sp, plan, device=device, rank=rank, world_size=world_size))
    return out[0], out[1]
