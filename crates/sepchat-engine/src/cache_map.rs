//! The KV cache's bookkeeping without tensors, and a simulator built on it: which token of a
//! conversation each slot holds, how the blocks are laid out, and the live statistics.
//!
//! [`SlotBook`] is the one implementation of that bookkeeping: [`crate::kv_cache::KvCache`] holds
//! one and only adds the keys and values of every layer (moved by the same [`Compaction`] the book
//! applies), so a simulation cannot drift from what the engine does. [`CacheSimulator`] replays a
//! token stream through a book exactly as the worker feeds a session (prompts prefilled in the
//! same chunks, replies decoded one token at a time, a history rewrite rolled back or rebuilt),
//! which is what the UI's token map and its A/B switch need: which tokens a cache of some setting
//! would still hold after this conversation, and its statistics, without running the model.

use std::sync::Arc;

use crate::cache_policy::{Blocks, CacheConfig, CachePolicy, Compaction, CompactionTiming};
use crate::error::{EngineError, Result};
use crate::kv_cache::{KvStats, SeparatorSet};
use crate::model::DEFAULT_PREFILL_CHUNK;

/// Running totals behind the averaged statistics (serialized in KV snapshots).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Counters {
    pub(crate) slots_sum: f64,
    pub(crate) kept_ratio_sum: f64,
    pub(crate) slots_peak: usize,
    pub(crate) dropped_separators: usize,
    pub(crate) dropped_other: usize,
    pub(crate) compactions: usize,
}

/// A cache's slot list as token ids and stream positions, its block layout and its counters:
/// everything about a cache except the keys and values.
#[derive(Debug, Clone)]
pub struct SlotBook {
    pub(crate) config: CacheConfig,
    pub(crate) separators: Arc<SeparatorSet>,
    bytes_per_slot: usize,
    /// Token id held in each slot, in slot order.
    pub(crate) slot_tokens: Vec<u32>,
    /// Stream position (0-based index in the whole conversation) of each slot's token.
    pub(crate) slot_stream_positions: Vec<usize>,
    /// a, raised to cover a chat's system turn.
    pub(crate) initial_limit: usize,
    pub(crate) blocks: Blocks,
    pub(crate) tokens_seen: usize,
    pub(crate) counters: Counters,
}

