"""The claims registry: published figures as data, checked and written into MLflow.

    python -m experiments.claims list                    # every claim, one line each
    python -m experiments.claims validate [FILES...]     # schema check, one line per error
    python -m experiments.claims check                   # structural claims: build the models
    python -m experiments.claims sync [--tracking-uri URI] [--experiment claims]

A claim file (``experiments/claims/*.yaml``) holds ``claims:`` — a list of entries — and may
hold ``defaults:`` (source, status, setting shared by its entries; a claim's own keys win,
``setting`` is merged key by key).  Four kinds (see docs/claims.md):

* ``value``       — a metric of one setting: ``metric: top1, value: 76.61``;
* ``comparison``  — metric(setting) − metric(versus) = / ≥ / ≤ ``delta`` (``relative: true``:
                    in % of the ``versus`` value);
* ``direction``   — the setting beats ``versus`` on ``metric`` (no magnitude published);
* ``structural``  — parameter count, GMACs or a block's parameter formula in C, checked by
                    building the model (no training).

The ``setting`` uses the trial config's keys (``model.backbone``, ``model.attention`` with
``kind``/``stages``/block parameters, ``data.dataset``, ``data.train_res``, ``optim.epochs``…)
and is written to MLflow under the same dotted param names as a trial (``model.backbone``,
``attn.kind``, ``attn.stages``…), with metrics named as a trial's (``val_top1``, ``best_top1``,
``val_top5``, ``params``, ``gmacs``), so MLflow's compare view puts a paper's row beside a
reproduction's.
"""
from __future__ import annotations

import ast
import copy
import json
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.yamlio import loads, non_finite, read_text

CLAIMS_DIR = Path(__file__).resolve().parent
EXPERIMENT = "claims"

__all__ = ["CLAIMS_DIR", "EXPERIMENT", "Claim", "LoadedClaim", "load_claims", "load_file", "claim_record",
           "setting_params", "check_structural", "StructuralResult", "sync", "metric_names", "ACCURACY_METRICS"]


