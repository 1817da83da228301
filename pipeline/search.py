"""Searches: a search spec (a base trial config + a conditional search space), read and checked
here, and Optuna behind one thin adapter we own (the only module that imports optuna).

    name: digits-search
    base:                              # a trial config, as in an ablation spec
      model: {backbone: cifar_resnet20}
      data: {dataset: digits, train_res: 16, val_res: 16}
      optim: {epochs: 3}
    trials: 6                          # default of --trials
    objective: top1                    # or [top1, gmacs]
    sampler: {seed: 0, n_startup_trials: 3}
    space:
      attention: {choices: [none, {kind: spa, stages: [1]}, {kind: gaussian, stages: [1]}]}
      topk_ratio: {low: 0.0625, high: 0.5, log: true}   # a block parameter: only for spa
      radius: {choices: [1, 2, 3]}                      # only for gaussian
      optim.lr: {low: 0.01, high: 0.3, log: true}       # a dotted trial key: every trial
      optim.label_smoothing: {low: 0.0, high: 0.2}

The vocabulary is the ablation spec's (:mod:`experiments.spec`): ``attention`` picks the block,
a bare block-parameter name applies only to the blocks that take it, a dotted key to every
trial.  The space is define-by-run (:class:`SpaceFn`): the block is drawn first, then the
parameters of that block, then the rest; Optuna's parameter names are ``attention``,
``<block>.<param>`` (``spa.topk_ratio``) and the dotted keys (``optim.lr``).

A range is ``{low, high}`` with ``log: true`` for a log-uniform range and ``step`` for a grid;
it is an integer range when both ends are integers (``radius: {low: 1, high: 3}``).
``{choices: [...]}`` is categorical.  Every end and choice is validated with the trial config
(:class:`pipeline.config.TrialConfig`) before anything runs; every problem of a spec is one
line ``file:line: key: what``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import optuna
from pydantic import Field, ValidationError, field_validator, model_validator

from .config import (NAME_PATTERN, StrictModel, TrialConfig, attention_problems, execution_only, validation_problems,
                     value_key)
from .errors import ConfigError, folder_problem
from .uris import foreign_sqlite, sqlite_path
from .yamlio import Lines, Problems, load_file

__all__ = ["SamplerSpec", "SearchSpec", "Dim", "Search", "SpaceFn", "load_search", "search_from_tree",
           "OBJECTIVES", "objective_metrics", "make_sampler", "make_storage", "open_study", "study_rows",
           "pareto_front", "format_rows", "plot_pareto"]

optuna.logging.set_verbosity(optuna.logging.WARNING)

# objective name -> (metric reported to Tune, direction)
OBJECTIVES = {"top1": ("best_top1", "max"), "gmacs": ("gmacs", "min")}
PLACEMENT = ("stages", "slot", "every")
MAX_TRIALS = 100_000  # the spec's trials and --trials
NONE_NAMES = ("none", "baseline", None)


class SamplerSpec(StrictModel):
    """Optuna's TPE sampler; the defaults are what a conditional, parallel search needs."""

    kind: str = Field("tpe", pattern=r"^tpe$")
    seed: Optional[int] = Field(0, ge=0, lt=2**32)
    n_startup_trials: int = Field(10, ge=0, le=100_000)  # random trials before TPE models the space
    n_ei_candidates: int = Field(24, ge=1, le=10_000)
    multivariate: bool = True  # model the parameters jointly
    group: bool = True  # ... per group of parameters that occur together (conditional spaces)
    constant_liar: bool = True  # running trials count as bad: parallel workers do not pile up

    @model_validator(mode="after")
    def _group_needs_multivariate(self) -> "SamplerSpec":
        if self.group and not self.multivariate:
            raise ValueError("group: true needs multivariate: true")
        return self


