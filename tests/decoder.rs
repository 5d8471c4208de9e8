//! Property tests of the pgoutput decoder: every message type round-trips
//! through an independent encoder, and no input makes it panic.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use teal::pgoutput::decode_message;

use crate::support::encoder::{Col, Msg, decode, encode, model, streamed_xid};

fn lsn() -> impl Strategy<Value = u64> {
    1..u64::MAX
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_ .\"éß€]{0,12}"
}

fn col() -> impl Strategy<Value = Col> {
    prop_oneof![
        Just(Col::Null),
        Just(Col::Toast),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Col::Text),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Col::Binary),
    ]
}

fn cols() -> impl Strategy<Value = Vec<Col>> {
    prop::collection::vec(col(), 0..12)
}

fn old() -> impl Strategy<Value = (u8, Vec<Col>)> {
    (prop_oneof![Just(b'K'), Just(b'O')], cols())
}

fn xid() -> impl Strategy<Value = Option<u32>> {
    prop::option::of(any::<u32>())
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, ts, xid)| Msg::Begin {
            final_lsn,
            ts,
            xid
        }),
        (lsn(), lsn(), any::<i64>()).prop_map(|(commit_lsn, end_lsn, ts)| Msg::Commit {
            commit_lsn,
            end_lsn,
            ts
        }),
        (any::<u64>(), name()).prop_map(|(lsn, name)| Msg::Origin { lsn, name }),
        (
            xid(),
            any::<u32>(),
            name().prop_filter("empty means pg_catalog", |s| !s.is_empty()),
            name(),
            prop_oneof![Just(b'd'), Just(b'n'), Just(b'f'), Just(b'i')],
            prop::collection::vec((0u8..2, name(), any::<u32>(), any::<i32>()), 0..8)
        )
            .prop_map(|(xid, rel_id, ns, name, ri, cols)| Msg::Relation {
                xid,
                rel_id,
                ns,
                name,
                ri,
                cols
            }),
        (
            xid(),
            any::<u32>(),
            name().prop_filter("empty means pg_catalog", |s| !s.is_empty()),
            name()
        )
            .prop_map(|(xid, oid, ns, name)| Msg::Type { xid, oid, ns, name }),
        (xid(), any::<u32>(), cols()).prop_map(|(xid, rel_id, new)| Msg::Insert {
            xid,
            rel_id,
            new
        }),
        (xid(), any::<u32>(), prop::option::of(old()), cols()).prop_map(
            |(xid, rel_id, old, new)| Msg::Update {
                xid,
                rel_id,
                old,
                new
            }
        ),
        (xid(), any::<u32>(), old()).prop_map(|(xid, rel_id, old)| Msg::Delete {
            xid,
            rel_id,
            old
        }),
        (xid(), 0u8..4, prop::collection::vec(any::<u32>(), 0..6)).prop_map(
            |(xid, options, rel_ids)| Msg::Truncate {
                xid,
                options,
                rel_ids
            }
        ),
        (
            xid(),
            any::<bool>(),
            any::<u64>(),
            name(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(xid, transactional, lsn, prefix, content)| Msg::Message {
                xid,
                transactional,
                lsn,
                prefix,
                content
            }),
        (any::<u32>(), any::<bool>()).prop_map(|(xid, first)| Msg::StreamStart { xid, first }),
        Just(Msg::StreamStop),
        (any::<u32>(), lsn(), lsn(), any::<i64>()).prop_map(|(xid, commit_lsn, end_lsn, ts)| {
            Msg::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                ts,
            }
        }),
        (
            any::<u32>(),
            any::<u32>(),
            prop::option::of((any::<u64>(), any::<i64>()))
        )
            .prop_map(|(xid, subxid, abort)| Msg::StreamAbort { xid, subxid, abort }),
        (lsn(), lsn(), any::<i64>(), any::<u32>(), name()).prop_map(
            |(prepare_lsn, end_lsn, ts, xid, gid)| Msg::BeginPrepare {
                prepare_lsn,
                end_lsn,
                ts,
                xid,
                gid
            }
        ),
        (lsn(), lsn(), any::<i64>(), any::<u32>(), name()).prop_map(
            |(prepare_lsn, end_lsn, ts, xid, gid)| Msg::Prepare {
                prepare_lsn,
                end_lsn,
                ts,
                xid,
                gid
            }
        ),
        (lsn(), lsn(), any::<i64>(), any::<u32>(), name()).prop_map(
            |(commit_lsn, end_lsn, ts, xid, gid)| Msg::CommitPrepared {
                commit_lsn,
                end_lsn,
                ts,
                xid,
                gid
            }
        ),
        (
            lsn(),
            lsn(),
            any::<i64>(),
            any::<i64>(),
            any::<u32>(),
            name()
        )
            .prop_map(
                |(prepare_end_lsn, rollback_end_lsn, prepare_ts, rollback_ts, xid, gid)| {
                    Msg::RollbackPrepared {
                        prepare_end_lsn,
                        rollback_end_lsn,
                        prepare_ts,
                        rollback_ts,
                        xid,
                        gid,
                    }
                }
            ),
        (lsn(), lsn(), any::<i64>(), any::<u32>(), name()).prop_map(
            |(prepare_lsn, end_lsn, ts, xid, gid)| Msg::StreamPrepare {
                prepare_lsn,
                end_lsn,
                ts,
                xid,
                gid
            }
        ),
    ]
}

