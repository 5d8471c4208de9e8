-- teal's own state on green, version 1. Applied by `teal stream` at start
-- (src/store.rs), once, in a transaction; never edited after release: later
-- changes go in new numbered files. @schema@ is teal's schema (default teal).

CREATE SCHEMA IF NOT EXISTS @schema@;

-- Exactly once: per slot, how far green is complete. end_lsn is the end of
-- the last source transaction applied (written in the same green transaction
-- as its changes, so green's contents and this row can never disagree), or a
-- later keepalive position when nothing was pending; blue is never told more
-- than this. commit_lsn, xid and commit_ts describe the last transaction.
CREATE TABLE @schema@.progress (
    slot           text PRIMARY KEY,
    end_lsn        pg_lsn NOT NULL,
    commit_lsn     pg_lsn,
    xid            bigint,
    commit_ts      timestamptz,
    applied_at     timestamptz NOT NULL DEFAULT now()
);

-- Every conflict between a source change and green's rows, with what was
-- done about it. Rows are written in the transaction that resolved the
-- conflict (or, under the `error` policy, after rolling the batch back).
CREATE TABLE @schema@.conflicts (
    id           bigserial PRIMARY KEY,
    slot         text NOT NULL,
    table_name   text NOT NULL,
    operation    text NOT NULL CHECK (operation IN ('insert', 'update', 'delete')),
    kind         text NOT NULL CHECK (kind IN ('insert_exists', 'update_missing', 'delete_missing')),
    key          jsonb,
    source_row   jsonb,
    target_row   jsonb,
    commit_lsn   pg_lsn NOT NULL,
    change_lsn   pg_lsn NOT NULL,
    xid          bigint NOT NULL,
    policy       text NOT NULL,
    resolution   text NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conflicts_table ON @schema@.conflicts (table_name, detected_at);
