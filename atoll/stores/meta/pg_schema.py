"""The PostgreSQL form of the metadata schema: the DDL of the migration steps (``atoll.stores.meta.migrations``).

Same tables, columns and meanings as SQLite (``migrations.py`` holds the SQLite forms), so the same SQL runs on
both engines. The translation:
- every text column is ``TEXT COLLATE "C"``: byte order over UTF-8, S3's key order, as SQLite's BINARY compares;
- INTEGER → BIGINT, REAL → DOUBLE PRECISION, BLOB → BYTEA; ``cold_uploads.id`` is an identity column;
- ``packed_refs.offset`` is a reserved word in PostgreSQL: SQL that names it writes ``"offset"`` (SQLite accepts
  the quoted form too);
- SQLite's triggers become PL/pgSQL functions with the same effects, fired by triggers of the same names and
  ``WHEN`` conditions. The segment fence raises ``SEGMENT_CLOSED`` (the message SQLite's fence aborts with).

Concurrency (PostgreSQL runs READ COMMITTED, with many writers at once where SQLite has one): the counters are
kept by ``UPDATE ... SET n = n + delta``, which waits for and re-reads a row another transaction is changing, so no
increment is lost. The fence locks the segment's row (``FOR NO KEY UPDATE``, the lock its live-bytes update takes
anyway, so two writers never upgrade a shared lock into a deadlock) until commit: the compactor's claim (an UPDATE
of that row to ``compacting``) then either waits for the reference to commit, and sees it when it reads the
segment's references, or comes first, and the reference is refused.

Each constant is the text of one migration step, frozen once released: a change of schema is a new step.
"""

from __future__ import annotations

SEGMENT_CLOSED = "atoll: segment closed"  # == sqlite_segments.SEGMENT_CLOSED: both engines' fences say it

