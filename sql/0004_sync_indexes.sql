-- teal's schema, version 4: green indexes that `teal sync` dropped before
-- copying into their (empty) table, to build each once its table's rows are
-- all in: one sorted build instead of an index insertion per copied row.
-- A row is inserted in the transaction that drops the index and deleted in
-- the one that builds it again, so green never loses an index definition,
-- even when teal is killed in between. Rows are not tied to the sync row:
-- a copy that starts over keeps them, and its next run builds them.
CREATE TABLE @schema@.sync_indexes (
    index_name  text PRIMARY KEY,  -- quoted schema.name on green
    table_name  text NOT NULL,     -- green's table, quoted schema.name
    slot        text NOT NULL,     -- the sync that dropped it
    position    int NOT NULL,      -- build order within the table
    statements  text NOT NULL,     -- what builds it again (index or constraint, replica identity, CLUSTER ON, comments)
    dropped_at  timestamptz NOT NULL DEFAULT now()
);
