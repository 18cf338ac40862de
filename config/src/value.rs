//! Value types for numbers that have a legal range: [`Weight`] and [`Timeout`].
//!
//! They check their range once, at construction, so code that holds one never
//! re-checks it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A split weight: a share of traffic in percent, `0..=100`.
///
/// Zero is allowed so a version can be kept in a split (reachable through the
/// force header) while taking no weighted traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Weight(u32);

impl Weight {
    /// The largest weight: the whole of the traffic.
    pub const MAX: u32 = 100;

    /// The weight in percent.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A weight over [`Weight::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} is over 100")]
pub struct WeightError(pub u32);

impl TryFrom<u32> for Weight {
    type Error = WeightError;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        if value > Self::MAX {
            Err(WeightError(value))
        } else {
            Ok(Weight(value))
        }
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Weight {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let raw = u32::deserialize(de)?;
        Weight::try_from(raw).map_err(serde::de::Error::custom)
    }
}

/// A timeout: a duration greater than zero and at most one hour.
///
/// Zero would fail every request, and anything past an hour is almost
/// certainly a unit mistake ("3600" meant as milliseconds), so both are
/// rejected. Written in config as a number with a unit: `"250ms"`, `"2s"`,
/// `"1.5s"`, `"1m"`, `"1h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timeout(Duration);

/// Why a [`Timeout`] was rejected. Each variant carries the offending input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    #[error("invalid duration {0:?} (expected e.g. \"250ms\", \"2s\")")]
    Syntax(String),
    #[error("duration {0:?} must be greater than zero")]
    Zero(String),
    #[error("duration {0:?} is over the maximum of 1h")]
    TooLong(String),
}

impl Timeout {
    /// The longest timeout accepted.
    pub const MAX: Duration = Duration::from_secs(3600);

    /// Checks the range of an already-typed duration.
    pub fn new(duration: Duration) -> Result<Self, TimeoutError> {
        if duration.is_zero() {
            Err(TimeoutError::Zero(Timeout::format(duration)))
        } else if duration > Self::MAX {
            Err(TimeoutError::TooLong(Timeout::format(duration)))
        } else {
            Ok(Timeout(duration))
        }
    }

    /// Only for defaults written in this crate, which are known to be in range.
    pub(crate) const fn from_millis_unchecked(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    pub(crate) const fn from_secs_unchecked(secs: u64) -> Self {
        Timeout(Duration::from_secs(secs))
    }

    pub fn get(self) -> Duration {
        self.0
    }

    /// Writes a duration in the largest unit that keeps it whole, so that
    /// `summary()` echoes what the operator most likely typed.
    fn format(d: Duration) -> String {
        const UNITS: [(&str, u128); 4] = [
            ("h", 3_600_000_000_000),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
        ];
        let nanos = d.as_nanos();
        if nanos == 0 {
            return "0s".to_owned();
        }
        for (unit, per) in UNITS {
            if nanos % per == 0 {
                return format!("{}{unit}", nanos / per);
            }
        }
        let frac = format!("{:06}", nanos % 1_000_000);
        format!("{}.{}ms", nanos / 1_000_000, frac.trim_end_matches('0'))
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Timeout::format(self.0))
    }
}

impl FromStr for Timeout {
    type Err = TimeoutError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || TimeoutError::Syntax(text.to_owned());
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(syntax)?;
        let (number, unit) = text.split_at(split);
        let nanos_per_unit: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(syntax()),
        };
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        // Require a digit on each side of a '.', so ".5s" and "1.s" are typos
        // rather than something we guess at.
        if whole.is_empty() || (number.contains('.') && frac.is_empty()) || frac.contains('.') {
            return Err(syntax());
        }
        // Integer arithmetic, so "1.1s" is exactly 1.1 s rather than the
        // nearest f64. Anything too large to fit is certainly over the maximum.
        let too_long = || TimeoutError::TooLong(text.to_owned());
        let whole: u128 = whole.parse().map_err(|_| too_long())?;
        let mut nanos = whole.checked_mul(nanos_per_unit).ok_or_else(too_long)?;
        let mut scale = nanos_per_unit;
        for digit in frac.bytes() {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        if nanos == 0 {
            return Err(TimeoutError::Zero(text.to_owned()));
        }
        if nanos > Self::MAX.as_nanos() {
            return Err(too_long());
        }
        // In range, so it fits a u64 of nanoseconds.
        Ok(Timeout(Duration::from_nanos(nanos as u64)))
    }
}

