//! ARCHITECTURE.md names files, folders and identifiers; every one must exist, so the map
//! cannot drift from the code unnoticed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("ARCHITECTURE.md").exists())
        .expect("the workspace root holds ARCHITECTURE.md")
        .to_path_buf()
}

/// Every file under `dir` (no `target/`, no `.git/`).
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "target" || name == ".git" {
            continue;
        }
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The spans between backticks, outside fenced code blocks.
fn code_spans(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        out.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
    }
    out
}

fn is_ident(s: &str) -> bool {
    let s = s.strip_suffix("()").unwrap_or(s);
    !s.is_empty()
        && s.split("::").all(|seg| {
            let mut c = seg.chars();
            c.next()
                .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
                && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[test]
fn every_path_and_identifier_architecture_names_exists() {
    let root = root();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut all = Vec::new();
    files(&root, &mut all);
    let rel: BTreeSet<String> = all
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let names: BTreeSet<String> = all
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    // Words of the Rust sources and build files, for identifiers.
    let mut words = BTreeSet::new();
    for p in all.iter().filter(|p| {
        p.extension()
            .is_some_and(|e| e == "rs" || e == "proto" || e == "toml" || e == "sh" || e == "py")
    }) {
        let src = std::fs::read_to_string(p).unwrap_or_default();
        words.extend(
            src.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .map(str::to_string),
        );
    }
    let mut missing = Vec::new();
    let mut checked = 0;
    for span in code_spans(&text) {
        let span = span.trim();
        let top = [
            "crates/", "deploy/", "bench/", "docs/", "proto/", "data/", "tests/", ".ci/",
        ];
        if top.iter().any(|t| span.starts_with(t)) {
            // From the root, or from a crate's folder (`tests/faults.rs` of batchlab-core).
            let path = span.trim_end_matches('/');
            let exists = rel.iter().any(|r| {
                r == path
                    || r.starts_with(&format!("{path}/"))
                    || r.ends_with(&format!("/{path}"))
                    || r.contains(&format!("/{path}/"))
            });
            checked += 1;
            if !exists {
                missing.push(format!("path {span}"));
            }
        } else if span.ends_with(".rs") && !span.contains(' ') {
            // A source file named by itself (`train.rs`), or under its crate (`driver/memory.rs`).
            checked += 1;
            let found =
                names.contains(span) || rel.iter().any(|r| r.ends_with(&format!("/{span}")));
            if !found {
                missing.push(format!("file {span}"));
            }
        } else if is_ident(span)
            && (span.contains("::") || span.chars().any(|c| c.is_ascii_uppercase() || c == '_'))
        {
            // An identifier: its last segment must be a word of the sources.
            checked += 1;
            let last = span.trim_end_matches("()").rsplit("::").next().unwrap();
            if !words.contains(last) {
                missing.push(format!("identifier {span}"));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} names checked: is the parser broken?"
    );
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names what does not exist:\n  {}",
        missing.join("\n  ")
    );
}

/// `text` without its comment lines and its `#[cfg(test)]` items (brace-balanced).
fn without_tests_and_comments(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        if t.starts_with("#[cfg(test)]") {
            // Skip the item: up to the line where its braces balance.
            let mut depth = 0i64;
            let mut opened = false;
            for l in lines.by_ref() {
                depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
                opened |= l.contains('{');
                if opened && depth <= 0 {
                    break;
                }
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The first segments of every `crate::` path in `text`, groups (`use crate::{a, b::c}`)
/// included.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        // `batchlab_core::...` or `$crate::` are not this crate's paths.
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            // Top-level names of the group (nested groups are inside their own module).
            let mut depth = 0;
            let mut name = String::new();
            for c in group[..end].chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(name.split("::").next().unwrap().trim().to_string());
                        name.clear();
                    }
                    _ if depth == 0 => name.push(c),
                    _ => {}
                }
            }
            out.insert(name.split("::").next().unwrap().trim().to_string());
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(ident);
        }
    }
    out
}

#[test]
fn no_crate_has_an_import_circle_among_its_modules() {
    let root = root();
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    crates.sort();
    let mut edges_seen = 0;
    for src in crates {
        let mut all = Vec::new();
        files(&src, &mut all);
        let module_of = |p: &Path| {
            let rel = p.strip_prefix(&src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            first.trim_end_matches(".rs").to_string()
        };
        let modules: BTreeSet<String> = all.iter().map(|p| module_of(p)).collect();
        let mut graph: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
        for p in all
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        {
            let m = module_of(p);
            if m == "lib" || m == "main" || m.ends_with("tests") {
                continue;
            }
            let text = without_tests_and_comments(&std::fs::read_to_string(p).unwrap());
            let refs: Vec<String> = crate_refs(&text)
                .into_iter()
                .filter(|r| r != &m && modules.contains(r) && r != "lib" && r != "main")
                .collect();
            graph.entry(m).or_default().extend(refs);
        }
        edges_seen += graph.values().map(BTreeSet::len).sum::<usize>();
        // Depth-first search for a back edge; the circle is the stack from its target.
        fn visit(
            m: &str,
            graph: &std::collections::BTreeMap<String, BTreeSet<String>>,
            stack: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = stack.iter().position(|s| s == m) {
                let mut circle = stack[at..].to_vec();
                circle.push(m.to_string());
                return Some(circle);
            }
            if done.contains(m) {
                return None;
            }
            stack.push(m.to_string());
            for n in graph.get(m).into_iter().flatten() {
                if let Some(c) = visit(n, graph, stack, done) {
                    return Some(c);
                }
            }
            stack.pop();
            done.insert(m.to_string());
            None
        }
        let mut done = BTreeSet::new();
        for m in graph.keys() {
            if let Some(circle) = visit(m, &graph, &mut Vec::new(), &mut done) {
                panic!(
                    "{}: modules import each other in a circle: {}",
                    src.display(),
                    circle.join(" → ")
                );
            }
        }
    }
    assert!(
        edges_seen > 20,
        "only {edges_seen} imports seen: is the parser broken?"
    );
}

/// The protobuf messages are reached through `batchlab-net`'s `protocol` module alone: no other
/// source file of any crate (tests of the wire aside) names `batchlab_proto`.
#[test]
fn only_the_protocol_module_touches_the_generated_messages() {
    let root = root();
    let mut all = Vec::new();
    files(&root.join("crates"), &mut all);
    let protocol = root.join("crates/batchlab-net/src/protocol.rs");
    let mut checked = 0;
    let offenders: Vec<String> = all
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter(|p| p.components().any(|c| c.as_os_str() == "src"))
        .filter(|p| !p.starts_with(root.join("crates/batchlab-proto")))
        .filter(|p| {
            checked += 1;
            **p != protocol
                && without_tests_and_comments(&std::fs::read_to_string(p).unwrap())
                    .contains("batchlab_proto")
        })
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(checked > 20, "only {checked} source files found");
    assert!(
        std::fs::read_to_string(&protocol)
            .unwrap()
            .contains("batchlab_proto"),
        "protocol.rs no longer reaches the generated messages"
    );
    assert!(offenders.is_empty(), "{offenders:?} name batchlab_proto");
}
