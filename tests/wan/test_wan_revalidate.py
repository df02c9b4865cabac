"""Revalidating links during a partition: warm copies keep being served, marked stale, and are revalidated
once the link is back.

Two buckets are linked to the same cold prefix (so the same cold endpoint and breaker): one with
``--revalidate always``, one with ``--revalidate ttl=2``. An object is read once through each (warm), then the
cold store is black-holed and the object is replaced in the cold store directly (Atoll cannot know).

Asserted during the partition: every GET answers 200 with the warm bytes and the headers
``Warning: 111 - "Revalidation Failed"`` and ``x-atoll-stale: cold-store-unreachable``; the first one waits at
most the first-byte deadline (1 s here) plus slack, and once the breaker is open they answer at once (median
< 50 ms). After the heal, both buckets serve the new bytes without the stale headers (the failed revalidations
were not recorded as revalidations, so the ttl bucket asks again at once).
"""

from __future__ import annotations

import os
import time

import pytest

from wanutil import (COLD_KINDS, FAST_FAILURE_ENV, KiB, link, no_retry_client, percentile, sha256, start_server,
                     stop_server, timed_get, wait_until)

pytestmark = [pytest.mark.timeout(120), pytest.mark.serial]  # asserts latency and time bounds: no neighbours

FIRST_BYTE = float(FAST_FAILURE_ENV["ATOLL_COLD_FIRST_BYTE_TIMEOUT"])
SLACK = 0.5
PARTITION_SECONDS = 4.0
TTL = 2
STALE = {"warning": '111 - "Revalidation Failed"', "x-atoll-stale": "cold-store-unreachable"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_server(str(tmp_path_factory.mktemp("wan-revalidate")), FAST_FAILURE_ENV)
    yield proc
    stop_server(proc)


def is_stale(answer) -> bool:
    return all(answer.headers.get(name) == value for name, value in STALE.items())


@pytest.mark.parametrize("kind", COLD_KINDS)
def test_revalidating_links_serve_stale_during_a_partition_and_revalidate_after(server, cold_sites, kind):
    cold = cold_sites.make(kind)
    old, new = os.urandom(64 * KiB), os.urandom(64 * KiB)
    cold.put("doc", old)
    always = link(server, cold, "cache", revalidate="always")
    ttl = link(server, cold, "cache", revalidate=f"ttl={TTL}")
    s3 = no_retry_client(server)
    urls = {bucket: s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "doc"})
            for bucket in (always, ttl)}
    for url in urls.values():
        first = timed_get(url)
        assert first.status == 200 and first.body == old and not is_stale(first), first.headers

    cold.proxy.blackhole()
    cold.put("doc", new)  # directly: the cold store changes while Atoll cannot see it
    started = time.monotonic()
    answers = []
    while time.monotonic() - started < PARTITION_SECONDS:
        answers.append(timed_get(urls[always]))
        time.sleep(0.02)
    time.sleep(max(0.0, TTL - (time.monotonic() - started)))
    answers.append(timed_get(urls[ttl]))  # its TTL has run out: it must ask, and cannot

    seconds = [a.seconds for a in answers]
    summary = (f"{kind}: {len(answers)} stale reads, first {seconds[0]:.3f} s, then p50 "
               f"{percentile(seconds[3:], 50) * 1000:.1f} ms, max {max(seconds[3:]) * 1000:.1f} ms")
    print(summary)
    for answer in answers:
        assert answer.status == 200 and sha256(answer.body) == sha256(old), (answer.status, answer.body[:200])
        assert is_stale(answer), answer.headers
    assert max(seconds) <= FIRST_BYTE + SLACK, summary
    assert percentile(seconds[3:], 50) < 0.05, summary  # the breaker opened after 3 failed revalidations

    cold.proxy.heal()
    healed = time.monotonic()

    def fresh(url: str) -> bool:
        answer = timed_get(url)
        assert answer.status == 200, answer.body[:300]
        return not is_stale(answer) and sha256(answer.body) == sha256(new)

    wait_until(lambda: fresh(urls[always]), 10, "the always bucket to revalidate after the heal", interval=0.1)
    print(f"{kind}: revalidated {time.monotonic() - healed:.2f} s after the heal")
    assert fresh(urls[ttl])
