"""More malformed invocations, of the reports, the stack's submit, blocks.cost and the benchmarks:
exit 2 with one line, before any work, and nothing changed on disk."""
import json
import os

import pytest


def _exit_code(main, argv, capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    return rc, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_report_on_an_empty_database_leaves_it_empty(tmp_path, capsys):
    from experiments.report import main

    db = tmp_path / "empty.db"
    db.write_bytes(b"")  # MLflow set its schema up in it before the command was refused
    rc, err = _exit_code(main, ["--grid", "g1", "--no-log", "--tracking-uri", f"sqlite:///{db}",
                                "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "holds no MLflow store yet" in _one_line(err)
    assert db.read_bytes() == b"" and not (tmp_path / "r").exists()


@pytest.mark.parametrize("cmd", ["report", "claims"])
def test_an_empty_tracking_uri_flag_is_not_the_environment(cmd, tmp_path, capsys, monkeypatch):
    from experiments.claims.__main__ import main as claims_main
    from experiments.report import main as report_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'ml.db'}")
    main, argv = {"report": (report_main, ["--grid", "g1", "--tracking-uri", ""]),
                  "claims": (claims_main, ["sync", "--tracking-uri", " "])}[cmd]
    rc, err = _exit_code(main, argv, capsys)
    assert rc == 2 and "--tracking-uri" in _one_line(err)
    assert not (tmp_path / "ml.db").exists()


@pytest.mark.parametrize("stack_json,command,needle", [
    ({"mlflow_url": "notaurl", "dashboard_url": "x"}, ["echo", "hi"], "no running stack"),  # a ValueError traceback
    (None, [""], "the command after -- is blank"),
    (None, ["  "], "the command after -- is blank"),
])
def test_submit_refuses_before_contacting_anything(stack_json, command, needle, tmp_path, capsys):
    from infra.submit import main

    state = tmp_path / "st"
    state.mkdir()
    if stack_json is not None:
        (state / "stack.json").write_text(json.dumps(stack_json))
    rc, err = _exit_code(main, ["--state", str(state), "--", *command], capsys)
    assert rc == 2 and needle in _one_line(err)


def _fifo(t):
    os.mkfifo(t / "fifo")
    return str(t / "fifo")


CASES = {
    # blocks.cost: "" was "none" or the default slot; an every beyond the blocks inserted nothing
    "cost empty attention": ("blocks.cost", lambda t: ["--backbone", "resnet18", "--attention", ""], "--attention is empty"),
    "cost blank slot": ("blocks.cost", lambda t: ["--backbone", "resnet18", "--attention", "se", "--slot", " "],
                        "--slot is blank"),
    "cost every beyond the blocks": ("blocks.cost", lambda t: ["--backbone", "resnet18", "--attention", "se", "--slot",
                                                               "after_block", "--every", "100000"], "inserts no block"),
    "cost flag twice": ("blocks.cost", lambda t: ["--backbone", "resnet18", "--backbone", "resnet50"],
                        "--backbone given twice"),
    "claims file twice": ("experiments.claims.__main__", lambda t: ["validate", "experiments/claims/se.yaml",
                                                                    "./experiments/claims/se.yaml"], "is given twice"),
    # benchmarks
    "cost table FIFO out": ("benchmarks.cost_table", lambda t: ["--no-timing", "--only", "se", "--out", _fifo(t)],
                            "not a regular file"),
    "cost table timing flag without timing": ("benchmarks.cost_table", lambda t: ["--no-timing", "--repeats", "5"],
                                              "--repeats applies to the timing"),
    "cost table empty item": ("benchmarks.cost_table", lambda t: ["--only", "se,,cbam"], "an empty item"),
    "loaders batch over images": ("benchmarks.loaders", lambda t: ["--images", "20", "--data", str(t / "d")],
                                  "--batch (128) must not exceed --images (20)"),
    "loaders empty only": ("benchmarks.loaders", lambda t: ["--only", "", "--data", str(t / "d")], "give at least one"),
    "loaders FIFO json": ("benchmarks.loaders", lambda t: ["--json", _fifo(t), "--data", str(t / "d")],
                          "not a regular file"),
    "block speed blank only": ("benchmarks.block_speed", lambda t: ["--only", " "], "give at least one"),
    "throughput empty only": ("benchmarks.train_throughput", lambda t: ["--only", ""], "give at least one"),
    "gaussian parts one value per channel": ("benchmarks.gaussian_parts", lambda t: ["--hw", "1", "--batch", "1"],
                                             "one value per channel"),
    "grid overhead profile without start-up": ("benchmarks.grid_overhead",
                                               lambda t: ["--profile-out", str(t / "p"), "--skip-startup"],
                                               "--skip-startup leaves out"),
    "digits check contradicting tracking": ("benchmarks.digits_check",
                                            lambda t: ["--tracking", "server", "--no-tracking"], "contradict"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_flags_are_one_line_before_any_work(name, tmp_path, capsys):
    import importlib

    module, argv, needle = CASES[name]
    before = sorted(os.listdir(tmp_path))
    rc, err = _exit_code(importlib.import_module(module).main, argv(tmp_path), capsys)
    assert rc == 2 and needle in _one_line(err), err
    assert sorted(os.listdir(tmp_path)) == sorted(set(before) | ({"fifo"} & set(os.listdir(tmp_path))))
