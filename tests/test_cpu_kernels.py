"""blocks/_cpu_kernels: the compiled plus_gemm against torch's GEMM + add, its fallbacks, its cache."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from blocks import _cpu_kernels as ck

REPO = Path(__file__).resolve().parents[1]
HAVE_CC = shutil.which(os.environ.get("CC") or "cc") is not None
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler")


def _reference(base, a, y):
    return base + torch.matmul(a, y)  # (N, C, L) + (C, K) · (N, K, L)


@needs_cc
def test_the_kernel_is_compiled_where_a_compiler_exists():
    assert ck.status().startswith("compiled"), ck.status()


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, c, k, l", [
    (1, 1, 1, 1),          # a single element: the scalar tail only
    (2, 5, 3, 7),          # fewer rows than a register tile, fewer columns than a vector
    (3, 7, 33, 23),        # one full row tile plus a row, a vector plus a scalar tail
    (2, 13, 4, 16),        # whole vectors, not whole tiles
    (1, 12, 2, 769),       # a column block plus one column
    (2, 6, 9, 1600),       # two column blocks and a part
    (1, 4, 0, 9),          # K = 0: out = base
])
@pytest.mark.parametrize("threads", [1, 3])
def test_plus_gemm_matches_gemm_plus_add(dtype, n, c, k, l, threads):
    g = torch.Generator().manual_seed(n * 1000 + c * 100 + k * 10 + l)
    base = torch.randn(n, c, l, dtype=dtype, generator=g)
    a = torch.randn(c, k, dtype=dtype, generator=g)
    y = torch.randn(n, k, l, dtype=dtype, generator=g)
    out = ck.plus_gemm(base, a, y, threads=threads)  # the work split over this many threads
    assert out is not None and out.shape == base.shape and out.dtype == dtype and out.is_contiguous()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, _reference(base, a, y), rtol=tol, atol=tol * max(1, k))


@needs_cc
@pytest.mark.parametrize("l", [64, 67])  # row starts aligned for streaming stores, and not
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streaming_stores_give_the_same_values(l, dtype):
    base, a, y = (torch.randn(*s, dtype=dtype) for s in ((3, 11, l), (11, 5), (3, 5, l)))
    for stream in (True, False):
        torch.testing.assert_close(ck.plus_gemm(base, a, y, stream=stream), _reference(base, a, y))


@needs_cc
def test_non_contiguous_operands_are_read_as_their_values():
    base = torch.randn(2, 9, 40).transpose(1, 2).contiguous().transpose(1, 2)  # (2, 9, 40), strided
    a = torch.randn(3, 9).t()  # (9, 3), a transposed view
    y = torch.randn(2, 40, 3).transpose(1, 2)  # (2, 3, 40), strided
    assert not (base.is_contiguous() or a.is_contiguous() or y.is_contiguous())
    torch.testing.assert_close(ck.plus_gemm(base, a, y), _reference(base, a, y), rtol=1e-5, atol=1e-5)


def test_with_more_torch_threads_the_block_runs_on_torch_operators():
    """Beside torch's spinning OpenMP workers the kernel's threads lose their cores: it declines
    unless torch runs on one thread (the tests' default, conftest) or threads are given."""
    base, a, y = torch.randn(1, 4, 8), torch.randn(4, 2), torch.randn(1, 2, 8)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert ck.plus_gemm(base, a, y) is None
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == 1
    if HAVE_CC:
        assert ck.plus_gemm(base, a, y) is not None


def test_mismatched_shapes_are_an_error():
    if ck.plus_gemm(torch.zeros(1, 2, 3), torch.zeros(2, 1), torch.zeros(1, 1, 3)) is None:
        pytest.skip(ck.status())
    with pytest.raises(ValueError, match="do not match"):
        ck.plus_gemm(torch.zeros(1, 2, 3), torch.zeros(3, 1), torch.zeros(1, 1, 3))


def test_torch_path_where_the_kernel_would_be_invisible_or_wrong():
    """Under a dispatch mode (FLOP counters, blocks.cost), for other dtypes, mixed dtypes and
    tensor subclasses the kernel declines (None) and callers run torch operators."""
    from torch.utils.flop_counter import FlopCounterMode

    base, a, y = torch.randn(1, 4, 8), torch.randn(4, 2), torch.randn(1, 2, 8)
    with FlopCounterMode(display=False):
        assert ck.plus_gemm(base, a, y) is None
    assert ck.plus_gemm(base.half(), a.half(), y.half()) is None
    assert ck.plus_gemm(base, a.double(), y) is None
    assert ck.plus_gemm(torch.nn.Parameter(base), a, y) is None


def test_gaussian_block_counts_its_residual_gemms_under_flop_counters():
    """The fused block's residual GEMMs stay visible to torch's FLOP counter (the kernel declines
    under a dispatch mode): forward 2·C·C'·N·L for the two projections at least."""
    import blocks
    from torch.utils.flop_counter import FlopCounterMode

    m = blocks.create("gaussian", 16).train()
    x = torch.randn(2, 16, 5, 7)
    with FlopCounterMode(display=False) as counter:
        m(x)
    assert counter.get_total_flops() // 2 >= 2 * 16 * 2 * 2 * 35


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=300)


