"""The benchmark scripts still run as modules (``python -m benchmarks.<name>``, no ``sys.path``
edits): quick CPU modes of the trainer and grid benchmarks (train_throughput, digits_check,
grid_overhead) and of the block benchmarks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import blocks

ROOT = Path(__file__).resolve().parents[1]


# --- trainer and grid benchmarks: train_throughput.py, digits_check.py, grid_overhead.py -------

def test_no_benchmark_file_edits_sys_path():
    for name in ("train_throughput", "grid_overhead", "digits_check"):
        assert "sys.path" not in (ROOT / "benchmarks" / f"{name}.py").read_text(), name


def test_train_throughput_times_the_trainers_own_train_epoch(monkeypatch, tmp_path):
    """Both figures come from pipeline.train.Trial.train_epoch: over the trial's real loader
    (trainer) and over a fixed batch of that loader (model only), warm-up epochs included."""
    import benchmarks.train_throughput as tt
    from pipeline.data.loader import Loader
    from pipeline.train import Trial

    calls = []
    real = Trial.train_epoch

    def spy(self, epoch):
        calls.append((epoch, type(self.train_loader)))
        return real(self, epoch)

    monkeypatch.setattr(Trial, "train_epoch", spy)
    s = dict(tt.SIZES["small"], threads=[1], repeats=1)
    rows = tt.measure("none", 16, s, str(tmp_path))
    assert [c[0] for c in calls] == [0, 1, 2, 3]  # warm-up trainer, warm-up model-only, timed pair
    kinds = [c[1] for c in calls]
    assert issubclass(kinds[0], Loader) and issubclass(kinds[2], Loader)
    assert kinds[1] is tt.FixedBatch and kinds[3] is tt.FixedBatch
    (r,) = rows
    assert r.status == "ok" and r.threads == 1 and r.res == 16
    assert len(r.trainer_runs) == len(r.model_runs) == 1 and r.trainer_ips > 0 and r.model_ips > 0
    assert r.gmacs > 0 and r.params == 269_722 and r.placement == "-"


@pytest.mark.slow
def test_train_throughput_small_prints_trainer_and_model_only_figures():
    r = _run_module("train_throughput", "--size", "small", "--threads", "1", "--repeats", "1", "--res", "16")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "timed: pipeline.train.Trial.train_epoch" in r.stdout
    rows = [line.split("|") for line in r.stdout.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in rows[0]]
    assert "trainer img/s" in head and "model-only img/s" in head
    base = dict(zip(head, (c.strip() for c in rows[1])))
    assert base["attention"] == "baseline" and base["threads"] == "1" and base["status"] == "ok"
    assert float(base["trainer img/s"]) > 0 and float(base["model-only img/s"]) > 0
    assert base["× GMACs"] == "1.000"


@pytest.mark.slow
def test_train_throughput_json_with_a_block():
    r = _run_module("train_throughput", "--size", "small", "--threads", "1", "--repeats", "1", "--res", "16",
                    "--only", "se", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["settings"]["size"] == "small" and out["settings"]["device"] == "cpu"
    assert out["env"]["timed"] == "pipeline.train.Trial.train_epoch"
    assert [row["attention"] for row in out["rows"]] == ["none", "se"]
    se = out["rows"][1]
    assert se["status"] == "ok" and se["trainer_ips"] > 0 and se["model_ips"] > 0
    assert se["gmacs_x"] >= 1.0 and se["placement"] == "gate, stages 1,2,3"


def test_train_throughput_full_size_needs_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    r = _run_module("train_throughput", "--size", "full")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "CUDA" in lines[0], r.stderr


@pytest.mark.slow
def test_digits_check_reports_the_tracking_overhead():
    r = _run_module("digits_check", "--only", "none", "--epochs", "2", "--warmup", "0", "--checkpoint-every", "1",
                    "--target", "0", "--json", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["tracking"] == "sqlite" and out["log_round_trip_s"] > 0
    (row,) = out["rows"]
    assert row["status"] == "finished" and row["epochs"] == 2 and row["run_id"]
    assert row["tracking_overhead_pct"] >= 0 and row["train_s"] > 0
    assert len(row["log_metrics_s"]) >= 2 and len(row["flush_s"]) >= 2  # an epoch's log, a flush per checkpoint


@pytest.mark.slow
def test_grid_overhead_quick_mode(tmp_path):
    """Expansion, the start-up breakdown in a fresh process and two smoke trials on a local Ray."""
    r = _run_module("grid_overhead", "--ratios", "10", "--trials", "2", "--tracking", "off", "--json",
                    timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["expand"]["trials"] == 102
    st = out["startup"]
    first = st["fit start (stop_after=0): the first trial of a process"]
    assert first[0] > 0 and first[1] > 0  # wall, CPU seconds
    assert "Trial(cfg): data, model, optimizer" in st["  of which (first start)"]
    later = st["a later trial in the same process (mean of 3)"]
    assert later["fit start (stop_after=0)"][0] > 0 and "Trial(cfg): data, model, optimizer" in later
    rows = out["tune"]
    assert len(rows) == 2 and all(row["start_to_first_epoch_s"] > 0 for row in rows)
    assert rows[0]["first_of_worker"] and rows[0]["process_start_to_first_epoch_s"] > 0
    assert "first trial of a worker" in out["tune_summary"]


# --- block benchmarks: benchmarks/block_speed.py, spa_memory.py, cost_table.py -----------------

def _run_module(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_no_benchmark_module_shadows_the_blocks_package():
    assert not (ROOT / "benchmarks" / "blocks.py").exists()
    assert (ROOT / "benchmarks" / "__init__.py").exists()


@pytest.mark.slow
def test_block_speed_json_small():
    r = _run_module("block_speed", "--sizes", "small", "--repeats", "1", "--threads", "1",
                    "--only", "spa,two 1×1", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["label"]: row for row in json.loads(r.stdout)}
    assert {"spa", "nonlocal (sub-sampled)", "two 1×1 convs C→C'→C"} <= set(rows)
    for label in ("spa", "nonlocal (sub-sampled)"):
        row = rows[label]
        assert row["status"] == "ok" and row["time_ms"] > 0 and row["peak_mib"] > 0, row


@pytest.mark.slow
def test_spa_memory_at_56x56_stays_under_a_third_of_subsampled_nonlocal():
    """The issue's target: spa's fwd+bwd peak ≤ 0.35× sub-sampled non-local (batch 8, C=256)."""
    r = _run_module("spa_memory", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["spa_auto_form"] == "folded"
    rows = out["rows"]
    assert rows["spa (topk_ratio=0.25, default)"]["x_nonlocal_sub"] <= 0.35
    assert rows["nonlocal (subsample=True)"]["x_nonlocal_sub"] == 1.0


def test_cost_table_has_a_checked_param_formula_for_every_stage_block():
    from benchmarks.cost_table import PARAM_FORMULAS, formula_check

    for name in blocks.names("stage"):
        assert name in PARAM_FORMULAS, f"{name}: add its params formula to benchmarks/cost_table.py"
        assert "MISMATCH" not in formula_check(name), formula_check(name)


@pytest.mark.slow
def test_cost_table_writes_between_its_markers(tmp_path):
    out = tmp_path / "blocks.md"
    out.write_text("# Title\n\nintro\n\n<!-- cost-table:begin -->\nold table\n<!-- cost-table:end -->\n\noutro\n")
    r = _run_module("cost_table", "--only", "se,spa", "--no-timing", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    doc = out.read_text()
    assert doc.startswith("# Title\n\nintro\n\n<!-- cost-table:begin -->\nGenerated by `python -m benchmarks.cost_table")
    assert doc.endswith("<!-- cost-table:end -->\n\noutro\n") and "old table" not in doc
    rows = {line.split("|")[1].strip(): line.split("|") for line in doc.splitlines() if line.startswith("| ")}
    assert set(rows) == {"block", "se", "spa"}
    spa_stage_gmacs = [float(v) for v in rows["spa"][5:9]]
    assert spa_stage_gmacs[0] == pytest.approx(0.3594, abs=1e-3) and max(spa_stage_gmacs) < 0.41
    assert rows["spa"][4].strip() == "99,328"


# --- gaussian_parts.py: the fused gaussian block taken apart ------------------------------------

@pytest.mark.parametrize("n, c, hw", [(3, 16, 9), (2, 24, 7)])
def test_gaussian_parts_are_the_blocks_own_gemms(n, c, hw):
    """The parts' multiply-adds are those of every GEMM the block's forward+backward runs (torch's
    FLOP counter on the block itself); what is left are the C·C'-sized products of the folded BN
    (μ = W_out m, W_out S, their gradients)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.gaussian_parts import parts

    m = blocks.create("gaussian", c).train()
    torch.nn.init.normal_(m.bn.weight)
    x = torch.randn(n, c, hw, hw, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        m(x).backward(torch.randn_like(x))
    block_macs = counter.get_total_flops() // 2
    # the batch mean of y is a matrix-vector product, which torch's FLOP counter does not count
    parts_macs = sum(p.macs for p in parts(n, c, hw) if not p.label.startswith("k = "))
    cp = c // 8
    assert 0 <= block_macs - parts_macs <= 4 * c * cp * (cp + 1), (block_macs, parts_macs)


# --- plus_gemm.py: the residual GEMM in the compiled kernel against torch ----------------------

def test_plus_gemm_benchmark_times_every_shape_and_column():
    from blocks import _cpu_kernels

    if not _cpu_kernels.status().startswith("compiled"):
        pytest.skip(_cpu_kernels.status())
    r = _run_module("plus_gemm", "--repeats", "1", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout)
    from benchmarks.plus_gemm import COLUMNS, SHAPES

    assert [row["shape"] for row in rows] == [s[0] for s in SHAPES]
    assert all(set(row["ms"]) == set(COLUMNS) and min(row["ms"].values()) > 0 for row in rows)
    assert all(row["kernel_over_torch"] == pytest.approx(row["ms"]["kernel"] / row["ms"]["torch"]) for row in rows)


def test_plus_gemm_benchmark_without_the_kernel_says_so():
    r = subprocess.run([sys.executable, "-m", "benchmarks.plus_gemm", "--repeats", "1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, ATTNLAB_CPU_KERNELS="0"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "not in use here: off (ATTNLAB_CPU_KERNELS=0)" in lines[0], r.stderr


def test_gaussian_parts_runs_and_reports_the_ratios():
    r = _run_module("gaussian_parts", "--batch", "2", "--channels", "16", "--hw", "9", "--repeats", "2", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert len(out["parts"]) == 14 and all(p["ms"] > 0 for p in out["parts"])
    assert out["parts_ms"] == pytest.approx(sum(out["groups_ms"].values()))
    assert out["block_over_convs"] == pytest.approx(out["block_ms"] / out["convs_ms"])
    assert out["parts_over_convs"] == pytest.approx(out["parts_ms"] / out["convs_ms"])


@pytest.mark.parametrize("flag", [["--batch", "0"], ["--channels", "4"], ["--hw", "-1"], ["--repeats", "x"]])
def test_gaussian_parts_bad_flags_are_one_line(flag):
    r = _run_module("gaussian_parts", *flag)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and flag[0] in r.stderr.splitlines()[0]


# --- numerics and loader host work: bf16_error.py, host_augment.py ---------------------------

def test_bf16_error_prints_a_row_per_stage_block():
    r = _run_module("bf16_error", "--json", "--channels", "16", "--size", "7x5", "--batch", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    assert set(rows) == set(blocks.names("stage"))
    assert all(0 <= v["output"] < 0.05 and 0 <= v["input_grad"] < 0.2 for v in rows.values()), rows


def test_host_augment_runs_and_its_two_forms_agree():
    r = _run_module("host_augment", "--res", "24", "--batch", "6", "--rounds", "2", "--threads", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| 24 |" in r.stdout
    bad = _run_module("host_augment", "--res", "x")
    assert bad.returncode == 2 and "--res" in bad.stderr


@pytest.mark.parametrize("name,flags,needle", [
    ("bf16_error", ["--batch", "x"], "--batch"),
    ("bf16_error", ["--size", "0x5"], "--size"),
    ("block_speed", ["--threads", "-1"], "--threads"),
    ("block_speed", ["--sizes", ","], "--sizes"),
    ("block_speed", ["--only", "zzzz"], "--only: zzzz match(es) no row"),
    ("cost_table", ["--repeats", "zero"], "--repeats"),
    ("cost_table", ["--out", "{tmp}"], "is a folder, not a file"),
    ("cost_table", ["--only", ","], "--only"),
    ("cost_table", ["--only", ""], "argument --only: give at least one block, got ''"),  # ran every block
    ("cost_table", ["--out", "{tmp}/notes.md"], "has no <!-- cost-table:begin -->"),  # appended to it
    ("cost_table", ["--out", "{tmp}/new/blocks.md", "--only", "zzz"], "--only"),  # --out's folder not made
    ("digits_check", ["--epochs", "0"], "optim.epochs"),
    ("digits_check", ["--target", "nan"], "--target"),
    ("grid_overhead", ["--cpus", "0"], "--cpus"),
    ("grid_overhead", ["--startup-child", "nope"], "--startup-child"),
    ("host_augment", ["--res", "0"], "--res"),
    ("loaders", ["--only", "nope"], "--only"),
    ("loaders", ["--json", "{tmp}"], "--json"),
    ("loaders", ["--data", "{tmp}/new", "--json", "{tmp}"], "--json"),  # --data's folder not made
    ("spa_memory", ["--size", "0"], "--size"),
    ("spa_memory", ["--batch", "x"], "--batch"),
    ("train_throughput", ["--threads", "0"], "--threads"),
    ("train_throughput", ["--res", "1"], "--res"),
    ("gaussian_parts", ["--hw", "100000"], "--hw"),
    ("plus_gemm", ["--repeats", "0"], "--repeats"),
])
def test_every_benchmark_refuses_a_bad_flag_in_one_line(name, flags, needle, tmp_path):
    """Out-of-range numbers, unknown names and unusable output paths are refused before a
    benchmark starts (they used to fail minutes later, or never); usage errors are one line
    (ending in a --help pointer), not argparse's usage block."""
    (tmp_path / "notes.md").write_text("# notes\n\nsomeone's text\n")
    r = _run_module(name, *[f.replace("{tmp}", str(tmp_path)) for f in flags], timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert needle in lines[0] and lines[0].endswith("--help)"), r.stderr
    assert not (tmp_path / "new").exists()  # nothing is made for a command that is refused
    assert (tmp_path / "notes.md").read_text() == "# notes\n\nsomeone's text\n"


# --- every command line's --help: its description is whole sentences ---------------------------

_COMMANDS = sorted(f"benchmarks.{p.stem}" for p in (ROOT / "benchmarks").glob("*.py")
                   if not p.stem.startswith("_") and "def main(" in p.read_text())
_COMMANDS += ["blocks.cost", "experiments.report"]


@pytest.mark.parametrize("module", _COMMANDS)
def test_help_describes_the_command_in_whole_sentences(module, capsys):
    """--help shows the module docstring's first paragraph, not its first line (which cut the
    loaders' and train_throughput's description mid-sentence)."""
    import importlib

    mod = importlib.import_module(module)
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    squeeze = lambda text: "".join(text.split())  # noqa: E731 (argparse re-wraps, also at hyphens)
    assert squeeze(description) == squeeze(mod.__doc__.split("\n\n")[0]), description
    assert description.rstrip().endswith("."), description


def test_digits_check_cuda_without_cuda_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    r = _run_module("digits_check", "--device", "cuda", timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "CUDA is not available" in lines[0], r.stderr
