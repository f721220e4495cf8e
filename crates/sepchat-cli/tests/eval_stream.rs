//! `sepchat eval stream` against the streaming-perplexity reference table
//! (../shared/reference/stream-ppl.md), on the first 1000 tokens of PG19 book 10146.
//!
//! The reference is an independent f32 implementation; the engine quantizes activations like
//! llama.cpp, so agreement within 2% is what the reference asks for.

mod support;

use std::time::Duration;

use support::{assert_clean_failure, assert_success, default_model, run, sepchat, TIMEOUT};

/// Reference perplexity after 1000 tokens, per policy (stream-ppl.md's first table).
const REFERENCE_1000: [(&str, f64); 3] =
    [("dense", 18.190), ("streaming:a=4,c=512", 18.259), ("sep:a=4,s=64,w=256,c=512,seps=paper", 18.515)];

#[test]
fn eval_stream_matches_the_reference_at_1000_tokens() {
    default_model();
    let data = support::shared_dir().join("data").join("pg19-test-10146.txt");
    assert!(data.is_file(), "missing evaluation text {}", data.display());
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let json_path = dir.path().join("stream.json");
    let mut command = sepchat();
    command.args(["eval", "stream"]).arg(&data).args(["--tokens", "1000"]);
    for (spec, _) in REFERENCE_1000 {
        command.args(["--cache", spec]);
    }
    command.arg("--json").arg(&json_path);
    // Three policies x 1000 one-token steps in a debug build on a busy 2-core machine.
    let output = run(&mut command, Duration::from_secs(1200));
    assert_success(&output, "eval stream");

    let text = std::fs::read_to_string(&json_path).unwrap_or_else(|error| panic!("no --json file written: {error}"));
    let report: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("--json wrote invalid JSON ({error}): {text}"));
    assert!(report["file"].as_str().is_some_and(|file| file.ends_with("pg19-test-10146.txt")), "{report}");
    assert!(report["model"].is_string(), "{report}");
    let runs = report["runs"].as_array().unwrap_or_else(|| panic!("no \"runs\" array in {report}"));
    assert_eq!(runs.len(), REFERENCE_1000.len(), "{report}");

    let mut problems = Vec::new();
    for (run, (spec, reference)) in runs.iter().zip(REFERENCE_1000) {
        for field in ["policy", "avg_slots", "peak_slots", "ppl", "peak_kv_bytes", "compactions", "wall_seconds"] {
            assert!(!run[field].is_null(), "{spec}: no \"{field}\" in {run}");
        }
        assert!(run["stopped"].is_null(), "{spec} stopped early: {run}");
        assert_eq!(run["tokens"], 1000, "{spec}: {run}");
        let checkpoints: Vec<(u64, f64)> = run["checkpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("{spec}: no \"checkpoints\" array in {run}"))
            .iter()
            .map(|checkpoint| {
                let tokens = checkpoint["tokens"].as_u64().unwrap_or_else(|| panic!("{spec}: bad checkpoint {run}"));
                let ppl = checkpoint["ppl"].as_f64().unwrap_or_else(|| panic!("{spec}: bad checkpoint {run}"));
                (tokens, ppl)
            })
            .collect();
        assert_eq!(checkpoints.iter().map(|c| c.0).collect::<Vec<_>>(), vec![500, 1000], "{spec}: {run}");
        let ppl = run["ppl"].as_f64().unwrap_or_default();
        assert_eq!(checkpoints[1].1, ppl, "{spec}: the last checkpoint is the run's perplexity");
        let relative = (ppl - reference).abs() / reference;
        if relative > 0.02 {
            problems
                .push(format!("{spec}: ppl {ppl:.3} is {:.2}% away from the reference {reference}", relative * 100.0));
        }
    }
    assert!(problems.is_empty(), "{}\n{report}", problems.join("\n"));

    let slots = |index: usize, field: &str| runs[index][field].as_f64().unwrap_or_else(|| panic!("{field}: {report}"));
    assert_eq!(slots(0, "peak_slots"), 1000.0, "dense attends to every token");
    // After-step compaction: attention sees c + 1 keys at the step that triggers it.
    assert_eq!(slots(1, "peak_slots"), 513.0, "streaming");
    assert_eq!(slots(2, "peak_slots"), 513.0, "sep");
    assert!(slots(2, "avg_slots") < slots(1, "avg_slots"), "SepLLM should hold fewer slots on average: {report}");
    assert!(slots(0, "compactions") == 0.0 && slots(1, "compactions") > 0.0, "{report}");
    // The human-readable table names every policy.
    for (spec, _) in REFERENCE_1000 {
        let canonical = spec.strip_prefix("dense").map_or(spec.to_string(), |_| "dense:c=8192".to_string());
        assert!(output.stdout.contains(&canonical), "the table does not show {canonical}: {}", output.stdout);
    }
}

#[test]
fn eval_stream_refuses_an_unknown_cache_policy_in_one_line() {
    let data = support::shared_dir().join("data").join("pg19-test-10146.txt");
    let output = run(sepchat().args(["eval", "stream"]).arg(&data).args(["--tokens", "10", "--cache", "lru"]), TIMEOUT);
    assert_clean_failure(&output, "eval stream --cache lru");
    // Like ask, chat and bench: a bad cache spec is a usage error.
    assert_eq!(output.status.code(), Some(2), "{:?}", output.stderr);
    assert!(output.stderr.contains("unknown cache policy `lru`"), "{:?}", output.stderr);
}
