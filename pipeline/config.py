"""Typed trial configuration: one source of truth for keys, defaults, bounds and errors.

Every section is a :class:`StrictModel`: unknown keys and wrong types are errors that name the
key, and assignment is validated too.  Types are strict (a bool is not an int, the string
``"3"`` is not a number, a list of two numbers is accepted for a pair) and every float must be
finite (``.inf`` and ``.nan`` are refused everywhere, block parameters included).  Paths are
made absolute when the config is built, because Ray Tune runs each trial in its own working
directory; whether a data root exists is *not* part of validation (it depends on the machine):
:func:`check_data_root` answers that where the trial runs.

Bounds (documented at each field) keep a config from asking for what cannot run: resolutions
are 8..1024 px and at least what the backbone's downsampling needs (see
:func:`min_resolution`), ``num_classes`` at most 100,000, batch sizes at most 65,536.

Importing this module, or validating a :class:`DataConfig`, imports neither torch nor the data
package (datasets come from the leaf :mod:`pipeline.catalog`); a :class:`ModelConfig` imports
``blocks`` (torch) to check the backbone and the attention.
"""
from __future__ import annotations

import json
import os

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import catalog
from .uris import SQLITE, pinned_sqlite

__all__ = ["StrictModel", "SyntheticSpec", "DataConfig", "ModelConfig", "OptimConfig", "CheckpointConfig",
           "TrackingConfig", "FaultConfig", "TrialConfig", "abs_path", "load_trial_config", "validate_trial",
           "check_data_root", "applicable_params", "identity_tree", "EXECUTION_ONLY", "execution_only", "repeated", "value_key", "min_resolution",
           "attention_param_problems", "validation_problems", "MIN_RES", "MAX_RES", "MAX_CLASSES", "NAME_PATTERN"]

MIN_RES, MAX_RES = 8, 1024  # training/eval resolution in px (and the backbone's own minimum)
#: The name of a grid or search (spec field ``name``, ``--name``): a folder under the storage
#: and an MLflow experiment.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}"
MAX_CLASSES = 100_000
MAX_BATCH = 65_536
MAX_IMAGES = 10_000_000  # synthetic split sizes

