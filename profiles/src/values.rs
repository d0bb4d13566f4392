//! Checked scalar values of the data files. Each rejects out-of-range input while it is being
//! deserialized, so the TOML parser's error names the line and column of the bad value.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A finite number greater than zero (sizes, clocks, peaks, prices, limits).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Positive(f64);

impl Positive {
    /// `value` when it is finite and greater than zero.
    pub fn new(value: f64) -> Option<Self> {
        (value.is_finite() && value > 0.0).then_some(Self(value))
    }

    /// The number.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Positive {
    type Error = String;

    fn try_from(value: f64) -> Result<Self, Self::Error> {
        Self::new(value).ok_or_else(|| format!("must be a finite number greater than zero, got {value}"))
    }
}

impl From<Positive> for f64 {
    fn from(value: Positive) -> f64 {
        value.0
    }
}

/// A fraction in `[0, 1)`: a discount.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Fraction(f64);

impl Fraction {
    /// The number.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Fraction {
    type Error = String;

    fn try_from(value: f64) -> Result<Self, Self::Error> {
        if (0.0..1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!("must be a fraction at least 0 and below 1, got {value}"))
        }
    }
}

impl From<Fraction> for f64 {
    fn from(value: Fraction) -> f64 {
        value.0
    }
}

/// A calendar date written `YYYY-MM-DD` (when a price was read).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IsoDate(String);

impl IsoDate {
    /// The date as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IsoDate {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let parts: Vec<&str> = value.split('-').collect();
        let numeric = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit());
        let valid = parts.len() == 3
            && numeric(parts[0], 4)
            && numeric(parts[1], 2)
            && numeric(parts[2], 2)
            && (1..=12).contains(&parts[1].parse::<u32>().unwrap_or(0))
            && (1..=31).contains(&parts[2].parse::<u32>().unwrap_or(0));
        if valid { Ok(Self(value)) } else { Err(format!("must be a date written YYYY-MM-DD, got `{value}`")) }
    }
}

impl From<IsoDate> for String {
    fn from(value: IsoDate) -> String {
        value.0
    }
}

impl fmt::Display for IsoDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Text that is not empty or blank (names, sources).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Text(String);

impl Text {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Text {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.trim().is_empty() { Err("must not be empty".into()) } else { Ok(Self(value)) }
    }
}

impl From<Text> for String {
    fn from(value: Text) -> String {
        value.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_enforced() {
        assert!(Positive::try_from(0.0).is_err());
        assert!(Positive::try_from(-1.0).is_err());
        assert!(Positive::try_from(f64::NAN).is_err());
        assert_eq!(Positive::try_from(2.5).unwrap().get(), 2.5);
        assert!(Fraction::try_from(1.0).is_err());
        assert!(Fraction::try_from(-0.1).is_err());
        assert!(Fraction::try_from(0.0).is_ok());
        assert!(IsoDate::try_from("2026-11-30".to_string()).is_ok());
        for bad in ["2026-13-01", "2026-1-01", "30.11.2026", "2026-11-30T00:00:00Z", ""] {
            assert!(IsoDate::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert!(Text::try_from("  ".to_string()).is_err());
    }
}