fn in_stream_for(m: &Msg) -> bool {
    matches!(m, Msg::StreamStop) || matches!(streamed_xid(m), Some(Some(_)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_round_trips(m in msg()) {
        let decoded = decode(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(model(&decoded), m);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), in_stream in any::<bool>()) {
        let _ = decode_message(&Bytes::from(bytes), in_stream);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_tag_never_panic(
        tag in prop::sample::select(b"BCORYIUDTMSEcAbPKrp".to_vec()),
        rest in prop::collection::vec(any::<u8>(), 0..128),
        in_stream in any::<bool>(),
    ) {
        let mut frame = vec![tag];
        frame.extend(rest);
        let _ = decode_message(&Bytes::from(frame), in_stream);
    }

    #[test]
    fn truncated_frames_are_errors_at_or_before_the_cut(m in msg(), cut in any::<Index>()) {
        let full = encode(&m);
        let cut = cut.index(full.len());
        // A Stream Abort cut right after the subxid is the valid short form.
        prop_assume!(!(matches!(m, Msg::StreamAbort { abort: Some(_), .. }) && cut == 9));
        let result = decode_message(&full.slice(..cut), in_stream_for(&m));
        match result {
            Ok(decoded) => prop_assert!(false, "decoded {:?} from {} of {} bytes", decoded, cut, full.len()),
            Err((offset, _)) => prop_assert!(offset <= cut, "offset {} past the cut {}", offset, cut),
        }
    }

    #[test]
    fn mutated_frames_never_panic(m in msg(), flips in prop::collection::vec((any::<Index>(), any::<u8>()), 1..6)) {
        let mut frame = encode(&m).to_vec();
        for (at, byte) in flips {
            let i = at.index(frame.len());
            frame[i] = byte;
        }
        let _ = decode_message(&Bytes::from(frame.clone()), true);
        let _ = decode_message(&Bytes::from(frame), false);
    }

    #[test]
    fn trailing_garbage_is_rejected(m in msg(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
        // A short Stream Abort plus 16 bytes is the long form; anything else must fail.
        prop_assume!(!matches!(m, Msg::StreamAbort { .. }));
        let mut frame = encode(&m).to_vec();
        frame.extend(extra);
        prop_assert!(decode_message(&Bytes::from(frame), in_stream_for(&m)).is_err());
    }
}

#[test]
fn lengths_larger_than_the_frame_are_errors_not_allocations() {
    // Insert with a column claiming 2 GiB.
    let mut frame = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b't'];
    frame.extend(i32::MAX.to_be_bytes());
    frame.extend(b"abc");
    let (offset, kind) = decode_message(&Bytes::from(frame), false).unwrap_err();
    assert_eq!(offset, 13);
    assert!(kind.to_string().contains("truncated"), "{kind}");
    // Truncate claiming 4 billion relations.
    let mut frame = vec![b'T'];
    frame.extend(u32::MAX.to_be_bytes());
    frame.push(0);
    assert!(decode_message(&Bytes::from(frame), false).is_err());
}
