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
    ("recursive-alias", BASE + "description: &a [*a]\n", "recursive alias", 6, 2.0),
    ("recursive-alias-mapping", BASE + "description: &a {k: [1, *a]}\n", "recursive alias", 6, 2.0),
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
    # block sizes far out of range: counted on the meta device, before any memory is taken (they
    # filled the memory or allocated 25-180 GB and crashed in the estimate)
    ("nonlocal-inter-channels-1e8", BASE + "axes:\n  attention: [nonlocal]\n  inter_channels: [100000000]\n",
     "axes.inter_channels[0]: cifar_resnet20 with attention nonlocal (inter_channels=100000000) would have", 8, 10.0),
    ("cbam-kernel-100001", BASE + "axes:\n  attention: [cbam]\n  kernel_size: [7, 100001]\n",
     "axes.kernel_size[1]", 8, 10.0),
    ("pyramid-dim-1e8", BASE + "axes:\n  attention: [pyramid]\n  dim: [100000000]\n", "over the limit of 1,000,000,000", 8, 10.0),
    ("spatial-weights-hidden-1e8", BASE + "axes:\n  attention: [spatial_weights]\n  hidden: [100000000]\n", "axes.hidden[0]", 8, 10.0),
    ("ltpa-global-dim-1e8", BASE + "axes:\n  attention: [ltpa]\n  global_dim: [100000000]\n", "axes.global_dim[0]", 8, 10.0),
    ("gsa-heads-1e6", BASE + "axes:\n  attention: [gsa]\n  heads: [1000000]\n", "axes.heads[0]", 8, 10.0),
    ("base-attention-huge", "name: t\nbase:\n  model:\n    attention: {kind: nonlocal, inter_channels: 100000000}\n",
     "base.model.attention: cifar_resnet20 with attention nonlocal", 4, 10.0),
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
    # execution-only keys (where or how a trial runs) as axes: trials that differ only there share one id
    ("execution-axis-workers", BASE + "axes:\n  data.workers: [0, 2]\n", "axes.data.workers: 'data.workers' says", 7, None),
    ("execution-axis-tracking-uri", BASE + "axes:\n  tracking.uri: ['sqlite:////tmp/a.db']\n",
     "axes.tracking.uri: 'tracking' says where or how", 7, None),
    ("execution-axis-work-dir", BASE + "axes:\n  work_dir: [/tmp/a, /tmp/b]\n", "axes.work_dir: 'work_dir' says", 7, None),
    ("execution-axis-name", BASE + "axes:\n  name: [a, b]\n", "axes.name: 'name' says", 7, None),
    ("execution-axis-threads", BASE + "axes:\n  attention: [spa]\n  threads: [1, 2]\n", "axes.threads: 'threads'", 8, None),
    ("work-dir-empty", "name: t\nbase:\n  work_dir: ''\n", "base.work_dir: the path is empty", 3, None),  # was the cwd
    ("tracking-uri-empty", "name: t\nbase:\n  tracking: {uri: ' '}\n", "base.tracking.uri: the value is empty", 3, None),
    # a value listed twice in one axis: its trials were merged without a word
    ("axis-attention-twice", BASE + "axes:\n  attention: [se, spa, se]\n", "axes.attention[2]: 'se' repeats axes.attention[0]", 7, None),
    ("axis-value-twice", BASE + "axes:\n  attention: [gaussian]\n  radius: [1, 2, 1.0]\n", "axes.radius[2]: 1.0 repeats axes.radius[0]", 8, None),
    ("dotted-axis-twice", BASE + "axes:\n  optim.lr: [0.1, 0.1]\n", "axes.optim.lr[1]: 0.1 repeats", 7, None),
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
    (["--spec", "x.yaml", "--tflops", "inf"], "--tflops must be an effective rate of 0.001..1,000,000 TFLOP/s, got inf"),
    (["--spec", "x.yaml", "--tflops", "1e-9"], "--tflops must be an effective rate of 0.001..1,000,000 TFLOP/s, got 1e-09"),
    (["--spec", "x.yaml", "--max-concurrent", "99999999999999999999"], "--max-concurrent must be 0..100,000, got 99,999,999,999,999,999,999"),
    (["--spec", "x.yaml", "--bogus"], "unknown flag --bogus"),
])
def test_usage_errors_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        grid_main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.splitlines() == [f"experiments/grid.py: error: {needle} (see experiments/grid.py --help)"], err


