//! `sepchat bench --compare llama-cpp`: our prefill and decode speed as a ratio to llama.cpp's
//! (through the `llama-cpp-python` package), measured in the same run on identical tokens.
//!
//! Thread counts are the point of the comparison, but `--threads` sizes rayon's and candle's pools
//! once per process. So each thread count is measured by a child process of this same binary
//! (`--threads N bench --json`), followed right away by `scripts/llama-cpp-bench.py` (embedded here,
//! so an installed binary needs no repository) with the same thread count: the two measurements of
//! a thread count are minutes apart at most, not a whole run apart, which keeps a drifting shared
//! machine out of the ratio as far as two processes allow.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context};
use clap::ValueEnum;
use sepchat_engine::{CacheConfig, DeviceChoice};
use serde::Deserialize;

use crate::options::ModelArgs;

/// What `--compare` measures us against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompareWith {
    /// llama.cpp through the llama-cpp-python package (`pip install llama-cpp-python==0.3.36`).
    #[value(name = "llama-cpp")]
    LlamaCpp,
}

/// The llama.cpp side of the comparison; `include_str!` so that the binary carries it.
const LLAMA_CPP_SCRIPT: &str = include_str!("../../../scripts/llama-cpp-bench.py");

/// The install line users need; the script and docs pin the same version.
const INSTALL_HINT: &str = "pip install llama-cpp-python==0.3.36";

/// Thread counts compared when `--threads` is not given.
pub const DEFAULT_THREADS: [usize; 2] = [1, 2];
/// Caches compared when `--cache` is not given: ours without eviction, and the one chats use.
pub const DEFAULT_CACHES: [&str; 2] = ["dense", "default"];
/// Contexts compared when neither `--contexts` nor `--context` is given.
pub const DEFAULT_CONTEXTS: [usize; 2] = [0, 2048];

/// Everything one comparison needs, resolved from the flags.
pub struct ComparePlan {
    pub threads: Vec<usize>,
    pub contexts: Vec<usize>,
    /// Cache specs as the user wrote them (they label the rows).
    pub caches: Vec<String>,
    pub prefill: usize,
    pub decode: usize,
    pub python: PathBuf,
    /// llama.cpp's flash attention: its CPU default, but slower than without at long contexts.
    pub llama_flash_attn: bool,
    pub json: bool,
}

