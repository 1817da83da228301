"""The FFCV backend: the only module of attnlab that imports ``ffcv``.

Writer: one FFCV field per declared dataset field (``rgb_image`` -> ``RGBImageField``,
``int_label`` -> ``IntField``).  Loader: one pipeline per field, built from the backend-neutral
:class:`~pipeline.data.plan.Plan`.

Pipelines are ordered so that libffcv/ffcv#396 (a jitted op after ``ToTorchImage`` makes
``Loader(...)`` hang in ``Graph.group_operations``) cannot happen: every numba op (decoder,
our ``PadCropFlip``, ``NormalizeImage``) comes before ``ToTensor``; after it there are only torch
ops (``ToDevice``, ``ToTorchImage``); :func:`check_order` enforces it for every pipeline built.
On a CUDA device the uint8 batch is moved first and normalised by torch on the device (FFCV's
GPU ``NormalizeImage`` needs cupy).

Two FFCV habits are contained here: importing it sets torch to one thread (restored), and
its writer waits forever if a worker dies (our dataset view never raises; failures are
collected and reported after the write, and the partial file is discarded).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

_threads = torch.get_num_threads()
import ffcv  # noqa: E402 (after the set-up above, which must run first)
from ffcv.fields import IntField, RGBImageField  # noqa: E402 (after the set-up above, which must run first)
from ffcv.fields.basics import IntDecoder  # noqa: E402 (after the set-up above, which must run first)
from ffcv.fields.rgb_image import (  # noqa: E402 (after the set-up above, which must run first)
    IMAGE_MODES,
    CenterCropRGBImageDecoder,
    ResizedCropRGBImageDecoder,
    SimpleRGBImageDecoder,
)
from ffcv.libffcv import imdecode, resize_crop  # noqa: E402 (after the set-up above, which must run first)
from ffcv.loader import Loader as _FFCVLoader  # noqa: E402 (after the set-up above, which must run first)
from ffcv.loader import OrderOption  # noqa: E402 (after the set-up above, which must run first)
from ffcv.pipeline.allocation_query import AllocationQuery  # noqa: E402 (after the set-up above, which must run first)
from ffcv.pipeline.compiler import Compiler  # noqa: E402 (after the set-up above, which must run first)
from ffcv.pipeline.operation import Operation  # noqa: E402 (after the set-up above, which must run first)
from ffcv.reader import Reader  # noqa: E402 (after the set-up above, which must run first)
from ffcv.transforms import NormalizeImage, ToDevice, ToTensor, ToTorchImage  # noqa: E402 (after the set-up above, which must run first)
from ffcv.traversal_order.base import TraversalOrder  # noqa: E402 (after the set-up above, which must run first)
from ffcv.writer import DatasetWriter  # noqa: E402 (after the set-up above, which must run first)
from numba import njit, types  # noqa: E402 (after the set-up above, which must run first)
from numba.extending import intrinsic  # noqa: E402 (after the set-up above, which must run first)

torch.set_num_threads(_threads)  # importing ffcv set it to 1

_previous_hook = sys.unraisablehook


def _quiet_numba_finalizer(unraisable) -> None:
    """Drop one known-harmless message: numba 0.68's dispatcher finalizer raising KeyError
    while FFCV's discarded JIT closures are garbage-collected ("Exception ignored in:
    <finalize object ...>").  Everything else goes to the previous hook."""
    tb = unraisable.exc_traceback
    if isinstance(unraisable.exc_value, KeyError) and tb is not None:
        while tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code
        if code.co_name == "finalizer" and "numba" in code.co_filename:
            return
    _previous_hook(unraisable)


sys.unraisablehook = _quiet_numba_finalizer

from pipeline.errors import ConfigError  # noqa: E402 (after the set-up above, which must run first)

from . import keyed_random as kr  # noqa: E402 (after the set-up above, which must run first)
from .loader import Loader, epoch_indices  # noqa: E402 (after the set-up above, which must run first)
from .plan import Op, Plan, SplitPlan, is_identity_fit  # noqa: E402 (after the set-up above, which must run first)
from .source import Split  # noqa: E402 (after the set-up above, which must run first)

