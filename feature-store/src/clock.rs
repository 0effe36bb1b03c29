//! Time as the store keeps it: microseconds since the Unix epoch (the
//! driver's and ScyllaDB's write-timestamp unit), the serde forms of stored
//! times and durations, and the UTC text shown to people.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (negative before it), the unit both
/// backends store times in.
pub fn to_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The current time, truncated to the microseconds every backend stores, so a
/// record read back equals the one written.
pub fn now_micros() -> SystemTime {
    from_micros(to_micros(SystemTime::now()))
}

/// Inverse of [`to_micros`].
pub fn from_micros(micros: i64) -> SystemTime {
    if micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(micros.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    }
}

/// The latest time [`utc`] spells: 9999-12-31T23:59:59Z, the end of RFC 3339's
/// four-digit years.
const LAST_UTC_SECOND: u64 = 253_402_300_799;

/// `2026-11-25T13:04:05Z` (UTC, whole seconds). Times before the epoch show
/// as the epoch, times after year 9999 as its last second.
pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(LAST_UTC_SECOND);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// A `SystemTime` field stored as [`to_micros`].
pub(crate) mod unix_micros {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(super::to_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(super::from_micros(i64::deserialize(d)?))
    }
}

/// An optional `SystemTime` field stored as [`to_micros`].
pub(crate) mod opt_unix_micros {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    #[expect(clippy::ref_option, reason = "serde's `with` passes &Option")]
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&super::to_micros(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<i64>::deserialize(d)?.map(super::from_micros))
    }
}

/// A `Duration` field stored as whole seconds.
pub(crate) mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_spells_whole_seconds_and_clamps_the_ends() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_957_445_999);
        assert_eq!(utc(t), "2026-11-29T13:04:05Z");
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(LAST_UTC_SECOND + 100)),
            "9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn micros_round_trip_on_both_sides_of_the_epoch() {
        for m in [-1_500_000, -1, 0, 1, 1_795_957_445_123_456] {
            assert_eq!(to_micros(from_micros(m)), m);
        }
    }
}
