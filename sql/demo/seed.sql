-- Opening balances: 1,000 accounts of 1,000.00 each (deterministic, so
-- loading it on both sides before streaming also leaves them equal).
INSERT INTO accounts (id, owner, balance, updated_at)
SELECT i, 'customer ' || i, 1000, '2026-01-01 00:00:00+00'
FROM generate_series(1, 1000) i;
