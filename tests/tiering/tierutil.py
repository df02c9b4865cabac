"""Helpers for the tiering tests: an Atoll server whose buckets are linked to cold prefixes (``coldside.Cold``,
each behind its own counting FaultProxy) with the ``atoll bucket link`` CLI, as an operator would do it, and
read-only looks at the server's metadata.
"""

from __future__ import annotations

import os
import secrets
import subprocess

from coldside import COLD_KINDS, Cold, ColdSite, emulator, pattern  # noqa: F401 - the tiering tests import them here
from clusterutil import cluster_size, start_front
from coldstores import fresh_name
from harness import ATOLL, AtollProcess, meta_query, stop_cleanly
from harness import first_answer_client as client  # noqa: F401 - the tiering tests' name for it

BLOCK = 64 << 10  # the smallest fill block the config accepts: many blocks from small objects


def tier_env(**settings: object) -> dict[str, str]:
    """ATOLL_* environment for a tiered server: small fill blocks, plus ``settings`` by config name
    (``warm_capacity=4 << 20`` -> ATOLL_WARM_CAPACITY)."""
    # No admin API: these tests do not use it, and a server starts faster without it.
    env = {"ATOLL_FILL_BLOCK_SIZE": str(BLOCK), "ATOLL_ADMIN_ADDRESS": "off"}
    env.update({f"ATOLL_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def start_server(workdir: str, **settings: object) -> AtollProcess:
    if cluster_size():  # ATOLL_TEST_CLUSTER=N: N nodes behind HAProxy instead (tests/cluster/clusterutil.py)
        return start_front(os.path.join(workdir, f"tier-{secrets.token_hex(4)}"), **tier_env(**settings))
    server = AtollProcess(data_dir=os.path.join(workdir, f"tier-{secrets.token_hex(4)}"),
                          extra_env=tier_env(**settings))
    return server.start()


def serving(workdir: str, **settings: object):
    """A fixture's tiered server (see ``start_server``): ``yield from serving(...)``; it must stop cleanly."""
    server = start_server(workdir, **settings)
    yield server
    stop_cleanly(server)


def link_buckets(server: AtollProcess, specs: list[tuple]) -> list[str]:
    """For each (cold, mode, revalidate[, other_server]): create a bucket on ``server`` (or ``other_server``)
    over S3 and link it to ``cold`` with the CLI. The links are made concurrently, as each CLI run costs a
    Python start-up. Returns the bucket names; the running servers see the links at once. Proxy counters are
    zeroed (the CLI's link check lists the cold store once)."""
    names = [fresh_name("warm") for _ in specs]
    procs = []
    for name, (cold, mode, revalidate, *on) in zip(names, specs):
        target = on[0] if on else server
        target.client().create_bucket(Bucket=name)
        argv = [ATOLL, "bucket", "link", name, cold.url, "--mode", mode, "--revalidate", revalidate,
                *cold.link_options(), "--data-dir", target.data_dir]
        procs.append(subprocess.Popen(argv, env=target.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    # No wait for the server's link cache (about a second): it holds only buckets the server has looked at,
    # and nothing has asked about these new buckets yet.
    for cold, *_ in specs:
        cold.proxy.reset_counts()
    return names


def link_bucket(server: AtollProcess, cold: Cold, mode: str = "cache", revalidate: str = "never") -> str:
    return link_buckets(server, [(cold, mode, revalidate)])[0]


# a read-only look at the server's metadata while it runs -------------------------------------------------------

def resident_bytes(server: AtollProcess) -> int:
    rows = meta_query(server, "SELECT value FROM counters WHERE name = 'resident_bytes'")
    return int(rows[0][0]) if rows else 0


def residency(server: AtollProcess, bucket: str, key: str) -> str | None:
    rows = meta_query(server, "SELECT residency FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
    return {0: "absent", 1: "partial", 2: "resident"}[rows[0][0]] if rows else None
