//! Ids as the API reads them, in bodies, paths and queries.
//!
//! Every id is a SQLite `INTEGER PRIMARY KEY` handed out from 1 upwards, so
//! the only ids that can exist are 1 to 2^63 - 1. Reading an id into an
//! `Id` refuses anything else (0, negative, 2^63 and beyond, `+1`, `1e3`)
//! at the boundary, where it is the client's mistake, instead of letting
//! 2^64 - 1 wrap to -1 on its way into the database.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};
use serde::{Serialize, Serializer};

use crate::db::Value;

/// An id of the API: an integer from 1 to `i64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(i64);

/// What the API says an id is, in its error messages.
pub const EXPECTED: &str = "an id (an integer from 1 to 9223372036854775807)";

impl Id {
    /// The id in `text`: decimal digits only, no sign, in range.
    pub fn parse(text: &str) -> Option<Id> {
        if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        text.parse::<i64>().ok().and_then(Id::new)
    }

    /// `value` as an id, if it is one.
    pub fn new(value: i64) -> Option<Id> {
        (value > 0).then_some(Id(value))
    }

    /// `value` (as the WIT interfaces carry ids) as an id, if it is one.
    pub fn from_unsigned(value: u64) -> Option<Id> {
        i64::try_from(value).ok().and_then(Id::new)
    }

    pub fn get(self) -> i64 {
        self.0
    }

    /// The id as the WIT interfaces carry ids (`u64`).
    pub fn unsigned(self) -> u64 {
        // Positive by construction.
        self.0.unsigned_abs()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Id> for Value {
    fn from(id: Id) -> Value {
        Value::Integer(id.0)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Id, D::Error> {
        deserializer.deserialize_i64(IdVisitor)
    }
}

struct IdVisitor;

impl Visitor<'_> for IdVisitor {
    type Value = Id;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(EXPECTED)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Id, E> {
        Id::new(value).ok_or_else(|| E::invalid_value(Unexpected::Signed(value), &self))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Id, E> {
        Id::from_unsigned(value).ok_or_else(|| E::invalid_value(Unexpected::Unsigned(value), &self))
    }
}

#[cfg(test)]
mod tests {
    use super::Id;

    #[test]
    fn only_positive_signed_64_bit_integers_are_ids() {
        assert_eq!(Id::parse("1").map(Id::get), Some(1));
        assert_eq!(Id::parse("9223372036854775807").map(Id::get), Some(i64::MAX));
        assert_eq!(Id::from_unsigned(7).map(Id::unsigned), Some(7));
        assert_eq!(Id::from_unsigned(0), None);
        assert_eq!(Id::from_unsigned(1 << 63), None);
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1e3",
            " 1",
            "9223372036854775808",
            "18446744073709551615",
        ] {
            assert_eq!(Id::parse(bad), None, "{bad:?}");
        }
        let json = |text: &str| serde_json::from_str::<Id>(text).ok().map(Id::get);
        assert_eq!(json("42"), Some(42));
        for bad in ["0", "-3", "1.5", "\"1\"", "9223372036854775808", "18446744073709551615"] {
            assert_eq!(json(bad), None, "{bad}");
        }
    }
}
