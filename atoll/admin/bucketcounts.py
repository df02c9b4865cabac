"""Per-bucket counts summed over every worker (warm hits, misses, write-through writes journaled during a
partition), read from prometheus_client's counters: under ``atoll serve`` each worker counts in its files in
``PROMETHEUS_MULTIPROC_DIR`` (see atoll.admin.multiproc), so the sum is exact and costs no hook in the read path.
Counts start at 0 with the server. Reading the files blocks: call ``collect_families`` off the event loop.
"""

from __future__ import annotations

import os
from collections import defaultdict

from prometheus_client import REGISTRY
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from atoll.admin.multiproc import ENV as MULTIPROC_ENV

# counter family -> field of the bucket's counts
FIELDS = {"atoll_tier_hits": "hits", "atoll_tier_misses": "misses",
          "atoll_writethrough_degraded_writes": "writethrough_degraded"}


def collect_families() -> list[Metric]:
    """Every counter and histogram of this server: summed over the workers' files under ``atoll serve``, this
    process's own registry otherwise (a server started without it, or a test calling run_worker)."""
    if os.environ.get(MULTIPROC_ENV):
        return list(MultiProcessCollector(None).collect())
    return list(REGISTRY.collect())


def bucket_counts(families: list[Metric]) -> dict[str, dict[str, int]]:
    """bucket -> {hits, misses, writethrough_degraded} (buckets never counted are absent)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS.values(), 0))
    for family in families:
        field = FIELDS.get(family.name)
        if field is None:
            continue
        for sample in family.samples:
            if sample.name == family.name + "_total" and "bucket" in sample.labels:
                counts[sample.labels["bucket"]][field] += int(sample.value)
    return dict(counts)


def hit_ratio(counts: dict[str, int] | None) -> float | None:
    """hits / (hits + misses) since the server started; None before the first read."""
    if not counts:
        return None
    reads = counts["hits"] + counts["misses"]
    return round(counts["hits"] / reads, 4) if reads else None
