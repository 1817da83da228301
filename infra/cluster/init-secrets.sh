#!/bin/sh
# Make the per-cluster settings and secrets that `ray up infra/cluster/{aws,gcp}.yaml` copies to
# every node (file_mounts). Run it once, on the machine you run `ray up` from:
#
#   sh infra/cluster/init-secrets.sh aws --artifacts s3://my-bucket/mlflow [--shared-fs HOST:/EXPORT]
#   sh infra/cluster/init-secrets.sh gcp --artifacts gs://my-bucket/mlflow [--shared-fs HOST:/EXPORT]
#
# It writes, into ~/.attnlab/<cloud>/ (mode 700, files 600):
#   auth_token   the Ray token of the cluster (RAY_AUTH_MODE=token); `ray job submit` from this
#                machine reads it through RAY_AUTH_TOKEN_PATH
#   secrets.env  the MLflow basic-auth admin (also the tracking client's login) and the server's
#                Flask secret key, all random
#   cluster.env  non-secret settings: where MLflow puts artifacts, the NFS export mounted at /data
#
# Existing secrets are kept (a second run only rewrites cluster.env). --rotate-token makes a new
# Ray token (`ray up` again hands it to every node). The MLflow password cannot be rotated here:
# the server keeps the admin user it created on its first start; change the password in MLflow
# (UI or its users API), then edit both password lines of secrets.env and `ray up` again.
# Nothing here is ever written into the repository.
set -eu

usage() {
  echo "usage: sh infra/cluster/init-secrets.sh aws|gcp --artifacts URI [--shared-fs HOST:/EXPORT] [--shared-fs-opts OPTS] [--rotate-token]" >&2
  exit 2
}

[ $# -ge 1 ] || usage
cloud=$1; shift
case $cloud in aws|gcp) ;; *) usage ;; esac
artifacts=""; shared_fs=""; shared_opts=""; rotate=0
while [ $# -gt 0 ]; do
  case $1 in
    --artifacts) [ $# -ge 2 ] || usage; artifacts=$2; shift 2 ;;
    --shared-fs) [ $# -ge 2 ] || usage; shared_fs=$2; shift 2 ;;
    --shared-fs-opts) [ $# -ge 2 ] || usage; shared_opts=$2; shift 2 ;;
    --rotate-token) rotate=1; shift ;;
    *) usage ;;
  esac
done
case $cloud:$artifacts in
  aws:s3://?*|gcp:gs://?*) ;;
  *) echo "init-secrets: --artifacts must be an s3://… URI for aws, gs://… for gcp (got '$artifacts')" >&2; exit 2 ;;
esac
if [ -z "$shared_opts" ]; then
  # EFS/Filestore-friendly NFS options; any NFSv4 server works with them.
  shared_opts="nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
fi

dir="$HOME/.attnlab/$cloud"
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

rand() {  # $1 bytes of /dev/urandom as hex
  od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}

if [ "$rotate" = 1 ] || [ ! -s "$dir/auth_token" ]; then
  # Ray's own tokens are 32 random bytes as hex (ray get-auth-token --generate).
  rand 32 > "$dir/auth_token"
  echo "init-secrets: new Ray token in $dir/auth_token"
fi

if [ ! -s "$dir/secrets.env" ]; then
  password=$(rand 24)
  cat > "$dir/secrets.env" <<EOF
# attnlab cluster secrets (made by infra/cluster/init-secrets.sh). Keep this file private.
# The MLflow server creates its admin user from these on first start (basic-auth app).
MLFLOW_AUTH_ADMIN_USERNAME=admin
MLFLOW_AUTH_ADMIN_PASSWORD=$password
# The grid's MLflow client logs in with the same account.
MLFLOW_TRACKING_USERNAME=admin
MLFLOW_TRACKING_PASSWORD=$password
MLFLOW_FLASK_SERVER_SECRET_KEY=$(rand 32)
EOF
  echo "init-secrets: new MLflow admin password in $dir/secrets.env"
fi

cat > "$dir/cluster.env" <<EOF
# attnlab cluster settings (made by infra/cluster/init-secrets.sh); not secret.
ATTNLAB_MLFLOW_ARTIFACTS=$artifacts
ATTNLAB_SHARED_FS=$shared_fs
ATTNLAB_SHARED_FS_OPTS=$shared_opts
EOF
chmod 600 "$dir/auth_token" "$dir/secrets.env" "$dir/cluster.env"
echo "init-secrets: settings in $dir/cluster.env (artifacts $artifacts${shared_fs:+, /data from $shared_fs})"
