//! Where one backend message ends in the bytes read so far, with the
//! lengths the server may send checked before anything is reserved for
//! them (issue 19.7).

use postgres_protocol::message::backend::Header;

/// Messages other than those libpq lets be long are at most this long
/// (libpq's limit), and before authentication every message is.
const SHORT_MESSAGE_MAX: usize = 30_000;
/// A long message (CopyData, DataRow, an error) is at most this long: the
/// server builds each in one buffer of at most 1 GiB (`MaxAllocSize`).
const LONG_MESSAGE_MAX: usize = (1 << 30) + 64;

/// The tag and whole length (tag included) of the message `buf` starts
/// with, once its header is there; an error when the header claims more
/// than the server may send here, before anything is allocated for it.
pub(crate) fn frame_header(buf: &[u8], authenticated: bool) -> Result<Option<(u8, usize)>, String> {
    let header = match Header::parse(buf) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let tag = header.tag();
    let total = header.len() as usize + 1;
    // DataRow, RowDescription, CopyData, FunctionCallResponse, errors,
    // notices and notifications may be long (libpq's VALID_LONG_MESSAGE_TYPE).
    let long = authenticated && matches!(tag, b'D' | b'T' | b'd' | b'V' | b'E' | b'N' | b'A');
    let max = if long {
        LONG_MESSAGE_MAX
    } else {
        SHORT_MESSAGE_MAX
    };
    if total > max {
        return Err(format!(
            "a message {:?} of {total} bytes, longer than the server may send here ({max})",
            char::from(tag)
        ));
    }
    Ok(Some((tag, total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(tag: u8, total: usize) -> Vec<u8> {
        let mut b = vec![tag];
        b.extend_from_slice(&((total - 1) as i32).to_be_bytes());
        b
    }

    /// Issue 19.7: nothing is allocated for a length the server may not send.
    #[test]
    fn lengths_are_capped_before_anything_is_reserved() {
        let two_gib = i32::MAX as usize;
        assert!(
            frame_header(&header(b'R', two_gib), false).is_err(),
            "before authentication"
        );
        assert!(
            frame_header(&header(b'E', 100_000), false).is_err(),
            "errors too, before"
        );
        assert_eq!(
            frame_header(&header(b'R', 100), false),
            Ok(Some((b'R', 100)))
        );
        assert_eq!(
            frame_header(&header(b'd', 10 << 20), true),
            Ok(Some((b'd', 10 << 20)))
        );
        assert!(
            frame_header(&header(b'Z', 100_000), true).is_err(),
            "short types stay short"
        );
        assert!(frame_header(&header(b'd', LONG_MESSAGE_MAX + 1), true).is_err());
        assert_eq!(
            frame_header(&[b'd', 0, 0], true),
            Ok(None),
            "header not there yet"
        );
    }

    proptest! {
        /// Any bytes: no panic, and a header accepted is within its limit.
        #[test]
        fn framing_never_panics_and_respects_its_limits(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            authenticated in any::<bool>(),
        ) {
            if let Ok(Some((tag, total))) = frame_header(&bytes, authenticated) {
                prop_assert!(total >= 5);
                let long = authenticated && b"DTdVENA".contains(&tag);
                let max = if long { LONG_MESSAGE_MAX } else { SHORT_MESSAGE_MAX };
                prop_assert!(total <= max);
            }
        }
    }
}
