"""Malformed ``python -m pipeline.data`` invocations: exit 2, one line on stderr, no traceback.

Each row builds its inputs in a fresh folder and names a piece of text the one line must
contain (the flag or path at fault).  None of them needs FFCV: every one is refused before a
writer starts.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _data_makers import make_cifar, make_imagefolder, make_tiny
from pipeline.data.__main__ import main as cli

ROOT = Path(__file__).resolve().parents[1]
NOT_UTF8 = b"n01\n\xff\xfe\xfa broken\n"


def _file(t: Path) -> Path:
    p = t / "plain.txt"
    p.write_text("x")
    return p


def _tiny_bad(t: Path, which: str) -> Path:
    base = make_tiny(t / "tiny")
    (base / which).write_bytes(NOT_UTF8)
    return base


def _bad_manifest(t: Path, content: bytes) -> Path:
    d = t / "b"
    d.mkdir()
    (d / "manifest.json").write_bytes(content)
    return d


def _fifo_manifest(t: Path) -> Path:
    d = t / "b"
    d.mkdir()
    os.mkfifo(d / "manifest.json")  # reading it blocked for ever
    return d


def _endless_manifest(t: Path) -> Path:
    d = t / "b"
    d.mkdir()
    (d / "manifest.json").symlink_to("/dev/zero")  # reading it filled the memory
    return d


def _foreign(t: Path, *files: str) -> Path:
    """A folder of another program's files (they were replaced by a write without --force)."""
    d = t / "foreign"
    d.mkdir()
    for name in files:
        (d / name).write_text('{"mine": 1}' if name == "manifest.json" else "their data")
    return d


def _cifar_garbage(t: Path) -> Path:
    d, *_ = make_cifar(t / "c10")
    (d / "data_batch_3").write_bytes(b"\x80\x04garbage")
    return t / "c10"


def _train_is_a_file(t: Path) -> Path:
    root = t / "if"
    root.mkdir()
    (root / "train").write_text("not a folder")
    (root / "val").mkdir()
    return root


