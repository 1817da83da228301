"""DataConfig (strict keys, types, ranges, absolute paths) and the shared CLI error helper."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config import DataConfig, StrictModel
from pipeline.errors import ConfigError, cli_exit


def _msg(excinfo) -> str:
    return str(excinfo.value)


def test_defaults_are_the_embedded_dataset():
    c = DataConfig()
    assert c.dataset == "digits" and c.backend == "auto" and c.root is None
    assert c.val_crop_ratio == pytest.approx(224 / 256)
    assert c.channels_last is True and c.normalize is True


@pytest.mark.parametrize("key", ["batchsize", "resolution", "data_root"])
def test_unknown_key_is_an_error_naming_it(key):
    with pytest.raises(ValidationError) as e:
        DataConfig(**{key: 1})
    assert key in _msg(e)


@pytest.mark.parametrize("field,value", [
    ("train_res", 0), ("train_res", -3), ("val_res", 0), ("batch_size", 0), ("max_res", 0),
    ("val_crop_ratio", 0.0), ("val_crop_ratio", 1.5), ("workers", -1), ("jpeg_quality", 101),
    ("compress_prob", 1.2), ("rrc_scale", (0.5, 0.2)), ("rrc_ratio", (0.0, 1.0)),
    ("std", (1.0, 0.0, 1.0)), ("backend", "dali"), ("augment", "mixup"),
    ("batch_size", "many"), ("channels_last", "maybe"),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValidationError) as e:
        DataConfig(**{field: value})
    assert field in _msg(e)


def test_assignment_is_validated():
    c = DataConfig()
    with pytest.raises(ValidationError) as e:
        c.train_res = 0
    assert "train_res" in _msg(e)


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(ValidationError) as e:
        DataConfig(dataset="mnist")
    msg = _msg(e)
    for n in ("cifar10", "cifar100", "digits", "imagefolder", "imagenet", "synthetic",
              "tiny-imagenet"):
        assert n in msg


def test_paths_are_absolute_at_config_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = DataConfig(dataset="imagefolder", root="data/x", beton_dir="~/b")
    assert c.root == tmp_path / "data" / "x"
    assert c.beton_dir == Path(os.path.expanduser("~/b"))
    for key in ("root", "beton_dir", "jpeg_dir"):  # "" read as unset before: refused, named
        with pytest.raises(ValidationError, match="the path is empty"):
            DataConfig(**{key: " "})


def test_mean_and_std_come_together():
    with pytest.raises(ValidationError):
        DataConfig(mean=(0.5, 0.5, 0.5))
    assert DataConfig(mean=(0.5,) * 3, std=(0.2,) * 3).std == (0.2, 0.2, 0.2)


def test_synthetic_section_is_strict():
    assert DataConfig(dataset="synthetic", synthetic={"num_classes": 3}).synthetic.num_classes == 3
    with pytest.raises(ValidationError) as e:
        DataConfig(synthetic={"classes": 3})
    assert "classes" in _msg(e)


def test_strict_model_is_the_base():
    assert issubclass(DataConfig, StrictModel)
    assert DataConfig.model_config["extra"] == "forbid"


def test_cli_exit_prints_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli_exit(ConfigError("data.root: /nope does not exist"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: data.root: /nope does not exist\n"


def test_cli_exit_flattens_validation_errors(capsys):
    try:
        DataConfig(train_res=0)
    except ValidationError as exc:
        with pytest.raises(SystemExit):
            cli_exit(exc)
    err = capsys.readouterr().err
    assert err.startswith("error: train_res:") and err.count("\n") == 1
    assert issubclass(ConfigError, ValueError)


# --- strict types, finite numbers, bounds (pipeline.config) ---------------------------------

@pytest.mark.parametrize("field,value", [
    ("batch_size", True), ("batch_size", "128"), ("batch_size", 128.0), ("workers", False),
    ("train_res", "224"), ("val_crop_ratio", "0.875"), ("rrc_ratio", (1.0, float("inf"))),
    ("mean", (float("inf"), 0.5, 0.5)), ("compress_prob", True), ("shuffle", "yes"), ("shuffle", 1),
    ("mean", (0.5, float("nan"), 0.5)), ("std", [1.0, float("inf"), 1.0]),
])
def test_types_are_strict_and_numbers_finite(field, value):
    with pytest.raises(ValidationError) as e:
        DataConfig(**{field: value, **({"mean": (0.5,) * 3} if field == "std" else {}),
                      **({"std": (0.2,) * 3} if field == "mean" else {})})
    assert field in _msg(e)


def test_pairs_take_lists_of_numbers_not_strings():
    assert DataConfig(rrc_scale=[0.2, 1]).rrc_scale == (0.2, 1.0)  # YAML has no tuples
    with pytest.raises(ValidationError, match="rrc_scale"):
        DataConfig(rrc_scale=["0.1", "1.0"])


@pytest.mark.parametrize("section,field,value", [
    ("data", "train_res", 100_000), ("data", "val_res", 100_000), ("data", "train_res", 1),
    ("data", "batch_size", 10_000_000), ("model", "num_classes", 100_000_000),
    ("optim", "lr", float("inf")), ("optim", "epochs", 10**9), ("seed", None, True), ("seed", None, 2**40),
    ("model", "attention", {"kind": "gaussian", "radius": float("inf")}),
    ("model", "attention", {"kind": "gaussian", "radius": "1.0e9"}),
    ("model", "attention", {"kind": "se", "reduction": True}),
    ("data", "synthetic", {"num_classes": 1_000_000}),
])
def test_trial_config_refuses_what_cannot_run(section, field, value):
    from pipeline.config import TrialConfig, validation_problems

    tree = {section: value} if field is None else {section: {field: value}}
    with pytest.raises(ValidationError) as e:
        TrialConfig.model_validate(tree)
    key = section if field is None else f"{section}.{field}"
    assert validation_problems(e.value)[0][0].startswith(key), validation_problems(e.value)


def test_resolution_must_fit_the_backbone_and_the_attention():
    from pipeline.config import TrialConfig, min_resolution

    assert min_resolution("resnet50") == 32 and min_resolution("resnet50", small_stem=True) == 8
    assert min_resolution("resnet50", attention_stages=(4,)) == 64
    assert min_resolution("cifar_resnet20", attention_stages=(3,)) == 8
    TrialConfig.model_validate({"model": {"backbone": "resnet50", "attention": {"kind": "nonlocal", "stages": [4]}},
                                "data": {"train_res": 64}})
    with pytest.raises(ValidationError, match="data.val_res: 32 px is below the 64 px that resnet50 with attention"):
        TrialConfig.model_validate({"model": {"backbone": "resnet50", "attention": {"kind": "nonlocal", "stages": [4]}},
                                    "data": {"train_res": 64, "val_res": 32}})


def test_validating_data_imports_neither_torch_nor_the_data_package():
    code = ("import sys, pipeline.config as c; c.DataConfig(dataset='cifar10', root='/x'); "
            "c.check_data_root(c.DataConfig(dataset='imagenet')); "
            "assert 'torch' not in sys.modules and 'pipeline.data' not in sys.modules, sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr


def test_catalog_and_registry_agree():
    from pipeline import catalog
    from pipeline.data import dataset_names, get_dataset

    assert dataset_names() == catalog.names()
    for name in catalog.names():
        entry, info = get_dataset(name), catalog.info(name)
        assert (entry.style, entry.needs_root) == (info.style, info.needs_root)


def test_check_data_root(tmp_path):
    from pipeline.config import check_data_root

    assert check_data_root(DataConfig(dataset="digits")) == []
    assert check_data_root(DataConfig(dataset="cifar10", root=tmp_path)) == []
    assert check_data_root(DataConfig(dataset="cifar10")) == ["data.root: dataset 'cifar10' needs a root folder"]
    assert check_data_root(DataConfig(dataset="cifar10", root=tmp_path / "no")) == [
        f"data.root: path does not exist: {tmp_path / 'no'}"]
    (tmp_path / "f").write_text("x")
    assert check_data_root(DataConfig(dataset="imagenet", root=tmp_path / "f")) == [
        f"data.root: not a folder: {tmp_path / 'f'}"]


def test_applicable_params_leave_out_what_does_not_apply():
    from pipeline.config import TrialConfig, applicable_params

    digits = applicable_params(TrialConfig.model_validate(
        {"model": {"attention": {"kind": "spa", "stages": [1]}}, "data": {"dataset": "digits", "backend": "torch"}}))
    assert not any(k.startswith(("data.synthetic.", "tracking.", "checkpoint.", "fault.")) for k in digits)
    assert not any(k.startswith("data.") and k.split(".")[1] in ("beton_dir", "max_res", "jpeg_quality") for k in digits)
    assert "data.rrc_scale" not in digits and "data.crop_padding" in digits  # digits style: pad-and-crop
    assert digits["attn.kind"] == "spa" and "attn.topk_ratio" in digits and "attn.radius" not in digits
    assert "optim.milestones" not in digits and "optim.warmup_start" not in digits
    synth = applicable_params(TrialConfig.model_validate(
        {"data": {"dataset": "synthetic", "backend": "ffcv", "augment": "imagenet"},
         "optim": {"schedule": "step", "milestones": [2]}}))
    assert synth["data.synthetic.num_classes"] == "10" and "data.jpeg_dir" not in synth
    assert "data.rrc_scale" in synth and "data.crop_padding" not in synth and synth["optim.milestones"] == "2"
    assert synth["attn.kind"] == "none" and not any(k.startswith("attn.") and k != "attn.kind" for k in synth)


def test_identity_tree_drops_execution_only_keys():
    from pipeline.config import EXECUTION_ONLY, TrialConfig, identity_tree

    dump = TrialConfig.model_validate({"data": {"dataset": "cifar10", "root": "/a", "jpeg_dir": "/j"}}).model_dump(mode="json")
    ident = identity_tree(dump)
    assert "root" not in ident["data"] and "workers" not in ident["data"] and ident["data"]["jpeg_dir"] is True
    assert not {"name", "threads", "work_dir", "checkpoint", "tracking", "fault"} & set(ident)
    assert dump["data"]["root"] == "/a" and "data.root" in EXECUTION_ONLY  # the input is unchanged


# --- reading config files and --set values --------------------------------------------------

def test_overrides_are_yaml_1_2():
    from pipeline.config import parse_override

    assert parse_override("optim.lr=1e-3") == ("optim.lr", 0.001)  # YAML 1.1 reads a string
    assert parse_override("data.shuffle=yes") == ("data.shuffle", "yes")  # a string, not a bool
    assert parse_override("model.attention.stages=[1, 2]") == ("model.attention.stages", [1, 2])


@pytest.mark.parametrize("text,needle", [
    ("optim:\n  lr: .inf\n", ":2: optim.lr: Input should be a finite number"),
    ("optim:\n  epochs: true\n", ":2: optim.epochs"),
    ("seed: 1\nseed: 2\n", ':2: not valid YAML: found duplicate key "seed"'),
    # an unclosed bracket: the error is where the parser noticed, and names where the bracket opened
    ("model:\n  attention: {kind: se\nseed: 1\n", ":3: not valid YAML: expected ',' or '}', but got ':' "
                                                   "(while parsing a flow mapping at line 2)"),
    ("data:\n  train_res: 100000\n", ":2: data.train_res"),
    ("model:\n  attention:\n    kind: gaussian\n    radius: wide\n", ":4: model.attention.radius"),
])
def test_trial_config_file_errors_name_the_line(tmp_path, text, needle):
    from pipeline.config import load_trial_config

    p = tmp_path / "t.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_trial_config(p)
    assert str(e.value) == str(e.value).strip() and "\n" not in str(e.value)
    assert str(e.value).startswith(f"{p}{needle}"), str(e.value)


def test_override_errors_name_the_override(tmp_path):
    from pipeline.config import load_trial_config

    with pytest.raises(ConfigError, match=r"^--set optim.lr: Input should be a valid number"):
        load_trial_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"^model.attention: attention .spa.: topk_ratio must be"):
        load_trial_config(None, ["model.attention.kind=spa", "model.attention.topk_ratio=3"])


def test_an_override_that_would_drop_an_earlier_one_is_an_error():
    """``a.b=1 a=x``: the second replaces the whole of ``a``; the first must not vanish silently."""
    from pipeline.config import load_trial_config

    with pytest.raises(ConfigError, match=r"^--set model.attention replaces the whole of model.attention, "
                                          r"dropping --set model.attention.topk_ratio given before it"):
        load_trial_config(None, ["model.attention.topk_ratio=0.5", "model.attention=spa"])
    cfg = load_trial_config(None, ["model.attention=spa", "model.attention.topk_ratio=0.5"])
    assert cfg.model.attention == {"kind": "spa", "topk_ratio": 0.5}


@pytest.mark.parametrize("dataset, classes", [("digits", 10), ("cifar100", 100), ("synthetic", 4)])
def test_fewer_model_classes_than_the_data_has_is_an_error(dataset, classes):
    """Fewer logits than classes would fail inside the first training step ("Target 9 is out of
    bounds"); as many or more is allowed (a wider head, e.g. a checkpoint's)."""
    from pipeline.config import TrialConfig, validation_problems

    data = {"dataset": dataset, "train_res": 32}
    if dataset == "synthetic":
        data["synthetic"] = {"num_classes": classes}
    with pytest.raises(ValidationError) as e:
        TrialConfig.model_validate({"model": {"num_classes": classes - 1}, "data": data})
    (key, msg), = validation_problems(e.value)
    assert key == "model.num_classes" and f"fewer than the {classes} classes of '{dataset}'" in msg
    for n in (classes, classes + 1):
        TrialConfig.model_validate({"model": {"num_classes": n}, "data": data})


def test_config_errors_carry_several_problems(capsys):
    e = ConfigError.many(["a.yaml:1: x: bad", "a.yaml:2: y: worse"])
    assert e.problems == ["a.yaml:1: x: bad", "a.yaml:2: y: worse"] and str(e).count("\n") == 1
    with pytest.raises(SystemExit):
        cli_exit(e)
    assert capsys.readouterr().err == "error: a.yaml:1: x: bad\nerror: a.yaml:2: y: worse\n"


def test_argument_parser_errors_are_one_line(capsys):
    from pipeline.errors import ArgumentParser

    p = ArgumentParser(prog="tool")
    p.add_argument("--n", type=int, required=True)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--n", "x"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "tool: error: argument --n: invalid int value: 'x' (see tool --help)\n"
