//! `sepchat bench`: our prefill and decode speed beside candle's stock quantized_llama, measured
//! in the same process on the same tokens, printed as a table and optionally as JSON.
//! `sepchat bench sessions` measures resuming conversations instead (see `bench_sessions.rs`);
//! `sepchat bench --compare llama-cpp` measures us against llama.cpp (see `bench_compare.rs`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use sepchat_engine::bench::{bench_candle_stock, bench_sepchat, BenchPlan, BenchPoint};
use sepchat_engine::{CacheConfig, LlamaModel};

use crate::bench_compare::{self, ComparePlan, CompareWith};
use crate::bench_sessions::{self, SessionsArgs};
use crate::options::{with_usage_exit, ModelArgs};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    other: Option<OtherBench>,
    /// Tokens already streamed through the cache before each measurement (comma-separated);
    /// default 0,2048,4096 (with --compare: 0,2048) unless --context is given.
    #[arg(long, value_delimiter = ',')]
    contexts: Option<Vec<usize>>,
    /// One more context to measure (repeatable); added to --contexts, or alone when --contexts is not given.
    #[arg(long, value_name = "N")]
    context: Vec<usize>,
    /// KV cache to measure (repeatable): dense, a profile (low, default, high), streaming:... or sep:...;
    /// default dense (with --compare: dense and default).
    /// Candle's stock model is measured only beside dense, the only cache it has.
    #[arg(long, value_name = "SPEC")]
    cache: Vec<String>,
    /// Prompt tokens fed for the prefill measurement (0 skips it).
    #[arg(long, default_value_t = 512)]
    prefill: usize,
    /// Tokens decoded one at a time for the decode measurement (0 skips it).
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// Skip candle's stock model.
    #[arg(long, conflicts_with = "stock_only")]
    no_stock: bool,
    /// Measure only candle's stock model (with a dense cache), so this process's peak memory is its own.
    #[arg(long, conflicts_with_all = ["compare", "cache"])]
    stock_only: bool,
    /// Measure against another engine instead of candle's stock model, in the same run and on the same tokens,
    /// for each thread count (--threads N, else 1 and 2): llama-cpp needs the llama-cpp-python package
    /// (`pip install llama-cpp-python==0.3.36`).
    #[arg(long, value_enum, value_name = "ENGINE")]
    compare: Option<CompareWith>,
    /// llama.cpp's flash attention in --compare: on (its CPU default) or off (faster decode at long contexts).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = ["on", "off"], requires = "compare")]
    llama_flash_attn: String,
    /// The Python interpreter that runs the llama.cpp side of --compare.
    #[arg(long, value_name = "PATH", default_value = "python3", requires = "compare")]
    python: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum OtherBench {
    /// Time to first token over a long conversation's turns, and switching to a long conversation: restored from
    /// its snapshot against replayed (through the App, in a throwaway data directory; use a release build).
    Sessions(SessionsArgs),
}

/// The contexts measured when neither --contexts nor --context is given.
const DEFAULT_CONTEXTS: [usize; 3] = [0, 2048, 4096];

impl BenchArgs {
    fn contexts(&self) -> Vec<usize> {
        let mut contexts = match &self.contexts {
            Some(list) => list.clone(),
            None if self.context.is_empty() && self.compare.is_some() => bench_compare::DEFAULT_CONTEXTS.to_vec(),
            None if self.context.is_empty() => DEFAULT_CONTEXTS.to_vec(),
            None => Vec::new(),
        };
        contexts.extend(&self.context);
        contexts
    }

    /// The --cache specs, else the default ones.
    fn caches(&self) -> Vec<String> {
        match (self.cache.is_empty(), self.compare) {
            (false, _) => self.cache.clone(),
            (true, Some(_)) => bench_compare::DEFAULT_CACHES.iter().map(ToString::to_string).collect(),
            (true, None) => vec!["dense".to_string()],
        }
    }
}

/// Public-domain prose (Pride and Prejudice, chapter 1) cycled as bench input: real text gives
/// real token statistics, and speed does not depend on which text it is. scripts/llama-cpp-bench.py
/// can read the same file, but `--compare llama-cpp` hands it our token ids instead.
const BENCH_TEXT: &str = include_str!("bench_text.txt");

/// The tokens every bench cycles through: the bench text as `model`'s tokenizer encodes it.
pub fn source_tokens(model: &LlamaModel) -> anyhow::Result<Vec<u32>> {
    Ok(model.tokenizer().encode(BENCH_TEXT)?)
}

pub fn run(model_args: &ModelArgs, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(OtherBench::Sessions(sessions)) = &args.other {
        return with_usage_exit(bench_sessions::run(model_args, sessions).map(|()| ExitCode::SUCCESS));
    }
    if let Some(CompareWith::LlamaCpp) = args.compare {
        let plan = ComparePlan {
            threads: model_args.threads.map_or_else(|| bench_compare::DEFAULT_THREADS.to_vec(), |n| vec![n]),
            contexts: args.contexts(),
            caches: args.caches(),
            prefill: args.prefill,
            decode: args.decode,
            python: args.python.clone(),
            llama_flash_attn: args.llama_flash_attn == "on",
            json: args.json,
        };
        return with_usage_exit(bench_compare::run(model_args, &plan));
    }
    with_usage_exit(run_bench(model_args, args))
}

