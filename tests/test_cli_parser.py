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
    (["--ou", "a"], "unrecognized arguments: --ou"),  # abbreviations were accepted
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
