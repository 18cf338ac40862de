//! The gateway crate's layering, checked: each top-level module may use
//! only the modules before it in [`ORDER`], so following a request reads
//! downwards and no low-level type learns about a feature above it.

/// Every top-level module, lowest first, grouped by layer.
const ORDER: &[&[&str]] = &[
    // L0: bodies, headers, errors, stats, admission; logs and traces.
    &["core", "telemetry"],
    // L1: the route table and its data, the feature cache, the snapshot.
    &["features", "routing", "snapshot"],
    // L2: attempts, selection, hedge, deadline, blame.
    &["forward"],
    // L3: the features that forward requests of their own.
    &["shadow", "cascade"],
    // L4: the phase order, and the listener that feeds it.
    &["proxy", "listener"],
    // L5: what changes the snapshot or the traffic over time.
    &["reload", "discovery", "rollout", "fleet", "drills"],
    // L6: the admin API, metrics exposition, the process and its CLI.
    &["metrics", "admin", "server", "demo", "calibrate", "cli"],
];

/// The top-level modules `source` names through `crate::`, outside
/// comments (`crate::a::b`, `crate::{a, b::c}`).
fn used_modules(source: &str) -> Vec<String> {
    let mut used = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // A grouped import on one line: the names before each `::`
                // or `,` at the first level.
                let end = group.find('}').unwrap_or(group.len());
                let mut depth = 0;
                let mut start = 0;
                for (i, c) in group[..end].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            used.push(first_segment(&group[start..i]));
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                used.push(first_segment(&group[start..end]));
            } else {
                used.push(first_segment(rest));
            }
        }
    }
    used.retain(|name| !name.is_empty());
    used
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The rank of each module in [`ORDER`].
fn rank(module: &str) -> Option<usize> {
    ORDER
        .iter()
        .flat_map(|layer| layer.iter())
        .position(|m| *m == module)
}

#[test]
fn no_module_uses_one_above_it() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut violations = Vec::new();
    let mut unknown = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default()
            .trim_end_matches(".rs");
        if matches!(top, "lib" | "main" | "layers") {
            continue;
        }
        let Some(own) = rank(top) else {
            unknown.push(top.to_owned());
            continue;
        };
        let source = std::fs::read_to_string(file).expect("a readable source file");
        for used in used_modules(&source) {
            if used == top {
                continue;
            }
            match rank(&used) {
                Some(theirs) if theirs < own => {}
                _ => violations.push(format!("{} uses crate::{used}", relative.display())),
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(
        unknown.is_empty(),
        "modules missing from ORDER: {unknown:?}"
    );
    violations.sort();
    violations.dedup();
    assert!(
        violations.is_empty(),
        "upward (or unordered) uses:\n{}",
        violations.join("\n")
    );
}

#[test]
fn grouped_and_nested_imports_are_seen() {
    let used = used_modules(
        "use crate::{core::body, forward::{self, Downstream}};\n\
         // crate::admin in a comment is not a use\n\
         let x = crate::routing::choose_target(r, h);",
    );
    assert_eq!(used, ["core", "forward", "routing"]);
}