class StrictModel(BaseModel):
    """Base of every config section: no unknown keys, strict types, finite floats, validated
    assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, strict=True,
                              allow_inf_nan=False)


EMPTY_PATH = "the path is empty: leave the key out (or null) for the default"


def abs_path(value: Optional[str | Path]) -> Optional[Path]:
    """``~`` expanded and made absolute (not required to exist); ``None`` stays ``None``.  An
    empty or blank string is a ``ValueError``: it read as "unset" (or the current folder) before."""
    if value is None:
        return None
    if isinstance(value, str) and not value.strip():
        raise ValueError(EMPTY_PATH)
    if not isinstance(value, (str, Path)):
        raise ValueError(f"expected a path, got {type(value).__name__} {value!r}")
    return Path(value).expanduser().resolve()


def _list_as_tuple(value: Any) -> Any:
    """YAML and JSON have no tuples: a list of the right length is accepted for a fixed pair."""
    return tuple(value) if isinstance(value, list) else value


Pair = Annotated[tuple[float, float], BeforeValidator(_list_as_tuple)]
Float3 = Annotated[tuple[float, float, float], BeforeValidator(_list_as_tuple)]


class SyntheticSpec(StrictModel):
    """Shape of the ``synthetic`` dataset (procedural, class-dependent; for loader/speed tests)."""

    num_classes: int = Field(10, gt=0, le=MAX_CLASSES)
    image_size: int = Field(32, ge=MIN_RES, le=MAX_RES)  # also the default training resolution
    train_count: int = Field(1000, gt=0, le=MAX_IMAGES)
    val_count: int = Field(200, gt=0, le=MAX_IMAGES)
    seed: int = Field(0, ge=0, lt=2**32)


class DataConfig(StrictModel):
    """The ``data`` section of a trial config (see ``pipeline.data.make_loaders``)."""

    # what
    dataset: str = "digits"  # a name from pipeline.catalog (python -m pipeline.data list)
    root: Optional[Path] = None  # dataset folder; unused by digits/synthetic; existence: check_data_root
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)

    # how it is read
    backend: Literal["ffcv", "torch", "auto"] = "auto"
    batch_size: int = Field(128, gt=0, le=MAX_BATCH)  # per process
    val_batch_size: Optional[int] = Field(None, gt=0, le=MAX_BATCH)  # None: batch_size
    workers: Optional[int] = Field(None, ge=0, le=512)  # None: min(8, cpu count)
    shuffle: bool = True  # train order; False = sequential (debugging, tests)
    drop_last: bool = True  # train only; val always keeps every sample

    # augmentation and resolution (px, MIN_RES..MAX_RES, and at least min_resolution(model))
    augment: Literal["auto", "imagenet", "cifar", "digits", "none"] = "auto"
    train_res: Optional[int] = Field(None, ge=MIN_RES, le=MAX_RES)  # None: the dataset's default
    val_res: Optional[int] = Field(None, ge=MIN_RES, le=MAX_RES)  # None: train_res
    val_crop_ratio: float = Field(224 / 256, gt=0, le=1)
    rrc_scale: Pair = (0.08, 1.0)
    rrc_ratio: Pair = (3 / 4, 4 / 3)
    crop_padding: int = Field(4, ge=0, le=512)  # cifar/digits styles: pad-and-random-crop
    normalize: bool = True  # False: uint8 images as stored (raw checks)
    mean: Optional[Float3] = None  # None: the dataset's (0..1 scale)
    std: Optional[Float3] = None
    channels_last: bool = True

    # FFCV files (python -m pipeline.data write ...)
    beton_dir: Optional[Path] = None  # None: a cache folder keyed by dataset fingerprint
    max_res: int = Field(256, ge=MIN_RES, le=4096)  # longest side stored in the .beton
    write_mode: Literal["auto", "raw", "jpg", "proportion"] = "auto"
    jpeg_quality: int = Field(90, ge=1, le=100)
    compress_prob: float = Field(0.5, ge=0, le=1)
    ffcv_os_cache: bool = True  # False: quasi-random order, for data larger than RAM
    # torch backend: read the resized JPEG copy here (write --format jpeg), not the originals
    jpeg_dir: Optional[Path] = None

    @field_validator("root", "beton_dir", "jpeg_dir", mode="before")
    @classmethod
    def _absolute(cls, v):
        return abs_path(v)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        if v not in catalog.DATASETS:
            raise ValueError(f"unknown dataset {v!r}; valid: {', '.join(catalog.names())}")
        return v

    @field_validator("rrc_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (0 < lo <= hi <= 1):
            raise ValueError(f"must satisfy 0 < low <= high <= 1, got {v}")
        return v

    @field_validator("rrc_ratio")
    @classmethod
    def _ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (0 < lo <= hi <= 100):
            raise ValueError(f"must satisfy 0 < low <= high <= 100, got {v}")
        return v

    @field_validator("std")
    @classmethod
    def _std(cls, v: Optional[Float3]) -> Optional[Float3]:
        if v is not None and any(s <= 0 for s in v):
            raise ValueError(f"every std must be > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _cross(self) -> "DataConfig":
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        return self

    def resolutions(self) -> tuple[int, int]:
        """``(train_res, val_res)`` with the defaults filled in (the dataset's, or the synthetic
        image size)."""
        default = catalog.info(self.dataset).default_res or self.synthetic.image_size
        train = self.train_res or default
        return train, self.val_res or train

    def num_classes(self) -> Optional[int]:
        """The dataset's class count where it is known without reading the data."""
        if self.dataset == "synthetic":
            return self.synthetic.num_classes
        return catalog.info(self.dataset).num_classes


def check_data_root(data_cfg: DataConfig) -> list[str]:
    """Problems with ``data.root`` on this machine (one line each; empty when fine).

    Not part of validation: a spec is validated (and dry-run) where the data may be absent;
    the trial runner calls this on the node that trains, before training.
    """
    info = catalog.info(data_cfg.dataset)
    root = data_cfg.root
    if not info.needs_root:
        return []
    if root is None:
        return [f"data.root: dataset {info.name!r} needs a root folder"]
    if not root.exists():
        return [f"data.root: path does not exist: {root}"]
    if not root.is_dir():
        return [f"data.root: not a folder: {root}"]
    if not os.access(root, os.R_OK | os.X_OK):
        return [f"data.root: not readable: {root}"]
    return []


# ---------------------------------------------------------------------------------------------
# The trial: model, optimisation, checkpoints, tracking.
# ---------------------------------------------------------------------------------------------