@pytest.mark.parametrize("name", ["deep-brackets", "alias-bomb", "recursive-alias", "invalid-utf8"])
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
    assert not (tmp_path / "runs").exists()  # the grid's new storage folder is not left behind, empty


@pytest.mark.parametrize("url,needle", [("notaurl", "Could not parse SQLAlchemy URL"),
                                        ("sqlite:////proc/attnlab/study.db", "cannot create its folder"),
                                        ("sqlite://", "in-memory SQLite study"),
                                        ("sqlite:///:memory:", "in-memory SQLite study")])
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
    assert not (tmp_path / "runs").exists()  # nor the new storage folder left behind, empty


# --- entry points other than the spec file: every class refused in one line, before any work ---

def _main_exit(main, argv) -> tuple[int, str]:
    """``main(argv)`` in this process: its exit code and stderr (any other exception fails the test)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, err.getvalue()


def _one_line(err: str) -> str:
    """The error line of a one-line error."""
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", ["grid", "search", "train"])
@pytest.mark.parametrize("path,needle", [("/proc/self/mem", "cannot read the"), ("", "the path is empty")])
def test_unreadable_or_empty_config_path_is_one_line(command, path, needle):
    """A file whose reads fail (mode 000 for another user; /proc/self/mem even for root) or an
    empty path (Path('') is the current folder): one line, not an OSError traceback."""
    from experiments.search import main as search_main
    from pipeline.train import main as train_main

    main, argv = {"grid": (grid_main, ["--spec", path, "--dry-run"]),
                  "search": (search_main, ["--spec", path, "--check"]),
                  "train": (train_main, ["--config", path])}[command]
    rc, err = _main_exit(main, argv)
    assert rc == 2 and needle in _one_line(err), err


@pytest.mark.parametrize("command", ["report", "claims"])
@pytest.mark.parametrize("uri,needle", [
    ("bogus://x", "unknown scheme 'bogus'"),
    ("sqlite://rel.db", "a SQLite URI is sqlite:///PATH"),
    ("http://", "no host"),
    ("http://127.0.0.1:99999", "Port out of range"),
    ("mysql://::::", "ValueError"),
    ("postgresql+psycopg2://u:secret@127.0.0.1:9/db", "cannot connect"),
    ("sqlite:///{notdb}", "is not an SQLite database"),
])
def test_malformed_tracking_uri_is_one_line(command, uri, needle, tmp_path):
    """What MLflow only judges on first use (a traceback from its store registry or SQLAlchemy)
    is one line before any store, run or folder is made; a password is not printed; a file that
    is not a database is left as it was."""
    from experiments.claims.__main__ import main as claims_main
    from experiments.report import main as report_main

    notdb = tmp_path / "notes.txt"
    notdb.write_text("not a database")
    uri = uri.format(notdb=notdb)

    main, argv = {"report": (report_main, ["--grid", "g", "--tracking-uri", uri, "--out", str(tmp_path / "o")]),
                  "claims": (claims_main, ["sync", "--tracking-uri", uri])}[command]
    rc, err = _main_exit(main, argv)
    line = _one_line(err)
    assert rc == 2 and needle in line and "secret" not in line, err
    assert not (tmp_path / "o").exists() and notdb.read_text() == "not a database"


@pytest.mark.parametrize("command", ["grid", "search"])
@pytest.mark.parametrize("var,value,needle", [
    ("RAY_ADDRESS", "garbage", "RAY_ADDRESS 'garbage': not an address"),
    ("RAY_ADDRESS", "", "RAY_ADDRESS is set but empty"),
    ("RAY_ADDRESS", "127.0.0.1:99999", "not an address"),
    ("RAY_ADDRESS", "tcp://h:1", "unknown scheme 'tcp'"),
    ("RAY_ADDRESS", "127.0.0.1:1", "nothing answers at 127.0.0.1:1"),  # Ray retried for minutes
    ("RAY_ADDRESS", "ray://127.0.0.1:1", "nothing answers at 127.0.0.1:1"),
    ("RAY_ADDRESS", "http://127.0.0.1:1", "nothing answers at 127.0.0.1:1"),
    ("MLFLOW_TRACKING_URI", "", "MLFLOW_TRACKING_URI is set but empty"),
    ("MLFLOW_TRACKING_URI", "sqlite://rel.db", "a SQLite URI is sqlite:///PATH"),
    ("MLFLOW_TRACKING_URI", "sqlite:////etc/hostname", "is not an SQLite database"),
])
def test_bad_environment_is_one_line_before_any_cluster_work(command, var, value, needle, tmp_path):
    """RAY_ADDRESS and MLFLOW_TRACKING_URI as the drivers read them: judged before a tracking
    store, a study or a Ray is made (Ray judged the address only in ray.init, after the grid's
    MLflow database existed; an empty one silently meant a local Ray)."""
    spec = ROOT / "experiments" / "specs" / ("smoke.yaml" if command == "grid" else "search/digits.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update({"HOME": str(tmp_path / "home"), var: value})
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{command}.py"), "--spec", str(spec),
                        "--storage", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120,
                       env=env, cwd=tmp_path)
    assert r.returncode == 2 and needle in _one_line(r.stderr), r.stdout[-1000:] + r.stderr[-2000:]
    assert not [p for p in tmp_path.glob("runs/**/*") if p.is_file()]  # no mlflow.db, no study.db


@pytest.fixture
def not_ray_servers():
    """Two listeners on 127.0.0.1 that are not Ray: an HTTP server (404 for every path) and a
    socket that accepts connections and never answers.  Yields their ports."""
    import http.server
    import socket
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_error(404)

        def log_message(self, *args):
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel completes connections; nobody reads
    try:
        yield {"http": web.server_address[1], "silent": silent.getsockname()[1]}
    finally:
        web.shutdown()
        web.server_close()
        silent.close()


@pytest.mark.parametrize("command", ["grid", "search"])
@pytest.mark.parametrize("form,server,needle", [
    ("{}", "http", "not as Ray (a gRPC server) (a reply that is not HTTP/2"),
    ("{}", "silent", "not as Ray (a gRPC server) (no reply in 3 s)"),
    ("ray://{}", "http", "not as Ray (a gRPC server)"),
    ("http://{}", "http", "not as a Ray dashboard (HTTP 404 for /api/version)"),
    ("http://{}", "silent", "not as a Ray dashboard (no reply in 3 s)"),
])
def test_ray_address_where_something_else_answers_is_one_line(command, form, server, needle, not_ray_servers,
                                                              tmp_path):
    """RAY_ADDRESS naming a port where a server that is not Ray listens: the TCP probe passed and
    ray.init retried until it was killed.  Ray's GCS and client server answer the HTTP/2
    preface, its dashboard /api/version; anything else is one line before any store is made."""
    address = form.format(f"127.0.0.1:{not_ray_servers[server]}")
    spec = ROOT / "experiments" / "specs" / ("smoke.yaml" if command == "grid" else "search/digits.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update({"HOME": str(tmp_path / "home"), "RAY_ADDRESS": address})
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{command}.py"), "--spec", str(spec),
                        "--storage", str(tmp_path / "runs")], capture_output=True, text=True, timeout=60,
                       env=env, cwd=tmp_path)
    line = _one_line(r.stderr)
    assert r.returncode == 2 and f"RAY_ADDRESS {address!r}" in line and needle in line, r.stderr[-2000:]
    assert not [p for p in tmp_path.glob("runs/**/*") if p.is_file()]


@pytest.mark.parametrize("command,argv,needle", [
    ("grid", ["--json"], "--json applies to --dry-run only"),
    ("grid", ["--dry-run", "--grace-period", "3"], "--grace-period applies to --scheduler asha only"),
    ("grid", ["--storage", ""], "--storage ''"),
    ("search", ["--check", "--scheduler", "none", "--grace-period", "2"], "--grace-period applies to"),
    ("grid", ["--spec", str(ROOT / "experiments" / "specs" / "smoke.yaml"), "--dry-run", "--scheduler", "asha",
              "--grace-period", "12"], "--grace-period 12 is not below the trials' 12 epoch(s): ASHA would stop no"),
    ("search", ["--check", "--grace-period", "6"], "--grace-period 6 is not below the trials' 6 epoch(s)"),
    ("search", ["--storage", " "], "--storage is blank (only whitespace, 1 character(s))"),  # echoed as ''
    ("grid", ["--storage", "\t"], "--storage is blank"),
    ("search", ["--check", "--trials", "1000000000000"], "--trials must be 1..100,000"),
    ("search", ["--check", "--study-storage", ""], "--study-storage ''"),
    ("search", ["--check", "--study-storage", "  "], "--study-storage is blank (only whitespace, 2 character(s))"),
])
def test_ignored_or_conflicting_flags_are_refused(command, argv, needle, tmp_path):
    """A flag that would be silently ignored (--json on a real run ran the whole grid), an empty
    --storage (silently the default) or a count beyond the spec's own limit."""
    from experiments.search import main as search_main

    main = grid_main if command == "grid" else search_main
    spec = "x.yaml" if command == "grid" else str(ROOT / "experiments" / "specs" / "search" / "digits.yaml")
    rc, err = _main_exit(main, ([] if "--spec" in argv else ["--spec", spec]) + argv)
    assert rc == 2 and needle in _one_line(err), err


