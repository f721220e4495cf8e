//! How fast one core reads memory, and what that allows a decode step: the ceiling on
//! "decode after 32,768 tokens / decode at an empty context" (issue 7) for each way of storing
//! the cache, before any kernel runs.
//!
//! A decode step reads every weight once (the output head is the tied embedding, so nearly
//! the whole GGUF file) and every held cache row once, layer by layer; on one core both
//! come from memory at whatever rate that core streams. So this program:
//!
//! 1. times plain sequential reads of buffers of growing size (one core): the rate drops
//!    where the buffer no longer fits this core's share of the last-level cache;
//! 2. times a simulated step: per layer, that layer's share of the weights, then its
//!    cache rows (slots x KV heads x bytes per row pair), at the mean number of slots held
//!    while decoding 768 tokens from an empty context (384) and after 32,768 tokens with the
//!    default SepCache profile (1,666: SEPLLM.md), for several row formats. The ratio of
//!    the two step times is what the real ratio could be if the arithmetic were free.
//!
//! Run: `cargo run --release -p sepchat-engine --example memory_bandwidth -- [rounds]`
//! (results and their reading: docs/BENCHMARKS.md).

use std::hint::black_box;
use std::time::Instant;

use candle_core::Device;
use sepchat_engine::model::LlamaModel;

/// Mean slots held while decoding 768 tokens from an empty context, and after 32,768 tokens
/// with the default profile (SEPLLM.md's reference simulation).
const SLOTS_AT_EMPTY: usize = 384;
const SLOTS_AFTER_32K: usize = 1666;

/// Bytes of one slot's key row and value row in one KV head, head size 64: (name, bytes).
const FORMATS: [(&str, usize); 4] = [
    ("f16 (default)", 2 * 128),
    ("kv=q8: 8-bit rows, f32 scale", 2 * (64 + 4)),
    ("8-bit keys, 4-bit values (hypothetical)", (64 + 4) + (32 + 4)),
    ("4-bit keys and values (hypothetical)", 2 * (32 + 4)),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args().nth(1).and_then(|arg| arg.parse().ok()).unwrap_or(15);
    let path = sepchat_gguf::default_model::default_model_path().ok_or("no home directory")?;
    let weight_bytes = usize::try_from(std::fs::metadata(&path)?.len())?;
    let config = LlamaModel::load(&path, &Device::Cpu)?.config().clone();

    println!("one core reading a buffer again and again (best of {rounds} passes):");
    for megabytes in [1, 16, 32, 48, 64, 80, 96, 128, 256] {
        let buffer = filled(megabytes << 20);
        let seconds = (0..rounds).map(|_| timed(|| read_all(&buffer))).fold(f64::INFINITY, f64::min);
        println!("  {megabytes:>4} MiB: {:5.1} GB/s", (megabytes << 20) as f64 / seconds / 1e9);
    }

    println!(
        "\na simulated decode step: {:.1} MiB of weights ({}), then per layer its cache rows \
         ({} layers x {} KV heads); median of {rounds} alternated rounds:",
        weight_bytes as f64 / (1 << 20) as f64,
        path.display(),
        config.n_layer,
        config.n_kv_head
    );
    let weights = filled(weight_bytes);
    let rows_per_slot = config.n_layer * config.n_kv_head;
    for (format, bytes_per_row_pair) in FORMATS {
        let cache_bytes = |slots: usize| slots * rows_per_slot * bytes_per_row_pair;
        let cache = filled(cache_bytes(SLOTS_AFTER_32K));
        let step = |slots: usize| {
            let (weights_per_layer, cache_per_layer) =
                (weights.len() / config.n_layer, cache_bytes(slots) / config.n_layer);
            timed(|| {
                let mut sum = 0u64;
                for layer in 0..config.n_layer {
                    sum = sum.wrapping_add(read_all(&weights[layer * weights_per_layer..][..weights_per_layer]));
                    sum = sum.wrapping_add(read_all(&cache[layer * cache_per_layer..][..cache_per_layer]));
                }
                sum
            })
        };
        let (mut empty, mut long) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            empty.push(step(SLOTS_AT_EMPTY));
            long.push(step(SLOTS_AFTER_32K));
        }
        let (empty, long) = (median(&mut empty), median(&mut long));
        println!(
            "  {format:<40} {:>4} B/slot/head: {:6.2} ms at {SLOTS_AT_EMPTY} slots, {:6.2} ms at {SLOTS_AFTER_32K} \
             ({:4.1} MiB of cache): ratio {:.3}",
            bytes_per_row_pair,
            1e3 * empty,
            1e3 * long,
            cache_bytes(SLOTS_AFTER_32K) as f64 / (1 << 20) as f64,
            empty / long
        );
    }
    Ok(())
}

/// A buffer of `bytes` nonzero bytes (written, so every page is really there).
fn filled(bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| (i % 251) as u8 | 1).collect()
}

/// Reads every byte of `bytes` (summed as 64-bit words, a reduction the compiler turns into
/// vector loads and adds), so the time is the time to bring them in.
fn read_all(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let rest = words.remainder().iter().fold(0u64, |sum, &byte| sum.wrapping_add(u64::from(byte)));
    words.map(|word| u64::from_le_bytes(word.try_into().unwrap_or_default())).fold(rest, u64::wrapping_add)
}

fn timed(work: impl FnOnce() -> u64) -> f64 {
    let started = Instant::now();
    black_box(work());
    started.elapsed().as_secs_f64()
}

fn median(seconds: &mut [f64]) -> f64 {
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2]
}
