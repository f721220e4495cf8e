//! Speed measurements: our forward pass and candle-transformers' stock `quantized_llama` on the
//! same model, the same tokens and the same machine, in the same process, so the ratio between
//! them is meaningful even on a noisy machine.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama;

use crate::cache_policy::CacheConfig;
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::model::{LlamaModel, DEFAULT_PREFILL_CHUNK};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// Tokens fed as prompt and context (cycled when more are needed).
    pub source_tokens: Vec<u32>,
    pub prefill_tokens: usize,
    pub decode_tokens: usize,
    /// Tokens already in the cache before each measurement.
    pub contexts: Vec<usize>,
}

/// One measured point; `None` where an engine cannot run that point (the stock model's position
/// table ends at 4096; a dense cache ends at the model's trained context) or the plan asks for
/// no such measurement (0 tokens).
#[derive(Debug, Clone, Copy)]
pub struct BenchPoint {
    pub context: usize,
    pub prefill_tokens_per_second: Option<f64>,
    pub decode_tokens_per_second: Option<f64>,
    /// Bytes of KV cache our engine held after the measurement (after decode, else after
    /// prefill); `None` for the stock model, whose cache we do not see.
    pub kv_bytes_held: Option<usize>,
}

impl BenchPlan {
    fn tokens(&self, start: usize, count: usize) -> Vec<u32> {
        (start..start + count).map(|i| self.source_tokens[i % self.source_tokens.len()]).collect()
    }
}

/// Tokens each context decodes before the next context takes its turn (see [`bench_sepchat`]).
const DECODE_BURST: usize = 16;

/// Measures our engine with a cache built from `cache_config` at every context of the plan: the
/// context's tokens stream through the cache first (an evicting cache compacts on the way, as
/// in a long chat), then the prompt is prefilled or tokens are decoded one at a time.
///
/// Decode is measured interleaved: every context's cache is filled first, then the contexts take
/// turns decoding [`DECODE_BURST`] tokens each until each has decoded `decode_tokens`. On a shared
/// machine whose speed drifts over minutes, measuring one context after the other (minutes apart,
/// with the long fills between) made the ratio between contexts swing by 20%; taking turns puts
/// the same drift into every context's time.
pub fn bench_sepchat(model: &LlamaModel, plan: &BenchPlan, cache_config: &CacheConfig) -> Result<Vec<BenchPoint>> {
    if plan.source_tokens.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    // Warm-up: first calls pay for allocations and lazy weight repacking.
    let mut warm = model.new_cache(cache_config.clone());
    model.prefill(&plan.tokens(0, 16), &mut warm, DEFAULT_PREFILL_CHUNK)?;

    let policy = &cache_config.policy;
    // A dense cache refuses tokens past its capacity: that point is n/a, not a failed bench.
    // A measurement of 0 tokens is skipped, so a long fill can serve decode alone.
    let fits = |context: usize, extra: usize| extra > 0 && (policy.evicts() || context + extra <= policy.capacity());
    struct Decoding {
        point: usize,
        cache: KvCache,
        steps: Vec<u32>,
        done: usize,
        seconds: f64,
    }
    let mut points = Vec::new();
    let mut decoding = Vec::new();
    for (point, &context) in plan.contexts.iter().enumerate() {
        let (measure_prefill, measure_decode) = (fits(context, plan.prefill_tokens), fits(context, plan.decode_tokens));
        let mut prefill = None;
        let mut kv_bytes_held = None;
        if measure_prefill || measure_decode {
            // One fill serves both measurements: filling 32,768 tokens takes minutes.
            let mut cache = model.new_cache(cache_config.clone());
            let context_tokens = plan.tokens(0, context);
            fill(model, &mut cache, &context_tokens)?;
            let mut decode_cache = None;
            if measure_prefill {
                // The decode run needs the cache as filled: an evicting cache (bounded, so the copy is
                // small) is copied through a snapshot; a dense one is cut back after the prefill.
                let snapshot =
                    if measure_decode && policy.evicts() { Some(snapshot_of(&cache, &context_tokens)?) } else { None };
                let prompt = plan.tokens(context, plan.prefill_tokens);
                let started = Instant::now();
                model.prefill(&prompt, &mut cache, DEFAULT_PREFILL_CHUNK)?;
                prefill = Some(plan.prefill_tokens as f64 / started.elapsed().as_secs_f64());
                kv_bytes_held = Some(cache.stats().bytes_held);
                if measure_decode {
                    decode_cache = Some(match snapshot {
                        Some(bytes) => restore(model, cache_config, &bytes)?,
                        None => {
                            if !cache.truncate(context) {
                                // Only a compacted cache refuses, and a dense one never compacts; stay correct anyway.
                                cache = model.new_cache(cache_config.clone());
                                fill(model, &mut cache, &context_tokens)?;
                            }
                            cache
                        }
                    });
                }
            } else {
                decode_cache = Some(cache);
            }
            if let Some(cache) = decode_cache {
                let steps = plan.tokens(context, plan.decode_tokens);
                decoding.push(Decoding { point, cache, steps, done: 0, seconds: 0.0 });
            }
        }
        points.push(BenchPoint {
            context,
            prefill_tokens_per_second: prefill,
            decode_tokens_per_second: None,
            kv_bytes_held,
        });
    }

    while decoding.iter().any(|run| run.done < run.steps.len()) {
        for run in decoding.iter_mut().filter(|run| run.done < run.steps.len()) {
            let burst = run.steps.len().min(run.done + DECODE_BURST);
            let started = Instant::now();
            for &token in &run.steps[run.done..burst] {
                model.prefill(&[token], &mut run.cache, 1)?;
            }
            run.seconds += started.elapsed().as_secs_f64();
            run.done = burst;
        }
    }
    for run in decoding {
        let point = &mut points[run.point];
        point.decode_tokens_per_second = Some(run.steps.len() as f64 / run.seconds);
        point.kv_bytes_held = Some(run.cache.stats().bytes_held);
    }
    Ok(points)
}

