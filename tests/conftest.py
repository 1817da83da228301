import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Small tensors: one thread avoids oversubscribing the 2 CI cores (Ray/MLflow run beside us).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def torchvision_ok() -> bool:
    try:
        import torchvision  # noqa: F401 (imported for its side effect (registration) or to check that it imports)
    except Exception:
        return False
    return True


needs_torchvision = pytest.mark.skipif(not torchvision_ok(), reason="torchvision does not import (run infra/fix_torchvision.py)")


# ---------------------------------------------------------------------------------------------
# real servers on 127.0.0.1 (no mocks): an MLflow server and a Ray head, started and stopped here
# ---------------------------------------------------------------------------------------------
import shutil  # noqa: E402  (kept beside the fixtures that use them)
from infra.stack import free_port, free_ports  # noqa: E402,F401 (free_port: for the tests that import it from here)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    from infra.stack import start_mlflow, stop_mlflow

    state = tmp_path_factory.mktemp("mlflow-server")
    url, _ = start_mlflow(state, port=free_port())
    yield url
    stop_mlflow(state)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A real Ray head (GCS + dashboard/job server) on 127.0.0.1 with token auth and a token of
    its own (nothing from the home folder); yields its addresses and the client environment."""
    from infra.stack import client_env, start_ray, stop_ray

    state = tmp_path_factory.mktemp("ray-head")
    port, dash_port = free_ports(2)
    address, dash, temp = start_ray(state, port=port, dashboard_port=dash_port, num_cpus=2,
                                    temp_dir=f"/tmp/ray-t{port}")
    yield {"address": address, "dashboard": dash, "state": state, "env": client_env(state)}
    stop_ray(state)
    shutil.rmtree(temp, ignore_errors=True)  # the head's logs and session files
