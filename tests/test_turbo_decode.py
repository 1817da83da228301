"""pipeline.data.turbo: a crop window decoded through a lossless crop has exactly the pixels of
a full decode followed by slicing (libturbojpeg's and torchvision's), for every subsampling,
grayscale, progressive, restart markers, optimised Huffman tables and odd sizes; bad input
gives None; handles work in threads and in a forked child."""
from __future__ import annotations

import ctypes
import io
import os
import threading

import numpy as np
import pytest

from pipeline.data import keyed_random as kr
from pipeline.data import turbo

pytestmark = pytest.mark.skipif(not turbo.available(), reason=f"libturbojpeg (2.x API) does not load: {turbo.unavailable_reason()}")

SIZES = ((257, 383), (500, 333), (17, 31), (64, 48), (1, 1), (9, 700))  # (height, width)
TJSAMP_444, TJSAMP_422, TJSAMP_420, TJSAMP_GRAY, TJSAMP_440, TJSAMP_411 = range(6)


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """Photo-like RGB: smooth gradients, a few hard-edged shapes, texture and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a, b, f = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * np.sin(a * x / 37 + b * y / 23) + 40 * np.cos(f * (x + y) / 51)
    for _ in range(6):  # ellipses and rectangles with saturated colours (chroma edges)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(2, max(3, h / 3)), rng.uniform(2, max(3, w / 3))
        colour = rng.uniform(0, 255, 3)
        mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1 if rng.random() < 0.5 else \
            (abs(y - cy) < ry) & (abs(x - cx) < rx)
        img[mask] = colour
    img += 12 * np.sin(x / 2.3)[..., None] * (rng.random((1, 1, 3)) > 0.5)  # fine texture
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def pillow_jpeg(img: np.ndarray, mode: str = "RGB", **kw) -> bytes:
    from PIL import Image

    im = Image.fromarray(img)
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def turbo_jpeg(img: np.ndarray, subsampling: int) -> bytes:
    """4:4:0 and 4:1:1 (Pillow writes neither) through libturbojpeg's own tjCompress2."""
    lib = ctypes.CDLL("libturbojpeg.so.0")  # a CDLL of our own: its function objects are ours to type
    vp, i = ctypes.c_void_p, ctypes.c_int
    lib.tjInitCompress.restype, lib.tjInitCompress.argtypes = vp, []
    lib.tjCompress2.restype = i
    lib.tjCompress2.argtypes = [vp, vp, i, i, i, i, ctypes.POINTER(vp), ctypes.POINTER(ctypes.c_ulong), i, i, i]
    lib.tjFree.restype, lib.tjFree.argtypes = None, [vp]
    lib.tjDestroy.restype, lib.tjDestroy.argtypes = i, [vp]
    handle = lib.tjInitCompress()
    img = np.ascontiguousarray(img)
    out, size = vp(), ctypes.c_ulong(0)
    h, w = img.shape[:2]
    try:
        assert lib.tjCompress2(handle, img.ctypes.data, w, w * 3, h, 0, ctypes.byref(out), ctypes.byref(size), subsampling, 90, 0) == 0
        return ctypes.string_at(out.value, size.value)
    finally:
        lib.tjFree(out)
        lib.tjDestroy(handle)


# name -> (encoder(img) -> bytes, expected TJSAMP_*)
FORMATS = {
    "420": (lambda im: pillow_jpeg(im, subsampling=2), TJSAMP_420),
    "422": (lambda im: pillow_jpeg(im, subsampling=1), TJSAMP_422),
    "444": (lambda im: pillow_jpeg(im, subsampling=0), TJSAMP_444),
    "gray": (lambda im: pillow_jpeg(im, mode="L"), TJSAMP_GRAY),
    "420-progressive": (lambda im: pillow_jpeg(im, subsampling=2, progressive=True), TJSAMP_420),
    "444-progressive": (lambda im: pillow_jpeg(im, subsampling=0, progressive=True), TJSAMP_444),
    "420-optimized": (lambda im: pillow_jpeg(im, subsampling=2, optimize=True), TJSAMP_420),
    "420-restart": (lambda im: pillow_jpeg(im, subsampling=2, restart_marker_blocks=5), TJSAMP_420),
    "420-exif-icc": (lambda im: pillow_jpeg(im, subsampling=2, exif=b"Exif\x00\x00" + bytes(200), icc_profile=bytes(3000)), TJSAMP_420),
    "440": (lambda im: turbo_jpeg(im, TJSAMP_440), TJSAMP_440),
    "411": (lambda im: turbo_jpeg(im, TJSAMP_411), TJSAMP_411),
}


