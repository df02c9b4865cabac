"""DeleteObjects of 1,000 keys (#8): one request, one metadata transaction.

With boto3 against a real server: 1,000 small objects are deleted by one call (Quiet and not), after which none
can be read or listed and the bucket's usage counters are back where they were. Then SIGKILL lands at random
moments in a stream of 1,000-key DeleteObjects calls: after each restart every batch is either wholly present or
wholly gone — what "one transaction" means to a user — and every acknowledged batch is gone.
"""

from __future__ import annotations

import random
import threading
import time

import botocore.exceptions
import pytest

from harness import AtollProcess, first_answer_client, meta_query
from packutil import KiB, assert_fsck_clean, put_many

pytestmark = pytest.mark.timeout(180)

BATCH = 1000  # S3's limit per DeleteObjects
SEED = 808
KILL_ROUNDS = 4
BATCHES_IN_FLIGHT = 2  # batches each kill round streams deletes of


def body_of(key: str) -> bytes:
    """A small body (0 to 4 KiB) derived from the key."""
    rng = random.Random(key)
    return rng.randbytes(rng.choice([0, 1, 100, 1000, 4 * KiB]))


def put_all(server: AtollProcess, bucket: str, keys: list[str]) -> None:
    put_many(server, bucket, {k: body_of(k) for k in keys})


def usage(server: AtollProcess, bucket: str) -> tuple[int, int]:
    """(bytes, objects) of the bucket as its quota counters say."""
    rows = meta_query(server, "SELECT bytes, objects FROM usage WHERE bucket = ?", (bucket,))
    return tuple(rows[0]) if rows else (0, 0)


def listed_keys(client, bucket: str, prefix: str = "") -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "verbose"])
def test_delete_objects_of_1000_keys(atoll, bucket, quiet):
    s3 = atoll.client()
    survivor = "survivor/kept"
    s3.put_object(Bucket=bucket, Key=survivor, Body=b"stays")
    before = usage(atoll, bucket)
    # Keys of all shapes: nested, unicode, XML-special characters, a long one.
    keys = [f"batch/{i:04d}" for i in range(BATCH - 4)] + ["batch/ünïcødé", "batch/a&b<c>\"d'", "batch/sp ace",
                                                          "batch/" + "x" * 900]
    put_all(atoll, bucket, keys)
    assert usage(atoll, bucket) == (before[0] + sum(len(body_of(k)) for k in keys), before[1] + BATCH)
    assert len(listed_keys(s3, bucket, "batch/")) == BATCH

    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": quiet})
    assert not answer.get("Errors"), answer["Errors"][:5]
    if quiet:
        assert not answer.get("Deleted"), answer["Deleted"][:5]
    else:
        assert sorted(d["Key"] for d in answer["Deleted"]) == sorted(keys)

    assert listed_keys(s3, bucket, "batch/") == set()
    assert listed_keys(s3, bucket) == {survivor}
    assert usage(atoll, bucket) == before
    for key in random.Random(SEED).sample(keys, 20) + keys[-4:]:
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            s3.head_object(Bucket=bucket, Key=key)
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert s3.get_object(Bucket=bucket, Key=survivor)["Body"].read() == b"stays"

    # Deleting them again (keys that no longer exist) is no error: S3 reports each as deleted.
    again = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[:BATCH]]})
    assert len(again["Deleted"]) == BATCH and not again.get("Errors")
    assert usage(atoll, bucket) == before


class DeleteStream(threading.Thread):
    """Sends DeleteObjects of one batch after another; records which were acknowledged, in how long, and which
    one the kill cut off."""

    def __init__(self, server: AtollProcess, bucket: str, batches: list[int], keys_of) -> None:
        super().__init__(daemon=True, name="delete-stream")
        # No retries: a retried DeleteObjects would blur which attempt the answer belongs to.
        self.client = first_answer_client(server)
        self.bucket = bucket
        self.batches = batches
        self.keys_of = keys_of
        self.acked: list[int] = []
        self.seconds: list[float] = []
        self.in_flight: int | None = None
        self.failure: Exception | None = None
        self.killed = threading.Event()

    def run(self) -> None:
        for batch in self.batches:
            self.in_flight = batch
            objects = [{"Key": k} for k in self.keys_of(batch)]
            started = time.monotonic()
            try:
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
            except Exception as exc:  # noqa: BLE001 - a connection failure is what a kill looks like
                if not self.killed.is_set():
                    self.failure = exc
                return
            if answer.get("Errors"):
                self.failure = AssertionError(f"batch {batch}: {answer['Errors'][:3]}")
                return
            self.seconds.append(time.monotonic() - started)
            self.acked.append(batch)
            self.in_flight = None