class _Strict(BaseModel):
    """No unknown keys, no type coercion ("76.6" is not a number, 1 is not a bool)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("is blank: give the text, or leave the key out where it is optional")
    return v


#: A block_params claim's channel counts: a block of each is built and counted (ResNets stop at 2,048).
MAX_CHANNELS = 8192

#: Text a reader needs: whitespace alone is refused as if it were missing.
Text = Annotated[str, AfterValidator(_not_blank)]


# ---------------------------------------------------------------------------------------------
# schema
# ---------------------------------------------------------------------------------------------

Status = Literal["verified", "unverified"]
Task = Literal["classification", "video", "detection", "segmentation", "gaze"]
# What a claim measures.  Errors are converted to accuracies for MLflow (top1_err 23.29 ->
# val_top1/best_top1 76.71) so a paper's row and a reproduction's share a column.
Metric = Literal["top1", "top5", "top1_err", "top5_err", "params", "gmacs",
                 "ap_box", "ap_mask", "miou", "gaze_error"]
ACCURACY_METRICS = ("top1", "top5", "top1_err", "top5_err")
HIGHER_IS_BETTER = {"top1": True, "top5": True, "top1_err": False, "top5_err": False, "params": False,
                    "gmacs": False, "ap_box": True, "ap_mask": True, "miou": True, "gaze_error": False}


class Source(_Strict):
    paper: Text = Field(min_length=3)  # "Squeeze-and-Excitation Networks (Hu et al.)"
    arxiv: Optional[str] = Field(None, pattern=r"^\d{4}\.\d{4,5}(v\d+)?$")
    where: Text = Field(min_length=2)  # "Table 2", "abstract", "README"
    repo: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")  # GitHub owner/name
    file: Optional[Text] = None  # a file of that repository

    @model_validator(mode="after")
    def _traceable(self) -> "Source":
        if self.arxiv is None and self.repo is None:
            raise ValueError("a source needs an arxiv id or a repo")
        return self


class ModelSetting(_Strict):
    backbone: Optional[Text] = None  # ours (resnet50, cifar_resnet110…) or the paper's (resnet152, vgg…)
    # None/"none" = the plain backbone; a block name; or {kind, stages, slot, every, <params>}
    attention: Union[None, str, dict[str, Any]] = None
    small_stem: Optional[bool] = None
    num_classes: Optional[int] = Field(None, gt=0)

    @model_validator(mode="after")
    def _attention(self) -> "ModelSetting":
        from blocks import names as block_names
        from blocks import resolve_spec
        from blocks.backbones import backbone_names

        a = self.attention
        kind = a.get("kind") if isinstance(a, dict) else a
        if isinstance(a, dict) and not isinstance(kind, str):
            raise ValueError("attention: a mapping needs 'kind' (a block name)")
        if kind not in (None, "none") and kind not in block_names():
            raise ValueError(f"attention: unknown block {kind!r}; valid: {', '.join(block_names())}")
        # On the paper's backbone (c2d-resnet50, vgg16…) the other keys describe the paper's
        # setting in its own terms (non-local's `blocks: 5`) and are not checked against our block.
        if self.backbone in backbone_names():  # ours: the spec must build on it
            try:
                resolve_spec(a, self.backbone)
            except KeyError as e:
                raise ValueError(f"attention: {e.args[0]}") from None
            except (TypeError, ValueError) as e:
                raise ValueError(f"attention: {e}") from None
        return self



class DataSetting(_Strict):
    dataset: Text = Field(min_length=2)  # ours (imagenet, cifar100…) or the paper's (kinetics400, coco…)
    train_res: Optional[int] = Field(None, gt=0)
    val_res: Optional[int] = Field(None, gt=0)
    batch_size: Optional[int] = Field(None, gt=0)


class OptimSetting(_Strict):
    epochs: Optional[int] = Field(None, gt=0)
    lr: Optional[float] = Field(None, gt=0)
    schedule: Optional[Literal["cosine", "step", "constant"]] = None
    milestones: Optional[list[Annotated[int, Field(gt=0)]]] = None

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        if v is not None and any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"milestones must be increasing epochs, got {v}")
        return v
    weight_decay: Optional[float] = Field(None, ge=0)


class Setting(_Strict):
    task: Task = "classification"
    model: ModelSetting = Field(default_factory=ModelSetting)
    data: Optional[DataSetting] = None
    optim: OptimSetting = Field(default_factory=OptimSetting)
    note: Optional[Text] = None  # what the keys cannot say ("ImageNet-pretrained", "1 block before the last of res4")



class _ClaimBase(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=200)
    title: Text = Field(min_length=5)  # one sentence, as a reader would say it
    source: Source
    status: Status  # verified (read in the source, or counted by building the model) or unverified (recalled)
    status_note: Optional[Text] = None  # "params verified", "verified (English text)"
    setting: Setting
    note: Optional[Text] = None


#: Metrics published as percentages (0 … 100); the others are counts or errors (≥ 0).
PERCENT_METRICS = ("top1", "top5", "top1_err", "top5_err", "ap_box", "ap_mask", "miou")


def _range_problem(metric: str, value: float, difference: bool = False) -> Optional[str]:
    """Why ``value`` (or, ``difference``, a difference of two values) cannot be a published
    figure of ``metric``; None when it can."""
    if metric in PERCENT_METRICS:
        lo, hi = (-100.0, 100.0) if difference else (0.0, 100.0)
        if not lo <= value <= hi:
            return f"{metric} is a percentage: {'a difference' if difference else 'a value'} of {value:g} is outside {lo:g} … {hi:g}"
    elif not difference and value < 0:
        return f"{metric} cannot be negative, got {value:g}"
    return None


class ValueClaim(_ClaimBase):
    kind: Literal["value"]
    metric: Metric
    value: float
    tolerance: float = Field(0.0, ge=0)  # the published rounding

    @model_validator(mode="after")
    def _in_range(self) -> "ValueClaim":
        problem = _range_problem(self.metric, self.value)
        if problem:
            raise ValueError(f"value: {problem}")
        return self


class ComparisonClaim(_ClaimBase):
    kind: Literal["comparison"]
    versus: dict[str, Any]  # overrides of `setting` that give the other side (e.g. {model: {attention: none}})
    metric: Metric
    delta: float  # metric(setting) − metric(versus), as published
    op: Literal["==", ">=", "<="] = "=="
    relative: bool = False  # delta in % of the versus value
    tolerance: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _in_range(self) -> "ComparisonClaim":
        problem = None if self.relative else _range_problem(self.metric, self.delta, difference=True)
        if problem:
            raise ValueError(f"delta: {problem}")
        return self


class DirectionClaim(_ClaimBase):
    kind: Literal["direction"]
    versus: dict[str, Any]
    metric: Metric  # the setting is better than versus on this metric (HIGHER_IS_BETTER says which way)


class StructuralClaim(_ClaimBase):
    """Counted by building the model: ``params``/``gmacs`` of the setting (or the difference to
    ``versus``), or ``block_params``: the parameters of one block at each of ``channels``
    against ``formula`` (an expression in ``C``)."""

    kind: Literal["structural"]
    metric: Literal["params", "gmacs", "block_params"]
    value: Optional[float] = None
    formula: Optional[str] = None
    channels: Optional[list[Annotated[int, Field(gt=0, le=MAX_CHANNELS)]]] = None
    versus: Optional[dict[str, Any]] = None
    op: Literal["==", "<", ">"] = "=="  # < and >: the setting against versus, no value
    tolerance: float = Field(0.0, ge=0)
    resnet_v1: bool = False  # count ResNet v1 (stride on the first 1×1 conv), as the papers do
    input: Optional[int] = Field(None, gt=0)  # default: setting.data.train_res, else the backbone's

    @field_validator("input")
    @classmethod
    def _input(cls, v: Optional[int]) -> Optional[int]:
        from blocks.cost import MAX_INPUT

        if v is not None and v > MAX_INPUT:
            raise ValueError(f"input is the square input size in pixels, at most {MAX_INPUT}, got {v:,}")
        return v

    @field_validator("formula")
    @classmethod
    def _formula(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            _eval_formula(v, 64)
        return v

    @model_validator(mode="after")
    def _shape(self) -> "StructuralClaim":
        if self.metric == "block_params":
            if self.formula is None or not self.channels:
                raise ValueError("block_params needs formula and channels")
            for c in self.channels:
                _eval_formula(self.formula, c)
            a = self.setting.model.attention
            if a in (None, "none"):
                raise ValueError("block_params needs setting.model.attention (the block)")
        else:
            if self.formula is not None or self.channels is not None:
                raise ValueError(f"formula/channels apply to block_params, not {self.metric}")
            if self.setting.model.backbone is None:
                raise ValueError(f"{self.metric} needs setting.model.backbone")
            if self.op == "==" and self.value is None:
                raise ValueError("structural claim with op '==' needs value")
            if self.op != "==" and self.versus is None:
                raise ValueError(f"op {self.op!r} compares with versus: give versus")
            problem = None if self.value is None or self.versus is not None else _range_problem(self.metric, self.value)
            if problem:  # with versus the value is a difference
                raise ValueError(f"value: {problem}")
        return self


Claim = Annotated[Union[ValueClaim, ComparisonClaim, DirectionClaim, StructuralClaim], Field(discriminator="kind")]


class _ClaimAdapter(_Strict):
    claim: Claim


class ClaimFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    defaults: dict[str, Any] = Field(default_factory=dict)
    claims: list[Any]


_ALLOWED_DEFAULTS = {"source", "status", "status_note", "setting", "note"}

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow}


def _eval_formula(text: str, c: int) -> float:
    """``"2*C**2 + 4.5*C"`` at ``C=c``: numbers, C, + − × ÷ ** and parentheses only.

    Evaluated in floating point (an integer power tower such as ``C**C**C`` would run for
    ever); a division by zero, an overflow, a complex or non-finite result is a ValueError."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # ValueError: a NUL byte
        raise ValueError(f"formula {text!r} is not an expression in C") from None

    def ev(n: ast.AST) -> float:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            return float(n.value)
        if isinstance(n, ast.Name) and n.id == "C":
            return float(c)
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        raise ValueError(f"formula {text!r}: only numbers, C, + - * / ** and parentheses are allowed")

    try:
        v = ev(tree)
    except ZeroDivisionError:
        raise ValueError(f"formula {text!r} divides by zero at C={c}") from None
    except (OverflowError, RecursionError):
        raise ValueError(f"formula {text!r} overflows at C={c}") from None
    if not isinstance(v, float) or not math.isfinite(v):  # (-C)**0.5 is complex, 1e400 is inf
        raise ValueError(f"formula {text!r} is not a finite real number at C={c} (got {v})")
    return v


