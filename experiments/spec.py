"""Ablation specs: a base trial config + axes, validated and expanded into trials.

    name: spanet-cifar100
    base:                      # a trial config (pipeline.config.TrialConfig)
      model: {backbone: cifar_resnet56}
      data: {dataset: cifar100, root: /data/cifar-100-python}
      optim: {epochs: 160, lr: 0.1}
    axes:
      attention: [nonlocal, spa]          # block names, or mappings {kind, stages, ...}
      stages: [[1], [2], [3]]
      topk_ratio: [0.0625, 0.125, 0.25]   # a block parameter: applies to blocks that take it
      optim.lr: [0.1, 0.05]               # a dotted trial-config key: applies to every trial
    seeds: 3                              # a count (seeds 0, 1, 2) or a list of distinct seeds
    baseline: true                        # the default: add the paired baselines

Axes are conditional: a block-parameter axis (``topk_ratio``, ``radius``, ``heads``, …)
multiplies only the attentions whose constructor accepts it; ``stages``/``slot``/``every``
only attention trials.  A combination that does not apply is never generated.  Every attention
trial gets its paired baseline — the plain backbone at the same base point (backbone, data,
dotted axes) and the same seed — whether or not the axes list ``none``; ``baseline: false``
turns that off (a ``none`` listed in the axes still runs).  Seeds come from ``seeds`` only:
``seed`` as an axis is an error.

Expansion is deterministic; trials are de-duplicated by a canonical hash of the resolved trial
config (defaults filled in, execution-only keys such as ``data.root`` and ``data.workers`` left
out: see :data:`pipeline.config.EXECUTION_ONLY`), which is also the trial id, stable across
re-expansions and across machines.

Checking reports every problem of a spec at once, one line each, ``file:line: key: what``; the
number of trials is counted before any is built and refused above ``max_trials``.  Whether the
data roots exist is not checked here (a spec is validated and dry-run where the data may be
absent): :func:`pipeline.config.check_data_root` does that where trials run.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import Field, ValidationError, field_validator

from blocks import get as get_block
from blocks import names as block_names
from blocks.insert import NONE_NAMES, resolve_spec, size_problem
from pipeline import catalog
from pipeline.config import (NAME_PATTERN, StrictModel, TrialConfig, attention_problems, execution_only,
                             identity_tree, min_resolution, repeated, validation_problems)
from pipeline.errors import ConfigError
from pipeline.yamlio import Lines, Problems, load_file, non_finite

ATTN_AXES = ("stages", "slot", "every")  # placement axes: attention trials only
DEFAULT_MAX_TRIALS = 10_000  # experiments/grid.py --max-trials raises it
MAX_SEED = 2**32 - 1


class Spec(StrictModel):
    name: str = Field(min_length=1, max_length=200, pattern=rf"^{NAME_PATTERN}$")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: Union[int, list[int]] = 1  # a count, or the seeds themselves
    baseline: bool = True  # add each attention trial's paired, same-seed baseline

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v: Any) -> Any:
        def is_int(x):
            return isinstance(x, int) and not isinstance(x, bool)

        if is_int(v):
            if not 1 <= v <= MAX_SEED + 1:
                raise ValueError(f"a count of seeds must be 1..{MAX_SEED + 1} (seeds 0..{MAX_SEED}), got {v}")
        elif isinstance(v, list):
            if not v or not all(is_int(s) for s in v):
                raise ValueError(f"expected a non-empty list of integer seeds, got {v!r}")
            if len(set(v)) != len(v) or any(not 0 <= s <= MAX_SEED for s in v):
                raise ValueError(f"expected distinct seeds in 0..{MAX_SEED}, got {v!r}")
        else:
            raise ValueError(f"expected a count (an integer >= 1) or a list of integer seeds, got {v!r}")
        return v

    @property
    def seed_list(self) -> range | list[int]:
        return range(self.seeds) if isinstance(self.seeds, int) else list(self.seeds)


@dataclass(frozen=True)
class Trial:
    id: str  # canonical hash of the resolved config
    config: dict[str, Any]  # a TrialConfig tree (validated)
    coords: dict[str, Any]  # the ablation coordinates: attention, stages, params, seed, ...
    point: str  # the coordinates without the seed (what the summary groups by)
    baseline_point: str  # the point of its paired baseline


@dataclass
class Grid:
    spec: Spec
    path: Optional[Path]
    trials: list[Trial] = field(default_factory=list)
    duplicates: int = 0
    lines: Optional[Lines] = None  # where each key of the spec file is

    def where(self, key: str) -> str:
        """``file:line`` of a dotted trial-config key (``data.root``): its axis if it is one,
        else its place under ``base``."""
        lines = self.lines or Lines(str(self.path) if self.path else "spec")
        if key in self.spec.axes:
            return lines("axes", key)
        return lines("base", *key.split("."))


# --------------------------------------------------------------------------------------------
# identity
# --------------------------------------------------------------------------------------------

def _canonical(tree: Any) -> str:
    return json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)


def _identity_base(dump: dict[str, Any]) -> dict[str, Any]:
    """What makes two trials the same trial, apart from attention and seed: the resolved config
    without execution-only keys (:func:`pipeline.config.identity_tree`)."""
    out = identity_tree(dump)
    out.pop("seed", None)
    out["model"].pop("attention", None)
    return out


def _identity_attention(resolved: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """A resolved attention spec with the block's defaults filled in (``spa`` == ``spa, k=0.25``)."""
    if resolved is None:
        return None
    full = get_block(resolved["kind"]).param_defaults()
    full.update(resolved)
    return full