_BLOCK_AGAINST_REFERENCE = """
    import warnings, torch, blocks
    from blocks import _cpu_kernels as ck
    warnings.simplefilter("always")
    torch.set_num_threads(1)  # where the block uses the kernel
    torch.manual_seed(0)
    m = blocks.create("gaussian", 16).train()
    torch.nn.init.normal_(m.bn.weight)
    x = torch.randn(2, 16, 9, 11, requires_grad=True)
    z = m(x); z.backward(torch.ones_like(z))
    gx = x.grad.clone(); x.grad = None
    z2 = m.forward_reference(x); z2.backward(torch.ones_like(z2))
    torch.testing.assert_close(z, z2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-4)
    print("STATUS", ck.status())
"""


def test_switched_off_the_block_runs_on_torch_operators(tmp_path):
    r = _python(_BLOCK_AGAINST_REFERENCE, {"ATTNLAB_CPU_KERNELS": "0", "ATTNLAB_KERNEL_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "STATUS off (ATTNLAB_CPU_KERNELS=0)" in r.stdout
    assert not list(tmp_path.iterdir())  # nothing compiled


def test_without_a_compiler_one_warning_and_the_same_function(tmp_path):
    r = _python(_BLOCK_AGAINST_REFERENCE, {"CC": str(tmp_path / "no-such-cc"), "ATTNLAB_KERNEL_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "STATUS unavailable: no C compiler" in r.stdout
    assert r.stderr.count("attnlab CPU kernels unavailable") == 1, r.stderr[-2000:]


def test_a_compiler_that_fails_falls_back(tmp_path):
    bad = tmp_path / "cc"
    bad.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo fake 1.0; exit 0; }\necho 'cc: broken' >&2; exit 1\n")
    bad.chmod(0o755)
    r = _python(_BLOCK_AGAINST_REFERENCE, {"CC": str(bad), "ATTNLAB_KERNEL_DIR": str(tmp_path / "k")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "STATUS unavailable: compiling blocks/_cpu_kernels.c failed" in r.stdout and "cc: broken" in r.stdout
    assert not [p for p in (tmp_path / "k").iterdir()]  # no half-written library left


@needs_cc
def test_cache_is_one_library_per_cpu_and_source_and_is_reused(tmp_path):
    env = {"ATTNLAB_KERNEL_DIR": str(tmp_path), "HOME": str(tmp_path / "no-home")}
    first = _python(_BLOCK_AGAINST_REFERENCE, env)
    assert first.returncode == 0, first.stderr[-2000:]
    libs = sorted(tmp_path.iterdir())
    assert len(libs) == 1 and libs[0].suffix == ".so", libs
    assert f"STATUS compiled ({libs[0]}" in first.stdout
    mtime = libs[0].stat().st_mtime_ns
    second = _python(_BLOCK_AGAINST_REFERENCE, env)
    assert second.returncode == 0 and sorted(tmp_path.iterdir()) == libs and libs[0].stat().st_mtime_ns == mtime


@needs_cc
def test_no_home_folder_builds_in_the_temporary_directory(tmp_path):
    """A Ray worker may have no home folder: the cache falls back to the temporary directory."""
    (tmp_path / "file").write_text("")  # a home under a file can be created by nobody, root included
    (tmp_path / "tmp").mkdir()
    env = {"HOME": str(tmp_path / "file" / "home"), "XDG_CACHE_HOME": "", "ATTNLAB_KERNEL_DIR": "",
           "TMPDIR": str(tmp_path / "tmp")}
    r = _python(_BLOCK_AGAINST_REFERENCE, env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"STATUS compiled ({tmp_path / 'tmp'}" in r.stdout, r.stdout


@needs_cc
def test_a_library_that_computes_wrong_is_never_used(tmp_path):
    """Each build runs a known answer in a child process before it is cached (an instruction
    the CPU lacks would kill the child, a wrong result fails it): a bad build is not loaded."""
    bad_src = tmp_path / "bad.c"
    bad_src.write_text(
        "#include <stdint.h>\n"
        "int plus_gemm_f32(void* a, void* y, void* b, void* o, int64_t n, int64_t c, int64_t k, int64_t l, int s, int t) { return 0; }\n"
        "int plus_gemm_f64(void* a, void* y, void* b, void* o, int64_t n, int64_t c, int64_t k, int64_t l, int s, int t) { return 0; }\n"
        "int vector_bytes(void) { return 32; }\n")
    real = shutil.which(os.environ.get("CC") or "cc")
    fake = tmp_path / "cc"
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && exec {real} --version\n"
                    f"while [ $# -gt 0 ]; do [ \"$1\" = -o ] && out=$2; shift; done\n"
                    f"exec {real} -shared -fPIC -o \"$out\" {bad_src}\n")
    fake.chmod(0o755)
    r = _python(_BLOCK_AGAINST_REFERENCE, {"CC": str(fake), "ATTNLAB_KERNEL_DIR": str(tmp_path / "k")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "STATUS unavailable: compiling blocks/_cpu_kernels.c failed" in r.stdout, r.stdout
    assert "failed its self-test" in r.stdout
    assert not list((tmp_path / "k").iterdir())
