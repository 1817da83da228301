"""Bad input to ``experiments/grid.py``: one line per problem naming file:line, exit 2, fast.

Each case is a spec file that was accepted, hung, filled memory, printed a traceback or named
the wrong line before (see the table's comments); it must now fail before any cluster work
with exactly one line on stderr.
"""
from __future__ import annotations

import contextlib
import os
import io
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.grid import main as grid_main

ROOT = Path(__file__).resolve().parents[1]
GRID = [sys.executable, str(ROOT / "experiments" / "grid.py")]

BASE = "name: t\nbase:\n  model: {backbone: cifar_resnet20}\n  data: {dataset: digits}\n  optim: {epochs: 1}\n"


def _flow(values) -> str:
    return "[" + ", ".join(map(str, values)) + "]"


# (id, file text or bytes, text the one error line contains, line it names (None: no line), max seconds)
CASES = [
    # files
    ("invalid-utf8", BASE.encode() + b"description: \"\xff\xfe caf\xe9\"\n", "not UTF-8", 6, None),
    ("utf16-bom", (BASE + "seeds: 1\n").encode("utf-16"), "UTF-16 byte-order mark", 1, None),
    ("deep-brackets", BASE + "description: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested more than", 6, 2.0),
    ("alias-bomb", BASE + "x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
     + "".join(f"x{i}: &a{i} {_flow([f'*a{i - 1}'] * 9)}\n" for i in range(1, 10)), "aliases expanded", None, 2.0),
    ("duplicate-key", BASE + "seeds: 1\nseeds: 2\n", 'duplicate key "seeds"', 7, None),
    ("nul-character", BASE + "description: a\x00b\n", "character U+0000 is not allowed", 6, None),
    ("duplicate-nested-key", "name: t\nbase:\n  optim: {lr: 0.1, lr: 0.2}\n", 'duplicate key "lr"', 3, None),
    ("not-a-mapping", "- a\n- b\n", "a spec must be a mapping", 1, None),
    # sizes that explode: counted before anything is built
    ("seeds-1e9", BASE + "seeds: 1000000000\n", "1,000,000,000 trials, over the limit", 6, 1.0),
    ("axis-product-1e6", BASE + "axes:\n  attention: [spa]\n  topk_ratio: " + _flow([i / 100 for i in range(1, 101)])
     + "\n  optim.lr: " + _flow([i / 100 for i in range(1, 101)]) + "\n  optim.momentum: "
     + _flow([i / 101 for i in range(100)]) + "\n", "trials, over the limit of 10,000", 6, 1.0),
    ("40k-values", BASE + "axes:\n  optim.lr: [" + "1," * 40_000 + "1]\n", "more than 20,000 values", 7, 6.0),
    ("50MB-axis", BASE + "axes:\n  optim.lr: [" + "0.1, " * 10_000_000 + "0.1]\n", "bytes; the limit is 262,144", None, 1.0),
    # numbers in the wrong form (strict types: a bool is not an int, a string is not a number)
    ("radius-word", BASE + "axes:\n  attention: [gaussian]\n  radius: [wide]\n", "axes.radius[0]: expected a finite number", 8, None),
    ("radius-inf", BASE + "axes:\n  attention: [gaussian]\n  radius: [.inf]\n", "axes.radius[0]: inf is not a finite", 8, None),
    ("lr-inf", "name: t\nbase:\n  optim:\n    lr: .inf\n", "base.optim.lr: inf is not a finite number", 4, None),
    ("lr-nan", "name: t\nbase:\n  optim:\n    lr: .nan\n", "base.optim.lr: nan is not a finite number", 4, None),
    ("lr-string", "name: t\nbase:\n  optim:\n    lr: '0.1'\n", "base.optim.lr", 4, None),
    ("epochs-bool", "name: t\nbase:\n  optim:\n    epochs: true\n", "base.optim.epochs", 4, None),
    ("nesterov-without-momentum", "name: t\nbase:\n  optim:\n    nesterov: true\n    momentum: 0.0\n",
     "base.optim.momentum: must be > 0 with nesterov", 5, None),
    ("nesterov-momentum-axis", "name: t\nbase:\n  optim:\n    nesterov: true\naxes:\n  optim.momentum: [0.9, 0.0]\n",
     "axes.optim.momentum[1]: must be > 0 with nesterov", 6, None),
    ("seeds-string", BASE + 'seeds: "3"\n', "seeds: expected a count", 6, None),
    ("seeds-bool", BASE + "seeds: true\n", "seeds: expected a count", 6, None),
    ("seeds-list-of-floats", BASE + "seeds: [1.0, 2.0]\n", "seeds: expected a non-empty list of integer seeds", 6, None),
    ("reduction-word", BASE + "axes:\n  attention: [se]\n  reduction: [abc]\n", "axes.reduction[0]: expected an integer", 8, None),
    ("subsample-string", BASE + "axes:\n  attention: [nonlocal]\n  subsample: ['yes']\n", "axes.subsample[0]: expected true/false", 8, None),
    # values that cannot run
    ("train-res-100000", "name: t\nbase:\n  data: {train_res: 100000}\n", "base.data.train_res", 3, None),
    ("val-res-100000", "name: t\nbase:\n  data:\n    val_res: 100000\n", "base.data.val_res", 4, None),
    ("num-classes-1e8", "name: t\nbase:\n  model: {num_classes: 100000000}\n", "base.model.num_classes", 3, None),
    ("train-res-1-nonlocal", "name: t\nbase:\n  model: {attention: nonlocal}\n  data: {train_res: 1}\n", "base.data.train_res", 4, None),
    ("nonlocal-stage4-too-small", "name: t\nbase:\n  model: {backbone: resnet50}\n  data: {train_res: 32}\n"
     "axes:\n  attention: [nonlocal]\n  stages: [[4]]\n", "needs inputs of at least 64 px", 7, None),
    # errors inside base.model.attention and dotted axes name their line
    ("base-attention-param", "name: t\nbase:\n  model:\n    backbone: cifar_resnet20\n    attention:\n      kind: spa\n"
     "      topk_ratio: abc\n", "base.model.attention.topk_ratio", 7, None),
    ("base-attention-range", "name: t\nbase:\n  model:\n    attention:\n      kind: spa\n      topk_ratio: 3.0\n",
     "topk_ratio must be in (0, 1]", 4, None),
    ("dotted-axis-value", BASE + "axes:\n  attention: [spa]\n  optim.lr:\n    - 0.1\n    - -1.0\n", "axes.optim.lr[1]", 8, None),
    ("dotted-axis-unknown-key", BASE + "axes:\n  optim.lrr: [0.1]\n", "axes.optim.lrr[0]: unknown key", 7, None),
    # specs mean what they say
    ("seed-axis", BASE + "axes:\n  attention: [spa]\n  seed: [1, 2]\n", "axes.seed: seeds are set by 'seeds:'", 8, None),
    ("none-with-stages", BASE + "axes:\n  attention: [se, {kind: none, stages: [1]}]\n",
     "attention 'none' takes no other keys", 7, None),
    ("data-root-is-a-file", "name: t\nbase:\n  data:\n    dataset: cifar10\n    root: " + __file__ + "\n",
     "data.root: not a folder", 5, None),
]


