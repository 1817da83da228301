"""The FFCV tests are never skipped silently: without ffcv they fail, naming the fix, and only
``ATTNLAB_SKIP_FFCV=1`` (an explicit choice) skips them.

Checked by running pytest on the FFCV test modules in a child process where ``import ffcv``
fails (a stand-in package earlier on the path that raises ImportError).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def no_ffcv(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("no_ffcv")
    (d / "ffcv").mkdir()
    (d / "ffcv" / "__init__.py").write_text(
        "raise ImportError('ffcv is not installed here (test stand-in)')\n")
    return d


def run_pytest(no_ffcv: Path, target: str, skip: bool):
    env = {k: v for k, v in os.environ.items() if k != "ATTNLAB_SKIP_FFCV"}
    env["PYTHONPATH"] = os.pathsep.join([str(no_ffcv), str(ROOT)])
    if skip:
        env["ATTNLAB_SKIP_FFCV"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rfEs", target], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("target", [
    "tests/test_data_ffcv.py",
    "tests/test_data_determinism.py::test_numba_draws_equal_the_python_ones",
])
def test_missing_ffcv_fails_unless_skipped_on_purpose(no_ffcv, target):
    r = run_pytest(no_ffcv, target, skip=False)
    out = r.stdout + r.stderr
    assert r.returncode not in (0, 5), out[-3000:]  # 5: nothing collected
    assert "make install-ffcv" in out and "ATTNLAB_SKIP_FFCV=1" in out, out[-3000:]
    assert "ffcv is not installed here" in out
    r = run_pytest(no_ffcv, target, skip=True)
    out = r.stdout + r.stderr
    assert r.returncode in (0, 5), out[-3000:]
    assert "skipped" in out and "failed" not in out and "error" not in out.lower(), out[-3000:]
