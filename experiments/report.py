"""A grid's report: its runs from MLflow, the claims it bears on, Markdown + HTML + PNG plots.

    python -m experiments.report --grid NAME [--tracking-uri URI] [--out DIR] [--metric best_top1]

Reads the grid's parent run (tag ``attnlab.grid=NAME``) and its child runs (``mlflow.parentRunId``),
and the claims registry (experiments/claims/*.yaml).  Writes ``report.md``, ``report.html``,
``report.json`` and PNG plots (top-1 vs SPA's top-k ratio, vs the Gaussian radius, a stage ×
block heatmap, accuracy vs GMACs) to ``--out`` (default ~/attnlab-runs/reports/NAME), logs them
to the parent run under ``report/`` and prints the report's path and its MLflow address.

Per claim the grid bears on: our mean ± std over seeds, the paired (same-seed) delta with a 95%
t-interval and its n, and a verdict — ``reproduced``, ``contradicted``, ``inconclusive`` or
``not run at this scale`` (a claim on ImageNet checked with a digits grid is the last: the report
says what differs and draws no conclusion from it).

Bad input (unknown grid, unreachable tracking URI, unwritable --out): one line, exit 2.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


from pipeline.errors import ArgumentParser, ConfigError, cli_exit

DEFAULT_OUT = Path("~/attnlab-runs/reports").expanduser()
VERDICTS = ("reproduced", "contradicted", "inconclusive", "not run at this scale")
SPEC_KEYS = ("kind", "stages", "slot", "every")


# ---------------------------------------------------------------------------------------------
# the grid's trials
# ---------------------------------------------------------------------------------------------

@dataclass
class TrialRow:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]

    @property
    def kind(self) -> str:
        return self.params.get("attn.kind", "none")

    @property
    def seed(self) -> str:
        return self.params.get("seed", "0")

    @property
    def base_key(self) -> str:
        """Everything but the attention and the seed: what a paired baseline shares."""
        return json.dumps({k: v for k, v in sorted(self.params.items())
                           if not k.startswith("attn.") and k != "seed"}, sort_keys=True)

    @property
    def point(self) -> str:
        """The ablation point: the run name without its seed."""
        return re.sub(r"\s*seed\d+$", "", self.name) or self.name

    def attn(self, key: str) -> Optional[str]:
        return self.params.get(f"attn.{key}")


def _num(text: Optional[str]) -> Any:
    if text is None:
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def trial_rows(runs: list[Any]) -> list[TrialRow]:
    rows = []
    for r in runs:
        status = r.data.tags.get("attnlab.status") or r.info.status.lower()
        rows.append(TrialRow(r.info.run_id, r.info.run_name or r.info.run_id[:8], status,
                             dict(r.data.params), dict(r.data.metrics)))
    return sorted(rows, key=lambda t: (t.kind != "none", t.name))


def attention_spec(row: TrialRow) -> Any:
    """The attention spec back from the ``attn.*`` params (for recomputing cost)."""
    if row.kind == "none":
        return None
    spec: dict[str, Any] = {"kind": row.kind}
    for k, v in row.params.items():
        if k.startswith("attn.") and k != "attn.kind":
            key = k[len("attn."):]
            if key == "stages":
                spec[key] = [int(s) for s in v.split(",") if s]
            else:
                spec[key] = _num(v)
    return spec


_GMACS_CACHE: dict[str, Optional[float]] = {}


def trial_gmacs(row: TrialRow) -> Optional[float]:
    """The ``gmacs`` metric the trainer logs, else counted from the run's config."""
    if "gmacs" in row.metrics:
        return row.metrics["gmacs"]
    key = json.dumps({k: v for k, v in row.params.items() if k.startswith(("attn.", "model.", "data."))}, sort_keys=True)
    if key not in _GMACS_CACHE:
        try:
            from blocks import build_model
            from blocks.backbones import get_backbone
            from blocks.cost import count_macs

            bb = row.params["model.backbone"]
            res = _num(row.params.get("data.val_res")) or _num(row.params.get("data.train_res")) or \
                get_backbone(bb).default_input
            classes = _num(row.params.get("model.num_classes")) or 10
            m = build_model(bb, classes, attention=attention_spec(row),
                            small_stem=row.params.get("model.small_stem") == "True")
            _GMACS_CACHE[key] = count_macs(m, (res, res)) / 1e9
        except Exception:  # noqa: BLE001 - a config we cannot rebuild: no cost figure
            _GMACS_CACHE[key] = None
    return _GMACS_CACHE[key]


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------

