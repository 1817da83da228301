"""CPU peak memory of a piece of work, from torch's own allocator trace.

``torch.profiler`` with ``profile_memory=True`` records every CPU allocation and free; replaying
them in order gives the maximum of bytes alive during ``work()`` (beyond what was alive before).
"""
from __future__ import annotations

from typing import Callable

from torch.profiler import ProfilerActivity, profile


def traced_peak_bytes(work: Callable[[], object]) -> int:
    """Peak of live bytes allocated during ``work()``, replayed from the allocation trace."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default a large buffer (a width-C activation or gradient) comes from ``mmap`` whenever its
    size reaches glibc's *dynamic* mmap threshold, and is unmapped when freed; the next step's
    buffer of the same size is then fresh memory, and its first write takes one page fault per
    4 KiB page (25.7 MB: 6,272 faults, ~10 ms here).  Whether a given buffer crosses the threshold
    depends on what was freed before it, so it flips between rows and runs.  With mmap off and the
    trim threshold out of reach every buffer comes from the heap and is reused, as a caching
    allocator (jemalloc, tcmalloc, PyTorch's CUDA allocator) would.  Returns False where the C
    library is not glibc (nothing changed).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def minor_faults() -> int:
    """Minor page faults of this process so far (first touches of fresh memory)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
