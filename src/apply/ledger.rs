//! The ledger of applied changes (issue 22): each green batch appends a
//! row to `teal.ledger` in the same transaction, chained by SHA-256, so
//! that a row edited, deleted or inserted afterwards breaks the chain at
//! that row.
//!
//! ```text
//! batch digest = SHA-256 over the canonical encoding of the batch's changes, in order:
//!   per change: kind, table (schema, name), old image (key or row), new image, each
//!   value tagged (null, unchanged TOAST, text, binary) and length-prefixed;
//!   per transaction: its commit LSN and xid
//! row hash     = SHA-256("teal-ledger-v1", prev row hash (32 zero bytes for the first),
//!                slot, first LSN, last LSN, transactions, changes, batch digest)
//! ```
//!
//! `appended_at` is not covered (green's clock writes it). `teal audit
//! verify` ([`verify_chain`]) recomputes every row's hash and its link to
//! the row before it.

use ring::digest::{Context, SHA256};
use tokio_postgres::{Client, Statement};

use crate::event::{Change, ChangeKind, RowImage, TxnMeta, Value};
use crate::lsn::Lsn;
use crate::store::Store;

/// The running digest of one batch's changes. The encoding is gathered
/// in a buffer and hashed in large pieces: many small `update` calls cost
/// more than the hashing itself.
pub(crate) struct BatchDigest {
    context: Context,
    buffer: Vec<u8>,
}

/// Bytes gathered before they are hashed.
const DIGEST_CHUNK: usize = 32 * 1024;

impl BatchDigest {
    pub(crate) fn new() -> BatchDigest {
        BatchDigest {
            context: Context::new(&SHA256),
            buffer: Vec::with_capacity(DIGEST_CHUNK + 1024),
        }
    }

    fn put(&mut self, b: &[u8]) {
        if self.buffer.len() + b.len() > DIGEST_CHUNK {
            self.context.update(&self.buffer);
            self.buffer.clear();
            if b.len() > DIGEST_CHUNK {
                self.context.update(b);
                return;
            }
        }
        self.buffer.extend_from_slice(b);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.put(&(b.len() as u64).to_be_bytes());
        self.put(b);
    }

    fn image(&mut self, tag: u8, row: Option<&RowImage>) {
        let Some(row) = row else {
            self.put(&[tag, 0]);
            return;
        };
        self.put(&[tag, 1]);
        self.put(&(row.values().len() as u32).to_be_bytes());
        for v in row.values() {
            match v {
                Value::Null => self.put(b"n"),
                Value::UnchangedToast => self.put(b"u"),
                Value::Text(t) => {
                    self.put(b"t");
                    self.bytes(t);
                }
                Value::Binary(b) => {
                    self.put(b"b");
                    self.bytes(b);
                }
            }
        }
    }

    fn table(&mut self, name: &crate::event::QualifiedName) {
        self.bytes(name.namespace.as_bytes());
        self.bytes(name.name.as_bytes());
    }

    /// One change, in the order it is applied.
    pub(crate) fn change(&mut self, change: &Change) {
        match &change.kind {
            ChangeKind::Insert { relation, new } => {
                self.put(b"I");
                self.table(&relation.name);
                self.image(b'N', Some(new));
            }
            ChangeKind::Update { relation, old, new } => {
                self.put(b"U");
                self.table(&relation.name);
                self.image(b'O', old.as_ref().map(|o| o.image()));
                self.image(b'N', Some(new));
            }
            ChangeKind::Delete { relation, old } => {
                self.put(b"D");
                self.table(&relation.name);
                self.image(b'O', Some(old.image()));
            }
            ChangeKind::Truncate {
                relations,
                cascade,
                restart_identity,
            } => {
                self.put(b"T");
                self.put(&[u8::from(*cascade), u8::from(*restart_identity)]);
                self.put(&(relations.len() as u32).to_be_bytes());
                for r in relations {
                    self.table(&r.name);
                }
            }
            ChangeKind::Message(m) => {
                self.put(b"M");
                self.bytes(m.prefix.as_bytes());
                self.bytes(&m.content);
            }
        }
    }

    /// A source transaction ends.
    pub(crate) fn commit(&mut self, meta: &TxnMeta) {
        self.put(b"C");
        self.put(&meta.commit_lsn.0.to_be_bytes());
        self.put(&u64::from(meta.xid.0).to_be_bytes());
    }

    pub(crate) fn finish(mut self) -> [u8; 32] {
        self.context.update(&self.buffer);
        let mut out = [0u8; 32];
        out.copy_from_slice(self.context.finish().as_ref());
        out
    }
}

/// The fields a ledger row's hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    /// The slot (the chain is per slot).
    pub slot: String,
    /// Commit LSN of the batch's first source transaction.
    pub first_lsn: Lsn,
    /// End LSN of its last.
    pub last_lsn: Lsn,
    /// Source transactions in the batch.
    pub transactions: i64,
    /// Changes in the batch.
    pub changes: i64,
    /// [`BatchDigest`] of the batch.
    pub batch: [u8; 32],
}