impl SlotBook {
    /// An empty book; `bytes_per_slot` is what one slot's keys and values take in all layers.
    pub fn new(config: CacheConfig, separators: Arc<SeparatorSet>, bytes_per_slot: usize) -> Self {
        let initial_limit = config.policy.initial();
        Self {
            config,
            separators,
            bytes_per_slot,
            slot_tokens: Vec::new(),
            slot_stream_positions: Vec::new(),
            initial_limit,
            blocks: Blocks::default(),
            tokens_seen: 0,
            counters: Counters::default(),
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.slot_tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slot_tokens.is_empty()
    }

    pub fn slot_tokens(&self) -> &[u32] {
        &self.slot_tokens
    }

    pub fn slot_stream_positions(&self) -> &[usize] {
        &self.slot_stream_positions
    }

    pub fn tokens_seen(&self) -> usize {
        self.tokens_seen
    }

    pub fn compactions(&self) -> usize {
        self.counters.compactions
    }

    /// See [`crate::kv_cache::KvCache::protect_initial`].
    pub fn protect_initial(&mut self, tokens: usize) -> Result<()> {
        let policy = &self.config.policy;
        if !policy.evicts() || tokens <= self.initial_limit {
            return Ok(());
        }
        let others =
            policy.separator_limit() + if matches!(policy, CachePolicy::Sep(_)) { policy.local_limit() } else { 0 };
        if self.counters.compactions > 0 || tokens + others >= policy.capacity() {
            return Err(EngineError::InitialBlockTooLarge { tokens, policy: self.config.to_string() });
        }
        self.initial_limit = tokens;
        Ok(())
    }

    /// See [`crate::kv_cache::KvCache::max_chunk`].
    pub fn max_chunk(&self) -> usize {
        self.config.policy.max_chunk(self.initial_limit)
    }

    /// The most slots attention may see: c, plus one with after-step compaction (the reference
    /// protocol compacts only after a step has appended its token).
    pub(crate) fn limit(&self) -> usize {
        let slack = self.slack();
        self.config.policy.capacity() + slack
    }

    fn slack(&self) -> usize {
        usize::from(self.config.timing == CompactionTiming::AfterStep && self.config.policy.evicts())
    }

    /// The compaction to run before `n_new` tokens are appended, if they would pass the limit
    /// (the caller moves the tensors, then calls [`SlotBook::apply`]).
    pub(crate) fn plan_before_append(&self, n_new: usize) -> Option<Compaction> {
        if self.len() + n_new <= self.limit() {
            return None;
        }
        self.plan(n_new.saturating_sub(self.slack()))
    }

    /// Slots needed once `n_new` tokens are appended, or `ContextFull` when they cannot fit
    /// (after the compaction `plan_before_append` asked for).
    pub(crate) fn check_fits(&self, n_new: usize) -> Result<usize> {
        let needed = self.len() + n_new;
        if needed > self.limit() {
            return Err(EngineError::ContextFull {
                needed,
                capacity: self.config.policy.capacity(),
                policy: self.config.to_string(),
            });
        }
        Ok(needed)
    }

    fn plan(&self, incoming: usize) -> Option<Compaction> {
        let separators = &self.separators;
        self.config.policy.plan(
            self.initial_limit,
            self.blocks,
            &self.slot_tokens,
            |id| separators.contains(id),
            incoming,
        )
    }

    /// Records a compaction whose slots have been moved.
    pub(crate) fn apply(&mut self, plan: &Compaction) {
        self.slot_tokens = plan.keep.iter().map(|&slot| self.slot_tokens[slot]).collect();
        self.slot_stream_positions = plan.keep.iter().map(|&slot| self.slot_stream_positions[slot]).collect();
        self.blocks = plan.blocks;
        self.counters.compactions += 1;
        self.counters.dropped_separators += plan.dropped_separators;
        self.counters.dropped_other += plan.dropped_other;
    }

    /// Records a chunk's tokens as held slots, and returns the compaction after-step timing asks
    /// for when the step left more than c slots.
    pub(crate) fn commit(&mut self, tokens: &[u32]) -> Option<Compaction> {
        for &token in tokens {
            self.slot_tokens.push(token);
            self.slot_stream_positions.push(self.tokens_seen);
            self.tokens_seen += 1;
            let held = self.len();
            self.counters.slots_sum += held as f64;
            self.counters.kept_ratio_sum += held as f64 / self.tokens_seen as f64;
            self.counters.slots_peak = self.counters.slots_peak.max(held);
        }
        if self.config.timing == CompactionTiming::AfterStep && self.len() > self.config.policy.capacity() {
            return self.plan(0);
        }
        None
    }

    /// See [`crate::kv_cache::KvCache::truncate`].
    pub fn truncate(&mut self, keep: usize) -> bool {
        if self.counters.compactions > 0 {
            return false;
        }
        if keep < self.len() {
            self.slot_tokens.truncate(keep);
            self.slot_stream_positions.truncate(keep);
            self.tokens_seen = keep;
            self.blocks = Blocks::default();
            // The per-step sums must forget the dropped steps too, or the means divide sums over more steps than
            // `tokens_seen` (a "kept on average" above 100% after a regenerate). Before any compaction step `i`
            // held `i` slots of `i` tokens, so the sums over the kept steps are known exactly.
            let kept = keep as f64;
            self.counters.slots_sum = kept * (kept + 1.0) / 2.0;
            self.counters.kept_ratio_sum = kept;
            self.counters.slots_peak = keep;
        }
        true
    }

    /// Forgets every slot and counter (the initial block goes back to the policy's a).
    pub fn clear(&mut self) {
        self.slot_tokens.clear();
        self.slot_stream_positions.clear();
        self.tokens_seen = 0;
        self.blocks = Blocks::default();
        self.counters = Counters::default();
        self.initial_limit = self.config.policy.initial();
    }

    /// Slots held per block: (initial, separators, past, local), as the readout counts them.
    fn block_sizes(&self) -> (usize, usize, usize, usize) {
        let policy = &self.config.policy;
        let held = self.len();
        let (initial_held, separators_held) = if policy.evicts() {
            let initial = self.initial_limit.min(held);
            (initial, self.blocks.separators.min(held - initial))
        } else {
            (0, 0)
        };
        let rest = held - initial_held - separators_held;
        let local_held = rest.min(policy.local_limit());
        (initial_held, separators_held, rest - local_held, local_held)
    }

    /// The live readout (SEPLLM.md), cheap enough for every step.
    pub fn stats(&self) -> KvStats {
        let policy = &self.config.policy;
        let held = self.len();
        let (initial_held, separators_held, past_held, local_held) = self.block_sizes();
        let steps = self.tokens_seen.max(1) as f64;
        let oldest_after_initial = self.slot_stream_positions.get(initial_held);
        KvStats {
            tokens_seen: self.tokens_seen,
            slots_held: held,
            capacity: policy.capacity(),
            initial_held,
            initial_limit: if policy.evicts() { self.initial_limit } else { 0 },
            separators_held,
            separators_limit: policy.separator_limit(),
            past_held,
            local_held,
            local_limit: policy.local_limit(),
            tokens_to_next_compaction: policy.capacity().saturating_sub(held),
            bytes_held: held * self.bytes_per_slot,
            bytes_dense: self.tokens_seen * self.bytes_per_slot,
            kept_ratio: if self.tokens_seen == 0 { 1.0 } else { held as f64 / self.tokens_seen as f64 },
            kept_ratio_mean: if self.tokens_seen == 0 { 1.0 } else { self.counters.kept_ratio_sum / steps },
            slots_mean: self.counters.slots_sum / steps,
            slots_peak: self.counters.slots_peak,
            dropped_separators: self.counters.dropped_separators,
            dropped_other: self.counters.dropped_other,
            compactions: self.counters.compactions,
            horizon: oldest_after_initial.map_or(0, |&position| self.tokens_seen - position),
        }
    }

    /// For every stream position `0..tokens_seen`, what the cache holds of it now.
    pub fn token_states(&self) -> Vec<TokenState> {
        let (initial, separators, past, _) = self.block_sizes();
        let mut states = vec![TokenState::Evicted; self.tokens_seen];
        for (slot, &position) in self.slot_stream_positions.iter().enumerate() {
            let state = if slot < initial {
                TokenState::Initial
            } else if slot < initial + separators {
                TokenState::Separator
            } else if slot < initial + separators + past {
                TokenState::Past
            } else {
                TokenState::Local
            };
            if let Some(entry) = states.get_mut(position) {
                *entry = state;
            }
        }
        states
    }
}

/// What a cache holds of one token of the stream: the block of the slot that holds it, or
/// nothing. (A separator kept in the local window is `Local`: the window holds it as a whole.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    Initial,
    Separator,
    Past,
    Local,
    Evicted,
}

