"""Scenario 3 of the WAN faults: reads of objects that are not warm (misses), while the cold store is cut off,
fail fast with a clear, retryable answer, and work again once the link heals.

The link is cut three ways in turn: black-holed (connections accepted, never answered: a real partition),
refused (ECONNREFUSED: a dead host) and stalled (connections accepted, bytes held). For each, misses are sent
one after the other (the first ``breaker_failures`` find the link down, OPEN_MISSES more follow), alternately for
keys the index already knows (the fill's ranged GET is the cold call) and keys it has never seen (the lookup's
HEAD is). Asserted, per miss:

* the answer is 503 ServiceUnavailable with a Retry-After, never a 5xx of another kind, a hang or a 200;
* the first misses, which find out that the link is down, wait at most the first-byte deadline
  (ATOLL_COLD_FIRST_BYTE_TIMEOUT = 1 s here) plus 0.5 s of slack for a loaded 2-core machine;
* once ``breaker_failures`` (3) misses have failed, the breaker is open: every later miss answers in < 1 s
  (and the median in < 50 ms: a 503 from memory, not a timeout);

and after ``heal()``, a miss succeeds within the breaker's longest cooldown (2 s here) plus a probe.
"""

from __future__ import annotations

import itertools
import time

import pytest

from wanutil import (COLD_KINDS, FAST_FAILURE_ENV, KiB, link, no_retry_client, percentile, sha256, start_server,
                     stop_server, timed_get, wait_until)

pytestmark = [pytest.mark.timeout(150), pytest.mark.serial]  # asserts latency and time bounds: no neighbours

FIRST_BYTE = float(FAST_FAILURE_ENV["ATOLL_COLD_FIRST_BYTE_TIMEOUT"])
MAX_COOLDOWN = float(FAST_FAILURE_ENV["ATOLL_BREAKER_MAX_COOLDOWN"])
BREAKER_FAILURES = 3  # the default of ATOLL_BREAKER_FAILURES
OPEN_MISSES = 30  # misses per fault once the breaker is open (it opens after ~3 s of blackhole)
SLACK = 0.5  # seconds a loaded 2-core machine may add to a deadline


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_server(str(tmp_path_factory.mktemp("wan-misses")), FAST_FAILURE_ENV)
    yield proc
    stop_server(proc)


@pytest.mark.parametrize("kind", COLD_KINDS)
def test_misses_during_a_partition_fail_fast_and_recover(server, cold_sites, kind):
    cold = cold_sites.make(kind)
    bodies = {f"obj-{i:03d}": f"{cold.prefix}:{i}:".encode() * (8 * KiB // 16) for i in range(60)}
    for key, body in bodies.items():
        cold.put(key, body)
    bucket = link(server, cold, "cache")
    s3 = no_retry_client(server)
    urls = {key: s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600)
            for key in bodies}
    keys = iter(bodies)
    # Half of the keys get known to the index now (a HEAD looks them up), so their misses go straight to a fill.
    known = [next(keys) for _ in range(20)]
    for key in known:
        s3.head_object(Bucket=bucket, Key=key)
    unknown = list(keys)
    healthy = timed_get(urls[unknown.pop()])
    assert healthy.status == 200, healthy.body

    # Keys that failed stay misses (a failed lookup or block is not remembered), so they are used again; a key
    # read after a heal is warm from then on and leaves the rotation.
    rotation = list(itertools.chain.from_iterable(zip(known, unknown)))
    turn = itertools.count()

    def next_miss() -> str:
        return rotation[next(turn) % len(rotation)]

    for fault in ("blackhole", "refuse", "stall"):
        getattr(cold.proxy, fault)()
        if fault == "refuse":
            cold.proxy.reset_all()  # as a host that went away: its open connections die too
        answers = []
        while len(answers) < BREAKER_FAILURES + OPEN_MISSES:
            key = next_miss()
            answers.append((key, timed_get(urls[key])))
            time.sleep(0.01)  # a steady stream of misses, not a busy loop on a shared 2-core machine
        cold.proxy.heal()
        healed = time.monotonic()

        for key, answer in answers:
            assert answer.status == 503, (fault, key, answer.status, answer.body[:300])
            assert b"<Code>ServiceUnavailable</Code>" in answer.body, (fault, answer.body[:300])
            assert int(answer.headers["retry-after"]) >= 1, (fault, answer.headers)
        seconds = [answer.seconds for _, answer in answers]
        finding, open_ = seconds[:BREAKER_FAILURES], seconds[BREAKER_FAILURES:]
        summary = (f"{kind} {fault}: first {BREAKER_FAILURES} misses {', '.join(f'{s:.3f}' for s in finding)} s; "
                   f"then p50 {percentile(open_, 50) * 1000:.1f} ms, p99 {percentile(open_, 99) * 1000:.1f} ms, "
                   f"max {max(open_) * 1000:.1f} ms; over 0.2 s (seconds, key known): "
                   f"{[(round(a.seconds, 3), k in known) for k, a in answers[BREAKER_FAILURES:] if a.seconds > 0.2]}")
        print(summary)
        assert max(finding) <= FIRST_BYTE + SLACK, summary
        assert max(open_) < 1.0, summary
        assert percentile(open_, 50) < 0.05, summary

        # Healed: the next misses succeed once a probe has found the link back (the breaker's cooldown is
        # at most MAX_COOLDOWN here, and the health loop checks every 0.5 s).
        def recovered() -> bool:
            key = next_miss()
            answer = timed_get(urls[key])
            if answer.status != 200:
                return False
            rotation.remove(key)
            assert sha256(answer.body) == sha256(bodies[key]), key
            return True

        wait_until(recovered, MAX_COOLDOWN + FIRST_BYTE + 2 * SLACK + 1.0, f"{fault}: a miss to succeed after heal",
                   interval=0.1)
        print(f"{kind} {fault}: misses succeed again {time.monotonic() - healed:.2f} s after heal")
    assert "Traceback" not in server.log_text()
