#!/usr/bin/env bash
# Atoll benchmark entry point (`make bench`). Installs nginx-light, wrk and curl (and Azurite, for the tiering
# rows) when missing, then runs bench/main.py with the repo's venv. Knobs (env): REPS ONLY TARGETS QUICK DUR CONN
# ATOLL_BENCH_DIR LIST_KEYS ... (see bench/README.md). QUICK=1 is a < 2 minute smoke run with small sizes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
py="${BENCH_PYTHON:-$repo/.venv/bin/python}"

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[bench] installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # the Debian package may start a system nginx on :80; the benchmark runs its own, so stop that one
  if [[ " ${missing[*]} " == *" nginx-light "* ]] && [ -f /run/nginx.pid ]; then
    kill "$(cat /run/nginx.pid)" 2>/dev/null || true
  fi
fi
# Azurite (npm), the cold store of the tiering rows (cold1, stage): only when those rows are selected
tiering=1
if [ -n "${ONLY:-}" ] && ! [[ ",${ONLY}," =~ ,(cold1|cold1-warm|stage|stage-small|stage-large), ]]; then tiering=0; fi
if [ "$tiering" = 1 ] && ! command -v azurite-blob >/dev/null 2>&1; then
  command -v npm >/dev/null 2>&1 || bash "$repo/scripts/apt-install.sh" nodejs npm
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "[bench] installing azurite@3.37.0 (npm, global)"
  $SUDO npm install -g --no-audit --no-fund --loglevel=error azurite@3.37.0
fi
if [ ! -x "$py" ]; then
  echo "[bench] no Python at $py (create the venv first, e.g. python3 -m venv .venv && .venv/bin/pip install -e '.[test]')" >&2
  exit 2
fi
cd "$repo"
exec "$py" -m bench.main "$@"
