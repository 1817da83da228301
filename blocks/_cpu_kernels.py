"""CPU kernels that torch has no operator for, compiled from ``_cpu_kernels.c`` on first use.

One kernel today, :func:`plus_gemm`: ``out[n] = base[n] + A · Y[n]`` with the add folded into the
GEMM (the Gaussian block's residual add, see ``blocks/gaussian.py``).  torch can only run it as a
GEMM and a second pass over its output; the speed difference is in docs/benchmarks.md.

Building.  The C file is compiled with the system C compiler (``$CC``, else ``cc``) for the CPU
it runs on (``-O3 -march=native``; without ``-march=native`` where the compiler refuses it) the
first time a process needs it, and loaded with :mod:`ctypes`.  The library is cached under
``$ATTNLAB_KERNEL_DIR``, else ``$XDG_CACHE_HOME/attnlab/kernels`` or ``~/.cache/attnlab/kernels``,
else the temporary directory (a Ray worker may have no home folder), in a file named by a hash
of the source, the compiler, its flags and the CPU's model and feature flags, so that nodes of a
cluster sharing one cache never load a library built for another CPU.  It is written under a
temporary name and renamed, so concurrent workers never load a half-written file.

Where there is no compiler, the build fails, or ``ATTNLAB_CPU_KERNELS=0`` is set, every caller
falls back to torch operators computing the same function (one warning says why);
:func:`status` says which is in use.  The kernel is also skipped where it would be invisible or
wrong: under a torch dispatch mode (FLOP counters, ``blocks.cost``), while ``torch.compile``
traces, and for tensor subclasses — those all take the torch path.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

SOURCE = Path(__file__).with_suffix(".c")
SWITCH = "ATTNLAB_CPU_KERNELS"
#: Outputs at least this large are written with non-temporal stores (they cannot stay in the
#: caches until they are read again, and streaming stores skip the read-for-ownership) — where
#: the GEMM has at least ``STREAM_MIN_K`` terms per output and rows are not a multiple of 4 KiB
#: apart: with few terms, or rows that alias in the store buffers, streaming measured slower
#: than cached stores (docs/benchmarks.md, "the residual GEMMs in a compiled kernel").
STREAM_BYTES = 16 * 2**20
STREAM_MIN_K = 16

#: The library's plus_gemm function for each dtype it computes in.
_KERNELS = {torch.float32: "plus_gemm_f32", torch.float64: "plus_gemm_f64"}
_FLAGS = (["-O3", "-march=native"], ["-O3"])
_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_identity() -> str:
    """The CPU's model and feature flags (Linux), else what :mod:`platform` knows."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    keep = [ln for ln in text.splitlines() if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    return "\n".join(sorted(set(keep))) or f"{platform.machine()} {platform.processor()}"


def _cache_dir() -> Path:
    candidates = []
    if os.environ.get("ATTNLAB_KERNEL_DIR"):
        candidates.append(Path(os.environ["ATTNLAB_KERNEL_DIR"]))
    xdg = os.environ.get("XDG_CACHE_HOME")
    try:
        candidates.append((Path(xdg) if xdg else Path.home() / ".cache") / "attnlab" / "kernels")
    except RuntimeError:  # no home folder to resolve
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    candidates.append(Path(tempfile.gettempdir()) / f"attnlab-kernels-{uid}")
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK | os.X_OK):
                return d
        except OSError:
            continue
    raise OSError("no writable directory for compiled kernels (set ATTNLAB_KERNEL_DIR)")


def _compiler() -> tuple[str, str]:
    cc = os.environ.get("CC") or "cc"
    path = shutil.which(cc)
    if path is None:
        raise OSError(f"no C compiler ({cc!r} not found; set CC)")
    r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    return path, r.stdout.splitlines()[0] if r.stdout else ""


_SELF_TEST = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
n, c, k, l = 2, 7, 3, 19  # a row tile and a row, a vector, a partial vector
for name, t in (("plus_gemm_f32", ctypes.c_float), ("plus_gemm_f64", ctypes.c_double)):
    a = [((i * 7) % 5 - 2) / 4 for i in range(c * k)]
    y = [((i * 3) % 7 - 3) / 8 for i in range(n * k * l)]
    base = [((i * 5) % 9 - 4) / 2 for i in range(n * c * l)]
    A, Y, B, O = (t * len(a))(*a), (t * len(y))(*y), (t * len(base))(*base), (t * len(base))()
    fn = getattr(lib, name)
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 4 + [ctypes.c_int] * 2
    for stream, threads in ((0, 1), (1, 2)):
        if fn(A, Y, B, O, n, c, k, l, stream, threads) != 0:
            sys.exit(f"{name}: starting its threads failed")
        for m in range(n):
            for i in range(c):
                for j in range(l):
                    want = base[(m * c + i) * l + j] + sum(a[i * k + q] * y[(m * k + q) * l + j] for q in range(k))
                    if O[(m * c + i) * l + j] != want:  # exact: short sums of dyadic fractions
                        sys.exit(f"{name}: out[{m}, {i}, {j}] = {O[(m * c + i) * l + j]}, expected {want}")