fn run_bench(model_args: &ModelArgs, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run `cargo run --release -p sepchat-cli -- bench` for meaningful numbers"
        );
    }
    // Syntax first, so a typo fails before the model loads; the sizes need the model.
    let specs = args.caches();
    for spec in &specs {
        spec.parse::<CacheConfig>()?;
    }
    let model = model_args.load()?;
    let context_length = model.config().context_length;
    let caches =
        specs.iter().map(|spec| CacheConfig::parse_for_model(spec, context_length)).collect::<Result<Vec<_>, _>>()?;
    let plan = BenchPlan {
        source_tokens: source_tokens(&model)?,
        prefill_tokens: args.prefill,
        decode_tokens: args.decode,
        contexts: args.contexts(),
    };
    let mut rows = Vec::new();
    for cache in &caches {
        if args.stock_only {
            // Rows without our numbers: the stock columns alone.
            rows.extend(plan.contexts.iter().map(|&context| Row {
                cache: cache.clone(),
                ours: BenchPoint {
                    context,
                    prefill_tokens_per_second: None,
                    decode_tokens_per_second: None,
                    kv_bytes_held: None,
                },
                stock: None,
            }));
            continue;
        }
        eprintln!("measuring sepchat with cache {cache} ...");
        let points = bench_sepchat(&model, &plan, cache)?;
        rows.extend(points.into_iter().map(|point| Row { cache: cache.clone(), ours: point, stock: None }));
    }
    let has_dense = caches.iter().any(|cache| !cache.policy.evicts());
    if has_dense && !args.no_stock {
        eprintln!("measuring candle's stock quantized_llama ...");
        let stock = bench_candle_stock(model.path(), model.device(), &plan)?;
        for row in rows.iter_mut().filter(|row| !row.cache.policy.evicts()) {
            row.stock = stock.iter().find(|s| s.context == row.ours.context).copied();
        }
    }
    let peak_rss_mib = peak_rss_bytes().map(|bytes| bytes as f64 / (1024.0 * 1024.0));
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if args.json {
        let value = serde_json::json!({
            "model": model.path().display().to_string(),
            "device": sepchat_engine::device::device_name(model.device()),
            "threads": threads,
            "prefill_tokens": args.prefill,
            "decode_tokens": args.decode,
            "caches": caches.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "peak_rss_mib": peak_rss_mib,
            "points": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        });
        println!("{value}");
    } else {
        println!(
            "model {} | device {} | threads {threads} | prefill {} tok | decode {} tok | peak RSS {} MiB",
            model.path().display(),
            sepchat_engine::device::device_name(model.device()),
            args.prefill,
            args.decode,
            number(peak_rss_mib),
        );
        let cache_width = rows.iter().map(|row| row.cache.to_string().len()).max().unwrap_or(0).max("cache".len());
        println!(
            "{:<cache_width$} | {:>8} | {:>15} {:>15} {:>10} | {:>15} {:>15} | {:>13} {:>13}",
            "cache",
            "context",
            "prefill tok/s",
            "decode tok/s",
            "KV MiB",
            "stock prefill",
            "stock decode",
            "prefill ratio",
            "decode ratio"
        );
        for row in &rows {
            // Stock columns belong to dense rows only: elsewhere they would compare different caches.
            let (stock_prefill, stock_decode, prefill_ratio, decode_ratio) = if row.cache.policy.evicts() {
                ("-".to_string(), "-".to_string(), "-".to_string(), "-".to_string())
            } else {
                (
                    number(row.stock.and_then(|s| s.prefill_tokens_per_second)),
                    number(row.stock.and_then(|s| s.decode_tokens_per_second)),
                    ratio(row.prefill_ratio()),
                    ratio(row.decode_ratio()),
                )
            };
            println!(
                "{:<cache_width$} | {:>8} | {:>15} {:>15} {:>10} | {:>15} {:>15} | {:>13} {:>13}",
                row.cache.to_string(),
                row.ours.context,
                number(row.ours.prefill_tokens_per_second),
                number(row.ours.decode_tokens_per_second),
                number(row.kv_mib_held()),
                stock_prefill,
                stock_decode,
                prefill_ratio,
                decode_ratio,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct Row {
    cache: CacheConfig,
    ours: BenchPoint,
    /// Candle's stock model at the same context; only beside a dense cache.
    stock: Option<BenchPoint>,
}

impl Row {
    fn prefill_ratio(&self) -> Option<f64> {
        Some(self.ours.prefill_tokens_per_second? / self.stock?.prefill_tokens_per_second?)
    }

    fn decode_ratio(&self) -> Option<f64> {
        Some(self.ours.decode_tokens_per_second? / self.stock?.decode_tokens_per_second?)
    }

    fn kv_mib_held(&self) -> Option<f64> {
        self.ours.kv_bytes_held.map(|bytes| bytes as f64 / (1024.0 * 1024.0))
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cache": self.cache.to_string(),
            "context": self.ours.context,
            "sepchat": {
                "prefill_tok_s": self.ours.prefill_tokens_per_second,
                "decode_tok_s": self.ours.decode_tokens_per_second,
                "kv_bytes_held": self.ours.kv_bytes_held,
                "kv_mib_held": self.kv_mib_held(),
            },
            "candle_stock": self.stock.map(|s| serde_json::json!({"prefill_tok_s": s.prefill_tokens_per_second, "decode_tok_s": s.decode_tokens_per_second})),
            "prefill_ratio": self.prefill_ratio(),
            "decode_ratio": self.decode_ratio(),
        })
    }
}

/// The most memory this process has held (VmHWM: the high-water mark of its resident set), model
/// and every cache of the run included; `None` where /proc is not there (not Linux). Measure one
/// setting per process when the figure should belong to that setting alone.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.1}"))
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}x"))
}
