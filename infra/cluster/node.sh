#!/usr/bin/env bash
# Node-side steps of infra/cluster/{aws,gcp}.yaml that take more than one line. Run on a cluster
# node by Ray's cluster launcher (never on your own machine):
#
#   bash ~/attnlab/infra/cluster/node.sh mount-shared   # NFS export of cluster.env at /data
#   bash ~/attnlab/infra/cluster/node.sh head-services  # PostgreSQL + MLflow (basic auth), head only
#   bash ~/attnlab/infra/cluster/node.sh check-gpu      # the GPUs this node type declares are usable
set -euo pipefail

CLUSTER_DIR="$HOME/.attnlab/cluster"
VENV="$HOME/attnlab-venv"
MLFLOW_PORT=5000

load_settings() {
  if [ ! -s "$CLUSTER_DIR/cluster.env" ]; then
    echo "attnlab: $CLUSTER_DIR/cluster.env is missing: run 'sh infra/cluster/init-secrets.sh ...' where you run 'ray up'" >&2
    exit 1
  fi
  set -a
  # shellcheck disable=SC1091
  . "$CLUSTER_DIR/cluster.env"
  set +a
}

mount_shared() {
  load_settings
  if [ -z "${ATTNLAB_SHARED_FS:-}" ]; then
    echo "attnlab: no shared file system configured (ATTNLAB_SHARED_FS); /data stays node-local"
    return 0
  fi
  if mountpoint -q /data; then
    echo "attnlab: /data already mounted"
    return 0
  fi
  sudo mkdir -p /data
  if ! grep -qs "[[:space:]]/data[[:space:]]" /etc/fstab; then
    echo "$ATTNLAB_SHARED_FS /data nfs ${ATTNLAB_SHARED_FS_OPTS},_netdev 0 0" | sudo tee -a /etc/fstab >/dev/null
  fi
  sudo mount /data
  sudo chown "$(id -u):$(id -g)" /data || true  # a fresh export is root-owned
  echo "attnlab: /data is $ATTNLAB_SHARED_FS"
}

head_services() {
  load_settings
  if [ ! -s "$CLUSTER_DIR/secrets.env" ]; then
    echo "attnlab: $CLUSTER_DIR/secrets.env is missing" >&2
    exit 1
  fi
  : "${ATTNLAB_MLFLOW_ARTIFACTS:?cluster.env sets no ATTNLAB_MLFLOW_ARTIFACTS}"

  # PostgreSQL: the MLflow backend store and its user store. Local Unix socket only, peer
  # authentication as this OS user (Debian's default for local connections): no password.
  sudo systemctl enable --now postgresql
  local user
  user=$(id -un)
  sudo -u postgres psql -tAc "SELECT 1 FROM pg_roles WHERE rolname='$user'" | grep -q 1 \
    || sudo -u postgres createuser "$user"
  for db in mlflow mlflow_auth; do
    sudo -u postgres psql -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
      || sudo -u postgres createdb -O "$user" "$db"
  done

  # MLflow: a systemd unit, restarted if it dies; secrets come from the file, not the command line.
  sudo systemctl stop attnlab-mlflow 2>/dev/null || true
  sudo systemctl reset-failed attnlab-mlflow 2>/dev/null || true
  sudo systemd-run --unit=attnlab-mlflow --uid="$(id -u)" --gid="$(id -g)" \
    --working-directory="$HOME" \
    --property=EnvironmentFile="$CLUSTER_DIR/secrets.env" \
    --property=Restart=on-failure --property=RestartSec=5 \
    --setenv=MLFLOW_AUTH_CONFIG_PATH="$HOME/attnlab/infra/cluster/mlflow-basic-auth.ini" \
    --setenv=MLFLOW_DISABLE_TELEMETRY=true \
    --setenv=MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    "$VENV/bin/mlflow" server --app-name basic-auth \
      --host 0.0.0.0 --port "$MLFLOW_PORT" --workers 4 \
      --backend-store-uri "postgresql+psycopg2:///mlflow?host=/var/run/postgresql" \
      --artifacts-destination "$ATTNLAB_MLFLOW_ARTIFACTS" --serve-artifacts

  for _ in $(seq 180); do
    if curl -fsS "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null 2>&1; then
      echo "attnlab: MLflow (basic auth) on port $MLFLOW_PORT, artifacts in $ATTNLAB_MLFLOW_ARTIFACTS"
      return 0
    fi
    sleep 1
  done
  echo "attnlab: MLflow did not become healthy in 180 s; its log:" >&2
  sudo journalctl -u attnlab-mlflow -n 80 --no-pager >&2 || true
  exit 1
}

check_gpu() {
  # RAY_OVERRIDE_RESOURCES is what the node type declares (the launcher sets it for ray start).
  "$VENV/bin/python" - <<'PY'
import json, os, sys

import torch

want = int(json.loads(os.environ.get("RAY_OVERRIDE_RESOURCES") or "{}").get("GPU", 0))
have = torch.cuda.device_count() if torch.cuda.is_available() else 0
if have < want:
    sys.exit(f"attnlab: this node type declares {want} GPU(s) but torch {torch.__version__} "
             f"(CUDA {torch.version.cuda}) sees {have}: check `nvidia-smi`; torch 2.13.0 is built "
             f"for CUDA 13 and needs an NVIDIA driver >= 580")
names = sorted({torch.cuda.get_device_name(i) for i in range(have)})
print(f"attnlab: {have} GPU(s) usable ({', '.join(names) or 'none'}), {want} declared")
PY
}

case "${1:-}" in
  mount-shared) mount_shared ;;
  head-services) head_services ;;
  check-gpu) check_gpu ;;
  *) echo "usage: bash node.sh mount-shared|head-services|check-gpu" >&2; exit 2 ;;
esac
