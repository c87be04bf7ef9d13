//! Output in crictl's shapes: camelCase JSON/YAML, decimal human sizes, tab-aligned tables.

use std::collections::HashMap;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};

/// `-o` of the commands that print structured status.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Yaml,
}

/// `-o` of the list commands: crictl's table, or the response as JSON/YAML.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListFormat {
    Table,
    Json,
    Yaml,
}

impl ListFormat {
    /// The structured format, or `None` for a table.
    pub(crate) fn structured(self) -> Option<Format> {
        match self {
            ListFormat::Table => None,
            ListFormat::Json => Some(Format::Json),
            ListFormat::Yaml => Some(Format::Yaml),
        }
    }
}

/// crictl's `truncatedIDLen`.
const TRUNCATED_ID_LEN: usize = 13;

/// crictl's `getTruncatedID`: drop the prefix, keep 13 characters.
pub(crate) fn truncate_id(id: &str, prefix: &str) -> String {
    let id = id.strip_prefix(prefix).unwrap_or(id);
    id.chars().take(TRUNCATED_ID_LEN).collect()
}

/// Fields whose values are user maps (labels, annotations, info): their keys are data, not
/// field names, and stay as they are.
pub(crate) const MAP_FIELDS: &[&str] = &[
    "labels",
    "annotations",
    "info",
    "sysctls",
    "unified",
    "extra",
];

/// `runtime_api_version` → `runtimeApiVersion` (protobuf's JSON name).
pub(crate) fn snake_to_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Renames object keys snake_case → camelCase, recursively, leaving user maps alone.
pub(crate) fn camelize(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if MAP_FIELDS.contains(&k.as_str()) {
                        v
                    } else {
                        camelize(v)
                    };
                    (snake_to_camel(&k), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(camelize).collect()),
        other => other,
    }
}

/// Removes null members of objects, recursively: protojson leaves unset messages out.
pub(crate) fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Serialises a CRI message as protobuf JSON would name it (camelCase fields).
pub(crate) fn to_cri_json<T: Serialize>(msg: &T) -> Result<Value> {
    Ok(camelize(
        serde_json::to_value(msg).context("serialise response")?,
    ))
}

/// crictl's `outputStatusData`: `{"status": ...}` plus each info entry, parsed as JSON when it
/// is a JSON object and kept as a string (without surrounding quotes) otherwise.
pub(crate) fn status_with_info(
    status: Option<Value>,
    extra: Vec<(&str, Value)>,
    info: &HashMap<String, String>,
) -> Value {
    let mut out = Map::new();
    if let Some(status) = status {
        out.insert("status".to_string(), status);
    }
    for (k, v) in extra {
        out.insert(k.to_string(), v);
    }
    for (k, v) in info {
        let parsed = v
            .starts_with('{')
            .then(|| serde_json::from_str::<Value>(v).ok())
            .flatten()
            .unwrap_or_else(|| Value::String(v.trim_matches('"').to_string()));
        out.insert(k.clone(), parsed);
    }
    Value::Object(out)
}

/// JSON as Go's `json.Marshal` + `json.Indent` write it, as crictl's status commands print:
/// two-space indent and `<`, `>`, `&`, U+2028, U+2029 escaped. Those characters can only be
/// inside strings, so replacing them in the rendered text is exact.
pub(crate) fn go_json(v: &Value) -> Result<String> {
    let s = serde_json::to_string_pretty(v).context("encode json")?;
    let mut out = String::with_capacity(s.len() + 1);
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('\n');
    Ok(out)
}

/// Go's `%v` of a decoded JSON value, as text/template prints one: `map[k:v]`, `[a b]`.
fn go_value(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(go_value).collect();
            format!("[{}]", items.join(" "))
        }
        // serde_json's map is sorted, as Go prints maps
        Value::Object(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}:{}", go_value(v)))
                .collect();
            format!("map[{}]", items.join(" "))
        }
    }
}