class DimSpec(StrictModel):
    """One dimension of the space: a range or a list of choices."""

    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: Optional[list[Any]] = None

    @field_validator("low", "high", "step")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValueError(f"expected a finite number, got {v!r}")
        return v

    @model_validator(mode="after")
    def _shape(self) -> "DimSpec":
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("give either choices or a range (low/high), not both")
            if not self.choices:
                raise ValueError("empty choices: give at least one value")
            seen = [value_key(c) for c in self.choices]  # 1 and 1.0 are one choice
            twice = sorted({c for c in seen if seen.count(c) > 1})
            if twice:
                raise ValueError(f"choices listed twice: {', '.join(twice)} (each choice once: the sampler "
                                 f"would weight it double)")
            return self
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0, got {self.step}")
        if self.low is None or self.high is None:
            raise ValueError("a dimension needs low and high, or choices")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        if self.low == self.high:
            raise ValueError(f"empty range (low == high == {self.low}): set the value in base instead")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got low {self.low}")
        if self.log and self.step is not None:
            raise ValueError("a log range takes no step")
        if self.step is not None:  # Optuna would silently move high onto the grid (low + k·step)
            span, step = self.high - self.low, self.step
            k = round(span / step)
            if k < 1 or abs(k * step - span) > 1e-9 * max(abs(span), abs(step)):
                raise ValueError(f"step {step} does not divide the range [{self.low}, {self.high}] "
                                 f"(high − low = {span:g}): high must be low + a whole number of steps")
        return self


class SearchSpec(StrictModel):
    name: str = Field(min_length=1, max_length=200, pattern=rf"^{NAME_PATTERN}$")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Any] = Field(min_length=1)
    trials: int = Field(20, ge=1, le=MAX_TRIALS)
    objective: Union[str, list[str]] = "top1"
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, v: Any) -> Any:  # one problem, not one per member of the Union
        if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(o, str) for o in v))):
            raise ValueError(f"expected top1, or a list [top1, gmacs], got {v!r}")
        return v


@dataclass
class Dim:
    """A checked dimension: ``name`` is Optuna's parameter name, ``key`` the spec's."""

    name: str
    key: str
    kind: str  # float | int | categorical
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: Optional[list[Any]] = None
    block: Optional[str] = None  # the block whose parameter this is (None: a dotted trial key)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            return "{" + ", ".join(map(str, self.choices)) + "}"
        return f"[{self.low}, {self.high}]" + (" log" if self.log else "") + (f" step {self.step}" if self.step else "")