@pytest.mark.parametrize("case", ["no-database", "unknown-run", "unknown-parent", "deleted-run", "default-store"])
def test_train_refuses_a_run_id_the_store_does_not_hold(case, tmp_path):
    """tracking.run_id / parent_run_id that name no active run: one line and exit 2 before the
    data and the model are built (it was MLflow's traceback when the trial attached), and a
    tracking database that does not exist is not created by the check."""
    from mlflow.tracking import MlflowClient

    from pipeline.train import main as train_main

    db = tmp_path / ("absent" if case == "no-database" else ".") / "m.db"
    uri = f"sqlite:///{db}"
    work = tmp_path / "work"
    if case != "no-database":
        client = MlflowClient(uri if case != "default-store" else f"sqlite:///{work / 'mlflow.db'}")
        run = client.create_run(client.create_experiment("e"))
        if case == "deleted-run":
            client.delete_run(run.info.run_id)
    store = [] if case == "default-store" else ["--set", f"tracking.uri={uri}"]
    key, rid, needle = {
        "no-database": ("run_id", "abc123", "does not exist"),
        "unknown-run": ("run_id", "ab" * 16, "no such run"),
        "unknown-parent": ("parent_run_id", "cd" * 16, "no such run"),
        "deleted-run": ("run_id", None, "was deleted"),
        "default-store": ("run_id", "ef" * 16, "no such run"),
    }[case]
    rid = rid or run.info.run_id
    rc, err = _main_exit(train_main, store + ["--set", f"work_dir={work}", "--set", f"tracking.{key}={rid}"])
    line = _one_line(err)
    assert rc == 2 and f"tracking.{key} {rid!r}" in line and needle in line, err
    assert db.exists() == (case not in ("no-database", "default-store"))
    assert not (tmp_path / "absent").exists()  # the check makes no folder for the database
    assert work.exists() == (case == "default-store")  # nor the work folder