# Version 3: everything as of #8 (tables of #1-#8, their indexes and counter triggers), in one step.
V3_BASELINE = """
CREATE TABLE schema_version (version BIGINT NOT NULL);

CREATE TABLE identities (
    access_key TEXT COLLATE "C" PRIMARY KEY, secret_key TEXT COLLATE "C" NOT NULL,
    owner_id TEXT COLLATE "C" NOT NULL, display_name TEXT COLLATE "C" NOT NULL, created DOUBLE PRECISION NOT NULL,
    is_root BIGINT NOT NULL, account_name TEXT COLLATE "C" NOT NULL DEFAULT '',
    account_key TEXT COLLATE "C" NOT NULL DEFAULT '', tenant TEXT COLLATE "C" NOT NULL DEFAULT '',
    role TEXT COLLATE "C" NOT NULL DEFAULT 'admin', scopes TEXT COLLATE "C" NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX identities_by_account ON identities (account_name) WHERE account_name != '';
CREATE INDEX identities_by_tenant ON identities (tenant);

CREATE TABLE buckets (
    name TEXT COLLATE "C" PRIMARY KEY, owner_id TEXT COLLATE "C" NOT NULL, created DOUBLE PRECISION NOT NULL,
    region TEXT COLLATE "C" NOT NULL, tenant TEXT COLLATE "C" NOT NULL DEFAULT '',
    limits TEXT COLLATE "C" NOT NULL DEFAULT '{}'
);
CREATE INDEX buckets_by_tenant ON buckets (tenant, name);

CREATE TABLE objects (
    bucket TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL, version_id TEXT COLLATE "C" NOT NULL,
    size BIGINT NOT NULL, etag TEXT COLLATE "C" NOT NULL, last_modified DOUBLE PRECISION NOT NULL,
    owner_id TEXT COLLATE "C" NOT NULL, part_count BIGINT NOT NULL, checksum_type TEXT COLLATE "C" NOT NULL,
    extents TEXT COLLATE "C" NOT NULL, attrs TEXT COLLATE "C" NOT NULL,
    residency BIGINT NOT NULL DEFAULT 2, warm_seq BIGINT NOT NULL DEFAULT 0, visited BIGINT NOT NULL DEFAULT 0,
    pinned_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, key)
);
CREATE INDEX objects_by_warm_seq ON objects (warm_seq) WHERE warm_seq > 0;
CREATE INDEX objects_pinned ON objects (pinned_until) WHERE pinned_until > 0;

CREATE TABLE uploads (
    upload_id TEXT COLLATE "C" PRIMARY KEY, bucket TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL,
    initiated DOUBLE PRECISION NOT NULL, owner_id TEXT COLLATE "C" NOT NULL, attrs TEXT COLLATE "C" NOT NULL
);
CREATE INDEX uploads_by_key ON uploads (bucket, key, upload_id);

CREATE TABLE parts (
    upload_id TEXT COLLATE "C" NOT NULL, part_number BIGINT NOT NULL, size BIGINT NOT NULL,
    etag TEXT COLLATE "C" NOT NULL, blob_id TEXT COLLATE "C" NOT NULL, last_modified DOUBLE PRECISION NOT NULL,
    checksums TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);

CREATE TABLE garbage (blob_id TEXT COLLATE "C" PRIMARY KEY, since DOUBLE PRECISION NOT NULL);

CREATE TABLE counters (name TEXT COLLATE "C" PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO counters VALUES ('resident_bytes', 0);

CREATE TABLE links (
    bucket TEXT COLLATE "C" PRIMARY KEY, url TEXT COLLATE "C" NOT NULL, mode TEXT COLLATE "C" NOT NULL,
    revalidate TEXT COLLATE "C" NOT NULL, options TEXT COLLATE "C" NOT NULL, created DOUBLE PRECISION NOT NULL
);

CREATE TABLE groups (
    bucket TEXT COLLATE "C" NOT NULL, prefix TEXT COLLATE "C" NOT NULL, markers TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (bucket, prefix)
);

CREATE TABLE drain (
    bucket TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL, op TEXT COLLATE "C" NOT NULL,
    version_id TEXT COLLATE "C" NOT NULL, size BIGINT NOT NULL, since DOUBLE PRECISION NOT NULL,
    attempts BIGINT NOT NULL, last_error TEXT COLLATE "C" NOT NULL, not_before DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (bucket, key)
);
CREATE INDEX drain_by_time ON drain (not_before, since);
CREATE INDEX drain_by_bucket_age ON drain (bucket, since);

CREATE TABLE cold_uploads (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, bucket TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C" NOT NULL, started DOUBLE PRECISION NOT NULL
);

CREATE TABLE fills (
    version_id TEXT COLLATE "C" PRIMARY KEY, block_size BIGINT NOT NULL, blocks BYTEA NOT NULL
);

CREATE TABLE jobs (
    job_id TEXT COLLATE "C" PRIMARY KEY, kind TEXT COLLATE "C" NOT NULL, bucket TEXT COLLATE "C" NOT NULL,
    spec TEXT COLLATE "C" NOT NULL, state TEXT COLLATE "C" NOT NULL, priority BIGINT NOT NULL,
    created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL, progress TEXT COLLATE "C" NOT NULL,
    error TEXT COLLATE "C" NOT NULL, owner TEXT COLLATE "C" NOT NULL, lease_until DOUBLE PRECISION NOT NULL
);

CREATE TABLE leases (
    bucket TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL, state TEXT COLLATE "C" NOT NULL,
    lease_id TEXT COLLATE "C" NOT NULL, duration BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
    break_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (bucket, key)
);

CREATE TABLE blocks (
    bucket TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL, block_id TEXT COLLATE "C" NOT NULL,
    blob_id TEXT COLLATE "C" NOT NULL, size BIGINT NOT NULL, md5 TEXT COLLATE "C" NOT NULL,
    created DOUBLE PRECISION NOT NULL, PRIMARY KEY (bucket, key, block_id)
);
CREATE INDEX blocks_by_created ON blocks (created);

CREATE TABLE bucket_properties (
    bucket TEXT COLLATE "C" PRIMARY KEY, public_access TEXT COLLATE "C" NOT NULL, metadata TEXT COLLATE "C" NOT NULL,
    access_policies TEXT COLLATE "C" NOT NULL, modified DOUBLE PRECISION NOT NULL
);

CREATE TABLE copies (
    bucket TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL, copy_id TEXT COLLATE "C" NOT NULL,
    source TEXT COLLATE "C" NOT NULL, status TEXT COLLATE "C" NOT NULL, started DOUBLE PRECISION NOT NULL,
    copied BIGINT NOT NULL, total BIGINT NOT NULL, completed DOUBLE PRECISION NOT NULL,
    description TEXT COLLATE "C" NOT NULL, version_id TEXT COLLATE "C" NOT NULL, heartbeat DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (bucket, key)
);

CREATE TABLE tenants (
    name TEXT COLLATE "C" PRIMARY KEY, created DOUBLE PRECISION NOT NULL, settings TEXT COLLATE "C" NOT NULL
);
INSERT INTO tenants VALUES ('root', extract(epoch FROM clock_timestamp()), '{}');

-- Usage counters per bucket (SQLite: sqlite_usage.py). Parts count in their upload's bucket.
CREATE TABLE usage (bucket TEXT COLLATE "C" PRIMARY KEY, bytes BIGINT NOT NULL, objects BIGINT NOT NULL);

CREATE FUNCTION atoll_usage_bucket_created() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage VALUES (NEW.name, 0, 0) ON CONFLICT (bucket) DO UPDATE SET bytes = 0, objects = 0;
    RETURN NULL;
END $$;
CREATE TRIGGER usage_bucket_created AFTER INSERT ON buckets
    FOR EACH ROW EXECUTE FUNCTION atoll_usage_bucket_created();

CREATE FUNCTION atoll_usage_bucket_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM usage WHERE bucket = OLD.name;
    RETURN NULL;
END $$;
CREATE TRIGGER usage_bucket_deleted AFTER DELETE ON buckets
    FOR EACH ROW EXECUTE FUNCTION atoll_usage_bucket_deleted();

CREATE FUNCTION atoll_usage_object_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE usage SET bytes = bytes + NEW.size, objects = objects + 1 WHERE bucket = NEW.bucket;
    RETURN NULL;
END $$;
CREATE TRIGGER usage_object_added AFTER INSERT ON objects
    FOR EACH ROW EXECUTE FUNCTION atoll_usage_object_added();

CREATE FUNCTION atoll_usage_object_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE usage SET bytes = bytes - OLD.size, objects = objects - 1 WHERE bucket = OLD.bucket;
    RETURN NULL;
END $$;
CREATE TRIGGER usage_object_removed AFTER DELETE ON objects
    FOR EACH ROW EXECUTE FUNCTION atoll_usage_object_removed();

CREATE FUNCTION atoll_usage_object_resized() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE usage SET bytes = bytes - OLD.size + NEW.size WHERE bucket = NEW.bucket;
    RETURN NULL;
END $$;
CREATE TRIGGER usage_object_resized AFTER UPDATE OF size ON objects
    FOR EACH ROW WHEN (OLD.size != NEW.size) EXECUTE FUNCTION atoll_usage_object_resized();

CREATE FUNCTION atoll_usage_part_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE usage SET bytes = bytes + NEW.size
    WHERE bucket = (SELECT u.bucket FROM uploads u WHERE u.upload_id = NEW.upload_id);
    RETURN NULL;
END $$;
CREATE TRIGGER usage_part_added AFTER INSERT ON parts
    FOR EACH ROW EXECUTE FUNCTION atoll_usage_part_added();

CREATE FUNCTION atoll_usage_part_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE usage SET bytes = bytes - OLD.size
    WHERE bucket = (SELECT u.bucket FROM uploads u WHERE u.upload_id = OLD.upload_id);
    RETURN NULL;
END $$;
CREATE TRIGGER usage_part_removed AFTER DELETE ON parts
    FOR EACH ROW EXECUTE FUNCTION atoll_usage_part_removed();

CREATE FUNCTION atoll_usage_block_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE usage SET bytes = bytes + NEW.size WHERE bucket = NEW.bucket;
    RETURN NULL;
END $$;
CREATE TRIGGER usage_block_added AFTER INSERT ON blocks
    FOR EACH ROW EXECUTE FUNCTION atoll_usage_block_added();

CREATE FUNCTION atoll_usage_block_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE usage SET bytes = bytes - OLD.size WHERE bucket = OLD.bucket;
    RETURN NULL;
END $$;
CREATE TRIGGER usage_block_removed AFTER DELETE ON blocks
    FOR EACH ROW EXECUTE FUNCTION atoll_usage_block_removed();

-- Warm bytes per bucket (SQLite: sqlite_warm.py): versions with residency > 0, partial fills counted whole.
CREATE TABLE warm (bucket TEXT COLLATE "C" PRIMARY KEY, bytes BIGINT NOT NULL);

CREATE FUNCTION atoll_warm_object_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO warm VALUES (NEW.bucket, NEW.size)
        ON CONFLICT (bucket) DO UPDATE SET bytes = warm.bytes + excluded.bytes;
    RETURN NULL;
END $$;
CREATE TRIGGER warm_object_added AFTER INSERT ON objects
    FOR EACH ROW WHEN (NEW.residency > 0) EXECUTE FUNCTION atoll_warm_object_added();

CREATE FUNCTION atoll_warm_object_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE warm SET bytes = bytes - OLD.size WHERE bucket = OLD.bucket;
    RETURN NULL;
END $$;
CREATE TRIGGER warm_object_removed AFTER DELETE ON objects
    FOR EACH ROW WHEN (OLD.residency > 0) EXECUTE FUNCTION atoll_warm_object_removed();

CREATE FUNCTION atoll_warm_object_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.residency > 0 THEN
        UPDATE warm SET bytes = bytes - OLD.size WHERE bucket = OLD.bucket;
    END IF;
    IF NEW.residency > 0 THEN
        INSERT INTO warm VALUES (NEW.bucket, NEW.size)
            ON CONFLICT (bucket) DO UPDATE SET bytes = warm.bytes + excluded.bytes;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER warm_object_changed AFTER UPDATE OF residency, size ON objects
    FOR EACH ROW WHEN ((OLD.residency > 0) != (NEW.residency > 0) OR (NEW.residency > 0 AND OLD.size != NEW.size))
    EXECUTE FUNCTION atoll_warm_object_changed();

CREATE FUNCTION atoll_warm_bucket_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM warm WHERE bucket = OLD.name;
    RETURN NULL;
END $$;
CREATE TRIGGER warm_bucket_deleted AFTER DELETE ON buckets
    FOR EACH ROW EXECUTE FUNCTION atoll_warm_bucket_deleted();

-- The packed store (SQLite: sqlite_segments.py): segments, the reverse index of their live records, the fence.
CREATE TABLE segments (
    segment_id TEXT COLLATE "C" PRIMARY KEY, owner TEXT COLLATE "C" NOT NULL, state TEXT COLLATE "C" NOT NULL,
    created DOUBLE PRECISION NOT NULL, sealed DOUBLE PRECISION NOT NULL DEFAULT 0, size BIGINT NOT NULL DEFAULT 0,
    live_bytes BIGINT NOT NULL DEFAULT 0, live_count BIGINT NOT NULL DEFAULT 0,
    lease_until DOUBLE PRECISION NOT NULL DEFAULT 0, retired DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE INDEX segments_by_state ON segments (state, sealed);

CREATE TABLE packed_refs (
    segment_id TEXT COLLATE "C" NOT NULL, "offset" BIGINT NOT NULL, length BIGINT NOT NULL,
    bucket TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL, PRIMARY KEY (segment_id, "offset")
);

CREATE FUNCTION atoll_packed_ref_fence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM segments WHERE segment_id = NEW.segment_id AND state IN ('open', 'sealed') FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'atoll: segment closed';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER packed_ref_fence BEFORE INSERT ON packed_refs
    FOR EACH ROW EXECUTE FUNCTION atoll_packed_ref_fence();

CREATE FUNCTION atoll_packed_ref_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE segments SET live_bytes = live_bytes + NEW.length, live_count = live_count + 1
    WHERE segment_id = NEW.segment_id;
    RETURN NULL;
END $$;
CREATE TRIGGER packed_ref_added AFTER INSERT ON packed_refs
    FOR EACH ROW EXECUTE FUNCTION atoll_packed_ref_added();

CREATE FUNCTION atoll_packed_ref_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE segments SET live_bytes = live_bytes - OLD.length, live_count = live_count - 1
    WHERE segment_id = OLD.segment_id;
    RETURN NULL;
END $$;
CREATE TRIGGER packed_ref_removed AFTER DELETE ON packed_refs
    FOR EACH ROW EXECUTE FUNCTION atoll_packed_ref_removed();

-- extents is a JSON array of [blob_id, offset, length]; a blob id starting with 's' is a record in a segment.
CREATE FUNCTION atoll_packed_refs_of(extents TEXT) RETURNS TABLE (segment_id TEXT, "offset" BIGINT, length BIGINT)
LANGUAGE sql IMMUTABLE AS $$
    SELECT e.v ->> 0, (e.v ->> 1)::bigint, (e.v ->> 2)::bigint FROM json_array_elements(extents::json) AS e(v)
    WHERE left(e.v ->> 0, 1) = 's'
$$;

CREATE FUNCTION atoll_packed_object_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO packed_refs SELECT r.segment_id, r."offset", r.length, NEW.bucket, NEW.key
    FROM atoll_packed_refs_of(NEW.extents) AS r;
    RETURN NULL;
END $$;
CREATE TRIGGER packed_object_added AFTER INSERT ON objects
    FOR EACH ROW WHEN (strpos(NEW.extents, '["s') > 0) EXECUTE FUNCTION atoll_packed_object_added();

CREATE FUNCTION atoll_packed_object_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM packed_refs p USING atoll_packed_refs_of(OLD.extents) AS r
    WHERE p.segment_id = r.segment_id AND p."offset" = r."offset";
    RETURN NULL;
END $$;
CREATE TRIGGER packed_object_removed AFTER DELETE ON objects
    FOR EACH ROW WHEN (strpos(OLD.extents, '["s') > 0) EXECUTE FUNCTION atoll_packed_object_removed();

CREATE FUNCTION atoll_packed_object_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM packed_refs p USING atoll_packed_refs_of(OLD.extents) AS r
    WHERE p.segment_id = r.segment_id AND p."offset" = r."offset";
    INSERT INTO packed_refs SELECT r.segment_id, r."offset", r.length, NEW.bucket, NEW.key
    FROM atoll_packed_refs_of(NEW.extents) AS r;
    RETURN NULL;
END $$;
CREATE TRIGGER packed_object_moved AFTER UPDATE OF extents ON objects
    FOR EACH ROW WHEN (OLD.extents IS DISTINCT FROM NEW.extents
                       AND (strpos(OLD.extents, '["s') > 0 OR strpos(NEW.extents, '["s') > 0))
    EXECUTE FUNCTION atoll_packed_object_moved();
"""