def stage_strides(backbone: str, small_stem: bool = False) -> Optional[tuple[int, ...]]:
    """How much each stage of ``backbone`` has downsampled its input (``None``: not known here)."""
    from blocks.backbones import get_backbone

    try:
        return get_backbone(backbone).strides(small_stem) or None
    except KeyError:
        return None


def min_resolution(backbone: str, small_stem: bool = False, attention_stages: Sequence[int] = ()) -> int:
    """The smallest input (px) a trial can use: ``MIN_RES``, and what the backbone needs
    (:func:`blocks.backbones.min_input`: at least one pixel left after the last stage, and at
    least 2x2 positions at every stage that has attention — attention over a single position is
    a constant: non-local's sub-sampling pool fails on it, and a 1-px training resolution
    "trains" to NaN)."""
    from blocks.backbones import min_input

    if stage_strides(backbone, small_stem) is None:
        return MIN_RES
    return max(MIN_RES, min_input(backbone, small_stem, attention_stages))


def attention_param_problems(kind: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """``(param, problem)`` for each block parameter of the wrong type (``blocks.registry``)."""
    from blocks.registry import param_type_problems

    return param_type_problems(kind, params)


def _placement_problems(attention: Any) -> list[tuple[str, str]]:
    """Type problems of the placement keys (``stages``, ``slot``, ``every``) of an attention mapping."""
    out = []
    stages = attention.get("stages")
    if stages is not None and not (isinstance(stages, list) and stages
                                   and all(isinstance(x, int) and not isinstance(x, bool) for x in stages)):
        if not (isinstance(stages, int) and not isinstance(stages, bool)):
            out.append(("stages", f"expected a non-empty list of stage numbers like [1, 2], got {stages!r}"))
    if "slot" in attention and not isinstance(attention["slot"], str):
        out.append(("slot", f"expected a slot name, got {attention['slot']!r}"))
    every = attention.get("every")
    if every is not None and (not isinstance(every, int) or isinstance(every, bool)):
        out.append(("every", f"expected an integer >= 1, got {every!r}"))
    return out


def attention_problems(attention: Any) -> list[tuple[str, str]]:
    """``(key, problem)`` for type errors in an attention spec (a name or a mapping)."""
    if not isinstance(attention, dict) or attention.get("kind") in (None, "none", "baseline"):
        return []
    kind = attention["kind"]
    if not isinstance(kind, str):
        return [("kind", f"expected a block name, got {kind!r}")]
    params = {k: v for k, v in attention.items() if k not in ("kind", "stages", "slot", "every")}
    return _placement_problems(attention) + attention_param_problems(kind, params)


class ModelConfig(StrictModel):
    """``model``: a backbone and an attention spec (see ``blocks.insert``)."""

    backbone: str = "cifar_resnet20"
    # A block name, or a mapping {kind, stages, slot, every, <block params>}; None = baseline.
    attention: Optional[Union[str, dict[str, Any]]] = None
    small_stem: bool = False
    num_classes: Optional[int] = Field(None, gt=0, le=MAX_CLASSES)  # None: the dataset's
    # A local checkpoint of the backbone (torchvision's keys; nothing is downloaded): loaded
    # before the attention is inserted, which keeps its initialisation. Checked where the
    # trial runs (the file may exist only on the cluster's shared storage).
    pretrained: Optional[str] = None

    @field_validator("pretrained", mode="before")
    @classmethod
    def _absolute_checkpoint(cls, v):
        # absolute where the config is built (not re-read in each trial's working folder)
        return str(abs_path(v)) if v is not None else None

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        from blocks.backbones import backbone_names

        if v not in backbone_names():
            raise ValueError(f"unknown backbone {v!r}; valid: {', '.join(backbone_names())}")
        return v

    @model_validator(mode="after")
    def _valid_attention(self) -> "ModelConfig":
        from blocks import resolve_spec
        from blocks.backbones import get_backbone

        problems = attention_problems(self.attention)
        if problems:
            key, msg = problems[0]
            raise ValueError(f"attention.{key}: {msg}")
        try:
            resolve_spec(self.attention, self.backbone)
        except KeyError as e:  # unknown block: KeyError carries the message
            raise ValueError(f"attention: {e.args[0]}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"attention: {e}") from None
        if self.small_stem and not get_backbone(self.backbone).small_stem_option:
            raise ValueError(f"small_stem: backbone {self.backbone!r} has no small-stem option")
        return self

    def resolved_attention(self):
        from blocks import resolve_spec

        return resolve_spec(self.attention, self.backbone)


class OptimConfig(StrictModel):
    """``optim``: SGD with momentum, warm-up, cosine/step schedule, label smoothing."""

    epochs: int = Field(10, gt=0, le=10_000)
    lr: float = Field(0.1, gt=0)  # no upper bound: a diverging trial is a case the trainer records
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    no_decay_norm_bias: bool = True  # no weight decay on BN parameters and biases
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    warmup_epochs: float = Field(0.0, ge=0)  # linear warm-up from lr * warmup_start
    warmup_start: float = Field(0.1, gt=0, le=1)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[int] = Field(default_factory=lambda: [])  # step: epochs where lr *= gamma
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: Optional[float] = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "OptimConfig":
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})")
        if self.schedule == "step" and not self.milestones:
            raise ValueError("schedule 'step' needs milestones")
        if self.nesterov and self.momentum == 0:
            raise ValueError("momentum: must be > 0 with nesterov")
        if sorted(self.milestones) != self.milestones or any(m <= 0 for m in self.milestones):
            raise ValueError(f"milestones must be increasing positive epochs, got {self.milestones}")
        return self