VERSION = getattr(ffcv, "__version__", "unknown")
_MIN_PAGE = 1 << 23  # 8 MiB


# ---------------------------------------------------------------- writing
class _WriteView:
    """``index -> (uint8 H x W x 3, label)`` for FFCV's writer processes; never raises.

    A sample that cannot be read is replaced by a black image and its error appended to
    ``errors_path``; the caller fails the write (and discards the file) if any were recorded.
    """

    def __init__(self, split: Split, image_size, errors_path: Path):
        self.split, self.image_size, self.errors_path = split, image_size, errors_path

    def __len__(self) -> int:
        return len(self.split)

    def _fail(self, i: int, msg: str):
        where = self.split.paths[i] if self.split.paths is not None else f"sample {i}"
        with open(self.errors_path, "a", errors="replace") as f:
            f.write(f"{where}: {msg}\n".replace("\r", " "))
        h, w = self.image_size or (8, 8)
        return np.zeros((h, w, 3), np.uint8)

    def __getitem__(self, i: int):
        # FFCV's 'proportion' mode picks JPEG or raw with np.random right after this call, in
        # this process: seeding by index makes that choice, and so the file, reproducible.
        np.random.seed(int(i) % 2**32)
        try:
            img = np.ascontiguousarray(self.split.image(int(i)), dtype=np.uint8)
            if img.ndim != 3 or img.shape[2] != 3:
                img = self._fail(i, f"not an RGB image (shape {img.shape})")
            elif self.image_size is not None and tuple(img.shape[:2]) != tuple(self.image_size):
                h, w = self.image_size
                img = self._fail(i, f"is {img.shape[0]}x{img.shape[1]}, expected {h}x{w}")
        except Exception as e:  # noqa: BLE001 - must not reach FFCV's worker loop
            img = self._fail(i, f"unreadable image ({type(e).__name__}: {' '.join(str(e).split())})")
        return img, int(self.split.labels[int(i)])


def _page_size(policy: dict, image_size) -> int:
    side = policy["max_res"]
    if image_size is not None:
        side = min(side, max(image_size))
    need = 2 * side * side * 3 + 4096
    page = _MIN_PAGE
    while page < need:
        page *= 2
    return page


def writer_fields(fields, policy: dict) -> dict:
    out = {}
    for name, kind in fields:
        if kind == "rgb_image":
            kw = dict(write_mode=policy["write_mode"], max_resolution=policy["max_res"])
            if "jpeg_quality" in policy:
                kw["jpeg_quality"] = policy["jpeg_quality"]
            if "compress_prob" in policy:
                kw["compress_probability"] = policy["compress_prob"]
            out[name] = RGBImageField(**kw)
        elif kind == "int_label":
            out[name] = IntField()
        else:  # pragma: no cover - the registry validates kinds
            raise ValueError(kind)
    return out


