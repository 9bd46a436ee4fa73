//! A frame's top-level members, read without building a `serde_json::Value`.
//!
//! The oracle reads a few scalar fields of every frame a client receives and every record a
//! restore finds, several times over; a `Value` tree (a map, a `String` per key and per text)
//! for each was about a tenth of a seed's CPU. [`Object`] keeps the members as borrowed
//! scalars and answers `get` exactly as `serde_json::Value::get(..).and_then(as_*)` would:
//! the last of duplicate keys wins, a negative or fractional number is no `u64`, a nested
//! array or object is present but no scalar, and anything but a JSON object is `None`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One member's value, as far as the oracle reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    /// A non-negative integer that fits a `u64`.
    U64(u64),
    /// `true` or `false`.
    Bool(bool),
    /// A string (borrowed from the frame unless it had escapes).
    Str(Cow<'a, str>),
    /// Anything else: `null`, a negative or fractional number, an array, an object.
    Other,
}

/// A JSON object's top-level members, in the frame's order.
#[derive(Debug, Clone, Default)]
pub struct Object<'a> {
    members: Vec<(Cow<'a, str>, Scalar<'a>)>,
}

impl<'a> Object<'a> {
    /// Reads `text` as a JSON object; `None` if it is not valid JSON or not an object.
    pub fn parse(text: &'a str) -> Option<Object<'a>> {
        serde_json::from_str(text).ok()
    }

    /// The member `key` (the last one, if the key repeats, as `serde_json::Value` keeps it).
    pub fn get(&self, key: &str) -> Option<&Scalar<'a>> {
        self.members
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The member `key` if it is a string.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The member `key` if it is a non-negative integer.
    pub fn u64(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            Scalar::U64(n) => Some(*n),
            _ => None,
        }
    }

    /// The member `key` if it is a boolean.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Scalar::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        // As `Value::as_u64`: a non-negative integer is one, however it was read.
        Ok(u64::try_from(v).map_or(Scalar::Other, Scalar::U64))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectVisitor)
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Object<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(6));
        while let Some(key) = map.next_key::<Scalar<'de>>()? {
            let Scalar::Str(key) = key else {
                return Err(de::Error::custom("a key that is not a string"));
            };
            members.push((key, map.next_value::<Scalar<'de>>()?));
        }
        Ok(Object { members })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Every read agrees with `serde_json::Value`'s on frames of every shape the room sends
    /// and on odd ones.
    #[test]
    fn reads_as_value_does() {
        let frames = [
            r#"{"id":3,"name":"u1","message":"hi","timestamp":1700000000123}"#,
            r#"{"id":4,"deleted":3,"at":17}"#,
            r#"{"id":5,"edited":3,"at":18,"message":"m\"1\u00e9"}"#,
            r#"{"id":6,"name":"u1","message":"x","timestamp":2,"edited":true}"#,
            r#"{"ready":true,"recovered":false}"#,
            r#"{"error":"Frame too large."}"#,
            r#"{"joined":"u2","roster":["u1","u2"],"nested":{"id":9}}"#,
            r#"{"id":-1,"timestamp":1.5,"message":null,"name":7}"#,
            r#"{"id":1,"id":2,"\u0069d":8}"#,
            r#"{"id":18446744073709551615,"big":18446744073709551616}"#,
            r#"[1,2]"#,
            r#""text""#,
            r#"{"id":1"#,
            r#"{"id":1} trailing"#,
            "",
        ];
        for frame in frames {
            let value = serde_json::from_str::<Value>(frame).ok();
            let object = Object::parse(frame);
            assert_eq!(
                object.is_some(),
                value.as_ref().is_some_and(Value::is_object),
                "{frame}"
            );
            let Some(object) = object else { continue };
            let value = value.expect("an object");
            for key in [
                "id",
                "name",
                "message",
                "timestamp",
                "deleted",
                "edited",
                "at",
                "ready",
                "recovered",
                "error",
                "roster",
                "nested",
                "big",
                "absent",
            ] {
                let v = value.get(key);
                assert_eq!(object.get(key).is_some(), v.is_some(), "{frame} {key}");
                assert_eq!(object.u64(key), v.and_then(Value::as_u64), "{frame} {key}");
                assert_eq!(object.str(key), v.and_then(Value::as_str), "{frame} {key}");
                assert_eq!(
                    object.bool(key),
                    v.and_then(Value::as_bool),
                    "{frame} {key}"
                );
            }
        }
    }
}
