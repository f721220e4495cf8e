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
/// table ends at 4096).
#[derive(Debug, Clone, Copy)]
pub struct BenchPoint {
    pub context: usize,
    pub prefill_tokens_per_second: Option<f64>,
    pub decode_tokens_per_second: Option<f64>,
}

impl BenchPlan {
    fn tokens(&self, start: usize, count: usize) -> Vec<u32> {
        (start..start + count).map(|i| self.source_tokens[i % self.source_tokens.len()]).collect()
    }
}

/// Measures our engine with a cache built by `new_cache` at every context of the plan.
pub fn bench_sepchat(model: &LlamaModel, plan: &BenchPlan, cache_config: &CacheConfig) -> Result<Vec<BenchPoint>> {
    if plan.source_tokens.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    // Warm-up: first calls pay for allocations and lazy weight repacking.
    let mut warm = model.new_cache(cache_config.clone());
    model.prefill(&plan.tokens(0, 16), &mut warm, DEFAULT_PREFILL_CHUNK)?;

    let mut points = Vec::new();
    for &context in &plan.contexts {
        let mut cache = model.new_cache(cache_config.clone());
        fill(model, &mut cache, &plan.tokens(0, context))?;
        let prompt = plan.tokens(context, plan.prefill_tokens);
        let started = Instant::now();
        model.prefill(&prompt, &mut cache, DEFAULT_PREFILL_CHUNK)?;
        let prefill = plan.prefill_tokens as f64 / started.elapsed().as_secs_f64();

        let mut cache = model.new_cache(cache_config.clone());
        fill(model, &mut cache, &plan.tokens(0, context))?;
        let steps = plan.tokens(context, plan.decode_tokens);
        let started = Instant::now();
        for token in steps {
            model.prefill(&[token], &mut cache, 1)?;
        }
        let decode = plan.decode_tokens as f64 / started.elapsed().as_secs_f64();
        points.push(BenchPoint {
            context,
            prefill_tokens_per_second: Some(prefill),
            decode_tokens_per_second: Some(decode),
        });
    }
    Ok(points)
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
        if fits(plan.prefill_tokens) {
            stock.clear_kv_cache();
            feed(&mut stock, &plan.tokens(0, context), 0)?;
            let started = Instant::now();
            feed(&mut stock, &plan.tokens(context, plan.prefill_tokens), context)?;
            prefill = Some(plan.prefill_tokens as f64 / started.elapsed().as_secs_f64());
        }
        let mut decode = None;
        if fits(plan.decode_tokens) {
            stock.clear_kv_cache();
            feed(&mut stock, &plan.tokens(0, context), 0)?;
            let started = Instant::now();
            for (step, token) in plan.tokens(context, plan.decode_tokens).into_iter().enumerate() {
                let input = Tensor::new(&[token], device)?.unsqueeze(0)?;
                stock.forward(&input, context + step)?;
            }
            decode = Some(plan.decode_tokens as f64 / started.elapsed().as_secs_f64());
        }
        points.push(BenchPoint { context, prefill_tokens_per_second: prefill, decode_tokens_per_second: decode });
    }
    Ok(points)
}
