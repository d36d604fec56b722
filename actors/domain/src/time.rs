//! Timestamps as StackStorm writes them: ISO 8601, UTC, microseconds, `Z`.

use chrono::{DateTime, SecondsFormat, Utc};

/// A point in time, always UTC.
pub type Timestamp = DateTime<Utc>;

/// Now, in UTC.
pub fn now() -> Timestamp {
    Utc::now()
}

/// `2026-11-22T12:44:05.123456Z`.
pub fn format(ts: &Timestamp) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Serde adapter writing [`format`] and reading any RFC 3339 timestamp.
pub mod serde_ts {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(ts))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Serde adapter for `Option<Timestamp>`.
pub mod serde_opt_ts {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match ts {
            Some(t) => s.serialize_str(&format(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_micros_and_zone() {
        let t = DateTime::parse_from_rfc3339("2026-11-22T12:44:05.5+02:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format(&t), "2026-11-22T10:44:05.500000Z");
    }
}
