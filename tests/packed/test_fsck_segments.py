"""`atoll fsck` on the packed store (#8): it finds a segment file gone (its objects' bytes are lost), a segment
file nobody registered, a record cut short, and live counters that disagree with the objects, and repairs what
can be repaired — offline, against a real data directory a server wrote."""

from __future__ import annotations

import os
import secrets
import sqlite3

from harness import AtollProcess
from packutil import fsck_report, packed_env

BUCKET = "fsck-packed"


def segment_of(server: AtollProcess, key: str) -> tuple[str, int, int]:
    conn = sqlite3.connect(f"file:{os.path.join(server.data_dir, 'meta.sqlite3')}?mode=ro", uri=True)
    try:
        (extents,) = conn.execute("SELECT extents FROM objects WHERE bucket = ? AND key = ?", (BUCKET, key)).fetchone()
    finally:
        conn.close()
    import json

    segment, offset, length = json.loads(extents)[0]
    assert segment.startswith("s"), f"{key} is not packed: {extents}"
    return segment, offset, length


def kinds(report: dict) -> dict[str, int]:
    found: dict[str, int] = {}
    for finding in report["findings"]:
        found[finding["kind"]] = found.get(finding["kind"], 0) + 1
    return found


def test_offline_fsck_finds_and_repairs_segment_damage(new_server):
    # Tiny segments: the objects below land in several of them, so one can be lost without the others.
    server = new_server(extra_env=packed_env(segment_size=64 << 10))
    s3 = server.client()
    s3.create_bucket(Bucket=BUCKET)
    for i in range(40):
        s3.put_object(Bucket=BUCKET, Key=f"k{i:02d}", Body=bytes([i]) * 6000)
    lost_segment, _, _ = segment_of(server, "k00")
    short_segment, short_offset, short_length = segment_of(server, "k39")
    assert lost_segment != short_segment
    lost_keys = [f"k{i:02d}" for i in range(40) if segment_of(server, f"k{i:02d}")[0] == lost_segment]
    assert server.stop() == 0
    code, report = fsck_report(server)
    assert code == 0, report["findings"]

    segments = os.path.join(server.data_dir, "segments")
    os.unlink(os.path.join(segments, lost_segment))
    with open(os.path.join(segments, short_segment), "r+b") as f:  # cut the last record in half
        f.truncate(short_offset + short_length // 2)
    stray = "s" + secrets.token_hex(16)[1:]
    with open(os.path.join(segments, stray), "wb") as f:
        f.write(b"AtP1" + b"\0" * 100)
    os.utime(os.path.join(segments, stray), (1, 1))  # old: not a writer's brand-new segment
    conn = sqlite3.connect(os.path.join(server.data_dir, "meta.sqlite3"))
    conn.execute("UPDATE segments SET live_bytes = live_bytes + 7 WHERE segment_id = ?", (short_segment,))
    conn.commit()
    conn.close()

    code, report = fsck_report(server)
    found = kinds(report)
    assert code == 1
    assert found.get("missing_segment") == 1, report["findings"]
    assert found.get("stray_segment") == 1
    assert found.get("segment_counters") == 1
    # Objects pointing into the lost segment, and the one whose record is cut short, are reported like any
    # object whose blob is missing or short.
    assert found.get("missing_blob") == len(lost_keys)
    assert found.get("short_blob") == 1

    code, report = fsck_report(server, "--repair")
    # Every finding is repaired: the lost objects' rows go first, then the lost segment's row (nothing points
    # into it any more), the stray file and the counters.
    assert all(f["repaired"] for f in report["findings"] if f["kind"] != "missing_segment" or f["severity"] != "error")
    assert not os.path.exists(os.path.join(segments, stray))
    code, report = fsck_report(server)
    assert code == 0, report["findings"]

    server.start()
    s3 = server.client()
    for key in lost_keys + ["k39"]:  # lost for good: their rows went with the repair
        assert s3.list_objects_v2(Bucket=BUCKET, Prefix=key)["KeyCount"] == 0
    for i in range(40):
        key = f"k{i:02d}"
        if key not in lost_keys and key != "k39":
            assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == bytes([i]) * 6000
