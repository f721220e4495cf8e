//! Helpers for the black-box tests of the `sepchat` binary: running it with a deadline, the
//! default model, and the shared reference folder.
//!
//! Tests that need the default model FAIL when it is missing, never skip: a skipped test would
//! hide a broken binary.

// Each test binary includes this module and may use only part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long one ordinary command may take (a debug build on a busy 2-core machine).
pub const TIMEOUT: Duration = Duration::from_secs(600);

/// What one run of the binary left behind.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// `sepchat` with a clean environment for the settings it reads: no `SEPCHAT_MODEL` override and
/// no `RUST_LOG` (which would add log lines to stderr). `SEPCHAT_MODEL_DIR` is kept, so the binary
/// and [`default_model`] agree on where the default model is. `ask` and `chat` store what they
/// say: each command gets a history directory of its own under [`test_data_dir`], never the
/// user's (tests run in parallel, and one history is one app's; a test that looks at the history
/// sets `SEPCHAT_DATA_DIR` again, to a directory it shares between its commands).
pub fn sepchat() -> Command {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let data_dir = test_data_dir().join(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string());
    let mut command = Command::new(env!("CARGO_BIN_EXE_sepchat"));
    command.env_remove("SEPCHAT_MODEL").env_remove("RUST_LOG").env("SEPCHAT_DATA_DIR", data_dir);
    command
}

/// This test process's folder of history directories, under cargo's temporary directory for tests.
/// Folders left by runs more than a day old are removed on first use.
pub fn test_data_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-history");
        let day = Duration::from_secs(24 * 60 * 60);
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let old = entry
                .metadata()
                .and_then(|meta| meta.modified())
                .is_ok_and(|time| time.elapsed().is_ok_and(|age| age > day));
            if old {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = root.join(std::process::id().to_string());
        // A directory of an earlier process with the same id holds nothing of ours.
        let _ = std::fs::remove_dir_all(&dir);
        dir
    })
}

/// Runs `command` to completion with stdin closed; panics if it takes longer than `timeout`.
pub fn run(command: &mut Command, timeout: Duration) -> Output {
    run_with_stdin(command, None, timeout)
}

/// Runs `command`, writing `stdin` (if any) to its standard input and then closing it.
pub fn run_with_stdin(command: &mut Command, stdin: Option<&str>, timeout: Duration) -> Output {
    let description = format!("{command:?}");
    command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|error| panic!("cannot start {description}: {error}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        let input = input.to_string();
        // A writer thread, so a child that does not read its input cannot block us.
        thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let stdout = read_in_background(child.stdout.take().expect("stdout was piped"));
    let stderr = read_in_background(child.stderr.take().expect("stderr was piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for sepchat") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{description} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().expect("stdout reader panicked");
    let stderr = stderr.join().expect("stderr reader panicked");
    Output {
        status,
        stdout: String::from_utf8(stdout).unwrap_or_else(|error| panic!("{description}: stdout is not UTF-8: {error}")),
        stderr: String::from_utf8(stderr).unwrap_or_else(|error| panic!("{description}: stderr is not UTF-8: {error}")),
    }
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Panics with both streams unless the command exited with status 0.
pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {:?}\nstderr: {:?}",
        output.status,
        output.stdout,
        output.stderr
    );
}

/// The default model's path; panics with the fix when it has not been fetched.
pub fn default_model() -> PathBuf {
    let path = sepchat_gguf::default_model::default_model_path()
        .expect("no home directory to locate the default model; set SEPCHAT_MODEL_DIR");
    assert!(path.is_file(), "the default model is missing at {}: run `make fetch-model` first", path.display());
    path
}

/// The `shared/` folder: `$SEPCHAT_SHARED_DIR`, else the one beside the repository root.
pub fn shared_dir() -> PathBuf {
    let dir = match std::env::var("SEPCHAT_SHARED_DIR") {
        Ok(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    assert!(dir.is_dir(), "the shared reference folder {} does not exist; set SEPCHAT_SHARED_DIR to it", dir.display());
    dir
}

/// A reference JSON file under `shared/reference/`.
pub fn reference_json(file_name: &str) -> serde_json::Value {
    let path = shared_dir().join("reference").join(file_name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read reference file {}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("invalid JSON in {}: {error}", path.display()))
}

/// The `cases` array of a reference file; panics if it is missing or empty.
pub fn reference_cases(file_name: &str) -> Vec<serde_json::Value> {
    let cases = reference_json(file_name)["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("{file_name} has no \"cases\" array"))
        .clone();
    assert!(!cases.is_empty(), "{file_name} has no cases");
    cases
}

/// Everything wrong with a failure that should have been a clean, one-line error: a zero or
/// signal exit, anything but one `error:` line on stderr, or a panic or backtrace anywhere.
pub fn clean_failure_problems(output: &Output) -> Vec<String> {
    let mut problems = Vec::new();
    match output.status.code() {
        None => problems.push(format!("killed by a signal ({})", output.status)),
        Some(0) => problems.push("exited with status 0".to_string()),
        Some(_) => {}
    }
    let stderr = output.stderr.strip_suffix('\n').unwrap_or(&output.stderr);
    if stderr.contains('\n') || !stderr.starts_with("error:") {
        problems.push(format!("stderr is not one line starting with \"error:\": {:?}", output.stderr));
    }
    for marker in ["panicked", "RUST_BACKTRACE"] {
        if output.stderr.contains(marker) || output.stdout.contains(marker) {
            problems.push(format!("the output mentions {marker:?}"));
        }
    }
    problems
}

/// Panics unless `output` is a clean, one-line error (see [`clean_failure_problems`]).
pub fn assert_clean_failure(output: &Output, what: &str) {
    let problems = clean_failure_problems(output);
    assert!(
        problems.is_empty(),
        "{what}: {}\nstdout: {:?}\nstderr: {:?}",
        problems.join("; "),
        output.stdout,
        output.stderr
    );
}
