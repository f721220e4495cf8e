//! A lint of what the window may do, read from tauri.conf.json and capabilities/: a strict content security policy
//! (nothing remote, nothing inline, no eval, images from the app only), no dev server, one capability for the one
//! window, and in it only permissions the UI uses: the app's own commands (each a registered one), the two event
//! calls, and the opener limited to http(s). No shell, no file system, no wildcards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sepchat_desktop::{COMMANDS, MAIN_WINDOW};
use serde_json::Value;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("cannot parse {}: {error}", path.display()))
}

fn config() -> Value {
    read_json(&crate_dir().join("tauri.conf.json"))
}

/// Directive name → its sources, from a CSP string (`a x y; b z`).
fn parse_csp(csp: &str) -> BTreeMap<String, Vec<String>> {
    let mut directives = BTreeMap::new();
    for directive in csp.split(';').map(str::trim).filter(|directive| !directive.is_empty()) {
        let mut words = directive.split_whitespace();
        let name = words.next().unwrap_or_default().to_ascii_lowercase();
        let sources: Vec<String> = words.map(str::to_string).collect();
        assert!(directives.insert(name.clone(), sources).is_none(), "CSP directive {name} appears twice");
    }
    directives
}

/// The policy as Tauri serves it: a string, or an object of directive → source(s).
fn csp_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Object(directives) => directives
            .iter()
            .map(|(name, sources)| match sources {
                Value::String(source) => format!("{name} {source}"),
                Value::Array(sources) => {
                    let sources: Vec<&str> = sources.iter().filter_map(Value::as_str).collect();
                    format!("{name} {}", sources.join(" "))
                }
                other => panic!("CSP directive {name} has an unexpected value {other}"),
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => panic!("app.security.csp must be set, found {other}"),
    }
}

/// Where a source may appear: `'self'` and `'none'` anywhere; the IPC endpoints only in connect-src.
fn check_csp(csp: &str) -> Result<(), String> {
    let directives = parse_csp(csp);
    for (name, expected) in [
        ("default-src", "'self'"),
        ("script-src", "'self'"),
        ("style-src", "'self'"),
        ("img-src", "'self'"),
        ("object-src", "'none'"),
        ("base-uri", "'none'"),
        ("frame-ancestors", "'none'"),
        ("form-action", "'none'"),
    ] {
        match directives.get(name) {
            Some(sources) if sources == &[expected.to_string()] => {}
            Some(sources) => return Err(format!("{name} must be exactly {expected}, found {sources:?}")),
            None => return Err(format!("{name} is missing")),
        }
    }
    for (name, sources) in &directives {
        for source in sources {
            let lower = source.to_ascii_lowercase();
            let allowed = match lower.as_str() {
                "'self'" | "'none'" => true,
                "ipc:" | "http://ipc.localhost" => name == "connect-src",
                _ => false,
            };
            if !allowed {
                return Err(format!("{name} allows {source}: only 'self', 'none' and the IPC endpoints may appear"));
            }
        }
    }
    let connect = directives.get("connect-src").ok_or("connect-src is missing")?;
    if !connect.iter().any(|source| source == "ipc:") {
        return Err("connect-src must allow ipc: (the window's commands)".into());
    }
    Ok(())
}

#[test]
fn the_csp_rule_refuses_what_it_should() {
    let strict = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                  connect-src ipc: http://ipc.localhost; object-src 'none'; base-uri 'none'; \
                  frame-ancestors 'none'; form-action 'none'";
    assert_eq!(check_csp(strict), Ok(()));
    for (from, to) in [
        ("script-src 'self'", "script-src 'self' 'unsafe-eval'"),
        ("style-src 'self'", "style-src 'self' 'unsafe-inline'"),
        ("img-src 'self'", "img-src 'self' data:"),
        ("img-src 'self'", "img-src 'self' https://example.com"),
        ("default-src 'self'", "default-src *"),
        ("connect-src ipc: http://ipc.localhost", "connect-src ipc: http://ipc.localhost http://127.0.0.1:7341"),
        ("script-src 'self'", "script-src 'self' http://ipc.localhost"),
        ("object-src 'none'; ", ""),
    ] {
        let loose = strict.replace(from, to);
        assert_ne!(loose, strict, "the replacement of {from} did not apply");
        assert!(check_csp(&loose).is_err(), "{loose} passed");
    }
}