/// One step of a session's feed, as the worker performs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// Prompt tokens, prefilled in the worker's chunks.
    Prefill(Vec<u32>),
    /// One generated token fed back.
    Decode(u32),
}

/// A session's cache without tensors: the same decisions as the worker's session, at the cost of
/// bookkeeping only (a whole conversation replays in microseconds).
#[derive(Debug, Clone)]
pub struct CacheSimulator {
    book: SlotBook,
    /// Every token fed so far, as the worker's session remembers it.
    fed: Vec<u32>,
}

impl CacheSimulator {
    pub fn new(config: CacheConfig, separators: Arc<SeparatorSet>, bytes_per_slot: usize) -> Self {
        Self { book: SlotBook::new(config, separators, bytes_per_slot), fed: Vec::new() }
    }

    pub fn book(&self) -> &SlotBook {
        &self.book
    }

    /// The tokens fed so far: stream position i is `fed()[i]`.
    pub fn fed(&self) -> &[u32] {
        &self.fed
    }

    pub fn stats(&self) -> KvStats {
        self.book.stats()
    }

    pub fn token_states(&self) -> Vec<TokenState> {
        self.book.token_states()
    }

    pub fn protect_initial(&mut self, tokens: usize) -> Result<()> {
        self.book.protect_initial(tokens)
    }

    /// Feeds one step.
    pub fn feed(&mut self, feed: &Feed) -> Result<()> {
        match feed {
            Feed::Prefill(tokens) => self.prefill(tokens),
            Feed::Decode(token) => self.decode(*token),
        }
    }

