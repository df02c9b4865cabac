"""Fair WAN (#7): two tenants' write-back drains share one bandwidth-capped cold link by their WAN weights.

Both buckets link to prefixes of one cold bucket through one FaultProxy (one endpoint, one link); the shares are
measured on the cold side, from what has landed, over the window where both tenants still have a backlog.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from coldside import Cold, ColdSite
from coldstores import FaultProxy, fresh_name
from harness import ATOLL, AtollProcess, stop_cleanly
from tiering.tierutil import start_server

OBJECT = 256 << 10
COUNT = 48  # per tenant and run
LINK = 4 << 20  # bytes/s, the proxy's cap per direction


def _cli(server: AtollProcess, *argv: str) -> str:
    done = subprocess.run([ATOLL, *argv, "--data-dir", server.data_dir], env=server.env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _tenant_bucket(server: AtollProcess, tenant: str, weight: float, cold: Cold) -> tuple[str, object]:
    """A tenant of ``weight``, an admin identity of it, and a write-back bucket it owns linked to ``cold``."""
    _cli(server, "tenant", "create", tenant, "--wan-weight", str(weight))
    key = json.loads(_cli(server, "key", "create", "--name", tenant, "--tenant", tenant, "--json"))
    client = server.client(key["access_key_id"], key["secret_access_key"])
    bucket = fresh_name("fair")
    client.create_bucket(Bucket=bucket)
    _cli(server, "bucket", "link", bucket, cold.url, "--mode", "writeback", "--revalidate", "never",
         *cold.link_options())
    return bucket, client


def _landed(cold: Cold, run: str) -> int:
    return len([k for k in cold.keys() if k.startswith(f"{run}/")])


def _measure(server, proxy, tenants, run: str) -> tuple[float, float]:
    """Backlogs of COUNT objects in both buckets, drained at once through the capped link: (share of the first
    tenant by bytes over the window where both are backlogged, window seconds)."""
    _cli(server, "drain", "pause")
    time.sleep(1.2)  # the drain loop notices within a second
    body = b"x" * OBJECT
    for bucket, client, _cold in tenants:
        for i in range(COUNT):
            client.put_object(Bucket=bucket, Key=f"{run}/{i:04d}", Body=body)
    proxy.bandwidth = LINK
    _cli(server, "drain", "resume")
    samples: list[tuple[float, int, int]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = [_landed(cold, run) for _, _, cold in tenants]
        samples.append((time.monotonic(), *counts))
        if max(counts) >= COUNT:
            break
        time.sleep(0.25)
    else:
        pytest.fail(f"the drain did not finish a backlog within 60 s: {samples[-1]}")
    proxy.bandwidth = None
    # The window: from the first landing to the last sample where both still had objects to drain.
    started = next(s for s in samples if s[1] + s[2] > 0)
    both = [s for s in samples if s[1] < COUNT and s[2] < COUNT]
    ended = both[-1] if both else samples[-1]
    first, second = ended[1] - started[1], ended[2] - started[2]
    assert first + second >= 12, f"too little moved to judge shares: {samples}"
    return first / (first + second), ended[0] - started[0]


@pytest.mark.serial
def test_drains_of_two_tenants_share_the_link_by_weight(moto_s3, tmp_path):
    server = start_server(str(tmp_path), drain_concurrency=8)
    try:
        with ColdSite("s3", moto_s3, "fair") as site:
            proxy = FaultProxy(("127.0.0.1", moto_s3.port))
            site.proxies.append(proxy)
            colds = [Cold("s3", moto_s3, site.container, proxy, f"t{i}") for i in range(2)]
            heavy = fresh_name("heavy")
            light = fresh_name("light")
            tenants = [(*_tenant_bucket(server, heavy, 3, colds[0]), colds[0]),
                       (*_tenant_bucket(server, light, 1, colds[1]), colds[1])]

            share, window = _measure(server, proxy, tenants, "r1")
            print(f"weights 3:1: heavy tenant's share {share:.1%} over {window:.1f} s")
            assert 0.75 * 0.85 <= share <= 0.75 * 1.15, f"3:1 weights gave {share:.1%} over {window:.1f} s"

            _cli(server, "tenant", "set", light, "--wan-weight", "3")
            share, window = _measure(server, proxy, tenants, "r2")
            print(f"weights 3:3: heavy tenant's share {share:.1%} over {window:.1f} s")
            assert 0.5 * 0.85 <= share <= 0.5 * 1.15, f"1:1 weights gave {share:.1%} over {window:.1f} s"
    finally:
        stop_cleanly(server)