@pytest.mark.parametrize("case", ["work-dir-is-a-file", "work-dir-under-a-file", "checkpoint-dir-is-a-file",
                                  "checkpoint-flag-is-a-file", "stop-after-negative", "set-twice",
                                  "experiment-empty", "checkpoint-flag-empty", "resume-flag-empty",
                                  "checkpoint-flag-under-a-file"])
def test_train_refuses_bad_input_before_its_run_is_made(case, tmp_path):
    """pipeline.train: a folder it writes that is a file (a traceback after its MLflow run was
    created), a negative --stop-after (ran zero epochs and exited 0), a key set twice (the last
    silently won), an empty experiment name (MLflow's traceback)."""
    from pipeline.train import main as train_main

    (tmp_path / "afile").write_text("keep me")
    work = ["--set", f"work_dir={tmp_path / 'work'}"]
    argv, needle = {
        "work-dir-is-a-file": (["--set", f"work_dir={tmp_path / 'afile'}"], "work_dir"),
        "work-dir-under-a-file": (["--set", f"work_dir={tmp_path / 'afile' / 'w'}"], "is a file, not a folder"),
        "checkpoint-dir-is-a-file": (work + ["--set", f"checkpoint.dir={tmp_path / 'afile'}"], "checkpoint.dir"),
        "checkpoint-flag-is-a-file": (work + ["--checkpoint-dir", str(tmp_path / "afile")], "--checkpoint-dir"),
        "stop-after-negative": (work + ["--stop-after", "-1"], "--stop-after must be >= 1"),
        "set-twice": (work + ["--set", "optim.lr=0.1", "--set", "optim.lr=0.2"], "--set optim.lr given twice"),
        "experiment-empty": (work + ["--set", "tracking.experiment=''"], "tracking.experiment"),
        # an empty path flag would be the current folder
        "checkpoint-flag-empty": (work + ["--checkpoint-dir", ""], "--checkpoint-dir '': the path is empty"),
        "resume-flag-empty": (work + ["--resume", " "], "--resume ' ': the path is empty"),
        "checkpoint-flag-under-a-file": (work + ["--checkpoint-dir", str(tmp_path / "afile" / "c")], "--checkpoint-dir"),
    }[case]
    rc, err = _main_exit(train_main, argv)
    assert rc == 2 and needle in _one_line(err), err
    assert (tmp_path / "afile").read_text() == "keep me"
    assert not list(tmp_path.glob("**/mlflow.db"))
    assert not (tmp_path / "work").exists()  # refused before any folder is made