def _hash(ident_base: str, ident_attn: str, seed: int) -> str:
    return hashlib.sha256(f"{ident_base}|{ident_attn}|{seed}".encode()).hexdigest()[:12]


def trial_id(cfg: TrialConfig) -> str:
    """The id a trial with this config gets in any grid (stable across re-expansions)."""
    spec = cfg.model.resolved_attention()
    base = _canonical(_identity_base(cfg.model_dump(mode="json")))
    return _hash(base, _canonical(_identity_attention(spec.as_dict() if spec else None)), cfg.seed)


# --------------------------------------------------------------------------------------------
# checking the parts (every problem, with its line)
# --------------------------------------------------------------------------------------------

@dataclass
class _Entry:
    """One attention value of the spec, and where it was written."""

    spec: Optional[dict[str, Any]]  # None: the baseline
    path: tuple  # key path in the spec file, for the line
    label: str = "base"  # how problems name it: axes.attention[2], base.model.attention


def _attention_entries(spec: Spec, problems: Problems) -> list[_Entry]:
    """The attention values (from ``axes.attention``, else ``base.model.attention``), checked."""
    model = spec.base.get("model")
    if "attention" in spec.axes:
        if not spec.axes["attention"]:  # zero trials: certainly not what was meant
            problems.add(("axes", "attention"), "axes.attention: an axis needs a non-empty list of values "
                                                "(leave it out for the base's attention)")
            return []
        twice = repeated(spec.axes["attention"])
        if twice:
            problems.add(("axes", "attention", twice[1]), f"axes.attention[{twice[1]}]: "
                         f"{spec.axes['attention'][twice[1]]!r} repeats axes.attention[{twice[0]}] (list each once)")
        values = [(v, ("axes", "attention", i)) for i, v in enumerate(spec.axes["attention"])]
        label = "axes.attention[{i}]"
    elif isinstance(model, dict) and model.get("attention") is not None:
        values = [(model["attention"], ("base", "model", "attention"))]
        label = "base.model.attention"
    else:
        return [_Entry(None, ("base",))]
    out = []
    for i, (v, path) in enumerate(values):
        name = label.format(i=i)
        if isinstance(v, str) or v is None:
            v = {"kind": v}
        if not isinstance(v, dict) or "kind" not in v:
            problems.add(path, f"{name}: expected a block name or a mapping with 'kind', got {v!r}")
            continue
        kind = v["kind"]
        if kind in NONE_NAMES:
            extra = sorted(set(v) - {"kind"})
            if extra:
                problems.add(path + (extra[0],), f"{name}: attention 'none' takes no other keys, got {', '.join(extra)}")
            else:
                out.append(_Entry(None, path, name))
            continue
        if not isinstance(kind, str) or kind not in block_names():
            problems.add(path + ("kind",) if len(v) > 1 else path,
                         f"{name}: unknown attention {kind!r}; valid: none, {', '.join(block_names())}")
            continue
        bad = attention_problems(v)
        for key, msg in bad:
            problems.add(path + (key,), f"{name}.{key}: {msg}")
        if not bad:
            out.append(_Entry(dict(v), path, name))
    return out


