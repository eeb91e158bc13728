//! JSON the tools print for other programs: integers JavaScript (and every reader that parses
//! numbers as doubles) would round are written as strings.

use serde_json::Value;

/// The largest integer a double holds exactly: 2^53 - 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// `value` with every integer beyond ±[`MAX_SAFE_INTEGER`] replaced by its decimal string, so a
/// reader that parses numbers as doubles loses nothing; smaller integers stay numbers.
pub fn safe_integers(value: Value) -> Value {
    match value {
        Value::Number(n) => {
            let unsafe_u = n.as_u64().is_some_and(|u| u > MAX_SAFE_INTEGER);
            let unsafe_i = n.as_i64().is_some_and(|i| i.unsigned_abs() > MAX_SAFE_INTEGER);
            if unsafe_u || unsafe_i { Value::String(n.to_string()) } else { Value::Number(n) }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(safe_integers).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, safe_integers(v))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_beyond_2_pow_53_become_strings_and_smaller_ones_stay_numbers() {
        let v = serde_json::json!({"big": u64::MAX, "edge": MAX_SAFE_INTEGER, "neg": i64::MIN, "list": [1u64 << 53]});
        let v = safe_integers(v);
        assert_eq!(v["big"], "18446744073709551615");
        assert_eq!(v["edge"], MAX_SAFE_INTEGER);
        assert_eq!(v["neg"], "-9223372036854775808");
        assert_eq!(v["list"][0], "9007199254740992");
    }
}
