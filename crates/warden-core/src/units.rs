//! Parsing of the units users write in specs: durations (`"500ms"`, `"24h"`) and sizes (`"256MiB"`).

/// Why a duration, as written, is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; write e.g. \"500ms\", \"5s\", \"10m\"")]
    Empty,
    #[error("bad duration {text:?}: expected a number, e.g. \"500ms\"")]
    NotANumber { text: String },
    #[error("bad duration {text:?}: number too large")]
    NumberTooLarge { text: String },
    #[error("bad duration {text:?}: missing unit (ms, s, m, h, d)")]
    MissingUnit { text: String },
    #[error("bad duration {text:?}: unknown unit {unit:?} (use ms, s, m, h, d)")]
    UnknownUnit { text: String, unit: String },
    #[error("bad duration {text:?}: too large")]
    TooLarge { text: String },
}

/// Why a size, as written, is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("bad size {text:?}: expected a number, e.g. \"256MiB\"")]
    NotANumber { text: String },
    #[error("bad size {text:?}: number too large")]
    NumberTooLarge { text: String },
    #[error("bad size {text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, KB, MB, GB)")]
    UnknownUnit { text: String, unit: String },
    #[error("bad size {text:?}: too large")]
    TooLarge { text: String },
}

/// Parses a duration like `"0s"`, `"250ms"`, `"5s"`, `"10m"`, `"24h"`, `"1h30m"` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, DurationError> {
    let written = || text.to_string();
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total_ms: u64 = 0;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(DurationError::NotANumber { text: written() });
        }
        let number: u64 = rest[..digits_end].parse().map_err(|_| DurationError::NumberTooLarge { text: written() })?;
        rest = &rest[digits_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(DurationError::MissingUnit { text: written() }),
            other => return Err(DurationError::UnknownUnit { text: written(), unit: other.to_string() }),
        };
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| DurationError::TooLarge { text: written() })?;
    }
    Ok(total_ms)
}

/// Formats milliseconds the way users write them: `1h30m`, `5s`, `250ms`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1_000 || !ms.is_multiple_of(1_000) {
        return if ms >= 1_000 { format!("{:.1}s", ms as f64 / 1000.0) } else { format!("{ms}ms") };
    }
    let mut secs = ms / 1_000;
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// Parses a size like `"256MiB"`, `"10MB"`, `"4096"` (bytes) into bytes.
pub fn parse_size_bytes(text: &str) -> Result<u64, SizeError> {
    let written = || text.to_string();
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    if digits_end == 0 {
        return Err(SizeError::NotANumber { text: written() });
    }
    let number: u64 = trimmed[..digits_end].parse().map_err(|_| SizeError::NumberTooLarge { text: written() })?;
    let multiplier: u64 = match trimmed[digits_end..].trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(SizeError::UnknownUnit { text: written(), unit: other.to_string() }),
    };
    number.checked_mul(multiplier).ok_or_else(|| SizeError::TooLarge { text: written() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        assert_eq!(parse_duration_ms("100ms"), Ok(100));
        assert_eq!(parse_duration_ms("5s"), Ok(5_000));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert!(parse_duration_ms("5").unwrap_err().to_string().contains("missing unit"));
        assert!(parse_duration_ms("5 parsecs").is_err());
        assert!(parse_duration_ms("-1s").is_err());
        assert_eq!(format_duration_ms(5_400_000), "1h30m");
        assert_eq!(format_duration_ms(250), "250ms");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size_bytes("10MB"), Ok(10_000_000));
        assert_eq!(parse_size_bytes("4096"), Ok(4096));
        assert!(parse_size_bytes("lots").is_err());
    }
}
