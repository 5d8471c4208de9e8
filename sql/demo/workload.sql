-- Blue only: the transfer the demo's writers call, and the publication.

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
    -- Both balances in one statement, rows locked in key order, so concurrent
    -- transfers between the same two accounts do not deadlock.
    UPDATE accounts
       SET balance = balance + CASE WHEN id = a THEN -amt ELSE amt END, updated_at = now()
     WHERE id IN (a, b);
END $$;

CREATE PUBLICATION teal_demo FOR TABLE accounts, transfers, ledger;
