"""Schema migrations (atoll/stores/meta/migrations.py) and ``atoll db upgrade|status``, on SQLite files of every
earlier shape and on PostgreSQL (tests/pgserver.py), and the PostgreSQL schema against SQLite's: the same tables,
columns, indexes and triggers, and triggers that keep the same counters for the same statements."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading

import psycopg
import pytest

import pgserver
from harness import ATOLL, AtollProcess
from atoll.stores.meta import migrations, pg_schema
from atoll.stores.meta.dsn import redact

LATEST = migrations.LATEST


def atoll_db(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOLL_")}
    done = subprocess.run([ATOLL, "db", *args], capture_output=True, text=True, timeout=120, env=env)
    if check:
        assert done.returncode == 0, f"atoll db {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done


def db_json(*args: str) -> dict:
    return json.loads(atoll_db(*args, "--json").stdout)


# --- old SQLite files --------------------------------------------------------------------------------------------
# Literal shapes of files written by earlier Atolls (not built with the code under test).

_V1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
CREATE TABLE identities (
    access_key TEXT PRIMARY KEY, secret_key TEXT NOT NULL, owner_id TEXT NOT NULL,
    display_name TEXT NOT NULL, created REAL NOT NULL, is_root INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE buckets (
    name TEXT PRIMARY KEY, owner_id TEXT NOT NULL, created REAL NOT NULL, region TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE objects (
    bucket TEXT NOT NULL, key TEXT NOT NULL, version_id TEXT NOT NULL, size INTEGER NOT NULL,
    etag TEXT NOT NULL, last_modified REAL NOT NULL, owner_id TEXT NOT NULL, part_count INTEGER NOT NULL,
    checksum_type TEXT NOT NULL, extents TEXT NOT NULL, attrs TEXT NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE TABLE uploads (
    upload_id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL, initiated REAL NOT NULL,
    owner_id TEXT NOT NULL, attrs TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX uploads_by_key ON uploads (bucket, key, upload_id);
CREATE TABLE parts (
    upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
    blob_id TEXT NOT NULL, last_modified REAL NOT NULL, checksums TEXT NOT NULL,
    PRIMARY KEY (upload_id, part_number)
) WITHOUT ROWID;
CREATE TABLE garbage (blob_id TEXT PRIMARY KEY, since REAL NOT NULL) WITHOUT ROWID;
INSERT INTO identities VALUES ('AKROOT', 'secret', 'o-root', 'root', 1.0, 1),
                              ('AKALICE', 's', 'o-alice', 'alice', 1.0, 0);
INSERT INTO buckets VALUES ('old', 'o-root', 1.0, 'us-east-1'), ('alices', 'o-alice', 1.0, 'us-east-1');
INSERT INTO objects VALUES ('old', 'a', 'v-a', 11, 'e', 2.0, 'o-root', 0, '', '[["blob-a",0,11]]', '{}'),
                           ('old', 'b/c', 'v-b', 2000, 'e', 2.0, 'o-root', 0, '', '[["blob-b",0,2000]]', '{}'),
                           ('alices', 'x', 'v-x', 5, 'e', 2.0, 'o-alice', 0, '', '[["blob-x",0,5]]', '{}');
INSERT INTO uploads VALUES ('up1', 'old', 'mp', 3.0, 'o-root', '{}');
INSERT INTO parts VALUES ('up1', 1, 100, 'e1', 'blob-p1', 3.0, '{}');
INSERT INTO garbage VALUES ('blob-gone', 4.0);
"""