/// Name the bench's throwaway snapshots carry instead of a model fingerprint: they never leave the process.
const BENCH_SNAPSHOT: &str = "sepchat bench";

/// A copy of `cache` as a snapshot; `fed` are the tokens it was fed (the snapshot checks them against its counters).
fn snapshot_of(cache: &KvCache, fed: &[u32]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    cache.write_snapshot(&mut bytes, fed, BENCH_SNAPSHOT)?;
    Ok(bytes)
}

fn restore(model: &LlamaModel, cache_config: &CacheConfig, snapshot: &[u8]) -> Result<KvCache> {
    let mut cache = model.new_cache(cache_config.clone());
    cache.read_snapshot(&mut &snapshot[..], BENCH_SNAPSHOT)?;
    Ok(cache)
}

fn fill(model: &LlamaModel, cache: &mut KvCache, tokens: &[u32]) -> Result<()> {
    if !tokens.is_empty() {
        model.prefill(tokens, cache, DEFAULT_PREFILL_CHUNK)?;
    }
    Ok(())
}

/// Measures candle-transformers' stock quantized Llama on the same plan.
pub fn bench_candle_stock(path: &Path, device: &Device, plan: &BenchPlan) -> Result<Vec<BenchPoint>> {
    let load_error =
        |error: candle_core::Error| EngineError::ModelLoad { path: path.to_path_buf(), message: error.to_string() };
    let mut file = File::open(path).map_err(|source| EngineError::ModelOpen { path: path.to_path_buf(), source })?;
    let content = gguf_file::Content::read(&mut file).map_err(load_error)?;
    let mut stock = quantized_llama::ModelWeights::from_gguf(content, &mut file, device).map_err(load_error)?;
    let feed = |stock: &mut quantized_llama::ModelWeights, tokens: &[u32], start: usize| -> Result<()> {
        let mut position = start;
        for chunk in tokens.chunks(DEFAULT_PREFILL_CHUNK) {
            let input = Tensor::new(chunk, device)?.unsqueeze(0)?;
            stock.forward(&input, position)?;
            position += chunk.len();
        }
        Ok(())
    };
    feed(&mut stock, &plan.tokens(0, 16), 0)?;
    stock.clear_kv_cache();

    let mut points = Vec::new();
    for &context in &plan.contexts {
        // Its RoPE table has MAX_SEQ_LEN rows: beyond that it cannot run at all.
        let fits = |extra: usize| context + extra <= quantized_llama::MAX_SEQ_LEN;
        let mut prefill = None;
        if plan.prefill_tokens > 0 && fits(plan.prefill_tokens) {
            stock.clear_kv_cache();
            feed(&mut stock, &plan.tokens(0, context), 0)?;
            let started = Instant::now();
            feed(&mut stock, &plan.tokens(context, plan.prefill_tokens), context)?;
            prefill = Some(plan.prefill_tokens as f64 / started.elapsed().as_secs_f64());
        }
        let mut decode = None;
        if plan.decode_tokens > 0 && fits(plan.decode_tokens) {
            stock.clear_kv_cache();
            feed(&mut stock, &plan.tokens(0, context), 0)?;
            let started = Instant::now();
            for (step, token) in plan.tokens(context, plan.decode_tokens).into_iter().enumerate() {
                let input = Tensor::new(&[token], device)?.unsqueeze(0)?;
                stock.forward(&input, context + step)?;
            }
            decode = Some(plan.decode_tokens as f64 / started.elapsed().as_secs_f64());
        }
        points.push(BenchPoint {
            context,
            prefill_tokens_per_second: prefill,
            decode_tokens_per_second: decode,
            kv_bytes_held: None,
        });
    }
    Ok(points)
}
