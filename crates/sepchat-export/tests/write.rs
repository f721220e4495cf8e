//! Atomic writes: the file is replaced whole and no temporary file is left behind, on success or failure.

mod common;

use std::fs;
use std::path::Path;

use sepchat_export::{export_to_path, parse_json_export, write_atomically, ExportError, ExportFormat};

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("readable dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn writes_a_new_file_and_replaces_an_old_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.md");
    write_atomically(&path, b"first version, longer than the second").expect("writes");
    assert_eq!(fs::read(&path).expect("reads"), b"first version, longer than the second");
    assert_eq!(names_in(dir.path()), ["chat.md"]);

    write_atomically(&path, b"second").expect("replaces");
    assert_eq!(fs::read(&path).expect("reads"), b"second", "replaced whole, no tail of the old content");
    assert_eq!(names_in(dir.path()), ["chat.md"], "no temporary file left behind");

    write_atomically(&path, b"").expect("an empty file is fine");
    assert_eq!(fs::read(&path).expect("reads"), b"");
}

#[cfg(unix)]
#[test]
fn a_replaced_file_keeps_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shared.html");
    fs::write(&path, "old").expect("writes");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    write_atomically(&path, b"new").expect("replaces");
    assert_eq!(fs::metadata(&path).expect("metadata").permissions().mode() & 0o777, 0o644);

    let fresh = dir.path().join("fresh.html");
    write_atomically(&fresh, b"new").expect("writes");
    assert_eq!(fs::metadata(&fresh).expect("metadata").permissions().mode() & 0o777, 0o600, "private by default");
}

#[test]
fn a_failed_write_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A directory where the file should go: the rename fails after the temporary file was written.
    let blocked = dir.path().join("taken");
    fs::create_dir(&blocked).expect("mkdir");
    fs::write(blocked.join("inside"), "keep").expect("writes");
    match write_atomically(&blocked, b"data") {
        Err(ExportError::Write { path, .. }) => assert_eq!(path, blocked),
        other => panic!("expected a write error, got {other:?}"),
    }
    assert_eq!(names_in(dir.path()), ["taken"], "the temporary file was removed");
    assert_eq!(names_in(&blocked), ["inside"]);

    // A directory that does not exist: nothing can be created at all.
    let missing = dir.path().join("no/such/dir/file.json");
    assert!(matches!(write_atomically(&missing, b"data"), Err(ExportError::Write { .. })));
    assert_eq!(names_in(dir.path()), ["taken"]);
}

#[test]
fn export_to_path_writes_each_format() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conversations = [common::rich_conversation()];
    for format in ExportFormat::ALL {
        let path = dir.path().join(format!("export.{}", format.extension()));
        export_to_path(&conversations, format, &path).expect("exports");
        assert!(fs::metadata(&path).expect("written").len() > 0);
    }
    let json = fs::read_to_string(dir.path().join("export.json")).expect("reads");
    assert_eq!(parse_json_export(&json).expect("parses"), conversations);
    assert_eq!(names_in(dir.path()), ["export.html", "export.json", "export.md", "export.txt"]);
}