@dataclass
class Search:
    spec: SearchSpec
    path: Optional[Path]
    base: dict[str, Any]  # the base trial tree (attention removed)
    attention: dict[str, Optional[dict[str, Any]]]  # choice label -> attention spec (None: baseline)
    dims: list[Dim] = field(default_factory=list)
    objectives: list[str] = field(default_factory=lambda: ["top1"])
    lines: Optional[Lines] = None

    @property
    def labels(self) -> list[str]:
        return list(self.attention)

    def fingerprint(self) -> str:
        """What makes a study this search: base, attention choices, dimensions and objectives
        (not the trial count, not the sampler's settings)."""
        blob = json.dumps({"base": self.base, "attention": self.attention,
                           "dims": [d.__dict__ for d in self.dims], "objectives": self.objectives},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def tree(self, point: dict[str, Any]) -> dict[str, Any]:
        """The trial tree of a sampled point (Optuna's parameter names -> values)."""
        tree = copy.deepcopy(self.base)
        label = point.get("attention", self.labels[0])
        attn = copy.deepcopy(self.attention[label])
        for d in self.dims:
            if d.name in point and d.block is not None and attn is not None and attn["kind"] == d.block:
                attn[d.key] = point[d.name]
        tree.setdefault("model", {})["attention"] = attn
        for d in self.dims:
            if d.name in point and d.block is None:
                _set(tree, d.key, point[d.name])
        return tree

    def config(self, point: dict[str, Any]) -> TrialConfig:
        try:
            return TrialConfig.model_validate(self.tree(point))
        except ValidationError as e:
            key, msg = validation_problems(e)[0]
            raise ConfigError(f"point {point}: {key}: {msg}") from None


class SpaceFn:
    """The define-by-run space Optuna samples: the block, that block's parameters, the rest.

    Returns the Optuna trial number with the values (Tune puts both in the trial's config).
    """

    def __init__(self, search: Search):
        self.labels = search.labels
        self.attention = search.attention
        self.dims = search.dims

    def __call__(self, trial: Any) -> dict[str, Any]:
        label = trial.suggest_categorical("attention", self.labels) if len(self.labels) > 1 else self.labels[0]
        attn = self.attention[label]
        for d in self.dims:
            if d.block is not None and attn is not None and attn["kind"] == d.block:
                d.suggest(trial)
        for d in self.dims:
            if d.block is None:
                d.suggest(trial)
        return {"optuna_trial": trial.number}


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# reading and checking a spec
# ---------------------------------------------------------------------------------------------

def load_search(path: Union[str, Path]) -> Search:
    """Read and check a search spec; :class:`ConfigError` with every problem, one line each."""
    raw, lines = load_file(path, what="search spec")
    return search_from_tree(raw, Path(path), lines)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


def search_from_tree(raw: Any, path: Optional[Path] = None, lines: Optional[Lines] = None) -> Search:
    from blocks import get as get_block
    from blocks import names as block_names

    where = lines if lines is not None else Lines(str(path) if path else "spec")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where.source}:1: a search spec must be a mapping with name/base/space, got "
                          f"{type(raw).__name__ if raw is not None else 'an empty document'}")
    problems = Problems(where)
    spec = problems.validate(SearchSpec, raw)

    objectives = ([o.strip() for o in spec.objective.split(",")] if isinstance(spec.objective, str)
                  else list(spec.objective))
    for o in objectives:
        if o not in OBJECTIVES:
            problems.add(("objective",), f"objective: unknown {o!r}; valid: {', '.join(OBJECTIVES)}")
    if "top1" not in objectives or len(set(objectives)) != len(objectives):
        problems.add(("objective",), "objective: top1, or top1 and gmacs (each once)")
    objectives = ["top1"] + [o for o in objectives if o != "top1"]  # top-1 first: the study's first value

    # the base: a valid trial config without attention (the attention comes from the space)
    base = copy.deepcopy(spec.base)
    model = base.get("model") if isinstance(base.get("model"), dict) else None
    base_attention = model.pop("attention", None) if model is not None else None
    problems.validate(TrialConfig, base, prefix=("base",))

    # the attention choices
    space = dict(spec.space)
    attention: dict[str, Optional[dict[str, Any]]] = {}
    label_path: dict[str, tuple] = {}
    if "attention" in space:
        a = space.pop("attention")
        values, at = a.get("choices"), ("space", "attention")
        if set(a) != {"choices"} or not isinstance(values, list) or not values:
            problems.add(at, "space.attention: expected {choices: [block names or {kind, stages, ...}]}")
            values = []
        choice_paths = [(v, at + ("choices", i)) for i, v in enumerate(values)]
    elif base_attention is not None:
        choice_paths = [(base_attention, ("base", "model", "attention"))]
    else:
        choice_paths = [(None, ("base",))]
    for v, p in choice_paths:
        spec_v = {"kind": v} if isinstance(v, str) or v is None else v
        if not isinstance(spec_v, dict) or "kind" not in spec_v:
            problems.add(p, f"space.attention: expected a block name or a mapping with 'kind', got {v!r}")
            continue
        kind = spec_v["kind"]
        if kind in NONE_NAMES:
            label, resolved = "none", None
        elif not isinstance(kind, str) or kind not in block_names():
            problems.add(p, f"space.attention: unknown attention {kind!r}; valid: none, {', '.join(block_names())}")
            continue
        else:
            label, resolved = kind, dict(spec_v)
            for key, msg in attention_problems(resolved):
                problems.add(p + (key,), f"space.attention.{kind}.{key}: {msg}")
        if label in attention:
            problems.add(p, f"space.attention: {label!r} is listed twice (one choice per block; fix its "
                            f"placement in the mapping)")
            continue
        attention[label] = resolved
        label_path[label] = p
    kinds = [a["kind"] for a in attention.values() if a is not None]

    # the dimensions
    dims: list[Dim] = []
    for key, body in space.items():
        at = ("space", key)
        try:
            d = DimSpec.model_validate(body)
        except ValidationError as e:
            for k, msg in validation_problems(e):
                problems.add(at + ((k,) if k else ()), f"space.{key}{'.' + k if k else ''}: {msg}")
            continue
        values = d.choices if d.choices is not None else [d.low, d.high]
        if not all(_finite(v) for v in values):
            problems.add(at, f"space.{key}: {values} has a value that is not a finite number")
            continue
        if d.choices is not None:
            if not all(v is None or isinstance(v, (bool, int, float, str)) for v in d.choices):
                problems.add(at, f"space.{key}.choices: each choice must be a number, a string, true/false or null")
                continue
            kind = "categorical"
        else:
            kind = "int" if _is_int(d.low) and _is_int(d.high) and (d.step is None or _is_int(d.step)) else "float"
        if key in PLACEMENT:
            problems.add(at, f"space.{key}: placement is fixed per attention choice ({{kind: spa, {key}: ...}}), "
                             f"not searched")
            continue
        if key == "seed" or key.startswith("model.attention"):
            problems.add(at, f"space.{key}: not searchable (search the block with space.attention and its "
                             f"parameters by name)")
            continue
        if execution_only(key):
            problems.add(at, f"space.{key}: {execution_only(key)!r} says where or how a trial runs, not what it "
                             f"computes: set it in base, not searched")
            continue
        if "." in key or key in TrialConfig.model_fields:
            dims.append(Dim(key, key, kind, d.low, d.high, d.log, d.step, d.choices))
            continue
        takers = [k for k in kinds if key in get_block(k).params]
        if not takers:
            owners = [n for n in block_names() if key in get_block(n).params]
            hint = f" (it belongs to: {', '.join(owners)})" if owners else ""
            problems.add(at, f"space.{key}: no attention of this search takes parameter {key!r}{hint}")
            continue
        for k in takers:
            if key in attention[k]:
                continue  # the choice fixes it
            dims.append(Dim(f"{k}.{key}", key, kind, d.low, d.high, d.log, d.step, d.choices, block=k))

    search = Search(spec=spec, path=path, base=base, attention=attention, dims=dims, objectives=objectives,
                    lines=where)
    for label, p in label_path.items():
        try:
            TrialConfig.model_validate(search.tree({"attention": label}))
        except ValidationError as e:
            k, msg = validation_problems(e)[0]
            problems.add(p, f"space.attention: {label}: {k}: {msg}")
    problems.raise_if_any()
    # every end and choice, with every attention choice it applies to, is a valid trial config
    labels = search.labels
    for d in dims:  # the first problem of each dimension (an unknown key is wrong at every value)
        at = ("space", d.key)
        tries = [(v, label) for v in (d.choices if d.choices is not None else [d.low, d.high])
                 for label in ([d.block] if d.block else labels)]
        for v, label in tries:
            try:
                TrialConfig.model_validate(search.tree({"attention": label, d.name: v}))
            except ValidationError as e:
                k, msg = validation_problems(e)[0]
                if k == d.key and msg == "unknown key":
                    problems.add(at, f"space.{d.key}: unknown trial-config key")
                else:
                    with_ = f" with {label}" if d.block is None and len(labels) > 1 else ""
                    problems.add(at, f"space.{d.key}: {v!r}{with_}: {k}: {msg}")
                break
    if "gmacs" in objectives and (base.get("workers_per_trial") or 1) > 1:
        problems.add(("base", "workers_per_trial"), "base.workers_per_trial: the gmacs objective needs "
                                                    "single-process trials")
    problems.raise_if_any()
    return search


