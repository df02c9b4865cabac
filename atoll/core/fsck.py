"""``atoll fsck``: the data directory checked against the index, and repaired on request.

What is checked, and what ``repair`` does about it (each repair is one conditional metadata transaction, or the
removal of one file):

- object versions whose blobs are missing, or shorter than their extents need (``missing_blob``,
  ``short_blob``), whose extents do not add up to their size (``bad_extents``), whose block map or sparse blob
  is inconsistent (``bad_fill``: a recorded block that is a hole, a blob of the wrong size, no block map), or
  that are not resident in a bucket without a cold store to read them from (``unreachable``). A version the
  linked cold store has (a cold identity and no journal entry) becomes absent: the next read fetches it again.
  Otherwise its bytes are lost: repair removes the row, so the key stops answering 503 (and says so).
- with ``checksums``: the MD5 ETag (also per part, for multipart ETags) and the stored full-object checksums of
  resident versions, and the MD5 of multipart parts (``checksum_mismatch``). A version the cold store has
  becomes absent; otherwise it is reported as corrupt and kept (there is no other copy to restore it from).
- parts whose blobs are missing, short or corrupt: dropped (a Complete naming them fails with InvalidPart).
- blobs queued for garbage collection while a row still refers to them (``referenced_garbage``): the garbage
  record goes. Block maps without their partial version (``stale_fill``): removed.
- files: blobs nothing refers to (``orphan_blob``), files that are not blobs where blobs live (``stray_file``),
  temp files (``temp_file``): deleted.
- the write-back journal: entries of buckets no longer linked in a writable mode (``drain_unlinked``: reported;
  relinking drains them), entries naming a version that is no longer current (``drain_replaced``: finished),
  entries failing for a long time (``drain_failing``: reported with the last error), and claims held while no
  server runs (``drain_claim``: information only, the next start voids them; repair voids them now).
- the resident-bytes counter against the rows (``resident_bytes``): recomputed. Likewise each bucket's usage
  counters (bytes and objects, which quotas are checked against) (``usage``).
- the packed store (#8): segments without a file (``missing_segment``), files without a row (``stray_segment``:
  deleted), compacted segments whose file is still there (``retired_segment``: deleted), and each segment's live
  counters against the objects pointing into it (``segment_counters``: the reverse index is rebuilt).

Beside a running server (``online``) the check is safe and so is the repair: files changed within ``grace``
seconds are writes in flight, not leftovers; temp files of live processes are left alone; claims belong to the
live drainer. Every problem is confirmed against a fresh read of its row before it is reported or repaired, and
the index is read in an order that sees every blob where it is referenced even while writes move it: parts,
then objects (a Complete moves a part's blob to an object), then garbage (both end there), then the files.
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from atoll.core import checksums as cks
from atoll.core.ingest import run_io
from atoll.core.models import ABSENT, PARTIAL, RESIDENT, Link, ObjectVersion, Part
from atoll.processes import alive
from atoll.stores.data.base import DataStore, FoundFile
from atoll.stores.meta.base import MetaStore

RETIRED_OVERDUE = 3600.0  # a compacted segment's file still there after this long was forgotten by the servers
GRACE_SECONDS = 900.0  # beside a running server, younger files may belong to writes in flight
FAILING_ATTEMPTS = 10  # a journal entry failing this many times in a row (about 4 minutes of retries) is reported
PAGE = 1000
_READ_CHUNK = 8 << 20
_MD5_HEX = re.compile(r"[0-9a-f]{32}")

ERROR = "error"  # bytes of an object or part are missing or wrong
WARNING = "warning"  # the index and the disk disagree without loss (leftovers, stale records, counters, journal)
INFO = "info"  # harmless, reported for the record; never makes a report unclean

# (phase, done, total or None)
Progress = Callable[[str, int, "int | None"], None]


@dataclass(slots=True)
class Finding:
    kind: str
    severity: str
    detail: str
    bucket: str = ""
    key: str = ""
    version_id: str = ""
    upload_id: str = ""
    part_number: int = 0
    blob_id: str = ""
    where: str = ""  # a file, relative to the data directory
    action: str = ""  # what the repair did, or would do
    repaired: bool = False
    lost: bool = False  # the object's bytes are gone for good (repair removes its row)

    def as_dict(self) -> dict:
        record = {"kind": self.kind, "severity": self.severity, "detail": self.detail}
        for name in ("bucket", "key", "version_id", "upload_id", "part_number", "blob_id", "where", "action"):
            value = getattr(self, name)
            if value:
                record[name] = value
        record["repaired"] = self.repaired
        if self.lost:
            record["lost"] = True
        return record


@dataclass(slots=True)
class Report:
    online: bool
    repair: bool
    checksums: bool
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def unresolved(self) -> list[Finding]:
        """Problems that remain: not repaired, or repaired by giving up an object's bytes (data loss remains a
        problem after its row is gone)."""
        return [f for f in self.findings if f.severity != INFO and (not f.repaired or f.lost)]

    @property
    def clean(self) -> bool:
        return not self.unresolved

    def by_kind(self) -> dict[str, int]:
        tally: dict[str, int] = {}
        for finding in self.findings:
            tally[finding.kind] = tally.get(finding.kind, 0) + 1
        return tally

    def as_dict(self) -> dict:
        counts = dict(self.counts)
        counts.update(findings=len(self.findings), repaired=sum(f.repaired for f in self.findings),
                      unresolved=len(self.unresolved), lost=sum(f.lost for f in self.findings))
        return {"clean": self.clean, "mode": "online" if self.online else "offline", "repair": self.repair,
                "checksums": self.checksums, "findings": [f.as_dict() for f in self.findings],
                "counts": counts, "by_kind": self.by_kind(), "seconds": round(self.seconds, 3)}


class Fsck:
    def __init__(self, meta: MetaStore, data: DataStore, *, repair: bool = False, checksums: bool = False,
                 online: bool = False, grace: float = GRACE_SECONDS, failing_attempts: int = FAILING_ATTEMPTS,
                 progress: Progress | None = None) -> None:
        self.meta = meta
        self.data = data
        self.repair = repair
        self.checksums = checksums
        self.online = online
        self.grace = grace
        self.failing_attempts = failing_attempts
        self.progress = progress or (lambda phase, done, total: None)
        self.report = Report(online=online, repair=repair, checksums=checksums)
        self.counts = self.report.counts
        self.links: dict[str, Link] = {}
        self.referenced: set[str] = set()
        self.garbage: set[str] = set()
        self.cutoff = 0.0

    async def run(self) -> Report:
        started = time.monotonic()
        now = time.time()
        # Files changed after the cutoff are not judged: writes in flight beside a running server, or the first
        # writes of a server that started while this check ran.
        self.cutoff = now - self.grace if self.online else now
        self.links = {link.bucket: link for link in await self.meta.list_links()}
        # A garbage blob is never referenced again: one that a row refers to after this read is a real double
        # reference, whatever moves meanwhile.
        garbage_before = await self._read_garbage()
        await self._check_parts(garbage_before)
        await self._check_objects(garbage_before)
        self.garbage = garbage_before | await self._read_garbage()
        self.counts["garbage_records"] = len(self.garbage)
        await self._check_fills()
        await self._check_drain()
        await self._check_counter()
        await self._check_usage()
        await self._check_warm()
        await self._check_temp_files()
        await self._check_blob_files()
        await self._check_segments()
        self.report.seconds = time.monotonic() - started
        return self.report

    def _add(self, finding: Finding) -> Finding:
        self.report.findings.append(finding)
        return finding

    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    async def _read_garbage(self) -> set[str]:
        found: set[str] = set()
        after = ""
        while page := await self.meta.scan_garbage(after, PAGE * 10):
            found.update(page)
            after = page[-1]
        return found

    # parts --------------------------------------------------------------------------------------------------
    async def _check_parts(self, garbage: set[str]) -> None:
        after = None
        done = 0
        self.counts["parts"] = 0
        while page := await self.meta.scan_parts(after, PAGE):
            after = (page[-1].upload_id, page[-1].part_number)
            sizes = await run_io(self._sizes, [p.blob_id for p in page])
            for part in page:
                self.referenced.add(part.blob_id)
                if part.blob_id in garbage:
                    await self._referenced_garbage(part.blob_id, upload_id=part.upload_id,
                                                   part_number=part.part_number)
                problem = _size_problem(part.blob_id, sizes.get(part.blob_id), part.size)
                if problem is None and self.checksums:
                    problem = await self._verify_part(part)
                if problem is not None:
                    await self._bad_part(part, *problem)
            done += len(page)
            self.counts["parts"] = done
            self.progress("parts", done, None)

    async def _verify_part(self, part: Part) -> tuple[str, str] | None:
        digest = await run_io(_md5_of, self.data, part.blob_id, 0, part.size)
        self._count("checksummed_bytes", part.size)
        if digest is not None and digest != part.etag:
            return "checksum_mismatch", f"the part's bytes have MD5 {digest}, its ETag is {part.etag}"
        return None

    async def _bad_part(self, part: Part, kind: str, detail: str) -> None:
        # Confirm: a Complete or an Abort may have moved the part on since it was read (its blob then lives on
        # in the object, or as garbage the collector deletes).
        current = {p.part_number: p for p in await self.meta.list_parts(part.upload_id, part.part_number - 1, 1)}
        if current.get(part.part_number) is None or current[part.part_number].blob_id != part.blob_id:
            return
        if kind != "checksum_mismatch":
            size = await run_io(self.data.blob_size, part.blob_id)
            if _size_problem(part.blob_id, size, part.size) is None:
                return
        upload = await self.meta.get_upload(part.upload_id)
        finding = self._add(Finding(
            kind, ERROR, f"part {part.part_number}: {detail}", bucket=upload.bucket if upload else "",
            key=upload.key if upload else "", upload_id=part.upload_id, part_number=part.part_number,
            blob_id=part.blob_id, action="drop the part (completing the upload fails with InvalidPart until the "
                                         "client sends the part again)"))
        if self.repair:
            finding.repaired = await self.meta.drop_part(part.upload_id, part.part_number, part.blob_id)

    # objects -----------------------------------------------------------------------------------------------
    async def _check_objects(self, garbage: set[str]) -> None:
        after = None
        done = 0
        for name in ("objects", RESIDENT, PARTIAL, ABSENT):
            self.counts[name] = 0
        while page := await self.meta.scan_objects(after, PAGE):
            after = (page[-1].bucket, page[-1].key)
            sizes = await run_io(self._sizes, [e.blob_id for v in page for e in v.extents])
            for version in page:
                self._count(version.residency)
                for extent in version.extents:
                    self.referenced.add(extent.blob_id)
                    if extent.blob_id in garbage:
                        await self._referenced_garbage(extent.blob_id, bucket=version.bucket, key=version.key,
                                                       version_id=version.version_id)
                problem = await self._version_problem(version, sizes)
                if problem is None and self.checksums and version.residency == RESIDENT:
                    problem = await self._verify_version(version)
                if problem is not None:
                    await self._bad_version(version, *problem)
            done += len(page)
            self.counts["objects"] = done
            self.progress("objects (checksums)" if self.checksums else "objects", done, None)

    def _sizes(self, blob_ids: list[str]) -> dict[str, int | None]:
        return {blob_id: self.data.blob_size(blob_id) for blob_id in blob_ids}

    async def _version_problem(self, version: ObjectVersion,
                               sizes: dict[str, int | None]) -> tuple[str, str] | None:
        """What is wrong with a version's bytes on disk (checksums aside), or None."""
        covered = sum(e.length for e in version.extents)
        if version.residency == ABSENT:
            if version.extents:
                return "bad_extents", "an absent version has extents"
        elif covered != version.size:
            return "bad_extents", f"its extents hold {covered} bytes, the object has {version.size}"
        elif version.residency == RESIDENT:
            for extent in version.extents:
                problem = _size_problem(extent.blob_id, sizes.get(extent.blob_id), extent.offset + extent.length)
                if problem is not None:
                    return problem
        else:
            problem = await self._fill_problem(version, sizes)
            if problem is not None:
                return problem
        if version.residency != RESIDENT and version.bucket not in self.links:
            return "unreachable", (f"a {version.residency} version in a bucket with no cold store: its missing "
                                   "bytes can never be read")
        return None

    async def _fill_problem(self, version: ObjectVersion, sizes: dict[str, int | None]) -> tuple[str, str] | None:
        fill = await self.meta.get_fill(version.version_id)
        if fill is None:
            return "bad_fill", "a partial version without a block map"
        block_size, bitmap = fill
        if len(version.extents) != 1 or version.extents[0].offset != 0:
            return "bad_fill", "a partial version must be one sparse blob"
        blob_id = version.extents[0].blob_id
        blocks = (version.size + block_size - 1) // block_size if block_size > 0 else -1
        if blocks < 0 or len(bitmap) != (blocks + 7) // 8:
            return "bad_fill", f"its block map has {len(bitmap)} bytes for {blocks} blocks of {block_size} bytes"
        size = sizes.get(blob_id) if blob_id in sizes else await run_io(self.data.blob_size, blob_id)
        if size is None:
            return "bad_fill", f"its sparse blob {blob_id} is missing"
        if size != version.size:
            return "bad_fill", f"its sparse blob has {size} bytes, the object has {version.size}"
        recorded = [i for i in range(blocks) if bitmap[i >> 3] & (1 << (i & 7))]
        holes = await run_io(_holes, self.data, blob_id, block_size, version.size, recorded)
        if holes:
            return "bad_fill", (f"{len(holes)} blocks recorded as filled hold no data (first: block {holes[0]} "
                                f"of {block_size} bytes)")
        return None

    async def _verify_version(self, version: ObjectVersion) -> tuple[str, str] | None:
        md5, per_part, expected = _checks_for(version)
        if not (md5 or per_part or expected):
            self._count("unverifiable")
            return None
        digests = await run_io(_digest_version, self.data, version, bool(md5), per_part, list(expected))
        self._count("checksummed")
        self._count("checksummed_bytes", version.size)
        if digests is None:
            return "missing_blob", "a blob vanished while it was read"
        if md5 and digests["md5"] != md5:
            return "checksum_mismatch", f"its bytes have MD5 {digests['md5']}, its ETag is {md5}"
        if per_part and digests["parts"] != version.etag:
            return "checksum_mismatch", f"its parts' MD5s make the ETag {digests['parts']}, it has {version.etag}"
        for alg, value in expected.items():
            if digests[alg] != value:
                return "checksum_mismatch", f"its bytes have {alg.upper()} {digests[alg]}, stored is {value}"
        return None

    async def _bad_version(self, version: ObjectVersion, kind: str, detail: str) -> None:
        # Confirm against a fresh read: the key may have moved on since the page was read (an overwrite, and the
        # collector deleting the old blob), which is no problem at all.
        current = await self.meta.get_object(version.bucket, version.key)
        if current is None or current.version_id != version.version_id or current.residency != version.residency:
            return
        if kind != "checksum_mismatch":
            blobs = [e.blob_id for e in current.extents]
            if await self._version_problem(current, await run_io(self._sizes, blobs)) is None:
                return
        finding = self._add(Finding(kind, ERROR, detail, bucket=version.bucket, key=version.key,
                                    version_id=version.version_id,
                                    blob_id=version.extents[0].blob_id if len(version.extents) == 1 else ""))
        link = self.links.get(version.bucket)
        in_cold = (link is not None and bool(current.cold_etag)
                   and await self.meta.get_drain(version.bucket, version.key) is None)
        if in_cold:
            finding.action = "make it absent (the next read fetches it again from the cold store)"
            if self.repair:
                finding.repaired = await self.meta.reset_to_absent(version.bucket, version.key, version.version_id,
                                                                   self.data.new_blob_id())
        elif kind in ("checksum_mismatch", "bad_extents"):
            finding.action = "none: there is no other copy (kept as it is; delete the key to drop it)"
        else:
            finding.lost = True
            finding.action = "remove its row (the object is lost)"
            if self.repair:
                finding.repaired = await self.meta.drop_version(version.bucket, version.key,
                                                                version.version_id) is not None

    async def _referenced_garbage(self, blob_id: str, **owner) -> None:
        finding = self._add(Finding("referenced_garbage", ERROR, f"its blob {blob_id} is queued for garbage "
                                    "collection", blob_id=blob_id, action="remove the garbage record", **owner))
        if self.repair:
            await self.meta.forget_garbage([blob_id])
            finding.repaired = True

    # block maps, journal, counter ---------------------------------------------------------------------------
    async def _check_fills(self) -> None:
        for version_id in await self.meta.stale_fills():
            finding = self._add(Finding("stale_fill", WARNING, "a block map whose version is not partial",
                                        version_id=version_id, action="remove the block map"))
            if self.repair:
                finding.repaired = await self.meta.forget_fill(version_id)

    async def _check_drain(self) -> None:
        now = time.time()
        after = None
        claimed = []
        done = 0
        while page := await self.meta.scan_drain(after, PAGE):
            after = (page[-1][0].bucket, page[-1][0].key)
            for entry, until in page:
                await self._check_entry(entry)
                if not self.online and until > now:
                    claimed.append(entry)
            done += len(page)
            self.progress("journal", done, None)
        self.counts["drain_entries"] = done
        findings = [self._add(Finding(
            "drain_claim", INFO, f"a journaled {entry.op} is claimed (or backing off) while no server runs: the "
            "next start voids the claim", bucket=entry.bucket, key=entry.key, version_id=entry.version_id,
            action="void the claim")) for entry in claimed]
        if findings and self.repair:
            await self.meta.reset_drain_claims()
            for finding in findings:
                finding.repaired = True

    async def _check_entry(self, entry) -> None:
        link = self.links.get(entry.bucket)
        where = dict(bucket=entry.bucket, key=entry.key, version_id=entry.version_id)
        if link is None or not link.writable:
            state = "not linked to a cold store" if link is None else f"linked in {link.mode} mode"
            self._add(Finding("drain_unlinked", WARNING, f"a journaled {entry.op} waits, but the bucket is {state}",
                              action="none: link the bucket again in writeback mode to drain it",
                              **where))
        elif entry.op == "put":
            current = await self.meta.get_object(entry.bucket, entry.key)
            if current is None or current.version_id != entry.version_id:
                again = await self.meta.get_drain(entry.bucket, entry.key)
                if again is not None and (again.op, again.version_id) == (entry.op, entry.version_id):
                    finding = self._add(Finding(
                        "drain_replaced", WARNING, "a journaled put names a version that is no longer current",
                        action="finish the entry: nothing of it is left to upload", **where))
                    if self.repair:
                        finding.repaired = await self.meta.finish_drain(entry)
        if entry.attempts >= self.failing_attempts:
            self._add(Finding("drain_failing", WARNING, f"a journaled {entry.op} failed {entry.attempts} times in a "
                              f"row; last error: {entry.last_error or 'none recorded'}",
                              action="none: fix its cause (the drain keeps retrying)", **where))

    async def _check_counter(self) -> None:
        counter, actual = await self.meta.count_resident_bytes()
        if counter != actual:
            finding = self._add(Finding("resident_bytes", WARNING, f"the resident-bytes counter says {counter}, the "
                                        f"resident versions add up to {actual}", action="recompute the counter"))
            if self.repair:
                await self.meta.recount_resident_bytes()
                finding.repaired = True

    async def _check_usage(self) -> None:
        wrong = await self.meta.count_usage()
        findings = [self._add(Finding("usage", WARNING, f"the usage counters say {counted[0]} bytes in {counted[1]} "
                                      f"objects, the rows add up to {actual[0]} bytes in {actual[1]} objects",
                                      bucket=bucket, action="recompute the counters"))
                    for bucket, counted, actual in wrong]
        if findings and self.repair:
            await self.meta.recount_usage()
            for finding in findings:
                finding.repaired = True

    async def _check_warm(self) -> None:
        """The per-bucket warm bytes that eviction reads for reservations and caps (#7)."""
        wrong = await self.meta.count_warm()
        findings = [self._add(Finding("warm", WARNING, f"the warm-bytes counter says {counted} bytes, the rows add up "
                                      f"to {actual}", bucket=bucket, action="recompute the counter"))
                    for bucket, counted, actual in wrong]
        if findings and self.repair:
            await self.meta.recount_warm()
            for finding in findings:
                finding.repaired = True

    # files --------------------------------------------------------------------------------------------------
    async def _check_temp_files(self) -> None:
        found = await run_io(lambda: list(self.data.scan_temp_files()))
        self.counts["temp_files"] = len(found)
        for temp in found:
            if temp.changed >= self.cutoff or (self.online and temp.pid is not None and alive(temp.pid)):
                continue  # a write in flight
            await self._leftover(temp, "temp_file", f"a temp file of {temp.size} bytes left by a write that never "
                                                    "finished")

    async def _check_blob_files(self) -> None:
        unknown: list[FoundFile] = []
        files = 0
        listing = self.data.scan_blobs()
        while batch := await run_io(_take, listing, PAGE * 10):
            # Referenced blobs were sized in the object and part phases: only the rest costs a stat.
            unknown += [f for f in batch if f.blob_id is None or (f.blob_id not in self.referenced
                                                                  and f.blob_id not in self.garbage)]
            files += len(batch)
            self.progress("files", files, None)
        self.counts["blob_files"] = files
        found = [f for f in await run_io(lambda: [self.data.stat_found(f) for f in unknown])
                 if f is not None and f.changed < self.cutoff]
        for stray in (f for f in found if f.blob_id is None):
            await self._leftover(stray, "stray_file", f"a {'file' if stray.regular else 'non-file'} of "
                                                      f"{stray.size} bytes that is not a blob")
        orphans = [f for f in found if f.blob_id is not None]
        if orphans:
            # From one snapshot of the index, after the listing: a blob the scans missed while it moved is found.
            unreferenced = await self.meta.unreferenced_blobs([f.blob_id for f in orphans])
            for orphan in orphans:
                if orphan.blob_id in unreferenced:
                    await self._leftover(orphan, "orphan_blob", f"a blob of {orphan.size} bytes that nothing "
                                                                "refers to (a write cut off before its metadata "
                                                                "commit)")

    async def _check_segments(self) -> None:
        """The packed store (#8): segment rows against files, and each segment's live counters against the
        objects that point into it. Objects pointing into a missing or short segment were reported by the object
        phase (``missing_blob``, ``short_blob``: a segment is a blob to it)."""
        files_of = getattr(self.data, "segments", None)
        if files_of is None:
            return
        rows = {s.segment_id: s for s in await self.meta.list_segments()}
        files = set(await run_io(files_of.list_ids))
        self.counts["segments"] = len(rows)
        now = time.time()
        for segment in rows.values():
            if segment.segment_id not in files:
                if segment.state != "retired" and segment.live_count:
                    self._add(Finding("missing_segment", ERROR, f"segment {segment.segment_id} ({segment.state}, "
                                      f"{segment.live_count} live records) has no file", blob_id=segment.segment_id,
                                      action="none: its objects are reported as missing_blob (repair removes "
                                             "them, then this row)"))
                elif segment.state != "open":  # nothing points into it any more: only its row is left
                    finding = self._add(Finding("missing_segment", WARNING, f"segment {segment.segment_id} has "
                                                "no file and no live record", blob_id=segment.segment_id,
                                                action="forget the segment"))
                    if self.repair:
                        await self.meta.forget_segment(segment.segment_id)
                        finding.repaired = True
                continue
            if segment.state == "retired":
                # A server deletes the file of a compacted segment a grace after the move (readers that looked the
                # old place up finish on it): a recent one is expected; an old one means no server did.
                overdue = now - segment.retired > RETIRED_OVERDUE
                finding = self._add(Finding("retired_segment", WARNING if overdue else INFO,
                                            f"segment {segment.segment_id} was compacted "
                                            f"{now - segment.retired:.0f}s ago; its file is still there",
                                            blob_id=segment.segment_id, where=f"segments/{segment.segment_id}",
                                            action="delete the file" if overdue or not self.online else
                                            "none: the server deletes it after its grace"))
                if self.repair and (overdue or not self.online):
                    await run_io(files_of.delete, segment.segment_id)
                    await self.meta.forget_segment(segment.segment_id)
                    finding.repaired = True
        for segment_id in sorted(files - rows.keys()):
            changed = await run_io(files_of.changed, segment_id)
            if changed is None or changed >= self.cutoff:
                continue  # being created by a live writer, which registers it next
            size = await run_io(files_of.size, segment_id)
            finding = self._add(Finding("stray_segment", WARNING, f"a segment file of {size} bytes the index does not "
                                        "know (its writer stopped before registering it: nothing points into it)",
                                        blob_id=segment_id, where=f"segments/{segment_id}", action="delete the file"))
            if self.repair:
                finding.repaired = await run_io(files_of.delete, segment_id)
        wrong = await self.meta.recount_segments(False)
        findings = [self._add(Finding("segment_counters", WARNING, f"segment {segment_id} counts {said} live bytes in "
                                      f"{said_n} records, its references add up to {counted} in {counted_n}",
                                      blob_id=segment_id, action="rebuild the reference index and counters"))
                    for segment_id, said, counted, said_n, counted_n in wrong]
        if findings and self.repair:
            await self.meta.recount_segments(True)
            for finding in findings:
                finding.repaired = True

    async def _leftover(self, found: FoundFile, kind: str, detail: str) -> None:
        finding = self._add(Finding(kind, WARNING, detail, blob_id=found.blob_id or "", where=found.where,
                                    action="delete the file" if found.regular else "none: remove it by hand"))
        if self.repair and found.regular:
            finding.repaired = await run_io(self.data.remove_found, found)


