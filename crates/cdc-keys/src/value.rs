//! The canonical text of one value (docs/key-rendering.md): what `{column}`
//! renders to, whatever path the value took.

/// Text values are percent-escaped where they could be mistaken for key
/// structure: `%` (the escape itself), `:` (the separator templates use),
/// `{` and `}` (template syntax), and control characters (U+0000..U+001F,
/// U+007F), each as `%XX` (uppercase hex of the byte). So `("1", "2:3")`
/// and `("1:2", "3")` render `1:2%3A3` and `1%3A2:3`. Everything else,
/// non-ASCII included, is kept as it is.
pub fn escape(text: &str) -> String {
    let reserved = |c: char| matches!(c, '%' | ':' | '{' | '}') || c.is_ascii_control();
    if !text.chars().any(reserved) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if reserved(c) {
            out.push_str(&format!("%{:02X}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// An integer's text (decimal digits, an optional `-`) without leading
/// zeros, `-0` as `0`, exact at any size; `None` for anything else.
pub fn canonical_integer(text: &str) -> Option<String> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = digits.trim_start_matches('0');
    Some(match (digits.is_empty(), negative) {
        (true, _) => "0".to_owned(),
        (false, true) => format!("-{digits}"),
        (false, false) => digits.to_owned(),
    })
}

/// A JSON number's canonical text. An integer literal is exact at any size
/// (`-0` is `0`). Anything else is a binary64 float printed as its shortest
/// round-trip digits in plain notation, integral values without a fraction
/// (`1024.0` is `1024`, `-0.0` is `0`, `1.0E10` is `10000000000`). `None`
/// for a value no float can hold (`1e400`).
pub fn canonical_number(text: &str) -> Option<String> {
    if let Some(integer) = canonical_integer(text) {
        return Some(integer);
    }
    let f: f64 = text.parse().ok()?;
    f.is_finite().then(|| float64_text(f))
}

/// A `double precision`: the shortest digits that round-trip, plain
/// notation (Rust's `Display` never uses an exponent), `-0` as `0`, and
/// the special values as Java spells them (Debezium, so the daemon):
/// `NaN`, `Infinity`, `-Infinity`.
pub fn float64_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else if f == 0.0 {
        "0".to_owned()
    } else {
        f.to_string()
    }
}

/// A `real`: its shortest float32 digits (`0.1`, not `0.10000000149011612`),
/// otherwise as [`float64_text`].
pub fn float32_text(f: f32) -> String {
    if !f.is_finite() || f == 0.0 {
        float64_text(f64::from(f))
    } else {
        f.to_string()
    }
}

/// PostgreSQL numeric's own range: no column holds more, and a text such as
/// `1E+999999999` must not become a gigabyte of zeros.
const MAX_DECIMAL_SCALE: i64 = 16383;
const MAX_DECIMAL_INTEGER_DIGITS: i64 = 131072;

/// A decimal in any notation (`12.50`, `1E+3`, `1.5e-2`, `+007.5`, `.5`) as
/// Java's `BigDecimal.toPlainString` prints it, which is how Debezium's
/// string mode delivers `numeric` to the daemon: plain notation with the
/// scale kept (`12.50`), `1E+3` as `1000`, `1.5E-2` as `0.015`, no sign on
/// zero (`-0.00` is `0.00`, `0E+3` is `0`). `None` for text that is not a
/// decimal or lies beyond numeric's range.
pub fn plain_decimal(text: &str) -> Option<String> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => {
            let e = &unsigned[at + 1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Beyond i64 it is beyond any bound below as well.
            (&unsigned[..at], e.parse::<i64>().ok()?)
        }
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let scale = i64::try_from(fraction.len()).ok()?.checked_sub(exponent)?;
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    let integer_digits = i64::try_from(digits.len()).ok()? - scale;
    if scale.abs() > MAX_DECIMAL_SCALE || integer_digits > MAX_DECIMAL_INTEGER_DIGITS {
        return None;
    }
    let sign = if negative && !digits.is_empty() { "-" } else { "" };
    if scale <= 0 {
        if digits.is_empty() {
            return Some("0".to_owned());
        }
        // Bounded above: fits a usize.
        let zeros = usize::try_from(-scale).ok()?;
        return Some(format!("{sign}{digits}{}", "0".repeat(zeros)));
    }
    let scale = usize::try_from(scale).ok()?;
    let unscaled = if digits.is_empty() { "0" } else { digits };
    let padded = format!("{unscaled:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    Some(format!("{sign}{int}.{frac}"))
}

/// Why a JSON value has no canonical text.
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unrenderable {
    /// `array`, `structure` or `number out of range`.
    pub kind: &'static str,
}

/// The canonical text of a JSON value as Debezium's JsonConverter prints it
/// (`decimal.handling.mode=string`, `time.precision.mode=adaptive`): `None`
/// for `null` (SQL NULL: the template names no key), text escaped, numbers
/// by [`canonical_number`] (integers stay exact when serde_json is built
/// with `arbitrary_precision`, as the daemon's is).
#[cfg(feature = "json")]
pub fn render_json(value: &serde_json::Value) -> Result<Option<String>, Unrenderable> {
    use serde_json::Value;
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(escape(s))),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Number(n) => canonical_number(&n.to_string()).map(Some).ok_or(Unrenderable {
            kind: "number out of range",
        }),
        Value::Array(_) => Err(Unrenderable { kind: "array" }),
        Value::Object(_) => Err(Unrenderable { kind: "structure" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_canonical_and_exact() {
        assert_eq!(
            canonical_number("18446744073709551617").as_deref(),
            Some("18446744073709551617")
        );
        assert_eq!(canonical_number("-0").as_deref(), Some("0"));
        assert_eq!(canonical_number("-0.0").as_deref(), Some("0"));
        assert_eq!(canonical_number("1024.0").as_deref(), Some("1024"));
        assert_eq!(canonical_number("1.0E10").as_deref(), Some("10000000000"));
        assert_eq!(canonical_number("1e21").as_deref(), Some("1000000000000000000000"));
        assert_eq!(canonical_number("0.1").as_deref(), Some("0.1"));
        assert_eq!(canonical_number("1e400"), None);
        assert_eq!(canonical_integer("-000").as_deref(), Some("0"));
        assert_eq!(canonical_integer("1e3"), None);
        assert_eq!(float32_text(0.1), "0.1");
        assert_eq!(float64_text(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(float64_text(f64::NAN), "NaN");
    }

    #[test]
    fn decimals_render_as_big_decimal_to_plain_string() {
        let cases = [
            ("12.50", "12.50"),
            ("1E+3", "1000"),
            ("1e3", "1000"),
            ("1.50E+2", "150"),
            ("1.5E-2", "0.015"),
            ("-0.05", "-0.05"),
            ("-0.00", "0.00"),
            ("0E+3", "0"),
            ("+007.5", "7.5"),
            (".5", "0.5"),
            ("5.", "5"),
            (
                "12345678901234567890123456789012345678901234.5",
                "12345678901234567890123456789012345678901234.5",
            ),
        ];
        for (text, plain) in cases {
            assert_eq!(plain_decimal(text).as_deref(), Some(plain), "{text}");
        }
        for bad in [
            "",
            ".",
            "-",
            "1e",
            "1e+",
            "1,5",
            "NaN",
            "1E+99999999999",
            "1e99999999999999999999",
            "--1",
        ] {
            assert_eq!(plain_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reserved_characters_in_text_are_escaped() {
        assert_eq!(escape("50%{x}\n\u{7f}é"), "50%25%7Bx%7D%0A%7Fé");
        assert_eq!(escape("plain"), "plain");
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_values_render_or_say_why_not() {
        let render = |text: &str| render_json(&serde_json::from_str(text).unwrap());
        assert_eq!(render("null"), Ok(None));
        assert_eq!(render("\"a:b\"").unwrap().as_deref(), Some("a%3Ab"));
        assert_eq!(render("true").unwrap().as_deref(), Some("true"));
        assert_eq!(
            render("18446744073709551616").unwrap().as_deref(),
            Some("18446744073709551616")
        );
        assert_eq!(render("[1]"), Err(Unrenderable { kind: "array" }));
        assert_eq!(render("{}"), Err(Unrenderable { kind: "structure" }));
        assert_eq!(
            render("1e400"),
            Err(Unrenderable {
                kind: "number out of range"
            })
        );
    }
}
