//! A test-only pgoutput encoder, written from the protocol documentation
//! independently of teal's decoder, plus a conversion of decoded messages
//! back to the same model, so `decode(encode(m)) == m` can be checked.

use bytes::{BufMut, Bytes, BytesMut};
use teal::lsn::{Lsn, PgTimestamp, Xid};
use teal::pgoutput::{self, ColumnKind, Message, OldTuple, TupleData};

/// A column of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Col {
    Null,
    Toast,
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

/// A Relation column: flags, name, type OID, typmod.
pub type RelCol = (u8, String, u32, i32);

/// Every pgoutput message, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Begin {
        final_lsn: u64,
        ts: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        ts: i64,
    },
    Origin {
        lsn: u64,
        name: String,
    },
    Relation {
        xid: Option<u32>,
        rel_id: u32,
        ns: String,
        name: String,
        ri: u8,
        cols: Vec<RelCol>,
    },
    Type {
        xid: Option<u32>,
        oid: u32,
        ns: String,
        name: String,
    },
    Insert {
        xid: Option<u32>,
        rel_id: u32,
        new: Vec<Col>,
    },
    Update {
        xid: Option<u32>,
        rel_id: u32,
        old: Option<(u8, Vec<Col>)>,
        new: Vec<Col>,
    },
    Delete {
        xid: Option<u32>,
        rel_id: u32,
        old: (u8, Vec<Col>),
    },
    Truncate {
        xid: Option<u32>,
        options: u8,
        rel_ids: Vec<u32>,
    },
    Message {
        xid: Option<u32>,
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Vec<u8>,
    },
    StreamStart {
        xid: u32,
        first: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        commit_lsn: u64,
        end_lsn: u64,
        ts: i64,
    },
    StreamAbort {
        xid: u32,
        subxid: u32,
        abort: Option<(u64, i64)>,
    },
    BeginPrepare {
        prepare_lsn: u64,
        end_lsn: u64,
        ts: i64,
        xid: u32,
        gid: String,
    },
    Prepare {
        prepare_lsn: u64,
        end_lsn: u64,
        ts: i64,
        xid: u32,
        gid: String,
    },
    CommitPrepared {
        commit_lsn: u64,
        end_lsn: u64,
        ts: i64,
        xid: u32,
        gid: String,
    },
    RollbackPrepared {
        prepare_end_lsn: u64,
        rollback_end_lsn: u64,
        prepare_ts: i64,
        rollback_ts: i64,
        xid: u32,
        gid: String,
    },
    StreamPrepare {
        prepare_lsn: u64,
        end_lsn: u64,
        ts: i64,
        xid: u32,
        gid: String,
    },
}

fn cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

fn xid(b: &mut BytesMut, x: Option<u32>) {
    if let Some(x) = x {
        b.put_u32(x);
    }
}