@dataclass
class Interval:
    n: int
    mean: Optional[float]
    std: Optional[float]
    lo: Optional[float]
    hi: Optional[float]

    def text(self, digits: int = 2) -> str:
        if self.mean is None:
            return "—"
        s = f"{self.mean:+.{digits}f}" if self.lo is not None or self.n == 1 else f"{self.mean:.{digits}f}"
        if self.lo is None:
            return f"{s} (n={self.n}, no interval)"
        return f"{s} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}] (95% t, n={self.n})"


def t_interval(values: list[float], level: float = 0.95) -> Interval:
    """Mean and the Student-t confidence interval of the mean; no interval for n < 2."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return Interval(0, None, None, None, None)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(1, mean, None, None, None)
    sd = statistics.stdev(values)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Interval(n, mean, sd, mean - half, mean + half)


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def verdict_delta(ci: Interval, d: Optional[float], op: str) -> tuple[str, str]:
    """Verdict for a published difference ``d`` (``op`` ==, >=, <=) or a direction (``d`` None:
    the setting is better, i.e. the delta is > 0), given our paired-delta interval."""
    if ci.n < 2 or ci.lo is None:
        return "inconclusive", f"n={ci.n} paired seed(s): no interval"
    if d is None:
        if ci.lo > 0:
            return "reproduced", "the whole 95% interval is above 0"
        if ci.hi < 0:
            return "contradicted", "the whole 95% interval is below 0"
        return "inconclusive", "the 95% interval contains 0"
    wrong = {"==": ci.hi < d or ci.lo > d, ">=": ci.hi < d, "<=": ci.lo > d}[op]
    if wrong:
        return "contradicted", f"the published {d:+.2f} lies outside the 95% interval (claim: Δ {op} {d:+.2f})"
    if d > 0 and ci.lo <= 0 or d < 0 and ci.hi >= 0:
        return "inconclusive", "consistent with the published value, but the interval contains 0"
    return "reproduced", f"consistent with Δ {op} {d:+.2f}, and the interval excludes 0"


def verdict_value(ci: Interval, value: float, tolerance: float) -> tuple[str, str]:
    if ci.n < 2 or ci.lo is None:
        return "inconclusive", f"n={ci.n} seed(s): no interval"
    if ci.lo - tolerance <= value <= ci.hi + tolerance:
        return "reproduced", "the published value lies in our 95% interval"
    return "contradicted", "the published value lies outside our 95% interval"


# ---------------------------------------------------------------------------------------------
# claims against the grid
# ---------------------------------------------------------------------------------------------

@dataclass
class ClaimRow:
    id: str
    title: str
    source: str
    status: str
    published: str
    ours: str
    delta: str
    verdict: str
    why: str
    run_url: Optional[str] = None


def _attn_of(setting: Any) -> dict[str, Any]:
    a = setting.model.attention
    if a in (None, "none", "baseline"):
        return {"kind": "none"}
    return {"kind": a} if isinstance(a, str) else dict(a)


def _row_matches(row: TrialRow, attn: dict[str, Any]) -> bool:
    """The claim's attention (kind, and stages/params where it gives them) is this run's."""
    import blocks

    if row.kind != attn["kind"]:
        return False
    if attn["kind"] == "none":
        return True
    if attn.get("stages") is not None and "stages" in attn:
        want = attn["stages"] if isinstance(attn["stages"], list) else [attn["stages"]]
        if row.attn("stages") != ",".join(str(s) for s in want):
            return False
    try:
        defaults = blocks.get(attn["kind"]).param_defaults()
    except KeyError:
        defaults = {}
    for k, v in attn.items():
        if k in SPEC_KEYS or k in ("blocks", "instantiation"):
            continue
        got = row.attn(k)
        got_v = _num(got) if got is not None else defaults.get(k, "<absent>")
        if got_v != v:
            return False
    return True


def _our_metric(metric: str, default: str) -> Optional[str]:
    return {"top1": default, "top1_err": default, "top5": "val_top5", "top5_err": "val_top5",
            "params": "params", "gmacs": "gmacs"}.get(metric)


def _published(c: Any) -> str:
    name = {"top1": "top-1 %", "top5": "top-5 %", "top1_err": "top-1 error %", "top5_err": "top-5 error %",
            "params": "params", "gmacs": "GMACs", "ap_box": "box AP", "ap_mask": "mask AP", "miou": "mIoU",
            "gaze_error": "gaze error"}[c.metric]
    if c.kind == "value":
        return f"{c.value:g} ({name})"
    if c.kind == "comparison":
        return f"Δ {name} {c.op} {c.delta:+g}" + (" % of versus" if c.relative else "")
    if c.kind == "direction":
        return f"{'higher' if HIGHER.get(c.metric, True) else 'lower'} {name} than versus"
    return c.metric


def scale_gaps(c: Any, grid: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(blocking, other) differences between the claim's setting and the grid's."""
    s = c.setting
    blocking, other = [], []
    if s.task != "classification":
        blocking.append(f"task {s.task} vs classification")
    if s.data is not None and s.data.dataset not in grid["datasets"]:
        blocking.append(f"dataset {s.data.dataset} vs {', '.join(sorted(grid['datasets']))}")
    if s.data is None:
        blocking.append("the claim names no dataset")
    if s.model.backbone and s.model.backbone not in grid["backbones"]:
        other.append(f"backbone {s.model.backbone} vs {', '.join(sorted(grid['backbones']))}")
    if s.optim.epochs and grid["epochs"] and max(grid["epochs"]) < s.optim.epochs:
        other.append(f"{s.optim.epochs} vs {max(grid['epochs'])} epochs")
    if s.data is not None and s.data.train_res and grid["res"] and s.data.train_res not in grid["res"]:
        other.append(f"resolution {s.data.train_res} vs {', '.join(str(r) for r in sorted(grid['res']))}")
    return blocking, other


