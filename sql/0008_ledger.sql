-- teal's schema, version 8: the ledger of applied changes. Each batch
-- apply commits appends one row in the same transaction: its LSN range,
-- counts, the SHA-256 of its changes' canonical encoding, and the hash of
-- the row before it (src/apply/ledger.rs). `teal audit verify` recomputes
-- the chain and names the first broken link. appended_at is not covered.
CREATE TABLE @schema@.ledger (
    seq           bigserial PRIMARY KEY,
    slot          text NOT NULL,
    first_lsn     pg_lsn NOT NULL,   -- commit LSN of the batch's first source transaction
    last_lsn      pg_lsn NOT NULL,   -- end LSN of its last
    transactions  bigint NOT NULL,
    changes       bigint NOT NULL,
    batch_sha256  bytea NOT NULL,
    prev_sha256   bytea,             -- NULL for a slot's first row
    sha256        bytea NOT NULL,
    appended_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON @schema@.ledger (slot, seq);
