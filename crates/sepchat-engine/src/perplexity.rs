//! Perplexity with llama.cpp's `llama-perplexity` protocol, so our number can be compared with
//! llama.cpp's directly: the text is split into chunks of `ctx` tokens, each chunk is evaluated
//! from an empty cache, and only the second half of each chunk is scored (every scored token
//! has at least ctx/2 tokens of context).

use crate::cache_policy::CacheConfig;
use crate::error::{EngineError, Result};
use crate::kv_format::KvFormat;
use crate::model::{log_likelihood, logits_to_vec, LlamaModel, LogitsFor};

/// The outcome of a perplexity run.
#[derive(Debug, Clone)]
pub struct PerplexityReport {
    /// exp(mean negative log-likelihood) over all scored tokens.
    pub ppl: f64,
    pub chunks: usize,
    pub ctx: usize,
    pub tokens_scored: usize,
    /// Running perplexity after each chunk (llama.cpp prints the same sequence).
    pub running_ppl: Vec<f64>,
}

/// Runs the protocol over `tokens` with keys and values stored in `format` (llama.cpp's
/// `--cache-type-k/-v`); `on_chunk(done, total, running_ppl)` reports progress.
pub fn perplexity(
    model: &LlamaModel,
    tokens: &[u32],
    ctx: usize,
    format: KvFormat,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<PerplexityReport> {
    if ctx < 4 {
        return Err(EngineError::InvalidSampling(format!("perplexity context must be at least 4 tokens, got {ctx}")));
    }
    let n_chunks = tokens.len() / ctx;
    if n_chunks == 0 {
        return Err(EngineError::EmptyPrompt);
    }
    let first_scored = ctx / 2;
    let bos = if model.tokenizer().adds_bos_token() { model.tokenizer().bos_token_id() } else { None };
    let mut nll_sum = 0f64;
    let mut scored = 0usize;
    let mut running_ppl = Vec::with_capacity(n_chunks);
    for chunk_idx in 0..n_chunks {
        let mut chunk = tokens[chunk_idx * ctx..(chunk_idx + 1) * ctx].to_vec();
        // llama.cpp replaces the first token of each chunk with BOS when the model wants one.
        if let Some(bos) = bos {
            chunk[0] = bos;
        }
        let mut cache = model.new_cache(CacheConfig { format, ..CacheConfig::dense(model.config().context_length) });
        let logits = model.forward(&chunk, &mut cache, LogitsFor::From(first_scored))?;
        // Row r holds the prediction made at chunk position first_scored + r.
        for (row, position) in (first_scored..ctx - 1).enumerate() {
            let row_logits = logits_to_vec(&logits.get(row)?)?;
            let target = chunk[position + 1];
            let log_likelihood = log_likelihood(&row_logits, target)
                .ok_or(EngineError::TokenOutOfRange { id: target, vocab_size: row_logits.len() })?;
            nll_sum -= log_likelihood;
            scored += 1;
        }
        let ppl = (nll_sum / scored as f64).exp();
        running_ppl.push(ppl);
        on_chunk(chunk_idx + 1, n_chunks, ppl);
    }
    Ok(PerplexityReport {
        ppl: (nll_sum / scored as f64).exp(),
        chunks: n_chunks,
        ctx,
        tokens_scored: scored,
        running_ppl,
    })
}
