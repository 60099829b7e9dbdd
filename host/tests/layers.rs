//! The host's architecture, checked: `host/src` is layered (ARCHITECTURE.md
//! draws the map), each layer uses only those below it, the files of a
//! layer do not use each other in a circle, only the layers made for them
//! name SQLite or HTTP, and no file grows past what a reader takes in.
//!
//! A plain reading of the sources: every `crate::a::b` and `super::b` path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom. A module may use its own layer's modules only if it is
/// the same module, and any module of a layer below.
const LAYERS: &[&[&str]] = &[
    &["http"],
    &["runtime"],
    &["calls", "capabilities", "events"],
    &["instance"],
    &["store"],
    &["bindings", "clock", "config", "telemetry"],
];

/// Crates only some modules may name, and which.
const CONFINED: &[(&str, &[&str])] = &[
    ("rusqlite", &["store", "events/embedded", "capabilities/sql.rs"]),
    ("axum", &["http"]),
    ("hyper", &["http"]),
];

/// Lines of code (unit tests aside) a file may have.
const MAX_LINES: usize = 500;

struct Source {
    /// Path under `host/src`, e.g. `events/relay.rs`.
    path: String,
    /// Module path, e.g. `["events", "relay"]`; `[]` for the crate root.
    module: Vec<String>,
    /// The text before its unit tests.
    code: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files
        .into_iter()
        .map(|file| {
            let path = file.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default().to_string();
            let mut module: Vec<String> = path.trim_end_matches(".rs").split('/').map(str::to_string).collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                module.pop();
            }
            Source { path, module, code }
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// The module paths a file uses: `crate::a::b::c` as `[a, b]` and
/// `super::b` (from module `a::x`) as `[a, b]`, two levels at most.
fn uses(source: &Source) -> BTreeSet<Vec<String>> {
    let mut used = BTreeSet::new();
    let words = |rest: &str| -> Vec<String> {
        rest.split("::")
            .map(|part| {
                part.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|part| !part.is_empty() && part.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
            .take(2)
            .collect()
    };
    for (at, _) in source.code.match_indices("crate::") {
        used.insert(words(&source.code[at + "crate::".len()..]));
    }
    if let Some(parent) = source.module.split_last().map(|(_, parent)| parent) {
        for (at, _) in source.code.match_indices("super::") {
            let mut path = parent.to_vec();
            path.extend(words(&source.code[at + "super::".len()..]));
            path.truncate(2);
            used.insert(path);
        }
    }
    used.retain(|path| !path.is_empty());
    used
}

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn each_layer_uses_only_the_layers_below_it() {
    let mut wrong = Vec::new();
    for source in sources() {
        let Some(own) = source.module.first() else { continue };
        let Some(own_rank) = rank(own) else {
            if !matches!(source.path.as_str(), "lib.rs" | "main.rs") {
                wrong.push(format!("{}: `{own}` is in no layer (add it to LAYERS)", source.path));
            }
            continue;
        };
        for used in uses(&source) {
            let target = &used[0];
            match rank(target) {
                Some(_) if target == own => {}
                Some(rank) if rank > own_rank => {}
                Some(_) => wrong.push(format!(
                    "{} uses `{}`, which is not below it",
                    source.path,
                    used.join("::")
                )),
                None => {}
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_files_of_a_layer_use_each_other_in_no_circle() {
    // Edges between the files (submodules) of one module; a submodule
    // using its own parent (`mod.rs`) is not an edge.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for source in sources() {
        if source.module.len() != 2 {
            continue;
        }
        for used in uses(&source) {
            if used.len() == 2 && used[0] == source.module[0] && used != source.module {
                edges.entry(source.module.clone()).or_default().insert(used);
            }
        }
    }
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Result<(), String> {
        if let Some(start) = path.iter().position(|seen| seen == node) {
            let circle: Vec<String> = path[start..].iter().chain([node]).map(|m| m.join("::")).collect();
            return Err(circle.join(" -> "));
        }
        if done.contains(node) {
            return Ok(());
        }
        path.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, path, done)?;
        }
        path.pop();
        done.insert(node.clone());
        Ok(())
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Err(circle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            panic!("a circle of uses: {circle}");
        }
    }
}

#[test]
fn sqlite_and_http_are_named_only_where_they_belong() {
    let mut wrong = Vec::new();
    for source in sources() {
        for (name, allowed) in CONFINED {
            let named = source.code.contains(&format!("{name}::")) || source.code.contains(&format!("use {name}"));
            let allowed = allowed
                .iter()
                .any(|place| source.path == *place || source.path.starts_with(&format!("{place}/")));
            if named && !allowed {
                wrong.push(format!("{} names `{name}`", source.path));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_file_is_longer_than_a_reader_takes_in() {
    let long: Vec<String> = sources()
        .into_iter()
        .map(|source| (source.code.lines().count(), source.path))
        .filter(|(lines, _)| *lines > MAX_LINES)
        .map(|(lines, path)| format!("{path}: {lines} lines of code"))
        .collect();
    assert!(
        long.is_empty(),
        "split these (at most {MAX_LINES} lines each):\n{}",
        long.join("\n")
    );
}
