-- Sample banking schema for teal's demo (blue and green): accounts,
-- transfers (with a memo large enough to be TOASTed) and a double-entry
-- ledger where, for every transfer, debits equal credits. The transfer
-- procedure and the publication are in workload.sql (blue only), the
-- opening balances in seed.sql.

CREATE TABLE accounts (
    id          bigint PRIMARY KEY,
    owner       text NOT NULL,
    currency    char(3) NOT NULL DEFAULT 'EUR',
    balance     numeric(20, 2) NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE transfers (
    id            bigserial PRIMARY KEY,
    from_account  bigint NOT NULL REFERENCES accounts,
    to_account    bigint NOT NULL REFERENCES accounts,
    amount        numeric(20, 2) NOT NULL CHECK (amount > 0),
    memo          text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger (
    id           bigserial PRIMARY KEY,
    transfer_id  bigint NOT NULL REFERENCES transfers,
    account_id   bigint NOT NULL REFERENCES accounts,
    debit        numeric(20, 2) NOT NULL DEFAULT 0,
    credit       numeric(20, 2) NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((debit = 0) <> (credit = 0))
);
