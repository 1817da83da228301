"""The project's command-line parser and flag types: flags are read as typed, or refused."""
import os
from pathlib import Path

import pytest

from pipeline.errors import ArgumentParser, file_problem, name_list


def _parser():
    p = ArgumentParser(prog="prog")
    p.add_argument("--out")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tracking", choices=("on", "off"))
    p.add_argument("--no-tracking", dest="tracking", action="store_const", const="off")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--only", type=name_list(("se", "cbam", "spa"), "block"))
    return p


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv,needle", [
    (["--out", "a", "--out", "b"], "--out given twice: give it once"),  # argparse kept "b" silently
    (["--out=a", "--out", "b"], "--out given twice"),
    (["--json", "--json"], "--json given twice"),
    (["--tracking", "on", "--no-tracking"], "--tracking and --no-tracking both given"),
    (["--ou", "a"], "unknown flag --ou (did you mean --out?)"),  # abbreviations were accepted
    (["--only", "se,,cbam"], "an empty item in 'se,,cbam'"),
    (["--only", "se,se"], "'se' is listed twice"),
    (["--only", " "], "give at least one block"),
    (["--only", ""], "give at least one block"),
    (["--only", "se,bogus"], "unknown block(s) bogus; valid: se, cbam, spa"),
])
def test_flags_not_as_typed_are_refused(argv, needle, capsys):
    assert needle in _error(argv, capsys)


def test_flags_as_typed_are_read():
    a = _parser().parse_args(["--out", "a", "--set", "x=1", "--set", "y=2", "--only", "spa, se"])
    assert a.out == "a" and a.set == ["x=1", "y=2"] and a.only == ["spa", "se"]


def test_tokens_after_a_double_dash_or_a_sub_command_are_not_counted(capsys):
    p = ArgumentParser(prog="prog")
    p.add_argument("--state")
    sub = p.add_subparsers(dest="cmd")
    run = sub.add_parser("run")
    run.add_argument("--state")
    a = p.parse_args(["--state", "a", "run", "--state", "b"])  # one each: the parent's and the command's
    assert a.state == "b" and a.cmd == "run"
    with pytest.raises(SystemExit):
        p.parse_args(["run", "--state", "b", "--state", "c"])
    assert "--state given twice" in capsys.readouterr().err
    q = ArgumentParser(prog="prog")
    q.add_argument("--state")
    q.add_argument("rest", nargs="*")
    assert q.parse_args(["--state", "a", "--", "--state", "b"]).rest == ["--state", "b"]


def test_a_file_flag_naming_a_fifo_or_a_device_is_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # writing the results into it blocked after the whole benchmark had run
    assert "not a regular file" in file_problem(fifo)
    assert "not a regular file" in file_problem(Path("/dev/zero"))
    assert file_problem(tmp_path / "new.json") is None


def _required_parser():
    p = ArgumentParser(prog="prog")
    p.add_argument("--backbone", required=True)
    p.add_argument("--lr", type=float)
    p.add_argument("--set", action="append", default=[])
    sub = p.add_subparsers(dest="cmd")
    run = sub.add_parser("run")
    run.add_argument("--epochs", type=int)
    return p


@pytest.mark.parametrize("argv,needle", [
    # argparse checked required flags first: "the following arguments are required: --backbone"
    (["--backb", "resnet50"], "unknown flag --backb (did you mean --backbone?)"),
    (["--backbone=r", "--bogus=1"], "unknown flag --bogus"),
    (["--backbone", "r", "-x"], "unknown flag -x"),
    (["--backbone", "r", "run", "--epoch", "3"], "unknown flag --epoch (did you mean --epochs?)"),  # the sub-command's
])
def test_an_unknown_flag_is_named_before_anything_else(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        _required_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and needle in err, err
    if "did you mean" not in needle:
        assert "did you mean" not in err  # no far-fetched suggestion


def test_values_that_look_like_flags_are_not_unknown_flags():
    a = _required_parser().parse_args(["--backbone", "r", "--lr", "-0.5", "--set", "a=-1", "run", "--epochs", "-2"])
    assert (a.lr, a.set, a.epochs) == (-0.5, ["a=-1"], -2)


def test_blocks_cost_names_an_unknown_flag_before_the_required_one():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "blocks.cost", "--backb", "resnet50"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 2 and "unknown flag --backb (did you mean --backbone?)" in r.stderr, r.stderr