# ---------------------------------------------------------------------------------------------
# loading, with file:line in every error
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadedClaim:
    claim: Any  # ValueClaim | ComparisonClaim | DirectionClaim | StructuralClaim
    file: Path
    line: int

    @property
    def where(self) -> str:
        return f"{_rel(self.file)}:{self.line}"


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _line_of(lines: dict[tuple, int], *path: Any) -> int:
    for k in range(len(path), -1, -1):
        if tuple(path[:k]) in lines:
            return lines[tuple(path[:k])]
    return 1


def deep_merge(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merge key by key, anything else is replaced; a key
    set to null in ``over`` drops the inherited value (the field's default applies)."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def _fmt_loc(loc: Iterable[Any], kind: Any) -> tuple[list[Any], str]:
    """pydantic's loc without the union tag (``("value", "metric")`` -> ``metric``)."""
    parts = [p for p in loc]
    if parts and parts[0] == "claim":
        parts = parts[1:]
    if parts and isinstance(kind, str) and parts[0] == kind:
        parts = parts[1:]
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return parts, text


def _one_error(e: ValidationError, file: Path, lines: dict[tuple, int], index: int, raw: dict[str, Any],
               from_defaults: set[str]) -> str:
    err = e.errors()[0]
    parts, loc = _fmt_loc(err["loc"], raw.get("kind"))
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "union_tag_invalid":
        msg = f"unknown kind {raw.get('kind')!r}; valid: value, comparison, direction, structural"
        parts, loc = ["kind"], "kind"
    elif err["type"] == "union_tag_not_found":
        msg = "missing kind (value, comparison, direction or structural)"
    elif err["type"] == "missing":
        msg = "required key missing"
    head = msg.split(":", 1)[0]
    if head.isidentifier() and ("claims", index, *parts, head) in lines:
        parts, loc, msg = [*parts, head], f"{loc}.{head}" if loc else head, msg.split(":", 1)[1].strip()
    path = ("claims", index, *parts)
    if parts and parts[0] in from_defaults and ("claims", index, parts[0]) not in lines:
        path = ("defaults", *parts)  # the bad value came from the file's defaults
    cid = raw.get("id")
    who = f" (claim {cid})" if isinstance(cid, str) else ""
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{_rel(file)}:{_line_of(lines, *path)}: claims[{index}]{'.' + loc if loc else ''}: {msg}{who}{more}"


def load_file(path: Path) -> tuple[list[LoadedClaim], list[str]]:
    """Claims of one file, and its errors (one line each, ``file:line: where: what``)."""
    try:  # a regular file of bounded size (a FIFO blocked, a device filled the memory)
        text = read_text(path, what="claims file")
    except ConfigError as e:
        return [], [str(e)]
    path = Path(path)
    try:  # YAML 1.2 within bounds: aliases expanded up to a limit, nesting bounded
        raw, where = loads(text, _rel(path))
    except ConfigError as e:
        return [], [str(e)]
    lines = where.by_path  # key path -> line
    if not isinstance(raw, dict):
        return [], [f"{_rel(path)}:1: the top level must be a mapping with 'claims:' (and optional 'defaults:')"]
    bad = next(non_finite(raw), None)  # .nan, .inf, 1e400: no published figure, and MLflow would get it
    if bad is not None:
        at, v = bad
        where = ".".join(f"[{k}]" if isinstance(k, int) else str(k) for k in at).replace(".[", "[")
        return [], [f"{_rel(path)}:{_line_of(lines, *at)}: {where}: {v} is not a finite number"]
    try:
        f = ClaimFile.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = err["loc"][0] if err["loc"] else None
        msg = "unknown key (a claim file has 'defaults' and 'claims')" if err["type"] == "extra_forbidden" else \
            str(err["msg"]).removeprefix("Value error, ")
        return [], [f"{_rel(path)}:{_line_of(lines, key) if key else 1}: {key or 'file'}: {msg}"]
    bad_defaults = sorted(set(f.defaults) - _ALLOWED_DEFAULTS)
    if bad_defaults:
        return [], [f"{_rel(path)}:{_line_of(lines, 'defaults', bad_defaults[0])}: defaults.{bad_defaults[0]}: "
                    f"unknown key (defaults may set {', '.join(sorted(_ALLOWED_DEFAULTS))})"]
    out, errors = [], []
    for i, entry in enumerate(f.claims):
        if not isinstance(entry, dict):
            errors.append(f"{_rel(path)}:{_line_of(lines, 'claims', i)}: claims[{i}]: a claim is a mapping, "
                          f"got {type(entry).__name__}")
            continue
        merged = deep_merge(f.defaults, entry)
        try:
            claim = _ClaimAdapter.model_validate({"claim": merged}).claim
        except ValidationError as e:
            errors.append(_one_error(e, path, lines, i, entry, set(f.defaults)))
            continue
        for side in ("versus",):
            over = getattr(claim, side, None)
            if over is not None:
                try:
                    other = Setting.model_validate(deep_merge(merged["setting"], over))
                    if other == claim.setting:  # nothing to compare: the same setting twice
                        errors.append(f"{_rel(path)}:{_line_of(lines, 'claims', i, side)}: claims[{i}].{side}: "
                                      f"changes nothing in the setting (claim {claim.id}); give what the other "
                                      f"side differs in, e.g. {{model: {{attention: none}}}}")
                        claim = None
                except ValidationError as e:
                    err = e.errors()[0]
                    _, loc = _fmt_loc(err["loc"], None)
                    msg = "unknown key" if err["type"] == "extra_forbidden" else \
                        str(err["msg"]).removeprefix("Value error, ")
                    errors.append(f"{_rel(path)}:{_line_of(lines, 'claims', i, side, *err['loc'])}: "
                                  f"claims[{i}].{side}{'.' + loc if loc else ''}: {msg} (claim {claim.id})")
                    claim = None
        if claim is not None:
            out.append(LoadedClaim(claim, path, _line_of(lines, "claims", i)))
    return out, errors


def claim_files(root: Path = CLAIMS_DIR) -> list[Path]:
    return sorted(Path(root).glob("*.yaml")) + sorted(Path(root).glob("*.yml"))


def load_claims(paths: Optional[Iterable[Path]] = None, *, strict: bool = True) -> tuple[list[LoadedClaim], list[str]]:
    """Every claim of ``paths`` (default: experiments/claims/*.yaml).  Duplicate ids are errors.

    ``strict``: raise :class:`ConfigError` (one line per problem) when there is any error.
    """
    files = list(paths) if paths is not None else claim_files()
    out: list[LoadedClaim] = []
    errors: list[str] = []
    seen: dict[str, LoadedClaim] = {}
    for p in files:
        claims, errs = load_file(Path(p))
        errors += errs
        for lc in claims:
            if lc.claim.id in seen:
                errors.append(f"{lc.where}: claim id {lc.claim.id!r} already used at {seen[lc.claim.id].where}")
                continue
            seen[lc.claim.id] = lc
            out.append(lc)
    if errors and strict:
        raise ConfigError.many(errors) if hasattr(ConfigError, "many") else ConfigError("\n".join(errors))
    return out, errors


# ---------------------------------------------------------------------------------------------
# settings as trial params; claims as MLflow records
# ---------------------------------------------------------------------------------------------

def attention_dict(setting: Setting) -> dict[str, Any]:
    """The attention as a trial logs it (``attn.*``): resolved on our backbones, as written otherwise."""
    from blocks import resolve_spec
    from blocks.backbones import backbone_names

    a = setting.model.attention
    if a in (None, "none", "baseline"):
        return {"kind": "none"}
    if setting.model.backbone in backbone_names():
        spec = resolve_spec(a, setting.model.backbone)
        return spec.as_dict() if spec else {"kind": "none"}
    return {"kind": a} if isinstance(a, str) else dict(a)


def setting_params(setting: Setting) -> dict[str, str]:
    """Dotted MLflow params, named as ``pipeline.train.flat_params`` names a trial's."""
    from pipeline.config import flatten

    tree: dict[str, Any] = {"model": {}, "data": {}, "optim": {}}
    m = setting.model
    for k in ("backbone", "small_stem", "num_classes"):
        if getattr(m, k) is not None:
            tree["model"][k] = getattr(m, k)
    if setting.data is not None:
        tree["data"] = setting.data.model_dump(exclude_none=True)
    tree["optim"] = setting.optim.model_dump(exclude_none=True)
    tree["attn"] = attention_dict(setting)
    return flatten({k: v for k, v in tree.items() if v})


def versus_setting(lc_claim: Any) -> Optional[Setting]:
    over = getattr(lc_claim, "versus", None)
    if over is None:
        return None
    return Setting.model_validate(deep_merge(lc_claim.setting.model_dump(exclude_none=True), over))


def metric_names(metric: str, value: float) -> dict[str, float]:
    """A published figure under our trials' metric names (errors become accuracies)."""
    if metric == "top1":
        return {"val_top1": value, "best_top1": value}
    if metric == "top1_err":
        return {"val_top1": round(100.0 - value, 6), "best_top1": round(100.0 - value, 6)}
    if metric == "top5":
        return {"val_top5": value}
    if metric == "top5_err":
        return {"val_top5": round(100.0 - value, 6)}
    return {metric: value}


def delta_metric_name(metric: str) -> str:
    """``delta_top1``: metric(setting) − metric(versus), in accuracy terms (errors flip sign)."""
    return {"top1_err": "delta_top1", "top5_err": "delta_top5"}.get(metric, f"delta_{metric}")


def describe(claim: Any) -> str:
    s = claim.source
    src = s.paper + (f", arXiv {s.arxiv}" if s.arxiv else "") + (f", {s.repo}" if s.repo else "") + \
        (f" {s.file}" if s.file else "") + f", {s.where}"
    status = claim.status + (f" ({claim.status_note})" if claim.status_note else "")
    return f"{claim.title}\n\nSource: {src}\nStatus: {status}" + (f"\nNote: {claim.note}" if claim.note else "") + \
        (f"\nSetting note: {claim.setting.note}" if claim.setting.note else "")


def claim_record(claim: Any) -> dict[str, Any]:
    """One MLflow run's content for a claim (see ``pipeline.tracking.sync_keyed_runs``)."""
    params = setting_params(claim.setting)
    metrics: dict[str, float] = {}
    tags = {"source": "paper", "attnlab.claim.kind": claim.kind, "attnlab.claim.verified": claim.status,
            "paper.title": claim.source.paper, "paper.where": claim.source.where, "attnlab.task": claim.setting.task,
            "mlflow.note.content": describe(claim)}
    if claim.source.arxiv:
        tags["paper.arxiv"] = claim.source.arxiv
    if claim.source.repo:
        tags["paper.repo"] = claim.source.repo + (f"/{claim.source.file}" if claim.source.file else "")
    vs = versus_setting(claim)
    if vs is not None:
        mine = params
        for k, v in setting_params(vs).items():
            if mine.get(k) != v:
                params[f"versus.{k}"] = v
    if claim.kind == "value":
        metrics.update(metric_names(claim.metric, claim.value))
    elif claim.kind == "comparison":
        name = delta_metric_name(claim.metric) + ("_pct" if claim.relative else "")
        sign = -1.0 if claim.metric in ("top1_err", "top5_err") else 1.0
        metrics[name] = sign * claim.delta
        tags["attnlab.claim.op"] = claim.op
    elif claim.kind == "direction":
        better = "higher" if HIGHER_IS_BETTER[claim.metric] else "lower"
        tags["attnlab.claim.direction"] = f"{claim.metric}: setting {better} than versus"
    elif claim.kind == "structural":
        tags["attnlab.claim.op"] = claim.op
        if claim.metric == "block_params":
            tags["attnlab.claim.formula"] = claim.formula
            metrics["block_params_c" + str(claim.channels[0])] = _eval_formula(claim.formula, claim.channels[0])
        elif claim.value is not None:
            metrics[("delta_" if claim.versus else "") + claim.metric] = claim.value
    return {"key": claim.id, "run_name": f"paper: {claim.id}", "params": params, "metrics": metrics, "tags": tags}


def sync(tracking_uri: str, claims: list[LoadedClaim], experiment: str = EXPERIMENT,
         files: Optional[Iterable[Path]] = None) -> dict[str, dict[str, str]]:
    """Write ``claims`` into the MLflow experiment ``experiment``: one run per claim, idempotent.

    A claim run no longer in ``claims`` is marked removed — with ``files`` (a partial sync of some
    claim files), only the runs of claims that came from those files."""
    from pipeline.tracking import sync_keyed_runs

    records = []
    for lc in claims:
        rec = claim_record(lc.claim)
        rec["tags"]["attnlab.claim.file"] = lc.file.name
        records.append(rec)
    scope = None
    if files is not None:
        names = {Path(f).name for f in files}
        scope = lambda run: run.data.tags.get("attnlab.claim.file") in names  # noqa: E731 (a one-line helper local to this function)
    return sync_keyed_runs(tracking_uri, experiment, records, scope=scope)


# ---------------------------------------------------------------------------------------------
# structural claims: build the model, count
# ---------------------------------------------------------------------------------------------

@dataclass
class StructuralResult:
    id: str
    holds: bool
    measured: Any
    expected: Any
    text: str  # "holds (25,557,032)" / "off by +0.231 GMACs (measured 4.089, claimed 3.858)"
    details: list[str] = field(default_factory=list)


def _to_v1(model: Any) -> Any:
    """ResNet v1: a downsampling bottleneck strides on its first 1×1 conv, not on the 3×3."""
    from blocks.backbones import residual_blocks

    for stage in model.stages:
        for b in residual_blocks(stage):
            c1, c2 = getattr(b, "conv1", None), getattr(b, "conv2", None)
            if c1 is not None and c2 is not None and getattr(b, "conv3", None) is not None \
                    and c1.kernel_size == (1, 1) and c2.stride == (2, 2):
                c1.stride, c2.stride = (2, 2), (1, 1)
    return model


class _Counter:
    def __init__(self) -> None:
        self.cache: dict[str, tuple[int, float]] = {}

    def count(self, setting: Setting, resnet_v1: bool, res: Optional[int], want_macs: bool) -> tuple[int, Optional[float]]:
        from blocks import build_model
        from blocks.backbones import backbone_names, get_backbone
        from blocks.cost import count_macs, count_params

        bb = setting.model.backbone
        if bb not in backbone_names():
            raise ValueError(f"backbone {bb!r} is not one attnlab builds ({', '.join(backbone_names())})")
        entry = get_backbone(bb)
        res = res or (setting.data.train_res if setting.data and setting.data.train_res else entry.default_input)
        classes = setting.model.num_classes or entry.default_classes
        key = json.dumps([bb, setting.model.attention, classes, bool(setting.model.small_stem), resnet_v1, res,
                          want_macs], sort_keys=True, default=str)
        if key not in self.cache:
            model = build_model(bb, classes, attention=setting.model.attention, small_stem=bool(setting.model.small_stem))
            if resnet_v1:
                _to_v1(model)
            macs = count_macs(model, (res, res)) / 1e9 if want_macs else None
            self.cache[key] = (count_params(model), macs)
        return self.cache[key]


def _fmt_num(metric: str, v: float) -> str:
    if metric == "gmacs":
        return f"{v * 1000:.2f} MMACs" if abs(v) < 1 else f"{v:.4f} GMACs"
    return f"{int(round(v)):,}" if float(v).is_integer() or abs(v) >= 1000 else f"{v:g}"


def check_structural(claims: Iterable[Any], counter: Optional[_Counter] = None) -> list[StructuralResult]:
    """Build each structural claim's model (no training) and compare the count."""
    import blocks
    from blocks.cost import count_params

    counter = counter or _Counter()
    out = []
    for c in claims:
        c = getattr(c, "claim", c)
        if c.kind != "structural":
            continue
        try:
            if c.metric == "block_params":
                a = c.setting.model.attention
                kind = a if isinstance(a, str) else a["kind"]
                params = {} if isinstance(a, str) else {k: v for k, v in a.items()
                                                       if k not in ("kind", "stages", "slot", "every")}
                rows, ok = [], True
                for ch in c.channels:
                    got = count_params(blocks.create(kind, ch, **params))
                    want = _eval_formula(c.formula, ch)
                    good = abs(got - want) <= c.tolerance
                    ok &= good
                    rows.append(f"C={ch}: {got:,} vs {c.formula} = {want:,.10g}" + ("" if good else f" (off by {got - want:+,.10g})"))
                measured = {ch: count_params(blocks.create(kind, ch, **params)) for ch in c.channels}
                text = ("holds" if ok else "off") + ": " + "; ".join(rows)
                out.append(StructuralResult(c.id, ok, measured, c.formula, text, rows))
                continue
            want_macs = c.metric == "gmacs"
            p, g = counter.count(c.setting, c.resnet_v1, c.input, want_macs)
            got = g if want_macs else p
            vs = versus_setting(c)
            if vs is not None:
                p2, g2 = counter.count(vs, c.resnet_v1, c.input, want_macs)
                other = g2 if want_macs else p2
                if c.op != "==":
                    ok = got < other if c.op == "<" else got > other
                    text = (f"{'holds' if ok else 'does not hold'}: {_fmt_num(c.metric, got)} {c.op} "
                            f"{_fmt_num(c.metric, other)} is {ok}")
                    out.append(StructuralResult(c.id, ok, got, other, text))
                    continue
                got = got - other
            diff = got - c.value
            ok = abs(diff) <= c.tolerance + 1e-12
            unit = " GMACs" if want_macs else " params"
            if ok:
                text = f"holds: measured {_fmt_num(c.metric, got)}" + (f" (claimed {_fmt_num(c.metric, c.value)} ± {c.tolerance:g})" if c.tolerance else "")
            else:
                d = f"{diff:+.4f}" if want_macs else f"{diff:+,.0f}"
                text = f"off by {d}{unit}: measured {_fmt_num(c.metric, got)}, claimed {_fmt_num(c.metric, c.value)}" + \
                    (f" ± {c.tolerance:g}" if c.tolerance else "")
            out.append(StructuralResult(c.id, ok, got, c.value, text))
        except (ValueError, TypeError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            out.append(StructuralResult(c.id, False, None, getattr(c, "value", None), f"not checkable: {msg}"))
    return out
