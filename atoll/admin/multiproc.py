"""prometheus_client's multiprocess mode for ``atoll serve --workers N``.

Each worker counts in its own memory-mapped files under one directory; the exporter in the primary worker sums
them at scrape time. prometheus_client decides at import whether it counts in files, from
``PROMETHEUS_MULTIPROC_DIR``, so ``prepare_metrics_dir`` runs before anything imports it — this module must
not import it either (``mark_dead`` imports it late, in the supervisor, when it is loaded anyway).
"""

from __future__ import annotations

import os
import shutil
import sys

ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_dir(data_dir: str, node: str | None = None) -> str:
    """``<data_dir>/run/<node>/prometheus``: each node of a cluster sharing the directory has its own."""
    run = os.path.join(os.path.abspath(data_dir), "run")
    return os.path.join(run, node, "prometheus") if node else os.path.join(run, "prometheus")


def prepare_metrics_dir(data_dir: str, node: str | None = None) -> str | None:
    """Create an empty ``<data_dir>/run/<node>/prometheus`` and point prometheus_client at it. Files of an
    earlier run are removed: their counts belong to processes that no longer exist, and a restart starts
    counters at 0."""
    path = metrics_dir(data_dir, node)
    if "prometheus_client" in sys.modules and os.environ.get(ENV) != path:
        # Too late: its counters already live in this process's memory. Say so rather than export zeros.
        print("warning: prometheus_client was imported before atoll serve set up its metrics directory; "
              "/metrics will not include the workers' counters (an import-order bug in atoll.cli)",
              file=sys.stderr, flush=True)
    try:
        for directory in (data_dir, os.path.dirname(os.path.dirname(path)), os.path.dirname(path)):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        shutil.rmtree(path, ignore_errors=True)
        os.mkdir(path, 0o700)
    except OSError:
        return None  # start-up reports the unusable data directory in its own words
    os.environ[ENV] = path
    return path


def mark_dead(pid: int) -> None:
    """Tell prometheus_client a worker is gone (its live gauges stop counting; its counters stay summed)."""
    if not os.environ.get(ENV):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
