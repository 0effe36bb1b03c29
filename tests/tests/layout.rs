//! The code's layout rule: in each product crate, no two top-level modules use
//! each other, directly or through others, so a reader can follow a request
//! one way through the modules. Reads the sources as text: a module uses
//! another when its files name `crate::other`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The crates the rule holds for.
const CRATES: [&str; 4] = ["gateway", "feature-store", "model-server", "telemetry"];

/// Top-level module name → the `.rs` files it is made of.
fn modules(src: &Path) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(src).with_context(|| src.display().to_string())? {
        let path = entry?.path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("{}: not a UTF-8 name", path.display()))?
            .to_owned();
        if matches!(name.as_str(), "lib" | "main" | "bin") {
            continue;
        }
        let files = if path.is_dir() {
            rust_files(&path)?
        } else if path.extension().is_some_and(|e| e == "rs") {
            vec![path]
        } else {
            continue;
        };
        out.entry(name).or_insert_with(Vec::new).extend(files);
    }
    Ok(out)
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(out)
}

/// The identifiers a source names right after `crate::`, including each
/// name inside `crate::{a, b::c}` groups.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let preceded_by_ident = text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if preceded_by_ident {
            continue; // e.g. `feature_store::…` is not this crate.
        }
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                out.insert(leading_ident(item.trim()).to_owned());
            }
        } else {
            out.insert(leading_ident(rest).to_owned());
        }
    }
    out
}

fn leading_ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The groups of modules that reach each other (strongly connected
/// components with more than one module), by Tarjan's algorithm.
fn cycles(deps: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        deps: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.deps[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        deps,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in deps.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

/// Each top-level module → the other top-level modules its files name.
fn dependencies(crate_dir: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let modules = modules(&crate_dir.join("src"))?;
    let mut deps = BTreeMap::new();
    for (name, files) in &modules {
        let mut used = BTreeSet::new();
        for f in files {
            let text = fs::read_to_string(f).with_context(|| f.display().to_string())?;
            used.extend(
                crate_paths(&text)
                    .into_iter()
                    .filter(|m| m != name && modules.contains_key(m)),
            );
        }
        deps.insert(name.clone(), used);
    }
    Ok(deps)
}

#[test]
fn no_two_top_level_modules_of_a_crate_use_each_other() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut broken = Vec::new();
    for name in CRATES {
        let deps = dependencies(&root.join(name))?;
        assert!(
            deps.len() > 2,
            "{name}: no modules found; is the layout read right?"
        );
        for cycle in cycles(&deps) {
            let edges: Vec<String> = cycle
                .iter()
                .map(|m| {
                    let inside: Vec<&str> = deps[m]
                        .iter()
                        .filter(|d| cycle.contains(d))
                        .map(String::as_str)
                        .collect();
                    format!("{m} → {}", inside.join(", "))
                })
                .collect();
            broken.push(format!("{name}: {}", edges.join("; ")));
        }
    }
    assert!(
        broken.is_empty(),
        "top-level modules that use each other:\n{}",
        broken.join("\n")
    );
    Ok(())
}

#[test]
fn the_check_sees_a_cycle_and_the_paths_it_follows() {
    let paths = crate_paths(
        "use crate::a::X;\nuse crate::{b, c::D};\nlet x = crate::d::f();\nuse feature_store::y;",
    );
    assert_eq!(paths.into_iter().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
    let deps: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, ds)| (m.to_owned(), ds.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycles(&deps), vec![vec!["a", "b", "c"]]);
}
