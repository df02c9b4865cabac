"""The ``noisy`` row (#7, QoS): a quiet tenant's 4 KiB GET p99 alone, and next to a tenant saturating its limits.

Both run on the ``atoll w2`` server (two workers). Set up once through the CLI on its data directory, with the
server running (as an operator would): tenants ``quiet`` (no limits) and ``noisy`` (NOISY_RPS requests/s,
NOISY_BPS bytes/s), an identity and a bucket each. The quiet tenant is measured like ``head-paced``: wrk, QUIET_CONN
connections with a random pause of mean PACE_MS ms after each response. The noisy tenant is ``clients/noisy.py``
in its own process: NOISY_CONNS connections GETting a 1 MiB object back to back, a short back-off after each 503, so
it takes all its limit allows and is refused the rest of the time. A run of the noisy case fails (ERR) unless the
neighbour got at least 80% of its byte limit and was refused at least once.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from . import common
from .benches import Bench, Case, Row, _fail, _join, _rows, wrk
from .common import MIB, fmt_num
from .peers import AtollPeer

QUIET_CONN = 8
PACE_MS = 10
NOISY_CONNS = 4
BACKOFF_MS = 5
NOISY_RPS = 200
NOISY_BPS = 32 * MIB
NOISY_OBJECT = MIB
ALONE = "atoll w2 quiet alone"
BESIDE = "atoll w2 quiet + noisy"


class NoisySetup:
    """The two tenants on one Atoll peer, made on first use."""

    def __init__(self, peer: AtollPeer) -> None:
        self.peer = peer
        self.urls: dict[str, str] | None = None

    def _cli(self, *args: str) -> str:
        cmd = AtollPeer.base_command(self.peer.s) + [*args, "--data-dir", self.peer.data_dir]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=common.REPO)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:3])}: {(done.stderr or done.stdout).strip()[-300:]}")
        return done.stdout

    def ensure(self) -> dict[str, str]:
        if self.urls is not None:
            return self.urls
        import boto3
        from botocore.config import Config

        urls = {}
        for tenant, key, size in (("quiet", "small.bin", 4096), ("noisy", "big.bin", NOISY_OBJECT)):
            self._cli("tenant", "create", tenant)
            identity = json.loads(self._cli("key", "create", "--name", f"{tenant} loader", "--tenant", tenant,
                                            "--json"))
            client = boto3.client("s3", endpoint_url=self.peer.base, region_name="us-east-1",
                                  aws_access_key_id=identity["access_key_id"],
                                  aws_secret_access_key=identity["secret_access_key"],
                                  config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
            bucket = f"{tenant}-data"
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key=key, Body=os.urandom(size))
            urls[tenant] = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                         ExpiresIn=6 * 3600)
        self._cli("qos", "set", "noisy", "--requests-per-second", str(NOISY_RPS),
                  "--bytes-per-second", str(NOISY_BPS))
        time.sleep(1.1)  # the workers re-read limits once a second
        self.urls = urls
        return urls


def quiet_alone(setup: NoisySetup, s) -> dict:
    try:
        urls = setup.ensure()
    except RuntimeError as exc:
        return _fail(f"setup: {exc}")
    return wrk(setup.peer, urls["quiet"], s.dur, QUIET_CONN, 1, "paced_get.lua", PACE_MS)


def quiet_beside_noisy(setup: NoisySetup, s) -> dict:
    try:
        urls = setup.ensure()
    except RuntimeError as exc:
        return _fail(f"setup: {exc}")
    lead = 0.5
    noisy = subprocess.Popen([common.PY, os.path.join(common.CLIENTS, "noisy.py"), urls["noisy"],
                              str(s.dur + 2 * lead), str(NOISY_CONNS), str(BACKOFF_MS)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=common.REPO)
    try:
        time.sleep(lead)
        result = wrk(setup.peer, urls["quiet"], s.dur, QUIET_CONN, 1, "paced_get.lua", PACE_MS)
        out, err = noisy.communicate(timeout=s.dur + 60)
    finally:
        if noisy.poll() is None:
            noisy.kill()
            noisy.wait()
    if noisy.returncode != 0:
        return _fail(f"noisy client: exit {noisy.returncode}: {err.strip()[-300:]}")
    counts = json.loads(out)
    duration = s.dur + 2 * lead
    result.update(noisy_mibps=counts["bytes"] / duration / MIB, noisy_refused=counts["refused"] / duration,
                  noisy_served=counts["served"] / duration, noisy_cpu=counts["cpu"])
    if result.get("ok") and (counts["bytes"] < 0.8 * NOISY_BPS * duration or not counts["refused"]
                             or counts["other"]):
        return _fail(f"the neighbour did not saturate its limit: {counts}", **result)
    return result


def judge_noisy(b: Bench, summ: dict, _all: dict) -> list[Row]:
    def goal(c):
        if c.label == BESIDE:
            return "≤ 2× alone", lambda m, r: r is not None and r <= 2.0
        return None

    def details(c, m):
        noisy = ""
        if m.get("noisy_mibps") is not None:
            noisy = (f"neighbour {fmt_num(m['noisy_mibps'])} MiB/s of {NOISY_BPS // MIB}, "
                     f"{fmt_num(m['noisy_refused'])} 503/s")
        return _join(f"{fmt_num(m.get('rps'))} req/s", f"p50 {fmt_num(m.get('p50_ms'))} ms", noisy,
                     f"server {fmt_num(m.get('server_cores'))} cores")
    return _rows(b, summ, ALONE, "alone", goal, details)


def build(s, peer: AtollPeer | None, skip: str | None) -> Bench:
    title = (f"4 KiB GET p99 of a quiet tenant ({QUIET_CONN} conn paced ~{PACE_MS} ms, {s.dur}s) alone and next "
             f"to a tenant saturating {NOISY_RPS} req/s, {NOISY_BPS // MIB} MiB/s (1 MiB GETs, {NOISY_CONNS} conn)")
    if peer is None:
        why = skip or "atoll w2 did not start"
        return Bench("noisy", title, "p99_ms", "ms p99", [Case(ALONE, lambda: {}, None, skip=why),
                                                          Case(BESIDE, lambda: {}, None, skip=why)], judge_noisy)
    setup = NoisySetup(peer)
    return Bench("noisy", title, "p99_ms", "ms p99",
                 [Case(ALONE, lambda: quiet_alone(setup, s), peer, "wrk paced_get.lua"),
                  Case(BESIDE, lambda: quiet_beside_noisy(setup, s), peer, "clients/noisy.py beside")], judge_noisy)
