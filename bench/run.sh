#!/usr/bin/env bash
# Atoll benchmark entry point (`make bench`). Installs nginx-light, wrk and curl when missing, then runs
# bench/main.py with the repo's venv. Knobs (env): REPS ONLY TARGETS QUICK DUR CONN ATOLL_BENCH_DIR LIST_KEYS ...
# (see bench/README.md). QUICK=1 is a < 2 minute smoke run with small sizes.
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
if [ ! -x "$py" ]; then
  echo "[bench] no Python at $py (create the venv first, e.g. python3 -m venv .venv && .venv/bin/pip install -e '.[test]')" >&2
  exit 2
fi
cd "$repo"
exec "$py" -m bench.main "$@"
