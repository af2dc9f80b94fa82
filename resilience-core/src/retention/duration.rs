//! Durations as people write them in retention policies: `90d`, `12h`, `2w`, `1y`, `30m`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole number of a unit: `s`, `m` (minutes), `h`, `d`, `w` (7 days), `y` (365 days).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RetentionDuration {
    seconds: i64,
    text_unit: char,
}

impl RetentionDuration {
    /// A duration of `n` days.
    pub fn days(n: i64) -> Self {
        RetentionDuration {
            seconds: n * 86_400,
            text_unit: 'd',
        }
    }

    /// As a chrono duration.
    pub fn to_chrono(self) -> chrono::Duration {
        chrono::Duration::seconds(self.seconds)
    }

    /// Length in seconds.
    pub fn as_secs(self) -> i64 {
        self.seconds
    }
}

/// A duration that does not parse, as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was written.
    #[error("empty duration")]
    Empty,
    /// The last character is not a unit.
    #[error("duration {0:?} needs a unit: s, m, h, d, w or y (e.g. 90d)")]
    NoUnit(String),
    /// What precedes the unit is not a whole number.
    #[error("duration {0:?} must be a whole number followed by a unit (e.g. 90d)")]
    NotANumber(String),
    /// The number is negative.
    #[error("duration {0:?} is negative")]
    Negative(String),
    /// It does not fit in 64 bits of seconds.
    #[error("duration {0:?} is too long")]
    TooLong(String),
}

impl FromStr for RetentionDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let unit = s.chars().last().ok_or(DurationError::Empty)?;
        let (num, mult) = match unit {
            's' => (&s[..s.len() - 1], 1),
            'm' => (&s[..s.len() - 1], 60),
            'h' => (&s[..s.len() - 1], 3600),
            'd' => (&s[..s.len() - 1], 86_400),
            'w' => (&s[..s.len() - 1], 7 * 86_400),
            'y' => (&s[..s.len() - 1], 365 * 86_400),
            _ => return Err(DurationError::NoUnit(s.into())),
        };
        let n: i64 = num
            .parse()
            .map_err(|_| DurationError::NotANumber(s.into()))?;
        if n < 0 {
            return Err(DurationError::Negative(s.into()));
        }
        let seconds = n
            .checked_mul(mult)
            .ok_or_else(|| DurationError::TooLong(s.into()))?;
        Ok(RetentionDuration {
            seconds,
            text_unit: unit,
        })
    }
}

impl fmt::Display for RetentionDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let div = match self.text_unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => 365 * 86_400,
        };
        write!(f, "{}{}", self.seconds / div, self.text_unit)
    }
}

impl Serialize for RetentionDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for RetentionDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_units_and_refuses_nonsense() {
        assert_eq!(
            "90d".parse::<RetentionDuration>().unwrap().as_secs(),
            90 * 86_400
        );
        assert_eq!(
            "2w".parse::<RetentionDuration>().unwrap().as_secs(),
            14 * 86_400
        );
        assert_eq!(
            "1y".parse::<RetentionDuration>().unwrap().as_secs(),
            365 * 86_400
        );
        for bad in ["", "90", "d", "-1d", "1.5d", "3x"] {
            assert!(bad.parse::<RetentionDuration>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn display_parses_back(n in 0i64..100_000, unit in prop::sample::select(vec!['s', 'm', 'h', 'd', 'w', 'y'])) {
            let d: RetentionDuration = format!("{n}{unit}").parse().unwrap();
            prop_assert_eq!(d.to_string().parse::<RetentionDuration>().unwrap(), d);
        }
    }
}
