#!/usr/bin/env bash
# What the test suite needs besides Python packages: real clients and servers, installed if missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/apt-install.sh" rclone curl strace
# PostgreSQL (the metadata engine of several nodes; tests/pgserver.py runs throwaway clusters of it) and HAProxy (the
# load balancer in front of the cluster tests' nodes), both from Debian.
bash "$here/apt-install.sh" postgresql haproxy
# Chromium for the dashboard's browser tests (tests/dashboard/), driven by Playwright for Python with this system
# browser (never `playwright install`: no browser download), and a font so that screenshots show legible text.
bash "$here/apt-install.sh" chromium fonts-dejavu-core
# initdb refuses to run as root: as root, tests/pgserver.py runs PostgreSQL as this unprivileged user.
if [ "$(id -u)" = 0 ] && ! id atoll-test >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin atoll-test
fi
# Azurite, the Azure Blob emulator behind the tiering tests: an npm package, so Node and npm first.
if ! command -v azurite-blob >/dev/null 2>&1; then
  command -v npm >/dev/null 2>&1 || bash "$here/apt-install.sh" nodejs npm
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "installing azurite@3.37.0 (npm, global)" >&2
  $SUDO npm install -g --no-audit --no-fund --loglevel=error azurite@3.37.0
fi
# CPU PyTorch for the Distributed Checkpoint round trip (its test and the `dcp` row of `make bench`), pinned. On this
# project's machines pip takes a CPU build of exactly this version from disk; an unpinned `torch` pulls a CUDA build
# of several GB. Only PyPI is reachable from here, so no --index-url to the PyTorch CPU index.
venv_py="$here/../.venv/bin/python"
if [ -x "$venv_py" ] && ! "$venv_py" -c "import torch" >/dev/null 2>&1; then
  echo "installing torch==2.13.0 (CPU) into .venv" >&2
  "$venv_py" -m pip install -q torch==2.13.0
fi
