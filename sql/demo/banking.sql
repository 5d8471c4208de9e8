-- Sample banking schema for teal's demo: accounts, transfers (with a memo
-- large enough to be TOASTed) and a double-entry ledger where, for every
-- transfer, debits equal credits.

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

INSERT INTO accounts (id, owner, balance)
SELECT i, 'customer ' || i, 1000 FROM generate_series(1, 1000) i;

-- One transfer: a transfers row, two ledger rows (debit and credit) and two
-- balance updates, in one transaction. One in ten carries an ~8 kB memo,
-- which PostgreSQL stores out of line (TOAST).
CREATE PROCEDURE demo_transfer()
LANGUAGE plpgsql AS $$
DECLARE
    a bigint := 1 + floor(random() * 1000);
    b bigint := 1 + floor(random() * 1000);
    amt numeric(20, 2) := round((1 + random() * 99)::numeric, 2);
    t bigint;
BEGIN
    IF a = b THEN
        b := 1 + (a % 1000);
    END IF;
    INSERT INTO transfers (from_account, to_account, amount, memo)
    VALUES (a, b, amt,
            CASE WHEN random() < 0.1
                 THEN (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 256))
                 ELSE 'transfer ' || a || ' -> ' || b END)
    RETURNING id INTO t;
    INSERT INTO ledger (transfer_id, account_id, debit) VALUES (t, a, amt);
    INSERT INTO ledger (transfer_id, account_id, credit) VALUES (t, b, amt);
    UPDATE accounts SET balance = balance - amt, updated_at = now() WHERE id = a;
    UPDATE accounts SET balance = balance + amt, updated_at = now() WHERE id = b;
END $$;

CREATE PUBLICATION teal_demo FOR TABLE accounts, transfers, ledger;
