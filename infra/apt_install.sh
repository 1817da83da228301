#!/bin/sh
# Install the Debian packages given after the first argument (a label for messages) that are
# not installed yet, with apt-get (through sudo when not root). Used by the Makefile's
# install-ffcv and install-services targets.
#   sh infra/apt_install.sh LABEL PACKAGE...
set -e
label=$1
shift
missing=""
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
[ -n "$missing" ] || exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$label: apt-get not found; install$missing by hand" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "$label: apt-get install$missing"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