def evaluate_claims(claims: list[Any], rows: list[TrialRow], metric: str) -> list[ClaimRow]:
    from experiments.claims import describe, versus_setting  # noqa: F401 (imported for its side effect (registration) or to check that it imports)

    done = [r for r in rows if r.status == "finished" and metric in r.metrics]
    kinds = {r.kind for r in rows}
    grid = {"datasets": {r.params.get("data.dataset") for r in rows} - {None},
            "backbones": {r.params.get("model.backbone") for r in rows} - {None},
            "epochs": [int(r.params["optim.epochs"]) for r in rows if r.params.get("optim.epochs", "").isdigit()],
            "res": {int(r.params["data.train_res"]) for r in rows if r.params.get("data.train_res", "").isdigit()}}
    out = []
    for lc in claims:
        c = getattr(lc, "claim", lc)
        if c.kind == "structural":
            continue
        a = _attn_of(c.setting)
        vs = versus_setting(c)
        b = _attn_of(vs) if vs is not None else None
        if a["kind"] not in kinds or (b is not None and b["kind"] not in kinds):
            continue
        if c.kind == "value" and a["kind"] == "none" and c.setting.model.backbone not in grid["backbones"]:
            continue  # a plain other backbone's accuracy says nothing about this grid
        if vs is not None and vs.model.backbone != c.setting.model.backbone and \
                not {vs.model.backbone, c.setting.model.backbone} <= grid["backbones"]:
            continue  # a claim about backbones (GSA-ResNet vs ResNet), not about a block this grid ran
        src = c.source.paper.split(" (")[0] + (f", arXiv {c.source.arxiv}" if c.source.arxiv else "") + \
            (f", {c.source.repo}" if c.source.repo else "") + f", {c.source.where}"
        row = ClaimRow(c.id, c.title, src, c.status, _published(c), "—", "—", "", "")
        ours = _our_metric(c.metric, metric)
        mine = [r for r in done if _row_matches(r, a)]
        if ours is not None:
            row.ours = mean_std([r.metrics[ours] for r in mine if ours in r.metrics])
        blocking, other = scale_gaps(c, grid)
        if ours is None:
            blocking.append(f"metric {c.metric} is not measured by our trials")
        ci = None
        if c.kind in ("comparison", "direction") and ours is not None:
            # paired by seed on the same base point (everything but the attention)
            theirs = {(r.base_key, r.seed): r for r in done if _row_matches(r, b)}
            deltas = []
            for r in mine:
                o = theirs.get((r.base_key, r.seed))
                if o is not None and ours in r.metrics and ours in o.metrics:
                    d = r.metrics[ours] - o.metrics[ours]
                    if c.kind == "comparison" and c.relative:
                        d = 100.0 * d / o.metrics[ours] if o.metrics[ours] else float("nan")
                    deltas.append(d)
            if c.kind == "direction" and c.metric in ("params", "gmacs", "gaze_error"):
                deltas = [-x for x in deltas]  # lower is better: "better" is a positive delta
            ci = t_interval(deltas)
            row.delta = ci.text() if deltas else "— (no paired runs)"
        if blocking or (c.kind == "value" and other):
            row.verdict, row.why = "not run at this scale", "; ".join(blocking + other)
            out.append(row)
            continue
        if c.kind == "value":
            vals = [r.metrics[ours] for r in mine if ours in r.metrics]
            want = 100.0 - c.value if c.metric.endswith("_err") else c.value
            row.verdict, row.why = verdict_value(t_interval(vals), want, c.tolerance)
            out.append(row)
            continue
        if c.kind == "direction":
            d_pub, op = None, ">"
        else:
            sign = -1.0 if c.metric.endswith("_err") else 1.0  # errors: compare as accuracies
            d_pub, op = sign * c.delta, c.op
            if sign < 0:
                op = {">=": "<=", "<=": ">=", "==": "=="}[op]
        row.verdict, row.why = verdict_delta(ci, d_pub, op)
        if other:
            row.why += " — at a different scale: " + "; ".join(other)
        out.append(row)
    return out


