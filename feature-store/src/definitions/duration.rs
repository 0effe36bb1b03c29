//! Human durations as data engineers write them in definition files: `"36h"`,
//! `"15m"`, `"7d"`, `"1h30m"`.

use std::time::Duration;

/// A duration string that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// The text is empty.
    #[error("empty duration; write a number and a unit, e.g. \"15m\", \"36h\" or \"7d\"")]
    Empty,
    /// A character that is neither a digit nor a unit letter (a space, a sign,
    /// a decimal point).
    #[error(
        "unexpected {found:?} at byte {at}; write whole numbers followed by units, e.g. \"90m\" or \"1h30m\" (no spaces, signs or decimals)"
    )]
    UnexpectedCharacter {
        /// The character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
    /// A unit with no number before it.
    #[error("unit \"{unit}\" has no number before it; write e.g. \"1{unit}\"")]
    MissingNumber {
        /// The unit as written.
        unit: String,
    },
    /// A number has no unit after it.
    #[error("{number} has no unit; add s, m, h or d, e.g. \"{number}m\"")]
    MissingUnit {
        /// The number without a unit.
        number: String,
    },
    /// A unit that is not s, m, h or d.
    #[error("unknown unit \"{unit}\"; use s (seconds), m (minutes), h (hours) or d (days)")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
    },
    /// The duration is zero.
    #[error("must be longer than zero")]
    Zero,
    /// The duration does not fit in a `Duration`.
    #[error("is too large")]
    TooLarge,
}

/// Parses one or more `<number><unit>` parts (units `s`, `m`, `h`, `d`) and adds
/// them up: `"36h"`, `"15m"`, `"7d"`, `"1h30m"`.
///
/// Zero is refused: every duration in the definitions is an age, a ttl or a
/// window, and none of them can be zero.
///
/// # Errors
/// [`DurationError`] saying what is wrong with the text.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let bytes = text.as_bytes();
    let mut total: u64 = 0;
    let mut at = 0;
    while at < bytes.len() {
        let digits_end = at + run_len(&bytes[at..], u8::is_ascii_digit);
        let unit_end = digits_end + run_len(&bytes[digits_end..], u8::is_ascii_alphabetic);
        let number = &text[at..digits_end];
        let unit = &text[digits_end..unit_end];
        if number.is_empty() && !unit.is_empty() {
            return Err(DurationError::MissingNumber {
                unit: unit.to_owned(),
            });
        }
        if unit.is_empty() {
            if let Some(found) = text[digits_end..].chars().next() {
                return Err(DurationError::UnexpectedCharacter {
                    found,
                    at: digits_end,
                });
            }
            return Err(DurationError::MissingUnit {
                number: number.to_owned(),
            });
        }
        let seconds_per_unit: u64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_owned(),
                });
            }
        };
        let value: u64 = number.parse().map_err(|_| DurationError::TooLarge)?;
        total = value
            .checked_mul(seconds_per_unit)
            .and_then(|s| total.checked_add(s))
            .ok_or(DurationError::TooLarge)?;
        at = unit_end;
    }
    if total == 0 {
        return Err(DurationError::Zero);
    }
    Ok(Duration::from_secs(total))
}

/// Length of the leading run of bytes that satisfy `class`.
fn run_len(bytes: &[u8], class: fn(&u8) -> bool) -> usize {
    bytes.iter().take_while(|b| class(b)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units_and_sums_parts() {
        let cases = [
            ("30s", 30),
            ("15m", 900),
            ("36h", 129_600),
            ("7d", 604_800),
            ("1h30m", 5_400),
            ("1d12h", 129_600),
        ];
        for (text, secs) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        let unexpected = |found, at| Err(DurationError::UnexpectedCharacter { found, at });
        assert_eq!(parse_duration("1h "), unexpected(' ', 2));
        assert_eq!(parse_duration("-1h"), unexpected('-', 0));
        assert_eq!(parse_duration("1.5h"), unexpected('.', 1));
        let missing_number = Err(DurationError::MissingNumber { unit: "h".into() });
        assert_eq!(parse_duration("h"), missing_number);
        let missing_unit = Err(DurationError::MissingUnit {
            number: "36".into(),
        });
        assert_eq!(parse_duration("36"), missing_unit);
        let unknown = |unit: &str| Err(DurationError::UnknownUnit { unit: unit.into() });
        assert_eq!(parse_duration("500ms"), unknown("ms"));
        assert_eq!(parse_duration("2w"), unknown("w"));
        assert_eq!(parse_duration("0h"), Err(DurationError::Zero));
        assert_eq!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::TooLarge)
        );
        assert_eq!(
            parse_duration("999999999999999999d"),
            Err(DurationError::TooLarge)
        );
    }
}
