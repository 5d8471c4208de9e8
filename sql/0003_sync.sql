-- teal's schema, version 3: the initial copy of `teal sync`. One row per
-- slot whose copy started (consistent_point: where the slot's stream begins,
-- the exported snapshot being consistent with it) and one per chunk of a
-- table. A chunk's rows and its copied_at are committed in one green
-- transaction, so a chunk is either wholly on green or not at all.
-- finished_at is set, with the progress row at consistent_point, once every
-- chunk and the sequences are copied; from then on `teal stream` (or a new
-- `teal sync`) streams from the slot. While the snapshot is still held
-- (holder_pid on holder_host), an interrupted copy resumes with it.
CREATE TABLE @schema@.sync (
    slot              text PRIMARY KEY,
    consistent_point  pg_lsn NOT NULL,
    snapshot_name     text,
    holder_pid        int,            -- the process keeping the snapshot (teal snapshot-holder)
    holder_host       text,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);

CREATE TABLE @schema@.sync_chunks (
    slot        text NOT NULL REFERENCES @schema@.sync ON DELETE CASCADE,
    table_name  text NOT NULL,    -- green's table, quoted schema.name
    chunk       int NOT NULL,
    source      text NOT NULL,    -- the blue relation read (the table or a leaf partition)
    first_page  bigint,           -- ctid pages [first_page, last_page); NULL: unbounded
    last_page   bigint,
    rows        bigint,
    bytes       bigint,
    copied_at   timestamptz,      -- NULL until the chunk's rows are committed
    PRIMARY KEY (slot, table_name, chunk)
);
