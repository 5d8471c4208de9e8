//! Masking rules and what they do to one value's text.
//!
//! ```text
//! keep        the value as it is
//! null        NULL                              (maps many values to one)
//! constant:V  the text V, for any type          (maps many values to one)
//! redact      `***` (text types)                (maps many values to one)
//! hash        text types: 32 hex digits of HMAC-SHA256(key, value) (cut to a
//!             varchar(n)/char(n) length); uuid: a UUID made of the HMAC;
//!             smallint/integer/bigint: a keyed permutation of the integer's
//!             bits (a Feistel network: two values never map to one)
//! hash-email  local part: 16 hex digits of the HMAC of the whole address;
//!             domain: each label but the last replaced by 8 hex digits of
//!             its HMAC, the top-level domain kept (`a1b2…@c3d4e5f6.com`)
//! hash-phone  the digits permuted as one decimal number (keyed, so two
//!             numbers never map to one), every other character and the
//!             number of digits kept (`+1 (555) 010-9999` → `+7 (203) 881-4410`)
//! ```
//!
//! Every HMAC is keyed by the mask key (`TEAL_MASK_KEY` or `mask-key-file`)
//! and tagged with the rule, not the table or column: the same value maps
//! to the same masked value wherever it appears, so joins survive.

use ring::hmac;

/// One column's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The value as it is.
    Keep,
    /// NULL.
    Null,
    /// This text, whatever the value.
    Constant(String),
    /// `***`.
    Redact,
    /// Keyed, deterministic hash (see the module documentation).
    Hash,
    /// Keyed hash that keeps an email address's shape.
    HashEmail,
    /// Keyed permutation of a phone number's digits.
    HashPhone,
}

impl Rule {
    /// Parses `keep`, `null`, `constant:TEXT`, `redact`, `hash`, `hash-email`, `hash-phone`.
    pub fn parse(s: &str) -> Result<Rule, String> {
        if let Some(text) = s.strip_prefix("constant:") {
            return Ok(Rule::Constant(text.to_owned()));
        }
        Ok(match s {
            "keep" => Rule::Keep,
            "null" => Rule::Null,
            "redact" => Rule::Redact,
            "hash" => Rule::Hash,
            "hash-email" => Rule::HashEmail,
            "hash-phone" => Rule::HashPhone,
            _ => {
                return Err(format!(
                    "{s:?} is not a masking rule (keep, null, constant:TEXT, redact, hash, hash-email, hash-phone)"
                ));
            }
        })
    }

    /// The rule as written.
    pub fn name(&self) -> String {
        match self {
            Rule::Keep => "keep".into(),
            Rule::Null => "null".into(),
            Rule::Constant(_) => "constant".into(),
            Rule::Redact => "redact".into(),
            Rule::Hash => "hash".into(),
            Rule::HashEmail => "hash-email".into(),
            Rule::HashPhone => "hash-phone".into(),
        }
    }

    /// Whether two different values always stay different (as pgstream
    /// tags its transformers): a rule that is not may not mask a column of
    /// a unique index or key.
    pub fn preserves_uniqueness(&self) -> bool {
        !matches!(self, Rule::Null | Rule::Constant(_) | Rule::Redact)
    }

    /// Why the rule cannot mask a column of type `ty`, if it cannot.
    pub fn refuses(&self, ty: TypeClass) -> Option<&'static str> {
        match (self, ty) {
            (Rule::Keep | Rule::Null | Rule::Constant(_), _) => None,
            (Rule::Redact | Rule::HashEmail | Rule::HashPhone, TypeClass::Text) => None,
            (Rule::Hash, TypeClass::Text | TypeClass::Uuid | TypeClass::Int(_)) => None,
            (Rule::Hash, _) => Some(
                "hash masks text, varchar, char, citext, uuid, smallint, integer and bigint columns",
            ),
            _ => Some("this rule masks text, varchar, char and citext columns"),
        }
    }
}

/// What a column's type is to the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeClass {
    /// text, varchar, char, name, citext.
    Text,
    /// uuid.
    Uuid,
    /// smallint (16), integer (32), bigint (64).
    Int(u32),
    /// Anything else.
    Other,
}