def _split_axes(spec: Spec, kinds: list[str], problems: Problems, entries_ok: bool) -> tuple[dict, dict, dict]:
    """Split the axes into placement, block-parameter and dotted trial-config axes (cheap: the
    values are not looked at, so a huge axis is counted before it is checked).

    With a bad attention entry (``entries_ok`` false) an axis no attention takes is not reported:
    it most likely belongs to the misspelt block.
    """
    placement, block, dotted = {}, {}, {}
    for k, values in spec.axes.items():
        if k == "attention":
            continue
        twice = repeated(values) if isinstance(values, list) else None
        if not values:
            problems.add(("axes", k), f"axes.{k}: an axis needs a non-empty list of values")
        elif twice:  # a typo more likely than a wish for the same trials twice (they would be merged)
            problems.add(("axes", k), f"axes.{k}[{twice[1]}]: {values[twice[1]]!r} repeats axes.{k}[{twice[0]}] "
                                      f"(list each value once)")
        elif k == "seed":
            problems.add(("axes", k), "axes.seed: seeds are set by 'seeds:' (a count or a list of seeds), "
                                      "not by an axis")
        elif k in ATTN_AXES:
            if kinds:
                placement[k] = values
            elif entries_ok:
                problems.add(("axes", k), f"axes.{k}: placement axes need an attention other than none")
        elif "." in k or k in TrialConfig.model_fields:
            if k.startswith("model.attention"):
                problems.add(("axes", k), f"axes.{k}: vary attention with axes.attention or a block-parameter "
                                          f"axis ({k.rsplit('.', 1)[-1]}), not a dotted key")
            elif execution_only(k):
                problems.add(("axes", k), f"axes.{k}: {execution_only(k)!r} says where or how a trial runs, not "
                                          f"what it computes (same trial id): set it in base, not as an axis")
            else:
                dotted[k] = values
        elif any(k in get_block(kd).params for kd in kinds):
            block[k] = values
        elif entries_ok:
            owners = [n for n in block_names() if k in get_block(n).params]
            hint = f" (it belongs to: {', '.join(owners)})" if owners else ""
            problems.add(("axes", k), f"axes.{k}: no attention in this spec takes parameter {k!r}{hint}")
    return placement, block, dotted


def _check_axis_values(kinds: list[str], placement: dict, block: dict, problems: Problems) -> set[tuple[str, int]]:
    """Each placement and block-parameter value's type, against every block that takes it;
    returns the ``(axis, index)`` of the bad ones (expansion skips them)."""
    bad: set[tuple[str, int]] = set()
    for k, values in {**placement, **block}.items():
        takers = [kd for kd in kinds if k in ATTN_AXES or k in get_block(kd).params]
        for i, v in enumerate(values):
            if k == "stages" and not (isinstance(v, list) and v):
                problems.add(("axes", k), f"axes.stages[{i}]: expected a non-empty list of stage numbers "
                                             f"like [1, 2], got {v!r}")
                bad.add((k, i))
                continue
            for kd in takers[:1] if k in ATTN_AXES else takers:
                for _, msg in attention_problems({"kind": kd, k: v}):
                    problems.add(("axes", k), f"axes.{k}[{i}]: {msg}")
                    bad.add((k, i))
    return bad


def _relevant(entry: _Entry, placement: dict, block: dict) -> list[str]:
    """The placement and block axes that multiply ``entry`` (those it does not fix itself)."""
    if entry.spec is None:
        return []
    kind = entry.spec["kind"]
    return ([k for k in ATTN_AXES if k in placement and k not in entry.spec]
            + [k for k in block if k in get_block(kind).params and k not in entry.spec])


def count_trials(entries: list[_Entry], placement: dict, block: dict, dotted: dict, n_seeds: int) -> int:
    """How many trials the spec asks for, before de-duplication (arithmetic only: nothing built)."""
    axes = {**placement, **block}
    per_point = sum(math.prod(len(axes[k]) for k in _relevant(e, placement, block)) for e in entries)
    return per_point * math.prod(len(v) for v in dotted.values()) * n_seeds


# --------------------------------------------------------------------------------------------
# expansion
# --------------------------------------------------------------------------------------------

def _set(tree: dict[str, Any], dotted: str, value: Any) -> Optional[str]:
    """Set a dotted key in a tree; a problem text when a part on the way is not a section."""
    node = tree
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            return f"{p!r} is not a section"
    node[parts[-1]] = value
    return None


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "".join(str(x) for x in v)
    return str(v)


