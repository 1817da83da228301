"""The claims registry: schema (one-line errors with file:line), structural checks by building
the models, and an idempotent sync into a real MLflow server."""
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from experiments.claims import (check_structural, claim_record, load_claims, load_file, setting_params,
                                sync)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def registry():
    claims, errors = load_claims(strict=False)
    assert errors == []
    return {lc.claim.id: lc for lc in claims}


# ---------------------------------------------------------------------------------------------
# the registry itself
# ---------------------------------------------------------------------------------------------

def test_registry_loads_and_covers_papers(registry):
    assert len(registry) >= 130
    sources = {lc.claim.source.arxiv for lc in registry.values()} | {lc.claim.source.repo for lc in registry.values()}
    for ref in ("1709.01507", "1807.06521", "2006.07872", "1611.08860", "1808.01106", "2010.03019", "2106.04996",
                "1804.02391", "1711.07971", "1809.02983", "1512.03385", "AmigoCDT/Salient-Net", "hujie-frank/SENet",
                "Jongchan/attention-module"):
        assert ref in sources, ref
    kinds = {lc.claim.kind for lc in registry.values()}
    assert kinds == {"value", "comparison", "direction", "structural"}


def test_status_as_papers_md_says(registry):
    # recalled figures must say so
    for cid in ("cbam.imagenet.cbam-resnet50.top1-err", "cbam.imagenet.resnet50.gmacs", "gsa.imagenet.gsa-resnet50.top1",
                "gsa.imagenet.gsa-resnet50.params", "gsa.imagenet.gsa-resnet101.gmacs"):
        assert registry[cid].claim.status == "unverified", cid
    for cid in ("cbam.repo.cbam-resnet50.top1", "se.imagenet.se-resnet50.top1-err", "ssanet.imagenet.ssa-resnet50.top1",
                "gsa.imagenet.beats-resnet50", "spanet.cifar100.beats-nonlocal-stage1", "count.resnet50.params"):
        assert registry[cid].claim.status == "verified", cid


def test_claim_params_use_trial_keys(registry):
    from pipeline.config import TrialConfig
    from pipeline.train import flat_params

    c = registry["ssanet.imagenet.ssa-vs-resnet50"].claim
    assert c.kind == "comparison" and c.delta == 1.37 and c.op == ">="
    rec = claim_record(c)
    trial = flat_params(TrialConfig.model_validate({"model": {"backbone": "resnet50", "attention": "ssa"},
                                                    "data": {"dataset": "imagenet", "train_res": 224, "val_res": 224}}))
    for k, v in rec["params"].items():
        if not k.startswith("versus."):
            assert trial.get(k) == v, (k, v, trial.get(k))
    assert rec["params"]["versus.attn.kind"] == "none"
    assert rec["metrics"] == {"delta_top1": 1.37}
    assert rec["tags"]["source"] == "paper"
    # errors become accuracies under the trials' metric names
    r = claim_record(registry["se.imagenet.se-resnet50.top1-err"].claim)
    assert r["metrics"] == {"val_top1": pytest.approx(76.71), "best_top1": pytest.approx(76.71)}
    assert setting_params(registry["se.imagenet.se-resnet50.top1-err"].claim.setting)["optim.milestones"] == "30,60,90"


# ---------------------------------------------------------------------------------------------
# schema errors: one line each, with file:line
# ---------------------------------------------------------------------------------------------

GOOD = """\
claims:
  - id: a.b
    kind: value
    title: "SSA reaches 76.61 top-1"
    status: verified
    source: {paper: "SSANet write-up", repo: AmigoCDT/Salient-Net, where: README}
    metric: top1
    value: 76.61
    setting:
      model: {backbone: resnet50, attention: ssa}
      data: {dataset: imagenet, train_res: 224}
"""

STRUCT = textwrap.dedent("""\
    claims:
      - id: f
        kind: structural
        title: "a block formula"
        status: verified
        source: {paper: "x paper", arxiv: "1711.07971", where: "T1"}
        metric: block_params
        formula: "2*C**2"
        channels: [64]
        setting: {model: {attention: nonlocal}}
    """)

