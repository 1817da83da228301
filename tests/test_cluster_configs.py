"""The cluster configs in infra/cluster/, checked offline: nothing here launches a cloud node.

What is checked, and against what:

* ``aws.yaml`` / ``gcp.yaml`` go through Ray's own cluster-config validation, the part of
  ``ray up`` that runs before any cloud call: ``ray.autoscaler._private.util.prepare_config``
  (merge with the provider's ``defaults.yaml``, merge setup commands, per-type worker bounds)
  then ``validate_config`` (``ray/autoscaler/ray-schema.json`` plus its node-type checks). The
  provider bootstrap after that (IAM, subnets, key pairs, resource autodetection) needs cloud
  credentials and is not run, so instance types, images and quotas are not checked by a cloud.
  The ``ray start`` and ``mlflow server`` command lines are parsed by the installed CLIs.
  Our own checks: torch==2.13.0 installed before the project on every node, every pip call under
  constraints.txt, FFCV's apt packages (the Makefile's list) before the project, file mounts and
  scripts that exist, autoscaling bounds, GPU counts against the instance types, token auth, no
  secrets in the files. The node scripts are run here with a fake home folder.
* ``rayjob.yaml`` is validated with jsonschema against ``RAYJOB_V1_SCHEMA`` below: a reduced copy
  of the OpenAPI schema of KubeRay's RayJob CRD (ray-project/kuberay,
  ray-operator/config/crd/bases/ray.io_rayjobs.yaml, version v1, the same file in release v1.7.0
  and at commit feeaf72f): for every object the manifest uses, its types, enums, required fields and the full list of
  its field names (so a misspelt field fails, as kubectl's strict field validation would);
  subtrees the manifest does not use are left open. The submissionMode values are the Go
  constants of ray-operator/apis/ray/v1/rayjob_types.go.
"""
from __future__ import annotations

import configparser
import copy
import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "infra" / "cluster"
LAUNCHER = {"aws": CLUSTER / "aws.yaml", "gcp": CLUSTER / "gcp.yaml"}
RAYJOB = CLUSTER / "rayjob.yaml"
DOC = ROOT / "docs" / "cluster.md"
TORCH_PIN = "torch==2.13.0"

# (vCPUs, GPUs) of the instance types the configs use, from the providers' published specs.
# A type not listed here fails the test: add it with its real figures.
INSTANCE_SHAPES = {
    "aws": {"m6i.2xlarge": (8, 0), "g5.2xlarge": (8, 1), "g5.12xlarge": (48, 4), "p4d.24xlarge": (96, 8)},
    "gcp": {"n2-standard-8": (8, 0), "g2-standard-8": (8, 1), "a2-highgpu-1g": (12, 1), "a2-highgpu-8g": (96, 8)},
}
GCP_ACCELERATOR_OF_FAMILY = {"a2": "nvidia-tesla-a100", "g2": "nvidia-l4"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def prepared(cloud: str) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(load(LAUNCHER[cloud])))
    validate_config(cfg)
    return cfg