HIGHER = {"top1": True, "top5": True, "top1_err": False, "top5_err": False, "params": False, "gmacs": False,
          "gaze_error": False}


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _baseline_mean(rows: list[TrialRow], metric: str) -> Optional[float]:
    vals = [r.metrics[metric] for r in rows if r.kind == "none" and metric in r.metrics]
    return statistics.fmean(vals) if vals else None


def plot_param_sweep(rows: list[TrialRow], metric: str, kind: str, param: str, xlabel: str, path: Path,
                     log_x: bool = False) -> Optional[str]:
    """``metric`` vs one block parameter, one line per stage set; None when the grid has no such runs."""
    sel = [r for r in rows if r.kind == kind and r.attn(param) is not None and metric in r.metrics]
    if not sel:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for stages in sorted({r.attn("stages") or "" for r in sel}):
        pts: dict[float, list[float]] = {}
        for r in sel:
            if (r.attn("stages") or "") == stages:
                pts.setdefault(float(r.attn(param)), []).append(r.metrics[metric])
        xs = sorted(pts)
        ys = [statistics.fmean(pts[x]) for x in xs]
        es = [statistics.stdev(pts[x]) if len(pts[x]) > 1 else 0.0 for x in xs]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{kind} stages {stages or 'default'}")
    base = _baseline_mean(rows, metric)
    if base is not None:
        ax.axhline(base, ls="--", color="gray", label="baseline (mean)")
    if log_x:
        ax.set_xscale("log", base=2)
    return _save_plot(fig, ax, path, xlabel, f"{metric} (%)", f"{metric} vs {xlabel}")