class CheckpointConfig(StrictModel):
    every: int = Field(1, ge=0)  # epochs; 0 = never (the final state is still kept if keep_final)
    dir: Optional[Path] = None  # None: <work_dir>/checkpoints
    keep_final: bool = True  # keep last.pt after the trial
    log_final: bool = False  # also log the final checkpoint to MLflow as an artifact

    @field_validator("dir", mode="before")
    @classmethod
    def _absolute(cls, v):
        return abs_path(v)


class TrackingConfig(StrictModel):
    enabled: bool = True
    uri: Optional[str] = None  # None: sqlite:///<work_dir>/mlflow.db (works with no server)
    experiment: str = Field("attnlab", min_length=1, max_length=500)  # an MLflow experiment name
    run_name: Optional[str] = None  # None: the ablation coordinates, e.g. "resnet20 spa@s1 k=0.25 seed0"
    run_id: Optional[str] = None  # attach to this run (a grid creates its child runs up front)
    parent_run_id: Optional[str] = None  # a grid's parent run
    tags: dict[str, str] = Field(default_factory=dict)
    log_maps: bool = True  # attention maps of a fixed validation batch at the end
    map_images: int = Field(8, gt=0, le=64)

    @field_validator("uri", "run_id", "parent_run_id", mode="before")
    @classmethod
    def _not_blank(cls, v):  # "" read as unset: a new run, or the default store, without a word
        if isinstance(v, str) and not v.strip():
            raise ValueError("the value is empty; leave the key out (or null) for the default")
        return v

    @field_validator("uri", mode="before")
    @classmethod
    def _absolute_file_uri(cls, v):
        # A relative sqlite/file path would move with Ray's working directory: pin it now.
        if isinstance(v, str) and v.startswith(SQLITE):
            return pinned_sqlite(v)
        if isinstance(v, str) and "://" not in v and v.strip():
            return str(Path(v).expanduser().resolve())
        return v


class FaultConfig(StrictModel):
    """Injected failures, to test recovery (Tune retries, resume).  Off unless set.

    A fault fires once: only while ``once_file`` does not exist, and it creates the file as it
    fires (so a retried or resumed trial runs clean).
    """

    raise_at_epoch: Optional[int] = Field(None, ge=0)  # RuntimeError at the start of this epoch (0-based)
    kill_at_epoch: Optional[int] = Field(None, ge=0)  # SIGKILL this process after one batch of this epoch
    once_file: Optional[Path] = None

    @field_validator("once_file", mode="before")
    @classmethod
    def _absolute(cls, v):
        return abs_path(v)

    @model_validator(mode="after")
    def _needs_file(self) -> "FaultConfig":
        if (self.raise_at_epoch is not None or self.kill_at_epoch is not None) and self.once_file is None:
            raise ValueError("a fault needs once_file (it fires once, while that file does not exist)")
        return self


