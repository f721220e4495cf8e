//! The shell stays thin: src-tauri/Cargo.toml names neither the inference stack (candle) nor the storage stack
//! (sqlx), nor the crates that wrap them (sepchat-engine, sepchat-store), in any dependency table (normal, build,
//! dev, or per target). It reaches them only through sepchat-core's App. Read from the file itself, resolving
//! `workspace = true` and `package = "..."` renames through the workspace's Cargo.toml, so a renamed dependency
//! cannot slip through.

use std::path::Path;

use toml::{Table, Value};

const FORBIDDEN_EXACT: &[&str] = &["sqlx", "sepchat-engine", "sepchat-store", "libsqlite3-sys"];
const FORBIDDEN_PREFIXES: &[&str] = &["candle", "sqlx-"];

fn read_toml(path: &Path) -> Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    text.parse::<Table>().unwrap_or_else(|error| panic!("cannot parse {}: {error}", path.display()))
}

fn is_forbidden(package: &str) -> bool {
    FORBIDDEN_EXACT.contains(&package) || FORBIDDEN_PREFIXES.iter().any(|prefix| package.starts_with(prefix))
}

/// Every dependency table of a manifest: `[dependencies]`, `[build-dependencies]`, `[dev-dependencies]` (and the
/// old `dev_dependencies` spellings), top level and under each `[target.'cfg(...)']`.
fn dependency_tables(manifest: &Table) -> Vec<(String, &Table)> {
    const KINDS: &[&str] =
        &["dependencies", "build-dependencies", "build_dependencies", "dev-dependencies", "dev_dependencies"];
    let mut tables = Vec::new();
    for kind in KINDS {
        if let Some(Value::Table(table)) = manifest.get(*kind) {
            tables.push((kind.to_string(), table));
        }
    }
    if let Some(Value::Table(targets)) = manifest.get("target") {
        for (target, section) in targets {
            for kind in KINDS {
                if let Some(Value::Table(table)) = section.get(*kind) {
                    tables.push((format!("target.{target}.{kind}"), table));
                }
            }
        }
    }
    tables
}

/// The package a dependency entry names: its `package` key, else the workspace entry's (for `workspace = true`),
/// else the key itself.
fn package_name(key: &str, entry: &Value, workspace_deps: &Table) -> String {
    if let Some(package) = entry.get("package").and_then(Value::as_str) {
        return package.to_string();
    }
    if entry.get("workspace").and_then(Value::as_bool) == Some(true) {
        if let Some(package) = workspace_deps.get(key).and_then(|entry| entry.get("package")).and_then(Value::as_str) {
            return package.to_string();
        }
    }
    key.to_string()
}

#[test]
fn the_desktop_depends_on_neither_candle_nor_sqlx() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = read_toml(&crate_dir.join("Cargo.toml"));
    let workspace = read_toml(&crate_dir.join("../Cargo.toml"));
    let workspace_deps = workspace
        .get("workspace")
        .and_then(|workspace| workspace.get("dependencies"))
        .and_then(Value::as_table)
        .cloned()
        .unwrap_or_default();

    let tables = dependency_tables(&manifest);
    assert!(tables.iter().any(|(kind, _)| kind == "dependencies"), "no [dependencies] table found");
    let mut seen = Vec::new();
    for (kind, table) in &tables {
        for (key, entry) in table.iter() {
            let package = package_name(key, entry, &workspace_deps);
            assert!(!is_forbidden(&package), "src-tauri/Cargo.toml [{kind}] depends on {package} (as `{key}`)");
            seen.push(package);
        }
    }
    // The check has teeth only if it read the real tables: the App must be among them.
    assert!(seen.iter().any(|package| package == "sepchat-core"), "sepchat-core not found in {seen:?}");
}

#[test]
fn the_rule_recognises_what_it_forbids() {
    for package in ["candle-core", "candle-nn", "candle-transformers", "sqlx", "sqlx-sqlite", "sepchat-engine"] {
        assert!(is_forbidden(package), "{package}");
    }
    for package in ["sepchat-core", "tauri", "serde", "sepchat-server"] {
        assert!(!is_forbidden(package), "{package}");
    }
    let workspace_deps: Table = r#"engine = { path = "x", package = "sepchat-engine" }"#.parse().expect("parses");
    let entry: Value = Value::Table(r#"workspace = true"#.parse().expect("parses"));
    assert_eq!(package_name("engine", &entry, &workspace_deps), "sepchat-engine");
    let renamed: Value = Value::Table(r#"package = "candle-core""#.parse().expect("parses"));
    assert_eq!(package_name("tensors", &renamed, &workspace_deps), "candle-core");
}
