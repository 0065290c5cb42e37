//! JSON text as Python's `json.dumps(value, ensure_ascii=False, indent=indent)`
//! writes it, which is what chat templates' `tojson` produces under
//! transformers: `", "` and `": "` separators without indent; with an indent,
//! one item per line, `","` at line ends, nested levels indented by `indent`
//! more spaces, and empty containers as `[]` / `{}`. Strings escape `"`, `\`
//! and control characters only (non-ASCII stays as is), exactly as serde_json
//! does. Integers print as integers, floats in their shortest round-trip form.

use serde_json::Value as Json;

/// `json.dumps(value, ensure_ascii=False, indent=indent)`.
pub fn dumps(value: &Json, indent: Option<usize>) -> String {
    let mut out = String::new();
    write_value(&mut out, value, indent, 0);
    out
}

fn write_value(out: &mut String, value: &Json, indent: Option<usize>, level: usize) {
    match value {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                separator(out, i, indent, level + 1);
                write_value(out, item, indent, level + 1);
            }
            close(out, indent, level);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                separator(out, i, indent, level + 1);
                out.push_str(&Json::String(key.clone()).to_string());
                out.push_str(": ");
                write_value(out, item, indent, level + 1);
            }
            close(out, indent, level);
            out.push('}');
        }
        Json::Array(_) => out.push_str("[]"),
        Json::Object(_) => out.push_str("{}"),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&python_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        // null, booleans and strings are spelled the same as serde_json's.
        other => out.push_str(&other.to_string()),
    }
}

/// Before item `i`: `", "` (or `",\n"` + indent) between items, the first line break when indented.
fn separator(out: &mut String, i: usize, indent: Option<usize>, level: usize) {
    match indent {
        None if i > 0 => out.push_str(", "),
        None => {}
        Some(width) => {
            if i > 0 {
                out.push(',');
            }
            out.push('\n');
            out.push_str(&" ".repeat(width * level));
        }
    }
}

/// Before a closing bracket: a line break back to the container's level when indented.
fn close(out: &mut String, indent: Option<usize>, level: usize) {
    if let Some(width) = indent {
        out.push('\n');
        out.push_str(&" ".repeat(width * level));
    }
}

/// Python's `repr(float)`: shortest round-trip digits, always with a `.` or
/// an exponent (`1.0`, `0.1`, `1e+20`), `NaN` / `Infinity` as json.dumps writes them.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Rust's `{:e}` gives shortest digits like `1e20` / `1.5e-7`; Python writes
        // `1e+20` / `1.5e-07` (sign always, at least two exponent digits).
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let s = f.to_string();
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Expected strings are what CPython 3.11's json.dumps(..., ensure_ascii=False) prints.
    #[test]
    fn compact_form_uses_python_separators() {
        let v = json!({"name": "get_weather", "args": [1, 2.5, true, null, "é\"\n"]});
        // serde_json keeps insertion order (its `preserve_order` feature, which llguidance
        // turns on), as a Python dict does: "name" stays first.
        assert_eq!(
            dumps(&v, None),
            r#"{"name": "get_weather", "args": [1, 2.5, true, null, "é\"\n"]}"#
        );
        assert_eq!(dumps(&json!([]), None), "[]");
        assert_eq!(dumps(&json!({}), None), "{}");
        assert_eq!(dumps(&json!("a\u{1}b"), None), r#""a\u0001b""#);
    }

    #[test]
    fn indented_form_matches_python() {
        let v = json!({"a": [1, {"b": []}], "c": {}});
        let expected = "{\n  \"a\": [\n    1,\n    {\n      \"b\": []\n    }\n  ],\n  \"c\": {}\n}";
        assert_eq!(dumps(&v, Some(2)), expected);
        assert_eq!(dumps(&json!([1]), Some(0)), "[\n1\n]");
    }

    #[test]
    fn floats_print_like_python_repr() {
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(0.1), "0.1");
        assert_eq!(python_float(-2.5), "-2.5");
        assert_eq!(python_float(1e20), "1e+20");
        assert_eq!(python_float(1.5e-7), "1.5e-07");
        assert_eq!(python_float(123456789012345.0), "123456789012345.0");
        assert_eq!(python_float(0.0001), "0.0001");
        assert_eq!(python_float(f64::NAN), "NaN");
        assert_eq!(dumps(&json!(3.0), None), "3.0");
        assert_eq!(dumps(&json!(-7), None), "-7");
    }
}