W = ["write"]
CASES = {
    # counts and sizes (an allocation of 100 billion labels used to end in a traceback)
    "huge train count": (lambda t: W + ["synthetic", "--train-count", "100000000000",
                                        "--out", str(t / "o")], "--train-count"),
    "zero val count": (lambda t: W + ["synthetic", "--val-count", "0", "--out", str(t / "o")],
                       "--val-count"),
    "huge image size": (lambda t: W + ["synthetic", "--image-size", "100000", "--out",
                                       str(t / "o")], "--image-size"),
    "zero classes": (lambda t: W + ["synthetic", "--num-classes", "0", "--out", str(t / "o")],
                     "--num-classes"),
    "negative seed": (lambda t: W + ["synthetic", "--seed", "-1", "--out", str(t / "o")],
                      "--seed"),
    "huge max-res": (lambda t: W + ["digits", "--max-res", "1000000000", "--out", str(t / "o")],
                     "--max-res"),
    "zero max-res": (lambda t: W + ["digits", "--max-res", "0", "--out", str(t / "o")],
                     "--max-res"),
    "jpeg quality 101": (lambda t: W + ["digits", "--jpeg-quality", "101", "--out", str(t / "o")],
                         "--jpeg-quality"),
    "compress prob 1.5": (lambda t: W + ["digits", "--compress-prob", "1.5", "--out",
                                         str(t / "o")], "--compress-prob"),
    "zero workers": (lambda t: W + ["digits", "--workers", "0", "--out", str(t / "o")], "--workers 0"),
    "negative workers": (lambda t: W + ["digits", "--workers", "-2", "--out", str(t / "o")],
                         "--workers"),
    "synthetic flag on digits": (lambda t: W + ["digits", "--train-count", "5", "--out",
                                                str(t / "o")], "--train-count"),
    "count not a number": (lambda t: W + ["synthetic", "--train-count", "lots", "--out",
                                          str(t / "o")], "invalid int value"),
    # the command line itself
    "no out": (lambda t: W + ["digits"], "--out"),
    "unknown flag": (lambda t: W + ["digits", "--out", str(t / "o"), "--bogus"], "--bogus"),
    "bad write mode": (lambda t: W + ["digits", "--out", str(t / "o"), "--write-mode", "zip"],
                       "--write-mode"),
    "no command": (lambda t: [], "required"),
    "unknown dataset": (lambda t: W + ["imagenet22k", "--out", str(t / "o")], "imagenet22k"),
    # paths
    "no root": (lambda t: W + ["imagefolder", "--out", str(t / "o")], "root"),
    "root missing": (lambda t: W + ["imagefolder", "--root", str(t / "nowhere"), "--out",
                                    str(t / "o")], "nowhere"),
    "root is a file": (lambda t: W + ["imagefolder", "--root", str(_file(t)), "--out",
                                      str(t / "o")], "plain.txt"),
    "train/ is a file": (lambda t: W + ["imagefolder", "--root", str(_train_is_a_file(t)),
                                        "--out", str(t / "o")], "train"),
    "out is a file": (lambda t: W + ["digits", "--out", str(_file(t))], "plain.txt"),
    "out under a file": (lambda t: W + ["digits", "--out", str(_file(t) / "sub")], "plain.txt"),
    "jpeg copy of in-memory data": (lambda t: W + ["digits", "--out", str(t / "o"), "--format",
                                                   "jpeg"], "--format jpeg"),
    "cifar pickle garbage": (lambda t: W + ["cifar10", "--root", str(_cifar_garbage(t)), "--out",
                                            str(t / "o"), "--format", "jpeg"], "data_batch_3"),
    # files that are not UTF-8
    "wnids.txt not UTF-8": (lambda t: W + ["tiny-imagenet", "--root", str(_tiny_bad(t, "wnids.txt")),
                                           "--out", str(t / "o")], "wnids.txt"),
    "val annotations not UTF-8": (lambda t: W + ["tiny-imagenet", "--root",
                                                 str(_tiny_bad(t, "val/val_annotations.txt")),
                                                 "--out", str(t / "o")], "val_annotations.txt"),
    "manifest not UTF-8": (lambda t: ["info", str(_bad_manifest(t, b'{"format": "\xff\xfe"}'))],
                           "manifest.json"),
    "manifest not JSON": (lambda t: ["info", str(_bad_manifest(t, b"{ nope"))], "manifest.json"),
    "manifest of something else": (lambda t: ["info", str(_bad_manifest(t, b'{"format": "x"}'))],
                                   "manifest.json"),
    "info on nothing": (lambda t: ["info", str(t / "nowhere")], "nowhere"),
    "info on a file": (lambda t: ["info", str(_file(t))], "plain.txt"),
    "list with an argument": (lambda t: ["list", "extra"], "extra"),
    # empty paths (Path("") is the current folder; both ended in a TypeError traceback)
    "out empty": (lambda t: W + ["digits", "--out", ""], "--out"),
    # flags the write does not read: they were ignored (exit 0, not in the stored policy)
    "compress prob with auto=raw": (lambda t: W + ["digits", "--compress-prob", "0.3", "--out", str(t / "o")],
                                    "--compress-prob does not apply to write mode raw"),
    "jpeg quality with raw": (lambda t: W + ["digits", "--jpeg-quality", "50", "--write-mode", "raw", "--out",
                                             str(t / "o")], "--jpeg-quality does not apply to --write-mode raw"),
    "write mode with a JPEG copy": (lambda t: W + ["imagefolder", "--root", str(make_imagefolder(t / "if")), "--format",
                                                   "jpeg", "--write-mode", "raw", "--out", str(t / "o")],
                                    "--write-mode does not apply to --format jpeg"),
    "compress prob with a JPEG copy": (lambda t: W + ["imagefolder", "--root", str(make_imagefolder(t / "if")),
                                                      "--format", "jpeg", "--compress-prob", "0.9", "--out",
                                                      str(t / "o")], "--compress-prob does not apply to --format jpeg"),
    "root for a built-in dataset": (lambda t: W + ["digits", "--root", str(t / "nowhere"), "--out", str(t / "o")],
                                    "--root: digits is built in"),
    "info on an empty path": (lambda t: ["info", ""], "empty"),
    # manifests that are not regular files: reading them blocked, or never ended
    "manifest a FIFO": (lambda t: ["info", str(_fifo_manifest(t))], "manifest.json: cannot be read as a manifest"),
    "manifest /dev/zero": (lambda t: ["info", str(_endless_manifest(t))], "manifest.json: cannot be read as a manifest"),
    "write over a FIFO manifest": (lambda t: W + ["digits", "--out", str(_fifo_manifest(t)), "--quiet"],
                                   "or pass --force to replace it"),
    # another program's files in --out: they were replaced (exit 0)
    "write over another program's manifest": (lambda t: W + ["digits", "--out", str(_foreign(t, "manifest.json",
                                                                                           "train.beton")), "--quiet"],
                                              "not an attnlab manifest"),
    "write over betons without a manifest": (lambda t: W + ["digits", "--out", str(_foreign(t, "val.beton")), "--quiet"],
                                             "holds val.beton without a manifest.json"),
    # flags as typed: no abbreviation, no flag twice (argparse kept the last value silently)
    "abbreviated flag": (lambda t: W + ["digits", "--out", str(t / "o"), "--max", "64"], "--max"),
    "flag given twice": (lambda t: W + ["digits", "--out", str(t / "o"), "--max-res", "64", "--max-res", "32"],
                         "--max-res given twice"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_invocation_is_one_line_and_exit_2(name, tmp_path, capsys):
    make_args, must_name = CASES[name]
    argv = make_args(tmp_path)
    with pytest.raises(SystemExit) as e:  # any other exception would be a traceback
        cli(argv)
    assert e.value.code == 2, name
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert must_name in lines[0], lines[0]
    assert not (tmp_path / "o").exists()  # nothing written, no lock, no empty folder


@pytest.mark.parametrize("argv", [
    ["write", "synthetic", "--train-count", "100000000000", "--out", "{t}/o", "--quiet"],
    ["info", "{t}/nowhere"],
])
def test_the_real_command_never_prints_a_traceback(tmp_path, argv):
    argv = [a.replace("{t}", str(tmp_path)) for a in argv]
    r = subprocess.run([sys.executable, "-m", "pipeline.data", *argv], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: ")


def test_a_good_invocation_still_works(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "if")
    assert cli(["write", "imagefolder", "--root", str(root), "--out", str(tmp_path / "o"),
                "--format", "jpeg", "--quiet", "--workers", "1"]) == 0
    assert "wrote" in capsys.readouterr().out



@pytest.mark.parametrize("ray_address,extra,needle", [
    (None, ["--max-res", "0"], "--max-res"),
    (None, ["--train-count", "5"], "--train-count"),
    (None, [], "set RAY_ADDRESS"),
    ("garbage", [], "RAY_ADDRESS 'garbage'"),
    ("", [], "RAY_ADDRESS is set but empty"),
    ("local", [], "set RAY_ADDRESS"),  # 'local' started a Ray of this machine's own
])
def test_on_cluster_checks_its_flags_and_address_before_ray(tmp_path, ray_address, extra, needle):
    """``--on-cluster`` joined Ray (without RAY_ADDRESS: started a local one) before a single
    flag was checked, and the remote task's error came back prefixed by Ray's log lines."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if ray_address is not None:
        env["RAY_ADDRESS"] = ray_address
    r = subprocess.run([sys.executable, "-m", "pipeline.data", "write", "digits", "--out", str(tmp_path / "o"),
                        "--on-cluster", *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and needle in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("first,second", [("jpeg", "beton"), ("beton", "jpeg")])
def test_a_write_of_the_other_format_into_the_same_folder_is_refused(first, second, tmp_path, capsys):
    """A JPEG copy and beton files share the name manifest.json: writing one into the other's
    folder replaced its manifest (exit 0), orphaning its files.  Now one line, the folder as it
    was; --force still replaces it."""
    root = make_imagefolder(tmp_path / "if")
    out = tmp_path / "o"
    if first == "jpeg":
        assert cli(["write", "imagefolder", "--root", str(root), "--out", str(out), "--format", "jpeg", "--quiet",
                    "--workers", "1"]) == 0
    else:  # the manifest of beton files (their writer needs FFCV; the manifest is what matters here)
        out.mkdir()
        (out / "manifest.json").write_text('{"format": "attnlab-beton", "version": 1, "dataset": "digits"}')
    before = (out / "manifest.json").read_bytes()
    argv = (["write", "digits", "--out", str(out), "--quiet"] if second == "beton" else
            ["write", "imagefolder", "--root", str(root), "--out", str(out), "--format", "jpeg", "--quiet"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    what = "a JPEG copy of imagefolder" if first == "jpeg" else "beton files of digits"
    assert f"holds {what}; write into another folder (--out), or pass --force" in err, err
    assert (out / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("where", ["root", "inside"])
def test_out_at_or_inside_the_source_root_is_refused(where, tmp_path, capsys):
    """--out equal to --root or inside it wrote the copy into the dataset (root/train/images
    became a class without images); now one line and nothing written."""
    root = make_imagefolder(tmp_path / "if")
    out = root if where == "root" else root / "train"
    listing = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(SystemExit) as e:
        cli(["write", "imagefolder", "--root", str(root), "--out", str(out), "--format", "jpeg", "--quiet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "lies inside --root" in err and err.count("\n") == 1, err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == listing


def test_another_programs_files_are_left_as_they_were(tmp_path, capsys):
    out = _foreign(tmp_path, "manifest.json", "train.beton", "val.beton")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as e:
        cli(["write", "digits", "--out", str(out), "--quiet"])
    assert e.value.code == 2 and "--force" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