impl<'de> serde::Deserialize<'de> for Timeout {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> Result<Duration, TimeoutError> {
        text.parse::<Timeout>().map(Timeout::get)
    }

    #[test]
    fn weight_accepts_0_to_100() {
        assert_eq!(Weight::try_from(0).unwrap().get(), 0);
        assert_eq!(Weight::try_from(100).unwrap().get(), 100);
    }

    #[test]
    fn weight_rejects_over_100() {
        let err = Weight::try_from(101).unwrap_err();
        assert_eq!(err, WeightError(101));
        assert_eq!(err.to_string(), "101 is over 100");
    }

    #[test]
    fn timeout_parses_units_and_fractions() {
        assert_eq!(t("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(t("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(t("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(t("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(t("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(t("0.25m"), Ok(Duration::from_secs(15)));
        assert_eq!(t("1.1s"), Ok(Duration::from_millis(1100)));
        assert_eq!(t("0.5ms"), Ok(Duration::from_micros(500)));
    }

    #[test]
    fn timeout_rejects_zero() {
        assert_eq!(t("0s"), Err(TimeoutError::Zero("0s".into())));
        assert_eq!(t("0.0ms"), Err(TimeoutError::Zero("0.0ms".into())));
        assert_eq!(
            "0s".parse::<Timeout>().unwrap_err().to_string(),
            r#"duration "0s" must be greater than zero"#
        );
        assert!(Timeout::new(Duration::ZERO).is_err());
    }

    #[test]
    fn timeout_rejects_over_an_hour() {
        assert_eq!(t("2h"), Err(TimeoutError::TooLong("2h".into())));
        assert_eq!(t("61m"), Err(TimeoutError::TooLong("61m".into())));
        assert_eq!(
            t("3600.001s"),
            Err(TimeoutError::TooLong("3600.001s".into()))
        );
        assert_eq!(
            t("99999999999999999999999999999999999999999h"),
            Err(TimeoutError::TooLong(
                "99999999999999999999999999999999999999999h".into()
            ))
        );
        assert_eq!(
            "2h".parse::<Timeout>().unwrap_err().to_string(),
            r#"duration "2h" is over the maximum of 1h"#
        );
        assert!(Timeout::new(Duration::from_secs(3601)).is_err());
    }

    #[test]
    fn timeout_rejects_bad_syntax() {
        for bad in [
            "abc", "", "10", "10x", "s", "-1s", "+1s", " 1s", "1s ", "1 s", ".5s", "1.s", "1..5s",
            "1.5.2s", "1S", "1sec", "1us",
        ] {
            assert_eq!(t(bad), Err(TimeoutError::Syntax(bad.into())), "{bad:?}");
        }
        assert_eq!(
            "abc".parse::<Timeout>().unwrap_err().to_string(),
            r#"invalid duration "abc" (expected e.g. "250ms", "2s")"#
        );
    }

    #[test]
    fn timeout_displays_in_the_largest_whole_unit() {
        let show = |s: &str| s.parse::<Timeout>().unwrap().to_string();
        assert_eq!(show("250ms"), "250ms");
        assert_eq!(show("1.5s"), "1500ms");
        assert_eq!(show("120s"), "2m");
        assert_eq!(show("60m"), "1h");
        assert_eq!(show("0.5ms"), "0.5ms");
    }

    #[test]
    fn both_deserialize_through_serde() {
        #[derive(Debug, serde::Deserialize)]
        struct Doc {
            t: Timeout,
            w: Weight,
        }
        let doc: Doc = toml::from_str("t = \"2s\"\nw = 10").unwrap();
        assert_eq!(doc.t.get(), Duration::from_secs(2));
        assert_eq!(doc.w.get(), 10);
        let err = toml::from_str::<Doc>("t = \"2h\"\nw = 10").unwrap_err();
        assert_eq!(err.message(), r#"duration "2h" is over the maximum of 1h"#);
        let err = toml::from_str::<Doc>("t = \"2s\"\nw = 101").unwrap_err();
        assert_eq!(err.message(), "101 is over 100");
    }
}