fn tuple(b: &mut BytesMut, cols: &[Col]) {
    b.put_u16(cols.len() as u16);
    for c in cols {
        match c {
            Col::Null => b.put_u8(b'n'),
            Col::Toast => b.put_u8(b'u'),
            Col::Text(v) => {
                b.put_u8(b't');
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
            Col::Binary(v) => {
                b.put_u8(b'b');
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
        }
    }
}

/// Whether the message carries an xid only inside stream blocks.
pub fn streamed_xid(m: &Msg) -> Option<Option<u32>> {
    match m {
        Msg::Relation { xid, .. }
        | Msg::Type { xid, .. }
        | Msg::Insert { xid, .. }
        | Msg::Update { xid, .. }
        | Msg::Delete { xid, .. }
        | Msg::Truncate { xid, .. }
        | Msg::Message { xid, .. } => Some(*xid),
        _ => None,
    }
}

/// Encodes one message the way pgoutput writes it.
pub fn encode(m: &Msg) -> Bytes {
    let mut b = BytesMut::new();
    match m {
        Msg::Begin { final_lsn, ts, xid } => {
            b.put_u8(b'B');
            b.put_u64(*final_lsn);
            b.put_i64(*ts);
            b.put_u32(*xid);
        }
        Msg::Commit {
            commit_lsn,
            end_lsn,
            ts,
        } => {
            b.put_u8(b'C');
            b.put_u8(0);
            b.put_u64(*commit_lsn);
            b.put_u64(*end_lsn);
            b.put_i64(*ts);
        }
        Msg::Origin { lsn, name } => {
            b.put_u8(b'O');
            b.put_u64(*lsn);
            cstr(&mut b, name);
        }
        Msg::Relation {
            xid: x,
            rel_id,
            ns,
            name,
            ri,
            cols,
        } => {
            b.put_u8(b'R');
            xid(&mut b, *x);
            b.put_u32(*rel_id);
            cstr(&mut b, if ns == "pg_catalog" { "" } else { ns });
            cstr(&mut b, name);
            b.put_u8(*ri);
            b.put_u16(cols.len() as u16);
            for (flags, name, oid, typmod) in cols {
                b.put_u8(*flags);
                cstr(&mut b, name);
                b.put_u32(*oid);
                b.put_i32(*typmod);
            }
        }
        Msg::Type {
            xid: x,
            oid,
            ns,
            name,
        } => {
            b.put_u8(b'Y');
            xid(&mut b, *x);
            b.put_u32(*oid);
            cstr(&mut b, if ns == "pg_catalog" { "" } else { ns });
            cstr(&mut b, name);
        }
        Msg::Insert {
            xid: x,
            rel_id,
            new,
        } => {
            b.put_u8(b'I');
            xid(&mut b, *x);
            b.put_u32(*rel_id);
            b.put_u8(b'N');
            tuple(&mut b, new);
        }
        Msg::Update {
            xid: x,
            rel_id,
            old,
            new,
        } => {
            b.put_u8(b'U');
            xid(&mut b, *x);
            b.put_u32(*rel_id);
            if let Some((kind, cols)) = old {
                b.put_u8(*kind);
                tuple(&mut b, cols);
            }
            b.put_u8(b'N');
            tuple(&mut b, new);
        }
        Msg::Delete {
            xid: x,
            rel_id,
            old,
        } => {
            b.put_u8(b'D');
            xid(&mut b, *x);
            b.put_u32(*rel_id);
            b.put_u8(old.0);
            tuple(&mut b, &old.1);
        }
        Msg::Truncate {
            xid: x,
            options,
            rel_ids,
        } => {
            b.put_u8(b'T');
            xid(&mut b, *x);
            b.put_u32(rel_ids.len() as u32);
            b.put_u8(*options);
            for r in rel_ids {
                b.put_u32(*r);
            }
        }
        Msg::Message {
            xid: x,
            transactional,
            lsn,
            prefix,
            content,
        } => {
            b.put_u8(b'M');
            xid(&mut b, *x);
            b.put_u8(u8::from(*transactional));
            b.put_u64(*lsn);
            cstr(&mut b, prefix);
            b.put_i32(content.len() as i32);
            b.put_slice(content);
        }
        Msg::StreamStart { xid, first } => {
            b.put_u8(b'S');
            b.put_u32(*xid);
            b.put_u8(u8::from(*first));
        }
        Msg::StreamStop => b.put_u8(b'E'),
        Msg::StreamCommit {
            xid,
            commit_lsn,
            end_lsn,
            ts,
        } => {
            b.put_u8(b'c');
            b.put_u32(*xid);
            b.put_u8(0);
            b.put_u64(*commit_lsn);
            b.put_u64(*end_lsn);
            b.put_i64(*ts);
        }
        Msg::StreamAbort { xid, subxid, abort } => {
            b.put_u8(b'A');
            b.put_u32(*xid);
            b.put_u32(*subxid);
            if let Some((lsn, ts)) = abort {
                b.put_u64(*lsn);
                b.put_i64(*ts);
            }
        }
        Msg::BeginPrepare {
            prepare_lsn,
            end_lsn,
            ts,
            xid,
            gid,
        } => {
            b.put_u8(b'b');
            b.put_u64(*prepare_lsn);
            b.put_u64(*end_lsn);
            b.put_i64(*ts);
            b.put_u32(*xid);
            cstr(&mut b, gid);
        }
        Msg::Prepare {
            prepare_lsn,
            end_lsn,
            ts,
            xid,
            gid,
        }
        | Msg::StreamPrepare {
            prepare_lsn,
            end_lsn,
            ts,
            xid,
            gid,
        } => {
            b.put_u8(if matches!(m, Msg::Prepare { .. }) {
                b'P'
            } else {
                b'p'
            });
            b.put_u8(0);
            b.put_u64(*prepare_lsn);
            b.put_u64(*end_lsn);
            b.put_i64(*ts);
            b.put_u32(*xid);
            cstr(&mut b, gid);
        }
        Msg::CommitPrepared {
            commit_lsn,
            end_lsn,
            ts,
            xid,
            gid,
        } => {
            b.put_u8(b'K');
            b.put_u8(0);
            b.put_u64(*commit_lsn);
            b.put_u64(*end_lsn);
            b.put_i64(*ts);
            b.put_u32(*xid);
            cstr(&mut b, gid);
        }
        Msg::RollbackPrepared {
            prepare_end_lsn,
            rollback_end_lsn,
            prepare_ts,
            rollback_ts,
            xid,
            gid,
        } => {
            b.put_u8(b'r');
            b.put_u8(0);
            b.put_u64(*prepare_end_lsn);
            b.put_u64(*rollback_end_lsn);
            b.put_i64(*prepare_ts);
            b.put_i64(*rollback_ts);
            b.put_u32(*xid);
            cstr(&mut b, gid);
        }
    }
    b.freeze()
}

fn cols_of(t: &TupleData) -> Vec<Col> {
    t.columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let v = t.value(i).expect("span in bounds").to_vec();
            match c.kind {
                ColumnKind::Null => Col::Null,
                ColumnKind::UnchangedToast => Col::Toast,
                ColumnKind::Text => Col::Text(v),
                ColumnKind::Binary => Col::Binary(v),
            }
        })
        .collect()
}

fn old_of(o: &OldTuple) -> (u8, Vec<Col>) {
    match o {
        OldTuple::Key(t) => (b'K', cols_of(t)),
        OldTuple::Full(t) => (b'O', cols_of(t)),
    }
}

