//! Streaming perplexity: the SepLLM paper's streaming protocol (Streaming-SepLLM's
//! `evaluate_streaming_inputs_perplexity`), as specified in ../shared/reference/stream-ppl.md.
//!
//! The text's tokens (no BOS) are fed one at a time into one cache; after each step the
//! negative log-likelihood of the next token is recorded, then the cache compacts itself if the
//! step left more than c slots, so attention sees at most c + 1 keys. Unlike
//! [`crate::perplexity`], nothing is chunked or reset: the cache policy alone decides what
//! context each prediction had, which is what the comparison of dense, StreamingLLM and SepLLM
//! needs.

use std::time::{Duration, Instant};

use crate::cache_policy::{CacheConfig, CompactionTiming};
use crate::error::{EngineError, Result};
use crate::kv_cache::KvStats;
use crate::model::{log_likelihood, logits_to_vec, LlamaModel, LogitsFor};

/// Reported after every step of a run.
#[derive(Debug, Clone, Copy)]
pub struct StreamProgress {
    /// Next-token predictions scored so far, of `total`.
    pub done: usize,
    pub total: usize,
    /// exp(mean NLL) over the predictions so far.
    pub ppl: f64,
    /// Slots attention saw at this step.
    pub slots: usize,
}

/// Perplexity over the first `tokens` predictions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Checkpoint {
    pub tokens: usize,
    pub ppl: f64,
}

/// One cache policy's run over the stream.
#[derive(Debug, Clone)]
pub struct StreamRun {
    /// The policy's canonical spec as the caller configured it (the forced after-step timing
    /// is part of the protocol, so it is not written unless the caller asked for it).
    pub policy: String,
    /// Predictions scored: the requested count, or fewer when the run stopped early.
    pub tokens: usize,
    /// NLL of every scored prediction, in stream order (for windowed perplexity).
    pub nll: Vec<f32>,
    /// Slots attention saw at every step, in stream order.
    pub slots: Vec<u32>,
    pub checkpoints: Vec<Checkpoint>,
    /// exp(mean NLL) over every scored prediction.
    pub ppl: f64,
    /// Slots attention saw, averaged over steps, and the most it saw.
    pub avg_slots: f64,
    pub peak_slots: usize,
    /// KV cache bytes at the busiest step, and averaged over steps (slots seen x bytes per slot).
    pub peak_kv_bytes: usize,
    pub mean_kv_bytes: f64,
    pub compactions: usize,
    /// The cache's statistics after the last step.
    pub final_stats: KvStats,
    pub wall: Duration,
    /// Why the run ended after only `tokens` predictions (a dense cache past the trained context).
    pub stopped: Option<String>,
}

/// The evaluation text as the protocol wants it: `text` tokenized whole, without the BOS the
/// tokenizer may add, cut to the first `predictions + 1` tokens (every prediction needs its
/// target). A shorter text gives all its tokens; the caller decides whether that is enough.
pub fn stream_tokens(model: &LlamaModel, text: &str, predictions: usize) -> Result<Vec<u32>> {
    let tokenizer = model.tokenizer();
    let mut tokens = tokenizer.encode(text)?;
    // The protocol scores raw text: a BOS the GGUF asks for would be an extra sink token.
    if let Some(bos) = tokenizer.bos_token_id().filter(|_| tokenizer.adds_bos_token()) {
        if tokens.first() == Some(&bos) {
            tokens.remove(0);
        }
    }
    tokens.truncate(predictions.saturating_add(1));
    Ok(tokens)
}