impl LedgerRow {
    /// The row's hash after `prev` (`None`: the slot's first row).
    pub fn hash(&self, prev: Option<&[u8]>) -> [u8; 32] {
        let mut c = Context::new(&SHA256);
        c.update(b"teal-ledger-v1");
        c.update(prev.unwrap_or(&[0u8; 32]));
        c.update(&(self.slot.len() as u64).to_be_bytes());
        c.update(self.slot.as_bytes());
        c.update(&self.first_lsn.0.to_be_bytes());
        c.update(&self.last_lsn.0.to_be_bytes());
        c.update(&self.transactions.to_be_bytes());
        c.update(&self.changes.to_be_bytes());
        c.update(&self.batch);
        let mut out = [0u8; 32];
        out.copy_from_slice(c.finish().as_ref());
        out
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The apply session's end of the chain.
pub(crate) struct Ledger {
    head: Option<[u8; 32]>,
    insert: Statement,
}

impl Ledger {
    /// The chain of `slot` as green holds it.
    pub(crate) async fn load(
        client: &Client,
        store: &Store,
        slot: &str,
    ) -> Result<Ledger, tokio_postgres::Error> {
        let head = client
            .query_opt(
                &format!(
                    "SELECT sha256 FROM {}.ledger WHERE slot = $1 ORDER BY seq DESC LIMIT 1",
                    store.quoted()
                ),
                &[&slot],
            )
            .await?
            .and_then(|r| <[u8; 32]>::try_from(r.get::<_, Vec<u8>>(0)).ok());
        let insert = client
            .prepare(&format!(
                "INSERT INTO {}.ledger (slot, first_lsn, last_lsn, transactions, changes, batch_sha256, prev_sha256, sha256) \
                 VALUES ($1, $2::text::pg_lsn, $3::text::pg_lsn, $4, $5, $6, $7, $8)",
                store.quoted()
            ))
            .await?;
        Ok(Ledger { head, insert })
    }

    /// Appends `row` in the open transaction; its hash, to [`Self::advance`]
    /// to once the transaction committed.
    pub(crate) async fn append(
        &self,
        client: &Client,
        row: &LedgerRow,
    ) -> Result<[u8; 32], tokio_postgres::Error> {
        let hash = row.hash(self.head.as_ref().map(|h| h.as_slice()));
        client
            .execute(
                &self.insert,
                &[
                    &row.slot,
                    &row.first_lsn.to_string(),
                    &row.last_lsn.to_string(),
                    &row.transactions,
                    &row.changes,
                    &row.batch.as_slice(),
                    &self.head.as_ref().map(|h| h.as_slice()),
                    &hash.as_slice(),
                ],
            )
            .await?;
        Ok(hash)
    }

    /// The transaction with the row `hash` committed.
    pub(crate) fn advance(&mut self, hash: [u8; 32]) {
        self.head = Some(hash);
    }

    /// The chain's head, hex.
    pub(crate) fn head_hex(&self) -> Option<String> {
        self.head.as_ref().map(|h| hex(h))
    }
}

/// One slot's chain, checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainCheck {
    /// The slot.
    pub slot: String,
    /// Rows read.
    pub rows: u64,
    /// The last row's hash (hex).
    pub head: Option<String>,
    /// The first broken link, named: `None` when the chain is intact.
    pub broken: Option<String>,
}

/// Recomputes every ledger row's hash and its link to the row before it,
/// per slot (or only `slot`); names the first broken link of each.
pub async fn verify_chain(
    client: &Client,
    store: &Store,
    slot: Option<&str>,
) -> Result<Vec<ChainCheck>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT seq, slot, first_lsn::text, last_lsn::text, transactions, changes, \
                        batch_sha256, prev_sha256, sha256 \
                 FROM {}.ledger WHERE $1::text IS NULL OR slot = $1 ORDER BY slot, seq",
                store.quoted()
            ),
            &[&slot],
        )
        .await?;
    let mut out: Vec<ChainCheck> = Vec::new();
    let mut prev: Option<(i64, Vec<u8>)> = None;
    for r in rows {
        let seq: i64 = r.get(0);
        let row_slot: String = r.get(1);
        if out.last().is_none_or(|c| c.slot != row_slot) {
            out.push(ChainCheck {
                slot: row_slot.clone(),
                rows: 0,
                head: None,
                broken: None,
            });
            prev = None;
        }
        let check = out.last_mut().expect("pushed above");
        check.rows += 1;
        let stored: Vec<u8> = r.get(8);
        check.head = Some(hex(&stored));
        if check.broken.is_some() {
            continue;
        }
        let stored_prev: Option<Vec<u8>> = r.get(7);
        let batch = <[u8; 32]>::try_from(r.get::<_, Vec<u8>>(6)).unwrap_or([0; 32]);
        let row = LedgerRow {
            slot: row_slot,
            first_lsn: r.get::<_, String>(2).parse().unwrap_or(Lsn::ZERO),
            last_lsn: r.get::<_, String>(3).parse().unwrap_or(Lsn::ZERO),
            transactions: r.get(4),
            changes: r.get(5),
            batch,
        };
        let expected_prev = prev.as_ref().map(|(_, h)| h.as_slice());
        if stored_prev.as_deref() != expected_prev {
            check.broken = Some(match &prev {
                Some((p, _)) => format!(
                    "row {seq} ({} .. {}) does not follow row {p}: a row between them was deleted, or this one inserted",
                    row.first_lsn, row.last_lsn
                ),
                None => format!(
                    "row {seq} ({} .. {}) is the first row of slot {} but names a previous row: rows before it were deleted",
                    row.first_lsn, row.last_lsn, row.slot
                ),
            });
        } else if row.hash(expected_prev).as_slice() != stored.as_slice() {
            check.broken = Some(format!(
                "row {seq} ({} .. {}) was changed after it was written: its hash does not match its contents",
                row.first_lsn, row.last_lsn
            ));
        }
        prev = Some((seq, stored));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rows_hash_covers_every_field_and_its_predecessor() {
        let row = LedgerRow {
            slot: "s".into(),
            first_lsn: Lsn(1),
            last_lsn: Lsn(2),
            transactions: 3,
            changes: 4,
            batch: [7; 32],
        };
        let base = row.hash(None);
        assert_eq!(base, row.hash(Some(&[0; 32])), "no predecessor: zeros");
        assert_ne!(base, row.hash(Some(&[1; 32])));
        let changed = [
            LedgerRow {
                slot: "t".into(),
                ..row.clone()
            },
            LedgerRow {
                first_lsn: Lsn(9),
                ..row.clone()
            },
            LedgerRow {
                last_lsn: Lsn(9),
                ..row.clone()
            },
            LedgerRow {
                transactions: 9,
                ..row.clone()
            },
            LedgerRow {
                changes: 9,
                ..row.clone()
            },
            LedgerRow {
                batch: [8; 32],
                ..row.clone()
            },
        ];
        for c in changed {
            assert_ne!(c.hash(None), base, "{c:?}");
        }
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }

    #[test]
    fn buffering_does_not_change_the_digest() {
        let long = vec![7u8; DIGEST_CHUNK * 3 + 5];
        let mut a = BatchDigest::new();
        for piece in long.chunks(1000) {
            a.put(piece);
        }
        a.put(&long[..10]);
        let mut b = BatchDigest::new();
        b.put(&long);
        b.put(&long[..10]);
        let mut c = Context::new(&SHA256);
        c.update(&long);
        c.update(&long[..10]);
        let expected: [u8; 32] = c.finish().as_ref().try_into().unwrap();
        assert_eq!((a.finish(), b.finish()), (expected, expected));
    }

    #[test]
    fn a_batch_digest_covers_each_value_its_table_and_the_order() {
        use crate::apply::fixture::{V, delete, insert, keyed, txn, update};
        let (a, b) = (keyed("a", 2), keyed("b", 2));
        let digest = |changes: &[Change]| {
            let mut d = BatchDigest::new();
            for c in changes {
                d.change(c);
            }
            d.commit(&txn(1));
            d.finish()
        };
        let base = [
            insert(&a, &[V::T("1"), V::T("x")]),
            update(&a, &[V::T("1"), V::T("y")], None),
            delete(&a, &[V::T("1"), V::N]),
        ];
        let d = digest(&base);
        assert_eq!(
            d,
            digest(&base),
            "canonical: the same changes, the same digest"
        );
        let variants = [
            // A value.
            [
                insert(&a, &[V::T("1"), V::T("z")]),
                base[1].clone(),
                base[2].clone(),
            ],
            // NULL against an empty string.
            [
                insert(&a, &[V::T("1"), V::T("")]),
                base[1].clone(),
                base[2].clone(),
            ],
            [
                insert(&a, &[V::T("1"), V::N]),
                base[1].clone(),
                base[2].clone(),
            ],
            // Text against binary of the same bytes.
            [
                insert(&a, &[V::T("1"), V::B(b"x")]),
                base[1].clone(),
                base[2].clone(),
            ],
            // Another table.
            [
                insert(&b, &[V::T("1"), V::T("x")]),
                base[1].clone(),
                base[2].clone(),
            ],
            // An old key.
            [
                base[0].clone(),
                update(&a, &[V::T("1"), V::T("y")], Some(&[V::T("1"), V::N])),
                base[2].clone(),
            ],
            // The order.
            [base[1].clone(), base[0].clone(), base[2].clone()],
        ];
        for v in &variants {
            assert_ne!(digest(v), d, "{v:?}");
        }
        // Value boundaries: ("ab", "c") is not ("a", "bc").
        assert_ne!(
            digest(&[insert(&a, &[V::T("ab"), V::T("c")])]),
            digest(&[insert(&a, &[V::T("a"), V::T("bc")])])
        );
    }
}
