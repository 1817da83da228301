"""Decode only the part of a JPEG that a crop window needs, with the pixels of a full decode.

A random-resized-crop keeps on average about half of an image, yet a full decode runs the
inverse DCT, chroma upsampling and colour conversion on every pixel.  This module is a small
ctypes adapter over the system's TurboJPEG 2.x library (``libturbojpeg.so.0``, libjpeg-turbo)
that does:

1. a lossless crop (``tjTransform`` with ``TJXOP_NONE`` + ``TJXOPT_CROP``) of the JPEG to a
   region aligned to the MCU grid that contains the window plus one MCU of margin on every side
   where the image has one.  The DCT coefficients are copied, not re-quantised, and no IDCT,
   upsampling or colour conversion happens outside the region;
2. ``tjDecompress2`` of that smaller JPEG to RGB with default flags (accurate integer
   ``ISLOW`` IDCT, "fancy" triangle-filter chroma upsampling), the same as a full decode;
3. a copy of the exact window out of the decoded region.

Why the pixels are the same as a full decode followed by slicing: the IDCT is per 8x8 block,
and the region holds the same quantisation tables and coefficients as the source; colour
conversion is per pixel.  The only step that looks at neighbours is chroma upsampling (4:2:0,
4:2:2, 4:4:0), whose filter reads the chroma samples one to each side of a pixel's own and
replicates the edge sample at an image edge.  With one MCU (at least one whole chroma sample)
of margin around the window, every pixel of the window sees the same neighbours as in the full
image; where the region reaches an image edge it is the full image's edge (same width/height
and partial MCU), so the same replication happens there.  ``tests/test_turbo_decode.py``
checks equality against a full decode for every subsampling, grayscale and progressive input.
(One theoretical exception: a progressive file whose scans never complete some coefficients
gets libjpeg's "block smoothing" in a full decode but not here.  Encoders send all bits; a
truncated file makes libjpeg warn, and a warning is an error here.)

Cost (measured, libjpeg-turbo 2.1.5, 4:2:0 q90, 256-500 px, one thread): the transform is not
cheap.  ``jpeg_read_coefficients`` entropy-decodes the *whole* source (to its last row, not the
region's) into a whole-image coefficient buffer, and the region is then entropy-encoded and
entropy-decoded again.  The transform alone costs ~70% of a full decode for a 48x48 region;
transform + region decode cost ~1.4 full decodes for a region of 40-60% of the image and ~1.7
for 60-85%.  The transform at best breaks even, for regions under ~20% of the
image, so :data:`FULL_DECODE_SHARE` makes larger ones decode in full (then slice): exact
either way, but on random-resized-crop windows this module is *not* faster than a full decode.

Fallback: every function returns None instead of a partial or approximate image when the
library is missing, the data is not a JPEG it can read (PNG, corrupt, truncated: libjpeg
warnings count as errors), or the colour space has no RGB conversion (CMYK/YCCK).  The caller
then decodes in full another way.  When the region would be more than a small part of the
image, the transform is skipped and the image decoded in full (see the cost above).

Handles are made lazily, one set per (process, thread): a forked DataLoader worker makes its
own on first use and never touches the parent's.  (Making and destroying one costs ~1.3 us;
they are renewed after every failed call, see :meth:`_Handles.renew`.)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import numpy as np

__all__ = ["available", "header", "decode_region", "decode_full"]

LIBRARY_NAMES = ("libturbojpeg.so.0", "libturbojpeg.so")

# turbojpeg.h (2.x)
TJPF_RGB = 0
TJXOP_NONE = 0
TJXOPT_CROP = 4
TJXOPT_COPYNONE = 64  # the region needs no EXIF/ICC/comment markers
TJFLAG_NOREALLOC = 1024
TJCS_CMYK, TJCS_YCCK = 3, 4
# MCU size by TJSAMP_* (444, 422, 420, GRAY, 440, 411): tjMCUWidth / tjMCUHeight
MCU_WIDTH = (8, 16, 16, 8, 8, 32)
MCU_HEIGHT = (8, 8, 16, 8, 16, 8)

# Decode in full (no transform) when the MCU-aligned region (with its margin) is at least this
# share of the image.  Measured (see the module docstring), time of transform + region decode
# over a full decode by region share, at 0.27 / 0.49 bytes per pixel: below 0.2: 1.01 / 1.10;
# 0.2-0.3: 1.12 / 1.20; 0.4-0.6: 1.46 / 1.54; 0.6-0.85: 1.78 / 1.86.  It never wins clearly.
FULL_DECODE_SHARE = 0.2


class _Region(ctypes.Structure):  # tjregion
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


class _Transform(ctypes.Structure):  # tjtransform
    _fields_ = [("r", _Region), ("op", ctypes.c_int), ("options", ctypes.c_int),
                ("data", ctypes.c_void_p), ("customFilter", ctypes.c_void_p)]


_lib_lock = threading.Lock()
_lib = None
_lib_error: str | None = None


def _load():
    """The library with typed functions, or None (the reason in ``_lib_error``)."""
    global _lib, _lib_error
    if _lib is not None or _lib_error is not None:
        return _lib
    with _lib_lock:
        if _lib is not None or _lib_error is not None:
            return _lib
        names = list(LIBRARY_NAMES)
        found = ctypes.util.find_library("turbojpeg")
        if found:
            names.append(found)
        errors = []
        for name in names:
            try:
                lib = ctypes.CDLL(name)
                _declare(lib)
            except (OSError, AttributeError) as e:
                errors.append(f"{name}: {e}")
                continue
            _lib = lib
            return lib
        _lib_error = "; ".join(errors) or "libturbojpeg not found"
        return None


def _declare(lib) -> None:
    vp, i, ul = ctypes.c_void_p, ctypes.c_int, ctypes.c_ulong
    ip = ctypes.POINTER(ctypes.c_int)
    sigs = {
        "tjInitDecompress": (vp, []),
        "tjInitTransform": (vp, []),
        "tjDestroy": (i, [vp]),
        "tjDecompressHeader3": (i, [vp, vp, ul, ip, ip, ip, ip]),
        "tjDecompress2": (i, [vp, vp, ul, vp, i, i, i, i, i]),
        "tjTransform": (i, [vp, vp, ul, i, ctypes.POINTER(vp), ctypes.POINTER(ul),
                            ctypes.POINTER(_Transform), i]),
        "tjBufSize": (ul, [i, i, i]),
        "tjGetErrorStr2": (ctypes.c_char_p, [vp]),
    }
    for name, (res, args) in sigs.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args


def available() -> bool:
    """Whether libturbojpeg (2.x API) loads here.  Cached; never raises."""
    try:
        return _load() is not None
    except Exception:  # pragma: no cover - defensive: available() must not raise
        return False


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    return None if available() else (_lib_error or "unknown")


class _Handles:
    """A decompressor, a transformer and scratch buffers for one (process, thread)."""

    def __init__(self, lib):
        self.pid = os.getpid()
        self.lib = lib
        self.dec = self.xf = None
        self.renew()
        self.jpeg = np.empty(0, np.uint8)    # the cropped JPEG
        self.pixels = np.empty(0, np.uint8)  # the decoded region

    def renew(self) -> None:
        """Fresh library handles.  Called after every failed call: libturbojpeg 2.1's
        ``tjDecompressHeader3`` does not abort the decompressor on an error, so a handle that
        has seen some garbage fails on valid JPEGs afterwards."""
        self.close()
        self.dec = self.lib.tjInitDecompress()
        self.xf = self.lib.tjInitTransform()  # NULL (out of memory): _handles() tries again

    def close(self) -> None:
        for name in ("dec", "xf"):
            handle = getattr(self, name)
            if handle:
                self.lib.tjDestroy(handle)
            setattr(self, name, None)

    def scratch(self, name: str, size: int) -> np.ndarray:
        buf = getattr(self, name)
        if buf.size < size:
            buf = np.empty(max(size, buf.size * 3 // 2), np.uint8)
            setattr(self, name, buf)
        return buf[:size]

    def error(self, handle) -> str:
        return (self.lib.tjGetErrorStr2(handle) or b"").decode("utf-8", "replace")

    def __del__(self):
        # Only the process that made the handles frees them (a forked child leaves its copy).
        if os.getpid() == self.pid:
            self.close()


_local = threading.local()


def _handles() -> _Handles | None:
    h = getattr(_local, "handles", None)
    if h is not None and h.pid == os.getpid() and h.dec and h.xf:
        return h
    lib = _load()
    if lib is None:
        return None
    # New handles in a new process (the parent's, copied by fork, are dropped without being
    # freed: see __del__) or after a failed tjInit*.
    _local.handles = h = _Handles(lib)
    return h if h.dec and h.xf else None


def _buffer(data):
    """(pointer argument, length, keep-alive) for bytes, a buffer (memoryview, bytearray,
    mmap), a uint8 numpy array or a CPU uint8 tensor (``torchvision.io.read_file``)."""
    if isinstance(data, bytes):
        return data, len(data), data
    if isinstance(data, np.ndarray):
        arr = data
    else:
        try:
            arr = np.frombuffer(data, dtype=np.uint8)
        except TypeError:  # no buffer protocol (a torch tensor): its __array__, no copy
            arr = np.asarray(data)
    arr = arr.reshape(-1)
    if arr.dtype != np.uint8 or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return arr.ctypes.data, arr.size, arr


def _header(h: _Handles, ptr, n: int):
    """(height, width, TJSAMP_*, TJCS_*) or None.  Any failure renews the handles."""
    width, height, samp, cs = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if h.lib.tjDecompressHeader3(h.dec, ptr, n, ctypes.byref(width), ctypes.byref(height),
                                 ctypes.byref(samp), ctypes.byref(cs)) != 0 \
            or width.value <= 0 or height.value <= 0 or not 0 <= samp.value < len(MCU_WIDTH):
        h.renew()  # also for a tables-only stream (SOI, tables, EOI: no size)
        return None
    return height.value, width.value, samp.value, cs.value


def _looks_like_jpeg(data, n: int) -> bool:
    return n >= 4 and bytes(data[:2]) == b"\xff\xd8"


def header(data) -> tuple[int, int, int] | None:
    """``(height, width, subsampling)`` (a ``TJSAMP_*`` value) of a JPEG, or None."""
    try:
        ptr, n, keep = _buffer(data)
        if not _looks_like_jpeg(keep, n):
            return None
        h = _handles()
        if h is None:
            return None
        info = _header(h, ptr, n)
        return None if info is None else info[:3]
    except (ValueError, TypeError, OSError):
        return None


def _decompress(h: _Handles, ptr, n: int, height: int, width: int, out: np.ndarray) -> bool:
    """Decode into ``out`` (height x width x 3, the JPEG's own size); False on any error or
    warning (libjpeg-turbo 2.1 returns -1 for both), after which the handles are renewed."""
    if h.lib.tjDecompress2(h.dec, ptr, n, out.ctypes.data, width, width * 3, height,
                           TJPF_RGB, 0) == 0:
        return True
    h.renew()
    return False


def decode_full(data) -> np.ndarray | None:
    """The whole JPEG as uint8 ``(H, W, 3)`` RGB, or None if libturbojpeg cannot decode it."""
    try:
        ptr, n, keep = _buffer(data)
        if not _looks_like_jpeg(keep, n):
            return None
        h = _handles()
        if h is None:
            return None
        info = _header(h, ptr, n)
        if info is None or info[3] in (TJCS_CMYK, TJCS_YCCK):
            return None
        height, width = info[0], info[1]
        out = np.empty((height, width, 3), np.uint8)
        return out if _decompress(h, ptr, n, height, width, out) else None
    except (ValueError, TypeError, OSError):
        return None


def region_for(height: int, width: int, subsampling: int, top: int, left: int, h: int, w: int):
    """``(y, x, rh, rw)``: the MCU-aligned region that holds the window and one MCU of margin
    on each side where the ``height x width`` image has one (its right/bottom ends at an MCU
    boundary or at the image's edge)."""
    mw, mh = MCU_WIDTH[subsampling], MCU_HEIGHT[subsampling]
    x0 = max(0, (left // mw - 1) * mw)
    y0 = max(0, (top // mh - 1) * mh)
    x1 = min(width, (-(-(left + w) // mw) + 1) * mw)
    y1 = min(height, (-(-(top + h) // mh) + 1) * mh)
    return y0, x0, y1 - y0, x1 - x0


def decode_region(data, top: int, left: int, height: int, width: int) -> np.ndarray | None:
    """Pixels ``[top:top+height, left:left+width]`` of the JPEG as a new C-contiguous uint8
    ``(height, width, 3)`` RGB array, equal to a full decode followed by slicing; None on any
    libturbojpeg error (the caller decodes in full another way).

    Raises ValueError if the window is empty or not inside the image.
    """
    top, left, height, width = int(top), int(left), int(height), int(width)
    try:
        ptr, n, keep = _buffer(data)
        if not _looks_like_jpeg(keep, n):
            return None
        h = _handles()
        if h is None:
            return None
        info = _header(h, ptr, n)
    except (TypeError, OSError):
        return None
    if info is None or info[3] in (TJCS_CMYK, TJCS_YCCK):
        return None
    H, W, samp = info[0], info[1], info[2]
    if height < 1 or width < 1 or top < 0 or left < 0 or top + height > H or left + width > W:
        raise ValueError(f"window (top={top}, left={left}, height={height}, width={width}) is not inside the {H}x{W} image")

    y, x, rh, rw = region_for(H, W, samp, top, left, height, width)
    if rh * rw >= FULL_DECODE_SHARE * H * W:
        out = h.scratch("pixels", H * W * 3).reshape(H, W, 3)
        if not _decompress(h, ptr, n, H, W, out):
            return None
        return out[top:top + height, left:left + width].copy()

    # Lossless crop into a scratch buffer of the library's worst-case size for the region;
    # NOREALLOC: an overflow is an error (-> None), never a reallocation behind our back.
    cap = int(h.lib.tjBufSize(rw, rh, samp))
    jpeg = h.scratch("jpeg", cap)
    dst = ctypes.c_void_p(jpeg.ctypes.data)
    size = ctypes.c_ulong(cap)
    xf = _Transform(_Region(x, y, rw, rh), TJXOP_NONE, TJXOPT_CROP | TJXOPT_COPYNONE, None, None)
    if h.lib.tjTransform(h.xf, ptr, n, 1, ctypes.byref(dst), ctypes.byref(size), ctypes.byref(xf),
                         TJFLAG_NOREALLOC) != 0:
        h.renew()
        return None
    if dst.value != jpeg.ctypes.data or not 0 < size.value <= cap:  # pragma: no cover - NOREALLOC
        return None
    crop = _header(h, dst.value, size.value)
    if crop is None or crop[:2] != (rh, rw):  # pragma: no cover - the crop is what we asked for
        return None
    out = h.scratch("pixels", rh * rw * 3).reshape(rh, rw, 3)
    if not _decompress(h, dst.value, size.value, rh, rw, out):
        return None
    return out[top - y:top - y + height, left - x:left - x + width].copy()