class TrialConfig(StrictModel):
    """One trial: one model trained on one dataset with one recipe.

    ``python -m pipeline.train --config FILE [--set key=value ...]``; keys are dotted paths
    (``optim.lr``, ``model.attention.topk_ratio``). MLflow params use the same dotted names,
    except the attention, logged as its resolved spec under ``attn.*`` (``applicable_params``).
    """

    name: Optional[str] = None  # a label (grid trial id); not part of the identity
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = False
    compile: bool = False
    # > 1: one trial trained data-parallel (DDP) by this many Ray Train workers, each with its
    # shard of the data; rank 0 tracks and checkpoints (pipeline.tune). Part of the identity:
    # the global batch is batch_size x workers_per_trial.
    workers_per_trial: int = Field(1, ge=1, le=1024)
    seed: int = Field(0, ge=0, lt=2**32)  # numpy seeds are 32-bit
    threads: Optional[int] = Field(None, gt=0, le=1024)  # torch intra-op threads; None: torch's default
    work_dir: Optional[Path] = None  # None: the current directory at config time
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    fault: FaultConfig = Field(default_factory=FaultConfig)

    @field_validator("work_dir", mode="before")
    @classmethod
    def _absolute(cls, v):
        return abs_path(v) if v is not None else Path.cwd().resolve()

    @model_validator(mode="after")
    def _fill(self) -> "TrialConfig":
        if self.work_dir is None:
            self.work_dir = Path.cwd().resolve()
        return self

    @model_validator(mode="after")
    def _runnable(self) -> "TrialConfig":
        """Resolution against what the backbone and the attention need (the sections are valid
        on their own by now); the message starts with the key it is about."""
        m, d = self.model, self.data
        spec = m.resolved_attention()
        stages = spec.stages if spec is not None else ()
        need = min_resolution(m.backbone, m.small_stem, stages)
        for key, res in zip(("train_res", "val_res"), d.resolutions()):
            if res < need:
                why = f" with attention at stage {max(stages)}" if stages and need > min_resolution(m.backbone, m.small_stem) else ""
                raise ValueError(f"data.{key}: {res} px is below the {need} px that {m.backbone}{why} needs")
        classes = d.num_classes()  # None: known only from the folder (checked when the data is read)
        if m.num_classes is not None and classes is not None and m.num_classes < classes:
            raise ValueError(f"model.num_classes: {m.num_classes} is fewer than the {classes} classes of "
                             f"{d.dataset!r} (leave it unset to use the dataset's)")
        from blocks.insert import size_problem

        problem = size_problem(m.backbone, m.num_classes or classes or 1000, m.attention, m.small_stem)
        if problem:  # a block size far out of range: refused before any memory is taken for it
            raise ValueError(f"model.attention: {problem}")
        return self


def _get_dotted(tree: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of ``tree``, or None where the path does not exist."""
    node: Any = tree
    for p in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(p)
    return node


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None or isinstance(nxt, str):  # e.g. model.attention given as a name
            nxt = {"kind": nxt} if isinstance(nxt, str) else {}
            node[p] = nxt
        if not isinstance(nxt, dict):
            raise ValueError(f"--set {key}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=0.05"`` -> ``("optim.lr", 0.05)``; values are YAML 1.2 scalars/lists
    (``1e-3`` is a number, ``yes`` a string), read within :mod:`pipeline.yamlio`'s limits."""
    from .errors import ConfigError
    from .yamlio import parse_scalar

    if "=" not in text:
        raise ValueError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"--set expects key=value, got {text!r}")
    if not all(p.strip() for p in key.split(".")):  # ".lr", "optim..lr", "optim."
        raise ValueError(f"--set {key}: a dotted key with an empty part (e.g. optim.lr)")
    try:
        return key, parse_scalar(raw, f"--set {key}")
    except ConfigError as e:
        raise ValueError(str(e)) from None