def windows(h: int, w: int, seed: int, n_random: int = 40):
    """Full image, every corner and edge, 1-pixel rows/columns, MCU-aligned edges and random
    windows (uniform and random-resized-crop-like)."""
    out = {(0, 0, h, w), (0, 0, 1, 1), (0, w - 1, 1, 1), (h - 1, 0, 1, 1), (h - 1, w - 1, 1, 1),
           (0, 0, h, 1), (0, w - 1, h, 1), (0, 0, 1, w), (h - 1, 0, 1, w),
           (h // 2, w // 2, h - h // 2, w - w // 2), (0, 0, (h + 1) // 2, (w + 1) // 2)}
    for a in (8, 16, 32):  # windows starting/ending exactly on (and one pixel off) MCU boundaries
        for t, l in ((a, a), (a - 1, a + 1), (a + 1, a - 1)):
            for hh, ww in ((a, a), (a - 1, a + 1), (1, 1), (h - t, w - l)):
                if 0 <= t < h and 0 <= l < w and 0 < hh <= h - t and 0 < ww <= w - l:
                    out.add((t, l, hh, ww))
    rng = np.random.default_rng(seed)
    for _ in range(n_random):
        t, l = int(rng.integers(0, h)), int(rng.integers(0, w))
        out.add((t, l, int(rng.integers(1, h - t + 1)), int(rng.integers(1, w - l + 1))))
    for key in range(n_random):
        out.add(kr.rrc_window(h, w, (0.08, 1.0), (3 / 4, 4 / 3), key))
    return sorted(out)


def torchvision_full(data: bytes) -> np.ndarray:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()


_cache: dict = {}


def sample(fmt: str, size) -> tuple[bytes, np.ndarray]:
    """(JPEG bytes, libturbojpeg's full decode), cached per (format, size)."""
    if (fmt, size) not in _cache:
        encode, samp = FORMATS[fmt]
        data = encode(photo(*size, seed=hash((fmt, size)) % 1000))
        assert turbo.header(data) == (size[0], size[1], samp)
        full = turbo.decode_full(data)
        assert full is not None and full.shape == (size[0], size[1], 3) and full.dtype == np.uint8
        _cache[fmt, size] = data, full
    return _cache[fmt, size]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_region_equals_full_decode(fmt, size, monkeypatch):
    data, full = sample(fmt, size)
    wins = windows(*size, seed=size[0] * 1000 + size[1])
    # Through the lossless crop for every window (even the full image) ...
    monkeypatch.setattr(turbo, "FULL_DECODE_SHARE", 2.0)
    for t, l, h, w in wins:
        got = turbo.decode_region(data, t, l, h, w)
        assert got is not None, (fmt, size, (t, l, h, w))
        assert got.shape == (h, w, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
        assert np.array_equal(got, full[t:t + h, l:l + w]), (fmt, size, (t, l, h, w), int(np.abs(got.astype(int) - full[t:t + h, l:l + w]).max()))
    # ... and with the default shortcut (full decode when the region is nearly everything).
    monkeypatch.undo()
    for t, l, h, w in wins[::3]:
        assert np.array_equal(turbo.decode_region(data, t, l, h, w), full[t:t + h, l:l + w])


@pytest.mark.parametrize("size", SIZES[:3], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_full_decode_equals_torchvision(fmt, size):
    """libturbojpeg 2.1.5 (system) and torchvision's bundled libjpeg-turbo decode alike, so a
    region equals torchvision's full decode sliced too."""
    data, full = sample(fmt, size)
    tv = torchvision_full(data)
    assert tv.shape == full.shape
    assert np.array_equal(tv, full), f"{fmt} {size}: max abs difference {int(np.abs(tv.astype(int) - full).max())}"
    h, w = size
    for t, l, hh, ww in windows(h, w, seed=7, n_random=10):
        assert np.array_equal(turbo.decode_region(data, t, l, hh, ww), tv[t:t + hh, l:l + ww])


def test_region_is_smaller_than_the_image():
    """The transform path really runs: a small window's region is a few MCUs, with a margin."""
    assert turbo.region_for(500, 333, TJSAMP_420, 100, 100, 50, 50) == (80, 80, 96, 96)
    assert turbo.region_for(500, 333, TJSAMP_420, 96, 96, 64, 64) == (80, 80, 96, 96)
    assert turbo.region_for(500, 333, TJSAMP_444, 0, 0, 10, 10) == (0, 0, 24, 24)
    assert turbo.region_for(500, 333, TJSAMP_422, 490, 320, 10, 13) == (480, 304, 20, 29)
    assert turbo.region_for(17, 31, TJSAMP_420, 0, 0, 17, 31) == (0, 0, 17, 31)


def test_bad_input_gives_none():
    data, _ = sample("420", (257, 383))
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(photo(20, 30, 1)).save(png, "PNG")
    cmyk = io.BytesIO()
    Image.fromarray(photo(40, 56, 2)).convert("CMYK").save(cmyk, "JPEG", quality=90)
    bad = [b"", b"\xff", b"\xff\xd8", b"\xff\xd8\xff\xd9", b"not a jpeg at all", png.getvalue(), bytes(1000),
           data[:2], data[:20], data[:300], data[:len(data) // 2], data[:-2],
           data[:600] + bytes(len(data) - 600), b"\xff\xd8" + os.urandom(5000)]
    for i, b in enumerate(bad):
        assert turbo.decode_full(b) is None, i
        assert turbo.decode_region(b, 0, 0, 1, 1) is None, i
        assert turbo.decode_region(memoryview(b), 0, 0, 1, 1) is None, i
    assert turbo.header(b"") is None and turbo.header(png.getvalue()) is None and turbo.header(data[:20]) is None
    # CMYK: libturbojpeg reads the header but has no CMYK -> RGB conversion.
    assert turbo.header(cmyk.getvalue()) is not None
    assert turbo.decode_full(cmyk.getvalue()) is None and turbo.decode_region(cmyk.getvalue(), 0, 0, 8, 8) is None
    # Flipped bytes in the entropy-coded data: None, or (corruption libjpeg cannot notice) the
    # same pixels as its full decode -- never an exception.
    rng = np.random.default_rng(3)
    for _ in range(20):
        b = bytearray(data)
        for pos in rng.integers(700, len(b), 4):
            b[pos] ^= 0x5A
        b = bytes(b)
        full = turbo.decode_full(b)
        got = turbo.decode_region(b, 40, 50, 100, 120)
        assert got is None or (full is not None and np.array_equal(got, full[40:140, 50:170]))
    # The decoder still works after all that.
    assert np.array_equal(turbo.decode_region(data, 3, 4, 5, 6), sample("420", (257, 383))[1][3:8, 4:10])


def test_window_outside_the_image_raises():
    data, _ = sample("420", (257, 383))
    for win in ((0, 0, 0, 5), (0, 0, 5, 0), (-1, 0, 5, 5), (0, -1, 5, 5), (250, 0, 8, 5), (0, 380, 5, 4)):
        with pytest.raises(ValueError, match="not inside"):
            turbo.decode_region(data, *win)


def test_input_types():
    import torch

    data, full = sample("422", (257, 383))
    want = full[10:60, 20:90]
    for d in (data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8), torch.frombuffer(bytearray(data), dtype=torch.uint8)):
        assert np.array_equal(turbo.decode_region(d, 10, 20, 50, 70), want), type(d)
        assert turbo.header(d) == (257, 383, TJSAMP_422)


def test_threads_each_get_their_own_handles():
    data, full = sample("420", (500, 333))
    wins = windows(500, 333, seed=11, n_random=15)
    errors: list = []

    def work():
        try:
            for _ in range(3):
                for t, l, h, w in wins:
                    assert np.array_equal(turbo.decode_region(data, t, l, h, w), full[t:t + h, l:l + w])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_after_use_in_parent():
    data, full = sample("420", (257, 383))
    assert np.array_equal(turbo.decode_region(data, 5, 6, 70, 80), full[5:75, 6:86])  # handles made here
    parent_handles = turbo._local.handles
    pid = os.fork()
    if pid == 0:  # child: report through the exit status, never return into pytest
        status = 1
        try:
            ok = all(np.array_equal(turbo.decode_region(data, t, l, h, ww), full[t:t + h, l:l + ww])
                     for t, l, h, ww in windows(257, 383, seed=5, n_random=10))
            own = turbo._local.handles is not parent_handles and turbo._local.handles.pid == os.getpid()
            status = 0 if ok and own else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    # The parent's handles are untouched by the child.
    assert turbo._local.handles is parent_handles
    assert np.array_equal(turbo.decode_region(data, 100, 100, 20, 30), full[100:120, 100:130])


def test_multiprocessing_fork_pool():
    import multiprocessing as mp

    data, full = sample("444", (500, 333))
    turbo.decode_region(data, 0, 0, 10, 10)
    wins = windows(500, 333, seed=9, n_random=8)
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.starmap(turbo.decode_region, [(data, *win) for win in wins])
    for (t, l, h, w), g in zip(wins, got):
        assert np.array_equal(g, full[t:t + h, l:l + w])
