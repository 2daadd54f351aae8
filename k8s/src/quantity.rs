//! Kubernetes storage quantities as exact byte counts, and byte counts back
//! in quantity form for messages.
//!
//! Sizes are compared as numbers, never as strings: `1Gi`, `1024Mi` and
//! `1073741824` are one size (Longhorn's webhook once compared the strings
//! and blocked unrelated updates). Written here rather than taken from a
//! crate: `kube_quantity` 0.9 truncates fractions when converting to an
//! integer (`1.5Gi` becomes 1 GiB) and cannot read exponents (`1e9`);
//! `k8s_quantity_parser` is bound to k8s-openapi 0.14.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity is not a storage size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{quantity:?} is not a storage size: {reason}")]
pub struct QuantityError {
    /// The text as received.
    pub quantity: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Digits beyond this many cannot be a size that fits 64 bits anyway.
const MAX_DIGITS: usize = 40;
/// Exponents beyond this cannot give a size that fits 64 bits (or above 0).
const MAX_EXPONENT: i64 = 40;

/// The number of bytes a quantity stands for, rounded up to a whole byte as
/// Kubernetes rounds storage (`100m` is 1 byte).
pub fn bytes(quantity: &Quantity) -> Result<u64, QuantityError> {
    text_bytes(&quantity.0)
}

/// The number of bytes a quantity written as text stands for (a
/// StorageClass parameter, an annotation), rounded up like [`bytes`].
pub fn text_bytes(text: &str) -> Result<u64, QuantityError> {
    parse(text).map_err(|reason| QuantityError { quantity: text.to_owned(), reason })
}

fn parse(text: &str) -> Result<u64, &'static str> {
    let text = text.trim();
    let unsigned = match text.strip_prefix('-') {
        Some(_) => return Err("sizes cannot be negative"),
        None => text.strip_prefix('+').unwrap_or(text),
    };
    let number_len = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err("no number");
    }
    if fraction.contains('.') {
        return Err("more than one decimal point");
    }
    if whole.len() + fraction.len() > MAX_DIGITS {
        return Err("too many digits");
    }
    let mut mantissa: u128 = 0;
    for digit in whole.bytes().chain(fraction.bytes()) {
        // 40 digits can pass 2^128: checked at every step.
        mantissa = mantissa.checked_mul(10).and_then(|m| m.checked_add(u128::from(digit - b'0'))).ok_or("too large")?;
    }
    // value = mantissa × multiplier / 10^(fraction digits − decimal exponent)
    let (multiplier, decimal_exponent): (u128, i64) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        exponent if exponent.starts_with(['e', 'E']) => (1, parse_exponent(&exponent[1..])?),
        _ => return Err("unknown suffix"),
    };
    if mantissa == 0 {
        return Ok(0);
    }
    let shift = decimal_exponent - fraction.len() as i64;
    let numerator = mantissa.checked_mul(multiplier).ok_or("too large")?;
    let value = if shift >= 0 { numerator.checked_mul(pow10(shift)?).ok_or("too large")? } else { numerator.div_ceil(pow10(-shift)?) };
    u64::try_from(value).map_err(|_| "too large")
}

fn parse_exponent(text: &str) -> Result<i64, &'static str> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("malformed exponent");
    }
    let value: i64 = digits.parse().map_err(|_| "malformed exponent")?;
    let value = if text.starts_with('-') { -value } else { value };
    if value.abs() > MAX_EXPONENT {
        return Err("exponent out of range");
    }
    Ok(value)
}

fn pow10(exponent: i64) -> Result<u128, &'static str> {
    u32::try_from(exponent).ok().and_then(|e| 10u128.checked_pow(e)).ok_or("too large")
}

/// A byte count in the shortest exact quantity form: `10Gi`, `1500M`, `1234`.
pub fn format(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_owned();
    }
    const BINARY: [(&str, u32); 6] = [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
    const DECIMAL: [(&str, u32); 6] = [("E", 18), ("P", 15), ("T", 12), ("G", 9), ("M", 6), ("k", 3)];
    for (suffix, shift) in BINARY {
        if bytes.trailing_zeros() >= shift {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    for (suffix, exponent) in DECIMAL {
        let unit = 10u64.pow(exponent);
        if bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(text: &str) -> Result<u64, &'static str> {
        parse(text)
    }

    #[test]
    fn equal_sizes_in_every_form_are_equal() {
        for text in ["1Gi", "1024Mi", "1048576Ki", "1073741824", "1073741824e0", "1.073741824G", "+1Gi"] {
            assert_eq!(b(text), Ok(1 << 30), "{text}");
        }
    }

    #[test]
    fn fractions_and_decimal_units_are_exact() {
        assert_eq!(b("1.5Gi"), Ok(3 << 29));
        assert_eq!(b("1e9"), Ok(1_000_000_000));
        assert_eq!(b("1E3"), Ok(1000));
        assert_eq!(b("12M"), Ok(12_000_000));
        assert_eq!(b("1k"), Ok(1000));
        assert_eq!(b(".5Ki"), Ok(512));
        assert_eq!(b("5."), Ok(5));
        assert_eq!(b("0"), Ok(0));
        assert_eq!(b("0e99999"), Err("malformed exponent"));
    }

    #[test]
    fn partial_bytes_round_up() {
        assert_eq!(b("100m"), Ok(1));
        assert_eq!(b("1001m"), Ok(2));
        assert_eq!(b("1.0000000001"), Ok(2));
        assert_eq!(b("15e-1"), Ok(2));
    }

    #[test]
    fn non_sizes_are_refused_not_wrapped() {
        for text in ["", "Gi", "-1Gi", "1Xi", "1.2.3", "1e", "1e+", "16Ei", "1e40", "99999999999999999999Gi", "1 Gi", "0x10"] {
            assert!(b(text).is_err(), "{text} -> {:?}", b(text));
        }
        assert_eq!(b("15Ei"), Ok(15 << 60));
        let err = bytes(&Quantity("ten".into())).unwrap_err();
        assert_eq!(err.to_string(), "\"ten\" is not a storage size: no number");
    }

    #[test]
    fn formats_in_the_shortest_exact_form() {
        assert_eq!(format(10 << 30), "10Gi");
        assert_eq!(format(1536 << 20), "1536Mi");
        assert_eq!(format(1_500_000_000), "1500M");
        assert_eq!(format(1234), "1234");
        assert_eq!(format(0), "0");
        for bytes in [1u64, 999, 1 << 30, 3 << 29, 1_000_000_000, u64::MAX] {
            assert_eq!(b(&format(bytes)), Ok(bytes), "{bytes}");
        }
    }
}