BAD = [
    # (what, replace this, with that, line, text in the message)
    ("string value", "value: 76.61", 'value: "76.61"', 8, "claims[0].value: Input should be a valid number"),
    ("unknown key", "metric: top1", "metric: top1\n    colour: red", 8, "claims[0].colour: unknown key"),
    ("unknown metric", "metric: top1", "metric: accuracy", 7, "claims[0].metric: Input should be"),
    ("bad status", "status: verified", "status: probably", 5, "claims[0].status: Input should be 'verified' or 'unverified'"),
    ("unknown kind", "kind: value", "kind: rumour", 3, "claims[0].kind: unknown kind 'rumour'"),
    ("missing kind", "    kind: value\n", "", 2, "missing kind"),
    ("missing value", "    value: 76.61\n", "", 2, "claims[0].value: required key missing"),
    ("bad arxiv id", "repo: AmigoCDT/Salient-Net", "arxiv: '17.1'", 6, "claims[0].source.arxiv"),
    ("untraceable source", "repo: AmigoCDT/Salient-Net, ", "", 6, "a source needs an arxiv id or a repo"),
    ("unknown block", "attention: ssa", "attention: sse", 10, "unknown block 'sse'"),
    ("stage out of range", "attention: ssa", "attention: {kind: spa, stages: [7]}", 10, "stage 7 does not exist"),
    ("bad block param", "attention: ssa", "attention: {kind: se, ratio: 3}", 10, "claims[0].setting.model"),
    ("setting unknown key", "train_res: 224", "train_res: 224, crop: 0.875", 11, "claims[0].setting.data.crop: unknown key"),
    ("bool for int", "train_res: 224", "train_res: true", 11, "claims[0].setting.data.train_res"),
    ("bad id", "id: a.b", "id: A B", 2, "claims[0].id: String should match pattern"),
    ("not a list", GOOD, "claims: {a: 1}\n", 1, "claims: Input should be a valid list"),
    ("top-level key", GOOD, GOOD + "extra: 1\n", 12, "extra: unknown key"),
    ("yaml syntax", "value: 76.61", "value: [76.61", 9, "not valid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence at line 8)"),
    ("claim not a mapping", GOOD, "claims:\n  - just a string\n", 2, "claims[0]: a claim is a mapping"),
    ("bad formula", GOOD, STRUCT.replace('"2*C**2"', '"__import__(\'os\')"'), 8, "only numbers, C"),
    ("structural without value", GOOD, textwrap.dedent("""\
        claims:
          - id: f
            kind: structural
            title: "a count"
            status: verified
            source: {paper: "x paper", arxiv: "1711.07971", where: "T1"}
            metric: params
            setting: {model: {backbone: resnet50}}
        """), 2, "needs value"),
    ("bad versus", "    setting:\n", "    versus: {model: {attention: bogus}}\n    setting:\n", 9, "claims[0].versus"),
    # numbers no paper publishes (they were accepted and synced to MLflow)
    ("nan value", "value: 76.61", "value: .nan", 8, "claims[0].value: nan is not a finite number"),
    ("inf value", "value: 76.61", "value: .inf", 8, "claims[0].value: inf is not a finite number"),
    ("1e400 value", "value: 76.61", "value: 1e400", 8, "claims[0].value: inf is not a finite number"),
    ("top1 over 100", "value: 76.61", "value: 150", 8, "claims[0].value: top1 is a percentage: a value of 150 is outside 0 … 100"),
    ("top1 negative", "value: 76.61", "value: -5", 8, "claims[0].value: top1 is a percentage"),
    ("versus changes nothing", "    setting:\n", "    versus: {model: {attention: ssa}}\n    setting:\n", 9,
     "claims[0].versus: changes nothing in the setting"),
    ("versus empty", "    setting:\n", "    versus: {}\n    setting:\n", 9, "claims[0].versus: changes nothing"),
    ("default from defaults", GOOD, "defaults:\n  status: maybe\n" + GOOD.replace("    status: verified\n", ""), 2,
     "claims[0].status"),
]


@pytest.mark.parametrize("what,old,new,line,text", BAD, ids=[b[0] for b in BAD])
def test_schema_error_is_one_line_with_file_and_line(tmp_path, what, old, new, line, text):
    assert old in GOOD or old == GOOD
    body = new if old == GOOD else GOOD.replace(old, new, 1)
    if what in ("bad versus", "versus changes nothing", "versus empty"):  # a comparison: versus, delta
        body = body.replace("kind: value", "kind: comparison").replace("value: 76.61", "delta: 1.0")
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    claims, errors = load_file(f)
    assert len(errors) == 1, errors
    err = errors[0]
    assert "\n" not in err
    assert err.startswith(f"{f}:{line}: "), (err, line)
    assert text in err, err