    /// Prefills `tokens` in the chunks the engine uses: the worker cuts a prompt into pieces of
    /// `DEFAULT_PREFILL_CHUNK` (reporting progress after each), and `LlamaModel::prefill` cuts
    /// each piece again into chunks of at most `max_chunk()` (read once per piece), each one
    /// reserved (maybe compacting) and committed as a unit. Cut differently, compactions would
    /// happen at other points and keep other tokens.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        for piece in tokens.chunks(DEFAULT_PREFILL_CHUNK) {
            let chunk_size = DEFAULT_PREFILL_CHUNK.min(self.book.max_chunk()).max(1);
            for chunk in piece.chunks(chunk_size) {
                self.append(chunk)?;
            }
        }
        Ok(())
    }

    /// Feeds one generated token (a decode step: `LlamaModel::prefill` of one token).
    pub fn decode(&mut self, token: u32) -> Result<()> {
        self.append(&[token])
    }

    /// `KvCache::reserve` then `KvCache::commit`, without the tensors.
    fn append(&mut self, chunk: &[u32]) -> Result<()> {
        if let Some(plan) = self.book.plan_before_append(chunk.len()) {
            self.book.apply(&plan);
        }
        self.book.check_fits(chunk.len())?;
        if let Some(plan) = self.book.commit(chunk) {
            self.book.apply(&plan);
        }
        self.fed.extend_from_slice(chunk);
        Ok(())
    }

    /// The prompt phase of one generation, as `worker::Worker::generate` runs it on a warm
    /// session: reuse the longest prefix already fed (at least one prompt token is fed, for its
    /// logits); roll a never-compacted cache back to it, or rebuild a compacted one from scratch;
    /// protect the system turn of a fresh cache; prefill the rest. Returns the tokens reused.
    pub fn prompt(&mut self, prompt_tokens: &[u32], protected_tokens: usize) -> Result<usize> {
        if prompt_tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let mut reused = self.fed.iter().zip(prompt_tokens).take_while(|(a, b)| a == b).count();
        reused = reused.min(prompt_tokens.len() - 1);
        if reused < self.fed.len() {
            if self.book.truncate(reused) {
                self.fed.truncate(reused);
            } else {
                self.book.clear();
                self.fed.clear();
                reused = 0;
            }
        }
        if self.fed.is_empty() {
            self.book.protect_initial(protected_tokens)?;
        }
        self.prefill(&prompt_tokens[reused..])?;
        Ok(reused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache_policy::{RopePositions, SepParams};
    use crate::kv_cache::{KvCache, KvShape, RopeSpec};
    use candle_core::{Device, Tensor};

    fn shape() -> KvShape {
        KvShape { n_layer: 2, n_kv_head: 1, head_dim: 2 }
    }

    fn real_cache(config: &CacheConfig, separators: &Arc<SeparatorSet>) -> KvCache {
        let rope = RopeSpec { freq_base: 10_000.0, head_dim: 2, freq_factors: None };
        KvCache::new(config.clone(), shape(), rope, separators.clone(), &Device::Cpu)
    }

    /// Feeds a real cache the way the model does: `reserve`, write every layer, `commit`, per chunk
    /// (the same two-level chunking as the worker and `LlamaModel::prefill`).
    fn feed_real(cache: &mut KvCache, feed: &Feed) -> Result<()> {
        let append = |cache: &mut KvCache, chunk: &[u32]| -> Result<()> {
            cache.reserve(chunk.len())?;
            let data: Vec<f32> = chunk.iter().flat_map(|&t| [t as f32, 1.0]).collect();
            let tensor = Tensor::from_vec(data, (1, chunk.len(), 2), &Device::Cpu)?;
            for layer in 0..2 {
                cache.append_layer(layer, &tensor, &tensor)?;
            }
            cache.commit(chunk)
        };
        match feed {
            Feed::Prefill(tokens) => {
                for piece in tokens.chunks(DEFAULT_PREFILL_CHUNK) {
                    for chunk in piece.chunks(DEFAULT_PREFILL_CHUNK.min(cache.max_chunk()).max(1)) {
                        append(cache, chunk)?;
                    }
                }
                Ok(())
            }
            Feed::Decode(token) => append(cache, &[*token]),
        }
    }

    /// A deterministic stream where every fifth-ish token is a separator (id 0).
    fn tokens(seed: u32, n: usize) -> Vec<u32> {
        (0..n as u32).map(|i| if (i * 7 + seed).is_multiple_of(5) { 0 } else { 10 + (i * 13 + seed) % 50 }).collect()
    }

    fn feeds() -> Vec<Feed> {
        let mut feeds = vec![Feed::Prefill(tokens(1, 700))];
        feeds.extend(tokens(2, 90).into_iter().map(Feed::Decode));
        feeds.push(Feed::Prefill(tokens(3, 37)));
        feeds.extend(tokens(4, 300).into_iter().map(Feed::Decode));
        feeds.push(Feed::Prefill(tokens(5, 1100)));
        feeds.extend(tokens(6, 20).into_iter().map(Feed::Decode));
        feeds
    }

    fn configs() -> Vec<CacheConfig> {
        let sep = |a, s, w, c| {
            CacheConfig::new(CachePolicy::Sep(SepParams { initial: a, separators: s, local: w, capacity: c }))
        };
        let mut step = sep(4, 16, 32, 64);
        step.timing = CompactionTiming::AfterStep;
        let mut abs = CacheConfig::new(CachePolicy::Streaming { initial: 4, capacity: 100 });
        abs.positions = RopePositions::Stream;
        vec![
            sep(4, 16, 32, 64),
            sep(4, 128, 256, 512),
            step,
            CacheConfig::new(CachePolicy::Streaming { initial: 4, capacity: 100 }),
            abs,
            CacheConfig::new(CachePolicy::Dense { capacity: 8192 }),
        ]
    }

    #[test]
    fn the_simulator_matches_a_real_cache_step_for_step() -> Result<()> {
        let separators = Arc::new(SeparatorSet::from_ids(&[0]));
        for config in configs() {
            let mut real = real_cache(&config, &separators);
            let mut simulated =
                CacheSimulator::new(config.clone(), separators.clone(), shape().bytes_per_slot(config.format));
            real.protect_initial(9)?;
            simulated.protect_initial(9)?;
            for feed in feeds() {
                feed_real(&mut real, &feed)?;
                simulated.feed(&feed)?;
                assert_eq!(real.slot_stream_positions(), simulated.book().slot_stream_positions(), "{config}");
                assert_eq!(real.slot_tokens(), simulated.book().slot_tokens(), "{config}");
                assert_eq!(real.stats(), simulated.stats(), "{config}");
            }
            assert!(config.policy.evicts() == (simulated.stats().compactions > 0), "{config}");
        }
        Ok(())
    }

    #[test]
    fn token_states_follow_the_blocks() -> Result<()> {
        // Token 0 is the separator; a=2, s=2, w=3, c=10 (the policy test's stream).
        let config =
            CacheConfig::new(CachePolicy::Sep(SepParams { initial: 2, separators: 2, local: 3, capacity: 10 }));
        let mut simulator = CacheSimulator::new(config, Arc::new(SeparatorSet::from_ids(&[0])), 16);
        for token in [5, 5, 0, 5, 0, 5, 0, 5, 5, 0, 5] {
            simulator.decode(token)?;
        }
        use TokenState::*;
        // Slots: [0 1 | 4 6 | 7 | 8 9 10].
        assert_eq!(
            simulator.token_states(),
            [Initial, Initial, Evicted, Evicted, Separator, Evicted, Separator, Past, Local, Local, Local]
        );
        let stats = simulator.stats();
        assert_eq!((stats.initial_held, stats.separators_held, stats.past_held, stats.local_held), (2, 2, 1, 3));
        assert_eq!(serde_json::to_string(&Separator).ok().as_deref(), Some("\"separator\""));
        Ok(())
    }

    #[test]
    fn a_rewritten_history_rolls_back_or_rebuilds_as_the_worker_does() -> Result<()> {
        let config = CacheConfig::new(CachePolicy::Streaming { initial: 2, capacity: 8 });
        let mut simulator = CacheSimulator::new(config, Arc::new(SeparatorSet::default()), 1);
        // Never compacted: rolled back to the shared prefix.
        assert_eq!(simulator.prompt(&[1, 2, 3], 0)?, 0);
        simulator.decode(4)?;
        assert_eq!(simulator.prompt(&[1, 2, 9, 9], 0)?, 2);
        assert_eq!(simulator.fed(), &[1, 2, 9, 9]);
        assert_eq!(simulator.stats().tokens_seen, 4);
        // Compacted: a divergent prompt rebuilds from scratch.
        simulator.prompt(&[1, 2, 9, 9, 5, 6, 7, 8, 9, 10], 0)?;
        assert!(simulator.stats().compactions > 0);
        assert_eq!(simulator.prompt(&[1, 2, 3], 0)?, 0);
        assert_eq!(simulator.stats().compactions, 0);
        assert_eq!(simulator.fed(), &[1, 2, 3]);
        // The whole prompt equal to what was fed still feeds its last token again.
        assert_eq!(simulator.prompt(&[1, 2, 3], 0)?, 2);
        assert_eq!(simulator.stats().tokens_seen, 3);
        Ok(())
    }
}
