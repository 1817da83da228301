"""The cost table of every registered attention block, written into docs/blocks.md.

    python -m benchmarks.cost_table [--threads 1] [--repeats 3] [--out docs/blocks.md]
                                    [--only se,spa] [--no-timing]

(from the repository root).  One row per name in ``blocks.names()``:

* **params** — a formula in the block's input channels C at its registry defaults (checked here
  against the built block at C = 64, 256 and 1024; a mismatch is printed in the row), and the
  count at C = 256;
* **added GMACs per ResNet-50 stage** (torchvision v1.5, 224×224, ``blocks.cost``: torch's FLOP
  counter, 1 MAC = 2 FLOPs) with the block inserted in that stage only, in its default slot
  (and ``every``): model GMACs minus plain ResNet-50's;
* **fwd+bwd time and peak memory** of one training step of the block alone at batch 8,
  C = 256, 56×56 (ResNet-50's stage-1 size), the method of :mod:`benchmarks.block_speed`
  (x requires grad; time: median of ``--repeats`` interleaved rounds after a warm-up; peak:
  the allocator trace's maximum of live bytes above what existed before the step, MiB = 2^20
  bytes).  The sub-sampled non-local block is the usual reference.

Model-level attention (``kind="model"``: ltpa, pyramid) has no per-stage insertion: its row
gives the whole-model figures — params and GMACs added to ResNet-50 at its default stages, and
the fwd+bwd time and peak memory of the whole ResNet-50 at 224 px, batch 2, beside the plain
ResNet-50 at the same setting.

The table is written between the markers ``<!-- cost-table:begin -->`` and
``<!-- cost-table:end -->`` of ``--out`` (created with a short header if missing), with the
command, the machine and the date above it; the rest of the file is left as it is.
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

import blocks
from benchmarks.block_speed import peak_bytes, step
from blocks.cost import count_macs, count_params
from pipeline.errors import ArgumentParser, ConfigError, int_range, name_list, path_flag_problem
from pipeline.yamlio import read_text

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- cost-table:begin -->", "<!-- cost-table:end -->"
STAGE_CHANNELS, STAGE_HW, STAGE_BATCH = 256, 56, 8
MODEL_INPUT, MODEL_BATCH = 224, 2
BACKBONE = "resnet50"

#: Parameter count of each stage block at its registry defaults, as a formula in C.
PARAM_FORMULAS: dict[str, tuple[str, Callable[[int], float]]] = {
    "cam": ("1 (the scale γ)", lambda c: 1),
    "cbam": ("C²/8 + 17C/16 + 100 (MLP r=16 with biases; 7×7 conv 2→1 and its BN)",
             lambda c: c * c / 8 + 17 * c / 16 + 100),
    "danet": ("1.25C² + 1.25C + 2 (PAM + CAM)", lambda c: 1.25 * c * c + 1.25 * c + 2),
    "gaussian": ("C²/4 + 2C + 1 (C' = C/8; σ)", lambda c: c * c / 4 + 2 * c + 1),
    "gsa": ("3C² + 33.75C (q, k, v; 2·127·C/8 relative embeddings; BN)",
            lambda c: 3 * c * c + 33.75 * c),
    "nonlocal": ("2C² + 4.5C (C' = C/2)", lambda c: 2 * c * c + 4.5 * c),
    "pam": ("1.25C² + 1.25C + 1 (C/8 query/key)", lambda c: 1.25 * c * c + 1.25 * c + 1),
    "se": ("C²/8 + 17C/16 (r=16, FC biases)", lambda c: c * c / 8 + 17 * c / 16),
    "spa": ("1.5C² + 4C (C' = C/2, no φ)", lambda c: 1.5 * c * c + 4 * c),
    "spatial_weights": ("2C² + 3C + 1 (1×1 convs C→C→C→1)", lambda c: 2 * c * c + 3 * c + 1),
    "ssa": ("2 (one BN's affine)", lambda c: 2),
}


def formula_check(name: str) -> str:
    """The formula, or what is wrong with it (missing, or a count that differs)."""
    if name not in PARAM_FORMULAS:
        return "no formula (add one to benchmarks/cost_table.py)"
    text, f = PARAM_FORMULAS[name]
    for c in (64, 256, 1024):
        got = count_params(blocks.create(name, c))
        if got != f(c):
            return f"{text} — MISMATCH: {got:,} at C={c}, formula {f(c):,.0f}"
    return text


def stage_gmacs(name: str, base_macs: int) -> list[float | str]:
    """Added GMACs with the block in one ResNet-50 stage at a time (default slot/every)."""
    out: list[float | str] = []
    for s in (1, 2, 3, 4):
        try:
            model = blocks.build_model(BACKBONE, 1000, attention={"kind": name, "stages": [s]})
            out.append((count_macs(model, (MODEL_INPUT, MODEL_INPUT)) - base_macs) / 1e9)
        except Exception as e:  # a slot the stage does not have, a block under construction
            out.append(f"error: {type(e).__name__}")
    return out


def measure(entries: list[dict[str, Any]], repeats: int) -> None:
    """Interleaved timing (one untimed and one timed step per round), then the traced peak."""
    for _ in range(repeats):
        for e in entries:
            if e.get("error"):
                continue
            step(e["module"], e["x"], e["g"])
            t0 = time.perf_counter()
            step(e["module"], e["x"], e["g"])
            e["times"].append((time.perf_counter() - t0) * 1e3)
    for e in entries:
        if not e.get("error"):
            e["peak_mib"] = peak_bytes(e["module"], e["x"], e["g"]) / 2**20
            e["time_ms"] = statistics.median(e["times"])
        e["module"] = e["x"] = e["g"] = None


def build_rows(names: list[str], timing: bool, repeats: int, base_macs: int) -> list[dict[str, Any]]:
    base = blocks.build_model(BACKBONE, 1000)
    base_params = count_params(base)
    rows: list[dict[str, Any]] = []
    stage_entries: list[dict[str, Any]] = []
    model_entries: list[dict[str, Any]] = []
    for name in names:
        entry = blocks.get(name)
        row: dict[str, Any] = {"name": name, "kind": entry.kind}
        print(f"[cost_table] {name}", file=sys.stderr, flush=True)
        if entry.kind == "stage":
            placement = entry.default_slot + (f", every {entry.default_every}" if entry.default_every > 1 else "")
            stages = "all" if entry.default_stages is None else ",".join(
                "last" if st == -1 else str(st) for st in entry.default_stages)
            row.update(placement=placement, default_stages=stages, formula=formula_check(name),
                       params_256=count_params(blocks.create(name, STAGE_CHANNELS)),
                       gmacs=stage_gmacs(name, base_macs))
            if timing:
                e = {"row": row, "make": lambda n=name: blocks.create(n, STAGE_CHANNELS),
                     "shape": (STAGE_BATCH, STAGE_CHANNELS, STAGE_HW, STAGE_HW)}
                stage_entries.append(e)
        else:
            model = blocks.build_model(BACKBONE, 1000, attention={"kind": name})
            stages = ",".join(map(str, model.attention_spec.stages))
            row.update(placement="model-level", default_stages=stages, formula="whole model (next column)",
                       params_added=count_params(model) - base_params,
                       gmacs_model=(count_macs(model, (MODEL_INPUT, MODEL_INPUT)) - base_macs) / 1e9)
            if timing:
                model_entries.append({
                    "row": row, "shape": (MODEL_BATCH, 3, MODEL_INPUT, MODEL_INPUT),
                    "make": lambda n=name: blocks.build_model(BACKBONE, 1000, attention={"kind": n}),
                })
        rows.append(row)
    if timing:
        if any(r["kind"] == "model" for r in rows):
            ref = {"name": f"plain {BACKBONE}", "kind": "reference", "placement": "—", "default_stages": "—",
                   "formula": "—", "params_added": 0, "gmacs_model": 0.0}
            rows.append(ref)
            model_entries.append({"row": ref, "make": lambda: blocks.build_model(BACKBONE, 1000),
                                  "shape": (MODEL_BATCH, 3, MODEL_INPUT, MODEL_INPUT)})
        for group in (stage_entries, model_entries):
            for e in group:
                try:
                    e["module"] = e["make"]().train()
                    e["x"] = torch.randn(*e["shape"], requires_grad=True)
                    y = e["module"](e["x"])  # (N, C, H, W) or logits (N, classes)
                    e["g"] = torch.randn_like(y)
                    y.backward(e["g"])  # warm-up
                    e["times"] = []
                except Exception as ex:
                    e["error"] = f"{type(ex).__name__}: {ex}"[:80]
            measure(group, repeats)
            for e in group:
                e["row"]["time_ms"] = e.get("time_ms", math.nan)
                e["row"]["peak_mib"] = e.get("peak_mib", math.nan)
                if e.get("error"):
                    e["row"]["note"] = e["error"]
    return rows


def _num(v: Any, spec: str) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    stage_size = f"{STAGE_CHANNELS}×{STAGE_HW}×{STAGE_HW}, batch {STAGE_BATCH}"
    lines = [
        "| block | placement (default stages) | params (C = input channels) | params at C=256 "
        "| +GMACs stage 1 | stage 2 | stage 3 | stage 4 | fwd+bwd ms | peak MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["kind"] == "stage":
            g = [_num(v, ".4f") for v in r["gmacs"]]
            params = f"{r['params_256']:,}"
            size = ""
        else:
            g = [f"whole model: {_num(r['gmacs_model'], '+.3f')}", "", "", ""]
            params = f"{r['params_added']:+,} (whole model)"
            size = " ¹"
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(
            f"| {r['name']} | {r['placement']} ({r['default_stages']}) | {r['formula']} | {params} | "
            + " | ".join(g)
            + f" | {_num(r.get('time_ms'), '.1f')}{size} | {_num(r.get('peak_mib'), '.1f')}{size}{note} |"
        )
    lines.append("")
    lines.append(f"Stage blocks: time and peak memory of the block alone, input {stage_size} "
                 f"(ResNet-50's stage-1 size), training mode, x requiring grad.  Negative GMACs "
                 f"or params: the block replaces a layer (gsa the 3×3 convs it stands in for, "
                 f"pyramid's classifier reads 3 × 256 = 768 features, not ResNet-50's 2048).  "
                 f"¹ Model-level rows (and the plain {BACKBONE} row): the whole {BACKBONE} at "
                 f"{MODEL_INPUT}×{MODEL_INPUT}, batch {MODEL_BATCH}.")
    return "\n".join(lines)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            if m:
                model = m.group(1).strip()
    except OSError:
        pass
    loads = os.getloadavg()
    shared = ": other jobs share them" if loads[0] > (os.cpu_count() or 1) else ""
    load = ", ".join(f"{v:.1f}" for v in loads)
    return (f"{model}, {os.cpu_count()} CPUs (load average {load} at the end{shared}), "
            f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def write(out: Path, text: str) -> None:
    if out.exists():
        doc = out.read_text()
        if BEGIN in doc and END in doc:
            head, rest = doc.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            out.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
            return
    out.write_text(f"# Attention blocks: cost\n\n{BEGIN}\n{text}\n{END}\n")


#: The document the table goes into is read whole; docs/blocks.md is a few tens of KiB.
DOC_MAX_BYTES = 16 * 2**20


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m benchmarks.cost_table", description=__doc__.split("\n\n")[0])
    # None: not given (with --no-timing they would do nothing, and are refused)
    ap.add_argument("--threads", type=int_range(1, 1024), default=None, help="timing: torch threads (default 1)")
    ap.add_argument("--repeats", type=int_range(1, 1000), default=None, help="timing: rounds (default 3)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "blocks.md"))
    ap.add_argument("--only", type=name_list(blocks.names(), "block"), default=None,
                    help="comma list of block names (default: all)")
    ap.add_argument("--no-timing", action="store_true", help="params and GMACs only")
    a = ap.parse_args(argv)
    unused = [f for f, v in (("--threads", a.threads), ("--repeats", a.repeats)) if v is not None]
    if a.no_timing and unused:
        ap.error(f"{' and '.join(unused)} appl{'y' if len(unused) > 1 else 'ies'} to the timing, which --no-timing leaves out")
    a.threads, a.repeats = a.threads or 1, a.repeats or 3
    names = blocks.names()
    if a.only is not None:  # given empty, it is a mistake, not "all" (name_list refuses it)
        names = [n for n in names if n in a.only]
    out = Path(a.out).expanduser().resolve()
    problem = path_flag_problem(a.out)
    if problem is None and (out.exists() or out.is_symlink()):  # the table goes into it: read it now
        try:  # a regular file of UTF-8 text (a FIFO blocked, /dev/zero never ended)
            doc = read_text(out, what="--out document", max_bytes=DOC_MAX_BYTES)
        except ConfigError as e:
            problem = " ".join(str(e).split())
        else:  # the table replaces the part between its markers; another file is not touched
            if doc.strip() and not (BEGIN in doc and END in doc):
                problem = (f"has no {BEGIN} ... {END} markers: it is not a cost-table document; give a new "
                           f"file, or add the two marker lines where the table goes")
    if problem:
        ap.error(f"--out {a.out!r}: {problem}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base_macs = count_macs(blocks.build_model(BACKBONE, 1000), (MODEL_INPUT, MODEL_INPUT))
    rows = build_rows(names, not a.no_timing, a.repeats, base_macs)
    cmd = " ".join(["python -m benchmarks.cost_table", *(argv if argv is not None else sys.argv[1:])])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"Generated by `{cmd}` on {now}; machine: {machine()}.  "
            f"GMACs: {BACKBONE} (torchvision v1.5) at {MODEL_INPUT}×{MODEL_INPUT}, the block in that "
            f"stage only, default slot; plain {BACKBONE} = {base_macs / 1e9:.3f} GMACs.\n\n"
            + table(rows))
    write(out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