/// Runs the streaming protocol over `tokens` (scoring `tokens.len() - 1` predictions) with a
/// fresh cache configured by `config`, whose compaction timing is forced to after-step.
/// Checkpoints fall every `checkpoint_every` predictions (0: none but the last) and at the end.
///
/// A cache that runs out of room (`ContextFull`: dense past the trained context) does not fail
/// the call: the run ends there, keeps what it measured and says why in `stopped`. Any other
/// error is returned.
pub fn stream_perplexity(
    model: &LlamaModel,
    tokens: &[u32],
    config: CacheConfig,
    checkpoint_every: usize,
    mut on_step: impl FnMut(StreamProgress),
) -> Result<StreamRun> {
    let total = tokens.len().saturating_sub(1);
    if total == 0 {
        // Nothing to predict: a stream needs an input token and its target.
        return Err(EngineError::EmptyPrompt);
    }
    let policy = config.to_string();
    let mut config = config;
    config.timing = CompactionTiming::AfterStep;
    let bytes_per_slot = model.config().kv_shape().bytes_per_slot(config.format);
    let schedule = checkpoint_schedule(total, checkpoint_every);
    let mut next_checkpoint = schedule.iter().copied().peekable();
    let mut cache = model.new_cache(config);
    let mut nll = Vec::with_capacity(total);
    let mut slots = Vec::with_capacity(total);
    let mut checkpoints = Vec::with_capacity(schedule.len());
    let mut nll_sum = 0f64;
    let mut stopped = None;
    let started = Instant::now();
    for (step, pair) in tokens.windows(2).enumerate() {
        let (input, target) = (pair[0], pair[1]);
        // With after-step timing the cache holds at most c slots between steps and `reserve`
        // never compacts a one-token step, so attention sees the held slots plus this token.
        let seen = cache.len() + 1;
        let logits = match model.forward(&[input], &mut cache, LogitsFor::LastToken) {
            Ok(logits) => logits,
            Err(error @ EngineError::ContextFull { .. }) => {
                stopped = Some(error.to_string());
                break;
            }
            Err(error) => return Err(error),
        };
        let logits = logits_to_vec(&logits)?;
        let log_likelihood = log_likelihood(&logits, target)
            .ok_or(EngineError::TokenOutOfRange { id: target, vocab_size: logits.len() })?;
        nll_sum -= log_likelihood;
        nll.push(-log_likelihood as f32);
        slots.push(u32::try_from(seen).unwrap_or(u32::MAX));
        let done = step + 1;
        let ppl = ppl_from_sum(nll_sum, done);
        if next_checkpoint.peek() == Some(&done) {
            next_checkpoint.next();
            checkpoints.push(Checkpoint { tokens: done, ppl });
        }
        on_step(StreamProgress { done, total, ppl, slots: seen });
    }
    let wall = started.elapsed();
    let final_stats = cache.stats();
    let scored = nll.len();
    let peak_slots = slots.iter().copied().max().unwrap_or(0) as usize;
    let avg_slots = mean(slots.iter().map(|&s| f64::from(s)));
    Ok(StreamRun {
        policy,
        tokens: scored,
        nll,
        slots,
        checkpoints,
        ppl: ppl_from_sum(nll_sum, scored),
        avg_slots,
        peak_slots,
        peak_kv_bytes: peak_slots * bytes_per_slot,
        mean_kv_bytes: avg_slots * bytes_per_slot as f64,
        compactions: final_stats.compactions,
        final_stats,
        wall,
        stopped,
    })
}

/// The prediction counts at which a checkpoint is taken: every `every` (0: none) and `total`.
pub fn checkpoint_schedule(total: usize, every: usize) -> Vec<usize> {
    let mut schedule: Vec<usize> = if every == 0 { Vec::new() } else { (every..total).step_by(every).collect() };
    if total > 0 {
        schedule.push(total);
    }
    schedule
}

/// exp(mean NLL) from the sum of `count` NLLs; NaN for no predictions.
pub fn ppl_from_sum(nll_sum: f64, count: usize) -> f64 {
    if count == 0 {
        return f64::NAN;
    }
    (nll_sum / count as f64).exp()
}

/// Perplexity of each consecutive window of `window` predictions, as (predictions up to the
/// window's end, ppl); a shorter last window is included. Summed in f64.
pub fn window_perplexity(nll: &[f32], window: usize) -> Vec<Checkpoint> {
    if window == 0 {
        return Vec::new();
    }
    nll.chunks(window)
        .enumerate()
        .map(|(index, chunk)| Checkpoint {
            tokens: index * window + chunk.len(),
            ppl: ppl_from_sum(chunk.iter().map(|&x| f64::from(x)).sum(), chunk.len()),
        })
        .collect()
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0f64, 0usize), |(sum, count), value| (sum + value, count + 1));
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_fall_every_n_predictions_and_at_the_end() {
        assert_eq!(checkpoint_schedule(3000, 500), vec![500, 1000, 1500, 2000, 2500, 3000]);
        assert_eq!(checkpoint_schedule(1200, 500), vec![500, 1000, 1200]);
        assert_eq!(checkpoint_schedule(499, 500), vec![499]);
        assert_eq!(checkpoint_schedule(700, 0), vec![700]);
        assert_eq!(checkpoint_schedule(0, 500), Vec::<usize>::new());
    }

    #[test]
    fn perplexity_is_exp_of_the_mean_nll() {
        assert!((ppl_from_sum(3.0 * 2.0f64.ln(), 3) - 2.0).abs() < 1e-12);
        assert!((ppl_from_sum(0.0, 5) - 1.0).abs() < 1e-12);
        assert!(ppl_from_sum(0.0, 0).is_nan());
    }

    #[test]
    fn window_perplexity_covers_each_window_and_a_short_tail() {
        let ln = |x: f64| x.ln() as f32;
        // Windows of two: ppl 2, then (3 * 12)^(1/2) = 6, then the lone 5.
        let nll = [ln(2.0), ln(2.0), ln(3.0), ln(12.0), ln(5.0)];
        let windows = window_perplexity(&nll, 2);
        let got: Vec<(usize, f64)> = windows.iter().map(|c| (c.tokens, c.ppl)).collect();
        let want = [(2, 2.0), (4, 6.0), (5, 5.0)];
        assert_eq!(got.len(), want.len());
        for ((tokens, ppl), (want_tokens, want_ppl)) in got.iter().zip(want) {
            assert_eq!(*tokens, want_tokens);
            assert!((ppl - want_ppl).abs() < 1e-5, "{got:?}");
        }
        assert!(window_perplexity(&nll, 0).is_empty());
    }
}