#[test]
fn the_config_has_a_strict_csp_and_no_dev_server() {
    let config = config();
    let security = &config["app"]["security"];
    let csp = csp_text(&security["csp"]);
    if let Err(problem) = check_csp(&csp) {
        panic!("app.security.csp: {problem}\n{csp}");
    }
    for key in ["devCsp", "dangerousDisableAssetCspModification", "assetProtocol", "pattern", "headers"] {
        assert!(security.get(key).is_none(), "app.security.{key} must not be set");
    }
    assert_eq!(security["freezePrototype"], Value::Bool(true), "app.security.freezePrototype must be true");
    assert_ne!(config["app"]["withGlobalTauri"], Value::Bool(true), "the UI imports @tauri-apps/api; no global");

    let build = &config["build"];
    for key in ["devUrl", "beforeDevCommand", "beforeBuildCommand"] {
        assert!(build.get(key).is_none(), "build.{key} must not be set (the Makefile builds the UI first)");
    }
    assert_eq!(build["frontendDist"], "../ui/dist", "the window serves the built UI, embedded");
    assert_eq!(config["bundle"]["active"], Value::Bool(false));

    let windows = config["app"]["windows"].as_array().expect("app.windows is a list");
    assert_eq!(windows.len(), 1, "exactly one window");
    assert_eq!(windows[0]["label"], MAIN_WINDOW);
    // Built in lib.rs, where it gets the navigation guard; its page is the app's own.
    assert_eq!(windows[0]["create"], Value::Bool(false));
    assert!(windows[0].get("url").is_none(), "the window loads the app's own index.html");
    let plugins = config.get("plugins").and_then(Value::as_object).map(|plugins| plugins.len()).unwrap_or(0);
    assert_eq!(plugins, 0, "no plugin configuration (no shell `open`, no fs scope)");
}

/// The plugin permissions the window may hold; anything else (shell, fs, http, process, window management,
/// `*:default` sets) fails the lint.
const PLUGIN_PERMISSIONS: &[&str] = &["core:event:allow-listen", "core:event:allow-unlisten", "opener:allow-open-url"];

/// Registered commands the window must not be allowed: they take a file-system path from the caller.
const PATH_COMMANDS: &[&str] = &["export", "import"];

#[test]
fn one_capability_for_the_main_window_with_only_what_the_ui_uses() {
    let dir = crate_dir().join("capabilities");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    assert_eq!(files.len(), 1, "exactly one capability file, found {files:?}");
    assert_eq!(files[0].extension().and_then(|ext| ext.to_str()), Some("json"));
    let capability = read_json(&files[0]);

    let identifier = capability["identifier"].as_str().expect("the capability has an identifier");
    assert_eq!(config()["app"]["security"]["capabilities"], serde_json::json!([identifier]), "the one enabled");
    assert_eq!(capability["windows"], serde_json::json!([MAIN_WINDOW]));
    for key in ["webviews", "remote", "platforms"] {
        assert!(capability.get(key).is_none(), "capability.{key} must not be set");
    }
    assert_ne!(capability["local"], Value::Bool(false));

    let permissions = capability["permissions"].as_array().expect("permissions is a list");
    let mut app_commands = BTreeSet::new();
    let mut plugin_permissions = BTreeSet::new();
    for permission in permissions {
        let identifier = match permission {
            Value::String(identifier) => identifier.as_str(),
            Value::Object(entry) => entry["identifier"].as_str().expect("a permission object has an identifier"),
            other => panic!("unexpected permission {other}"),
        };
        assert!(!identifier.contains('*'), "{identifier}: no wildcards");
        for prefix in ["shell:", "fs:", "http:", "process:", "updater:", "dialog:", "core:window:", "core:webview:"] {
            assert!(!identifier.starts_with(prefix), "{identifier}: not used by the UI");
        }
        assert!(!identifier.ends_with(":default") && identifier != "default", "{identifier}: a whole default set");
        match identifier.split_once(':') {
            None => {
                let command = identifier
                    .strip_prefix("allow-")
                    .unwrap_or_else(|| panic!("{identifier}: an app permission must be allow-<command>"))
                    .replace('-', "_");
                assert!(COMMANDS.contains(&command.as_str()), "{identifier}: no command {command} is registered");
                assert!(!PATH_COMMANDS.contains(&command.as_str()), "{identifier}: takes a path from the window");
                assert!(app_commands.insert(command), "{identifier} is listed twice");
            }
            Some(_) => {
                assert!(PLUGIN_PERMISSIONS.contains(&identifier), "{identifier}: not one the UI uses");
                assert!(plugin_permissions.insert(identifier.to_string()), "{identifier} is listed twice");
                check_scope(identifier, permission);
            }
        }
    }
    // The UI's calls: send, read and manage conversations, and follow the model's state.
    for needed in ["health", "send_message", "stop", "list_conversations", "get_conversation", "load_model"] {
        assert!(app_commands.contains(needed), "allow-{} is missing", needed.replace('_', "-"));
    }
    for needed in PLUGIN_PERMISSIONS {
        assert!(plugin_permissions.contains(*needed), "{needed} is missing");
    }
}

/// Only the opener takes a scope, and only http(s) URLs, allowed (never a deny-less catch-all such as `*`).
fn check_scope(identifier: &str, permission: &Value) {
    let allow = permission.get("allow");
    if identifier != "opener:allow-open-url" {
        assert!(allow.is_none() && permission.get("deny").is_none(), "{identifier} takes no scope");
        return;
    }
    let allow = allow.and_then(Value::as_array).expect("opener:allow-open-url needs an `allow` scope of URLs");
    assert!(!allow.is_empty());
    for entry in allow {
        let url = entry["url"].as_str().expect("a scope entry names a url");
        assert!(
            url.starts_with("http://") || url.starts_with("https://"),
            "{identifier} allows {url}: only http(s) links open outside"
        );
        assert!(entry.get("app").is_none(), "the link opens in the default browser, not a named program");
    }
}