# helpers (pure, or blocking: run in a thread) ------------------------------------------------------------------
def _size_problem(blob_id: str, size: int | None, needed: int) -> tuple[str, str] | None:
    if size is None:
        return "missing_blob", f"its blob {blob_id} is missing"
    if size < needed:
        return "short_blob", f"its blob {blob_id} has {size} bytes, {needed} are needed"
    return None


def _take(iterator: Iterator, n: int) -> list:
    batch = []
    for item in iterator:
        batch.append(item)
        if len(batch) >= n:
            break
    return batch


def _checks_for(version: ObjectVersion) -> tuple[str, bool, dict[str, str]]:
    """(MD5 the whole object must have or "", whether the parts' MD5s must make the ETag, full-object checksums
    by algorithm). ETags of read-through objects are the cold store's (an MD5 from S3 single-part objects;
    Azure's are not MD5s and are skipped by their form)."""
    md5 = version.etag if version.part_count == 0 and _MD5_HEX.fullmatch(version.etag) else ""
    count = version.part_count
    per_part = (count > 0 and len(version.extents) == count and version.etag.endswith(f"-{count}")
                and bool(_MD5_HEX.fullmatch(version.etag.rsplit("-", 1)[0])))
    # A composite multipart checksum (``value-N``) is a checksum of checksums: not "cheap" to verify.
    expected = {alg: value for alg, value in version.checksums.items()
                if alg in cks.ALGORITHMS and "-" not in value and version.checksum_type != "COMPOSITE"}
    return md5, per_part, expected