# Version 2 (tiering), as a file got it from the v1 -> v2 upgrade, plus some of the additions made later without a
# version bump (leases and blocks tables, account columns); tenants, usage, warm and segments are still missing.
_V2_PARTIAL = _V1 + """
UPDATE schema_version SET version = 2;
ALTER TABLE objects ADD COLUMN residency INTEGER NOT NULL DEFAULT 2;
ALTER TABLE objects ADD COLUMN warm_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE objects ADD COLUMN visited INTEGER NOT NULL DEFAULT 0;
ALTER TABLE objects ADD COLUMN pinned_until REAL NOT NULL DEFAULT 0;
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO counters VALUES ('resident_bytes', 2016);
CREATE TABLE links (
    bucket TEXT PRIMARY KEY, url TEXT NOT NULL, mode TEXT NOT NULL, revalidate TEXT NOT NULL,
    options TEXT NOT NULL, created REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE drain (
    bucket TEXT NOT NULL, key TEXT NOT NULL, op TEXT NOT NULL, version_id TEXT NOT NULL, size INTEGER NOT NULL,
    since REAL NOT NULL, attempts INTEGER NOT NULL, last_error TEXT NOT NULL, not_before REAL NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE TABLE leases (
    bucket TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, lease_id TEXT NOT NULL, duration INTEGER NOT NULL,
    expires_at REAL NOT NULL, break_at REAL NOT NULL, PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE TABLE blocks (
    bucket TEXT NOT NULL, key TEXT NOT NULL, block_id TEXT NOT NULL, blob_id TEXT NOT NULL, size INTEGER NOT NULL,
    md5 TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (bucket, key, block_id)
) WITHOUT ROWID;
INSERT INTO blocks VALUES ('alices', 'y', 'b1', 'blob-b1', 7, 'm', 5.0);
ALTER TABLE identities ADD COLUMN account_name TEXT NOT NULL DEFAULT '';
ALTER TABLE identities ADD COLUMN account_key TEXT NOT NULL DEFAULT '';
UPDATE objects SET residency = 0 WHERE key = 'x';
"""


