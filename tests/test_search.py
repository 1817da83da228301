"""Searches (experiments/search.py): bad specs are one-line errors before anything runs; a real
search on a real Ray head and a real MLflow server prunes with ASHA, resumes its Optuna study
without re-running a trial, and with two objectives yields a Pareto front."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
DIGITS = {"dataset": "digits", "batch_size": 64, "workers": 0, "backend": "torch", "train_res": 16, "val_res": 16}


def _spec(tmp_path, name="s", epochs=3, **over):
    spec = {"name": name,
            "base": {"model": {"backbone": "cifar_resnet20"}, "data": DIGITS,
                     "optim": {"epochs": epochs, "lr": 0.1, "warmup_epochs": 0}, "threads": 1},
            "trials": 6, "sampler": {"seed": 0, "n_startup_trials": 3},
            "space": {"attention": {"choices": ["none", {"kind": "spa", "stages": [1]},
                                                {"kind": "gaussian", "stages": [1]}]},
                      "topk_ratio": {"low": 0.0625, "high": 0.5, "log": True},
                      "radius": {"choices": [1, 2]},
                      "optim.lr": {"low": 1.0e-5, "high": 0.3, "log": True},
                      "optim.weight_decay": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
                      "optim.label_smoothing": {"low": 0.0, "high": 0.2}}}
    spec.update(over)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


# ---------------------------------------------------------------------------------------------
# bad specs: one line each, file:line, exit 2, nothing run
# ---------------------------------------------------------------------------------------------

BAD = [
    ("optim.lr:\n    low: 0.1\n    high: 0.1", "optim.lr", "empty range"),
    ("radius:\n    choices: [1, 2, 1]", "radius", "choices listed twice: 1"),
    ("radius:\n    choices: [1, 2, 1.0]", "radius", "choices listed twice: 1"),  # 1 == 1.0: was two choices
    ("optim.lr:\n    low: 0.3\n    high: 0.1", "optim.lr", "low (0.3) > high (0.1)"),
    ("optim.lr:\n    low: 0.0\n    high: 0.1\n    log: true", "optim.lr", "a log range needs low > 0"),
    ("heads:\n    choices: [1, 2]", "heads", "no attention of this search takes parameter 'heads'"),
    ("optim.lr:\n    low: 0.01\n    high: 0.1\n    lg: true", "lg", "space.optim.lr.lg: unknown key"),
    ("optim.lr:\n    choices: []", "optim.lr", "empty choices"),
    ("optim.label_smoothing:\n    low: 0.0\n    high: 1.5", "optim.label_smoothing", "1.5"),
    ("optim.lrr:\n    low: 0.01\n    high: 0.1", "optim.lrr", "space.optim.lrr: unknown trial-config key"),
    ("optim.lr:\n    low: 0.01\n    high: 0.1\n    step: 0.5", "optim.lr", "step 0.5 does not divide the range"),
    ("optim.epochs:\n    low: 1\n    high: 6\n    step: 2", "optim.epochs", "step 2 does not divide the range"),
]


def _write_bad(tmp_path, dim_text, extra=""):
    text = ("name: bad\nbase:\n  model: {backbone: cifar_resnet20}\n  data: {dataset: digits}\n"
            f"{extra}space:\n  attention:\n    choices: [spa]\n  {dim_text}\n")
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p, text


def _run_main(argv, capsys):
    from experiments import search

    with pytest.raises(SystemExit) as e:
        search.main(argv)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("dim_text,key,msg", BAD)
def test_bad_dimension_is_one_line_with_its_line(tmp_path, capsys, dim_text, key, msg):
    p, text = _write_bad(tmp_path, dim_text)
    code, err = _run_main(["--spec", str(p), "--check"], capsys)
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    want = next(i for i, t in enumerate(text.splitlines(), 1) if t.strip().startswith(key + ":"))
    assert f"{p}:{want}:" in line and msg in line, line


@pytest.mark.parametrize("extra,want_key,msg", [
    ("sampler: {seed: 0, n_startup: 3}\n", "sampler", "sampler.n_startup: unknown key"),
    ("sampler: {multivariate: false}\n", "sampler", "group: true needs multivariate: true"),
    ("trails: 5\n", "trails", "trails: unknown key"),
    ("objective: [top1, latency]\n", "objective", "unknown 'latency'"),
])
def test_bad_top_level_is_one_line(tmp_path, capsys, extra, want_key, msg):
    p, text = _write_bad(tmp_path, "optim.lr: {low: 0.01, high: 0.1}", extra)
    code, err = _run_main(["--spec", str(p), "--check"], capsys)
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    want = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith(want_key + ":"))
    assert f"{p}:{want}:" in line and msg in line, line


def test_non_finite_end_and_a_choice_with_a_foreign_parameter(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    text = ("name: bad\nbase:\n  model: {backbone: cifar_resnet20}\nspace:\n  attention:\n    choices:\n"
            "      - gaussian\n      - {kind: spa, radius: 2}\n  optim.lr: {low: .inf, high: 1.0}\n")
    p.write_text(text)
    code, err = _run_main(["--spec", str(p), "--check"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert any(f"{p}:9:" in x and "finite" in x for x in lines), err
    assert any(f"{p}:8:" in x and "radius" in x for x in lines), err


def test_every_problem_at_once_and_usage_errors(tmp_path, capsys):
    p, _ = _write_bad(tmp_path, "optim.lr: {low: 0.3, high: 0.1}\n  radius: {choices: [1]}")
    code, err = _run_main(["--spec", str(p), "--check"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 2, err
    code, err = _run_main(["--spec", str(p), "--objective", "gmacs,params"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--objective" in err


def test_space_is_conditional_on_the_block(tmp_path):
    """Define-by-run: topk_ratio only with spa, radius only with gaussian, the recipe always;
    every sampled point is a valid trial config."""
    import optuna  # the test drives the sampler directly

    from pipeline.search import SpaceFn, load_search, make_sampler

    search = load_search(_spec(tmp_path))
    study = optuna.create_study(direction="maximize", sampler=make_sampler(search.spec.sampler))
    fn = SpaceFn(search)
    seen = set()
    for _ in range(30):
        t = study.ask()
        fn(t)
        kind = t.params["attention"]
        seen.add(kind)
        assert ("spa.topk_ratio" in t.params) == (kind == "spa")
        assert ("gaussian.radius" in t.params) == (kind == "gaussian")
        assert {"optim.lr", "optim.weight_decay", "optim.label_smoothing"} <= set(t.params)
        cfg = search.config(t.params)
        assert (cfg.model.attention or {}).get("kind", "none") == kind
        study.tell(t, float(len(seen)))
        if len(seen) == 3:
            break
    assert seen == {"none", "spa", "gaussian"}


# ---------------------------------------------------------------------------------------------
# real searches: a real Ray head, a real MLflow server
# ---------------------------------------------------------------------------------------------

def _env(ray_head, uri):
    env = dict(os.environ, **ray_head["env"])
    env.update({"RAY_ADDRESS": ray_head["address"], "MLFLOW_TRACKING_URI": uri})
    return env


def _search(spec, storage, env, *extra, timeout=1200):
    defaults = [a for flag, value in (("--cpus-per-trial", "1"), ("--max-concurrent", "2")) if flag not in extra
                for a in (flag, value)]  # a flag given twice is an error: extra's value instead of the default
    return subprocess.run([PY, str(ROOT / "experiments" / "search.py"), "--spec", str(spec), "--storage", str(storage),
                           *defaults, *extra], env=env, capture_output=True, text=True, timeout=timeout)


def _runs(uri, experiment):
    from pipeline.tracking import find_runs

    runs = find_runs(uri, experiment, "")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, kids


@pytest.mark.cluster
@pytest.mark.slow
def test_search_prunes_resumes_and_tracks(tmp_path, ray_head, mlflow_server):
    from pipeline.search import study_rows
    from pipeline.tracking import list_artifacts

    env = _env(ray_head, mlflow_server)
    spec = _spec(tmp_path, "srch")
    storage = tmp_path / "st"
    r = _search(spec, storage, env, "--grace-period", "1")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    url = f"sqlite:///{storage / 'srch' / 'study.db'}"
    first = study_rows("srch", url)
    assert len(first) == 6
    assert all(t["state"] in ("COMPLETE", "PRUNED") for t in first), first
    pruned = [t for t in first if t["state"] == "PRUNED"]
    assert pruned and all(t["status"] == "stopped_early" for t in pruned), first
    for t in first:  # conditional parameters
        kind = t["params"]["attention"]
        assert ("spa.topk_ratio" in t["params"]) == (kind == "spa")
        assert ("gaussian.radius" in t["params"]) == (kind == "gaussian")

    (parent,), kids = _runs(mlflow_server, "srch")
    assert parent.data.tags["attnlab.kind"] == "search" and parent.data.tags["attnlab.search"] == "srch"
    assert parent.info.status == "FINISHED"
    assert len(kids) == 6 and {k.data.tags["mlflow.parentRunId"] for k in kids} == {parent.info.run_id}
    assert all(k.info.status in ("FINISHED", "FAILED") for k in kids)
    stopped = [k for k in kids if k.data.tags.get("attnlab.status") == "stopped_early"]
    assert len(stopped) == len(pruned) and all(k.info.status == "FINISHED" for k in stopped)
    assert {"best_config.json", "spec.yaml", "trials.json"} <= set(list_artifacts(mlflow_server, parent.info.run_id))
    assert all(t["run_id"] for t in first)

    # the same name again without --resume: refused, one line, nothing run
    r = _search(spec, storage, env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "--resume" in line

    # --resume to 8 trials: two new trials in the same study, none of the six re-run
    r = _search(spec, storage, env, "--resume", "--trials", "8", "--grace-period", "1")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    second = study_rows("srch", url)
    assert len(second) == 8
    assert [(t["number"], t["params"], t["state"], t["values"]) for t in second[:6]] == \
           [(t["number"], t["params"], t["state"], t["values"]) for t in first]
    (parent2,), kids = _runs(mlflow_server, "srch")
    assert parent2.info.run_id == parent.info.run_id
    assert len(kids) == 8 and all(k.info.status in ("FINISHED", "FAILED") for k in kids)
    trials = sorted(int(k.data.tags["attnlab.optuna_trial"]) for k in kids)
    assert trials == list(range(8))
    sessions = sorted(p.name for p in (storage / "srch").iterdir() if p.name.startswith("session-"))
    assert len(sessions) == 2
    ran_second = sorted(p.name for p in (storage / "srch" / sessions[1]).iterdir() if p.name.startswith("t0"))
    assert ran_second == ["t0006", "t0007"]


@pytest.mark.cluster
@pytest.mark.slow
def test_two_objectives_give_a_pareto_front(tmp_path, ray_head, mlflow_server):
    from pipeline.search import completed, study_rows
    from pipeline.tracking import list_artifacts

    env = _env(ray_head, mlflow_server)
    spec = _spec(tmp_path, "pareto", epochs=1, trials=4,
                 sampler={"seed": 1, "n_startup_trials": 4})
    storage = tmp_path / "st"
    r = _search(spec, storage, env, "--objective", "top1,gmacs", "--scheduler", "none")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "Pareto front" in r.stdout
    png = storage / "pareto" / "pareto.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    (parent,), kids = _runs(mlflow_server, "pareto")
    assert {"pareto.png", "pareto.md", "pareto.json", "best_config.json"} <= set(list_artifacts(mlflow_server, parent.info.run_id))
    front = json.loads((storage / "pareto" / "pareto.json").read_text())
    rows = completed(study_rows("pareto", f"sqlite:///{storage / 'pareto' / 'study.db'}"))
    assert front and len(rows) == 4
    for f in front:  # no completed trial dominates a front row (top1 up, gmacs down)
        t1, g = f["values"]
        assert not any(o["values"][0] >= t1 and o["values"][1] <= g and o["values"] != f["values"] for o in rows)
    for o in rows:  # and every trial off the front is dominated by a front row
        if o["number"] not in {f["number"] for f in front}:
            assert any(f["values"][0] >= o["values"][0] and f["values"][1] <= o["values"][1] for f in front)
    assert all(k.data.metrics.get("gmacs") for k in kids)


@pytest.mark.cluster
@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path, ray_head, mlflow_server):
    """The driver dies mid-trial (SIGKILL): --resume marks the interrupted Optuna trials FAIL
    (attnlab.status=interrupted) and their MLflow runs FAILED, never re-runs them, and adds new
    trials until the study has the trials asked for; no run is left RUNNING."""
    import time

    from pipeline.search import study_rows

    env = _env(ray_head, mlflow_server)
    spec = _spec(tmp_path, "killed", epochs=6, trials=3, space={"optim.lr": {"low": 0.05, "high": 0.2, "log": True}})
    storage = tmp_path / "st"
    url = f"sqlite:///{storage / 'killed' / 'study.db'}"
    proc = subprocess.Popen([PY, str(ROOT / "experiments" / "search.py"), "--spec", str(spec), "--storage",
                             str(storage), "--max-concurrent", "1", "--scheduler", "none"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # the first trial is running and has its run
            time.sleep(0.5)
            _, kids = _runs(mlflow_server, "killed") if (storage / "killed" / "study.db").exists() else (None, [])
            if kids and any(k.data.metrics.get("val_top1") is not None for k in kids):
                break
        else:
            pytest.fail("the first trial never reported an epoch")
    finally:
        proc.kill()  # the driver only: Ray ends the trials it owned
        proc.wait()
    before = study_rows("killed", url)
    running = [t["number"] for t in before if t["state"] == "RUNNING"]
    assert running, before
    r = _search(spec, storage, env, "--resume", "--scheduler", "none")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "interrupted" in r.stdout
    after = study_rows("killed", url)
    for n in running:
        assert after[n]["state"] == "FAIL" and after[n]["status"] == "interrupted"
    finished = [t for t in after if t["status"] != "interrupted"]
    assert len(finished) == 3 and all(t["state"] == "COMPLETE" for t in finished), after
    _, kids = _runs(mlflow_server, "killed")
    assert all(k.info.status in ("FINISHED", "FAILED") for k in kids)
    by_trial = {int(k.data.tags["attnlab.optuna_trial"]): k for k in kids}
    for n in running:
        assert by_trial[n].info.status == "FAILED" and "interrupted" in by_trial[n].data.tags["attnlab.error"]


@pytest.mark.cluster
@pytest.mark.slow
def test_search_through_ray_job_submit(tmp_path, ray_head, mlflow_server):
    from pipeline.search import study_rows

    spec = _spec(tmp_path, "jobsearch", epochs=1, trials=2)
    env = dict(os.environ, **ray_head["env"])
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_DISABLE_TELEMETRY": "true"}})
    r = subprocess.run([str(Path(PY).parent / "ray"), "job", "submit", "--address", ray_head["dashboard"],
                        "--working-dir", str(ROOT), "--runtime-env-json", runtime_env, "--",
                        "python", "experiments/search.py", "--spec", str(spec), "--storage", str(tmp_path / "st"),
                        "--scheduler", "none"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "succeeded" in (r.stdout + r.stderr).lower()
    rows = study_rows("jobsearch", f"sqlite:///{tmp_path / 'st' / 'jobsearch' / 'study.db'}")
    assert len(rows) == 2 and all(t["state"] == "COMPLETE" for t in rows)
    (parent,), kids = _runs(mlflow_server, "jobsearch")
    assert parent.data.tags["attnlab.kind"] == "search" and len(kids) == 2
    assert all(k.info.status == "FINISHED" for k in kids)


@pytest.mark.cluster
@pytest.mark.slow
def test_a_failed_trial_is_fail_in_the_study_and_failed_in_mlflow(tmp_path, ray_head, mlflow_server):
    """A trial whose retries ran out: FAIL in the study, its run FAILED with the error; the
    search goes on (the fault fires once) and exits 1."""
    from pipeline.search import study_rows

    base = {"model": {"backbone": "cifar_resnet20"}, "data": DIGITS, "optim": {"epochs": 1, "lr": 0.1}, "threads": 1,
            "fault": {"raise_at_epoch": 0, "once_file": str(tmp_path / "fault.once")}}
    spec = _spec(tmp_path, "failing", epochs=1, trials=2, base=base,
                 space={"optim.lr": {"low": 0.05, "high": 0.2, "log": True}})
    r = _search(spec, tmp_path / "st", _env(ray_head, mlflow_server), "--max-failures", "0", "--max-concurrent", "1",
                "--scheduler", "none")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    rows = study_rows("failing", f"sqlite:///{tmp_path / 'st' / 'failing' / 'study.db'}")
    assert [(t["state"], t["status"]) for t in rows] == [("FAIL", "failed"), ("COMPLETE", "finished")]
    (parent,), kids = _runs(mlflow_server, "failing")
    by_trial = {int(k.data.tags["attnlab.optuna_trial"]): k for k in kids}
    assert by_trial[0].info.status == "FAILED" and "injected fault" in by_trial[0].data.tags["attnlab.error"]
    assert by_trial[1].info.status == "FINISHED"
    assert parent.info.status == "FAILED"


def test_objectives_are_top1_first_in_any_spelling(tmp_path):
    from pipeline.search import load_search

    for spelt in (["gmacs", "top1"], "top1, gmacs", ["top1", "gmacs"]):
        assert load_search(_spec(tmp_path, objective=spelt)).objectives == ["top1", "gmacs"]
    assert load_search(_spec(tmp_path)).objectives == ["top1"]


@pytest.mark.parametrize("path", sorted((ROOT / "experiments" / "specs" / "search").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_search_spec_checks(path, capsys):
    from experiments import search

    try:
        code = search.main(["--spec", str(path), "--check"])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    assert code in (0, None), captured.err
    assert "optim.lr" in captured.out  # the space was printed


def test_a_step_that_divides_the_range_is_accepted_despite_float_rounding():
    from pipeline.search import DimSpec

    DimSpec.model_validate({"low": 0.01, "high": 0.1, "step": 0.03})  # 0.09 / 0.03 = 3.0000000000000004
    DimSpec.model_validate({"low": 1, "high": 7, "step": 2})
    with pytest.raises(ValueError, match="does not divide"):
        DimSpec.model_validate({"low": 0.0, "high": 1.0, "step": 0.3})
