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

/// Reads an ISO 8601 / RFC 3339 timestamp; one without a zone is UTC.
pub fn parse(text: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
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
        parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a timestamp")))
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
            parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a timestamp")))
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

    #[test]
    fn parses_zoned_and_naive_as_utc() {
        let zoned = parse("2026-11-22T12:00:00+01:00").unwrap();
        assert_eq!(parse("2026-11-22T11:00:00").unwrap(), zoned);
        assert_eq!(parse("2026-11-22T11:00:00.000Z").unwrap(), zoned);
        assert_eq!(parse("yesterday"), None);
    }
}