def write_sqlite(path: str, script: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(script)
    conn.close()


def sqlite_shape(path: str) -> dict:
    """Tables (columns with types, defaults, keys), indexes and triggers (their SQL) of a SQLite file."""
    conn = sqlite3.connect(path)
    try:
        shape = {}
        for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name"):
            if kind == "table":
                shape[(kind, name)] = [tuple(r[1:]) for r in conn.execute(f"PRAGMA table_info({name})")]
            else:
                shape[(kind, name)] = " ".join((sql or "").split())
        return shape
    finally:
        conn.close()


def new_sqlite(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrations.upgrade_sqlite(conn) == (0, LATEST)
    return conn


@pytest.mark.parametrize("old", ["v1", "v2-partial"])
def test_cli_upgrades_old_sqlite_files_to_the_shape_of_a_new_one(tmp_path, old):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = str(data_dir / "meta.sqlite3")
    write_sqlite(path, _V1 if old == "v1" else _V2_PARTIAL)
    status = db_json("status", "--data-dir", str(data_dir))
    found = 1 if old == "v1" else 2
    assert (status["current"], status["latest"]) == (found, LATEST)
    assert [s["version"] for s in status["pending"]] == list(range(found + 1, LATEST + 1))

    assert db_json("upgrade", "--data-dir", str(data_dir)) == {
        "metadata": path, "engine": "sqlite", "from": found, "to": LATEST}
    new_sqlite(str(tmp_path / "new.sqlite3")).close()
    assert sqlite_shape(path) == sqlite_shape(str(tmp_path / "new.sqlite3"))

    conn = sqlite3.connect(path)
    try:
        # Rows kept; new columns at their defaults (every v1 object was resident).
        assert conn.execute("SELECT key, size, residency, warm_seq FROM objects ORDER BY bucket, key").fetchall() == [
            ("x", 5, 0 if old == "v2-partial" else 2, 0), ("a", 11, 2, 0), ("b/c", 2000, 2, 0)]
        assert conn.execute("SELECT value FROM counters WHERE name = 'resident_bytes'").fetchall() == [(2016,)]
        # Tenants adopted: the root joins root, alice a tenant of her own, buckets their owner's.
        assert conn.execute("SELECT access_key, tenant FROM identities ORDER BY access_key").fetchall() == [
            ("AKALICE", "akalice"), ("AKROOT", "root")]
        assert conn.execute("SELECT name, tenant FROM buckets ORDER BY name").fetchall() == [
            ("alices", "akalice"), ("old", "root")]
        # Counters new to the file counted once: objects, parts of uploads, uncommitted blocks; warm bytes.
        blocks = 7 if old == "v2-partial" else 0
        assert conn.execute("SELECT bucket, bytes, objects FROM usage ORDER BY bucket").fetchall() == [
            ("alices", 5 + blocks, 1), ("old", 2011 + 100, 2)]
        assert conn.execute("SELECT bucket, bytes FROM warm ORDER BY bucket").fetchall() == (
            [("old", 2011)] if old == "v2-partial" else [("alices", 5), ("old", 2011)])
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(LATEST,)]
    finally:
        conn.close()

    assert db_json("upgrade", "--data-dir", str(data_dir))["from"] == LATEST  # a second run changes nothing
    assert db_json("status", "--data-dir", str(data_dir))["pending"] == []


def test_concurrent_sqlite_upgrades_apply_each_step_once(tmp_path):
    path = str(tmp_path / "meta.sqlite3")
    write_sqlite(path, _V1)
    runs = [subprocess.Popen([ATOLL, "db", "upgrade", "--metadata", path, "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(run.wait(120), *run.communicate()) for run in runs]
    assert all(code == 0 for code, _, _ in results), results
    assert sorted(json.loads(out)["from"] for _, out, _ in results)[0] == 1
    assert all(json.loads(out)["to"] == LATEST for _, out, _ in results)
    conn = sqlite3.connect(path)
    try:
        # The resident-bytes counter of step 2 was set once, not added to by each upgrader.
        assert conn.execute("SELECT value FROM counters").fetchall() == [(2016,)]
        assert conn.execute("SELECT bucket, bytes, objects FROM usage ORDER BY bucket").fetchall() == [
            ("alices", 5, 1), ("old", 2111, 2)]
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(LATEST,)]
    finally:
        conn.close()


def test_a_newer_sqlite_file_is_refused(tmp_path):
    path = str(tmp_path / "meta.sqlite3")
    conn = new_sqlite(path)
    conn.execute("UPDATE schema_version SET version = ?", (LATEST + 1,))
    with pytest.raises(migrations.SchemaMismatch, match="newer than this Atoll"):
        migrations.upgrade_sqlite(conn)
    conn.close()
    done = atoll_db("upgrade", "--metadata", path, check=False)
    assert done.returncode == 1 and "newer than this Atoll" in done.stderr and "Traceback" not in done.stderr
    assert db_json("status", "--metadata", path)["state"] == "newer than this Atoll"


def test_status_of_a_data_dir_without_a_store_creates_nothing(tmp_path):
    status = db_json("status", "--data-dir", str(tmp_path))
    assert (status["current"], status["state"]) == (0, "no store yet: the first server or `atoll db upgrade` "
                                                       "creates it")
    assert os.listdir(tmp_path) == []


def test_step_7_adds_an_empty_audit_log_to_a_version_6_sqlite_file(tmp_path):
    path = str(tmp_path / "meta.sqlite3")
    conn = new_sqlite(path)
    conn.execute("DROP TABLE audit")  # as Atoll of #9 left it
    conn.execute("UPDATE schema_version SET version = 6")
    conn.execute("INSERT INTO buckets (name, owner_id, created, region) VALUES ('kept', 'o', 1.0, 'r')")
    assert migrations.upgrade_sqlite(conn) == (6, 7)
    assert conn.execute("SELECT count(*) FROM audit").fetchone() == (0,)
    assert conn.execute("SELECT name FROM buckets").fetchall() == [("kept",)]
    ids = [conn.execute("INSERT INTO audit (time, actor, action, target, detail, outcome, request_id, node) VALUES "
                        "(1.0, 'a', 'pin.add', 't', '{}', 'ok', 'r', 'n') RETURNING id").fetchone()[0]
           for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    conn.close()


# --- PostgreSQL ----------------------------------------------------------------------------------------------------

def with_password(url: str, password: str = "s3cr3t-pw") -> str:
    # Trust authentication ignores it: the point is that no output ever shows it.
    return url.replace("postgresql://atoll@", f"postgresql://atoll:{password}@")


def test_pg_cli_upgrade_from_empty_is_idempotent_and_status_tells_the_truth():
    cluster = pgserver.cluster()
    url = with_password(cluster.empty_database("cli"))
    status = atoll_db("status", "--metadata", url)
    assert "s3cr3t-pw" not in status.stdout + status.stderr
    assert "atoll:***@" in status.stdout and "upgrade needed: run `atoll db upgrade`" in status.stdout
    assert [s["version"] for s in db_json("status", "--metadata", url)["pending"]] == list(
        range(migrations.PG_BASELINE, LATEST + 1))

    first = atoll_db("upgrade", "--metadata", url)
    assert f"schema 0 → {LATEST}" in first.stdout and "s3cr3t-pw" not in first.stdout + first.stderr
    again = atoll_db("upgrade", "--metadata", url)
    assert f"schema {LATEST}, up to date" in again.stdout
    after = db_json("status", "--metadata", url)
    assert (after["current"], after["state"], after["pending"]) == (LATEST, "up to date", [])
    assert after["metadata"] == redact(url) and "s3cr3t-pw" not in after["metadata"]
    with psycopg.connect(url) as conn:
        assert migrations.check_postgres(conn) == LATEST
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(LATEST,)]
    cluster.drop(url)


def test_pg_concurrent_upgrades_apply_each_step_once():
    cluster = pgserver.cluster()
    url = cluster.empty_database("race")
    runs = [subprocess.Popen([ATOLL, "db", "upgrade", "--metadata", url, "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(run.wait(120), *run.communicate()) for run in runs]
    assert all(code == 0 for code, _, _ in results), results
    assert sorted(json.loads(out)["from"] for _, out, _ in results) == [0, LATEST, LATEST]
    assert cluster.psql("SELECT version FROM schema_version", url.rsplit("/", 1)[1]) == [(LATEST,)]
    cluster.drop(url)


def test_pg_check_refuses_a_schema_behind_or_ahead_and_upgrade_catches_up():
    cluster = pgserver.cluster()
    url = cluster.empty_database("behind")
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(migrations.SchemaMismatch, match=rf"metadata schema 0, this Atoll needs {LATEST}: run "
                                                            "`atoll db upgrade`"):
            migrations.check_postgres(conn)
        with conn.transaction():  # a database an older Atoll made: version 3 only
            conn.execute(pg_schema.V3_BASELINE)
            conn.execute("INSERT INTO schema_version VALUES (3)")
        with pytest.raises(migrations.SchemaMismatch, match="metadata schema 3, this Atoll needs"):
            migrations.check_postgres(conn)
    assert [s["version"] for s in db_json("status", "--metadata", url)["pending"]] == list(range(4, LATEST + 1))
    assert db_json("upgrade", "--metadata", url)["from"] == 3
    with psycopg.connect(url) as conn:  # not autocommit: check and upgrade leave no transaction open
        assert migrations.check_postgres(conn) == LATEST
        assert migrations.upgrade_postgres(conn) == (LATEST, LATEST)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.execute("UPDATE schema_version SET version = version + 1")
        conn.commit()
        with pytest.raises(migrations.SchemaMismatch, match="newer than this Atoll"):
            migrations.check_postgres(conn)
    refused = atoll_db("upgrade", "--metadata", url, check=False)
    assert refused.returncode == 1 and "newer than this Atoll" in refused.stderr
    assert "Traceback" not in refused.stderr
    cluster.drop(url)


def test_pg_step_7_adds_an_empty_audit_log_to_a_version_6_database():
    cluster = pgserver.cluster()
    url = cluster.empty_database("audit")
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():  # as Atoll of #9 left it
            for step in migrations.STEPS:
                if step.postgres is not None and step.version <= 6:
                    conn.execute(step.postgres)
            conn.execute("INSERT INTO schema_version VALUES (6)")
        assert conn.execute("SELECT to_regclass('audit')").fetchone() == (None,)
        assert migrations.upgrade_postgres(conn) == (6, 7)
        assert conn.execute("SELECT count(*) FROM audit").fetchone() == (0,)
        ids = [conn.execute("INSERT INTO audit (time, actor, action, target, detail, outcome, request_id, node) "
                            "VALUES (1.0, 'a', 'pin.add', 't', '{}', 'ok', 'r', 'n') RETURNING id").fetchone()[0]
               for _ in range(3)]
        assert ids == sorted(ids) and len(set(ids)) == 3
    cluster.drop(url)


def test_pg_unreachable_database_is_one_clear_line_without_the_password():
    cluster = pgserver.cluster()
    url = with_password(cluster.url("no_such_database"))
    done = atoll_db("status", "--metadata", url, check=False)
    assert done.returncode == 1 and "cannot connect to" in done.stderr and "atoll:***@" in done.stderr
    assert "s3cr3t-pw" not in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_a_node_refuses_a_schema_behind_its_code_until_atoll_db_upgrade(tmp_path):
    cluster = pgserver.cluster()
    url = with_password(cluster.empty_database("serve"))
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():  # as an older Atoll left it
        conn.execute(pg_schema.V3_BASELINE)
        conn.execute("INSERT INTO schema_version VALUES (3)")
    node = AtollProcess(data_dir=str(tmp_path / "data"), extra_env={"ATOLL_METADATA": url})
    with pytest.raises(RuntimeError, match="exited"):
        node.start()
    assert node.proc.returncode != 0
    log = " ".join(node.log_text().split())  # the console wraps long lines
    assert f"metadata schema 3, this Atoll needs {LATEST}: run `atoll db upgrade`" in log, log[-3000:]
    assert "s3cr3t-pw" not in log and "Traceback" not in log, log[-3000:]
    assert cluster.psql("SELECT version FROM schema_version", url.rsplit("/", 1)[1]) == [(3,)]  # left alone

    atoll_db("upgrade", "--metadata", url)
    node.start()
    try:
        s3 = node.client()
        s3.create_bucket(Bucket="after-upgrade")
        s3.put_object(Bucket="after-upgrade", Key="k", Body=b"hello")
        assert s3.get_object(Bucket="after-upgrade", Key="k")["Body"].read() == b"hello"
    finally:
        assert node.stop() == 0, node.log_text()[-3000:]
    assert "s3cr3t-pw" not in node.log_text()
    cluster.drop(url)


# --- PostgreSQL against SQLite: the same schema, the same trigger effects ------------------------------------------

def pg_shape(conn) -> dict:
    tables = {}
    for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
            "ORDER BY table_name, ordinal_position").fetchall():
        tables.setdefault(table, []).append(column)
    indexes = {name for (name,) in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND indexname NOT LIKE '%_pkey'").fetchall()}
    triggers = {(name, table) for name, table in conn.execute(
        "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE NOT t.tgisinternal").fetchall()}
    return {"tables": tables, "indexes": indexes, "triggers": triggers}


def test_pg_schema_has_sqlites_tables_columns_indexes_and_triggers(tmp_path, postgres_url):
    conn = new_sqlite(str(tmp_path / "meta.sqlite3"))
    tables = {name: [r[1] for r in conn.execute(f"PRAGMA table_info({name})")] for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
    indexes = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%'").fetchall()}
    triggers = set(conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'").fetchall())
    conn.close()
    with psycopg.connect(postgres_url) as pg:
        assert pg_shape(pg) == {"tables": tables, "indexes": indexes, "triggers": triggers}
        # Every text column compares bytes, as SQLite's BINARY collation does (S3 key order).
        assert pg.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = "
                          "'public' AND data_type = 'text' AND collation_name IS DISTINCT FROM 'C'").fetchall() == []


# Statements run as they are on both engines (``?`` placeholders; psycopg takes ``%s``). They exercise every
# trigger: buckets made and dropped, objects inserted, replaced by upsert (size, residency, extents changing),
# deleted; parts and blocks added and removed; packed extents into open, sealed and closed segments.
_UPSERT = ("INSERT INTO objects (bucket, key, version_id, size, etag, last_modified, owner_id, part_count, "
           "checksum_type, extents, attrs, residency) VALUES (?, ?, ?, ?, '', 0, 'o', 0, '', ?, '{}', ?) "
           "ON CONFLICT (bucket, key) DO UPDATE SET version_id = excluded.version_id, size = excluded.size, "
           "extents = excluded.extents, residency = excluded.residency")
_SCRIPT: list[tuple[str, tuple]] = [
    ("INSERT INTO buckets (name, owner_id, created, region) VALUES (?, 'o', 0, 'r')", ("b1",)),
    ("INSERT INTO buckets (name, owner_id, created, region) VALUES (?, 'o', 0, 'r')", ("b2",)),
    ("INSERT INTO buckets (name, owner_id, created, region) VALUES (?, 'o', 0, 'r')", ("gone",)),
    ("INSERT INTO segments (segment_id, owner, state, created) VALUES (?, 'n:1:0', 'open', 0)", ("s-open",)),
    ("INSERT INTO segments (segment_id, owner, state, created) VALUES (?, 'n:1:0', 'sealed', 0)", ("s-sealed",)),
    ("INSERT INTO segments (segment_id, owner, state, created) VALUES (?, 'n:1:0', 'open', 0)", ("s-late",)),
    (_UPSERT, ("b1", "plain", "v1", 100, '[["f-1",0,100]]', 2)),
    (_UPSERT, ("b1", "cold", "v2", 50, '[]', 0)),
    (_UPSERT, ("b1", "packed", "v3", 30, '[["s-open",0,10],["s-sealed",64,20]]', 2)),
    (_UPSERT, ("b2", "packed", "v4", 12, '[["s-open",128,12]]', 1)),
    (_UPSERT, ("b1", "plain", "v5", 160, '[["f-2",0,160]]', 2)),  # resized
    (_UPSERT, ("b1", "cold", "v6", 50, '[["f-3",0,50]]', 2)),  # filled: warm now
    (_UPSERT, ("b1", "packed", "v7", 30, '[["s-sealed",64,20],["s-open",512,10]]', 2)),  # one record moved
    (_UPSERT, ("b2", "packed", "v8", 12, '[["f-9",0,12]]', 0)),  # out of the segment, evicted
    ("UPDATE objects SET residency = 0 WHERE bucket = ? AND key = ?", ("b1", "plain")),
    ("UPDATE objects SET size = 170 WHERE bucket = ? AND key = ?", ("b1", "plain")),
    (_UPSERT, ("gone", "k", "v9", 9, '[["s-late",0,9]]', 2)),
    ("INSERT INTO uploads VALUES (?, 'b2', 'mp', 0, 'o', '{}')", ("u1",)),
    ("INSERT INTO parts VALUES (?, 1, 1000, 'e', 'p1', 0, '{}')", ("u1",)),
    ("INSERT INTO parts VALUES (?, 2, 500, 'e', 'p2', 0, '{}')", ("u1",)),
    ("DELETE FROM parts WHERE upload_id = ? AND part_number = 1", ("u1",)),
    ("INSERT INTO blocks VALUES (?, 'blob', 'id1', 'k1', 77, 'm', 0)", ("b2",)),
    ("INSERT INTO blocks VALUES (?, 'blob', 'id2', 'k2', 33, 'm', 0)", ("b2",)),
    ("DELETE FROM blocks WHERE bucket = ? AND block_id = 'id1'", ("b2",)),
    ("DELETE FROM objects WHERE bucket = ? AND key = 'cold'", ("b1",)),
    ("DELETE FROM objects WHERE bucket = ?", ("gone",)),
    ("DELETE FROM buckets WHERE name = ?", ("gone",)),
    ("UPDATE segments SET state = 'compacting' WHERE segment_id = ?", ("s-late",)),
]
_RESULTS = {
    "usage": "SELECT bucket, bytes, objects FROM usage ORDER BY bucket",
    "warm": "SELECT bucket, bytes FROM warm ORDER BY bucket",
    "packed_refs": 'SELECT segment_id, "offset", length, bucket, key FROM packed_refs ORDER BY segment_id, "offset"',
    "segments": "SELECT segment_id, state, live_bytes, live_count FROM segments ORDER BY segment_id",
}
# Into a segment being compacted, and into one that does not exist: both fences refuse.
_FENCED = [(_UPSERT, ("b1", "late", "v10", 5, '[["s-late",64,5]]', 2)),
           (_UPSERT, ("b1", "nowhere", "v11", 5, '[["s-none",0,5]]', 2))]


def test_pg_triggers_keep_the_counters_sqlites_keep(tmp_path, postgres_url):
    lite = new_sqlite(str(tmp_path / "meta.sqlite3"))
    with psycopg.connect(postgres_url, autocommit=True) as pg:
        for sql, params in _SCRIPT:
            lite.execute(sql, params)
            pg.execute(sql.replace("?", "%s"), params)
        results = {name: [tuple(r) for r in lite.execute(q).fetchall()] for name, q in _RESULTS.items()}
        assert {name: pg.execute(q).fetchall() for name, q in _RESULTS.items()} == results
        # The expected numbers, so that two engines wrong alike do not pass.
        assert results["usage"] == [("b1", 170 + 30, 2), ("b2", 12 + 500 + 33, 1)]
        assert results["warm"] == [("b1", 30), ("b2", 0)]
        assert results["segments"] == [("s-late", "compacting", 0, 0), ("s-open", "open", 10, 1),
                                       ("s-sealed", "sealed", 20, 1)]
        for sql, params in _FENCED:
            with pytest.raises(sqlite3.Error, match=pg_schema.SEGMENT_CLOSED):
                lite.execute(sql, params)
            with pytest.raises(psycopg.Error, match=pg_schema.SEGMENT_CLOSED):
                pg.execute(sql.replace("?", "%s"), params)
        assert {name: pg.execute(q).fetchall() for name, q in _RESULTS.items()} == results
    lite.close()


def test_pg_fence_waits_for_a_reference_being_committed(postgres_url):
    """PostgreSQL has many writers: a reference inserted into a sealed segment holds the segment's row until it
    commits, so the compactor's claim (state -> compacting) comes after it and then sees the reference."""
    with psycopg.connect(postgres_url, autocommit=True) as setup:
        setup.execute("INSERT INTO buckets (name, owner_id, created, region) VALUES ('b', 'o', 0, 'r')")
        setup.execute("INSERT INTO segments (segment_id, owner, state, created) VALUES ('s1', 'o', 'sealed', 0)")
    writer, compactor = psycopg.connect(postgres_url), psycopg.connect(postgres_url, autocommit=True)
    try:
        writer.execute(_UPSERT.replace("?", "%s"), ("b", "k", "v", 5, '[["s1",0,5]]', 2))  # not committed yet
        claimed = threading.Event()

        def claim() -> None:
            compactor.execute("UPDATE segments SET state = 'compacting' WHERE segment_id = 's1' AND state = 'sealed'")
            claimed.set()

        thread = threading.Thread(target=claim)
        thread.start()
        assert not claimed.wait(0.5), "the claim went ahead of a reference not yet committed"
        writer.commit()
        thread.join(10)
        assert claimed.is_set()
        assert compactor.execute('SELECT segment_id, "offset" FROM packed_refs').fetchall() == [("s1", 0)]
    finally:
        writer.close()
        compactor.close()


def test_redacted_urls_never_show_a_password():
    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgres://u@h/db?sslmode=require&password=pw") == "postgres://u@h/db?sslmode=require&password=***"
    assert redact("postgresql://h/db") == "postgresql://h/db"
    assert redact("/var/lib/atoll/meta.sqlite3") == "/var/lib/atoll/meta.sqlite3"