pub fn run(model_args: &ModelArgs, plan: &ComparePlan) -> anyhow::Result<ExitCode> {
    // Everything that can fail fast does so before minutes of measuring: flag syntax, the Python
    // package, the model.
    for spec in &plan.caches {
        spec.parse::<CacheConfig>()?;
    }
    if plan.contexts.is_empty() {
        bail!("no context to measure: pass --contexts or --context");
    }
    if plan.threads.contains(&0) {
        bail!("--threads must be at least 1 for --compare");
    }
    let version = llama_cpp_version(&plan.python)?;
    eprintln!("comparing with llama-cpp-python {version} ({})", plan.python.display());
    let model_path = model_args.model_path()?;
    // The same ids our bench feeds (the child processes tokenize the same text with the same
    // tokenizer), handed to the script so that llama.cpp sees identical tokens.
    let source_tokens = {
        let model = model_args.load()?;
        crate::bench_command::source_tokens(&model)?
    };
    let mut ids_file = tempfile::Builder::new()
        .prefix("sepchat-bench-ids-")
        .suffix(".json")
        .tempfile()
        .context("cannot create a temporary file for the bench's token ids")?;
    serde_json::to_writer(&mut ids_file, &source_tokens).context("cannot write the bench's token ids")?;
    ids_file.flush().context("cannot write the bench's token ids")?;
    let exe = std::env::current_exe().context("cannot find this executable to run our measurement")?;

    let mut rows = Vec::new();
    let mut header = None;
    let mut tool = String::new();
    for &threads in &plan.threads {
        eprintln!("[{threads} thread(s)] measuring sepchat ...");
        let ours = measure_ours(&exe, model_args.device, &model_path, threads, plan)?;
        eprintln!("[{threads} thread(s)] measuring llama.cpp ...");
        let theirs = measure_llama_cpp(&plan.python, &model_path, ids_file.path(), threads, plan)?;
        rows.extend(join(plan, threads, &ours, &theirs)?);
        header.get_or_insert((ours.model, ours.device));
        tool = theirs.tool;
    }
    let (model, device) = header.unwrap_or_default();
    if plan.json {
        let value = serde_json::json!({
            "model": model,
            "device": device,
            "llama_cpp": tool,
            "prefill_tokens": plan.prefill,
            "decode_tokens": plan.decode,
            "source_tokens": source_tokens.len(),
            "rows": rows.iter().map(CompareRow::to_json).collect::<Vec<_>>(),
        });
        println!("{value}");
    } else {
        println!(
            "model {model} | device {device} | {tool} | prefill {} tok | decode {} tok | ratio = sepchat / llama.cpp",
            plan.prefill, plan.decode
        );
        print_table(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// The version of llama-cpp-python that `python` imports, or the one-line error that says how to
/// install it.
fn llama_cpp_version(python: &Path) -> anyhow::Result<String> {
    let output = Command::new(python)
        .args(["-c", "import sys, llama_cpp; sys.stdout.write(llama_cpp.__version__)"])
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "cannot run {}: not found; pass --python PATH to a Python 3 that has llama-cpp-python (`{INSTALL_HINT}`)",
            python.display()
        ),
        Err(error) => return Err(error).with_context(|| format!("cannot run {}", python.display())),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = last_line(&stderr).unwrap_or("import llama_cpp failed");
        bail!(
            "llama-cpp-python is not importable by {} ({reason}); install it with `{INSTALL_HINT}` \
             (it compiles llama.cpp) or pass --python PATH to a Python that has it",
            python.display()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Our speed at one thread count: this binary, in a child process whose pools have that size.
fn measure_ours(
    exe: &Path,
    device: DeviceChoice,
    model: &Path,
    threads: usize,
    plan: &ComparePlan,
) -> anyhow::Result<OwnReport> {
    let mut command = Command::new(exe);
    command
        .arg("--model")
        .arg(model)
        .args(["--device", device_flag(device), "--threads", &threads.to_string()])
        .args(["bench", "--json", "--no-stock"])
        .args(["--prefill", &plan.prefill.to_string(), "--decode", &plan.decode.to_string()])
        .args(["--contexts", &join_numbers(&plan.contexts)]);
    for cache in &plan.caches {
        command.args(["--cache", cache]);
    }
    let stdout = run_captured(&mut command, &format!("our bench with {threads} thread(s)"))?;
    let report = parse_own_report(&stdout)?;
    // The child sized its pools from --threads; anything else would compare the wrong things.
    if report.threads != threads {
        bail!("our bench ran with {} threads instead of {threads}", report.threads);
    }
    Ok(report)
}

/// llama.cpp's speed at one thread count, through the embedded script.
fn measure_llama_cpp(
    python: &Path,
    model: &Path,
    ids: &Path,
    threads: usize,
    plan: &ComparePlan,
) -> anyhow::Result<LlamaCppReport> {
    let mut command = Command::new(python);
    command
        .args(["-c", LLAMA_CPP_SCRIPT, "--model"])
        .arg(model)
        .arg("--tokens-json")
        .arg(ids)
        .args(["--threads", &threads.to_string(), "--contexts", &join_numbers(&plan.contexts)])
        .args(["--prefill", &plan.prefill.to_string(), "--decode", &plan.decode.to_string()])
        .args(["--flash-attn", if plan.llama_flash_attn { "on" } else { "off" }]);
    let stdout = run_captured(&mut command, &format!("the llama.cpp bench with {threads} thread(s)"))?;
    parse_llama_cpp_report(&stdout)
}

/// Runs `command` and returns its stdout. Its stderr (progress, warnings) is passed on line by
/// line as it comes, except `error:` lines, which go into our own error instead so that a failure
/// still ends in one line.
fn run_captured(command: &mut Command, what: &str) -> anyhow::Result<String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let stderr = child.stderr.take().context("the child's stderr was not piped")?;
    let forward = std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        let mut last = String::new();
        // Bytes, not `lines()`: one non-UTF-8 byte from a library must not end the forwarding.
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if !text.starts_with("error:") {
                eprintln!("{text}");
            }
            if !text.trim().is_empty() {
                last = text;
            }
            line.clear();
        }
        last
    });
    let mut stdout = String::new();
    let read = child
        .stdout
        .take()
        .context("the child's stdout was not piped")?
        .read_to_string(&mut stdout)
        .with_context(|| format!("cannot read the output of {what}"));
    let status = child.wait().with_context(|| format!("cannot wait for {what}"))?;
    let last = forward.join().unwrap_or_default();
    read?;
    if !status.success() {
        let reason = last.strip_prefix("error: ").unwrap_or(&last);
        bail!("{what} failed ({status}): {reason}");
    }
    Ok(stdout)
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|line| !line.is_empty())
}

