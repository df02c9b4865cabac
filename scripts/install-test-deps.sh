#!/usr/bin/env bash
# What the test suite needs besides Python packages: real clients and servers, installed if missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/apt-install.sh" rclone curl strace
