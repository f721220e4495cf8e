//! `sepchat bench`: our prefill and decode speed beside candle's stock quantized_llama, measured
//! in the same process on the same tokens, printed as a table and optionally as JSON.

use std::process::ExitCode;

use clap::Args;
use sepchat_engine::bench::{bench_candle_stock, bench_sepchat, BenchPlan, BenchPoint};
use sepchat_engine::CacheConfig;

use crate::options::ModelArgs;

#[derive(Args)]
pub struct BenchArgs {
    /// Tokens already in the cache before each measurement (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,2048,4096")]
    contexts: Vec<usize>,
    /// Prompt tokens fed for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prefill: usize,
    /// Tokens decoded one at a time for the decode measurement.
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// Skip candle's stock model.
    #[arg(long)]
    no_stock: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Public-domain prose (Pride and Prejudice, chapter 1) cycled as bench input: real text gives
/// real token statistics, and speed does not depend on which text it is. scripts/llama-cpp-bench.py
/// reads the same file.
const BENCH_TEXT: &str = include_str!("bench_text.txt");

pub fn run(model_args: &ModelArgs, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run `cargo run --release -p sepchat-cli -- bench` for meaningful numbers"
        );
    }
    let model = model_args.load()?;
    let plan = BenchPlan {
        source_tokens: model.tokenizer().encode(BENCH_TEXT)?,
        prefill_tokens: args.prefill,
        decode_tokens: args.decode,
        contexts: args.contexts.clone(),
    };
    let policy = CacheConfig::dense(model.config().context_length);
    eprintln!("measuring sepchat ...");
    let ours = bench_sepchat(&model, &plan, &policy)?;
    let stock = if args.no_stock {
        Vec::new()
    } else {
        eprintln!("measuring candle's stock quantized_llama ...");
        bench_candle_stock(model.path(), model.device(), &plan)?
    };
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let rows: Vec<Row> = ours
        .iter()
        .map(|point| Row { ours: *point, stock: stock.iter().find(|s| s.context == point.context).copied() })
        .collect();
    if args.json {
        let value = serde_json::json!({
            "model": model.path().display().to_string(),
            "device": sepchat_engine::device::device_name(model.device()),
            "threads": threads,
            "prefill_tokens": args.prefill,
            "decode_tokens": args.decode,
            "policy": policy.to_string(),
            "points": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        });
        println!("{value}");
    } else {
        println!(
            "model {} | device {} | threads {threads} | prefill {} tok | decode {} tok | cache {}",
            model.path().display(),
            sepchat_engine::device::device_name(model.device()),
            args.prefill,
            args.decode,
            policy
        );
        println!(
            "{:>8} | {:>15} {:>15} | {:>15} {:>15} | {:>13} {:>13}",
            "context",
            "prefill tok/s",
            "decode tok/s",
            "stock prefill",
            "stock decode",
            "prefill ratio",
            "decode ratio"
        );
        for row in &rows {
            println!(
                "{:>8} | {:>15} {:>15} | {:>15} {:>15} | {:>13} {:>13}",
                row.ours.context,
                number(row.ours.prefill_tokens_per_second),
                number(row.ours.decode_tokens_per_second),
                number(row.stock.and_then(|s| s.prefill_tokens_per_second)),
                number(row.stock.and_then(|s| s.decode_tokens_per_second)),
                ratio(row.prefill_ratio()),
                ratio(row.decode_ratio()),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct Row {
    ours: BenchPoint,
    stock: Option<BenchPoint>,
}

impl Row {
    fn prefill_ratio(&self) -> Option<f64> {
        Some(self.ours.prefill_tokens_per_second? / self.stock?.prefill_tokens_per_second?)
    }

    fn decode_ratio(&self) -> Option<f64> {
        Some(self.ours.decode_tokens_per_second? / self.stock?.decode_tokens_per_second?)
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "context": self.ours.context,
            "sepchat": {"prefill_tok_s": self.ours.prefill_tokens_per_second, "decode_tok_s": self.ours.decode_tokens_per_second},
            "candle_stock": self.stock.map(|s| serde_json::json!({"prefill_tok_s": s.prefill_tokens_per_second, "decode_tok_s": s.decode_tokens_per_second})),
            "prefill_ratio": self.prefill_ratio(),
            "decode_ratio": self.decode_ratio(),
        })
    }
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.1}"))
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}x"))
}
