//! Loading a TOML config and applying command-line overrides to it.
//!
//! Overrides are dotted paths into the TOML document (`--set optimizer.momentum=0.9`); the
//! named flags (`--batch 256`) are shorthands for the same mechanism, so a flag and a config
//! field can never disagree about what they mean. Values are parsed as TOML (`0.9`, `"cosine"`,
//! `[256, 256]`); a bare word that is not valid TOML is taken as a string.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// A table selected by a tag field, and the tag to assume when the table is given without one
/// (so that `--set task.dim=10` works on the default task).
pub struct DefaultTag {
    /// Dotted path of the table, e.g. `task`.
    pub table: &'static str,
    /// The tag field, e.g. `kind`.
    pub tag: &'static str,
    /// The tag's default value.
    pub default: String,
}

/// Reads `path` (or an empty document), applies `overrides` (`key.path=value`) in order, fills
/// in missing tags, and deserializes.
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    base: &[&str],
    overrides: &[String],
    tags: &[DefaultTag],
) -> Result<T> {
    // A command's own defaults lie under the file, the file under the flags.
    let mut doc = Table::new();
    for b in base {
        apply_override(&mut doc, b)?;
    }
    let file: Table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?;
            text.parse()
                .with_context(|| format!("parsing config {}", p.display()))?
        }
        None => Table::new(),
    };
    merge(&mut doc, file);
    for o in overrides {
        apply_override(&mut doc, o)?;
    }
    for t in tags {
        let mut table = Some(&mut doc);
        for part in t.table.split('.') {
            table = table
                .and_then(|tb| tb.get_mut(part))
                .and_then(Value::as_table_mut);
        }
        if let Some(table) = table {
            table
                .entry(t.tag)
                .or_insert_with(|| Value::String(t.default.clone()));
        }
    }
    // Deserialize from the rendered text, not the table, so that an error quotes the offending
    // line (which names the field) with a caret under the bad value.
    let text = toml::to_string(&doc).context("rendering the config")?;
    let source = match (path, overrides.is_empty()) {
        (Some(p), true) => p.display().to_string(),
        (Some(p), false) => format!("{} with the command-line overrides", p.display()),
        (None, _) => "the command-line overrides".to_string(),
    };
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config ({source}): {e}"))
}

/// Merges `over` into `doc`, table by table; `over`'s values win. A table whose tag (`kind`,
/// `source`) changes replaces the old one whole.
fn merge(doc: &mut Table, over: Table) {
    for (k, v) in over {
        match (doc.get_mut(&k), v) {
            (Some(Value::Table(old)), Value::Table(new)) => {
                let retag = ["kind", "source"]
                    .iter()
                    .any(|t| new.get(*t).is_some_and(|n| old.get(*t) != Some(n)));
                if retag {
                    *old = new;
                } else {
                    merge(old, new);
                }
            }
            (_, v) => {
                doc.insert(k, v);
            }
        }
    }
}

/// Applies one `dotted.key=value` override.
pub fn apply_override(doc: &mut Table, item: &str) -> Result<()> {
    let Some((key, raw)) = item.split_once('=') else {
        bail!("override `{item}`: expected KEY=VALUE, e.g. optimizer.momentum=0.9");
    };
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        bail!("override `{item}`: the key `{key}` is not a dotted path like task.dim");
    }
    let value = parse_value(raw.trim());
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("split yields at least one part");
    let mut table = doc;
    for (i, part) in parts.iter().enumerate() {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            other => bail!(
                "override `{item}`: `{}` is {} = {other}, not a table",
                parts[..=i].join("."),
                other.type_str()
            ),
        };
    }
    // Choosing a different task kind starts that table afresh: the old kind's fields would be
    // refused by the new kind.
    if last == "kind"
        && let Some(Value::String(old)) = table.get("kind")
        && Some(old.as_str()) != value.as_str()
    {
        table.clear();
    }
    table.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> Value {
    let wrapped = format!("v = {raw}");
    match wrapped.parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_create_nested_tables_and_parse_toml_values() {
        let mut doc = Table::new();
        apply_override(&mut doc, "optimizer.momentum=0.9").unwrap();
        apply_override(&mut doc, "task.kind=mlp").unwrap();
        apply_override(&mut doc, "task.hidden=[32, 16]").unwrap();
        apply_override(&mut doc, "batch=256").unwrap();
        assert_eq!(doc["optimizer"]["momentum"].as_float(), Some(0.9));
        assert_eq!(doc["task"]["kind"].as_str(), Some("mlp"));
        assert_eq!(doc["task"]["hidden"].as_array().unwrap().len(), 2);
        assert_eq!(doc["batch"].as_integer(), Some(256));
    }

    #[test]
    fn command_defaults_lie_under_the_file_and_the_file_under_the_flags() {
        let dir = std::env::temp_dir().join(format!("batchlab-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "steps = 7\n[task]\nkind = \"nqm\"\ndim = 3\n").unwrap();
        let t: Table = load(
            Some(&path),
            &["task.dim=100", "steps=1", "batch=5"],
            &["batch=9".into()],
            &[],
        )
        .unwrap();
        assert_eq!(
            t["task"]["dim"].as_integer(),
            Some(3),
            "the file wins over the command default"
        );
        assert_eq!(t["steps"].as_integer(), Some(7));
        assert_eq!(t["batch"].as_integer(), Some(9), "the flag wins over both");
        // A file that picks another task kind drops the default task's fields.
        std::fs::write(&path, "[task]\nkind = \"linreg\"\n").unwrap();
        let t: Table = load(
            Some(&path),
            &["task.kind=\"nqm\"", "task.dim=100"],
            &[],
            &[],
        )
        .unwrap();
        assert!(t["task"].get("dim").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn changing_the_task_kind_drops_the_old_kinds_fields() {
        let mut doc: Table = "[task]\nkind = \"nqm\"\ndim = 10\n".parse().unwrap();
        apply_override(&mut doc, "task.kind=linreg").unwrap();
        assert!(doc["task"].get("dim").is_none());
        apply_override(&mut doc, "task.kind=linreg").unwrap();
        assert_eq!(doc["task"]["kind"].as_str(), Some("linreg"));
    }

    #[test]
    fn malformed_overrides_name_the_problem() {
        let mut doc = Table::new();
        let e = apply_override(&mut doc, "batch").unwrap_err().to_string();
        assert!(e.contains("expected KEY=VALUE"), "{e}");
        apply_override(&mut doc, "batch=3").unwrap();
        let e = apply_override(&mut doc, "batch.x=3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`batch` is integer = 3, not a table"), "{e}");
    }
}