def _read_extent(data: DataStore, blob_id: str, offset: int, length: int) -> Iterator[bytes]:
    fd = data.open_blob(blob_id)
    try:
        while length > 0:
            chunk = os.pread(fd, min(length, _READ_CHUNK), offset)
            if not chunk:
                raise EOFError(blob_id)
            yield chunk
            offset += len(chunk)
            length -= len(chunk)
    finally:
        os.close(fd)


def _md5_of(data: DataStore, blob_id: str, offset: int, length: int) -> str | None:
    hasher = cks.new_hasher("md5")
    try:
        for chunk in _read_extent(data, blob_id, offset, length):
            hasher.update(chunk)
    except (FileNotFoundError, EOFError):
        return None
    return hasher.hexdigest()


def _digest_version(data: DataStore, version: ObjectVersion, md5: bool, per_part: bool,
                    algorithms: list[str]) -> dict[str, str] | None:
    """The digests of a version's bytes, read once, 8 MiB at a time; None if a blob vanished meanwhile."""
    whole = {alg: cks.new_hasher(alg) for alg in (["md5"] if md5 else []) + algorithms}
    part_digests = []
    try:
        for extent in version.extents:
            part = cks.new_hasher("md5") if per_part else None
            for chunk in _read_extent(data, extent.blob_id, extent.offset, extent.length):
                for hasher in whole.values():
                    hasher.update(chunk)
                if part is not None:
                    part.update(chunk)
            if part is not None:
                part_digests.append(part.digest())
    except (FileNotFoundError, EOFError):
        return None
    digests = {alg: (h.hexdigest() if alg == "md5" else cks.b64(h.digest())) for alg, h in whole.items()}
    if per_part:
        digests["parts"] = cks.multipart_etag([d.hex() for d in part_digests])
    return digests


def _holes(data: DataStore, blob_id: str, block_size: int, size: int, recorded: list[int]) -> list[int]:
    """The recorded blocks of a sparse blob that hold no data at all (a hole where a durable block should be)."""
    if not recorded:
        return []
    try:
        fd = data.open_blob(blob_id)
    except FileNotFoundError:
        return recorded
    try:
        holes = []
        for index in recorded:
            lo = index * block_size
            hi = min(lo + block_size, size)
            try:
                next_data = os.lseek(fd, lo, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    return []  # the filesystem cannot tell holes from data: nothing to conclude
                next_data = size  # nothing but a hole from lo to the end
            if next_data >= hi:
                holes.append(index)
        return holes
    finally:
        os.close(fd)

