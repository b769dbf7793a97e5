//! How the console writes times, ages, sizes and results for a person.

use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde_json::Value;

/// An instant: relative ("3 min ago", "in 2 h"), with the exact UTC time as its tooltip
/// and machine-readable `datetime`.
pub fn when(at: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    let seconds = (now - at).num_milliseconds() as f64 / 1000.0;
    let text = if seconds.abs() < 1.0 {
        "just now".to_owned()
    } else if seconds > 0.0 {
        format!("{} ago", span(seconds))
    } else {
        format!("in {}", span(-seconds))
    };
    let exact = at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! { time datetime=(at.to_rfc3339()) title=(exact) { (text) } }
}

/// An instant written out in full, in UTC.
pub fn exact(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A length of time in its largest sensible units: `850 ms`, `42 s`, `3 min 20 s`,
/// `5 h 2 min`, `40 days`.
pub fn span(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 1.0 {
        return format!("{} ms", (s * 1000.0).round() as u64);
    }
    let whole = s.round() as u64;
    let (days, hours, minutes, secs) = (
        whole / 86_400,
        whole % 86_400 / 3600,
        whole % 3600 / 60,
        whole % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) if secs == 0 => format!("{m} min"),
        (0, 0, m) => format!("{m} min {secs} s"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) if d >= 2 => format!("{d} days"),
        (d, h, _) if d >= 2 => format!("{d} days {h} h"),
        (_, h, _) => format!("1 day {h} h"),
    }
}

pub use shared::results::human_bytes as bytes;

/// A field name as words: `runs_deleted` → `runs deleted`.
pub fn label(key: &str) -> String {
    let key = key
        .strip_suffix("_ms")
        .or_else(|| key.strip_suffix("_seconds"))
        .unwrap_or(key);
    key.replace('_', " ")
}

/// One value of a result or of parameters, written for its field: sizes for `bytes_*`,
/// durations for `*_ms` and `*_seconds`, lists and objects as nested lists.
pub fn value(key: &str, value: &Value) -> Markup {
    match value {
        Value::Null => html! { span.muted { "none" } },
        Value::Bool(b) => html! { (if *b { "yes" } else { "no" }) },
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or_default();
            if key.starts_with("bytes") {
                html! { (bytes(n.as_u64().unwrap_or_default())) }
            } else if key.ends_with("_ms") {
                html! { (span(f / 1000.0)) }
            } else if key.ends_with("_seconds") {
                html! { (span(f)) }
            } else if key.ends_with("_hours") {
                html! { (n) " h" }
            } else {
                html! { (n) }
            }
        }
        Value::String(s) => html! { (s) },
        Value::Array(items) if items.is_empty() => html! { span.muted { "none" } },
        Value::Array(items) if items.iter().all(|i| !i.is_object()) => html! {
            ul.inline { @for item in items { li { code { (scalar(item)) } } } }
        },
        Value::Array(items) => html! {
            ol.records { @for item in items { li { (fields(item)) } } }
        },
        Value::Object(_) => fields(value),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A JSON object as a table of its fields (anything else as its text).
pub fn fields(object: &Value) -> Markup {
    match object.as_object() {
        Some(map) if map.is_empty() => html! { span.muted { "none" } },
        Some(map) => html! {
            dl.fields {
                @for (key, v) in map {
                    div { dt { (label(key)) } dd { (value(key, v)) } }
                }
            }
        },
        None => html! { code { (scalar(object)) } },
    }
}

/// A short form of a task id for lists (the start of a UUID v7 is its time: the end
/// tells tasks of one moment apart).
pub fn short_id(id: &uuid::Uuid) -> String {
    let text = id.to_string();
    text[text.len() - 8..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_use_their_largest_units() {
        assert_eq!(span(0.25), "250 ms");
        assert_eq!(span(42.0), "42 s");
        assert_eq!(span(200.0), "3 min 20 s");
        assert_eq!(span(180.0), "3 min");
        assert_eq!(span(5.0 * 3600.0 + 120.0), "5 h 2 min");
        assert_eq!(span(40.0 * 86_400.0), "40 days");
        assert_eq!(span(86_400.0 + 3600.0), "1 day 1 h");
        assert_eq!(span(-3.0), "0 ms");
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn values_follow_their_field() {
        let text = |k: &str, v: Value| value(k, &v).into_string();
        assert_eq!(text("bytes_freed", Value::from(2048)), "2.0 KiB");
        assert_eq!(text("duration_ms", Value::from(1500)), "2 s");
        assert_eq!(
            text("oldest_remaining_age_seconds", Value::from(90)),
            "1 min 30 s"
        );
        assert_eq!(text("capped", Value::from(false)), "no");
        assert!(
            text("sample_ids", serde_json::json!(["<b>1</b>"])).contains("&lt;b&gt;1&lt;/b&gt;")
        );
        assert_eq!(
            label("oldest_remaining_age_seconds"),
            "oldest remaining age"
        );
    }
}