def _run(path: Path, *extra: str) -> tuple[int, str, float]:
    err, out = io.StringIO(), io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = grid_main(["--spec", str(path), "--dry-run", *extra])
        except SystemExit as e:
            rc = e.code
    return rc, err.getvalue(), time.perf_counter() - t


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_is_one_line_exit_2(case, tmp_path):
    name, content, needle, line, limit = case
    p = tmp_path / "spec.yaml"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    rc, err, took = _run(p)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert needle in err, err
    assert (f"{p}:{line}:" if line else f"{p}") in err, err
    if limit is not None:
        assert took < limit, f"{name}: {took:.2f}s"


def test_every_problem_is_reported_at_once(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("name: t\n"                            # 1
                 "base:\n"                              # 2
                 "  optim: {epochs: 0}\n"               # 3
                 "  data: {train_res: 100000}\n"        # 4
                 "axes:\n"                              # 5
                 "  attention: [spa, sse]\n"            # 6
                 "  seed: [1]\n"                        # 7
                 "seeds: true\n")                       # 8
    rc, err, _ = _run(p)
    assert rc == 2
    lines = err.splitlines()
    assert all(line.startswith(f"error: {p}:") for line in lines), err
    # the spec-level problem (seeds) is found first: the axes cannot be expanded without it
    assert any(f"{p}:8: seeds" in line for line in lines), err

    p.write_text(p.read_text().replace("seeds: true", "seeds: 2"))
    rc, err, _ = _run(p)
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 4, err
    for where, what in [(3, "base.optim.epochs"), (4, "base.data.train_res"), (6, "unknown attention 'sse'"),
                        (7, "axes.seed")]:
        assert any(f"{p}:{where}:" in line and what in line for line in lines), (where, what, err)


def test_max_trials_flag_raises_the_limit(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text(BASE + "axes:\n  optim.lr: " + _flow([round(0.001 * i, 3) for i in range(1, 5002)]) + "\nseeds: 2\n")
    rc, err, _ = _run(p)
    assert rc == 2 and "10,002 trials, over the limit of 10,000" in err
    rc, err, _ = _run(p, "--max-trials", "10002", "--json")
    assert rc == 0, err


def test_data_root_absent_is_not_an_error_for_a_dry_run(tmp_path, capsys):
    p = tmp_path / "spec.yaml"
    p.write_text("name: t\nbase:\n  data: {dataset: cifar10, root: /nonexistent/cifar-10-batches-py}\n"
                 "  optim: {epochs: 1}\n")
    rc, err, _ = _run(p)
    assert rc == 0, err


@pytest.mark.parametrize("argv,needle", [
    (["--spec"], "argument --spec: expected one argument"),
    ([], "the following arguments are required: --spec"),
    (["--spec", "x.yaml", "--max-trials", "abc"], "argument --max-trials: invalid int value: 'abc'"),
    (["--spec", "x.yaml", "--max-trials", "0"], "--max-trials must be >= 1"),
    (["--spec", "x.yaml", "--tflops", "inf"], "--tflops must be a finite number > 0"),
    (["--spec", "x.yaml", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_usage_errors_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        grid_main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.splitlines() == [f"experiments/grid.py: error: {needle}",
                                "(run experiments/grid.py --help for usage)"], err


@pytest.mark.parametrize("name", ["deep-brackets", "alias-bomb", "invalid-utf8"])
def test_cli_has_no_traceback(name, tmp_path):
    """The same files through the real command line: exit 2, one line, no traceback."""
    _, content, needle, _, _ = next(c for c in CASES if c[0] == name)
    p = tmp_path / "spec.yaml"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = subprocess.run(GRID + ["--spec", str(p), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_non_finite_numbers_are_reported_with_the_other_problems(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("name: t\nbase:\n  optim: {lr: .inf}\naxes:\n  attention: [spa, sse]\n")
    rc, err, _ = _run(p)
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 2, err
    assert f"{p}:3: base.optim.lr: inf is not a finite number" in lines[0]
    assert f"{p}:5: axes.attention[1]: unknown attention 'sse'" in lines[1]


@pytest.mark.parametrize("command", ["grid", "search"])
@pytest.mark.parametrize("case", ["storage-is-a-file", "storage-under-a-file", "storage-cannot-be-made",
                                  "name-empty", "name-with-slash", "name-dot-dot"])
def test_run_flags_are_checked_before_any_cluster_work(command, case, tmp_path):
    """--storage and --name of both commands: one line, exit 2, nothing started, the file in the way
    untouched (no Ray address is set: reaching cluster work would start a local Ray)."""
    (tmp_path / "afile").write_text("keep me")
    spec = ROOT / "experiments" / "specs" / ("smoke.yaml" if command == "grid" else "search/digits.yaml")
    flag, value, needle = {
        "storage-is-a-file": ("--storage", str(tmp_path / "afile"), "not a folder"),
        "storage-under-a-file": ("--storage", str(tmp_path / "afile" / "runs"), "is a file, not a folder"),
        "storage-cannot-be-made": ("--storage", "/proc/attnlab-runs", "cannot be created"),
        "name-empty": ("--name", "", "--name ''"),
        "name-with-slash": ("--name", "a/b", "--name 'a/b'"),
        "name-dot-dot": ("--name", "..", "--name '..'"),
    }[case]
    argv = [sys.executable, str(ROOT / "experiments" / f"{command}.py"), "--spec", str(spec), flag, value]
    if flag == "--name":
        argv += ["--storage", str(tmp_path / "runs")]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["HOME"] = str(tmp_path / "home")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) <= 2 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "afile").read_text() == "keep me"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "home" / "attnlab-runs").exists()


@pytest.mark.parametrize("command", ["grid", "train", "claims"])
@pytest.mark.parametrize("case", ["plain-path", "file-scheme", "sqlite-under-a-file", "server-not-answering"])
def test_bad_tracking_uri_is_one_line_before_any_work(command, case, tmp_path):
    """A tracking store runs cannot be written to is one line and exit 2 before any data, model or
    cluster work — not a traceback from MLflow in every trial, not minutes of client retries."""
    (tmp_path / "afile").write_text("keep me")
    uri, needle = {
        "plain-path": (str(tmp_path / "mlruns"), "file store is not supported"),
        "file-scheme": (f"file://{tmp_path / 'mlruns'}", "file store is not supported"),
        "sqlite-under-a-file": (f"sqlite:///{tmp_path / 'afile' / 'm.db'}", "cannot create"),
        "server-not-answering": ("http://127.0.0.1:9", "is not reachable"),
    }[case]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["HOME"] = str(tmp_path / "home")
    argv = {
        "grid": [sys.executable, str(ROOT / "experiments" / "grid.py"), "--spec",
                 str(ROOT / "experiments" / "specs" / "smoke.yaml"), "--storage", str(tmp_path / "runs")],
        "train": [sys.executable, "-m", "pipeline.train", "--set", f"tracking.uri={uri}",
                  "--set", f"work_dir={tmp_path / 'work'}"],
        "claims": [sys.executable, "-m", "experiments.claims", "sync", "--tracking-uri", uri],
    }[command]
    if command == "grid":
        env["MLFLOW_TRACKING_URI"] = uri
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "afile").read_text() == "keep me"
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "work").exists()


@pytest.mark.parametrize("url,needle", [("notaurl", "Could not parse SQLAlchemy URL"),
                                        ("sqlite:////proc/attnlab/study.db", "cannot create its folder")])
def test_search_bad_study_storage_is_one_line_and_creates_no_run(url, needle, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["HOME"] = str(tmp_path / "home")
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "search.py"), "--spec",
                        str(ROOT / "experiments" / "specs" / "search" / "digits.yaml"), "--storage", str(tmp_path / "runs"),
                        "--study-storage", url], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not list((tmp_path / "runs").glob("**/mlflow.db"))  # no tracking store touched before the study check
