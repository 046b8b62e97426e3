#!/bin/sh
# Installs everything ketch and its tests need on a fresh Debian 12 / Ubuntu machine:
# Debian packages (the kernel-facing tools and the peers the tests compare against)
# and a virtual environment in ./.venv built on Debian's /usr/bin/python3
# (it starts in ~10 ms, against ~100 ms for a pyenv python), with ketch installed.
# Idempotent; run as root.
set -eu
cd "$(dirname "$0")/.."

need_root() { [ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (ketch creates namespaces and mounts)" >&2; exit 1; }; }
need_root

PKGS="python3 python3-venv python3-pip ca-certificates openssl zstd tar mmdebstrap
      runc crun podman containerd umoci skopeo docker-registry uidmap iproute2 util-linux
      tini containernetworking-plugins iptables"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup.sh: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
# Bytecode now, as a regular install would: start-up is most of a short container's
# life, and PYTHONDONTWRITEBYTECODE (set on some machines) would otherwise make every
# run compile ketch's sources again.
.venv/bin/python -m compileall -q src >/dev/null
# `ketch` on PATH for the README's commands.
ln -sf "$(pwd)/.venv/bin/ketch" /usr/local/bin/ketch
echo "setup.sh: ready: $(command -v ketch)"
