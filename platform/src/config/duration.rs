//! Durations in the configuration: typed `Duration`s in the code, plain
//! numbers of seconds or milliseconds under the keys (`…_secs`, `…_ms`), as
//! operators write them and `check-config` prints them.
//!
//! Plain durations go through `serde_with` (`DurationSeconds`,
//! `DurationMilliSeconds`). [`secs_or_never`] is written here because a
//! key where 0 means "never" maps to `Option<Duration>`, which no
//! `serde_with` adapter reads from a number.

/// `Option<Duration>` as whole seconds, `0` meaning `None` (never).
pub mod secs_or_never {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(value.map_or(0, |d| d.as_secs()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let secs = u64::deserialize(d)?;
        Ok((secs > 0).then(|| Duration::from_secs(secs)))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use std::time::Duration;

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    struct Limits {
        #[serde(with = "super::secs_or_never")]
        idle_secs: Option<Duration>,
    }

    #[test]
    fn zero_seconds_is_never_and_round_trips() {
        let never: Limits = serde_json::from_str(r#"{"idle_secs":0}"#).unwrap();
        assert_eq!(never.idle_secs, None);
        assert_eq!(serde_json::to_string(&never).unwrap(), r#"{"idle_secs":0}"#);
        let some: Limits = serde_json::from_str(r#"{"idle_secs":90}"#).unwrap();
        assert_eq!(some.idle_secs, Some(Duration::from_secs(90)));
        assert_eq!(serde_json::to_string(&some).unwrap(), r#"{"idle_secs":90}"#);
        assert!(serde_json::from_str::<Limits>(r#"{"idle_secs":-1}"#).is_err());
    }
}