def objective_metrics(objectives: list[str]) -> tuple[list[str], list[str]]:
    """Tune metric names and modes of the objectives (``top1`` -> ``best_top1``, max)."""
    return [OBJECTIVES[o][0] for o in objectives], [OBJECTIVES[o][1] for o in objectives]


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------

def make_sampler(s: SamplerSpec) -> Any:
    import warnings

    with warnings.catch_warnings():  # multivariate/group/constant_liar are "experimental" in Optuna
        warnings.simplefilter("ignore")
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials,
                                          n_ei_candidates=s.n_ei_candidates, multivariate=s.multivariate,
                                          group=s.group, constant_liar=s.constant_liar)


def make_storage(url: str) -> Any:
    """Optuna's RDB storage on any SQLAlchemy URL (``sqlite:///file``, ``postgresql://...``)."""
    db = sqlite_path(url)
    if db is not None:
        if db.exists():  # read-only look: Optuna would write its schema into any database
            problem = foreign_sqlite(db, "an Optuna study") if db.is_file() else f"{db} is not a file"
            if problem:
                raise ConfigError(f"--study-storage {url}: {problem}")
        folder = db.parent
        problem = folder_problem(folder)
        if problem:
            raise ConfigError(f"--study-storage {url}: cannot create its folder {folder}: {problem}")
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as e:  # noqa: BLE001 - a driver missing, a server down: one line
        raise ConfigError(f"--study-storage {url}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from None


STATUS_ATTR = "attnlab.status"


def open_study(name: str, url: str, search: Search, resume: bool, fingerprint: Optional[str] = None,
               check_only: bool = False) -> dict[str, Any]:
    """Check the study before the search starts, and create it on a new search.

    Without ``resume`` a study of that name is an error; with it the study must exist, with
    the same space and objectives (its fingerprint), and trials left RUNNING by an interrupted
    session are marked FAIL (``attnlab.status=interrupted``): they are never re-run, and
    they no longer count as running for the constant liar.  Returns ``{"done": trials
    finished, "interrupted": [numbers]}``.  ``check_only``: the checks alone, nothing written.
    """
    fingerprint = fingerprint or search.fingerprint()
    storage = make_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    metrics, modes = objective_metrics(search.objectives)
    directions = ["maximize" if m == "max" else "minimize" for m in modes]
    if name in names and not resume:
        raise ConfigError(f"search {name!r} already has a study in {url}; add --resume to continue it, "
                          f"or --name to start a new one")
    if name not in names:
        if resume:
            raise ConfigError(f"--resume: no study {name!r} in {url}; run without --resume to start it")
        if check_only:
            return {"done": 0, "interrupted": []}
        study = optuna.create_study(study_name=name, storage=storage, directions=directions)
        study.set_user_attr("attnlab.fingerprint", fingerprint)
        study.set_user_attr("attnlab.objectives", search.objectives)
        return {"done": 0, "interrupted": []}
    study = optuna.load_study(study_name=name, storage=storage)
    if study.user_attrs.get("attnlab.objectives") != search.objectives:
        raise ConfigError(f"--resume: study {name!r} optimises {study.user_attrs.get('attnlab.objectives')}, "
                          f"not {search.objectives}; start a new search with --name")
    if study.user_attrs.get("attnlab.fingerprint") != fingerprint:
        raise ConfigError(f"--resume: the spec's base or space changed since search {name!r} started; restore "
                          f"it, or start a new search with --name")
    interrupted = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,
                                                      optuna.trial.TrialState.WAITING)):
        if check_only:
            interrupted.append(t.number)
            continue
        storage.set_trial_user_attr(t._trial_id, STATUS_ATTR, "interrupted")
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        interrupted.append(t.number)
    done = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get(STATUS_ATTR) != "interrupted"
               and t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                               optuna.trial.TrialState.FAIL))
    return {"done": done, "interrupted": interrupted}


