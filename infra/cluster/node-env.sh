# The environment of `ray start` on a cluster node, and so of every Ray worker process, the grid
# driver and its trials. Sourced (bash) by the start commands of infra/cluster/{aws,gcp}.yaml:
#
#   . ~/attnlab/infra/cluster/node-env.sh head|worker
#
# Reads ~/.attnlab/cluster/ (copied there by `ray up` from the ~/.attnlab/<cloud>/ folder that
# infra/cluster/init-secrets.sh made): the Ray token, the MLflow login, the cluster settings.
# Returns non-zero, with the reason on stderr, when any of it is missing.

_attnlab_dir="$HOME/.attnlab/cluster"
for _attnlab_f in auth_token secrets.env cluster.env; do
  if [ ! -s "$_attnlab_dir/$_attnlab_f" ]; then
    echo "attnlab: $_attnlab_dir/$_attnlab_f is missing: run 'sh infra/cluster/init-secrets.sh ...' where you run 'ray up', then 'ray up' again" >&2
    return 1
  fi
done

set -a
. "$_attnlab_dir/cluster.env"
. "$_attnlab_dir/secrets.env"
set +a
# Only the MLflow server needs its admin bootstrap and Flask key (it reads them from the file);
# trials get the tracking login alone.
unset MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY

case "${1:-}" in
  head)
    # The head's private address: trials on the workers log to the MLflow server here.
    _attnlab_head_ip=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
    [ -n "$_attnlab_head_ip" ] || _attnlab_head_ip=$(hostname -I | awk '{print $1}')
    ;;
  worker)
    # Ray's cluster launcher sets RAY_HEAD_IP in the environment of worker start commands.
    _attnlab_head_ip=${RAY_HEAD_IP:-}
    ;;
  *)
    echo "attnlab: usage: . node-env.sh head|worker" >&2
    return 1
    ;;
esac
if [ -z "$_attnlab_head_ip" ]; then
  echo "attnlab: cannot tell the head's address (role ${1})" >&2
  return 1
fi

# Ray token auth: every process that starts or joins this cluster uses the same token.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$_attnlab_dir/auth_token"
export RAY_USAGE_STATS_ENABLED=0
export MLFLOW_TRACKING_URI="http://$_attnlab_head_ip:5000"
export MLFLOW_DISABLE_TELEMETRY=true
# With a shared /data, derived files (FFCV .beton folders keyed by the data's fingerprint) are
# written once and seen by every node.
if mountpoint -q /data 2>/dev/null; then
  export ATTNLAB_CACHE=/data/attnlab-cache
fi
. "$HOME/attnlab-venv/bin/activate"
unset _attnlab_dir _attnlab_f _attnlab_head_ip
return 0