@pytest.mark.parametrize("case", ["server-not-answering", "empty", "in-memory", "file"])
def test_train_reads_mlflow_tracking_uri(case, tmp_path, monkeypatch):
    """pipeline.train tracks to MLFLOW_TRACKING_URI when the config names no tracking.uri, as the
    grid does (a dead server there went unnoticed and the run went to a local file); a bad value is
    one line before any work."""
    from mlflow.tracking import MlflowClient

    from pipeline.train import main as train_main

    db = tmp_path / "env" / "m.db"
    value, needle = {"server-not-answering": ("http://127.0.0.1:9", "not reachable"),
                     "empty": ("", "MLFLOW_TRACKING_URI is set but empty"),
                     "in-memory": ("sqlite:///:memory:", "in-memory SQLite"),
                     "file": (f"sqlite:///{db}", None)}[case]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", value)
    work = tmp_path / "work"
    rc, err = _main_exit(train_main, ["--set", f"work_dir={work}", "--set", "model.backbone=cifar_resnet20",
                                      "--set", "data.dataset=digits", "--set", "data.train_res=16",
                                      "--set", "data.val_res=16", "--set", "optim.epochs=1"]
                         if case == "file" else ["--set", f"work_dir={work}"])
    if needle is not None:
        assert rc == 2 and needle in _one_line(err), err
        assert not work.exists()
        return
    assert rc == 0, err
    assert not (work / "mlflow.db").exists()
    runs = MlflowClient(value).search_runs([e.experiment_id for e in MlflowClient(value).search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


@pytest.mark.parametrize("argv,needle", [
    (["--grid", "../../escape"], "--grid '../../escape'"),
    (["--grid", ""], "--grid ''"),
    (["--grid", "g", "--out", ""], "--out ''"),
    (["--grid", "g", "--out", " "], "--out is blank"),
])
def test_report_names_that_are_paths_are_refused(argv, needle, tmp_path):
    """--grid names the default output folder (../../x wrote outside it); an empty --out was the
    current folder."""
    from experiments.report import main as report_main

    rc, err = _main_exit(report_main, [*argv, "--tracking-uri", "sqlite:///" + str(tmp_path / "m.db")])
    assert rc == 2 and needle in _one_line(err), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["state-empty", "env-var-empty", "same-ports", "status-damaged", "env-damaged",
                                  "up-damaged", "env-without-stack", "submit-damaged", "submit-working-dir"])
def test_stack_and_submit_bad_input_is_one_line(case, tmp_path, monkeypatch):
    """infra.stack / infra.submit: an empty --state or $ATTNLAB_STATE (the current folder), two
    servers on one port (MLflow was started, then the Ray head refused), a damaged stack.json
    (a JSON traceback), `env` where no stack runs (exports without RAY_ADDRESS)."""
    import socket

    from infra.stack import main as stack_main
    from infra.submit import main as submit_main

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "stack.json").write_text("{nope")
    monkeypatch.delenv("ATTNLAB_STATE", raising=False)
    with socket.socket() as s:  # a port in use: the old code's refusal of it is another message
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = str(s.getsockname()[1])
        main, argv, needle = {
            "state-empty": (stack_main, ["status", "--state", ""], "--state ''"),
            "env-var-empty": (stack_main, ["status"], "ATTNLAB_STATE is set but empty"),
            "same-ports": (stack_main, ["up", "--state", str(tmp_path / "st"), "--mlflow-port", busy, "--ray-port", busy],
                           "each server needs a port of its own"),
            "status-damaged": (stack_main, ["status", "--state", str(damaged)], "stack.json is damaged"),
            "env-damaged": (stack_main, ["env", "--state", str(damaged)], "stack.json is damaged"),
            "up-damaged": (stack_main, ["up", "--state", str(damaged), "--mlflow-port", busy], "stack.json is damaged"),
            "env-without-stack": (stack_main, ["env", "--state", str(tmp_path / "none")], "no stack in"),
            "submit-damaged": (submit_main, ["--state", str(damaged), "--", "true"], "stack.json is damaged"),
            "submit-working-dir": (submit_main, ["--state", str(damaged), "--working-dir", str(tmp_path / "nowhere"),
                                                 "--", "true"], "--working-dir"),
        }[case]
        if case == "env-var-empty":
            monkeypatch.setenv("ATTNLAB_STATE", "")
        rc, err = _main_exit(main, argv)
    assert rc == 2 and needle in _one_line(err), err
    assert not (tmp_path / "st").exists() and not (tmp_path / "none").exists()
    assert (damaged / "stack.json").read_text() == "{nope"


