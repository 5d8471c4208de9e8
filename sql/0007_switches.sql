-- teal's schema, version 7: blue-green switches (`teal cutover`,
-- `teal rollback`). One row per pair of databases, keyed by the forward
-- slot (on blue): which way the running `teal stream` streams, and the way
-- back. One row per switch: the control channel between the command and
-- the running stream, and what a crashed command left behind (a fence to
-- lift, a slot to drop).
CREATE TABLE @schema@.pairs (
    slot                text PRIMARY KEY,   -- the forward slot, on blue
    direction           text NOT NULL DEFAULT 'forward' CHECK (direction IN ('forward', 'reverse')),
    reverse_slot        text,               -- on green, while reversed (or armed)
    reverse_publication text,               -- on green
    switched_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE @schema@.switches (
    id            uuid PRIMARY KEY,
    slot          text NOT NULL,            -- the pair
    kind          text NOT NULL CHECK (kind IN ('cutover', 'rollback', 'rehearsal')),
    -- running: the command works (fence, marker, sequences, way back);
    -- switch: it asks the stream to change direction; switched: the stream
    -- did; done / aborted: finished either way.
    state         text NOT NULL CHECK (state IN ('running', 'switch', 'switched', 'done', 'aborted')),
    step          text NOT NULL,            -- the step it is at (for a crashed command)
    fence         jsonb,                    -- what was fenced, to lift it exactly
    reverse_slot  text,
    reverse_publication text,
    marker_lsn    pg_lsn,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON @schema@.switches (slot, requested_at);