def write_split(split: Split, path: Path, policy: dict, *, fields, workers: int, image_size,
                desc: Optional[str]) -> None:
    """Write one split to ``path`` (a partial name; the caller renames it when complete)."""
    errors_path = path.with_name(path.name + ".errors")
    with contextlib.suppress(FileNotFoundError):
        errors_path.unlink()
    view = _WriteView(split, image_size, errors_path)
    writer = DatasetWriter(str(path), writer_fields(fields, policy),
                           page_size=_page_size(policy, image_size),
                           num_workers=max(1, min(workers, len(split))))
    chunk = max(1, min(100, len(split) // max(1, 4 * workers)))
    try:
        if desc is not None:
            print(f"writing {desc}: {len(split)} images -> {path.parent}", flush=True)
            writer.from_indexed_dataset(view, chunksize=chunk)
        else:
            with contextlib.redirect_stderr(io.StringIO()):
                writer.from_indexed_dataset(view, chunksize=chunk)
        try:
            lines = errors_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        if lines:
            more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
            raise ConfigError(lines[0] + more)
    finally:
        with contextlib.suppress(FileNotFoundError):
            errors_path.unlink()
        torch.set_num_threads(_threads)


# ---------------------------------------------------------------- reading
# Random augmentations draw from pipeline.data.keyed_random, keyed by (seed, epoch, sample
# index), never from numba's per-thread generator (unseeded, and shared out to threads in no
# fixed order).  The epoch changes while the compiled pipeline stays the same, and numba
# freezes captured arrays into constants, so the epoch's key lives in a uint64 buffer that
# the compiled code reads through its address (:class:`EpochKey`).
_U64 = np.uint64
_GOLDEN, _MUL1, _MUL2 = _U64(kr.GOLDEN), _U64(kr.MUL1), _U64(kr.MUL2)
_ONE, _S11, _S27, _S30, _S31 = _U64(1), _U64(11), _U64(27), _U64(30), _U64(31)


@intrinsic
def _load_u64(typingctx, addr):
    """The uint64 at integer address ``addr``, read when the compiled code runs."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.uint64)))
        return builder.load(ptr)

    return types.uint64(addr), codegen


@njit(nogil=True)
def _nb_mix(z):
    z = (z ^ (z >> _S30)) * _MUL1
    z = (z ^ (z >> _S27)) * _MUL2
    return z ^ (z >> _S31)


@njit(nogil=True)
def _nb_sample_key(ekey, index):
    return _nb_mix(ekey + (_U64(index) + _ONE) * _GOLDEN)


@njit(nogil=True)
def _nb_uniform(key, stream, k):
    z = _nb_mix(key + _U64(stream * 64 + k + 1) * _GOLDEN)
    return np.float64(z >> _S11) * kr.INV_2_53


@njit(nogil=True)
def _nb_rrc_window(h, w, key, s_lo, s_hi, lr_lo, lr_hi, a_lo, a_hi):
    """:func:`pipeline.data.keyed_random.rrc_window` in numba (same draws, same result)."""
    h, w = np.int64(h), np.int64(w)
    area = h * w
    for t in range(kr.RRC_TRIES):
        target = area * (s_lo + (s_hi - s_lo) * _nb_uniform(key, kr.RRC, 2 * t))
        ar = math.exp(lr_lo + (lr_hi - lr_lo) * _nb_uniform(key, kr.RRC, 2 * t + 1))
        cw = np.int64(round(math.sqrt(target * ar)))
        ch = np.int64(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            top = np.int64(_nb_uniform(key, kr.RRC, 2 * kr.RRC_TRIES) * (h - ch + 1))
            left = np.int64(_nb_uniform(key, kr.RRC, 2 * kr.RRC_TRIES + 1) * (w - cw + 1))
            return top, left, ch, cw
    r = w / h
    if r < a_lo:
        cw, ch = w, np.int64(round(w / a_lo))
    elif r > a_hi:
        ch, cw = h, np.int64(round(h * a_hi))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class EpochKey:
    """The current epoch's augmentation key, where compiled pipelines read it."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.buf = np.zeros(1, np.uint64)
        self.address = int(self.buf.ctypes.data)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.buf[0] = kr.epoch_key(self.seed, epoch)


class SeededRandomResizedCrop(ResizedCropRGBImageDecoder):
    """Decode + random-resized-crop, the window drawn by :func:`keyed_random.rrc_window`
    for (seed, epoch, sample index): FFCV's ``RandomResizedCropRGBImageDecoder`` with
    reproducible windows (the same windows the torch backend cuts)."""

    def __init__(self, output_size, key: EpochKey, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        super().__init__(output_size)
        self.key, self.scale, self.ratio = key, tuple(scale), tuple(ratio)

    @property
    def get_crop_generator(self):  # the parent's abstract hook; our code draws its own windows
        return None

    def generate_code(self):
        read = self.memory_read
        loop = Compiler.get_iterator()
        decode_jpeg = Compiler.compile(imdecode)
        crop_resize = Compiler.compile(resize_crop)
        jpg = IMAGE_MODES["jpg"]
        addr = self.key.address
        s_lo, s_hi = float(self.scale[0]), float(self.scale[1])
        a_lo, a_hi = float(self.ratio[0]), float(self.ratio[1])
        lr_lo, lr_hi = math.log(a_lo), math.log(a_hi)

        def seeded_rrc(batch_indices, my_storage, metadata, storage_state):
            out, scratch = my_storage
            ekey = _load_u64(addr)
            for k in loop(len(batch_indices)):
                index = batch_indices[k]
                m = metadata[index]
                data = read(m["data_ptr"], storage_state)
                h, w = np.uint32(m["height"]), np.uint32(m["width"])
                if m["mode"] == jpg:
                    flat = scratch[k]
                    decode_jpeg(data, flat, h, w, h, w, 0, 0, 1, 1, False, False)
                    img = flat.reshape(-1)[:3 * h * w].reshape(h, w, 3)
                else:
                    img = data.reshape(h, w, 3)
                top, left, ch, cw = _nb_rrc_window(h, w, _nb_sample_key(ekey, index), s_lo, s_hi,
                                                   lr_lo, lr_hi, a_lo, a_hi)
                crop_resize(img, top, top + ch, left, left + cw, out[k])
            return out[:len(batch_indices)]

        seeded_rrc.is_parallel = True
        return seeded_rrc


class PadCropFlip(Operation):
    """Pad-and-random-crop (zero fill) and/or random horizontal flip, in one pass.

    The same meaning as ``pad(p) -> random crop back to h x w -> flip with p=0.5``, i.e.
    FFCV's ``RandomTranslate`` followed by ``RandomHorizontalFlip``, but one loop over the
    pixels instead of three copies, and a fraction of their JIT compile time.  Offsets and
    flips come from :mod:`~pipeline.data.keyed_random` for (seed, epoch, sample index).
    """

    def __init__(self, padding: int = 0, flip: bool = True, key: EpochKey | None = None):
        super().__init__()
        self.padding, self.flip = int(padding), bool(flip)
        self.key = key if key is not None else EpochKey(0)

    def generate_code(self):
        my_range = Compiler.get_iterator()
        pad, do_flip, addr = self.padding, self.flip, self.key.address
        span = 2 * pad + 1

        def pad_crop_flip(images, dst, batch_indices):
            n, h, w, c = images.shape
            ekey = _load_u64(addr)
            for i in my_range(n):
                key = _nb_sample_key(ekey, batch_indices[i])
                dy = np.int64(_nb_uniform(key, kr.PAD, 0) * span) - pad
                dx = np.int64(_nb_uniform(key, kr.PAD, 1) * span) - pad
                flip = do_flip and _nb_uniform(key, kr.FLIP, 0) < 0.5
                for y in range(h):
                    sy = y + dy
                    inside_y = 0 <= sy < h
                    for x in range(w):
                        sx = x + dx
                        tx = w - 1 - x if flip else x
                        if inside_y and 0 <= sx < w:
                            for k in range(c):
                                dst[i, y, tx, k] = images[i, sy, sx, k]
                        else:
                            for k in range(c):
                                dst[i, y, tx, k] = 0
            return dst

        pad_crop_flip.is_parallel = True
        pad_crop_flip.with_indices = True  # FFCV passes the batch's sample indices
        return pad_crop_flip

    def declare_state_and_memory(self, previous_state):
        return (dataclasses.replace(previous_state, jit_mode=True),
                AllocationQuery(previous_state.shape, previous_state.dtype))


def check_file(path: Path, *, count: int, fields) -> None:
    """FFCV's own header says what the manifest says; else a one-line ConfigError."""
    try:
        r = Reader(str(path))
    except Exception as e:  # noqa: BLE001 - FFCV raises anything on a bad file
        raise ConfigError(f"{path}: not a readable .beton ({type(e).__name__})") from None
    if int(r.num_samples) != count:
        raise ConfigError(f"{path}: holds {int(r.num_samples)} samples, manifest says {count}")
    want = [name for name, _ in fields]
    if list(r.field_names) != want:
        raise ConfigError(f"{path}: fields {list(r.field_names)}, expected {want}")


def read_samples(path: Path, indices=None) -> tuple[list[np.ndarray], np.ndarray]:
    """Stored images (uint8 H x W x 3, exactly as stored; JPEGs decoded) and labels.

    Reads the file directly (no loader, no JIT compile): for checks and inspection, not speed.
    """
    import cv2

    r = Reader(str(path))
    names = list(r.field_names)
    img_f, lab_f = f"f{names.index('image')}", f"f{names.index('label')}"
    sizes = {int(p): int(s) for p, s in zip(r.alloc_table["ptr"], r.alloc_table["size"])}
    data = np.memmap(str(path), dtype=np.uint8, mode="r")
    idx = range(int(r.num_samples)) if indices is None else indices
    images, labels = [], []
    for i in idx:
        meta = r.metadata[int(i)]
        im, label = meta[img_f], int(meta[lab_f])
        ptr, h, w = int(im["data_ptr"]), int(im["height"]), int(im["width"])
        if int(im["mode"]) == 1:  # raw
            img = np.array(data[ptr:ptr + h * w * 3]).reshape(h, w, 3)
        else:
            buf = np.array(data[ptr:ptr + sizes[ptr]])
            img = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        images.append(img)
        labels.append(label)
    return images, np.asarray(labels, dtype=np.int64)


class _ShardOrder(TraversalOrder):
    """Our per-rank order (:func:`~pipeline.data.loader.epoch_indices`) as an FFCV order.

    FFCV calls the order object with the loader; we hand back ourselves, already set up.
    Shuffled, unsharded, it is FFCV's own RANDOM order (a permutation seeded by seed + epoch),
    and the torch backend uses the same function, so both backends visit the same samples.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int, world_size: int,
                 even: bool):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.even = rank, world_size, even
        self.distributed = False
        self.sampler = None
        self.indices = np.arange(n)

    def __call__(self, loader) -> "_ShardOrder":
        self.loader = loader
        return self

    def sample_order(self, epoch: int):
        return epoch_indices(self.n, shuffle=self.shuffle, seed=self.seed, epoch=epoch,
                             rank=self.rank, world_size=self.world_size, even=self.even)


def image_pipeline(ops: tuple[Op, ...], plan: Plan, stored_size, device: torch.device,
                   key: Optional[EpochKey] = None) -> list:
    """FFCV ops for a split's plan; random ops read their epoch key from ``key``."""
    key = key if key is not None else EpochKey(plan.seed)
    first, rest = ops[0], ops[1:]
    if first.kind == "rrc":
        pipe: list = [SeededRandomResizedCrop((first.res, first.res), key, scale=first.scale,
                                              ratio=first.aspect)]
    elif first.kind == "fit":
        if is_identity_fit(first, stored_size):
            pipe = [SimpleRGBImageDecoder()]
        else:
            pipe = [CenterCropRGBImageDecoder((first.res, first.res), ratio=first.ratio)]
    else:  # pragma: no cover - plans always start with a sizing op
        raise ValueError(f"first op must size the image, got {first.kind}")
    kinds = [op.kind for op in rest]
    if kinds:  # plans put padcrop before flip, each at most once: one fused op
        if kinds not in (["padcrop"], ["flip"], ["padcrop", "flip"]):  # pragma: no cover
            raise ValueError(f"unsupported op sequence {kinds}")
        pad = rest[0].padding if kinds[0] == "padcrop" else 0
        pipe.append(PadCropFlip(padding=pad, flip=kinds[-1] == "flip", key=key))
    if plan.normalize and device.type == "cpu":
        pipe.append(NormalizeImage(np.array(plan.mean) * 255, np.array(plan.std) * 255,
                                   np.float32))
    pipe.append(ToTensor())
    if device.type != "cpu":
        pipe.append(ToDevice(device, non_blocking=True))
    pipe.append(ToTorchImage(channels_last=True))
    return pipe


def label_pipeline(device: torch.device) -> list:
    pipe: list = [IntDecoder(), ToTensor()]
    if device.type != "cpu":
        pipe.append(ToDevice(device, non_blocking=True))
    return pipe


_TORCH_SIDE = (ToTensor, ToDevice, ToTorchImage)


def check_order(pipe: list) -> None:
    """No FFCV (numba) op may follow a torch-side op (libffcv/ffcv#396)."""
    seen_torch = False
    for op in pipe:
        if isinstance(op, _TORCH_SIDE) or isinstance(op, torch.nn.Module):
            seen_torch = True
        elif isinstance(op, Operation) and seen_torch:
            raise AssertionError(f"{type(op).__name__} after a torch op would hang FFCV (#396)")


class FFCVLoader(Loader):
    backend = "ffcv"

    def __init__(self, path: Path, split_plan: SplitPlan, plan: Plan, *, stored_size, count: int,
                 device, rank: int, world_size: int, os_cache: bool = True):
        device = torch.device(device)
        order: object
        if not os_cache and world_size == 1 and split_plan.shuffle:
            order = OrderOption.QUASI_RANDOM
            n = count
        else:
            order = _ShardOrder(count, shuffle=split_plan.shuffle, seed=plan.seed, rank=rank,
                                world_size=world_size, even=split_plan.split == "train")
            n = len(order.sample_order(0))
        super().__init__(split_plan, plan, n, device)
        self.key = EpochKey(plan.seed)
        img = image_pipeline(split_plan.ops, plan, stored_size, device, self.key)
        lab = label_pipeline(device)
        check_order(img)
        check_order(lab)
        self.signature = tuple(type(op).__name__ for op in img)
        self._running = None
        self.path = Path(path)
        self._on_device_norm = plan.normalize and device.type != "cpu"
        if self._on_device_norm:
            self.mean = torch.tensor([m * 255 for m in plan.mean], device=device).view(1, 3, 1, 1)
            self.inv_std = torch.tensor([1 / (s * 255) for s in plan.std],
                                        device=device).view(1, 3, 1, 1)
        threads = torch.get_num_threads()
        try:
            self.inner = _FFCVLoader(
                str(path), batch_size=split_plan.batch_size, num_workers=max(1, plan.workers),
                os_cache=os_cache, order=order, distributed=False, seed=plan.seed,
                pipelines={"image": img, "label": lab}, drop_last=split_plan.drop_last,
                batches_ahead=3)
        finally:
            torch.set_num_threads(threads)

    def _stop_previous(self) -> None:
        """Let an abandoned epoch's FFCV thread finish before the epoch key changes under it."""
        prev, self._running = self._running, None
        if prev is not None and prev.is_alive():
            prev.terminate_event.set()
            prev.join(timeout=120)  # it stops once its queue is full (a few batches at most)
            prev.close()

    def __iter__(self):
        self._stop_previous()
        self.inner.next_epoch = self.epoch
        self.key.set_epoch(self.epoch)
        self.epoch += 1
        threads = torch.get_num_threads()
        batches = self._running = iter(self.inner)  # FFCV sets torch's threads to num_workers
        torch.set_num_threads(threads)
        try:
            for x, y in batches:
                if self._on_device_norm:
                    x = x.float().sub_(self.mean).mul_(self.inv_std)
                if not self.plan.channels_last:
                    x = x.contiguous()
                yield x, y.view(-1)
        finally:
            batches.terminate_event.set()  # abandoned early: its thread stops (joined next epoch)


def build(folder: Path, manifest: dict, plan: Plan, *, device, rank: int, world_size: int,
          os_cache: bool = True) -> tuple[Loader, Loader]:
    fields = [tuple(f) for f in manifest["fields"]]
    stored = tuple(manifest["image_size"]) if manifest.get("image_size") else None
    out = []
    for split in ("train", "val"):
        rec = manifest["files"][split]
        path = folder / rec["name"]
        check_file(path, count=manifest["counts"][split], fields=fields)
        out.append(FFCVLoader(path, plan.split(split), plan, stored_size=stored,
                              count=manifest["counts"][split], device=device, rank=rank,
                              world_size=world_size, os_cache=os_cache))
    return out[0], out[1]
