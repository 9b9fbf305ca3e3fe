//! Durations in config files as human strings ("300ms", "3s", "1day"), through humantime.
//!
//! Use with `#[serde(with = "crate::duration")]` on a `std::time::Duration` field.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// Serializes as a humantime string, e.g. `"300ms"`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// Parses a humantime string; the error names the bad value.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use std::time::Duration;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "super")]
        d: Duration,
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t: T = toml::from_str("d = \"300ms\"").unwrap();
        assert_eq!(t.d, Duration::from_millis(300));
        let back = toml::to_string(&t).unwrap();
        assert_eq!(toml::from_str::<T>(&back).unwrap(), t);
        let err = toml::from_str::<T>("d = \"soon\"").unwrap_err().to_string();
        assert!(err.contains("soon"), "{err}");
    }
}