def load_trial_config(path: Optional[str | Path] = None, overrides: Sequence[str] = (),
                      base: Optional[dict[str, Any]] = None) -> TrialConfig:
    """Read a YAML/JSON trial config (:func:`pipeline.yamlio.load_file`), apply ``key=value``
    overrides, validate.

    Raises :class:`pipeline.errors.ConfigError`: one line per problem, naming ``file:line`` and
    the key (an override's problem names the ``--set`` key).
    """
    import copy

    from .errors import ConfigError
    from .yamlio import Lines, load_file

    tree: dict[str, Any] = copy.deepcopy(base) if base else {}
    lines: Optional[Lines] = None
    if path is not None:
        loaded, lines = load_file(path, what="config file")
        if loaded is None:
            raise ConfigError(f"{lines.source}:1: the config file is empty (a trial config is a mapping of "
                              "sections; leave --config out to train the defaults)")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{lines.source}: top level must be a mapping, got {type(loaded).__name__}")
        tree.update(loaded)
    overridden = set()
    try:
        for text in overrides:
            k, v = parse_override(text)
            if k in overridden:  # as a duplicate key in a YAML file: not "the last one wins"
                raise ValueError(f"--set {k} given twice")
            lost = sorted(o for o in overridden if o.startswith(k + "."))
            if lost:  # "a.b=1 a=x": the later one would silently drop the earlier
                raise ValueError(f"--set {k} replaces the whole of {k}, dropping --set {lost[0]} given before it; "
                                 f"give --set {k} first")
            before = _get_dotted(tree, k)
            dropped = sorted(set(before) - set(v)) if isinstance(before, dict) and isinstance(v, dict) else []
            if dropped and k != "model.attention":  # an attention spec is one value: replaced whole
                raise ValueError(f"--set {k} replaces the whole of {k}, dropping {k}.{dropped[0]} of the config "
                                 f"file; set the keys one by one (--set {k}.KEY=VALUE)")
            _set_dotted(tree, k, v)
            overridden.add(k)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        return TrialConfig.model_validate(tree)
    except ValidationError as e:
        problems = []
        for key, msg in validation_problems(e):
            set_by = next((k for k in overridden if key == k or key.startswith(k + ".")), None)
            if set_by is not None and set_by == key:  # "--set data.train_res: 9 px is below ..."
                problems.append(f"--set {key}: {msg}")
                continue
            if set_by is not None or lines is None:
                where = f"--set {set_by}: " if set_by else ""
            else:
                where = f"{lines(*key.split('.'))}: "
            problems.append(f"{where}{key or 'config'}: {msg}")
        raise ConfigError.many(problems) from None


def validate_trial(tree: dict[str, Any], source: Optional[str] = None) -> TrialConfig:
    """Validate a trial tree; :class:`ConfigError` with the first problem (and how many more)."""
    from .errors import ConfigError

    try:
        return TrialConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


_KEY_PREFIX = re.compile(r"^([A-Za-z_][\w]*(?:\.[\w]+)+): ")
_FIELD_PREFIX = re.compile(r"^([A-Za-z_]\w*): ")


def validation_problems(e: Any) -> list[tuple[str, str]]:
    """Every pydantic error as ``(dotted key, message)``.

    Unknown keys read "unknown key"; a model-level error whose message starts with a dotted key
    (``data.train_res: ...``) is given that key, and a block-parameter error inside
    ``model.attention`` gets ``model.attention.<param>``.
    """
    out = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        m = _KEY_PREFIX.match(msg)
        if m is None and loc and err["type"] == "value_error":  # ours, about a field of this section
            m = _FIELD_PREFIX.match(msg)
        if m:
            key = m.group(1)
            loc = key if not loc or key.startswith(loc + ".") else f"{loc}.{key}"
            msg = msg[m.end():]
        out.append((loc, msg))
    return out


def format_validation_error(e: Any, source: Optional[str] = None) -> str:
    """The first pydantic error as one line: ``file: key.path: message (and N more)``."""
    problems = validation_problems(e)
    loc, msg = problems[0]
    where = f"{source}: " if source else ""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}{loc or 'config'}: {msg}{more}"


# ---------------------------------------------------------------------------------------------
# What a trial is (its identity), and what applies to it (its MLflow params).
# ---------------------------------------------------------------------------------------------

# Keys that say where and how fast a trial runs, not what it computes: changing them keeps a
# trial's id (moving a data set, more loader workers, another work folder; --resume still
# finds every trial).  Kept in the identity on purpose: data.backend (FFCV and torch decode
# differently), device and precision (``precision: auto`` is bf16 on CUDA, fp32 on CPU),
# channels_last and compile (kernels, hence rounding, differ), data.ffcv_os_cache (sample order).
EXECUTION_ONLY = (
    "name",  # a label (the grid writes the trial id here)
    "threads", "work_dir", "checkpoint", "tracking", "fault",
    "data.root", "data.workers", "data.beton_dir",  # where the data is, how many readers
    "data.val_batch_size",  # evaluation runs in eval mode: the batch size does not change results
)


def value_key(value: Any) -> str:
    """A canonical text of a spec value, equal for values that are equal as numbers (``1`` and
    ``1.0``; ``true`` stays apart from ``1``): to find a value listed twice."""
    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v

    return json.dumps(norm(value), sort_keys=True, default=str)


