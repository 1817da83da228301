"""The MLflow UI in headless Chromium against the real server: the grid's experiment opens on the
training-runs table (not MLflow 3's GenAI view) with the parent run and its child runs, the
comparison page puts a paper's row beside the reproductions, and the ``claims`` experiment
lists the claims.

Chromium must be installed (Debian: ``apt-get install -y chromium``); without it this test
FAILS.  Set ``ATTNLAB_SKIP_BROWSER=1`` to skip it on purpose.  Screenshots are kept under
pytest's tmp path and their paths printed (``pytest -s`` shows them).
"""
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.test_report import GRID, small_grid  # noqa: F401 - the same session fixture: one real grid

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=20000", "--window-size=1600,1400"]


@pytest.fixture(scope="session")  # session: pytest sets up wider scopes first; check before the grid runs
def chromium():
    if os.environ.get("ATTNLAB_SKIP_BROWSER") == "1":
        pytest.skip("ATTNLAB_SKIP_BROWSER=1: the browser check of the MLflow UI was skipped on purpose")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed, so the MLflow UI cannot be checked: install it "
                    "(Debian: apt-get install -y chromium), or set ATTNLAB_SKIP_BROWSER=1 to skip this check on purpose",
                    pytrace=False)
    return path


def artifacts_dir() -> Path:
    """Screenshots outlive pytest's tmp folders (pytest keeps only its last 3 runs' folders)."""
    d = Path(os.environ.get("ATTNLAB_TEST_ARTIFACTS", Path(tempfile.gettempdir()) / "attnlab-test-artifacts")) / "mlflow-ui"
    d.mkdir(parents=True, exist_ok=True)
    return d


def browse(chromium, url: str, tmp_path: Path, name: str) -> str:
    """The rendered page's visible text (a fresh profile each time: no remembered UI state),
    and a screenshot ``<name>.png`` kept as a test artifact (in ``$ATTNLAB_TEST_ARTIFACTS/mlflow-ui``,
    default ``/tmp/attnlab-test-artifacts/mlflow-ui``, and under pytest's tmp path)."""
    shot = tmp_path / f"{name}.png"
    for mode, extra in (("dom", ["--dump-dom"]), ("shot", [f"--screenshot={shot}"])):
        profile = tmp_path / f"profile-{name}-{mode}"
        r = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                           capture_output=True, text=True, timeout=180, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        if mode == "dom":
            dom = r.stdout
    assert shot.is_file() and shot.stat().st_size > 10_000
    kept = artifacts_dir() / shot.name
    shutil.copy2(shot, kept)
    print(f"\nscreenshot of {url}\n  -> {kept}")
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


def _assert_training_runs_view(text: str) -> None:
    # the "Model training" runs table, not the GenAI view (traces, sessions, judges)
    assert "Runs - Experiment" in text and "Model registry" in text, text[:600]
    for genai in ("Observability", "Judges", "Sessions", "Token Usage"):
        assert genai not in text, (genai, text[:600])


def test_grid_experiment_opens_on_the_runs_table(chromium, small_grid, tmp_path):  # noqa: F811 (the shared fixture, imported by name)
    from pipeline.tracking import grid_runs, ui_url

    uri = small_grid["uri"]
    parent, kids = grid_runs(uri, GRID)
    assert len(kids) == 4
    url = ui_url(uri, parent.info.experiment_id, order_by="best_top1")
    assert url.startswith(f"{uri}/#/experiments/{parent.info.experiment_id}/runs?workflowType=machine_learning")
    text = browse(chromium, url, tmp_path, "grid-runs")
    _assert_training_runs_view(text)
    for run in [parent] + kids:  # the parent and every child run, by name
        assert run.info.run_name in text, (run.info.run_name, text[:1500])
    assert "resnet20 baseline seed0" in text and "resnet20 spa@s1 k=0.25 seed0" in text
    assert "Sort: best_top1" in text  # sorted by the metric column, best first
    assert "5 matching runs" in text

    # the parent run's own page lists its child runs
    text = browse(chromium, ui_url(uri, parent.info.experiment_id, parent.info.run_id), tmp_path, "grid-parent")
    assert "Child runs" in text and all(k.info.run_name in text for k in kids)


def test_comparison_puts_the_paper_beside_the_runs(chromium, small_grid, tmp_path):  # noqa: F811 (the shared fixture, imported by name)
    from pipeline.tracking import compare_url, grid_runs, keyed_runs

    uri = small_grid["uri"]
    r = subprocess.run([sys.executable, "-m", "experiments.claims", "sync", "--tracking-uri", uri], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    parent, kids = grid_runs(uri, GRID)
    paper = keyed_runs(uri, "claims")["gaussian.imagenet.vs-resnet"]
    url = compare_url(uri, [parent.info.experiment_id, paper.info.experiment_id],
                      [k.info.run_id for k in kids] + [paper.info.run_id])
    text = browse(chromium, url, tmp_path, "compare")
    assert "Comparing 5 Runs from 2 Experiments" in text, text[:800]
    assert "paper: gaussian.imagenet.vs-resnet" in text and "resnet20 gaussian@s1 r=1.0 seed0" in text
    for key in ("attn.kind", "model.backbone", "data.dataset", "best_top1", "val_top1", "delta_top1"):
        assert key in text, key
    assert "cifar_resnet20" in text and "imagenet" in text and "digits" in text


def test_claims_experiment_lists_the_claims(chromium, small_grid, tmp_path):  # noqa: F811 (the shared fixture, imported by name)
    from experiments.claims import load_claims
    from pipeline.tracking import ui_url

    uri = small_grid["uri"]
    r = subprocess.run([sys.executable, "-m", "experiments.claims", "sync", "--tracking-uri", uri], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"open: {uri}/#/experiments/" in r.stdout
    claims, _ = load_claims()
    text = browse(chromium, ui_url(uri, "claims"), tmp_path, "claims")
    _assert_training_runs_view(text)
    # MLflow loads 100 runs a page ("Load more" fetches the rest)
    assert f"{min(len(claims), 100)} matching runs" in text, text[-800:]
    assert len(claims) <= 100 or "Load more" in text
    shown = re.findall(r"paper: ([a-z0-9][a-z0-9._-]+)", text)
    assert len(set(shown)) >= 10, shown  # the rows in view (the table renders what fits the window)
    assert set(shown) <= {lc.claim.id for lc in claims}