def plot_heatmap(rows: list[TrialRow], metric: str, path: Path) -> Optional[str]:
    """Stage set × block: the mean paired delta vs the baseline (or the mean metric if no baseline)."""
    att = [r for r in rows if r.kind != "none" and metric in r.metrics]
    if not att:
        return None
    base = {(r.base_key, r.seed): r.metrics[metric] for r in rows if r.kind == "none" and metric in r.metrics}
    use_delta = any((r.base_key, r.seed) in base for r in att)
    cells: dict[tuple[str, str], list[float]] = {}
    for r in att:
        v = r.metrics[metric]
        if use_delta:
            b = base.get((r.base_key, r.seed))
            if b is None:
                continue
            v -= b
        cells.setdefault((r.attn("stages") or "-", r.kind), []).append(v)
    stages = sorted({s for s, _ in cells})
    kinds = sorted({k for _, k in cells})
    import numpy as np

    grid = np.full((len(stages), len(kinds)), np.nan)
    for (s, k), vs in cells.items():
        grid[stages.index(s), kinds.index(k)] = statistics.fmean(vs)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(kinds), 1.4 + 0.7 * len(stages)), dpi=110)
    lim = np.nanmax(np.abs(grid)) if use_delta and np.isfinite(grid).any() else None
    im = ax.imshow(grid, cmap="RdBu" if use_delta else "viridis", aspect="auto",
                   vmin=-lim if lim else None, vmax=lim if lim else None)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_yticks(range(len(stages)), [f"stages {s}" for s in stages])
    for i in range(len(stages)):
        for j in range(len(kinds)):
            if np.isfinite(grid[i, j]):
                dark = lim is not None and abs(grid[i, j]) > 0.6 * lim
                ax.text(j, i, f"{grid[i, j]:+.2f}" if use_delta else f"{grid[i, j]:.2f}", ha="center", va="center",
                        fontsize=9, color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label=f"Δ {metric} vs paired baseline" if use_delta else metric)
    ax.set_title(f"stage × block: {'Δ ' if use_delta else ''}{metric}\n(mean over seeds and block parameters)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def plot_gmacs(rows: list[TrialRow], metric: str, path: Path) -> Optional[str]:
    pts = [(trial_gmacs(r), r.metrics[metric], r.kind) for r in rows if metric in r.metrics]
    pts = [p for p in pts if p[0] is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for kind in sorted({k for _, _, k in pts}):
        xs = [g * 1000 for g, _, k in pts if k == kind]
        ys = [v for _, v, k in pts if k == kind]
        ax.scatter(xs, ys, label=kind, s=30)
    return _save_plot(fig, ax, path, "MMACs per image (1 MAC = 2 FLOPs)", f"{metric} (%)", f"{metric} vs compute")


# ---------------------------------------------------------------------------------------------
# rendering: one list of blocks, written as Markdown and as HTML
# ---------------------------------------------------------------------------------------------

@dataclass
class Doc:
    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, head: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", head, rows))

    def img(self, src: str, alt: str) -> None:
        self.blocks.append(("img", src, alt))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731 (a one-line helper local to this function)
                out.append("| " + " | ".join(cell(h) for h in b[1]) + " |")
                out.append("|" + "---|" * len(b[1]))
                out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in b[2]]
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        def inline(s: str) -> str:
            s = html.escape(str(s))
            s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
            s = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)
            return re.sub(r"(https?://[^\s<)]+)", r'<a href="\1">\1</a>', s)

        out = ["<!doctype html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
               "font-size:14px;vertical-align:top}th{background:#f4f4f4}img{max-width:100%;margin:0.5em 0}"
               "code{background:#f4f4f4;padding:0 3px}</style></head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{inline(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{inline(b[1])}</p>")
            elif b[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{inline(h)}</th>" for h in b[1]) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in b[2]]
                out.append("</table>")
            elif b[0] == "img":
                out.append(f"<p><img src='{html.escape(b[1])}' alt='{html.escape(b[2])}'></p>")
        out.append("</body></html>")
        return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------

def point_table(rows: list[TrialRow], metric: str) -> list[list[str]]:
    done = [r for r in rows if r.status == "finished" and metric in r.metrics]
    base = {(r.base_key, r.seed): r.metrics[metric] for r in done if r.kind == "none"}
    points: dict[str, list[TrialRow]] = {}
    for r in rows:
        points.setdefault(r.point, []).append(r)
    out = []
    for point, rs in points.items():
        ok = [r for r in rs if r in done]
        vals = [r.metrics[metric] for r in ok]
        deltas = [r.metrics[metric] - base[(r.base_key, r.seed)] for r in ok
                  if r.kind != "none" and (r.base_key, r.seed) in base]
        g = trial_gmacs(rs[0])
        out.append([point, rs[0].kind, mean_std(vals), t_interval(deltas).text() if deltas else "—",
                    f"{len(ok)}/{len(rs)}", f"{g * 1000:.2f}" if g is not None else "—",
                    ",".join(sorted({r.status for r in rs}))])
    return out


def build_report(uri: str, grid_name: str, parent: Any, kids: list[Any], claims: list[Any], out: Path,
                 metric: str = "best_top1") -> dict[str, Any]:
    from pipeline.tracking import compare_url, experiment_name, is_server_uri, ui_url

    rows = trial_rows(kids)
    exp_id = parent.info.experiment_id
    exp_name = experiment_name(uri, exp_id)
    parent_url = ui_url(uri, exp_id, parent.info.run_id)
    runs_url = ui_url(uri, exp_id, order_by=metric)
    datasets = sorted({r.params.get("data.dataset", "?") for r in rows})
    backbones = sorted({r.params.get("model.backbone", "?") for r in rows})
    epochs = sorted({r.params.get("optim.epochs", "?") for r in rows})
    seeds = sorted({r.seed for r in rows})
    finished = sum(r.status == "finished" for r in rows)

    plots: dict[str, Optional[str]] = {
        "top-1 vs SPA top-k ratio": plot_param_sweep(rows, metric, "spa", "topk_ratio", "SPA top-k ratio",
                                                     out / "topk_ratio.png", log_x=True),
        "top-1 vs Gaussian radius": plot_param_sweep(rows, metric, "gaussian", "radius", "Gaussian initial radius",
                                                     out / "gaussian_radius.png", log_x=True),
        "stage × block heatmap": plot_heatmap(rows, metric, out / "stage_block_heatmap.png"),
        "accuracy vs GMACs": plot_gmacs(rows, metric, out / "accuracy_vs_gmacs.png"),
    }
    claim_rows = evaluate_claims(claims, rows, metric)
    try:
        from pipeline.tracking import keyed_runs

        claim_runs = keyed_runs(uri, "claims")
    except Exception:  # noqa: BLE001 - the claims were never synced to this server
        claim_runs = {}

    compare = None
    if is_server_uri(uri):  # the grid's runs beside the paper rows of the claims it bears on
        paper = [claim_runs[c.id] for c in claim_rows if c.id in claim_runs]
        compare = compare_url(uri, sorted({exp_id, *(r.info.experiment_id for r in paper)}),
                              [r.run_id for r in rows] + [r.info.run_id for r in paper])

    doc = Doc()
    doc.h(1, f"Grid report: {grid_name}")
    doc.p(f"MLflow: {parent_url}")
    doc.p(f"Runs table (sorted by {metric}): {runs_url}")
    if compare:
        doc.p(f"Comparison (these runs beside the papers' rows): {compare}")
    doc.p(f"Tracking URI `{uri}`, experiment `{exp_name}` (id {exp_id}), parent run `{parent.info.run_id}`, "
          f"git commit `{parent.data.tags.get('git_commit', 'unknown')}`, generated "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    doc.p(f"**Scale of this grid:** dataset {', '.join(datasets)}; backbone {', '.join(backbones)}; "
          f"{', '.join(epochs)} epoch(s); seeds {', '.join(seeds)}; {finished}/{len(rows)} trials finished. "
          f"Metric: `{metric}` (validation top-1, %).")
    doc.h(2, "Results per point")
    doc.p("Mean ± std over seeds; Δ = paired difference to the same-seed baseline with its 95% Student-t "
          "interval and n (no interval for n = 1).")
    doc.table(["point", "block", f"{metric} mean ± std", "Δ vs baseline [95% CI]", "seeds done", "MMACs", "status"],
              point_table(rows, metric))
    doc.h(2, "Claims this grid bears on")
    if claim_rows:
        counts = {v: sum(r.verdict == v for r in claim_rows) for v in VERDICTS}
        doc.p("Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ". A claim made on "
              "another dataset or task is **not run at this scale**: our numbers are shown, no conclusion "
              "is drawn. Unverified figures were recalled, not read from the paper.")
        tbl = []
        for c in claim_rows:
            run = claim_runs.get(c.id)
            c.run_url = ui_url(uri, run.info.experiment_id, run.info.run_id) if run is not None else None
            tbl.append([c.id, c.title, c.source, c.status, c.published, c.ours, c.delta, c.verdict, c.why])
        doc.table(["claim", "says", "source", "status", "published", "ours (mean ± std)",
                   "paired Δ [95% CI]", "verdict", "why"], tbl)
    else:
        doc.p("No claim in the registry is about the blocks this grid ran.")
    doc.h(2, "Plots")
    for title, name in plots.items():
        if name:
            doc.h(3, title)
            doc.img(name, title)
        else:
            doc.p(f"{title}: not drawn — this grid has no runs that vary it.")
    doc.h(2, "Trials")
    doc.table(["run", "status", metric, "MMACs", "run id"],
              [[r.name, r.status, f"{r.metrics[metric]:.2f}" if metric in r.metrics else "—",
                f"{trial_gmacs(r) * 1000:.2f}" if trial_gmacs(r) is not None else "—", r.run_id] for r in rows])

    md, page = out / "report.md", out / "report.html"
    md.write_text(doc.markdown())
    page.write_text(doc.html(f"Grid report: {grid_name}"))
    data = {"grid": grid_name, "tracking_uri": uri, "experiment": exp_name, "parent_run_id": parent.info.run_id,
            "metric": metric, "mlflow_url": parent_url, "runs_url": runs_url, "compare_url": compare,
            "plots": {k: v for k, v in plots.items() if v},
            "claims": [c.__dict__ for c in claim_rows],
            "trials": [{"run_id": r.run_id, "name": r.name, "status": r.status, metric: r.metrics.get(metric),
                        "gmacs": trial_gmacs(r)} for r in rows]}
    (out / "report.json").write_text(json.dumps(data, indent=1))
    return {"markdown": md, "html": page, "plots": [out / n for n in plots.values() if n], "claims": claim_rows,
            "mlflow_url": parent_url, "runs_url": runs_url, "compare_url": compare, "data": data}


def _writable(out: Path) -> Path:
    """``out`` if this user can make it (or write into it); nothing is created here."""
    from pipeline.errors import folder_problem

    problem = folder_problem(out, create=False)
    if problem:
        raise ConfigError(f"--out {out}: {problem}")
    return out


def _save_plot(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> str:
    """Label, grid and legend an accuracy plot, write it to ``path``; its file name."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def main(argv: Optional[list[str]] = None) -> int:
    p = ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", required=True, help="grid name (the parent run's attnlab.grid tag)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_OUT}/NAME)")
    p.add_argument("--metric", default="best_top1", choices=["best_top1", "final_top1", "val_top1"])
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    a = p.parse_args(argv)
    from pipeline.config import NAME_PATTERN

    if not re.fullmatch(NAME_PATTERN, a.grid):  # it names the default output folder
        p.error(f"--grid {a.grid!r}: a grid name is a letter or digit, then letters, digits, '_', '.' or '-'")
    p.refuse_blank("--out", a.out, "give a folder (leave the flag out for the default)")
    p.refuse_blank("--tracking-uri", a.tracking_uri, "give the URI (leave the flag out for $MLFLOW_TRACKING_URI)")
    try:
        uri = a.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise ConfigError("give --tracking-uri (or set MLFLOW_TRACKING_URI)")
        from pipeline.tracking import check_reachable, grid_runs, log_artifact_dir, uri_problem

        if problem := uri_problem(uri):
            raise ConfigError(problem)
        try:
            check_reachable(uri)
        except ConnectionError as e:
            raise ConfigError(str(e)) from None
        out = _writable(Path(a.out).expanduser().resolve() if a.out else DEFAULT_OUT / a.grid)
        parent, kids = grid_runs(uri, a.grid)
        if parent is None:
            raise ConfigError(f"unknown grid {a.grid!r}: no parent run tagged attnlab.grid={a.grid!r} in {uri}")
        from experiments.claims import load_claims

        claims, _ = load_claims()
    except ConfigError as e:
        cli_exit(e)
    out.mkdir(parents=True, exist_ok=True)  # made once every check passed
    res = build_report(uri, a.grid, parent, kids, claims, out, a.metric)
    if not a.no_log:
        log_artifact_dir(uri, parent.info.run_id, out, "report")
    print(f"report: {res['markdown']}  (also {res['html'].name}, {len(res['plots'])} plots)")
    print(f"MLflow: {res['mlflow_url']}")
    if res["compare_url"]:
        print(f"compare: {res['compare_url']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
