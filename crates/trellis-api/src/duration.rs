//! Human-written durations (`250ms`, `2s`, `1.5m`, `1h`) as they appear in documents.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A duration written with a unit: `ms`, `s`, `m` or `h`, with an optional fraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{text}` has no unit; write it as e.g. `250ms`, `2s`, `1m` or `1h`"))?;
        let (number, unit) = text.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration; write it as e.g. `250ms`, `2s`, `1m` or `1h`"))?;
        let seconds = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(format!("`{text}` has unknown unit `{unit}`; valid units are ms, s, m, h")),
        };
        if !seconds.is_finite() || seconds > 365.0 * 24.0 * 3600.0 {
            return Err(format!("`{text}` is out of range (at most one year)"));
        }
        Ok(Duration(std::time::Duration::from_secs_f64(seconds)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) && ms > 0 { write!(f, "{}s", ms / 1000) } else { write!(f, "{ms}ms") }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_fractions() {
        assert_eq!("250ms".parse::<Duration>().unwrap().0.as_millis(), 250);
        assert_eq!("1.5s".parse::<Duration>().unwrap().0.as_millis(), 1500);
        assert_eq!("2m".parse::<Duration>().unwrap().0.as_secs(), 120);
        assert!("5".parse::<Duration>().unwrap_err().contains("no unit"));
        assert!("5d".parse::<Duration>().unwrap_err().contains("unknown unit `d`"));
        assert!("..s".parse::<Duration>().is_err());
        assert!("99999999999h".parse::<Duration>().is_err());
    }
}
