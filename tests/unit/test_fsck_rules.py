"""fsck's pure rules: which digests a version can be checked against, and when a report counts as clean."""

from __future__ import annotations

from atoll.core.fsck import ERROR, INFO, WARNING, Finding, Report, _checks_for
from atoll.core.models import Extent, ObjectVersion

MD5 = "9e107d9d372bb6826bd81d3542a419d6"


def version(etag: str, parts: int = 0, checksums: dict | None = None, checksum_type: str = "") -> ObjectVersion:
    extents = [Extent(f"b{i}", 0, 10) for i in range(max(parts, 1))]
    return ObjectVersion("b", "k", "v", 10 * len(extents), etag, 0.0, extents=extents, part_count=parts,
                         checksums=checksums or {}, checksum_type=checksum_type)


def test_what_a_version_is_checked_against():
    assert _checks_for(version(MD5)) == (MD5, False, {})
    assert _checks_for(version("0x8DC9A1B2C3D4E5F")) == ("", False, {}), "Azure ETags are not MD5s"
    assert _checks_for(version(MD5 + "-3", parts=3)) == ("", True, {})
    assert _checks_for(version(MD5 + "-3", parts=2)) == ("", False, {}), "extents must be the parts"
    crc = {"crc64nvme": "AAAAAAAAAAA="}
    assert _checks_for(version(MD5, checksums=crc, checksum_type="FULL_OBJECT")) == (MD5, False, crc)
    composite = {"crc32c": "AAAAAA==-3"}
    assert _checks_for(version(MD5 + "-3", parts=3, checksums=composite, checksum_type="COMPOSITE"))[2] == {}
    full = {"crc32": "AAAAAA=="}
    assert _checks_for(version(MD5 + "-3", parts=3, checksums=full, checksum_type="FULL_OBJECT"))[2] == full
    assert _checks_for(version(MD5, checksums={"md7": "x"}))[2] == {}


def test_clean_means_nothing_left_to_do_and_nothing_lost():
    report = Report(online=False, repair=True, checksums=False)
    assert report.clean
    report.findings.append(Finding("drain_claim", INFO, "claimed while no server runs"))
    assert report.clean, "information never makes a report unclean"
    orphan = Finding("orphan_blob", WARNING, "nothing refers to it")
    report.findings.append(orphan)
    assert not report.clean
    orphan.repaired = True
    assert report.clean
    lost = Finding("missing_blob", ERROR, "gone", lost=True, repaired=True)
    report.findings.append(lost)
    assert not report.clean and report.unresolved == [lost], "a lost object stays a problem after its row went"
    record = report.as_dict()
    assert record["counts"] == {"findings": 3, "repaired": 2, "unresolved": 1, "lost": 1}
    assert record["by_kind"] == {"drain_claim": 1, "orphan_blob": 1, "missing_blob": 1}
    assert record["findings"][2] == {"kind": "missing_blob", "severity": "error", "detail": "gone",
                                     "repaired": True, "lost": True}