def test_kill9_during_a_stream_of_1000_key_deletes_leaves_each_batch_whole(new_server):
    server = new_server()
    bucket = "batches"
    server.client().create_bucket(Bucket=bucket)
    rng = random.Random(SEED)

    def keys_of(batch: int) -> list[str]:
        return [f"b{batch:03d}/{i:04d}" for i in range(BATCH)]

    present: list[int] = []  # batches wholly present, in the order they are deleted
    made = 0
    # A first guess of how long a 1,000-key DeleteObjects takes: twice one of keys that do not exist (about what
    # deleting existing ones costs here), refined by each round's acknowledged batches.
    started = time.monotonic()
    server.client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys_of(999)]})
    batch_seconds = 2 * (time.monotonic() - started)
    cut_off = 0
    rounds: list[tuple[int, bool]] = []  # (batches acknowledged, whether one was cut off) per round
    for round_number in range(KILL_ROUNDS):
        label = f"round {round_number} (seed {SEED})"
        while len(present) < BATCHES_IN_FLIGHT:  # batches a kill spared are deleted by the next round
            put_all(server, bucket, keys_of(made))
            present.append(made)
            made += 1
        stream = DeleteStream(server, bucket, present, keys_of)
        stream.start()
        time.sleep(rng.uniform(0.3, 0.9 * BATCHES_IN_FLIGHT) * batch_seconds)
        stream.killed.set()
        server.kill()
        stream.join(30)
        assert not stream.is_alive(), f"{label}: the delete stream hung after the kill"
        assert stream.failure is None, f"{label}: {stream.failure!r}"
        cut_off += stream.in_flight is not None
        if stream.seconds:
            batch_seconds = sorted(stream.seconds)[len(stream.seconds) // 2]
        else:  # killed inside the first batch: the next kill comes a little later
            batch_seconds *= 1.5
        rounds.append((len(stream.acked), stream.in_flight is not None))

        server.start()
        s3 = server.client()
        listed = listed_keys(s3, bucket)
        for batch in present:
            left = listed & set(keys_of(batch))
            assert not left or len(left) == BATCH, \
                f"{label}: batch {batch} is torn: {len(left)} of {BATCH} keys left after the restart"
            if batch in stream.acked:
                assert not left, f"{label}: acknowledged batch {batch} came back ({len(left)} keys)"
            if batch not in stream.acked and batch != stream.in_flight:
                assert len(left) == BATCH, f"{label}: batch {batch}, never sent, lost keys"
        # Reads agree with the listing, and the usage counters with both.
        for batch in present:
            key = rng.choice(keys_of(batch))
            try:
                s3.head_object(Bucket=bucket, Key=key)
                assert key in listed, f"{label}: {key} can be read but is not listed"
            except botocore.exceptions.ClientError as exc:
                assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404, exc.response
                assert key not in listed, f"{label}: {key} is listed but cannot be read"
        assert usage(server, bucket) == (sum(len(body_of(k)) for k in listed), len(listed)), label
        present = [b for b in present if set(keys_of(b)) <= listed]
    # The kills must have cut requests off, or all-or-nothing was never put to the test.
    assert cut_off >= 2, f"only {cut_off} of {KILL_ROUNDS} kills interrupted a DeleteObjects"
    assert_fsck_clean(server, label="after the kills:")
    print(f"{KILL_ROUNDS} kills, {made} batches; per round (acknowledged, cut off): {rounds}; "
          f"a 1,000-key DeleteObjects took {batch_seconds:.2f}s")