def expand(spec: Spec, where: Optional[Lines] = None, max_trials: int = DEFAULT_MAX_TRIALS,
           problems: Optional[Problems] = None) -> Grid:
    """All trials of ``spec``: validated, deterministic order, de-duplicated.

    Raises :class:`ConfigError` with every problem found (one line each; ``problems`` holds any
    found before), or when the spec asks for more than ``max_trials`` trials (counted before any
    is built).
    """
    where = where or Lines("spec")
    problems = problems if problems is not None else Problems(where)
    base_model = spec.base.get("model", {})
    if not isinstance(base_model, dict):
        problems.add(("base", "model"), "base.model: expected a mapping")
        base_model = {}
    before = len(problems.lines)
    entries = _attention_entries(spec, problems)
    entries_ok = len(problems.lines) == before
    if spec.baseline and any(e.spec is not None for e in entries) and not any(e.spec is None for e in entries):
        entries.insert(0, _Entry(None, ("base",)))
    kinds = [e.spec["kind"] for e in entries if e.spec is not None]
    placement, block, dotted = _split_axes(spec, kinds, problems, entries_ok)
    n = count_trials(entries, placement, block, dotted, len(spec.seed_list))
    if n > max_trials:
        many_seeds = "seeds" in spec.model_fields_set and len(spec.seed_list) > 1
        problems.add(("seeds",) if many_seeds or not spec.axes else ("axes",),
                     f"the spec asks for {n:,} trials, over the limit of {max_trials:,} (raise it with "
                     f"--max-trials, or shrink the axes/seeds)")
        problems.raise_if_any()
    bad_values = _check_axis_values(kinds, placement, block, problems)

    dotted_keys = sorted(dotted)
    index_points = list(itertools.product(*(range(len(dotted[k])) for k in dotted_keys)))

    # Validation is compositional, so each part is validated once, not once per trial: the base
    # with each dotted point (attention none, seed 0), and each attention point per backbone.
    bases: dict[tuple, Optional[tuple[TrialConfig, dict[str, Any], str]]] = {}

    def base_for(ip: tuple) -> Optional[tuple[TrialConfig, dict[str, Any], str]]:
        if ip not in bases:
            bases[ip] = None
            tree = copy.deepcopy(spec.base)
            tree["model"] = dict(base_model, attention=None)
            for k, i in zip(dotted_keys, ip):
                bad = _set(tree, k, dotted[k][i])
                if bad:
                    problems.add(("axes", k), f"axes.{k}: {bad}")
                    return None
            tree["seed"] = 0
            try:
                cfg = TrialConfig.model_validate(tree)
            except ValidationError as e:
                for key, msg in validation_problems(e):
                    axis = next((k for k in dotted_keys if key == k or key.startswith(k + ".")), None)
                    if axis is not None:
                        i = ip[dotted_keys.index(axis)]
                        what = "" if key == axis else f"{key.removeprefix(axis + '.')}: "
                        problems.add(("axes", axis), f"axes.{axis}[{i}]: {what}{msg}")
                    else:
                        problems.add(("base", *key.split(".")), f"base.{key}: {msg}")
                return None
            if catalog.info(cfg.data.dataset).needs_root and cfg.data.root is None:
                problems.add(("base", "data"), f"base.data.root: dataset {cfg.data.dataset!r} needs a root folder")
                return None
            dump = cfg.model_dump(mode="json")
            bases[ip] = (cfg, dump, _canonical(_identity_base(dump)))
        return bases[ip]

    attns: dict[tuple, Optional[tuple[Optional[dict[str, Any]], tuple[int, ...]]]] = {}

    def attention_for(cfg: TrialConfig, a: Optional[dict[str, Any]], entry: _Entry,
                      axis_of: dict[str, int]) -> Optional[tuple[Optional[dict[str, Any]], tuple[int, ...]]]:
        """The resolved attention for this backbone, checked against the input resolution."""
        m = cfg.model
        key = (m.backbone, m.small_stem, cfg.data.resolutions(), _canonical(a))
        if key not in attns:
            attns[key] = None
            def report(msg: str) -> None:  # on the axis the message names, else on the entry
                axis = next((k for k in sorted(axis_of, key=len, reverse=True) if k in msg), None)
                if axis is None and "stage" in msg and "stages" in axis_of:
                    axis = "stages"
                if axis is not None:
                    problems.add(("axes", axis), f"axes.{axis}[{axis_of[axis]}]: {msg}")
                else:
                    problems.add(entry.path, f"{entry.label}: {msg}")

            try:
                resolved = resolve_spec(a, m.backbone)
                problem = size_problem(m.backbone, m.num_classes or cfg.data.num_classes() or 1000, a, m.small_stem)
            except (KeyError, TypeError, ValueError) as e:
                report(e.args[0] if isinstance(e, KeyError) else str(e))
                return None
            if problem:  # a block size far out of range: before the estimate builds the model
                report(problem)
                return None
            stages = resolved.stages if resolved is not None else ()
            need = min_resolution(m.backbone, m.small_stem, stages)
            res = min(cfg.data.resolutions())
            if res < need:
                text = (f"attention {a['kind']!r} at stage {max(stages)} of {m.backbone} needs inputs of at "
                        f"least {need} px; the data resolution is {res} px")
                if "stages" in axis_of:
                    problems.add(("axes", "stages"), f"axes.stages[{axis_of['stages']}]: {text}")
                else:
                    problems.add(entry.path, f"{entry.label}: {text}")
                return None
            attns[key] = (None if resolved is None else resolved.as_dict(), stages)
        return attns[key]

    grid = Grid(spec=spec, path=None)
    seen: set[str] = set()
    axis_values = {**placement, **block}
    for entry in entries:
        rel = _relevant(entry, placement, block)
        for combo in itertools.product(*(range(len(axis_values[k])) for k in rel)):
            if bad_values and any((k, i) in bad_values for k, i in zip(rel, combo)):
                continue
            a = None
            axis_of: dict[str, int] = {}
            if entry.spec is not None:
                a = dict(entry.spec)
                for k, i in zip(rel, combo):
                    a[k] = axis_values[k][i]
                    axis_of[k] = i
            for ip in index_points:
                b = base_for(ip)
                if b is None:
                    continue
                cfg, dump, ident = b
                r = attention_for(cfg, a, entry, axis_of)
                if r is None or problems:
                    continue
                resolved = r[0]
                ident_attn = _canonical(_identity_attention(resolved))
                dotted_coords = {k: dotted[k][i] for k, i in zip(dotted_keys, ip)}
                coords0 = _coords(cfg.model.backbone, cfg.data.dataset, resolved, dotted_coords)
                point = _point(coords0)
                base_point = _point({"backbone": cfg.model.backbone, "dataset": cfg.data.dataset,
                                     "attention": "none", **dotted_coords})
                for seed in spec.seed_list:
                    tid = _hash(ident, ident_attn, seed)
                    if tid in seen:
                        grid.duplicates += 1
                        continue
                    seen.add(tid)
                    tree = {**dump, "model": {**dump["model"], "attention": resolved}, "seed": seed, "name": tid}
                    grid.trials.append(Trial(id=tid, config=tree, coords={**coords0, "seed": seed}, point=point,
                                             baseline_point=base_point))
    problems.raise_if_any()
    return grid