def ffcv_apt_packages() -> list[str]:
    m = re.search(r"^FFCV_APT\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "Makefile has no FFCV_APT list"
    return m.group(1).split()


# ---------------------------------------------------------------------------------------------
# Ray cluster launcher: AWS and GCP
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cloud", sorted(LAUNCHER))
def test_launcher_config_passes_rays_validation(cloud):
    cfg = prepared(cloud)
    assert cfg["provider"]["type"] == cloud
    assert cfg["head_node_type"] in cfg["available_node_types"]


@pytest.mark.parametrize("cloud", sorted(LAUNCHER))
def test_rays_validation_rejects_broken_configs(cloud):
    """The validator used above is live: the same config with a typo or a missing field fails."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    typo = load(LAUNCHER[cloud])
    typo["max_worker"] = typo.pop("max_workers")
    no_resources = load(LAUNCHER[cloud])
    worker = next(k for k in no_resources["available_node_types"] if k != no_resources["head_node_type"])
    del no_resources["available_node_types"][worker]["resources"]
    too_many_min = load(LAUNCHER[cloud])
    too_many_min["available_node_types"][worker]["min_workers"] = too_many_min["max_workers"] + 1
    for bad in (typo, no_resources):
        with pytest.raises(jsonschema.ValidationError):
            validate_config(prepare_config(bad))
    with pytest.raises(ValueError, match="min_workers"):
        validate_config(prepare_config(too_many_min))


def pip_installs(commands: list[str]) -> list[str]:
    return [c for c in commands if re.search(r"\bpip\s+install\b", c)]


@pytest.mark.parametrize("cloud", sorted(LAUNCHER))
@pytest.mark.parametrize("role", ["head", "worker"])
def test_every_node_installs_torch_first_then_the_project_under_constraints(cloud, role):
    cmds = prepared(cloud)[f"{role}_setup_commands"]  # after Ray merged setup_commands in front
    installs = pip_installs(cmds)
    assert installs, "no pip install in the setup commands"
    for c in installs:
        # constraints.txt is relative: every pip call must run in the project folder and use it.
        assert "-c constraints.txt" in c, c
        assert c.startswith("cd ~/attnlab && "), c
        assert not re.search(r"(^|\s)(-U|--upgrade)(\s|$)", c), f"an upgrade can replace torch: {c}"
    torch_i = [i for i, c in enumerate(cmds) if TORCH_PIN in c]
    project_i = [i for i, c in enumerate(cmds) if "-e '.[dev,ffcv]'" in c]
    assert len(torch_i) == 1 and len(project_i) == 1, cmds
    assert torch_i[0] < project_i[0], "torch must be installed before the project"
    # No other command installs a torch of its own choosing.
    for c in installs:
        assert not re.search(r"\btorch(?!==2\.13\.0)(?![\w-])", c.split("install", 1)[1]), c
    # The pin is the one the project declares.
    assert TORCH_PIN in (ROOT / "constraints.txt").read_text().split()
    assert f'"{TORCH_PIN}"' in (ROOT / "pyproject.toml").read_text()
    # FFCV builds against these Debian packages: installed (by apt) before the project.
    apt_i = [i for i, c in enumerate(cmds) if "apt-get" in c and all(p in c.split() for p in ffcv_apt_packages())]
    assert apt_i and apt_i[0] < project_i[0], "FFCV's apt packages must come before the project"
    # The install is verified: CUDA build of torch, and the project's imports.
    check = [c for c in cmds if "torch.version.cuda" in c]
    assert check and cmds.index(check[0]) > project_i[0]


@pytest.mark.parametrize("cloud", sorted(LAUNCHER))
def test_file_mounts_and_referenced_files_exist(cloud):
    cfg = load(LAUNCHER[cloud])
    mounts = cfg["file_mounts"]
    remote_to_repo = {}
    for remote, local in mounts.items():
        if local.startswith("./"):
            assert (ROOT / local).exists(), f"file mount {local} is not in the repository"
            remote_to_repo[remote] = ROOT / local
        else:
            # The only mount from outside the repository: the folder init-secrets.sh makes.
            assert (remote, local) == ("~/.attnlab/cluster", f"~/.attnlab/{cloud}")
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "blocks", "pipeline", "experiments"):
        assert f"~/attnlab/{needed}" in remote_to_repo, f"the install needs {needed} on the nodes"
    # pyproject's package list must all travel (setuptools' find would miss a package otherwise).
    include = re.search(r"include\s*=\s*\[([^\]]*)\]", (ROOT / "pyproject.toml").read_text()).group(1)
    for pkg in re.findall(r'"(\w+)\*"', include):
        assert f"~/attnlab/{pkg}" in remote_to_repo, f"package {pkg} is not mounted"
    # Every ~/attnlab/... path a command uses is a mounted file of the repository.
    text = "\n".join(cfg["setup_commands"] + cfg["head_setup_commands"] + cfg["head_start_ray_commands"]
                     + cfg["worker_start_ray_commands"])
    used = set(re.findall(r"~/attnlab/([\w./-]+\.(?:sh|ini|py))", text))
    assert {"infra/cluster/node.sh", "infra/cluster/node-env.sh"} <= used
    for rel in used:
        assert (ROOT / rel).is_file(), rel
        assert any(("~/attnlab/" + rel).startswith(r) for r in remote_to_repo), f"{rel} is not mounted"
    assert ".gitignore" in cfg["rsync_filter"]
    assert {"**/__pycache__", "**/*.py[cod]"} <= set(cfg["rsync_exclude"])


@pytest.mark.parametrize("cloud", sorted(LAUNCHER))
def test_autoscaling_bounds(cloud):
    raw = load(LAUNCHER[cloud])
    cfg = prepared(cloud)
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    assert types[head]["min_workers"] == types[head]["max_workers"] == 0
    workers = {k: v for k, v in types.items() if k != head}
    assert workers, "no worker node types"
    for name, t in workers.items():
        # Bounds are explicit in our file, not Ray's fill-in.
        assert {"min_workers", "max_workers"} <= set(raw["available_node_types"][name]), name
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name
    assert sum(t["min_workers"] for t in workers.values()) <= cfg["max_workers"]
    assert 0 < cfg["idle_timeout_minutes"]


@pytest.mark.parametrize("cloud", sorted(LAUNCHER))
def test_declared_resources_match_the_instance_types(cloud):
    cfg = load(LAUNCHER[cloud])
    key = "InstanceType" if cloud == "aws" else "machineType"
    for name, t in cfg["available_node_types"].items():
        itype = t["node_config"][key]
        assert itype in INSTANCE_SHAPES[cloud], f"unknown instance type {itype}: add its shape"
        cpus, gpus = INSTANCE_SHAPES[cloud][itype]
        assert t["resources"].get("CPU") == cpus, name
        assert t["resources"].get("GPU", 0) == gpus, name
        if name == cfg["head_node_type"]:
            assert gpus == 0, "the head is a CPU node"
        else:
            assert gpus >= 1, f"worker type {name} has no GPU"
        if cloud == "gcp" and gpus:
            acc = t["node_config"]["guestAccelerators"]
            assert acc == [{"acceleratorType": GCP_ACCELERATOR_OF_FAMILY[itype.split("-")[0]],
                            "acceleratorCount": gpus}], name
            assert t["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE", name


def test_every_node_and_the_image_run_one_ubuntu_release():
    """Ray wants one Python version on every node: all images are Ubuntu 22.04 (Python 3.10,
    /usr/bin/python3 makes the venv), and so is the KubeRay image."""
    for cloud, path in LAUNCHER.items():
        for name, t in load(path)["available_node_types"].items():
            nc = t["node_config"]
            image = nc["ImageId"] if cloud == "aws" else nc["disks"][0]["initializeParams"]["sourceImage"]
            assert re.search(r"22\.04|2204", image), f"{cloud} {name}: {image}"
    assert re.search(r"^FROM ubuntu:22\.04$", (CLUSTER / "Dockerfile").read_text(), re.M)


def gcp_with_project(project: str) -> dict:
    """gcp.yaml after the sed command its header (and the guide) tells the user to run."""
    m = re.search(r"^#\s+(sed -i\S* .*) infra/cluster/gcp\.yaml$", LAUNCHER["gcp"].read_text(), re.M)
    assert m, "gcp.yaml shows no sed command for the project id"
    assert m.group(1).replace("MY-PROJECT", "my-project") in DOC.read_text(), "the guide shows another command"
    words = [w for w in shlex.split(m.group(1).replace("MY-PROJECT", project)) if not w.startswith("-i")]
    r = subprocess.run(words, input=LAUNCHER["gcp"].read_text(), capture_output=True, text=True, check=True)
    return yaml.safe_load(r.stdout)


def test_gcp_project_fill_in_reaches_every_field():
    cfg = gcp_with_project("attnlab-test-123")
    assert cfg["provider"]["project_id"] == "attnlab-test-123"
    emails = [sa["email"] for t in cfg["available_node_types"].values() for sa in t["node_config"].get("serviceAccounts", [])]
    assert emails and all(e == "ray-autoscaler-sa-v1@attnlab-test-123.iam.gserviceaccount.com" for e in emails)
    assert "PROJECT_ID" not in yaml.safe_dump(cfg)


def test_gcp_names_one_project_and_one_zone():
    cfg = load(LAUNCHER["gcp"])
    project, zone = cfg["provider"]["project_id"], cfg["provider"]["availability_zone"]
    # As shipped the project is unset (Ray's bootstrap then stops asking for it, instead of trying
    # to create a project of a placeholder's name) and the e-mails hold the PROJECT_ID placeholder
    # the guide's sed command replaces; once filled in, all must name the same project.
    project = "PROJECT_ID" if project is None else project
    assert zone.startswith(cfg["provider"]["region"] + "-")
    for name, t in cfg["available_node_types"].items():
        for sa in t["node_config"].get("serviceAccounts", []):
            assert sa["email"] == f"ray-autoscaler-sa-v1@{project}.iam.gserviceaccount.com", name
        for disk in t["node_config"]["disks"]:
            assert disk["initializeParams"]["diskType"].startswith(f"zones/{zone}/"), name
    workers = [t for k, t in cfg["available_node_types"].items() if k != cfg["head_node_type"]]
    assert all(t["node_config"].get("serviceAccounts") for t in workers), "workers must reach the bucket"


@pytest.mark.parametrize("cloud", sorted(LAUNCHER))
def test_start_commands_parse_with_rays_cli_and_use_token_auth(cloud):
    import click
    from ray.scripts.scripts import start

    cfg = load(LAUNCHER[cloud])
    for role, cmds in (("head", cfg["head_start_ray_commands"]), ("worker", cfg["worker_start_ray_commands"])):
        starts = [c for c in cmds if "ray start" in c]
        assert len(starts) == 1, cmds
        line = starts[0]
        # The environment (token auth, MLflow, venv) is sourced first and must succeed (&&).
        assert line.startswith(f". ~/attnlab/infra/cluster/node-env.sh {role} &&"), line
        args = shlex.split(line.split("ray start", 1)[1].replace("$RAY_HEAD_IP", "10.0.0.2"))
        try:
            params = start.make_context("start", args).params
        except click.UsageError as e:  # pragma: no cover - the failure message is the point
            pytest.fail(f"{cloud} {role}: ray start rejects its arguments: {e}")
        if role == "head":
            assert params["head"] and params["include_dashboard"]
            assert params["dashboard_host"] == "0.0.0.0"  # on the head's address, not 127.0.0.1
            assert params["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
        else:
            assert not params["head"] and params["address"] == "10.0.0.2:6379"
            assert "node.sh check-gpu" in line.split("ray start")[0]
    assert cfg["head_start_ray_commands"].index("bash ~/attnlab/infra/cluster/node.sh head-services") < \
        cfg["head_start_ray_commands"].index(next(c for c in cfg["head_start_ray_commands"] if "ray start" in c))


def test_mlflow_server_command_parses_with_mlflows_cli():
    """The `mlflow server` line of node.sh: basic auth, PostgreSQL backend, artifacts in the bucket."""
    import click
    from mlflow.cli import server

    text = (CLUSTER / "node.sh").read_text()
    m = re.search(r'"\$VENV/bin/mlflow" server (.*?)\n\n', text, re.S)
    assert m, "no mlflow server command in node.sh"
    args = shlex.split(m.group(1).replace("\\\n", " ").replace('"$MLFLOW_PORT"', "5000")
                       .replace('"$ATTNLAB_MLFLOW_ARTIFACTS"', "s3://bucket/mlflow"))
    try:
        params = server.make_context("server", args).params
    except click.UsageError as e:  # pragma: no cover
        pytest.fail(f"mlflow server rejects its arguments: {e}")
    assert params["app_name"] == "basic-auth"
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the head installs psycopg2.
    assert params["backend_store_uri"].startswith("postgresql+psycopg2:")
    # The head installs what this server needs: the auth extra of the project's MLflow pin, psycopg2.
    mlflow_pin = re.search(r'"(mlflow==[^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    for cloud in LAUNCHER:
        head = " ".join(pip_installs(load(LAUNCHER[cloud])["head_setup_commands"]))
        assert "psycopg2-binary" in head and f"'{mlflow_pin.replace('==', '[auth]==')}'" in head, head
    assert params["artifacts_destination"] == "s3://bucket/mlflow" and params["serve_artifacts"]
    assert params["host"] == "0.0.0.0"  # trials on the workers log to it
    # The secrets reach the server from the file, never on its command line.
    assert '--property=EnvironmentFile="$CLUSTER_DIR/secrets.env"' in text
    assert 'MLFLOW_AUTH_CONFIG_PATH="$HOME/attnlab/infra/cluster/mlflow-basic-auth.ini"' in text


def test_mlflow_auth_settings_hold_no_password():
    from sqlalchemy.engine import make_url

    ini = configparser.ConfigParser()
    ini.read(CLUSTER / "mlflow-basic-auth.ini")
    section = ini["mlflow"]
    assert "admin_password" not in section
    url = make_url(section["database_uri"])
    assert (url.get_backend_name(), url.get_driver_name()) == ("postgresql", "psycopg2") and url.password is None
    assert url.query.get("host") == "/var/run/postgresql"  # Unix socket, peer authentication
    # The server reads it from the same folder as mounted on the nodes.
    assert (CLUSTER / "mlflow-basic-auth.ini").is_file()


# ---------------------------------------------------------------------------------------------
# the node scripts, run here with a fake home folder
# ---------------------------------------------------------------------------------------------

def run_init(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(CLUSTER / "init-secrets.sh"), *args], env={"HOME": str(home), "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=30)


def test_init_secrets_makes_private_files_and_keeps_them(tmp_path):
    r = run_init(tmp_path, "aws", "--artifacts", "s3://bucket/mlflow", "--shared-fs", "fs-1.efs.example:/")
    assert r.returncode == 0, r.stderr
    d = tmp_path / ".attnlab" / "aws"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in ("auth_token", "secrets.env", "cluster.env"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    token = (d / "auth_token").read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token)  # the shape of Ray's own tokens
    secrets = dict(line.split("=", 1) for line in (d / "secrets.env").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert secrets["MLFLOW_TRACKING_PASSWORD"] == secrets["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert len(secrets["MLFLOW_TRACKING_PASSWORD"]) >= 32 and len(secrets["MLFLOW_FLASK_SERVER_SECRET_KEY"]) >= 32
    settings = (d / "cluster.env").read_text()
    assert "ATTNLAB_MLFLOW_ARTIFACTS=s3://bucket/mlflow" in settings
    assert "ATTNLAB_SHARED_FS=fs-1.efs.example:/" in settings

    # A second run keeps the secrets; --rotate-token replaces the token only.
    before = (d / "secrets.env").read_text()
    assert run_init(tmp_path, "aws", "--artifacts", "s3://bucket/other").returncode == 0
    assert (d / "secrets.env").read_text() == before and (d / "auth_token").read_text() == token
    assert "ATTNLAB_MLFLOW_ARTIFACTS=s3://bucket/other" in (d / "cluster.env").read_text()
    assert run_init(tmp_path, "aws", "--artifacts", "s3://bucket/other", "--rotate-token").returncode == 0
    assert (d / "auth_token").read_text() != token and (d / "secrets.env").read_text() == before

    # Another cloud gets its own folder and secrets.
    assert run_init(tmp_path, "gcp", "--artifacts", "gs://bucket/mlflow").returncode == 0
    assert (tmp_path / ".attnlab" / "gcp" / "auth_token").read_text() != (d / "auth_token").read_text()


@pytest.mark.parametrize("args", [["aws", "--artifacts", "gs://bucket/m"], ["gcp", "--artifacts", "s3://b/m"],
                                  ["aws"], ["azure", "--artifacts", "s3://b/m"], ["aws", "--artifact", "s3://b/m"]])
def test_init_secrets_refuses_bad_arguments(tmp_path, args):
    r = run_init(tmp_path, *args)
    assert r.returncode == 2 and not (tmp_path / ".attnlab").exists(), r.stderr


def fake_node_home(tmp_path: Path) -> Path:
    """A home folder as `ray up` leaves it on a node: the cluster folder and the venv."""
    assert run_init(tmp_path, "aws", "--artifacts", "s3://bucket/mlflow").returncode == 0
    (tmp_path / ".attnlab" / "aws").rename(tmp_path / ".attnlab" / "cluster")
    venv_bin = tmp_path / "attnlab-venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "activate").write_text('export VIRTUAL_ENV="$HOME/attnlab-venv"\n')
    return tmp_path


def source_node_env(home: Path, role: str, extra: dict | None = None) -> subprocess.CompletedProcess:
    script = f'. "{CLUSTER / "node-env.sh"}" {role} || exit 7; env'
    env = {"HOME": str(home), "PATH": os.environ["PATH"], **(extra or {})}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)


def test_node_env_gives_ray_and_the_trials_token_auth_and_the_mlflow_login(tmp_path):
    home = fake_node_home(tmp_path)
    r = source_node_env(home, "worker", {"RAY_HEAD_IP": "10.1.2.3"})
    assert r.returncode == 0, r.stderr
    env = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(home / ".attnlab" / "cluster" / "auth_token")
    assert env["MLFLOW_TRACKING_URI"] == "http://10.1.2.3:5000"
    assert env["MLFLOW_TRACKING_USERNAME"] == "admin" and len(env["MLFLOW_TRACKING_PASSWORD"]) >= 32
    assert env["VIRTUAL_ENV"] == str(home / "attnlab-venv")
    # Ray's own token loader reads the token through that path (no cluster is started).
    ray_cli = str(Path(os.sys.executable).parent / "ray")
    got = subprocess.run([ray_cli, "get-auth-token"], capture_output=True, text=True, timeout=120,
                         env={"HOME": str(home), "PATH": os.environ["PATH"], "RAY_AUTH_MODE": "token",
                              "RAY_AUTH_TOKEN_PATH": env["RAY_AUTH_TOKEN_PATH"]})
    assert got.returncode == 0 and got.stdout == (home / ".attnlab" / "cluster" / "auth_token").read_text(), got.stderr
    # The server's bootstrap secrets stay out of Ray's (and so every trial's) environment.
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert name not in env

    head = source_node_env(home, "head")
    assert head.returncode == 0, head.stderr
    uri = dict(line.split("=", 1) for line in head.stdout.splitlines() if "=" in line)["MLFLOW_TRACKING_URI"]
    assert re.fullmatch(r"http://\d+\.\d+\.\d+\.\d+:5000", uri) and "127.0.0.1" not in uri


def test_node_env_fails_without_the_token_or_the_head_address(tmp_path):
    home = fake_node_home(tmp_path)
    assert source_node_env(home, "worker").returncode == 7  # no RAY_HEAD_IP
    (home / ".attnlab" / "cluster" / "auth_token").unlink()
    r = source_node_env(home, "worker", {"RAY_HEAD_IP": "10.1.2.3"})
    assert r.returncode == 7 and "auth_token is missing" in r.stderr and "init-secrets.sh" in r.stderr


def test_check_gpu_fails_when_the_declared_gpus_are_absent(tmp_path):
    import torch

    (tmp_path / "attnlab-venv" / "bin").mkdir(parents=True)
    wrapper = tmp_path / "attnlab-venv" / "bin" / "python"  # this interpreter, as the node's venv
    wrapper.write_text(f'#!/bin/sh\nexec "{os.sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0

    def check(resources: dict) -> subprocess.CompletedProcess:
        env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"], "RAY_OVERRIDE_RESOURCES": json.dumps(resources)}
        return subprocess.run(["bash", str(CLUSTER / "node.sh"), "check-gpu"], env=env,
                              capture_output=True, text=True, timeout=120)

    ok = check({"CPU": 8, "GPU": have})
    assert ok.returncode == 0 and f"{have} GPU(s) usable" in ok.stdout, ok.stderr
    bad = check({"CPU": 8, "GPU": have + 1})
    assert bad.returncode != 0 and f"declares {have + 1} GPU(s)" in bad.stderr


def test_shell_scripts_parse():
    for name in ("node.sh", "node-env.sh"):
        subprocess.run(["bash", "-n", str(CLUSTER / name)], check=True)
    subprocess.run(["sh", "-n", str(CLUSTER / "init-secrets.sh")], check=True)


# ---------------------------------------------------------------------------------------------
# KubeRay RayJob
# ---------------------------------------------------------------------------------------------

def _names(words: str) -> dict:
    return {w: {} for w in words.split()}


def _obj(props: dict, required: tuple = (), open_names: str = "") -> dict:
    return {"type": "object", "properties": {**_names(open_names), **props},
            "additionalProperties": False, **({"required": list(required)} if required else {})}


_STR, _BOOL = {"type": "string"}, {"type": "boolean"}
_INT32 = {"type": "integer", "format": "int32"}
_QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True,
             "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"}
_CONTAINER = _obj({
    "name": _STR, "image": _STR,
    "env": {"type": "array", "items": _obj({
        "name": _STR, "value": _STR,
        "valueFrom": _obj({"secretKeyRef": _obj({"key": _STR, "name": _STR}, ("key",), "optional")},
                          open_names="configMapKeyRef fieldRef fileKeyRef resourceFieldRef")}, ("name",))},
    "ports": {"type": "array", "items": _obj({"containerPort": _INT32, "name": _STR}, ("containerPort",),
                                             "hostIP hostPort protocol")},
    "resources": _obj({"limits": {"type": "object", "additionalProperties": _QUANTITY},
                       "requests": {"type": "object", "additionalProperties": _QUANTITY}}, open_names="claims"),
    "volumeMounts": {"type": "array", "items": _obj({"mountPath": _STR, "name": _STR}, ("mountPath", "name"),
                                                    "mountPropagation readOnly recursiveReadOnly subPath subPathExpr")},
}, ("name",), "args command envFrom imagePullPolicy lifecycle livenessProbe readinessProbe resizePolicy restartPolicy "
              "restartPolicyRules securityContext startupProbe stdin stdinOnce terminationMessagePath "
              "terminationMessagePolicy tty volumeDevices workingDir")
_POD_TEMPLATE = _obj({"spec": _obj({
    "containers": {"type": "array", "items": _CONTAINER},
    "serviceAccountName": _STR,
    "tolerations": {"type": "array", "items": _obj({"effect": _STR, "key": _STR, "operator": _STR},
                                                   open_names="tolerationSeconds value")},
    "volumes": {"type": "array", "items": _obj({
        "name": _STR,
        "emptyDir": _obj({"medium": _STR}, open_names="sizeLimit"),
        "persistentVolumeClaim": _obj({"claimName": _STR}, ("claimName",), "readOnly"),
    }, ("name",), "awsElasticBlockStore azureDisk azureFile cephfs cinder configMap csi downwardAPI ephemeral fc "
                  "flexVolume flocker gcePersistentDisk gitRepo glusterfs hostPath image iscsi nfs "
                  "photonPersistentDisk portworxVolume projected quobyte rbd scaleIO secret storageos vsphereVolume")},
}, ("containers",), "activeDeadlineSeconds affinity automountServiceAccountToken dnsConfig dnsPolicy "
                    "enableServiceLinks ephemeralContainers hostAliases hostIPC hostNetwork hostPID hostUsers hostname "
                    "hostnameOverride imagePullSecrets initContainers nodeName nodeSelector os overhead "
                    "preemptionPolicy priority priorityClassName readinessGates resourceClaims resources "
                    "restartPolicy runtimeClassName schedulerName schedulingGates schedulingGroup securityContext "
                    "serviceAccount setHostnameAsFQDN shareProcessNamespace subdomain "
                    "terminationGracePeriodSeconds topologySpreadConstraints")}, open_names="metadata")
_RAY_START_PARAMS = {"type": "object", "additionalProperties": _STR}
RAYJOB_V1_SCHEMA = {
    "type": "object",
    "properties": {"apiVersion": _STR, "kind": _STR, "metadata": {"type": "object"}, "spec": _obj({
        "entrypoint": _STR, "submissionMode": _STR, "shutdownAfterJobFinishes": _BOOL,
        "ttlSecondsAfterFinished": _INT32, "backoffLimit": _INT32, "runtimeEnvYAML": _STR,
        "rayClusterSpec": _obj({
            "rayVersion": _STR, "enableInTreeAutoscaling": _BOOL,
            "authOptions": _obj({"mode": {"type": "string", "enum": ["disabled", "token"]}},
                                open_names="enableK8sTokenAuth secretName"),
            "headGroupSpec": _obj({"rayStartParams": _RAY_START_PARAMS, "template": _POD_TEMPLATE}, ("template",),
                                  "enableIngress headService ingressOptions labels resources serviceType"),
            "workerGroupSpecs": {"type": "array", "items": _obj({
                "groupName": _STR, "replicas": _INT32, "minReplicas": _INT32, "maxReplicas": _INT32,
                "rayStartParams": _RAY_START_PARAMS, "template": _POD_TEMPLATE,
            }, ("groupName", "maxReplicas", "minReplicas", "template"),
                "idleTimeoutSeconds labels numOfHosts priority resources scaleStrategy suspend")},
        }, ("headGroupSpec",), "autoscalerOptions gcsFaultToleranceOptions headServiceAnnotations "
                               "historyServerOptions managedBy networkPolicy suspend tlsOptions upgradeStrategy"),
    }, open_names="activeDeadlineSeconds clusterSelector deletionStrategy entrypointNumCpus entrypointNumGpus "
                  "entrypointResources jobId managedBy metadata preRunningDeadlineSeconds submitterConfig "
                  "submitterPodTemplate suspend")},
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
RAYJOB_VARS = {"ATTNLAB_IMAGE": "registry.example/attnlab:0.1.0", "ATTNLAB_STORAGE": "s3://bucket/runs",
               "ATTNLAB_MLFLOW_URI": "http://mlflow.mlflow.svc:5000"}


def rayjob() -> dict:
    """The manifest as `envsubst '$ATTNLAB_IMAGE $ATTNLAB_STORAGE $ATTNLAB_MLFLOW_URI'` makes it."""
    text = RAYJOB.read_text()
    for name, value in RAYJOB_VARS.items():
        text = text.replace("${%s}" % name, value)
    return yaml.safe_load(text)


def test_rayjob_uses_exactly_the_documented_variables():
    text = RAYJOB.read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(RAYJOB_VARS)
    envsubst = "envsubst '" + " ".join(f"${v}" for v in RAYJOB_VARS) + "'"
    assert envsubst in text
    assert envsubst in DOC.read_text(), "docs/cluster.md must show the same envsubst command"


def test_rayjob_matches_the_crd_schema():
    jsonschema.validate(rayjob(), RAYJOB_V1_SCHEMA)


@pytest.mark.parametrize("break_it", [
    lambda m: m["spec"]["rayClusterSpec"].update(workerGroupSpec=m["spec"]["rayClusterSpec"].pop("workerGroupSpecs")),
    lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("minReplicas"),
    lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas="1"),
    lambda m: m["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
    lambda m: m["spec"]["rayClusterSpec"]["authOptions"].update(mode="tokens"),
    lambda m: next(e for e in m["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
                   if "valueFrom" in e)["valueFrom"].update(secretKeyRefs={}),
])
def test_the_reduced_crd_schema_rejects_broken_manifests(break_it):
    m = rayjob()
    break_it(m)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(m, RAYJOB_V1_SCHEMA)


def test_rayjob_runs_the_grid_on_gpu_workers_with_secret_credentials():
    import ray

    m = rayjob()
    assert (m["apiVersion"], m["kind"]) == ("ray.io/v1", "RayJob")
    spec = m["spec"]
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"

    groups = cluster["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
        assert g["maxReplicas"] >= 1
        for c in g["template"]["spec"]["containers"]:
            gpus = c["resources"]["limits"].get("nvidia.com/gpu")
            assert isinstance(gpus, int) and gpus >= 1, f"worker group {g['groupName']} has no GPU limit"
            # Kubernetes wants extended resources' requests equal to their limits.
            assert c["resources"].get("requests", {}).get("nvidia.com/gpu", gpus) == gpus
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert all("nvidia.com/gpu" not in c["resources"].get("limits", {}) for c in head)

    containers = head + [c for g in groups for c in g["template"]["spec"]["containers"]]
    for c in containers:
        assert c["image"] == RAYJOB_VARS["ATTNLAB_IMAGE"]
        env = {e["name"]: e for e in c["env"]}
        assert env["MLFLOW_TRACKING_URI"]["value"] == RAYJOB_VARS["ATTNLAB_MLFLOW_URI"]
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert "value" not in env[name], f"{name} must come from a Secret"
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "attnlab-mlflow", "key": name}
        # /data is the shared volume the specs read.
        mounts = {v["mountPath"]: v["name"] for v in c["volumeMounts"]}
        assert "/data" in mounts
    for t in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in groups]:
        claims = [v["persistentVolumeClaim"]["claimName"] for v in t["spec"]["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["attnlab-data"]


def grid_args_of(command: str) -> list[str]:
    words = shlex.split(command)
    i = next(i for i, w in enumerate(words) if w.endswith("experiments/grid.py"))
    return words[i + 1:]


def test_rayjob_entrypoint_is_a_valid_grid_command_on_an_existing_spec():
    from experiments.grid import parse_args

    entry = rayjob()["spec"]["entrypoint"]
    assert re.match(r"python /app/experiments/grid\.py ", entry), entry
    assert (ROOT / "experiments" / "grid.py").is_file()
    a = parse_args(grid_args_of(entry))
    assert a.spec.startswith("/app/") and (ROOT / a.spec[len("/app/"):]).is_file(), a.spec
    assert a.storage == RAYJOB_VARS["ATTNLAB_STORAGE"]
    assert a.gpus_per_trial >= 1


def test_dockerfile_installs_torch_first_then_the_project_and_copies_what_exists():
    text = (CLUSTER / "Dockerfile").read_text()
    runs = re.findall(r"^RUN (.*?)(?<!\\)$", text, re.M | re.S)
    torch_i = [i for i, r in enumerate(runs) if TORCH_PIN in r]
    project_i = [i for i, r in enumerate(runs) if "-e '.[dev,ffcv]'" in r]
    apt_i = [i for i, r in enumerate(runs) if all(p in r.split() for p in ffcv_apt_packages())]
    assert torch_i and project_i and apt_i and apt_i[0] < torch_i[0] < project_i[0]
    for r in pip_installs(runs):
        assert "-c constraints.txt" in r, r
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for src in line.split():
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert f"!{src}" in ignore or f"!{src}/" in ignore, f"COPY {src}: excluded from the build context"
    # The working dir of the image is where the RayJob entrypoint finds the project.
    assert re.search(r"^WORKDIR /app$", text, re.M)


# ---------------------------------------------------------------------------------------------
# no secrets, no missing references
# ---------------------------------------------------------------------------------------------

SECRET_PATTERNS = [
    (r"AKIA[0-9A-Z]{16}", "an AWS access key id"),
    (r"-----BEGIN [A-Z ]*PRIVATE KEY-----", "a private key"),
    (r"\b[0-9a-f]{64}\b", "a Ray-token-shaped hex string"),
    (r"(?i)\b(admin_password|password)\s*[:=]\s*(?![\s\"']*\$)[\"']?[^\s\"'$<{]{6,}", "a password value"),
    (r"(?i)MLFLOW_[A-Z_]*PASSWORD=(?!\$|\")\S{6,}", "an MLflow password value"),
    (r"(?i)postgres(?:ql)?(?:\+\w+)?://[^/\s:@]+:[^@\s]+@", "a database URI with a password"),
]


def cluster_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.is_file() and "__pycache__" not in p.parts) + [DOC]


@pytest.mark.parametrize("path", cluster_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_secrets_in_the_files(path):
    text = path.read_text()
    for pattern, what in SECRET_PATTERNS:
        m = re.search(pattern, text)
        assert not m, f"{path.relative_to(ROOT)} holds {what}: {m.group(0)!r}"


def test_the_secret_scan_finds_planted_secrets():
    planted = ["MLFLOW_TRACKING_PASSWORD=hunter2hunter2", "admin_password = s3cretpass",
               "postgresql://mlflow:pw123@db/mlflow", "a" * 64, "AKIAABCDEFGHIJKLMNOP"]
    for text in planted:
        assert any(re.search(p, text) for p, _ in SECRET_PATTERNS), text
    for text in ['MLFLOW_TRACKING_PASSWORD=$password', 'password="$(rand 24)"', "admin_password =",
                 "postgresql:///mlflow?host=/var/run/postgresql"]:
        assert not any(re.search(p, text) for p, _ in SECRET_PATTERNS), text


def test_paths_named_in_the_guide_and_configs_exist():
    """Every repository file the guide or a config names is in the repository."""
    texts = [DOC.read_text()] + [p.read_text() for p in cluster_files() if p != DOC]
    named = set()
    for text in texts:
        named |= set(re.findall(r"(?<![\w/~.])((?:experiments|infra|docs|pipeline|blocks|benchmarks|tests)/[\w./-]+\.(?:py|ya?ml|md|sh|ini|txt))", text))
    assert "experiments/grid.py" in named
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"named but not in the repository: {missing}"


def test_grid_commands_in_the_guide_are_valid():
    """Each `python experiments/grid.py ...` line of the guide parses with grid.py's own parser
    and names a spec that exists."""
    from experiments.grid import parse_args

    text = DOC.read_text().replace("\\\n", " ")
    commands = [m.group(0) for m in re.finditer(r"python experiments/grid\.py[^\n`]*", text)]
    assert len(commands) >= 2
    for cmd in commands:
        args = grid_args_of(cmd.replace("…", "x"))
        a = parse_args(args)
        assert (ROOT / a.spec).is_file(), cmd


# ---------------------------------------------------------------------------------------------
# the head's MLflow server, run here for real: node.sh's `mlflow server` line, the basic-auth
# settings and the secrets init-secrets.sh makes, on a private PostgreSQL reached like on the
# head (Unix socket, peer authentication, no password). Only the bucket and systemd differ:
# artifacts go to a local folder, the server listens on 127.0.0.1.
# ---------------------------------------------------------------------------------------------

def _pg_bin(name: str) -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else None


@pytest.fixture
def peer_auth_postgres(tmp_path):
    """A PostgreSQL with only a Unix socket (in tmp) and peer authentication, the databases
    `mlflow` and `mlflow_auth` owned by a role named like the current OS user."""
    import getpass
    import shutil
    import time

    if not _pg_bin("initdb"):
        if os.environ.get("ATTNLAB_SKIP_SERVICES") == "1":
            pytest.skip("ATTNLAB_SKIP_SERVICES=1 and PostgreSQL is not installed")
        pytest.fail("PostgreSQL is not installed: make install-services (or ATTNLAB_SKIP_SERVICES=1 to skip)")
    import tempfile

    root = os.geteuid() == 0
    if not root:
        pytest.skip("the server runs as the `postgres` user and peer-authenticates another OS user: needs root")
    as_pg = ["runuser", "-u", "postgres", "--"]
    # Outside pytest's tmp folders (mode 700): the `postgres` user must reach the socket folder.
    base = Path(tempfile.mkdtemp(prefix="attnlab-pg-"))
    base.chmod(0o755)
    data, sock = base / "pg", base / "sock"
    data.mkdir()
    sock.mkdir()
    for p in (data, sock):  # PostgreSQL refuses to run as root: its own user owns the folders
        shutil.chown(p, "postgres", "postgres")
    sock.chmod(0o777)
    env = dict(os.environ, LC_ALL="C.UTF-8")
    subprocess.run(as_pg + [_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth-local=peer",
                            "--auth-host=reject", "-E", "UTF8"], env=env, check=True, capture_output=True, timeout=120)
    proc = subprocess.Popen(as_pg + [_pg_bin("postgres"), "-D", str(data), "-k", str(sock), "-c", "listen_addresses=",
                                     "-p", "5432"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        for _ in range(120):
            if (sock / ".s.PGSQL.5432").exists():
                break
            time.sleep(0.25)
        psql_as_postgres = as_pg + [_pg_bin("psql"), "-h", str(sock), "-U", "postgres", "-d", "postgres", "-c"]
        user = getpass.getuser()
        for _ in range(240):  # the socket exists before the server accepts connections
            if subprocess.run(psql_as_postgres + ["SELECT 1"], capture_output=True, env=env).returncode == 0:
                break
            time.sleep(0.25)
        subprocess.run(psql_as_postgres + [f'CREATE ROLE "{user}" LOGIN'], check=True, capture_output=True, env=env)
        for db in ("mlflow", "mlflow_auth"):
            subprocess.run(psql_as_postgres + [f'CREATE DATABASE {db} OWNER "{user}"'], check=True, capture_output=True,
                           env=env)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.cluster
@pytest.mark.slow
def test_head_mlflow_server_runs_with_basic_auth_on_peer_auth_postgres(peer_auth_postgres, tmp_path):
    import base64
    import time
    import urllib.error
    import urllib.request

    from tests.conftest import free_port

    try:
        import flask_wtf  # noqa: F401 (imported for its side effect (registration) or to check that it imports)
    except ImportError:
        pytest.skip("mlflow's basic-auth app needs its auth extra (the head installs 'mlflow[auth]'): "
                    "pip install -c constraints.txt 'Flask-WTF<2' to run this test")
    sock = peer_auth_postgres
    home = tmp_path / "home"
    home.mkdir()
    assert run_init(home, "aws", "--artifacts", "s3://bucket/mlflow").returncode == 0
    secrets_file = home / ".attnlab" / "aws" / "secrets.env"
    secrets = dict(line.split("=", 1) for line in secrets_file.read_text().splitlines() if line and not line.startswith("#"))

    # Our ini and node.sh's command line, with the socket folder of this test instead of the head's.
    ini = tmp_path / "basic_auth.ini"
    ini.write_text((CLUSTER / "mlflow-basic-auth.ini").read_text().replace("/var/run/postgresql", str(sock)))
    port = free_port()
    m = re.search(r'"\$VENV/bin/mlflow" server (.*?)\n\n', (CLUSTER / "node.sh").read_text(), re.S)
    args = shlex.split(m.group(1).replace("\\\n", " ").replace('"$MLFLOW_PORT"', str(port))
                       .replace('"$ATTNLAB_MLFLOW_ARTIFACTS"', str(tmp_path / "artifacts"))
                       .replace("/var/run/postgresql", str(sock)))
    args[args.index("--host") + 1] = "127.0.0.1"  # here every server stays on loopback
    args[args.index("--workers") + 1] = "1"
    env = dict(os.environ, **secrets, MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_DISABLE_TELEMETRY="true",
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", HOME=str(home))
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)  # the server reads the admin bootstrap, not a client login
    log = open(tmp_path / "mlflow.log", "wb")
    server = subprocess.Popen([str(Path(os.sys.executable).parent / "mlflow"), "server", *args], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"

    def get(path: str, login: tuple[str, str] | None = None) -> int:
        req = urllib.request.Request(url + path)
        if login:
            req.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        t0 = time.time()
        while time.time() - t0 < 180:
            assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
            try:
                if get("/health") == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("MLflow did not start:\n" + (tmp_path / "mlflow.log").read_text()[-3000:])
        search = "/api/2.0/mlflow/experiments/search?max_results=10"
        assert get(search) == 401  # basic auth is on
        assert get(search, ("admin", "wrong-password")) == 401
        login = (secrets["MLFLOW_TRACKING_USERNAME"], secrets["MLFLOW_TRACKING_PASSWORD"])
        assert get(search, login) == 200  # the admin was created from secrets.env

        # A client with the trials' environment logs a run; it lands in PostgreSQL.
        client = subprocess.run(
            [os.sys.executable, "-c",
             "import mlflow; mlflow.set_experiment('cluster-check');\n"
             "with mlflow.start_run() as r: mlflow.log_metric('m', 1.0)\n"
             "print(r.info.run_id)"],
            env=dict(os.environ, MLFLOW_TRACKING_URI=url, MLFLOW_TRACKING_USERNAME=login[0],
                     MLFLOW_TRACKING_PASSWORD=login[1], MLFLOW_DISABLE_TELEMETRY="true"),
            capture_output=True, text=True, timeout=120)
        assert client.returncode == 0, client.stderr[-2000:]
        rows = subprocess.run(["runuser", "-u", "postgres", "--", _pg_bin("psql"), "-h", str(sock), "-U", "postgres",
                               "-d", "mlflow", "-tAc", "SELECT count(*) FROM runs"], capture_output=True, text=True)
        assert rows.stdout.strip() == "1", rows.stderr
        users = subprocess.run(["runuser", "-u", "postgres", "--", _pg_bin("psql"), "-h", str(sock), "-U", "postgres",
                                "-d", "mlflow_auth", "-tAc", "SELECT username FROM users"], capture_output=True, text=True)
        assert users.stdout.split() == ["admin"], users.stderr
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
        log.close()