@pytest.mark.parametrize("value", ["3", "{top1: true}", "[1, 2]", "null"])
def test_search_objective_of_the_wrong_type_is_one_line(value, tmp_path):
    """``objective`` is a str or a list: a value of neither type was two lines (one per member
    of the Union) for one problem."""
    from experiments.search import main as search_main

    p = tmp_path / "search.yaml"
    p.write_text(f"name: s\nbase: {{optim: {{epochs: 2}}}}\nobjective: {value}\n"
                 "space:\n  optim.lr: {low: 0.01, high: 0.1}\n")
    rc, err = _main_exit(search_main, ["--spec", str(p), "--check"])
    assert rc == 2 and f"{p}:3: objective: expected top1" in _one_line(err), err


def test_tracking_uri_with_a_driver_not_installed_names_the_way_out():
    """SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project installs psycopg2."""
    import importlib.util

    from pipeline.tracking import uri_problem

    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg 3 is installed here: a bare postgresql:// is usable")
    line = uri_problem("postgresql://u:secret@127.0.0.1:9/db")
    assert "No module named 'psycopg'" in line and "postgresql+psycopg2://" in line and "secret" not in line
    assert uri_problem("databricks") is None and uri_problem("sqlite:////tmp/x.db") is None


@pytest.mark.parametrize("command", ["grid", "search"])
def test_refused_after_the_stores_were_opened_leaves_no_database(command, tmp_path):
    """A refusal that comes after the tracking store (and the study) were opened — here Ray
    cannot be joined: ``auto`` with no cluster on a private Ray temp folder — is one line, and
    the SQLite files this command made are gone again."""
    spec = ROOT / "experiments" / "specs" / ("smoke.yaml" if command == "grid" else "search/digits.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update({"HOME": str(tmp_path / "home"), "RAY_ADDRESS": "auto", "RAY_TMPDIR": str(tmp_path / "raytmp")})
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{command}.py"), "--spec", str(spec),
                        "--storage", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300,
                       env=env, cwd=tmp_path)
    assert r.returncode == 2 and "cannot join the Ray cluster" in _one_line(r.stderr), r.stdout[-1000:] + r.stderr[-2000:]
    assert not [p for p in tmp_path.glob("runs/**/*") if p.is_file()]  # no mlflow.db, no study.db


