//! Object ids: every room, rate limiter and counter is addressed by a 32-byte id.
//!
//! Ids come from a name (a stable hash, separated per [`Namespace`], like Durable Objects'
//! `idFromName`) or are minted as private ids from random bytes the caller supplies (like
//! `newUniqueId`). A private id carries a MAC under the server's [`IdSecret`], so an id this
//! server did not mint (forged, or from another deployment) is refused, as Durable Objects
//! refuse ids they did not issue.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Length of an object id in bytes.
pub const OBJECT_ID_LEN_BYTES: usize = 32;
/// Length of an object id's lowercase hex form.
pub const OBJECT_ID_LEN_HEX: usize = 2 * OBJECT_ID_LEN_BYTES;
/// How many of a private id's bytes are the caller's random bytes; the rest is the MAC.
pub const PRIVATE_ID_RANDOM_LEN_BYTES: usize = 16;

/// The kinds of object; ids of different kinds never collide, even for the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Namespace {
    /// Chat rooms.
    Room,
    /// Per-IP rate limiters.
    RateLimiter,
    /// Counters.
    Counter,
    /// Per-user rate limiters (users known from a verified token).
    UserRateLimiter,
}

impl Namespace {
    fn label(self) -> &'static [u8] {
        match self {
            Namespace::Room => b"room",
            Namespace::RateLimiter => b"rate-limiter",
            Namespace::Counter => b"counter",
            Namespace::UserRateLimiter => b"user-rate-limiter",
        }
    }
}

/// The server secret that private ids are minted and verified with.
#[derive(Clone)]
pub struct IdSecret(Vec<u8>);

impl IdSecret {
    /// Wraps secret key material (at least 16 bytes are recommended).
    pub fn new(key: impl Into<Vec<u8>>) -> IdSecret {
        IdSecret(key.into())
    }

    fn mac(&self, namespace: Namespace, random: &[u8]) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(b"edgechat/private-id/v1/");
        mac.update(namespace.label());
        mac.update(b"/");
        mac.update(random);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for IdSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdSecret(..)")
    }
}

/// A 32-byte object id, shown as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId([u8; OBJECT_ID_LEN_BYTES]);

/// Why a 64-hex string was refused as a private id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Not exactly 64 lowercase hex characters.
    #[error("not 64 lowercase hex characters")]
    Format,
    /// Well-formed, but not minted by this server for this namespace.
    #[error("not an id this server issued")]
    Forged,
}

impl ObjectId {
    /// The id of the object called `name` in `namespace`: the same name always maps to the
    /// same id, on every machine and in every version.
    pub fn from_name(namespace: Namespace, name: &str) -> ObjectId {
        let mut hash = Sha256::new();
        hash.update(b"edgechat/named-id/v1/");
        hash.update(namespace.label());
        hash.update(b"/");
        hash.update(name.as_bytes());
        ObjectId(hash.finalize().into())
    }

    /// Mints a new private id from `random` bytes (the caller's randomness).
    pub fn mint_private(
        namespace: Namespace,
        random: [u8; PRIVATE_ID_RANDOM_LEN_BYTES],
        secret: &IdSecret,
    ) -> ObjectId {
        let mac = secret.mac(namespace, &random);
        let mut bytes = [0u8; OBJECT_ID_LEN_BYTES];
        bytes[..PRIVATE_ID_RANDOM_LEN_BYTES].copy_from_slice(&random);
        bytes[PRIVATE_ID_RANDOM_LEN_BYTES..]
            .copy_from_slice(&mac[..OBJECT_ID_LEN_BYTES - PRIVATE_ID_RANDOM_LEN_BYTES]);
        ObjectId(bytes)
    }

    /// Parses and verifies a private id minted by [`ObjectId::mint_private`] with `secret`.
    ///
    /// # Errors
    /// [`IdError::Format`] unless `hex` is 64 lowercase hex characters; [`IdError::Forged`]
    /// if its MAC does not verify.
    pub fn parse_private(
        namespace: Namespace,
        hex: &str,
        secret: &IdSecret,
    ) -> Result<ObjectId, IdError> {
        let id = ObjectId::parse_hex(hex)?;
        let (random, tag) = id.0.split_at(PRIVATE_ID_RANDOM_LEN_BYTES);
        let expected = secret.mac(namespace, random);
        if constant_time_eq(tag, &expected[..tag.len()]) {
            Ok(id)
        } else {
            Err(IdError::Forged)
        }
    }

