"""What both backends hand out: a :class:`Loader` of ``(images, labels)`` batches.

Common pieces live here: the per-rank index order (:func:`epoch_indices`), the sampler that
wraps it for ``torch.utils.data.DataLoader``, and :class:`Normaliser` (device, normalise,
memory layout, int64 labels) for uint8 NHWC batches.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .plan import Plan, SplitPlan


def epoch_indices(n: int, *, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int,
                  even: bool) -> np.ndarray:
    """This rank's sample indices for one epoch.

    Shuffled: one permutation of all ``n`` per epoch (same on every rank: seeded by
    ``seed`` and ``epoch``), then rank ``r`` takes every ``world_size``-th entry from ``r``.
    ``even`` first trims the order to a multiple of ``world_size`` so every rank gets the same
    count (train); otherwise ranks differ by at most one sample and nothing is repeated (val).
    """
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    else:
        order = np.arange(n)
    if world_size > 1:
        if even:
            order = order[: n - n % world_size]
        order = order[rank::world_size]
    return order


class ShardSampler(torch.utils.data.Sampler):
    """:func:`epoch_indices` for a DataLoader; ``with_epoch`` yields ``(index, epoch)`` pairs,
    so that workers (persistent ones too) key each sample's augmentation by its epoch."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int, world_size: int,
                 even: bool, with_epoch: bool = False):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.even = rank, world_size, even
        self.with_epoch = with_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        return epoch_indices(self.n, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                             rank=self.rank, world_size=self.world_size, even=self.even)

    def __iter__(self) -> Iterator:
        order = self.indices().tolist()
        if self.with_epoch:
            return iter([(i, self.epoch) for i in order])
        return iter(order)

    def __len__(self) -> int:
        return len(self.indices()) if self.world_size > 1 else self.n


class Loader:
    """Iterable of ``(images, labels)``; ``len()`` is batches per epoch.

    Each ``iter()`` is one epoch; the epoch counter advances by itself, and ``set_epoch(e)``
    sets it explicitly (resuming).  ``images``: float32 normalised (or uint8 when
    ``normalize`` is off), ``N x 3 x res x res`` on ``device``, channels_last when asked;
    ``labels``: int64 ``N``.
    """

    backend: str = ""

    def __init__(self, split_plan: SplitPlan, plan: Plan, num_samples: int, device):
        self.split = split_plan.split
        self.plan = plan
        self.split_plan = split_plan
        self.batch_size = split_plan.batch_size
        self.num_samples = num_samples  # samples this rank sees per epoch
        self.device = torch.device(device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.split_plan.drop_last else -(-n // b)

    def __iter__(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(backend={self.backend!r}, split={self.split!r}, "
                f"samples={self.num_samples}, batch_size={self.batch_size}, "
                f"res={self.split_plan.res}, device={str(self.device)!r})")


class Normaliser:
    """uint8 NHWC batch -> the output contract (device, float normalised, layout)."""

    def __init__(self, plan: Plan, device):
        self.device = torch.device(device)
        self.normalize = plan.normalize
        self.channels_last = plan.channels_last
        self.mean = torch.tensor([m * 255.0 for m in plan.mean], device=self.device).view(1, 3, 1, 1)
        self.inv_std = torch.tensor([1.0 / (s * 255.0) for s in plan.std],
                                    device=self.device).view(1, 3, 1, 1)

    def __call__(self, x_nhwc: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        x = x_nhwc.to(self.device, non_blocking=non_blocking).permute(0, 3, 1, 2)  # channels_last view
        if self.normalize:
            x = x.float().sub_(self.mean).mul_(self.inv_std)
        if not self.channels_last:
            x = x.contiguous()
        y = y.to(self.device, dtype=torch.int64, non_blocking=non_blocking)
        return x, y