fn join_numbers(numbers: &[usize]) -> String {
    numbers.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn device_flag(device: DeviceChoice) -> &'static str {
    match device {
        DeviceChoice::Auto => "auto",
        DeviceChoice::Cpu => "cpu",
        DeviceChoice::Cuda => "cuda",
        DeviceChoice::Metal => "metal",
    }
}

/// Prefill and decode speed of one point; `None` where it was not measured or does not fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Speeds {
    pub prefill_tok_s: Option<f64>,
    pub decode_tok_s: Option<f64>,
}

/// The part of `sepchat bench --json` the comparison reads.
#[derive(Debug, Deserialize)]
pub struct OwnReport {
    pub model: String,
    pub device: String,
    pub threads: usize,
    /// The resolved cache specs, in the order of the `--cache` flags.
    pub caches: Vec<String>,
    pub points: Vec<OwnPoint>,
}

#[derive(Debug, Deserialize)]
pub struct OwnPoint {
    pub cache: String,
    pub context: usize,
    pub sepchat: Speeds,
}

/// What `scripts/llama-cpp-bench.py` prints.
#[derive(Debug, Deserialize)]
pub struct LlamaCppReport {
    /// The package and its settings, e.g. `llama-cpp-python 0.3.36, flash_attn=True`.
    pub tool: String,
    pub points: Vec<LlamaCppPoint>,
}

#[derive(Debug, Deserialize)]
pub struct LlamaCppPoint {
    pub threads: usize,
    pub context: usize,
    #[serde(flatten)]
    pub speeds: Speeds,
}

/// The last non-empty line of a child's stdout as JSON: the JSON object is printed last, and a
/// library that writes a stray line to stdout before it must not break the comparison.
fn parse_last_json_line<T: serde::de::DeserializeOwned>(stdout: &str, what: &str) -> anyhow::Result<T> {
    let line = last_line(stdout).with_context(|| format!("{what} printed nothing on stdout"))?;
    serde_json::from_str(line)
        .with_context(|| format!("{what} printed something other than its JSON report: {line:.200}"))
}

pub fn parse_own_report(stdout: &str) -> anyhow::Result<OwnReport> {
    parse_last_json_line(stdout, "our bench")
}

pub fn parse_llama_cpp_report(stdout: &str) -> anyhow::Result<LlamaCppReport> {
    parse_last_json_line(stdout, "the llama.cpp bench")
}

/// One line of the comparison.
#[derive(Debug, PartialEq)]
pub struct CompareRow {
    pub threads: usize,
    pub context: usize,
    /// The cache as the user named it (`dense`, `default`) and as it resolved.
    pub cache: String,
    pub cache_spec: String,
    pub ours: Speeds,
    /// llama.cpp at the same threads and context (its cache is always dense).
    pub theirs: Speeds,
}

impl CompareRow {
    fn prefill_ratio(&self) -> Option<f64> {
        Some(self.ours.prefill_tok_s? / self.theirs.prefill_tok_s?)
    }

    fn decode_ratio(&self) -> Option<f64> {
        Some(self.ours.decode_tok_s? / self.theirs.decode_tok_s?)
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "threads": self.threads,
            "context": self.context,
            "cache": self.cache,
            "cache_spec": self.cache_spec,
            "sepchat": {"prefill_tok_s": self.ours.prefill_tok_s, "decode_tok_s": self.ours.decode_tok_s},
            "llama_cpp": {"prefill_tok_s": self.theirs.prefill_tok_s, "decode_tok_s": self.theirs.decode_tok_s},
            "prefill_ratio": self.prefill_ratio(),
            "decode_ratio": self.decode_ratio(),
        })
    }
}

