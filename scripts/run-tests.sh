#!/usr/bin/env bash
# The test suite in three phases, all with the same pytest arguments ("$@"), all always run:
#   1. every test not marked `serial`, spread over TEST_WORKERS pytest-xdist workers (most tests spend much of
#      their time waiting on sockets, sleeps and child processes);
#   2. the `serial` tests (time bounds, p99 latency, memory ceilings) alone, so that no neighbour skews them;
#   3. the client suites again, against three nodes on PostgreSQL behind HAProxy (ATOLL_TEST_CLUSTER=3: the shared
#      fixtures hand out the cluster instead of one server; tests/cluster/clusterutil.py), without the tests about
#      one process (`single_node`). CLUSTER_PATHS picks the suites unless the arguments name tests; by default:
#      S3 API and real clients, Azure Blob, and the tiering suites whose servers come from tierutil.start_server.
#      awscli is left to phase 1: its flows are boto3's requests again, and its 1 GiB copies cost a minute here.
# Fails if any phase fails. A phase that selects no test (arguments naming only another phase's tests) is
# not a failure, unless no phase selects one. Why the split: docs/NOTES.md, "Test suite time".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORKERS=${TEST_WORKERS:-4}
NO_TESTS=5  # pytest's exit status when the selection is empty
CLUSTER_PATHS=${CLUSTER_PATHS:-"tests/s3 tests/clients/test_boto3.py tests/clients/test_boto3_basic.py tests/clients/test_rclone.py tests/clients/test_s3fs.py tests/blob tests/tiering/test_staging.py tests/tiering/test_writethrough.py tests/tiering/test_eviction.py tests/tiering/test_evict_refill.py"}

echo "== phase 1 of 3: tests not marked serial, $WORKERS workers"
"$PY" -m pytest -n "$WORKERS" --dist worksteal -m "not serial" "$@"
parallel=$?
echo "== phase 2 of 3: tests marked serial, one at a time"
"$PY" -m pytest -m serial "$@"
serial=$?

echo "== phase 3 of 3: the client suites against 3 nodes behind HAProxy, $WORKERS workers"
# Arguments that name tests (an existing path, perhaps with ::test) replace CLUSTER_PATHS; options alone (CI's
# `-q -p no:cacheprovider --durations=25`) do not.
paths=$CLUSTER_PATHS
for arg in "$@"; do
    case "$arg" in -*) continue ;; esac
    if [ -e "${arg%%::*}" ]; then paths=""; fi
done
# shellcheck disable=SC2086 # CLUSTER_PATHS is a list of paths
ATOLL_TEST_CLUSTER=3 "$PY" -m pytest -n "$WORKERS" --dist worksteal -m "not serial and not single_node" "$@" $paths
cluster=$?

echo "== exit status: parallel phase $parallel, serial phase $serial, cluster phase $cluster"
if [ "$parallel" = "$NO_TESTS" ] && [ "$serial" = "$NO_TESTS" ] && [ "$cluster" = "$NO_TESTS" ]; then
    exit "$NO_TESTS"
fi
for status in "$parallel" "$serial" "$cluster"; do
    if [ "$status" != 0 ] && [ "$status" != "$NO_TESTS" ]; then
        exit "$status"
    fi
done
exit 0
