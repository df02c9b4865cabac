"""tests/pgserver.py itself: a cluster left by a killed test process is stopped and removed by the next one."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pgserver


def test_a_killed_runs_cluster_is_stopped_and_removed():
    parent = "/var/tmp"
    script = ("import sys; sys.path.insert(0, %r); import pgserver; c = pgserver.PgCluster(%r).start(); "
              "print(c.base, flush=True); import time; time.sleep(600)") % (os.path.dirname(pgserver.__file__), parent)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        base = child.stdout.readline().strip()
        assert base.startswith(os.path.join(parent, pgserver.DIR_PREFIX)), base
        postmaster = int(open(os.path.join(base, "data", "postmaster.pid")).read().split("\n", 1)[0])
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert os.path.isdir(base) and _alive(postmaster)  # what a killed pytest leaves behind

    pgserver.remove_leftovers(parent)
    assert not os.path.exists(base)
    deadline = time.monotonic() + 10
    while _alive(postmaster) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(postmaster)
    # This process's own cluster (if it has one) is left alone: its pid is alive.
    assert all(os.path.isdir(p) for p in glob.glob(os.path.join(parent, f"{pgserver.DIR_PREFIX}{os.getpid()}-*")))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