def test_good_entry_loads(tmp_path):
    f = tmp_path / "good.yaml"
    f.write_text(GOOD)
    claims, errors = load_file(f)
    assert errors == [] and [lc.claim.id for lc in claims] == ["a.b"] and claims[0].line == 2


def test_duplicate_ids_and_cli_exit_2(tmp_path):
    (tmp_path / "one.yaml").write_text(GOOD)
    (tmp_path / "two.yaml").write_text(GOOD)
    _, errors = load_claims([tmp_path / "one.yaml", tmp_path / "two.yaml"], strict=False)
    assert len(errors) == 1 and re.match(rf"{re.escape(str(tmp_path / 'two.yaml'))}:2: claim id 'a.b' already used at ",
                                         errors[0]), errors
    r = subprocess.run([sys.executable, "-m", "experiments.claims", "validate", str(tmp_path / "one.yaml"),
                        str(tmp_path / "two.yaml")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "already used" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "experiments.claims", "validate"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "claims OK" in r.stdout, r.stderr


# ---------------------------------------------------------------------------------------------
# structural claims: build the models, count
# ---------------------------------------------------------------------------------------------

def test_structural_claims_of_the_count_table_hold(registry):
    table = [lc for lc in registry.values() if lc.file.name == "counts.yaml"]
    assert len(table) == 29
    results = check_structural(table)
    assert len(results) == 29
    bad = [f"{r.id}: {r.text}" for r in results if not r.holds]
    assert bad == []


@pytest.mark.slow
def test_every_structural_claim_is_reported_exactly(registry):
    """Figures from the papers' own tables: those that do not match our builds are reported with
    the exact difference (not hidden, not loosened)."""
    results = {r.id: r for r in check_structural(registry.values())}
    off = {k: r for k, r in results.items() if not r.holds}
    assert set(off) == {"gsa.imagenet.gsa-resnet50.gmacs", "gsa.imagenet.gsa-resnet101.params",
                        "gsa.imagenet.gsa-resnet101.gmacs", "se.imagenet.se-resnet50.gmacs",
                        "ssanet.imagenet.se-resnet50.gmacs", "ssanet.imagenet.ssa-resnet50.gmacs"}, \
        {k: r.text for k, r in off.items()}
    assert off["se.imagenet.se-resnet50.gmacs"].text.startswith("off by -0.0095 GMACs: measured 3.8605")
    assert off["gsa.imagenet.gsa-resnet101.params"].text.startswith("off by +393,976 params")
    assert results["gsa.fewer-params"].holds and results["gsa.fewer-gmacs"].holds
    assert results["count.ssa-resnet50.params"].measured == 32


# ---------------------------------------------------------------------------------------------
# sync into a real MLflow server
# ---------------------------------------------------------------------------------------------

def _claims_dir(tmp_path, *, se_value=76.75, ssa_backbone="resnet50", with_third=True):
    text = textwrap.dedent(f"""\
        defaults:
          status: verified
          source: {{paper: "SSANet write-up", repo: AmigoCDT/Salient-Net, where: README}}
          setting: {{model: {{backbone: resnet50}}, data: {{dataset: imagenet, train_res: 224}}}}
        claims:
          - {{id: t.se, kind: value, title: "SE-ResNet-50 top-1", metric: top1, value: {se_value},
             setting: {{model: {{attention: se}}}}}}
          - {{id: t.ssa, kind: comparison, title: "SSA minus ResNet", metric: top1, delta: 1.37, op: ">=",
             setting: {{model: {{backbone: {ssa_backbone}, attention: ssa}}}}, versus: {{model: {{attention: none}}}}}}
        """)
    if with_third:
        text += ('  - {id: t.dir, kind: direction, title: "SPA beats non-local", metric: top1,\n'
                 '     setting: {model: {backbone: cifar_resnet56, attention: {kind: spa, stages: [1]}}, data: {dataset: cifar100}},\n'
                 '     versus: {model: {attention: {kind: nonlocal, stages: [1]}}}}\n')
    d = tmp_path / f"claims-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    (d / "c.yaml").write_text(text)
    claims, errors = load_claims([d / "c.yaml"])
    return claims


def _runs(uri, experiment):
    from pipeline.tracking import find_runs

    return {r.info.run_id: r for r in find_runs(uri, experiment, "")}


@pytest.mark.cluster
def test_sync_is_idempotent_and_tracks_edits(tmp_path, mlflow_server):
    exp = f"claims-test-{uuid.uuid4().hex[:8]}"
    first = sync(mlflow_server, _claims_dir(tmp_path), exp)
    assert sorted(first["created"]) == ["t.dir", "t.se", "t.ssa"]
    before = _runs(mlflow_server, exp)
    assert len(before) == 3

    again = sync(mlflow_server, _claims_dir(tmp_path), exp)
    assert again["created"] == {} and again["updated"] == {} and again["replaced"] == {} and again["removed"] == {}
    assert again["unchanged"] == first["created"]
    after = _runs(mlflow_server, exp)
    assert set(after) == set(before)  # same run ids, no new runs
    for rid, r in after.items():
        assert r.data.params == before[rid].data.params
        assert r.data.metrics == before[rid].data.metrics
        assert r.data.tags == before[rid].data.tags
        assert r.info.status == "FINISHED" and r.data.tags["source"] == "paper"
    se = after[first["created"]["t.se"]]
    assert se.data.params["model.backbone"] == "resnet50" and se.data.params["attn.kind"] == "se"
    assert se.data.metrics["val_top1"] == 76.75 and se.data.metrics["best_top1"] == 76.75
    assert se.info.run_name == "paper: t.se"

    # an edited value: the same run, the new value
    edited = sync(mlflow_server, _claims_dir(tmp_path, se_value=76.80), exp)
    assert edited["updated"] == {"t.se": first["created"]["t.se"]} and len(edited["unchanged"]) == 2
    r = _runs(mlflow_server, exp)[first["created"]["t.se"]]
    assert r.data.metrics["val_top1"] == 76.80 and r.info.status == "FINISHED"

    # an edited setting (params are immutable in MLflow): the run is replaced, the old one deleted
    replaced = sync(mlflow_server, _claims_dir(tmp_path, se_value=76.80, ssa_backbone="resnet101"), exp)
    assert list(replaced["replaced"]) == ["t.ssa"] and replaced["replaced"]["t.ssa"] != first["created"]["t.ssa"]
    now = _runs(mlflow_server, exp)
    assert first["created"]["t.ssa"] not in now and len(now) == 3
    assert now[replaced["replaced"]["t.ssa"]].data.params["model.backbone"] == "resnet101"

    # a removed claim: its run is kept, marked and KILLED — not silently left
    removed = sync(mlflow_server, _claims_dir(tmp_path, se_value=76.80, ssa_backbone="resnet101", with_third=False), exp)
    assert list(removed["removed"]) == ["t.dir"]
    r = _runs(mlflow_server, exp)[first["created"]["t.dir"]]
    assert r.data.tags["attnlab.claim.state"] == "removed" and r.info.status == "KILLED"
    quiet = sync(mlflow_server, _claims_dir(tmp_path, se_value=76.80, ssa_backbone="resnet101", with_third=False), exp)
    assert quiet["removed"] == {} and len(quiet["unchanged"]) == 2
    # and it comes back to life when the claim returns
    back = sync(mlflow_server, _claims_dir(tmp_path, se_value=76.80, ssa_backbone="resnet101"), exp)
    assert back["updated"] == {"t.dir": first["created"]["t.dir"]}
    assert _runs(mlflow_server, exp)[first["created"]["t.dir"]].info.status == "FINISHED"


@pytest.mark.cluster
def test_sync_cli_unreachable_server_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "experiments.claims", "sync", "--tracking-uri", "http://127.0.0.1:9"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: MLflow server http://127.0.0.1:9 is not reachable")
    assert r.stderr.count("\n") == 1


def test_ui_url_for_a_local_store(tmp_path):
    from pipeline.tracking import ui_url

    msg = ui_url(f"sqlite:///{tmp_path}/m.db", "claims")
    assert msg.startswith("no MLflow UI server behind sqlite:///") and "mlflow server --backend-store-uri" in msg
    assert "workflowType=machine_learning" in msg and "\n" not in msg


@pytest.mark.cluster
def test_partial_sync_removes_only_its_own_files_claims(tmp_path, mlflow_server):
    exp = f"claims-test-{uuid.uuid4().hex[:8]}"
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(GOOD)
    b.write_text(GOOD.replace("id: a.b", "id: b.c"))
    claims, _ = load_claims([a, b])
    assert sorted(sync(mlflow_server, claims, exp)["created"]) == ["a.b", "b.c"]
    b.write_text(GOOD.replace("id: a.b", "id: b.d"))  # b.c renamed to b.d; a.yaml not part of this sync
    claims, _ = load_claims([b])
    out = sync(mlflow_server, claims, exp, files=[b])
    assert list(out["created"]) == ["b.d"] and list(out["removed"]) == ["b.c"]
    assert "a.b" not in out["removed"]


@pytest.mark.parametrize("case", ["fifo", "device", "empty", "folder", "alias-bomb"])
def test_claims_file_that_is_not_a_regular_file_is_one_line(case, tmp_path):
    """A FIFO (it blocked until killed), a device (/dev/zero filled the memory), an empty path (it
    read as the current folder) or an alias bomb: one line, exit 2, at once."""
    import os
    import subprocess
    import sys
    import time

    path = {"fifo": tmp_path / "fifo", "device": "/dev/zero", "empty": "", "folder": tmp_path,
            "alias-bomb": tmp_path / "bomb.yaml"}[case]
    if case == "fifo":
        os.mkfifo(path)
    if case == "alias-bomb":
        path.write_text("x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
                        + "".join(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "experiments.claims", "validate", str(path)], capture_output=True,
                       text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert {"fifo": "is not a file", "device": "is not a file", "empty": "is empty", "folder": "is not a file",
            "alias-bomb": "aliases expanded"}[case] in r.stderr, r.stderr
    assert time.perf_counter() - t < 20


STRUCT_BAD = [
    # (what, replace this, with that, text in the message)
    ("power tower", '"2*C**2"', '"C**C**C"', "overflows at C=64"),  # an integer power tower ran for ever
    ("huge power", '"2*C**2"', '"2**C**2"', "overflows at C=64"),
    ("divides by zero", '"2*C**2"', '"C/0"', "divides by zero at C=64"),
    ("zero at one channel count", 'formula: "2*C**2"\n    channels: [64]', 'formula: "1/(C-128)"\n    channels: [64, 128]',
     "divides by zero at C=128"),
    ("complex", '"2*C**2"', '"(-C)**0.5"', "is not a finite real number at C=64"),
    ("infinite", '"2*C**2"', '"1e400*C"', "is not a finite real number at C=64"),
    ("channels not positive", "channels: [64]", "channels: [0, -3]", "claims[0].channels[0]: Input should be greater than 0"),
    ("channels huge", "channels: [64]", "channels: [100000]", "less than or equal to 8192"),
    ("input huge", "channels: [64]", "channels: [64]\n    input: 100000", "at most 2048"),
    ("blank title", '"a block formula"', '"      "', "claims[0].title: is blank"),
    ("blank paper", '"x paper"', '"   "', "claims[0].source.paper: is blank"),
    ("blank backbone", "{model: {attention: nonlocal}}", '{model: {backbone: "", attention: nonlocal}}',
     "claims[0].setting.model.backbone: is blank"),
    ("blank note", "metric: block_params", 'metric: block_params\n    note: "  "', "claims[0].note: is blank"),
    ("negative milestones", "{model: {attention: nonlocal}}", "{model: {attention: nonlocal}, optim: {milestones: [-5, 0]}}",
     "Input should be greater than 0"),
    ("milestones not increasing", "{model: {attention: nonlocal}}",
     "{model: {attention: nonlocal}, optim: {milestones: [30, 20]}}", "milestones must be increasing"),
]


@pytest.mark.parametrize("what,old,new,text", STRUCT_BAD, ids=[b[0] for b in STRUCT_BAD])
def test_bad_structural_claim_is_one_line(tmp_path, what, old, new, text):
    assert old in STRUCT
    f = tmp_path / "bad.yaml"
    f.write_text(STRUCT.replace(old, new, 1))
    claims, errors = load_file(f)
    assert claims == [] and len(errors) == 1, errors
    assert "\n" not in errors[0] and errors[0].startswith(f"{f}:"), errors[0]
    assert text in errors[0], errors[0]


def test_the_structural_template_is_good(tmp_path):
    f = tmp_path / "good.yaml"
    f.write_text(STRUCT)
    claims, errors = load_file(f)
    assert errors == [] and len(claims) == 1
