//! Text exactly as sandrun's C++ code writes it: its JSON string escaping and its number formats.

use std::fmt::Write;

/// Escapes bytes for a JSON string the way sandrun's `json_escape` does.
///
/// Every byte at or above 0x80 is written as `\u00xx`, so non-ASCII text comes back mangled,
/// exactly like the real worker mangles it.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            0x20..=0x7f => out.push(char::from(byte)),
            _ => {
                let _ = write!(out, "\\u{byte:04x}");
            }
        }
    }
    out
}

/// Formats a number like a default C++ output stream (`%g`, 6 significant digits).
pub fn cpp_number(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    if !value.is_finite() {
        return value.to_string();
    }
    let scientific = format!("{value:.5e}");
    let Some((mantissa, exponent)) = scientific.split_once('e') else {
        return value.to_string();
    };
    let Ok(exponent) = exponent.parse::<i32>() else {
        return value.to_string();
    };
    if !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!(
            "{}e{sign}{:02}",
            trim_fraction(mantissa),
            exponent.unsigned_abs()
        );
    }
    let decimals = usize::try_from(5 - exponent).unwrap_or(0);
    trim_fraction(&format!("{value:.decimals$}")).to_string()
}

/// Formats a number with two decimals, as sandrun's `/status` does (`std::fixed`, precision 2).
pub fn fixed2(value: f64) -> String {
    format!("{value:.2}")
}

/// Drops trailing zeros of a decimal fraction, and the point if nothing is left after it.
fn trim_fraction(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}
