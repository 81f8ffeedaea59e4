//! The layering rule of ARCHITECTURE.md, checked on the source tree: every `crate::` path in a
//! file of `src/` names a file of its own layer or of a lower one, and no files import each
//! other in a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Folders (and top-level files) from the bottom layer up.
const LAYERS: &[&str] = &[
    "base", "store", "worker", "state", "pool", "http", "serve", "cli", "lib", "main",
];

fn layer_of(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or(module);
    LAYERS
        .iter()
        .position(|l| *l == top)
        .unwrap_or_else(|| panic!("module {module} is in no layer: add its folder to LAYERS"))
}

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "bin") {
                source_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/pool/tracker.rs` → `pool::tracker`; `src/pool/mod.rs` → `pool`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|p| p != "mod")
        .collect();
    parts.join("::")
}

/// Code without comments, so that doc links do not count as imports.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a file refers to through `crate::` paths, resolved to known module names.
fn references(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':' || *c == '{')
            .collect();
        let path = path.trim_end_matches(':');
        if let Some((prefix, _)) = path.split_once('{') {
            let prefix = prefix.trim_end_matches(':');
            let inside: String = rest[rest.find('{').unwrap_or(0) + 1..]
                .chars()
                .take_while(|c| *c != '}')
                .collect();
            for name in inside.split(',') {
                let name = name.trim().split("::").next().unwrap_or("").trim();
                let full = if name == "self" {
                    prefix.to_string()
                } else {
                    format!("{prefix}::{name}")
                };
                if let Some(m) = longest_module(&full, modules) {
                    found.insert(m);
                }
            }
        } else if let Some(m) = longest_module(path, modules) {
            found.insert(m);
        }
    }
    found
}

fn longest_module(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|candidate| modules.contains(candidate))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    files
        .iter()
        .map(|f| {
            let module = module_of(&src, f);
            let code = code_of(&fs::read_to_string(f).expect("read source"));
            let mut refs = references(&code, &modules);
            refs.remove(&module);
            // A folder's mod.rs only declares its files.
            refs.retain(|r| module.is_empty() || !r.starts_with(&format!("{module}::")));
            (module, refs)
        })
        .collect()
}

#[test]
fn no_file_imports_a_file_of_a_higher_layer() {
    let graph = graph();
    assert!(graph.len() > 20, "found only {} modules", graph.len());
    let mut violations = Vec::new();
    for (module, refs) in &graph {
        let name = if module.is_empty() { "lib" } else { module };
        for target in refs {
            if layer_of(target) > layer_of(name) {
                violations.push(format!("{name} imports {target}, a higher layer"));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn no_files_import_each_other_in_a_cycle() {
    let graph = graph();
    let mut done = BTreeSet::new();
    for start in graph.keys() {
        let mut path = Vec::new();
        if let Some(cycle) = find_cycle(start, &graph, &mut path, &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

fn find_cycle(
    node: &str,
    graph: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|p| p == node) {
        let mut cycle = path[at..].to_vec();
        cycle.push(node.to_string());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(cycle) = find_cycle(next, graph, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}