/// The value at `.a.b.c` (`.` itself for `.`); a missing key is an error, as crictl runs
/// templates with `missingkey=error`.
fn template_field<'a>(data: &'a Value, path: &str) -> Result<&'a Value> {
    let mut v = data;
    for key in path.split('.').filter(|k| !k.is_empty()) {
        v = v
            .as_object()
            .and_then(|m| m.get(key))
            .ok_or_else(|| anyhow::anyhow!("map has no entry for key {key:?}"))?;
    }
    Ok(v)
}

/// The part of Go's text/template that crictl's `--template` is used with: text, `{{.path}}`,
/// and the functions `json`, `lower` and `upper` applied to one path. Anything else is refused.
pub(crate) fn go_template(tmpl: &str, data: &Value) -> Result<String> {
    let mut out = String::new();
    let mut rest = tmpl;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| anyhow::anyhow!("template: unclosed action"))?;
        let action = after[..end].trim_matches('-').trim();
        let words: Vec<&str> = action.split_whitespace().collect();
        let text = match words.as_slice() {
            [path] if path.starts_with('.') => go_value(template_field(data, path)?),
            [func, path] if path.starts_with('.') => {
                let v = template_field(data, path)?;
                match *func {
                    "json" => {
                        let mut s = serde_json::to_string(v).context("encode json")?;
                        s.push('\n');
                        s
                    }
                    "lower" => go_value(v).to_lowercase(),
                    "upper" => go_value(v).to_uppercase(),
                    other => anyhow::bail!("template: function {other:?} is not supported"),
                }
            }
            _ => anyhow::bail!(
                "template: {{{{{action}}}}} is not supported (only {{{{.path}}}}, {{{{json .path}}}}, \
                 {{{{lower .path}}}}, {{{{upper .path}}}})"
            ),
        };
        out.push_str(&text);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

pub(crate) fn render(v: &Value, format: Format) -> Result<String> {
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(v).context("encode json")?;
            s.push('\n');
            Ok(s)
        }
        Format::Yaml => serde_saphyr::to_string(v).context("encode yaml"),
    }
}

pub(crate) fn print(v: &Value, format: Format) -> Result<()> {
    print!("{}", render(v, format)?);
    Ok(())
}

/// docker/go-units `HumanSizeWithPrecision(size, 3)`: decimal units, 3 significant digits.
pub(crate) fn human_size(bytes: u64) -> String {
    human_size_with_precision(bytes, 3)
}

/// docker/go-units `HumanSize` (4 significant digits), what crictl's stats tables use.
pub(crate) fn human_size_go(bytes: u64) -> String {
    human_size_with_precision(bytes, 4)
}

fn human_size_with_precision(bytes: u64, precision: usize) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut size = bytes as f64;
    let mut i = 0;
    while size >= 1000.0 && i < UNITS.len() - 1 {
        size /= 1000.0;
        i += 1;
    }
    format!("{}{}", format_g(size, precision), UNITS[i])
}

/// protojson writes 64-bit integers as strings: turns every integer below `v` into one, except
/// under the keys in `narrow` (32-bit fields).
pub(crate) fn int64_as_strings(v: &mut Value, narrow: &[&str]) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if MAP_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                if narrow.contains(&k.as_str()) && child.is_number() {
                    continue;
                }
                int64_as_strings(child, narrow);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| int64_as_strings(i, narrow)),
        Value::Number(n) if n.is_i64() || n.is_u64() => *v = Value::String(n.to_string()),
        _ => {}
    }
}

