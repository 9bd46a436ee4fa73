//! The module layers of this crate, as a test: a module may use only modules of layers
//! below its own, so the module graph has no circle (see the table in `lib.rs`).
//!
//! It reads every source file and checks each `crate::<module>` path outside comments. A
//! path through the crate root (`crate::Handle`) fails too: it would hide a dependency.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom first. `lib.rs` (the root, which declares and re-exports) and this test are not
/// layers.
const LAYERS: &[&[&str]] = &[
    &["clock", "metrics", "error"],
    &["store", "conn", "objects"],
    &["counter", "limiter"],
    &["room"],
    &["socket"],
    &["runtime"],
    &["http", "tls"],
    &["server"],
];

/// Files that are not a layer's module.
const NOT_LAYERED: &[&str] = &["lib", "main", "layering"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to (`conn/io.rs`
/// belongs to `conn`).
fn sources(dir: &Path, module: Option<&str>, out: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("the source directory")
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let owner = module.map_or_else(|| stem.clone(), str::to_owned);
        if path.is_dir() {
            sources(&path, Some(&owner), out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push((owner, path));
        }
    }
}

/// The modules `source` names as `crate::<module>`, outside comments.
fn crate_paths(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            // `edgechat_crate::x` or `super_crate::` are not this crate's root.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or_default();
                found.extend(group.split(',').map(|item| first_segment(item.trim())));
            } else {
                found.push(first_segment(rest));
            }
        }
    }
    found.retain(|module| !module.is_empty());
    found
}

fn first_segment(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Every import that does not go strictly down, as `module -> target (file)`.
fn upward_imports(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, None, &mut files);
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for (module, path) in files {
        if NOT_LAYERED.contains(&module.as_str()) {
            continue;
        }
        let Some(layer) = layer_of(&module) else {
            wrong.push(format!("{module} is in no layer ({})", path.display()));
            continue;
        };
        let source = std::fs::read_to_string(&path).expect("a readable source file");
        for target in crate_paths(&source) {
            if target == module || target == "self" {
                continue;
            }
            let ok = layer_of(&target).is_some_and(|target_layer| target_layer < layer);
            if !ok && seen.insert((module.clone(), target.clone())) {
                wrong.push(format!("{module} -> {target} ({})", path.display()));
            }
        }
    }
    wrong
}

#[test]
fn every_module_imports_only_from_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let wrong = upward_imports(&src);
    assert!(
        wrong.is_empty(),
        "imports that go up or sideways (or through the crate root):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn paths_are_found_in_uses_groups_and_expressions_but_not_comments() {
    let source = "use crate::room::{Rooms, RoomMsg};\n\
                  use crate::{counter, limiter};\n\
                  let x = crate::metrics::inc(&m); // crate::server in a comment\n\
                  /// [`crate::http`] in a doc\n\
                  use edgechat_crate::nothing;\n";
    assert_eq!(
        crate_paths(source),
        ["room", "counter", "limiter", "metrics"]
    );
}
