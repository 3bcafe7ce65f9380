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
    let file_text = match path {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?,
        ),
        None => None,
    };
    let file: Table = match (&file_text, path) {
        (Some(text), Some(p)) => text
            .parse()
            .with_context(|| format!("parsing config {}", p.display()))?,
        _ => Table::new(),
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
    // Deserialize from the rendered text, not the table, so that an error has a place: the
    // rendered line names the field, which is then traced back to where the user gave it.
    let text = toml::to_string(&doc).context("rendering the config")?;
    let file = path.zip(file_text.as_deref());
    toml::from_str(&text).map_err(|e| explain(&e, &text, file, overrides))
}

/// A deserialization error of the merged, rendered config, told in the user's terms: the
/// field's dotted path, its value, what is wrong, and where the value came from (a line of the
/// config file, the command line, or a default).
fn explain(
    e: &toml::de::Error,
    rendered: &str,
    file: Option<(&Path, &str)>,
    overrides: &[String],
) -> anyhow::Error {
    let message = e.message().trim();
    let Some(span) = e.span().filter(|s| s.start <= rendered.len()) else {
        return anyhow::anyhow!("invalid config: {message}");
    };
    let before = &rendered[..span.start];
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let end = rendered[span.start..]
        .find('\n')
        .map_or(rendered.len(), |i| span.start + i);
    let line = rendered[start..end].trim();
    let header = |l: &str| {
        l.trim()
            .strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .map(str::to_string)
    };
    let table = before[..start]
        .lines()
        .rev()
        .find_map(header)
        .unwrap_or_default();
    // An unknown field of a tagged table is reported on the table: name the field itself.
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split_once('`'))
        .map(|(f, _)| f.to_string());
    let (dotted, value) = match (header(line), line.split_once('=')) {
        (Some(t), _) => match unknown {
            Some(f) => {
                let value = doc_value(rendered, &t, &f);
                (format!("{t}.{f}"), value)
            }
            None => (t, None),
        },
        (None, Some((k, v))) => {
            let k = k.trim().trim_matches('"');
            let dotted = if table.is_empty() {
                k.to_string()
            } else {
                format!("{table}.{k}")
            };
            (dotted, Some(v.trim().to_string()))
        }
        (None, None) => (table.clone(), None),
    };
    let on_command_line = overrides
        .iter()
        .any(|o| o.split_once('=').is_some_and(|(k, _)| k.trim() == dotted));
    let origin = if on_command_line {
        "given on the command line".to_string()
    } else if let Some(n) = file.and_then(|(_, text)| line_of(text, &dotted)) {
        format!("{}, line {n}", file.expect("found in the file").0.display())
    } else {
        "a default".to_string()
    };
    match value {
        Some(v) => anyhow::anyhow!("invalid config: {dotted} = {v}: {message} ({origin})"),
        None => anyhow::anyhow!("invalid config: [{dotted}]: {message} ({origin})"),
    }
}

/// The value of `table.key` as rendered in `text`, if it is there.
fn doc_value(text: &str, table: &str, key: &str) -> Option<String> {
    let doc: Table = text.parse().ok()?;
    let mut t = &doc;
    for part in table.split('.') {
        t = t.get(part)?.as_table()?;
    }
    t.get(key).map(ToString::to_string)
}

/// The 1-based line of `text` (a TOML file) that sets `dotted` (`table.key`, or a table
/// header `table`), if it is written there one key per line.
fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let mut table = String::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = h.trim().to_string();
            if table == dotted {
                return Some(i + 1);
            }
        } else if let Some((k, _)) = l.split_once('=') {
            let k = k.trim().trim_matches('"');
            let full = if table.is_empty() {
                k.to_string()
            } else {
                format!("{table}.{k}")
            };
            if full == dotted {
                return Some(i + 1);
            }
        }
    }
    None
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
    fn a_bad_value_is_traced_to_its_line_in_the_users_file_or_the_command_line() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Cfg {
            batch: u64,
            lr: f64,
            task: Task,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Task {
            dim: u64,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        // Three lines of the user's; the merged document has the defaults too.
        std::fs::write(&path, "[task]\ndim = 3\nfoo = 1\n").unwrap();
        let base = ["batch=64", "lr=0.5", "task.dim=10"];
        let e = load::<Cfg>(Some(&path), &base, &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid config: task.foo = 1: unknown field `foo`"),
            "{e}"
        );
        assert!(e.ends_with(&format!("({}, line 3)", path.display())), "{e}");
        // The same in a tagged table (as the task is), where serde names the table.
        #[derive(serde::Deserialize, Debug)]
        #[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
        #[allow(dead_code)]
        enum Tagged {
            Nqm { dim: u64 },
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct WithTagged {
            task: Tagged,
        }
        let e = load::<WithTagged>(Some(&path), &["task.kind=\"nqm\""], &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid config: task.foo = 1: unknown field `foo`"),
            "{e}"
        );
        assert!(e.ends_with(&format!("({}, line 3)", path.display())), "{e}");
        std::fs::write(&path, "batch = \"many\"\n").unwrap();
        let e = load::<Cfg>(Some(&path), &base, &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid config: batch = \"many\": invalid type"),
            "{e}"
        );
        assert!(e.ends_with(&format!("({}, line 1)", path.display())), "{e}");
        let e = load::<Cfg>(
            Some(&path),
            &base,
            &["lr=fast".into(), "batch=1".into()],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "invalid config: lr = \"fast\": invalid type: string \"fast\", expected f64"
            ),
            "{e}"
        );
        assert!(e.ends_with("(given on the command line)"), "{e}");
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