/// Go's `%.{prec}g` for non-negative finite values.
fn format_g(v: f64, prec: usize) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let sci = format!("{:.*e}", prec.saturating_sub(1), v);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if exp < -4 || exp >= prec as i32 {
        let mantissa = trim_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let decimals = (prec as i32 - 1 - exp).max(0) as usize;
    trim_zeros(&format!("{v:.decimals$}")).to_string()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// docker/go-units `HumanDuration`, as crictl's CREATED column shows it (plus " ago").
pub(crate) fn human_duration(d: std::time::Duration) -> String {
    let seconds = d.as_secs();
    let minutes = seconds / 60;
    // go-units rounds hours to the nearest one, but truncates seconds and minutes
    let hours = (d.as_secs_f64() / 3600.0).round() as u64;
    if seconds < 1 {
        "Less than a second".to_string()
    } else if seconds == 1 {
        "1 second".to_string()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if minutes == 1 {
        "About a minute".to_string()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".to_string()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", seconds / 3600 / 24 / 365)
    }
}

/// How long before `now_nanos` a CRI `created_at` (unix nanoseconds) was, e.g. "2 minutes ago".
pub(crate) fn created_ago(created_nanos: i64, now_nanos: i64) -> String {
    let nanos = u64::try_from(now_nanos.saturating_sub(created_nanos)).unwrap_or(0);
    format!(
        "{} ago",
        human_duration(std::time::Duration::from_nanos(nanos))
    )
}

/// Go's `tabwriter.NewWriter(w, 20, 1, 3, ' ', 0)` as crictl uses it: every column but the
/// last is padded to its widest cell + 3, at least 20.
pub(crate) fn format_table(rows: &[Vec<String>]) -> String {
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; ncols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let width = (widths[i] + 3).max(20);
                let pad = width.saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn snake_keys_become_camel() {
        assert_eq!(snake_to_camel("runtime_api_version"), "runtimeApiVersion");
        assert_eq!(snake_to_camel("fs_id"), "fsId");
        assert_eq!(snake_to_camel("id"), "id");
        assert_eq!(snake_to_camel("image_filesystems"), "imageFilesystems");
    }

    #[test]
    fn camelize_recurses_but_keeps_user_maps() {
        let v = json!({
            "repo_tags": ["a:b"],
            "image_filesystems": [{"fs_id": {"mountpoint": "/x"}, "used_bytes": {"value": 3}}],
            "spec": {"user_specified_image": "", "annotations": {"some_key": "v", "a.b/c_d": "e"}},
            "labels": {"app_name": "x"}
        });
        let want = json!({
            "repoTags": ["a:b"],
            "imageFilesystems": [{"fsId": {"mountpoint": "/x"}, "usedBytes": {"value": 3}}],
            "spec": {"userSpecifiedImage": "", "annotations": {"some_key": "v", "a.b/c_d": "e"}},
            "labels": {"app_name": "x"}
        });
        assert_eq!(camelize(v), want);
    }

    #[test]
    fn cri_messages_serialise_with_camel_names() {
        let img = k8s_cri::v1::Image {
            id: "sha256:abc".into(),
            repo_tags: vec!["x:1".into()],
            ..Default::default()
        };
        let v = to_cri_json(&img).ok();
        let v = v.as_ref().and_then(Value::as_object);
        assert!(v.is_some_and(|m| m.contains_key("repoTags") && m.contains_key("repoDigests")));
    }

    #[test]
    fn info_values_are_parsed_when_json() {
        let info = HashMap::from([
            ("info".to_string(), r#"{"chainID":"sha256:1"}"#.to_string()),
            ("plain".to_string(), "not json".to_string()),
        ]);
        let v = status_with_info(Some(json!({"id": "x"})), vec![], &info);
        assert_eq!(
            v,
            json!({"status": {"id": "x"}, "info": {"chainID": "sha256:1"}, "plain": "not json"})
        );
    }

    #[test]
    fn nulls_are_dropped_at_every_depth() {
        let mut v = json!({"a": null, "b": {"c": null, "d": [{"e": null, "f": 1}]}, "g": [null]});
        drop_nulls(&mut v);
        assert_eq!(v, json!({"b": {"d": [{"f": 1}]}, "g": [null]}));
    }

    #[test]
    fn info_values_follow_crictl_rules() {
        let info = HashMap::from([
            ("quoted".to_string(), r#""runc""#.to_string()),
            ("number".to_string(), "42".to_string()),
            ("broken".to_string(), "{not json".to_string()),
        ]);
        let v = status_with_info(None, vec![], &info);
        assert_eq!(
            v,
            json!({"quoted": "runc", "number": "42", "broken": "{not json"})
        );
    }

    #[test]
    fn go_json_escapes_like_go() {
        let v = json!({"cmd": "a > b && c < d", "n": 1});
        assert_eq!(
            go_json(&v).unwrap(),
            "{\n  \"cmd\": \"a \\u003e b \\u0026\\u0026 c \\u003c d\",\n  \"n\": 1\n}\n"
        );
    }

    #[test]
    fn templates_print_fields_like_go() {
        let v = json!({"status": {"id": "abc", "state": "CONTAINER_RUNNING", "exitCode": 0,
            "labels": {"b": "2", "a": "1"}, "args": ["x", "y"]}, "info": {"pid": 7}});
        let t = |s: &str| go_template(s, &v).map_err(|e| e.to_string());
        assert_eq!(
            t("{{.status.id}} {{ .info.pid }}\n"),
            Ok("abc 7\n".to_string())
        );
        assert_eq!(t("{{.status.labels}}"), Ok("map[a:1 b:2]".to_string()));
        assert_eq!(t("{{.status.args}}"), Ok("[x y]".to_string()));
        assert_eq!(
            t("{{lower .status.state}}"),
            Ok("container_running".to_string())
        );
        assert_eq!(
            t("{{json .status.labels}}"),
            Ok("{\"a\":\"1\",\"b\":\"2\"}\n".to_string())
        );
        assert_eq!(t("plain"), Ok("plain".to_string()));
        assert!(t("{{.status.nope}}").is_err());
        assert!(t("{{range .status.args}}x{{end}}").is_err());
        assert!(t("{{.status.id").is_err());
    }

    #[test]
    fn sizes_are_human_like_go_units() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(500), "500B");
        assert_eq!(human_size(1234), "1.23kB");
        assert_eq!(human_size(2_140_000), "2.14MB");
        assert_eq!(human_size(2_144_999), "2.14MB");
        assert_eq!(human_size(12_345_678), "12.3MB");
        assert_eq!(human_size(123_456_789), "123MB");
        assert_eq!(human_size(1_000_000_000), "1GB");
        assert_eq!(human_size(999_999), "1e+03kB");
    }

    #[test]
    fn durations_are_human_like_go_units() {
        use std::time::Duration;
        let h = |s: u64| human_duration(Duration::from_secs(s));
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(h(1), "1 second");
        assert_eq!(h(59), "59 seconds");
        assert_eq!(h(60), "About a minute");
        assert_eq!(h(119), "About a minute");
        assert_eq!(h(120), "2 minutes");
        assert_eq!(h(59 * 60 + 59), "59 minutes");
        assert_eq!(h(3600), "About an hour");
        assert_eq!(h(5400), "2 hours"); // 1.5h rounds up
        assert_eq!(h(47 * 3600), "47 hours");
        assert_eq!(h(48 * 3600), "2 days");
        assert_eq!(h(14 * 86400), "2 weeks");
        assert_eq!(h(60 * 86400), "2 months");
        assert_eq!(h(730 * 86400), "2 years");
    }

    #[test]
    fn created_is_relative_to_now() {
        let now = 1_700_000_000_000_000_000i64;
        assert_eq!(created_ago(now - 120_000_000_000, now), "2 minutes ago");
        assert_eq!(created_ago(now, now), "Less than a second ago");
        // a clock behind the runtime's does not underflow
        assert_eq!(
            created_ago(now + 5_000_000_000, now),
            "Less than a second ago"
        );
    }

    #[test]
    fn ids_truncate_to_13() {
        assert_eq!(
            truncate_id("sha256:0123456789abcdef", "sha256:"),
            "0123456789abc"
        );
        assert_eq!(truncate_id("abc", ""), "abc");
    }

    #[test]
    fn tables_align_like_tabwriter() {
        let rows = vec![
            vec!["IMAGE".into(), "TAG".into(), "SIZE".into()],
            vec![
                "127.0.0.1:5000/berth/busybox-with-a-long-name".into(),
                "latest".into(),
                "2.14MB".into(),
            ],
        ];
        let t = format_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        // first column: widest cell (45) + 3; second: min width 20
        assert_eq!(lines[0], format!("{:<48}{:<20}SIZE", "IMAGE", "TAG"));
        assert_eq!(
            lines[1],
            format!(
                "{:<48}{:<20}2.14MB",
                "127.0.0.1:5000/berth/busybox-with-a-long-name", "latest"
            )
        );
    }
}
