//! How commands print state: JSON (the default, for scripts) or tables for people
//! (`--output table`, or `SINKRON_OUTPUT=table`).
//!
//! Tables are made from the JSON of the answer, so every command gets one without a
//! layout of its own: a list of objects becomes rows with a column per field, an object's
//! plain fields become `field  value` lines, and each list of objects inside an object
//! becomes a table of its own under the field's name.

use std::sync::OnceLock;

use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde::Serialize;
use serde_json::Value;

/// The output formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Pretty-printed JSON, as the API answers.
    Json,
    /// Tables.
    Table,
}

static OUTPUT: OnceLock<Option<Output>> = OnceLock::new();

/// Sets the format for the rest of the process (`None`: each command's default).
pub fn init(output: Option<Output>) {
    let _ = OUTPUT.set(output);
}

/// The format asked for, if one was.
pub fn format() -> Option<Output> {
    OUTPUT.get().copied().flatten()
}

/// Prints `value` in the chosen format (JSON unless tables were asked for).
pub fn show<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let value = serde_json::to_value(value)?;
    match format() {
        Some(Output::Table) => say!("{}", render(&value)),
        _ => say!("{}", serde_json::to_string_pretty(&value)?),
    }
    Ok(())
}

/// The table form of a JSON value.
pub fn render(value: &Value) -> String {
    match value {
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => rows(items),
        Value::Object(fields) => {
            let mut plain = Vec::new();
            let mut lists = Vec::new();
            for (name, field) in fields {
                match field {
                    Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
                        lists.push((name, items))
                    }
                    other => plain.push(vec![name.clone(), cell(other)]),
                }
            }
            let mut out = Vec::new();
            if !plain.is_empty() {
                out.push(table(None, plain));
            }
            for (name, items) in lists {
                out.push(format!("{name}:\n{}", rows(items)));
            }
            out.join("\n")
        }
        other => cell(other),
    }
}

/// Fields that name what a row is about: they come first, in this order.
const IDENTITY: &[&str] = &["name", "node", "id", "queue", "key", "client_id", "partition"];

/// Where a field goes among the columns: identities first, then by name.
fn column_rank(name: &str) -> (usize, &str) {
    (IDENTITY.iter().position(|i| *i == name).unwrap_or(IDENTITY.len()), name)
}

/// Objects as rows, with a column per field.
fn rows(items: &[Value]) -> String {
    let mut columns: Vec<String> = Vec::new();
    for item in items {
        for name in item.as_object().into_iter().flat_map(|o| o.keys()) {
            if !columns.contains(name) {
                columns.push(name.clone());
            }
        }
    }
    columns.sort_by(|a, b| column_rank(a).cmp(&column_rank(b)));
    let body = items
        .iter()
        .map(|item| columns.iter().map(|c| item.get(c).map_or_else(|| "–".to_string(), cell)).collect())
        .collect();
    table(Some(columns), body)
}

fn table(header: Option<Vec<String>>, body: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Disabled);
    if let Some(header) = header {
        t.set_header(header);
    }
    for row in body {
        t.add_row(row);
    }
    t.to_string()
}

/// One value as the text of a cell: scalars as they are, lists joined, an object as its
/// identity followed by its other fields (`worker-a (fence=42, mode=exclusive)`).
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(fields) => {
            let identity = IDENTITY.iter().find_map(|i| fields.get(*i).map(|v| (*i, cell(v))));
            let rest: Vec<String> = fields
                .iter()
                .filter(|(k, _)| identity.as_ref().is_none_or(|(i, _)| i != k))
                .map(|(k, v)| format!("{k}={}", cell(v)))
                .collect();
            match identity {
                Some((_, id)) if rest.is_empty() => id,
                Some((_, id)) => format!("{id} ({})", rest.join(", ")),
                None => rest.join(", "),
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lists_of_objects_become_rows_and_plain_fields_lines() {
        let text = render(&json!({
            "last_fence": 42,
            "locks": [
                {"name": "report", "holders": [{"client_id": "a", "fence": 42}]},
                {"name": "invoice", "mode": "shared", "holders": []}
            ]
        }));
        assert!(text.contains("last_fence") && text.contains("42"), "{text}");
        assert!(text.starts_with('┌') && text.contains("locks:\n"), "{text}");
        let header = text.lines().find(|l| l.contains("name")).expect("a header row");
        assert!(header.contains("holders") && header.contains("mode"), "{header}");
        assert!(text.contains("a (fence=42)"), "nested holders are summarised: {text}");
        assert!(header.find("name") < header.find("holders"), "identity first: {header}");
        assert!(text.contains('–'), "a missing or null field shows a dash: {text}");
    }

    #[test]
    fn scalars_print_as_themselves() {
        assert_eq!(render(&json!("plain")), "plain");
        assert_eq!(render(&json!(7)), "7");
        assert_eq!(render(&json!(null)), "–");
    }
}
