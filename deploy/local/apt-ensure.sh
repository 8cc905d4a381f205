#!/usr/bin/env bash
# Install Debian packages that are not installed yet; do nothing when all are.
#   deploy/local/apt-ensure.sh PACKAGE...
# Runs apt-get update once before installing. Uses sudo when not root.
set -euo pipefail

missing=()
for pkg in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "apt-ensure: need ${missing[*]}, but apt-get is not available; install them by hand" >&2
    exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "apt-ensure: need root or sudo to install ${missing[*]}" >&2
        exit 1
    fi
    sudo=(sudo)
fi

echo "apt-ensure: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Another apt run (unattended upgrades, a second shell) may hold the lock: wait for it.
apt_opts=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -q \
    --no-install-recommends "${missing[@]}"