@pytest.mark.parametrize("content,needle", [(b"", "is not a PyTorch checkpoint"),
                                            (b"root:x:0:0:root:/root:/bin/bash\n", "is not a PyTorch checkpoint"),
                                            (None, "is not a file")])
def test_train_bad_pretrained_is_one_line_and_makes_no_store(content, needle, tmp_path):
    """model.pretrained that is empty, not a checkpoint or missing: torch's unpickler traceback
    before; now one line, exit 2, and the default SQLite store is not created (it was opened
    before the model was built)."""
    ckpt = tmp_path / "weights.pt"
    if content is not None:
        ckpt.write_bytes(content)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "cwd").mkdir()
    r = subprocess.run([sys.executable, "-m", "pipeline.train", "--set", f"model.pretrained={ckpt}"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path / "cwd")
    assert r.returncode == 2 and needle in _one_line(r.stderr), r.stderr[-2000:]
    assert not (tmp_path / "cwd" / "mlflow.db").exists()


@pytest.mark.parametrize("var,needle", [("ATTNLAB_CACHE", "ATTNLAB_CACHE"), ("XDG_CACHE_HOME", "XDG_CACHE_HOME")])
def test_cache_folder_variable_naming_a_file_is_one_line(var, needle, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ATTNLAB_CACHE", "XDG_CACHE_HOME")}
    env.update({"HOME": str(tmp_path / "home"), var: str(afile)})
    r = subprocess.run([sys.executable, "-m", "pipeline.train"], capture_output=True, text=True, timeout=300,
                       env=env, cwd=tmp_path)
    assert r.returncode == 2 and needle in _one_line(r.stderr), r.stderr[-2000:]
    assert afile.read_text() == "keep"


def test_train_refuses_to_overwrite_an_earlier_checkpoint(tmp_path):
    """A checkpoint already in the trial's checkpoint folder is an earlier run's: training from
    scratch would overwrite it (and delete it at the end with keep_final off).  Refused in one
    line, the file untouched, unless --resume continues it."""
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "last.pt").write_bytes(b"earlier run")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["HOME"] = str(tmp_path / "home")
    r = subprocess.run([sys.executable, "-m", "pipeline.train", "--checkpoint-dir", str(ck)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "already exists" in _one_line(r.stderr) and "--resume" in r.stderr, r.stderr[-2000:]
    assert (ck / "last.pt").read_bytes() == b"earlier run"
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("command", ["grid", "search"])
@pytest.mark.parametrize("storage,needle", [("nosuch://bucket/runs", "unknown scheme 'nosuch'"),
                                            ("://", "unknown scheme ''"), ("s3://", "no bucket or path")])
def test_storage_uri_of_unknown_scheme_is_one_line(command, storage, needle, tmp_path):
    spec = ROOT / "experiments" / "specs" / ("smoke.yaml" if command == "grid" else "search/digits.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update({"HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{command}.py"), "--spec", str(spec),
                        "--storage", storage], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 2 and needle in _one_line(r.stderr) and "--storage" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("key,value", [("data.workers", "[0, 2]"), ("tracking.run_id", "[a, b]"),
                                       ("work_dir", "[/tmp/a, /tmp/b]"), ("threads", "{low: 1, high: 2}"),
                                       ("checkpoint.every", "{low: 1, high: 3}")])
def test_search_refuses_an_execution_only_dimension(key, value, tmp_path):
    """A search dimension over a key that only says where or how a trial runs (it was accepted and
    reached the trials, or did nothing): one line naming the key, exit 2."""
    from experiments.search import main as search_main

    p = tmp_path / "search.yaml"
    choices = value if value.startswith("{") else "{choices: " + value + "}"
    p.write_text("name: s\nbase:\n  model: {backbone: cifar_resnet20}\n  data: {dataset: digits}\n"
                 f"space:\n  attention: {{choices: [none, spa]}}\n  {key}: {choices}\n")
    rc, err = _main_exit(search_main, ["--spec", str(p), "--check"])
    line = _one_line(err)
    assert rc == 2 and f"space.{key}:" in line and "not searched" in line, err


@pytest.mark.parametrize("command", ["train", "search", "cost"])
def test_a_block_size_far_out_of_range_is_one_line_before_any_memory(command, tmp_path):
    """A block parameter that would make a model of billions of parameters (it filled the memory
    or crashed after allocating tens of GB): one line naming it, counted on the meta device."""
    from blocks.cost import main as cost_main
    from experiments.search import main as search_main
    from pipeline.train import main as train_main

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nbase:\n  model: {backbone: cifar_resnet20}\n  data: {dataset: digits}\n"
                    "space:\n  attention: {choices: [{kind: nonlocal, stages: [2]}]}\n"
                    "  inter_channels: {low: 1, high: 100000000}\n")
    main, argv = {"train": (train_main, ["--set", f"work_dir={tmp_path / 'w'}", "--set",
                                         "model.attention={kind: nonlocal, inter_channels: 100000000}"]),
                  "search": (search_main, ["--spec", str(spec), "--check"]),
                  "cost": (cost_main, ["--backbone", "cifar_resnet20", "--attention", "gsa", "--param", "heads=1000000"]),
                  }[command]
    t = time.perf_counter()
    rc, err = _main_exit(main, argv)
    assert rc == 2 and "over the limit of 1,000,000,000" in _one_line(err), err
    assert time.perf_counter() - t < 20
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("key", ["model.pretrained", "tracking.uri", "tracking.run_id", "checkpoint.dir", "data.root",
                                 "data.beton_dir", "data.jpeg_dir", "work_dir", "fault.once_file"])
def test_train_refuses_an_empty_path_or_uri_value(key, tmp_path):
    """``--set KEY=""``: an empty path or URI read as "unset" (training from scratch without the
    named checkpoint, a local ./mlflow.db, the current folder); now one line naming the key."""
    from pipeline.train import main as train_main

    work = [] if key == "work_dir" else ["--set", f"work_dir={tmp_path / 'w'}"]
    rc, err = _main_exit(train_main, work + ["--set", f"{key}=''"])
    line = _one_line(err)
    assert rc == 2 and f"--set {key}:" in line and "empty" in line, err
    assert not list(tmp_path.iterdir())


def test_train_set_of_a_whole_section_that_drops_config_file_keys_is_refused(tmp_path):
    """``--set optim={lr: 0.1}`` on a config file that sets optim.epochs silently put epochs back
    to its default; the attention spec, one value, is still replaced whole."""
    from pipeline.config import load_trial_config
    from pipeline.errors import ConfigError

    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim: {epochs: 3, lr: 0.05}\nmodel: {attention: {kind: spa, topk_ratio: 0.5}}\n")
    with pytest.raises(ConfigError, match=r"--set optim replaces the whole of optim, dropping optim.epochs"):
        load_trial_config(cfg, ["optim={lr: 0.1}"])
    assert load_trial_config(cfg, ["optim={lr: 0.1, epochs: 4}"]).optim.epochs == 4
    assert load_trial_config(cfg, ["model.attention={kind: nonlocal}"]).model.attention == {"kind": "nonlocal"}


@pytest.mark.parametrize("argv,needle", [
    (["--attention", "spa", "--stages", "1,,2"], "expected integers like '1,2,3', got '1,,2'"),  # read as [1, 2]
    (["--attention", "spa", "--param", "=1"], "--param expects KEY=VALUE, got '=1'"),  # an empty name
])
def test_cost_cli_slips_are_one_line(argv, needle):
    from blocks.cost import main as cost_main

    rc, err = _main_exit(cost_main, ["--backbone", "cifar_resnet20", *argv])
    assert rc == 2 and needle in _one_line(err), err


@pytest.mark.parametrize("key", [".lr", "optim..lr", "optim."])
def test_train_set_key_with_an_empty_part_names_it(key, tmp_path):
    """``--set .lr=0.1`` said "config: unknown key" without naming what was wrong."""
    from pipeline.train import main as train_main

    rc, err = _main_exit(train_main, ["--set", f"work_dir={tmp_path / 'w'}", "--set", f"{key}=0.1"])
    assert rc == 2 and f"--set {key}: a dotted key with an empty part" in _one_line(err), err