fn x(x: Option<Xid>) -> Option<u32> {
    x.map(|x| x.0)
}

fn ts(t: PgTimestamp) -> i64 {
    t.0
}

fn l(l: Lsn) -> u64 {
    l.0
}

/// The model of a decoded message.
pub fn model(m: &Message) -> Msg {
    match m {
        Message::Begin(b) => Msg::Begin {
            final_lsn: l(b.final_lsn),
            ts: ts(b.commit_ts),
            xid: b.xid.0,
        },
        Message::Commit(c) => Msg::Commit {
            commit_lsn: l(c.commit_lsn),
            end_lsn: l(c.end_lsn),
            ts: ts(c.commit_ts),
        },
        Message::Origin(o) => Msg::Origin {
            lsn: l(o.commit_lsn),
            name: o.name.clone(),
        },
        Message::Relation(r) => Msg::Relation {
            xid: x(r.xid),
            rel_id: r.rel_id,
            ns: r.namespace.clone(),
            name: r.name.clone(),
            ri: r.replica_identity,
            cols: r
                .columns
                .iter()
                .map(|c| (c.flags, c.name.clone(), c.type_oid, c.type_modifier))
                .collect(),
        },
        Message::Type(t) => Msg::Type {
            xid: x(t.xid),
            oid: t.type_oid,
            ns: t.namespace.clone(),
            name: t.name.clone(),
        },
        Message::Insert(i) => Msg::Insert {
            xid: x(i.xid),
            rel_id: i.rel_id,
            new: cols_of(&i.new),
        },
        Message::Update(u) => Msg::Update {
            xid: x(u.xid),
            rel_id: u.rel_id,
            old: u.old.as_ref().map(old_of),
            new: cols_of(&u.new),
        },
        Message::Delete(d) => Msg::Delete {
            xid: x(d.xid),
            rel_id: d.rel_id,
            old: old_of(&d.old),
        },
        Message::Truncate(t) => Msg::Truncate {
            xid: x(t.xid),
            options: t.options,
            rel_ids: t.rel_ids.clone(),
        },
        Message::Message(m) => Msg::Message {
            xid: x(m.xid),
            transactional: m.transactional(),
            lsn: l(m.lsn),
            prefix: m.prefix.clone(),
            content: m.content.to_vec(),
        },
        Message::StreamStart(s) => Msg::StreamStart {
            xid: s.xid.0,
            first: s.first_segment,
        },
        Message::StreamStop => Msg::StreamStop,
        Message::StreamCommit(c) => Msg::StreamCommit {
            xid: c.xid.0,
            commit_lsn: l(c.commit_lsn),
            end_lsn: l(c.end_lsn),
            ts: ts(c.commit_ts),
        },
        Message::StreamAbort(a) => Msg::StreamAbort {
            xid: a.xid.0,
            subxid: a.subxid.0,
            abort: a.abort_lsn.zip(a.abort_ts).map(|(lsn, t)| (l(lsn), ts(t))),
        },
        Message::BeginPrepare(p) => Msg::BeginPrepare {
            prepare_lsn: l(p.prepare_lsn),
            end_lsn: l(p.end_lsn),
            ts: ts(p.prepare_ts),
            xid: p.xid.0,
            gid: p.gid.clone(),
        },
        Message::Prepare(p) => Msg::Prepare {
            prepare_lsn: l(p.prepare_lsn),
            end_lsn: l(p.end_lsn),
            ts: ts(p.prepare_ts),
            xid: p.xid.0,
            gid: p.gid.clone(),
        },
        Message::StreamPrepare(p) => Msg::StreamPrepare {
            prepare_lsn: l(p.prepare_lsn),
            end_lsn: l(p.end_lsn),
            ts: ts(p.prepare_ts),
            xid: p.xid.0,
            gid: p.gid.clone(),
        },
        Message::CommitPrepared(c) => Msg::CommitPrepared {
            commit_lsn: l(c.commit_lsn),
            end_lsn: l(c.end_lsn),
            ts: ts(c.commit_ts),
            xid: c.xid.0,
            gid: c.gid.clone(),
        },
        Message::RollbackPrepared(r) => Msg::RollbackPrepared {
            prepare_end_lsn: l(r.prepare_end_lsn),
            rollback_end_lsn: l(r.rollback_end_lsn),
            prepare_ts: ts(r.prepare_ts),
            rollback_ts: ts(r.rollback_ts),
            xid: r.xid.0,
            gid: r.gid.clone(),
        },
    }
}

/// Decodes with the stream state the message needs.
pub fn decode(m: &Msg) -> Result<Message, pgoutput::DecodeError> {
    let in_stream = match m {
        Msg::StreamStop => true,
        other => matches!(streamed_xid(other), Some(Some(_))),
    };
    let mut d = pgoutput::Decoder::new();
    if in_stream {
        d.decode(
            Lsn(1),
            &encode(&Msg::StreamStart {
                xid: 1,
                first: true,
            }),
        )
        .expect("stream start decodes");
    }
    d.decode(Lsn(1), &encode(m))
}
