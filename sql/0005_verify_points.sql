-- teal's schema, version 5: points of the stream `teal verify` compares at.
-- verify asks the running `teal stream` (whose apply session commits every
-- change on green) to pause at a transaction boundary ('hold' ->
-- 'holding'), takes blue's snapshot at an LSN past it, asks apply to go on
-- exactly up to that LSN ('at' -> 'reached'), exports green's snapshot there
-- and lets apply go on ('released'). Apply never waits longer than its
-- hold limit: a verify that vanished is marked 'missed'.
CREATE TABLE @schema@.verify_points (
    id           bigserial PRIMARY KEY,
    slot         text NOT NULL,
    state        text NOT NULL CHECK (state IN ('hold', 'holding', 'at', 'reached', 'released', 'missed')),
    lsn          pg_lsn,          -- blue's point (the consistent point of verify's slot)
    applied_lsn  pg_lsn,          -- green's committed end LSN when apply paused
    requested_at timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON @schema@.verify_points (slot, id);