/// The rows of one thread count: each of our points beside llama.cpp's at the same context.
pub fn join(
    plan: &ComparePlan,
    threads: usize,
    ours: &OwnReport,
    theirs: &LlamaCppReport,
) -> anyhow::Result<Vec<CompareRow>> {
    if ours.caches.len() != plan.caches.len() {
        bail!("our bench measured {} caches instead of {}", ours.caches.len(), plan.caches.len());
    }
    let mut rows = Vec::new();
    for (label, spec) in plan.caches.iter().zip(&ours.caches) {
        for &context in &plan.contexts {
            let point = ours
                .points
                .iter()
                .find(|point| &point.cache == spec && point.context == context)
                .with_context(|| format!("our bench has no point for cache {spec} at context {context}"))?;
            // A point llama.cpp skipped (past the trained context) is n/a, as ours is for dense.
            let theirs = theirs
                .points
                .iter()
                .find(|point| point.threads == threads && point.context == context)
                .map_or_else(Speeds::default, |point| point.speeds);
            rows.push(CompareRow {
                threads,
                context,
                cache: label.clone(),
                cache_spec: spec.clone(),
                ours: point.sepchat,
                theirs,
            });
        }
    }
    Ok(rows)
}

fn print_table(rows: &[CompareRow]) {
    let cache_width = rows.iter().map(|row| row.cache.len()).max().unwrap_or(0).max("cache".len());
    println!(
        "{:>7} | {:>7} | {:<cache_width$} | {:>15} {:>14} | {:>17} {:>16} | {:>13} {:>12}",
        "threads",
        "context",
        "cache",
        "sepchat prefill",
        "sepchat decode",
        "llama.cpp prefill",
        "llama.cpp decode",
        "prefill ratio",
        "decode ratio"
    );
    for row in rows {
        println!(
            "{:>7} | {:>7} | {:<cache_width$} | {:>15} {:>14} | {:>17} {:>16} | {:>13} {:>12}",
            row.threads,
            row.context,
            row.cache,
            number(row.ours.prefill_tok_s),
            number(row.ours.decode_tok_s),
            number(row.theirs.prefill_tok_s),
            number(row.theirs.decode_tok_s),
            ratio(row.prefill_ratio()),
            ratio(row.decode_ratio()),
        );
    }
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.1}"))
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT_OUTPUT: &str = r#"{"tool": "llama-cpp-python 0.3.36, flash_attn=True", "llama_cpp_version": "0.3.36", "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "n_ctx_train": 8192, "source_tokens": 1234, "prefill_tokens": 512, "decode_tokens": 128, "points": [{"threads": 2, "context": 0, "prefill_tok_s": 238.4, "decode_tok_s": 94.4}, {"threads": 2, "context": 8000, "prefill_tok_s": null, "decode_tok_s": 9.5}]}"#;

    const OWN_OUTPUT: &str = r#"{"caches":["dense","sep:a=4,s=64,w=256,c=1024"],"decode_tokens":128,"device":"cpu","model":"/m.gguf","points":[{"cache":"dense","candle_stock":null,"context":0,"decode_ratio":null,"prefill_ratio":null,"sepchat":{"decode_tok_s":64.6,"kv_bytes_held":1,"kv_mib_held":0.1,"prefill_tok_s":146.8}},{"cache":"dense","candle_stock":null,"context":8000,"decode_ratio":null,"prefill_ratio":null,"sepchat":{"decode_tok_s":8.0,"kv_bytes_held":1,"kv_mib_held":0.1,"prefill_tok_s":null}},{"cache":"sep:a=4,s=64,w=256,c=1024","candle_stock":null,"context":0,"decode_ratio":null,"prefill_ratio":null,"sepchat":{"decode_tok_s":60.0,"kv_bytes_held":1,"kv_mib_held":0.1,"prefill_tok_s":140.0}},{"cache":"sep:a=4,s=64,w=256,c=1024","candle_stock":null,"context":8000,"decode_ratio":null,"prefill_ratio":null,"sepchat":{"decode_tok_s":40.0,"kv_bytes_held":1,"kv_mib_held":0.1,"prefill_tok_s":120.0}}],"prefill_tokens":512,"threads":2}"#;

    fn plan() -> ComparePlan {
        ComparePlan {
            threads: vec![2],
            contexts: vec![0, 8000],
            caches: vec!["dense".into(), "default".into()],
            prefill: 512,
            decode: 128,
            python: PathBuf::from("python3"),
            llama_flash_attn: true,
            json: false,
        }
    }

    #[test]
    fn parses_the_script_report() {
        let report = parse_llama_cpp_report(SCRIPT_OUTPUT).expect("valid report");
        assert_eq!(report.tool, "llama-cpp-python 0.3.36, flash_attn=True");
        assert_eq!(report.points.len(), 2);
        assert_eq!((report.points[0].threads, report.points[0].context), (2, 0));
        assert_eq!(report.points[0].speeds, Speeds { prefill_tok_s: Some(238.4), decode_tok_s: Some(94.4) });
        // A point past the trained context is null in the script and None here, not an error.
        assert_eq!(report.points[1].speeds, Speeds { prefill_tok_s: None, decode_tok_s: Some(9.5) });
    }

    #[test]
    fn the_report_is_read_from_the_last_line() {
        let stdout = format!("a stray line from a library\n{SCRIPT_OUTPUT}\n\n");
        assert_eq!(parse_llama_cpp_report(&stdout).expect("valid report").points.len(), 2);
    }

    #[test]
    fn bad_script_output_is_an_error_naming_it() {
        for stdout in
            ["", "\n  \n", "Traceback (most recent call last):", r#"{"tool": "x"}"#, r#"{"tool": 1, "points": []}"#]
        {
            let error = parse_llama_cpp_report(stdout).expect_err(stdout);
            assert!(format!("{error:#}").contains("the llama.cpp bench"), "{stdout:?}: {error:#}");
        }
    }

    #[test]
    fn rows_join_our_points_with_llama_cpp_at_the_same_context() {
        let ours = parse_own_report(OWN_OUTPUT).expect("our report");
        let theirs = parse_llama_cpp_report(SCRIPT_OUTPUT).expect("their report");
        let rows = join(&plan(), 2, &ours, &theirs).expect("rows");
        assert_eq!(rows.len(), 4);
        assert_eq!((rows[0].cache.as_str(), rows[0].context), ("dense", 0));
        assert_eq!((rows[2].cache.as_str(), rows[2].cache_spec.as_str()), ("default", "sep:a=4,s=64,w=256,c=1024"));
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(rows[0].prefill_ratio(), 146.8 / 238.4));
        assert!(close(rows[2].decode_ratio(), 60.0 / 94.4));
        // Where either side has no number the ratio is n/a.
        assert_eq!(rows[1].prefill_ratio(), None);
        assert!(close(rows[3].decode_ratio(), 40.0 / 9.5));
        let json = rows[3].to_json();
        assert_eq!(json["llama_cpp"]["prefill_tok_s"], serde_json::Value::Null);
        assert_eq!(json["cache"], "default");
    }

    #[test]
    fn a_missing_llama_cpp_point_is_n_a_and_a_missing_own_point_an_error() {
        let ours = parse_own_report(OWN_OUTPUT).expect("our report");
        let theirs = parse_llama_cpp_report(SCRIPT_OUTPUT).expect("their report");
        // Thread count 1 is not in the script's report: every llama.cpp column is n/a.
        let rows = join(&plan(), 1, &ours, &theirs).expect("rows");
        assert!(rows.iter().all(|row| row.theirs == Speeds::default()));
        let mut other = plan();
        other.contexts = vec![4096];
        assert!(join(&other, 2, &ours, &theirs).is_err());
    }

    #[test]
    fn the_embedded_script_takes_the_flags_we_pass() {
        for flag in ["--model", "--tokens-json", "--threads", "--contexts", "--prefill", "--decode"] {
            assert!(LLAMA_CPP_SCRIPT.contains(&format!("\"{flag}\"")), "the script has no {flag}");
        }
    }
}