def record_runs(name: str, url: str, runs: dict[int, str]) -> None:
    """Trial number -> MLflow run id, kept in the study's user attribute ``attnlab.runs`` (a
    finished Optuna trial cannot be changed; the study can)."""
    study = optuna.load_study(study_name=name, storage=make_storage(url))
    known = dict(study.user_attrs.get("attnlab.runs") or {})
    known.update({str(k): v for k, v in runs.items()})
    study.set_user_attr("attnlab.runs", known)


def study_rows(name: str, url: str) -> list[dict[str, Any]]:
    """Every trial of the study: number, state, values, params, attnlab's user attributes."""
    study = optuna.load_study(study_name=name, storage=make_storage(url))
    runs = study.user_attrs.get("attnlab.runs") or {}
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "values": list(t.values) if t.values else None,
                     "params": dict(t.params), "status": t.user_attrs.get(STATUS_ATTR),
                     "run_id": runs.get(str(t.number)), "tune_trial_id": t.user_attrs.get("attnlab.tune_trial_id")})
    return rows


def pareto_front(rows: list[dict[str, Any]], modes: list[str]) -> list[dict[str, Any]]:
    """The non-dominated rows (``row["values"]`` against ``modes``, max or min each), best
    first-objective first."""
    sign = [1.0 if m == "max" else -1.0 for m in modes]

    def dominates(a: list[float], b: list[float]) -> bool:
        sa, sb = [s * x for s, x in zip(sign, a)], [s * x for s, x in zip(sign, b)]
        return all(x >= y for x, y in zip(sa, sb)) and any(x > y for x, y in zip(sa, sb))

    front = [r for r in rows if not any(dominates(o["values"], r["values"]) for o in rows if o is not r)]
    seen, out = set(), []
    for r in sorted(front, key=lambda r: [-s * v for s, v in zip(sign, r["values"])]):
        key = tuple(r["values"])
        if key not in seen:  # equal points: one row
            seen.add(key)
            out.append(r)
    return out


