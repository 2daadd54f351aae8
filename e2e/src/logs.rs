//! Swell's logs in tests: a process's log as written with `--log-format json` (one
//! JSON object a line, with the list of spans it was written in), and the
//! in-process services' log on the test's output when RUST_LOG asks for it.

use std::path::Path;

use serde_json::Value;

/// Every line of the log at `path`; panics on a line that is not a JSON object.
pub fn read(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read log {}: {e}", path.display()));
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(value) if value.is_object() => value,
            _ => panic!("{}: a log line that is not a JSON object: {line}", path.display()),
        })
        .collect()
}

/// The spans a line was written in, outermost first.
fn spans(line: &Value) -> impl Iterator<Item = &Value> {
    line.get("spans").and_then(Value::as_array).into_iter().flatten()
}

/// The lines written inside a span named `span`.
pub fn within<'a>(lines: &'a [Value], span: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| spans(line).any(|s| s.get("name").and_then(Value::as_str) == Some(span))).collect()
}

/// The value of `field` in any span of `line`, as text.
pub fn span_field<'a>(line: &'a Value, field: &str) -> Option<&'a str> {
    spans(line).find_map(|s| s.get(field).and_then(Value::as_str))
}

/// The in-process services' log (controller, node), when RUST_LOG asks for it.
pub fn log_when_asked() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}
