"""Warm-capacity reservations and caps (#7): other tenants' reads never evict a tenant below its reservation, and
a tenant above its cap is evicted down to it (its own fills make room from its own data)."""

from __future__ import annotations

import json
import subprocess
import time

from coldside import ColdSite, pattern
from coldstores import fresh_name
from harness import ATOLL, AtollProcess, meta_query, stop_cleanly, wait_until
from tiering.tierutil import start_server

SIZE = 128 << 10
CAPACITY = 4 << 20
RESERVED = 1 << 20
CAP = 1 << 20


def _cli(server: AtollProcess, *argv: str) -> str:
    done = subprocess.run([ATOLL, *argv, "--data-dir", server.data_dir], env=server.env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _warm(server: AtollProcess, bucket: str) -> int:
    """The bucket's warm bytes from its rows, checked against the counter that eviction reads."""
    actual = meta_query(server, "SELECT coalesce(sum(size), 0) FROM objects WHERE bucket = ? AND residency > 0",
                        (bucket,))[0][0]
    counted = meta_query(server, "SELECT coalesce(sum(bytes), 0) FROM warm WHERE bucket = ?", (bucket,))[0][0]
    assert counted == actual, f"warm counter {counted} != rows {actual} for {bucket}"
    return actual


def test_reservation_holds_and_cap_evicts(moto_s3, tmp_path):
    server = start_server(str(tmp_path), warm_capacity=CAPACITY)
    try:
        with ColdSite("s3", moto_s3, "resv") as site:
            names = {role: fresh_name(role) for role in ("keeper", "filler", "capped")}
            _cli(server, "tenant", "create", names["keeper"], "--warm-reserved", str(RESERVED))
            _cli(server, "tenant", "create", names["filler"])
            _cli(server, "tenant", "create", names["capped"], "--warm-cap", str(CAP))
            buckets, clients = {}, {}
            for role, tenant in names.items():
                key = json.loads(_cli(server, "key", "create", "--name", role, "--tenant", tenant, "--json"))
                clients[role] = server.client(key["access_key_id"], key["secret_access_key"])
                cold = site.cold()
                count = {"keeper": 8, "filler": 40, "capped": 16}[role]
                for i in range(count):
                    cold.put(f"o{i:03d}", pattern(SIZE, f"{role}{i}"))
                buckets[role] = fresh_name(role)
                clients[role].create_bucket(Bucket=buckets[role])
                _cli(server, "bucket", "link", buckets[role], cold.url, "--mode", "cache", "--revalidate", "never",
                     *cold.link_options())

            def read_all(role: str, count: int) -> None:
                for i in range(count):
                    got = clients[role].get_object(Bucket=buckets[role], Key=f"o{i:03d}")["Body"].read()
                    assert got == pattern(SIZE, f"{role}{i}")

            read_all("keeper", 8)  # exactly its reservation
            wait_until(lambda: _warm(server, buckets["keeper"]) == RESERVED, 10, "the keeper's reads are warm")

            # The filler reads 1.25x the tier: eviction runs on every fill and every round.
            read_all("filler", 40)
            time.sleep(2.5)  # background rounds too
            assert _warm(server, buckets["keeper"]) >= RESERVED, "another tenant's reads evicted a reservation"
            assert _warm(server, buckets["filler"]) > 0
            total = meta_query(server, "SELECT value FROM counters WHERE name = 'resident_bytes'")[0][0]
            assert total <= CAPACITY

            # The capped tenant reads twice its cap: its fills make room from its own data, so it holds at most
            # its cap (and the reservation still holds).
            read_all("capped", 16)
            assert _warm(server, buckets["capped"]) <= CAP, "a capped tenant's fills went past its cap"
            assert _warm(server, buckets["capped"]) > 0
            assert _warm(server, buckets["keeper"]) >= RESERVED
    finally:
        stop_cleanly(server)