# Version 4: the cluster (#9): live nodes and the leases of singleton background tasks.
V4_CLUSTER = """
CREATE TABLE nodes (
    node TEXT COLLATE "C" PRIMARY KEY, address TEXT COLLATE "C" NOT NULL, started DOUBLE PRECISION NOT NULL,
    heartbeat DOUBLE PRECISION NOT NULL, info TEXT COLLATE "C" NOT NULL
);
CREATE TABLE cluster_leases (
    name TEXT COLLATE "C" PRIMARY KEY, owner TEXT COLLATE "C" NOT NULL, lease_until DOUBLE PRECISION NOT NULL
);
"""

# Version 6: counters applied at the end of a write, in one order (#9: PUTs on PostgreSQL deadlocked and queued).
# The triggers of V3 updated the hot rows (a segment's live bytes, a bucket's usage and warm bytes) as each change
# happened, so a write locked them in the order of its changes: an overwrite took the old segment and the usage
# row before the new segment, a create the new segment before the usage row, and two such writes waited on each
# other until the deadlock detector broke one (after deadlock_timeout). Every counter change now goes through
# ``atoll_count``. A transaction that set ``atoll.defer_counts`` (PostgresMetaStore's writes) collects them in
# its own temporary table and applies them, summed, just before COMMIT, with ``atoll_apply_counts``: rows kind by
# kind (segments, usage, warm, counters: the row every write shares last), name by name. Hot rows are then
# locked in one global order, for the last statement and the commit only. Any other session (psql, older code,
# repair tools) updates them at once, as before.
# The fence takes the segment's row FOR KEY SHARE: writers into one segment no longer queue on it, and a
# compactor's claim (SELECT ... FOR UPDATE, which conflicts with KEY SHARE) still waits for, or skips, a segment
# whose reference is not committed; a fence that waited re-reads the row and sees ``compacting``.
V6_DEFERRED_COUNTS = """
CREATE FUNCTION atoll_count_now(kind INT, name TEXT, delta_bytes BIGINT, delta_items BIGINT) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF name IS NULL OR (delta_bytes = 0 AND delta_items = 0) THEN
        RETURN;
    ELSIF kind = 1 THEN
        UPDATE segments SET live_bytes = live_bytes + delta_bytes, live_count = live_count + delta_items
        WHERE segment_id = name;
    ELSIF kind = 2 THEN
        UPDATE usage SET bytes = bytes + delta_bytes, objects = objects + delta_items WHERE bucket = name;
    ELSIF kind = 3 THEN
        IF delta_bytes > 0 THEN
            INSERT INTO warm VALUES (name, delta_bytes)
                ON CONFLICT (bucket) DO UPDATE SET bytes = warm.bytes + excluded.bytes;
        ELSE
            UPDATE warm SET bytes = bytes + delta_bytes WHERE bucket = name;
        END IF;
    ELSE
        UPDATE counters SET value = value + delta_bytes WHERE counters.name = atoll_count_now.name;
    END IF;
END $$;

CREATE FUNCTION atoll_count(kind INT, name TEXT, delta_bytes BIGINT, delta_items BIGINT) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('atoll.defer_counts', true) = 'on' THEN
        INSERT INTO pg_temp.atoll_deltas VALUES (kind, name, delta_bytes, delta_items);
    ELSE
        PERFORM atoll_count_now(kind, name, delta_bytes, delta_items);
    END IF;
END $$;

CREATE FUNCTION atoll_apply_counts() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    FOR d IN WITH taken AS (DELETE FROM pg_temp.atoll_deltas RETURNING *)
             SELECT kind, name, sum(delta_bytes)::bigint AS b, sum(delta_items)::bigint AS n FROM taken
             GROUP BY kind, name ORDER BY kind, name LOOP
        PERFORM atoll_count_now(d.kind, d.name, d.b, d.n);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION atoll_usage_object_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atoll_count(2, NEW.bucket, NEW.size, 1);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION atoll_usage_object_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atoll_count(2, OLD.bucket, -OLD.size, -1);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION atoll_usage_object_resized() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atoll_count(2, NEW.bucket, NEW.size - OLD.size, 0);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION atoll_usage_part_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atoll_count(2, (SELECT u.bucket FROM uploads u WHERE u.upload_id = NEW.upload_id), NEW.size, 0);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION atoll_usage_part_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atoll_count(2, (SELECT u.bucket FROM uploads u WHERE u.upload_id = OLD.upload_id), -OLD.size, 0);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION atoll_usage_block_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atoll_count(2, NEW.bucket, NEW.size, 0);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION atoll_usage_block_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atoll_count(2, OLD.bucket, -OLD.size, 0);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION atoll_warm_object_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atoll_count(3, NEW.bucket, NEW.size, 0);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION atoll_warm_object_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atoll_count(3, OLD.bucket, -OLD.size, 0);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION atoll_warm_object_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.residency > 0 THEN
        PERFORM atoll_count(3, OLD.bucket, -OLD.size, 0);
    END IF;
    IF NEW.residency > 0 THEN
        PERFORM atoll_count(3, NEW.bucket, NEW.size, 0);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION atoll_packed_ref_fence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM segments WHERE segment_id = NEW.segment_id AND state IN ('open', 'sealed') FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'atoll: segment closed';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION atoll_packed_ref_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atoll_count(1, NEW.segment_id, NEW.length, 1);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION atoll_packed_ref_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atoll_count(1, OLD.segment_id, -OLD.length, -1);
    RETURN NULL;
END $$;
"""

# Version 7: the audit log (#10): operator actions through the admin API (atoll/stores/meta/sql_audit.py).
V7_AUDIT = """
CREATE TABLE audit (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, time DOUBLE PRECISION NOT NULL,
    actor TEXT COLLATE "C" NOT NULL, action TEXT COLLATE "C" NOT NULL, target TEXT COLLATE "C" NOT NULL,
    detail TEXT COLLATE "C" NOT NULL, outcome TEXT COLLATE "C" NOT NULL, request_id TEXT COLLATE "C" NOT NULL,
    node TEXT COLLATE "C" NOT NULL
);
"""