def _coords(backbone: str, dataset: str, resolved: Optional[dict[str, Any]], dotted: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = {"backbone": backbone, "dataset": dataset}
    if resolved is None:
        c["attention"] = "none"
    else:
        c["attention"] = resolved["kind"]
        c.update((k, v) for k, v in resolved.items() if k != "kind")
    c.update(dotted)
    return c


def _dotted(path: tuple) -> str:
    """A key path as the spec writes it: ``("axes", "radius", 0)`` -> ``axes.radius[0]``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _point(coords: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in coords.items() if k != "seed")


def load_spec(path: Union[str, Path], max_trials: int = DEFAULT_MAX_TRIALS) -> Grid:
    """Read, validate and expand a spec file (:func:`pipeline.yamlio.load_file`: UTF-8, size,
    depth and alias limits, no duplicate keys); :class:`ConfigError` names file:line and field."""
    raw, lines = load_file(path, what="spec file")
    return grid_from_tree(raw, Path(path), lines, max_trials=max_trials)


def grid_from_tree(raw: Any, path: Optional[Path] = None, lines: Optional[Lines] = None,
                   max_trials: int = DEFAULT_MAX_TRIALS) -> Grid:
    """Validate and expand a loaded spec; every problem is reported at once (one line each)."""
    where = lines if lines is not None else Lines(str(path) if path else "spec")
    if not isinstance(raw, dict):
        first = f"{where.source}:1" if path is not None else where.source
        raise ConfigError(f"{first}: a spec must be a mapping with name/base/axes/seeds, got "
                          f"{type(raw).__name__ if raw is not None else 'an empty document'}")
    problems = Problems(where)
    for p, v in non_finite(raw):  # an axis value's problems name the axis line, like the others
        problems.add(p[:2] if p[0] == "axes" else p, f"{_dotted(p)}: {v} is not a finite number")
    spec = problems.validate(Spec, raw)
    grid = expand(spec, where, max_trials=max_trials, problems=problems)
    grid.path, grid.lines = path, where
    return grid