def repeated(values: list[Any]) -> Optional[tuple[int, int]]:
    """``(first, later)`` indices of the first value of ``values`` listed twice, else None."""
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        k = value_key(v)
        if k in seen:
            return seen[k], i
        seen[k] = i
    return None


def execution_only(dotted: str) -> Optional[str]:
    """The :data:`EXECUTION_ONLY` key that ``dotted`` is or lies under (``tracking.uri`` ->
    ``tracking``), else None.  Such a key cannot be a grid axis or a search dimension: trials that
    differ only there are the same trial (one id), and most of them are set per run, not per trial."""
    return next((k for k in EXECUTION_ONLY if dotted == k or dotted.startswith(k + ".")), None)


def _drop(tree: dict[str, Any], dotted: str) -> None:
    *path, last = dotted.split(".")
    node = tree
    for p in path:
        node = node.get(p)
        if not isinstance(node, dict):
            return
    node.pop(last, None)


def identity_tree(dump: dict[str, Any]) -> dict[str, Any]:
    """A trial config (``model_dump(mode="json")``) without :data:`EXECUTION_ONLY` keys.

    ``data.jpeg_dir`` becomes whether a JPEG copy is read (its location does not matter, its
    use does: the copy is resized and re-encoded).  Returns a new tree; ``dump`` is unchanged.
    """
    import copy

    out = copy.deepcopy(dump)
    for key in EXECUTION_ONLY:
        _drop(out, key)
    if isinstance(out.get("data"), dict) and "jpeg_dir" in out["data"]:
        out["data"]["jpeg_dir"] = out["data"]["jpeg_dir"] is not None
    return out


_FFCV_ONLY = ("beton_dir", "max_res", "write_mode", "jpeg_quality", "compress_prob", "ffcv_os_cache")
_STYLE_KEYS = {"imagenet": ("rrc_scale", "rrc_ratio", "val_crop_ratio"), "cifar": ("crop_padding",),
               "digits": ("crop_padding",), "none": ()}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optim": {"lr": 0.1}} -> {"optim.lr": "0.1"}``; lists are joined with commas."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = ",".join(str(x) for x in v)
        else:
            out[key] = "None" if v is None else str(v)
    return out


def applicable_params(cfg: TrialConfig) -> dict[str, str]:
    """The trial's MLflow params: dotted keys (``optim.lr``) -> text, only the keys that apply.

    Left out: labels and execution settings (name, threads, work_dir, checkpoint, tracking,
    fault); ``data.synthetic.*`` unless the dataset is synthetic; the FFCV write/read keys with
    the torch backend and ``data.jpeg_dir`` with FFCV; augmentation keys of another style
    (random-resized-crop keys for a CIFAR-style trial, crop padding for an ImageNet-style one);
    ``optim.milestones``/``gamma`` unless the schedule is ``step``; ``optim.warmup_start``
    without warm-up.  The attention is its resolved spec under ``attn.*`` (``attn.kind``,
    ``attn.stages``, ``attn.slot`` and that block's parameters only, defaults filled in;
    ``attn.kind: none`` for a baseline).
    """
    tree = cfg.model_dump(mode="json", exclude={"name", "threads", "work_dir", "checkpoint", "tracking", "fault"})
    tree["model"].pop("attention", None)
    d, o = tree["data"], tree["optim"]
    if cfg.data.dataset != "synthetic":
        d.pop("synthetic")
    if cfg.data.backend == "torch":
        for k in _FFCV_ONLY:
            d.pop(k)
    elif cfg.data.backend == "ffcv":
        d.pop("jpeg_dir")
    style = catalog.info(cfg.data.dataset).style if cfg.data.augment == "auto" else cfg.data.augment
    for st, keys in _STYLE_KEYS.items():
        for k in keys:
            if st != style and k not in _STYLE_KEYS.get(style, ()):
                d.pop(k, None)
    if cfg.optim.schedule != "step":
        o.pop("milestones")
        o.pop("gamma")
    if cfg.optim.warmup_epochs == 0:
        o.pop("warmup_start")
    out = flatten(tree)
    spec = cfg.model.resolved_attention()
    if spec is None:
        attn: dict[str, Any] = {"kind": "none"}
    else:
        from blocks import get as get_block

        attn = {**get_block(spec.kind).param_defaults(), **spec.as_dict()}  # the block's defaults filled in
    out.update(flatten({"attn": attn}))
    return out