def completed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials that ran their whole schedule (not stopped early, not diverged, not failed)."""
    return [r for r in rows if r["state"] == "COMPLETE" and r["values"] is not None
            and r["status"] in (None, "finished") and all(math.isfinite(v) for v in r["values"])]


def format_rows(rows: list[dict[str, Any]], objectives: list[str]) -> str:
    """A markdown table: trial, objectives, then every parameter that any row has."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r["params"] if k not in keys]
    head = ["trial"] + objectives + keys
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [f"{v:.4g}" for v in r["values"]]
        params = [_short(r["params"].get(k, "")) for k in keys]
        out.append("| " + " | ".join([str(r["number"])] + vals + params) + " |")
    return "\n".join(out)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plot_pareto(rows: list[dict[str, Any]], front: list[dict[str, Any]], objectives: list[str],
                path: Path, title: str) -> Path:
    """Every completed trial (GMACs across, top-1 up) and the front as a step line; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ix, iy = objectives.index("gmacs"), objectives.index("top1")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.scatter([r["values"][ix] for r in rows], [r["values"][iy] for r in rows], s=18, c="0.6", label="trials")
    fx = [r["values"][ix] for r in sorted(front, key=lambda r: r["values"][ix])]
    fy = [r["values"][iy] for r in sorted(front, key=lambda r: r["values"][ix])]
    ax.step(fx, fy, where="post", c="C3", lw=1.2)
    ax.scatter(fx, fy, s=30, c="C3", label="Pareto front", zorder=3)
    for r in front:
        ax.annotate(str(r["number"]), (r["values"][ix], r["values"][iy]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("GMACs per image (lower is better)")
    ax.set_ylabel("val top-1 % (higher is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