impl TypeClass {
    /// The class of a type by its OID (and name, for extension types).
    pub fn of(type_oid: u32, type_name: Option<&str>) -> TypeClass {
        match type_oid {
            25 | 1043 | 1042 | 19 => TypeClass::Text,
            2950 => TypeClass::Uuid,
            21 => TypeClass::Int(16),
            23 => TypeClass::Int(32),
            20 => TypeClass::Int(64),
            _ if type_name == Some("citext") => TypeClass::Text,
            _ => TypeClass::Other,
        }
    }
}

/// The key every keyed rule uses. Its Debug never shows it.
#[derive(Clone)]
pub struct MaskKey(hmac::Key);

impl std::fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskKey(***)")
    }
}

impl MaskKey {
    /// A key from its bytes (at least 16).
    pub fn new(bytes: &[u8]) -> Result<MaskKey, String> {
        if bytes.len() < 16 {
            return Err(format!(
                "the mask key is {} bytes long; it needs at least 16 (32 random bytes, e.g. `openssl rand -hex 32`)",
                bytes.len()
            ));
        }
        Ok(MaskKey(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    fn mac(&self, tag: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"teal-mask-v1/");
        ctx.update(tag);
        for p in parts {
            ctx.update(&(p.len() as u32).to_be_bytes());
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// A keyed permutation of `bits`-bit numbers (`bits` even, at most 64):
    /// a four-round Feistel network whose round function is the HMAC.
    fn permute(&self, x: u64, bits: u32) -> u64 {
        let half = bits / 2;
        let mask = if half == 64 {
            u64::MAX
        } else {
            (1u64 << half) - 1
        };
        let (mut l, mut r) = (x >> half & mask, x & mask);
        for round in 0u8..4 {
            let f = self.mac(b"feistel", &[&[round, bits as u8], &r.to_be_bytes()]);
            let f = u64::from_be_bytes(f[..8].try_into().unwrap_or([0; 8])) & mask;
            (l, r) = (r, l ^ f);
        }
        (l << half) | r
    }

    /// A keyed permutation of `0..10^digits` (digits <= 18): the binary
    /// permutation over the smallest even number of bits that holds it,
    /// applied again while the result falls outside (cycle walking).
    fn permute_decimal(&self, x: u64, digits: u32) -> u64 {
        let n = 10u64.pow(digits);
        let mut bits = 64 - (n - 1).leading_zeros().min(63);
        bits += bits % 2;
        let bits = bits.max(2);
        let mut y = self.permute(x, bits);
        while y >= n {
            y = self.permute(y, bits);
        }
        y
    }
}

/// A masked value: its text, or NULL.
pub type Masked = Option<Vec<u8>>;

/// Why a value could not be masked (names no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(pub String);

fn hex(bytes: &[u8], chars: usize) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .take(chars)
        .collect()
}

/// Masks one value's text with `rule` for a column of class `ty` whose
/// values are at most `max_len` characters (varchar(n), char(n)).
pub fn mask(
    rule: &Rule,
    ty: TypeClass,
    max_len: Option<usize>,
    key: &MaskKey,
    value: &[u8],
) -> Result<Masked, ValueError> {
    let cut = |mut v: Vec<u8>| {
        if let Some(n) = max_len {
            v.truncate(n.max(1));
        }
        v
    };
    Ok(match rule {
        Rule::Keep => Some(value.to_vec()),
        Rule::Null => None,
        Rule::Constant(text) => Some(text.as_bytes().to_vec()),
        Rule::Redact => Some(cut(b"***".to_vec())),
        Rule::Hash => Some(match ty {
            TypeClass::Int(bits) => {
                let text = std::str::from_utf8(value).unwrap_or_default();
                let n: i64 = text.trim().parse().map_err(|_| {
                    ValueError(format!("a {bits}-bit integer's text did not parse"))
                })?;
                let unsigned = if bits == 64 {
                    n as u64
                } else {
                    (n as u64) & ((1u64 << bits) - 1)
                };
                let permuted = key.permute(unsigned, bits);
                // Back to a signed number of that width.
                let signed = if bits == 64 {
                    permuted as i64
                } else {
                    let shift = 64 - bits;
                    ((permuted << shift) as i64) >> shift
                };
                signed.to_string().into_bytes()
            }
            TypeClass::Uuid => {
                let mut b = key.mac(b"uuid", &[value]);
                b[6] = (b[6] & 0x0f) | 0x40;
                b[8] = (b[8] & 0x3f) | 0x80;
                let h = hex(&b[..16], 32);
                let mut out = Vec::with_capacity(36);
                for (i, part) in [&h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]]
                    .iter()
                    .enumerate()
                {
                    if i > 0 {
                        out.push(b'-');
                    }
                    out.extend_from_slice(part);
                }
                out
            }
            _ => cut(hex(&key.mac(b"hash", &[value]), 32)),
        }),
        Rule::HashEmail => Some(cut(hash_email(key, value))),
        Rule::HashPhone => Some(hash_phone(key, value)),
    })
}

fn hash_email(key: &MaskKey, value: &[u8]) -> Vec<u8> {
    let lower = value.to_ascii_lowercase();
    let Some(at) = lower.iter().rposition(|&b| b == b'@') else {
        return hex(&key.mac(b"email", &[&lower]), 32);
    };
    let mut out = hex(&key.mac(b"email", &[&lower]), 16);
    out.push(b'@');
    let labels: Vec<&[u8]> = lower[at + 1..].split(|&b| b == b'.').collect();
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if i + 1 == labels.len() && labels.len() > 1 {
            out.extend_from_slice(label);
        } else {
            out.extend_from_slice(&hex(&key.mac(b"email-domain", &[label]), 8));
        }
    }
    out
}

fn hash_phone(key: &MaskKey, value: &[u8]) -> Vec<u8> {
    let positions: Vec<usize> = value
        .iter()
        .enumerate()
        .filter(|(_, b)| b.is_ascii_digit())
        .map(|(i, _)| i)
        .collect();
    let mut out = value.to_vec();
    // Groups of at most 18 digits, each permuted on its own (each group a
    // bijection, so the whole is one).
    for group in positions.chunks(18) {
        let digits = group.len() as u32;
        let x = group
            .iter()
            .fold(0u64, |acc, &i| acc * 10 + u64::from(value[i] - b'0'));
        let mut y = key.permute_decimal(x, digits);
        for &i in group.iter().rev() {
            out[i] = b'0' + (y % 10) as u8;
            y /= 10;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn key() -> MaskKey {
        MaskKey::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn text(rule: &Rule, ty: TypeClass, v: &str) -> String {
        String::from_utf8(mask(rule, ty, None, &key(), v.as_bytes()).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn integer_hashing_is_a_permutation_of_its_width() {
        let k = key();
        // Every 16-bit value maps to a different 16-bit value.
        let mut seen = HashSet::new();
        for x in 0..=u16::MAX {
            let y = k.permute(u64::from(x), 16);
            assert!(y <= u64::from(u16::MAX));
            assert!(seen.insert(y), "two values map to {y}");
        }
        // Signed widths stay in range and deterministic.
        for v in ["-32768", "0", "32767", "-1"] {
            let m: i64 = text(&Rule::Hash, TypeClass::Int(16), v).parse().unwrap();
            assert!((-32768..=32767).contains(&m), "{v} -> {m}");
        }
        for v in ["-2147483648", "2147483647", "42"] {
            let m: i64 = text(&Rule::Hash, TypeClass::Int(32), v).parse().unwrap();
            assert!((i64::from(i32::MIN)..=i64::from(i32::MAX)).contains(&m));
            assert_eq!(m.to_string(), text(&Rule::Hash, TypeClass::Int(32), v));
        }
        let big = text(&Rule::Hash, TypeClass::Int(64), "9223372036854775807");
        big.parse::<i64>().unwrap();
        assert_ne!(text(&Rule::Hash, TypeClass::Int(32), "1"), "1");
        let bad = mask(&Rule::Hash, TypeClass::Int(32), None, &k, b"x1").unwrap_err();
        assert!(!bad.0.contains("x1"), "no value in the error");
    }

    #[test]
    fn decimal_permutations_are_bijections_that_keep_the_digit_count() {
        let k = key();
        for digits in 1..=4 {
            let n = 10u64.pow(digits);
            let image: HashSet<u64> = (0..n).map(|x| k.permute_decimal(x, digits)).collect();
            assert_eq!(image.len() as u64, n);
            assert!(image.iter().all(|&y| y < n));
        }
        let masked = text(&Rule::HashPhone, TypeClass::Text, "+1 (555) 010-9999");
        assert_eq!(masked.len(), "+1 (555) 010-9999".len());
        assert_eq!(
            masked
                .chars()
                .map(|c| c.is_ascii_digit())
                .collect::<Vec<_>>(),
            "+1 (555) 010-9999"
                .chars()
                .map(|c| c.is_ascii_digit())
                .collect::<Vec<_>>(),
            "the shape is kept: {masked}"
        );
        assert_ne!(masked, "+1 (555) 010-9999");
        // 25 digits: two groups, still deterministic.
        let long = "1234567890123456789012345";
        assert_eq!(
            text(&Rule::HashPhone, TypeClass::Text, long),
            text(&Rule::HashPhone, TypeClass::Text, long)
        );
    }

    #[test]
    fn emails_keep_their_shape_and_domain_grouping() {
        let a = text(&Rule::HashEmail, TypeClass::Text, "Alice@Mail.Example.com");
        let b = text(&Rule::HashEmail, TypeClass::Text, "bob@mail.example.com");
        let (la, da) = a.split_once('@').unwrap();
        let (lb, db) = b.split_once('@').unwrap();
        assert_eq!(la.len(), 16);
        assert_ne!(la, lb);
        assert_eq!(da, db, "one domain, one masked domain");
        assert!(da.ends_with(".com") && da.split('.').count() == 3, "{da}");
        assert!(!a.contains("alice") && !a.contains("example"));
        assert_eq!(
            a,
            text(&Rule::HashEmail, TypeClass::Text, "alice@mail.example.com"),
            "case does not matter in addresses"
        );
        assert_eq!(
            text(&Rule::HashEmail, TypeClass::Text, "no-at-sign").len(),
            32
        );
    }

    #[test]
    fn text_and_uuid_hashes_are_keyed_and_cut_to_the_column() {
        let h = text(&Rule::Hash, TypeClass::Text, "Alice");
        assert_eq!(h.len(), 32);
        assert_eq!(h, text(&Rule::Hash, TypeClass::Text, "Alice"));
        assert_ne!(h, text(&Rule::Hash, TypeClass::Text, "alice"));
        let other = MaskKey::new(b"another key of 32 bytes, really!").unwrap();
        let with_other = mask(&Rule::Hash, TypeClass::Text, None, &other, b"Alice")
            .unwrap()
            .unwrap();
        assert_ne!(with_other, h.as_bytes(), "keyed");
        let cut = mask(&Rule::Hash, TypeClass::Text, Some(10), &key(), b"Alice")
            .unwrap()
            .unwrap();
        assert_eq!(cut.len(), 10);
        let u = text(
            &Rule::Hash,
            TypeClass::Uuid,
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        );
        assert_eq!(u.len(), 36);
        assert_eq!(u.as_bytes()[14], b'4', "version 4: {u}");
        assert_eq!(
            mask(&Rule::Null, TypeClass::Other, None, &key(), b"1").unwrap(),
            None
        );
        assert_eq!(
            text(&Rule::Constant("0".into()), TypeClass::Other, "12.5"),
            "0"
        );
        assert_eq!(text(&Rule::Redact, TypeClass::Text, "secret"), "***");
    }

    #[test]
    fn rules_parse_and_say_which_keep_values_apart() {
        assert_eq!(Rule::parse("hash-email").unwrap(), Rule::HashEmail);
        assert_eq!(
            Rule::parse("constant:n/a").unwrap(),
            Rule::Constant("n/a".into())
        );
        assert!(Rule::parse("sha1").unwrap_err().contains("hash-email"));
        assert!(Rule::Hash.preserves_uniqueness());
        assert!(!Rule::Redact.preserves_uniqueness());
        assert!(!Rule::Null.preserves_uniqueness());
        assert!(Rule::Hash.refuses(TypeClass::Other).is_some());
        assert!(Rule::HashEmail.refuses(TypeClass::Int(32)).is_some());
        assert!(MaskKey::new(b"short").unwrap_err().contains("at least 16"));
        assert_eq!(format!("{:?}", key()), "MaskKey(***)");
    }
}