    /// Parses 64 lowercase hex characters, without any verification.
    ///
    /// # Errors
    /// [`IdError::Format`] unless `hex` is exactly 64 lowercase hex characters.
    pub fn parse_hex(hex: &str) -> Result<ObjectId, IdError> {
        if !is_lower_hex_id(hex) {
            return Err(IdError::Format);
        }
        let mut bytes = [0u8; OBJECT_ID_LEN_BYTES];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        Ok(ObjectId(bytes))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; OBJECT_ID_LEN_BYTES] {
        &self.0
    }

    /// The 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(OBJECT_ID_LEN_HEX);
        for byte in self.0 {
            out.push(DIGITS[usize::from(byte >> 4)] as char);
            out.push(DIGITS[usize::from(byte & 0xf)] as char);
        }
        out
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.to_hex())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Whether `s` has the shape of a private id: exactly 64 characters of `[0-9a-f]`.
pub fn is_lower_hex_id(s: &str) -> bool {
    s.len() == OBJECT_ID_LEN_HEX && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => unreachable!("checked by is_lower_hex_id"),
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> IdSecret {
        IdSecret::new(b"test secret, sixteen bytes or more".to_vec())
    }

    #[test]
    fn named_ids_are_stable_and_separated_per_namespace() {
        let a = ObjectId::from_name(Namespace::Room, "lobby");
        assert_eq!(a, ObjectId::from_name(Namespace::Room, "lobby"));
        assert_ne!(a, ObjectId::from_name(Namespace::Room, "Lobby"));
        assert_ne!(a, ObjectId::from_name(Namespace::Counter, "lobby"));
        // Pinned so that a change of hashing (which would orphan stored data) fails loudly.
        assert_eq!(
            a.to_hex(),
            "1af547c333bba40a669b61dbe431546a29158fdd1fbf20c2221326fde3d0339d"
        );
        assert_eq!(a.to_hex().len(), 64);
    }

    #[test]
    fn private_ids_round_trip_and_forgeries_are_refused() {
        let id = ObjectId::mint_private(Namespace::Room, [7; 16], &secret());
        let hex = id.to_hex();
        assert!(is_lower_hex_id(&hex));
        assert_eq!(
            ObjectId::parse_private(Namespace::Room, &hex, &secret()),
            Ok(id)
        );
        // Another namespace, another secret, a flipped bit, upper case: all refused.
        assert_eq!(
            ObjectId::parse_private(Namespace::Counter, &hex, &secret()),
            Err(IdError::Forged)
        );
        assert_eq!(
            ObjectId::parse_private(Namespace::Room, &hex, &IdSecret::new(b"other".to_vec())),
            Err(IdError::Forged)
        );
        let mut flipped = hex.clone().into_bytes();
        flipped[63] = if flipped[63] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            ObjectId::parse_private(Namespace::Room, &flipped, &secret()),
            Err(IdError::Forged)
        );
        assert_eq!(
            ObjectId::parse_private(Namespace::Room, &hex.to_uppercase(), &secret()),
            Err(IdError::Format)
        );
        assert_eq!(
            ObjectId::parse_private(Namespace::Room, &hex[..63], &secret()),
            Err(IdError::Format)
        );
        let named = ObjectId::from_name(Namespace::Room, "lobby").to_hex();
        assert_eq!(
            ObjectId::parse_private(Namespace::Room, &named, &secret()),
            Err(IdError::Forged)
        );
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn debug_never_shows_the_secret_and_shows_an_id_in_hex() {
        assert_eq!(format!("{:?}", secret()), "IdSecret(..)");
        let id = ObjectId::from_name(Namespace::Room, "lobby");
        assert_eq!(format!("{id:?}"), format!("ObjectId({})", id.to_hex()));
    }

    #[test]
    fn an_id_parsed_from_hex_has_exactly_those_bytes() {
        let hex = "00ff10a0".repeat(8);
        let id = ObjectId::parse_hex(&hex).unwrap();
        assert_eq!(id.as_bytes(), &[0x00, 0xff, 0x10, 0xa0].repeat(8)[..]);
        assert_eq!(id.to_hex(), hex);
    }

    #[test]
    fn constant_time_eq_sees_every_differing_byte() {
        assert!(constant_time_eq(b"same", b"same"));
        assert!(!constant_time_eq(b"same", b"sane"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        // Two equal differences must not cancel out (an XOR accumulator would say equal).
        assert!(!constant_time_eq(&[1, 1], &[0, 0]));
    }
}
