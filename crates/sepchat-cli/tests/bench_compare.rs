//! `sepchat bench --compare llama-cpp` where llama.cpp cannot be run: one clear error line that
//! says how to install it, a non-zero exit, and no model load or measurement first.
//!
//! The comparison itself needs the llama-cpp-python package, which `make test` does not install
//! (it compiles llama.cpp for about 15 minutes), so no test here runs it; its JSON parsing is
//! unit-tested in `src/bench_compare.rs`.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{assert_clean_failure, run, sepchat, TIMEOUT};

/// The test Python of `make test` (`scripts/python-venv.sh`, named in SEPCHAT_TEST_PYTHON), else
/// that script's default location: a Python without llama-cpp-python.
fn python_without_llama_cpp() -> PathBuf {
    let python = std::env::var_os("SEPCHAT_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        dirs::home_dir().expect("a home directory for the default venv").join(".cache/sepchat/venv/bin/python")
    });
    assert!(
        python.is_file(),
        "{} does not exist: run `scripts/python-venv.sh` (or `make test`), or set SEPCHAT_TEST_PYTHON",
        python.display()
    );
    let import = Command::new(&python)
        .args(["-c", "import llama_cpp"])
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", python.display()));
    assert!(
        !import.status.success(),
        "{} can import llama_cpp, so this test cannot check the error for a missing package; point \
         SEPCHAT_TEST_PYTHON at a Python without it",
        python.display()
    );
    python
}

#[test]
fn a_python_without_llama_cpp_gives_one_line_with_the_install_command() {
    let python = python_without_llama_cpp();
    let output = run(sepchat().args(["bench", "--compare", "llama-cpp", "--python"]).arg(&python), TIMEOUT);
    assert_clean_failure(&output, "bench --compare llama-cpp without llama_cpp");
    assert!(
        output.stderr.contains("pip install llama-cpp-python==0.3.36"),
        "the error should say how to install it: {:?}",
        output.stderr
    );
    assert!(output.stderr.contains("llama-cpp-python"), "{:?}", output.stderr);
    assert!(output.stdout.is_empty(), "nothing should be measured: {:?}", output.stdout);
}

#[test]
fn a_missing_python_gives_one_line_that_names_the_python_flag() {
    let output = run(
        sepchat().args(["bench", "--compare", "llama-cpp", "--python", "/nonexistent/sepchat-test/python3"]),
        TIMEOUT,
    );
    assert_clean_failure(&output, "bench --compare llama-cpp with a missing python");
    assert!(output.stderr.contains("--python"), "the error should name --python: {:?}", output.stderr);
    assert!(output.stderr.contains("pip install llama-cpp-python==0.3.36"), "{:?}", output.stderr);
}

#[test]
fn python_without_compare_is_a_usage_error() {
    let output = run(sepchat().args(["bench", "--python", "python3"]), TIMEOUT);
    assert_eq!(output.status.code(), Some(2), "stderr: {:?}", output.stderr);
    assert!(output.stderr.contains("--compare"), "{:?}", output.stderr);
}