"""


def _self_test(lib: Path) -> str | None:
    """Run the fresh library on a small known answer in a child process (an instruction the CPU
    lacks kills the child, not us): None if right, else what went wrong."""
    r = subprocess.run([sys.executable, "-c", _SELF_TEST, str(lib)], capture_output=True, text=True, timeout=120)
    if r.returncode == 0:
        return None
    why = f"killed by signal {-r.returncode}" if r.returncode < 0 else (r.stderr.strip().splitlines() or ["?"])[-1]
    return f"the built library failed its self-test ({why})"


def _build() -> Path:
    src = SOURCE.read_bytes()
    cc, version = _compiler()
    directory = _cache_dir()
    cpu = _cpu_identity().encode()
    errors = []
    for flags in _FLAGS:
        key = hashlib.sha256(b"\0".join([src, version.encode(), " ".join(flags).encode(), cpu])).hexdigest()[:24]
        lib = directory / f"attnlab_cpu_{key}.so"
        if lib.exists():
            return lib
        tmp = directory / f".{lib.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        cmd = [cc, *flags, "-shared", "-fPIC", "-pthread", "-o", str(tmp), str(SOURCE)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            problem = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1] if r.returncode else _self_test(tmp)
            if problem is None:
                os.replace(tmp, lib)
                return lib
        finally:
            tmp.unlink(missing_ok=True)  # a failed or timed-out build leaves nothing behind
        errors.append(f"{' '.join(flags)}: {problem}")
    raise OSError("compiling blocks/_cpu_kernels.c failed (" + "; ".join(errors) + ")")


def _load() -> ctypes.CDLL | None:
    """The compiled library, or None (the reason in ``status()``); built once per process."""
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        lib, reason = None, ""
        if os.environ.get(SWITCH, "1").strip() == "0":
            reason = f"off ({SWITCH}=0)"
        else:
            try:
                lib = ctypes.CDLL(str(_build()))
                for name in _KERNELS.values():
                    fn = getattr(lib, name)
                    fn.restype = ctypes.c_int
                    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 4 + [ctypes.c_int] * 2
                lib.vector_bytes.restype = ctypes.c_int
                reason = f"compiled ({lib._name}, {lib.vector_bytes() * 8}-bit vectors)"
            except (OSError, subprocess.SubprocessError, AttributeError) as e:
                lib = None
                reason = f"unavailable: {e}"
                warnings.warn(f"attnlab CPU kernels {reason}; using torch operators (same results, slower)",
                              RuntimeWarning, stacklevel=3)
        _state["reason"] = reason
        _state["lib"] = lib
        return lib


def status() -> str:
    """Whether the compiled kernels are in use, and why not where they are not."""
    _load()
    return str(_state["reason"])


def _usable(*ts: torch.Tensor) -> bool:
    return (
        all(type(t) is torch.Tensor and t.device.type == "cpu" and t.layout == torch.strided for t in ts)
        and len({t.dtype for t in ts}) == 1
        and ts[0].dtype in _KERNELS
        and _get_current_dispatch_mode() is None
        and not torch.compiler.is_compiling()
    )


def plus_gemm(base: torch.Tensor, a: torch.Tensor, y: torch.Tensor, stream: bool | None = None,
              threads: int | None = None) -> torch.Tensor | None:
    """``base[n] + a · y[n]`` for every n, as a new tensor: (N, C, L) + (C, K) · (N, K, L) -> (N, C, L).

    None where the compiled kernel does not apply (not a CPU float32/float64 tensor, a dispatch
    mode or compiler trace active, or the kernel unavailable): the caller then runs torch ops.
    ``stream``: non-temporal stores or not; None chooses by size (``STREAM_BYTES``, ``STREAM_MIN_K``).
    ``threads``: the kernel's threads; None runs it only where torch runs on one thread (a Ray
    trial of one CPU) and declines otherwise: beside torch's OpenMP workers, which spin for a
    while after each parallel region, the kernel's own threads lose their cores, and torch's
    multi-threaded GEMM and add was faster (docs/benchmarks.md).
    """
    if threads is None:
        if torch.get_num_threads() != 1:
            return None
        threads = 1
    if not _usable(base, a, y):
        return None
    n, c, l = base.shape
    k = a.shape[1]
    if a.shape != (c, k) or y.shape != (n, k, l):
        raise ValueError(f"plus_gemm: shapes {tuple(base.shape)} + {tuple(a.shape)} · {tuple(y.shape)} do not match")
    lib = _load()
    if lib is None:
        return None
    base, a, y = base.contiguous(), a.contiguous(), y.contiguous()
    out = torch.empty_like(base, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    if stream is None:
        stream = (out.numel() * out.element_size() >= STREAM_BYTES and k >= STREAM_MIN_K
                  and (l * out.element_size()) % 4096 != 0)
    fn = getattr(lib, _KERNELS[base.dtype])
    err = fn(a.data_ptr(), y.data_ptr(), base.data_ptr(), out.data_ptr(), n, c, k, l, int(stream), threads)
    if err:
        raise RuntimeError(f"plus_gemm: starting a thread failed (error {err})")
    return out
