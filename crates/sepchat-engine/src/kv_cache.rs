//! The KV cache: one ordered list of slots shared by every layer.
//!
//! Each slot holds the key and value vectors of one token in every layer, plus the token id and
//! the token's position in the stream. The model asks the cache where new tokens go
//! ([`KvCache::reserve`], [`KvCache::next_rope_position`]), writes each layer's keys and values
//! in place ([`KvCache::append_layer`]), then commits the chunk ([`KvCache::commit`]). Positions
//! and the attention mask come from the cache, never from a global counter, so a policy that
//! drops slots (StreamingLLM, SepCache) plugs in here without touching the forward pass.
//!
//! Buffers are preallocated per layer and written in place; they grow geometrically up to the
//! policy's capacity, so a decode step never concatenates (and copies) the whole cache.

use std::io::{Read, Write};
use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::cache_map::{Counters, SlotBook};
use crate::cache_policy::Blocks;
pub use crate::cache_policy::{CacheConfig, CachePolicy, CompactionTiming, RopePositions, SepParams};
use crate::error::{EngineError, Result};
use crate::kv_format::{KvFormat, KvRows};

/// Shape of one layer's cache, derived from the model.
#[derive(Debug, Clone, Copy)]
pub struct KvShape {
    pub n_layer: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Bytes one slot takes across all layers (keys and values) stored in `format`.
    pub fn bytes_per_slot(&self, format: KvFormat) -> usize {
        self.n_layer * 2 * self.n_kv_head * format.row_bytes(self.head_dim)
    }
}

/// One layer's preallocated key and value buffers, `[n_kv_head, allocated, head_dim]`.
struct LayerBuffers {
    keys: KvRows,
    values: KvRows,
}

/// The RoPE parameters a cache needs to re-rotate the keys a compaction moves.
#[derive(Debug, Clone)]
pub struct RopeSpec {
    pub freq_base: f32,
    pub head_dim: usize,
    /// Per-pair divisors of the angle (Llama 3's `rope_freqs`), if the model has them.
    pub freq_factors: Option<Vec<f32>>,
}

impl RopeSpec {
    /// cos and sin of the rotation by `delta` positions for every pair, appended to `cos`/`sin`.
    /// Computed in f64: a key re-rotated many times over a long chat should not drift.
    fn push_rotation(&self, delta: f64, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
        let pairs = self.head_dim / 2;
        for pair in 0..pairs {
            let factor = self.freq_factors.as_ref().and_then(|f| f.get(pair)).copied().unwrap_or(1.0);
            let theta = f64::from(self.freq_base).powf(-2.0 * pair as f64 / self.head_dim as f64) / f64::from(factor);
            let angle = delta * theta;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
}

/// Which token ids are separators, as a lookup table over the vocabulary.
#[derive(Debug, Clone, Default)]
pub struct SeparatorSet {
    flags: Vec<bool>,
}

impl SeparatorSet {
    pub fn from_ids(ids: &[u32]) -> Self {
        let len = ids.iter().map(|&id| id as usize + 1).max().unwrap_or(0);
        let mut flags = vec![false; len];
        for &id in ids {
            flags[id as usize] = true;
        }
        Self { flags }
    }

    pub fn contains(&self, id: u32) -> bool {
        self.flags.get(id as usize).copied().unwrap_or(false)
    }

    pub fn ids(&self) -> Vec<u32> {
        (0u32..).zip(&self.flags).filter(|(_, &flag)| flag).map(|(id, _)| id).collect()
    }
}

/// Statistics about the cache, cheap to read after every step (SEPLLM.md's live readout).
/// Serializable so faces can stream them field by field (`sepchat ask --stats-json`).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct KvStats {
    /// T: every token processed in this conversation, template tokens included.
    pub tokens_seen: usize,
    /// L: slots held now.
    pub slots_held: usize,
    /// c: the most slots the policy holds.
    pub capacity: usize,
    /// Slots per block, and each block's limit (a, s, w; the past window has none of its own).
    pub initial_held: usize,
    pub initial_limit: usize,
    pub separators_held: usize,
    pub separators_limit: usize,
    pub past_held: usize,
    pub local_held: usize,
    pub local_limit: usize,
    /// Tokens that fit before the next compaction (for a dense cache: before it is full).
    pub tokens_to_next_compaction: usize,
    /// Bytes of KV cache held now (L slots) and bytes a dense cache of T tokens would need.
    pub bytes_held: usize,
    pub bytes_dense: usize,
    /// L / T now, and averaged over every step so far.
    pub kept_ratio: f64,
    pub kept_ratio_mean: f64,
    /// Slots attention saw, averaged over steps, and the most it ever saw.
    pub slots_mean: f64,
    pub slots_peak: usize,
    /// Separators pushed out of a full separator block, and every other token evicted.
    pub dropped_separators: usize,
    pub dropped_other: usize,
    pub compactions: usize,
    /// How far back the oldest slot after the initial block reaches (T minus its stream
    /// position); 0 when nothing but the initial block is held.
    pub horizon: usize,
}

/// The cache of one conversation.
pub struct KvCache {
    shape: KvShape,
    rope: RopeSpec,
    device: Device,
    layers: Vec<LayerBuffers>,
    /// Slots the buffers have room for; grows geometrically up to the policy's capacity.
    allocated: usize,
    /// Slot tokens, stream positions, blocks and counters: shared with the tensor-free
    /// [`crate::cache_map::CacheSimulator`], so the UI's simulations cannot drift from the engine.
    book: SlotBook,
    /// With cache-slot positions, the key of slot i is rotated at position `i + rope_offset`.
    /// RoPE scores depend only on the difference of positions, so this equals giving slot i the
    /// position i, while a compaction leaves the kept tail of the cache unrotated (see `gather`).
    rope_offset: usize,
    /// The initial block's keys as first written (at positions `i + pristine_offset`), per layer:
    /// re-rotated from these copies at every compaction, never from a key rotated before, so
    /// StreamingLLM's one-position shift per step cannot accumulate f16 rounding (a rotation by
    /// one position is below half an f16 ulp for the slow RoPE pairs and would round to nothing).
    pristine_initial: Vec<KvRows>,
    pristine_offset: usize,
}

/// A KV snapshot file starts with these 8 bytes, then the JSON header's length (u64 little-endian),
/// the header ([`SnapshotHeader`]), then for every layer the held slots' keys and then values as
/// [`KvRows::write_bytes`] writes them in the cache's format (little-endian f16, `[n_kv_head,
/// slots, head_dim]`; or for `kv=q8` the i8 values so, then the f32 row scales, `[n_kv_head, slots]`).
/// The format is part of the header's cache setting, which a restore must match.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"SEPKV\0\0\x01";
/// Bumped whenever the layout above or the header's meaning changes.
const SNAPSHOT_FORMAT: u32 = 2;
/// A header lists every token of the conversation; 64 MiB is millions of tokens.
const MAX_SNAPSHOT_HEADER: u64 = 64 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotHeader {
    format: u32,
    engine_version: String,
    model_fingerprint: String,
    cache: String,
    n_layer: usize,
    n_kv_head: usize,
    head_dim: usize,
    slot_tokens: Vec<u32>,
    slot_stream_positions: Vec<usize>,
    initial_limit: usize,
    separators_held: usize,
    /// Restored keys keep their rotation; the initial block's pristine copy is taken anew at the
    /// next compaction.
    rope_offset: usize,
    tokens_seen: usize,
    counters: Counters,
    stream_tokens: Vec<u32>,
}

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub slots: usize,
    pub tokens_seen: usize,
    /// Bytes of keys and values written.
    pub bytes: usize,
}

fn snapshot_error(message: String) -> EngineError {
    EngineError::SnapshotCorrupt(message)
}

/// Past this rope offset a compaction rotates every kept key back to offset 0 (at most once in a
/// key's life for any c below it), so RoPE angles are always computed for positions where f32
/// represents them as exactly as in a dense cache of the trained context.
const RENORMALIZE_OFFSET: usize = 8192;

/// Slots allocated the first time a cache is written; small so an idle conversation costs little.
const INITIAL_ALLOCATION: usize = 256;

impl KvCache {
    /// An empty cache; no buffer is allocated until the first token arrives.
    pub fn new(
        config: CacheConfig,
        shape: KvShape,
        rope: RopeSpec,
        separators: Arc<SeparatorSet>,
        device: &Device,
    ) -> Self {
        let bytes_per_slot = shape.bytes_per_slot(config.format);
        Self {
            shape,
            rope,
            device: device.clone(),
            layers: Vec::new(),
            allocated: 0,
            book: SlotBook::new(config, separators, bytes_per_slot),
            rope_offset: 0,
            pristine_initial: Vec::new(),
            pristine_offset: 0,
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.book.config
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.book.config.policy
    }

    /// Slots held now (L).
    pub fn len(&self) -> usize {
        self.book.len()
    }

    pub fn is_empty(&self) -> bool {
        self.book.is_empty()
    }

    /// Token ids held, in slot order.
    pub fn slot_tokens(&self) -> &[u32] {
        self.book.slot_tokens()
    }

    /// Stream position of every slot, in slot order.
    pub fn slot_stream_positions(&self) -> &[usize] {
        self.book.slot_stream_positions()
    }

    pub fn tokens_seen(&self) -> usize {
        self.book.tokens_seen()
    }

    /// Compactions so far; while 0 the cache holds exactly the stream's tokens.
    pub fn compactions(&self) -> usize {
        self.book.compactions()
    }

    pub fn separators(&self) -> &SeparatorSet {
        &self.book.separators
    }

    /// The slot bookkeeping without the tensors (what [`crate::cache_map`] simulates).
    pub fn book(&self) -> &SlotBook {
        &self.book
    }

    /// Raises the initial block to cover the first `tokens` of the stream (a chat's system
    /// turn, so the persona is never evicted). Refused once a compaction has happened, or when
    /// the block would leave no room for the rest of the policy.
    pub fn protect_initial(&mut self, tokens: usize) -> Result<()> {
        self.book.protect_initial(tokens)
    }

    /// The longest chunk [`KvCache::reserve`] always accepts: prompts are prefilled in pieces
    /// no longer than this, so attention never sees more than c keys.
    pub fn max_chunk(&self) -> usize {
        self.book.max_chunk()
    }

    /// Makes room for `n_new` tokens: compacts first when the policy evicts and the chunk would
    /// pass c, grows the buffers, or refuses when the chunk cannot fit. Called once per chunk,
    /// before any layer is written.
    pub fn reserve(&mut self, n_new: usize) -> Result<()> {
        // After-step compaction lets attention see one key more than c, as the reference protocol does.
        if let Some(plan) = self.book.plan_before_append(n_new) {
            self.gather(&plan.keep)?;
            self.book.apply(&plan);
        }
        let needed = self.book.check_fits(n_new)?;
        if needed > self.allocated {
            let target = needed.max(INITIAL_ALLOCATION).max(self.allocated * 2).min(self.book.limit());
            self.grow_to(target)?;
        }
        Ok(())
    }

    /// RoPE position of the next token: its slot index plus the cache's rope offset (relative
    /// positions are exactly those of slot indices, and the offset is folded back below
    /// `RENORMALIZE_OFFSET`, so positions stay bounded forever), or its stream position for the
    /// `pos=abs` ablation.
    pub fn next_rope_position(&self) -> usize {
        match self.book.config.positions {
            RopePositions::CacheSlot => self.len() + self.rope_offset,
            RopePositions::Stream => self.book.tokens_seen,
        }
    }

    /// Writes the chunk's keys and values (`[n_kv_head, n_new, head_dim]`, already rotated) of
    /// one layer after the held slots, rounded to the cache's format, and returns views of all
    /// keys and values the chunk may attend to (`[n_kv_head, len + n_new, head_dim]`, as
    /// stored). `reserve` must have been called.
    pub fn append_layer(&mut self, layer_idx: usize, keys: &Tensor, values: &Tensor) -> Result<(KvRows, KvRows)> {
        let offset = self.len();
        let n_new = keys.dim(1)?;
        let layer = self.layers.get(layer_idx).ok_or_else(|| {
            EngineError::Candle(candle_core::Error::Msg(format!("KV cache has no layer {layer_idx}")))
        })?;
        layer.keys.write(keys, offset)?;
        layer.values.write(values, offset)?;
        let total = offset + n_new;
        Ok((layer.keys.narrow(0, total)?, layer.values.narrow(0, total)?))
    }

    /// Records the chunk's tokens as held slots, once every layer has been written; with
    /// after-step timing, compacts when the step left more than c slots.
    pub fn commit(&mut self, tokens: &[u32]) -> Result<()> {
        if let Some(plan) = self.book.commit(tokens) {
            self.gather(&plan.keep)?;
            self.book.apply(&plan);
        }
        Ok(())
    }

    /// Forgets every slot after the first `keep`: used to reuse a cached prefix when a new
    /// prompt shares it. Returns false (and changes nothing) once a compaction has happened,
    /// because the slots no longer match the stream one to one.
    pub fn truncate(&mut self, keep: usize) -> bool {
        self.book.truncate(keep)
    }

    /// Empties the cache but keeps its buffers for reuse.
    pub fn clear(&mut self) {
        self.rope_offset = 0;
        self.pristine_initial.clear();
        self.pristine_offset = 0;
        self.book.clear();
    }

    pub fn stats(&self) -> KvStats {
        self.book.stats()
    }

    /// Writes the cache (held slots of every layer, slot bookkeeping and statistics) to `writer`,
    /// so a conversation can be restored later without replaying it. `stream_tokens` are the
    /// tokens fed so far (what a new prompt must extend); `model_fingerprint` identifies the
    /// weights the keys were computed with. Format: see [`SNAPSHOT_MAGIC`].
    pub fn write_snapshot(
        &self,
        writer: &mut impl Write,
        stream_tokens: &[u32],
        model_fingerprint: &str,
    ) -> Result<SnapshotInfo> {
        let header = SnapshotHeader {
            format: SNAPSHOT_FORMAT,
            engine_version: env!("CARGO_PKG_VERSION").to_string(),
            model_fingerprint: model_fingerprint.to_string(),
            cache: self.book.config.to_string(),
            n_layer: self.shape.n_layer,
            n_kv_head: self.shape.n_kv_head,
            head_dim: self.shape.head_dim,
            slot_tokens: self.book.slot_tokens.clone(),
            slot_stream_positions: self.book.slot_stream_positions.clone(),
            initial_limit: self.book.initial_limit,
            separators_held: self.book.blocks.separators,
            rope_offset: self.rope_offset,
            tokens_seen: self.book.tokens_seen,
            counters: self.book.counters,
            stream_tokens: stream_tokens.to_vec(),
        };
        let header_bytes = serde_json::to_vec(&header).map_err(|error| snapshot_error(error.to_string()))?;
        writer.write_all(SNAPSHOT_MAGIC)?;
        writer.write_all(&(header_bytes.len() as u64).to_le_bytes())?;
        writer.write_all(&header_bytes)?;
        let held = self.len();
        for layer in &self.layers {
            for rows in [&layer.keys, &layer.values] {
                rows.narrow(0, held)?.write_bytes(writer)?;
            }
        }
        writer.flush()?;
        let bytes = held * self.shape.bytes_per_slot(self.book.config.format);
        Ok(SnapshotInfo { slots: held, tokens_seen: self.book.tokens_seen, bytes })
    }

    /// Rebuilds a cache written by [`KvCache::write_snapshot`] into this (empty) cache, and returns the stream
    /// tokens it had been fed. Refuses, with [`EngineError::SnapshotMismatch`], a snapshot of another engine
    /// version, model, cache setting or shape: its keys would be wrong for this conversation.
    pub fn read_snapshot(&mut self, reader: &mut impl Read, model_fingerprint: &str) -> Result<Vec<u32>> {
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic)?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(snapshot_error("not a sepchat KV snapshot".to_string()));
        }
        let mut length = [0u8; 8];
        reader.read_exact(&mut length)?;
        let length = u64::from_le_bytes(length);
        if length > MAX_SNAPSHOT_HEADER {
            return Err(snapshot_error(format!("header of {length} bytes is implausibly large")));
        }
        let mut header_bytes = vec![0u8; length as usize];
        reader.read_exact(&mut header_bytes)?;
        let header: SnapshotHeader =
            serde_json::from_slice(&header_bytes).map_err(|error| snapshot_error(error.to_string()))?;
        let mismatch = |what: &str, theirs: String, ours: String| {
            Err(EngineError::SnapshotMismatch(format!("{what} is {theirs}, expected {ours}")))
        };
        if header.format != SNAPSHOT_FORMAT {
            return mismatch("format", header.format.to_string(), SNAPSHOT_FORMAT.to_string());
        }
        if header.engine_version != env!("CARGO_PKG_VERSION") {
            return mismatch("engine version", header.engine_version, env!("CARGO_PKG_VERSION").to_string());
        }
        if header.model_fingerprint != model_fingerprint {
            return mismatch("model", header.model_fingerprint, model_fingerprint.to_string());
        }
        if header.cache != self.book.config.to_string() {
            return mismatch("cache setting", header.cache, self.book.config.to_string());
        }
        let KvShape { n_layer, n_kv_head, head_dim } = self.shape;
        if (header.n_layer, header.n_kv_head, header.head_dim) != (n_layer, n_kv_head, head_dim) {
            return mismatch(
                "shape",
                format!("{}x{}x{}", header.n_layer, header.n_kv_head, header.head_dim),
                format!("{n_layer}x{n_kv_head}x{head_dim}"),
            );
        }
        let held = header.slot_tokens.len();
        let limit = self.book.config.policy.capacity() + 1;
        let consistent = header.slot_stream_positions.len() == held
            && held <= limit
            && header.tokens_seen >= held
            && header.stream_tokens.len() == header.tokens_seen
            && header.slot_stream_positions.windows(2).all(|pair| pair[0] < pair[1])
            && header.slot_stream_positions.last().is_none_or(|&last| last < header.tokens_seen)
            && header.separators_held <= held;
        if !consistent {
            return Err(snapshot_error("slot bookkeeping is inconsistent".to_string()));
        }
        self.clear();
        self.grow_to(held.max(INITIAL_ALLOCATION).min(limit))?;
        let format = self.book.config.format;
        for layer in &self.layers {
            for buffer in [&layer.keys, &layer.values] {
                let rows = KvRows::read_bytes(reader, format, n_kv_head, held, head_dim, &self.device)?;
                if held > 0 {
                    buffer.set_rows(&rows, 0)?;
                }
            }
        }
        self.book.slot_tokens = header.slot_tokens;
        self.book.slot_stream_positions = header.slot_stream_positions;
        self.book.initial_limit = header.initial_limit;
        self.book.blocks = Blocks { initial: self.book.initial_limit.min(held), separators: header.separators_held };
        self.book.tokens_seen = header.tokens_seen;
        self.rope_offset = header.rope_offset;
        self.book.counters = header.counters;
        Ok(header.stream_tokens)
    }

    /// Moves the kept slots to the front of every layer's buffers with one index vector.
    ///
    /// Cache-slot positions: keys are stored after RoPE, and slot i's key is rotated at
    /// `i + rope_offset`. A compaction picks the new offset so that the kept tail (the local
    /// window, or StreamingLLM's recent tokens: slots that keep their distance to the newest
    /// token) needs no rotation at all; only the slots in front of it (initial block, harvested
    /// separators) are re-rotated, by (new position - old position), the initial block from its
    /// pristine copy. RoPE is a rotation, so that equals rotating the original keys at their new
    /// positions. When the offset passes `RENORMALIZE_OFFSET` every kept key is rotated back
    /// once, so positions stay small (f32 angles stay exact) however long the conversation.
    fn gather(&mut self, keep: &[usize]) -> Result<()> {
        let n_keep = keep.len();
        let Some(&last_kept) = keep.last() else {
            return Ok(());
        };
        let indices: Vec<u32> = keep.iter().map(|&slot| slot as u32).collect();
        let indices = Tensor::from_vec(indices, n_keep, &self.device)?;
        let cache_slots = self.book.config.positions == RopePositions::CacheSlot;
        let old_offset = self.rope_offset;
        // The newest kept key keeps its position: its distance to the next token is unchanged.
        let mut new_offset = last_kept + old_offset - (n_keep - 1);
        if new_offset > RENORMALIZE_OFFSET {
            new_offset = 0;
        }
        // Kept slots whose position does not change: the tail that moves as one block.
        let unchanged = |(new_slot, &old_slot): (usize, &usize)| new_slot + new_offset == old_slot + old_offset;
        let tail = keep.iter().enumerate().rev().take_while(|&pair| unchanged(pair)).count();
        let n_rotated = if cache_slots { n_keep - tail } else { 0 };
        let n_initial = self.book.initial_limit.min(n_keep).min(n_rotated);
        if cache_slots && n_initial > 0 && self.pristine_initial.is_empty() {
            // The first compaction: the initial block has never been rotated since it was written.
            self.pristine_offset = old_offset;
            self.pristine_initial = self
                .layers
                .iter()
                // `copy`, not `contiguous`: a view that is already contiguous would share the buffer's storage,
                // and the writes below would change the "pristine" keys too.
                .map(|layer| layer.keys.narrow(0, n_initial)?.copy())
                .collect::<Result<_>>()?;
        }
        let n_pristine = if cache_slots {
            n_initial.min(self.pristine_initial.first().map_or(0, |rows| rows.slots().unwrap_or(0)))
        } else {
            0
        };
        let rotation = if n_rotated > 0 {
            let half = self.shape.head_dim / 2;
            let mut cos = Vec::with_capacity(n_rotated * half);
            let mut sin = Vec::with_capacity(n_rotated * half);
            for (new_slot, &old_slot) in keep.iter().enumerate().take(n_rotated) {
                let target = (new_slot + new_offset) as f64;
                let source =
                    if new_slot < n_pristine { new_slot + self.pristine_offset } else { old_slot + old_offset };
                self.rope.push_rotation(target - source as f64, &mut cos, &mut sin);
            }
            Some((
                Tensor::from_vec(cos, (n_rotated, half), &self.device)?,
                Tensor::from_vec(sin, (n_rotated, half), &self.device)?,
            ))
        } else {
            None
        };
        for (layer_idx, layer) in self.layers.iter().enumerate() {
            // The whole buffer is contiguous (index_select needs that); every index is below `held`.
            let keys = layer.keys.index_select(&indices)?;
            let values = layer.values.index_select(&indices)?;
            if let Some((cos, sin)) = &rotation {
                // Rotated in f32 and rounded back to the cache's format once: an 8-bit key is
                // rounded again at each compaction that moves it, the initial block never more
                // than once (it always starts from its pristine copy).
                let front = match self.pristine_initial.get(layer_idx) {
                    Some(pristine) if n_pristine > 0 => {
                        let mut parts = vec![pristine.narrow(0, n_pristine)?.to_f32()?];
                        if n_rotated > n_pristine {
                            parts.push(keys.narrow(n_pristine, n_rotated - n_pristine)?.to_f32()?);
                        }
                        Tensor::cat(&parts, 1)?
                    }
                    _ => keys.narrow(0, n_rotated)?.to_f32()?,
                };
                let widened = front.unsqueeze(0)?.contiguous()?;
                let rotated = candle_nn::rotary_emb::rope_i(&widened, cos, sin)?.squeeze(0)?;
                layer.keys.write(&rotated.contiguous()?, 0)?;
                if n_keep > n_rotated {
                    layer.keys.set_rows(&keys.narrow(n_rotated, n_keep - n_rotated)?, n_rotated)?;
                }
            } else {
                layer.keys.set_rows(&keys, 0)?;
            }
            layer.values.set_rows(&values, 0)?;
        }
        if cache_slots {
            self.rope_offset = new_offset;
        }
        Ok(())
    }

    fn grow_to(&mut self, new_allocated: usize) -> Result<()> {
        let KvShape { n_layer, n_kv_head, head_dim } = self.shape;
        let held = self.len();
        let mut layers = Vec::with_capacity(n_layer);
        let format = self.book.config.format;
        for layer_idx in 0..n_layer {
            let keys = KvRows::zeros(format, n_kv_head, new_allocated, head_dim, &self.device)?;
            let values = KvRows::zeros(format, n_kv_head, new_allocated, head_dim, &self.device)?;
            if let Some(old) = self.layers.get(layer_idx) {
                if held > 0 {
                    keys.set_rows(&old.keys.narrow(0, held)?, 0)?;
                    values.set_rows(&old.values.narrow(0, held)?, 0)?;
                }
            }
            layers.push(LayerBuffers { keys, values });
        }
        self.layers = layers;
        self.allocated = new_allocated;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache_policy::SepParams;
    use candle_core::DType;

    fn shape() -> KvShape {
        KvShape { n_layer: 2, n_kv_head: 1, head_dim: 2 }
    }

    /// A 4-dim key (two RoPE pairs) rotated to `position`, computed independently of the cache's own code.
    fn rotate_key(rope: &RopeSpec, k: [f32; 4], position: usize) -> Vec<f32> {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        rope.push_rotation(position as f64, &mut cos, &mut sin);
        vec![
            k[0] * cos[0] - k[1] * sin[0],
            k[0] * sin[0] + k[1] * cos[0],
            k[2] * cos[1] - k[3] * sin[1],
            k[2] * sin[1] + k[3] * cos[1],
        ]
    }

    fn cache_with(policy: CachePolicy, shape: KvShape, separators: &[u32]) -> KvCache {
        cache_in(KvFormat::F16, policy, shape, separators)
    }

    fn cache_in(format: KvFormat, policy: CachePolicy, shape: KvShape, separators: &[u32]) -> KvCache {
        let rope = RopeSpec { freq_base: 10_000.0, head_dim: shape.head_dim, freq_factors: None };
        let config = CacheConfig { format, ..CacheConfig::new(policy) };
        KvCache::new(config, shape, rope, Arc::new(SeparatorSet::from_ids(separators)), &Device::Cpu)
    }

    /// How far a stored key or value of magnitude <= 2.5 may be from the vector written: f16
    /// rounding and f32 rotation; for 8-bit rows, one step of the row's scale (half a step when
    /// written, half again when a compaction re-rotates it).
    fn tolerance(format: KvFormat) -> f32 {
        match format {
            KvFormat::F16 => 2e-3,
            KvFormat::Q8 => 2.5 / 127.0,
        }
    }

    fn dense(capacity: usize) -> KvCache {
        cache_with(CachePolicy::Dense { capacity }, shape(), &[])
    }

    /// Appends one token whose key and value in every layer are `vector`.
    fn push(cache: &mut KvCache, token: u32, vector: &[f32]) -> Result<()> {
        push_at(cache, token, |_| vector.to_vec())
    }

    /// Appends one token whose key and value are `vector_at(its RoPE position)`, asked after
    /// `reserve` (which may compact), as the model does.
    fn push_at(cache: &mut KvCache, token: u32, vector_at: impl Fn(usize) -> Vec<f32>) -> Result<()> {
        cache.reserve(1)?;
        let vector = vector_at(cache.next_rope_position());
        let tensor = Tensor::from_vec(vector.to_vec(), (1, 1, vector.len()), &Device::Cpu)?;
        for layer in 0..cache.shape.n_layer {
            cache.append_layer(layer, &tensor, &tensor)?;
        }
        cache.commit(&[token])
    }

    /// Keys of layer 0, `[slot][dim]`, for the held slots.
    fn keys(cache: &KvCache) -> Result<Vec<Vec<f32>>> {
        let keys = cache.layers[0].keys.narrow(0, cache.len())?.to_f32()?.squeeze(0)?;
        Ok(keys.to_vec2()?)
    }

    #[test]
    fn append_commit_and_views_keep_earlier_slots() -> Result<()> {
        let mut cache = dense(600);
        for step in 0..300u32 {
            cache.reserve(1)?;
            let value = Tensor::new(&[[[step as f32, -(step as f32)]]], &Device::Cpu)?;
            for layer in 0..2 {
                let (keys, values) = cache.append_layer(layer, &value, &value)?;
                assert_eq!(keys.to_f32()?.dims(), &[1, step as usize + 1, 2]);
                assert_eq!(values.to_f32()?.dims(), &[1, step as usize + 1, 2]);
            }
            cache.commit(&[step])?;
        }
        // Growth past the initial 256 slots must have copied the old slots.
        let (keys, _) = {
            cache.reserve(1)?;
            let value = Tensor::new(&[[[300f32, -300f32]]], &Device::Cpu)?;
            cache.append_layer(0, &value, &value)?
        };
        let firsts: Vec<f32> = keys.to_f32()?.squeeze(0)?.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
        let expected: Vec<f32> = (0..=300).map(|i| i as f32).collect();
        assert_eq!(firsts, expected);
        assert_eq!(cache.slot_stream_positions().last(), Some(&299));
        Ok(())
    }

    #[test]
    fn dense_refuses_past_capacity_with_a_clear_error() {
        let mut cache = dense(8);
        let error = cache.reserve(9).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("needs 9 KV slots"), "{error}");
        assert!(error.contains("at most 8"), "{error}");
    }

    #[test]
    fn stats_count_bytes_against_dense() -> Result<()> {
        let mut cache = dense(8);
        cache.reserve(3)?;
        let chunk = Tensor::zeros((1, 3, 2), DType::F32, &Device::Cpu)?;
        for layer in 0..2 {
            cache.append_layer(layer, &chunk, &chunk)?;
        }
        cache.commit(&[5, 6, 7])?;
        let stats = cache.stats();
        assert_eq!(stats.tokens_seen, 3);
        assert_eq!(stats.slots_held, 3);
        // 2 layers x (K and V) x 1 head x 2 dims x 2 bytes = 16 bytes per slot.
        assert_eq!(stats.bytes_held, 48);
        assert_eq!(stats.bytes_dense, 48);
        assert_eq!(stats.tokens_to_next_compaction, 5);
        Ok(())
    }

    #[test]
    fn compaction_gathers_slots_and_rerotates_moved_keys_to_their_new_slot() -> Result<()> {
        for format in [KvFormat::F16, KvFormat::Q8] {
            compaction_gathers_slots_and_rerotates_moved_keys_in(format)?;
        }
        Ok(())
    }

    fn compaction_gathers_slots_and_rerotates_moved_keys_in(format: KvFormat) -> Result<()> {
        // One KV head of 4 dims: two RoPE pairs with different frequencies.
        let shape = KvShape { n_layer: 2, n_kv_head: 1, head_dim: 4 };
        let policy = CachePolicy::Sep(SepParams { initial: 2, separators: 2, local: 3, capacity: 10 });
        let mut cache = cache_in(format, policy, shape, &[0]);
        let rope = cache.rope.clone();
        // Key of token i before RoPE, and the same key rotated at `position`.
        let raw = |i: usize| [1.0 + i as f32 * 0.1, -0.5, 0.25 * i as f32, 0.75];
        let rotated = |i: usize, position: usize| rotate_key(&rope, raw(i), position);
        let tokens = [5, 5, 0, 5, 0, 5, 0, 5, 5, 0, 5];
        for (i, &token) in tokens.iter().enumerate() {
            push_at(&mut cache, token, |position| rotated(i, position))?;
        }
        // The 11th token did not fit: the cache compacted before appending it.
        let stats = cache.stats();
        assert_eq!(stats.compactions, 1);
        // Slots 0..10 held [5 5 | 0 5 0 5 0 | 5 5 0]: the past window's separators 2, 4, 6 went to
        // the separator block (the oldest pushed out), the local window 7..10 stayed.
        assert_eq!(cache.slot_stream_positions(), &[0, 1, 4, 6, 7, 8, 9, 10][..]);
        assert_eq!(cache.slot_tokens(), &[5, 5, 0, 0, 5, 5, 0, 5][..]);
        assert_eq!((stats.initial_held, stats.separators_held, stats.past_held, stats.local_held), (2, 2, 1, 3));
        assert_eq!((stats.dropped_separators, stats.dropped_other), (1, 2));
        assert_eq!(stats.horizon, 11 - 4);
        // Keys sit at slot + rope offset: the local window (7..=10) kept its positions.
        assert_eq!(cache.rope_offset, 3);
        assert_eq!(cache.next_rope_position(), cache.len() + 3);
        for (slot, (key, &stream)) in keys(&cache)?.iter().zip(cache.slot_stream_positions()).enumerate() {
            let expected = rotated(stream, slot + cache.rope_offset);
            for (got, want) in key.iter().zip(&expected) {
                assert!((got - want).abs() < tolerance(format), "{format:?} slot {slot}: {key:?} vs {expected:?}");
            }
        }
        // Values are moved, never rotated: layer 1 holds the same as layer 0 here, checked via values.
        let values = cache.layers[1].values.narrow(0, cache.len())?.to_f32()?.squeeze(0)?.to_vec2::<f32>()?;
        let first_positions = [0, 1, 4, 6, 7, 8, 9, 10];
        for ((value, &stream), &position) in values.iter().zip(cache.slot_stream_positions()).zip(&first_positions) {
            let expected = rotated(stream, position);
            let close = value.iter().zip(&expected).all(|(a, b)| (a - b).abs() < tolerance(format));
            assert!(close, "{format:?}: {value:?} vs {expected:?}");
        }
        Ok(())
    }

    #[test]
    fn after_step_timing_lets_attention_see_c_plus_one_keys_then_compacts() -> Result<()> {
        let mut config = CacheConfig::new(CachePolicy::Streaming { initial: 1, capacity: 4 });
        config.timing = CompactionTiming::AfterStep;
        config.positions = RopePositions::Stream;
        let rope = RopeSpec { freq_base: 10_000.0, head_dim: 2, freq_factors: None };
        let mut cache = KvCache::new(config, shape(), rope, Arc::new(SeparatorSet::default()), &Device::Cpu);
        for token in 0..6u32 {
            assert_eq!(cache.next_rope_position(), token as usize);
            push(&mut cache, token, &[token as f32, 0.0])?;
            assert!(cache.len() <= 4);
        }
        assert_eq!(cache.slot_tokens(), &[0, 3, 4, 5][..]);
        let stats = cache.stats();
        assert_eq!(stats.slots_peak, 5);
        assert_eq!(stats.compactions, 2);
        // Stream positions are kept, so keys are only moved (not rotated).
        assert_eq!(keys(&cache)?.iter().map(|k| k[0]).collect::<Vec<_>>(), vec![0.0, 3.0, 4.0, 5.0]);
        Ok(())
    }

    #[test]
    fn a_truncated_prefix_is_refused_after_a_compaction() -> Result<()> {
        let mut cache = cache_with(CachePolicy::Streaming { initial: 1, capacity: 3 }, shape(), &[]);
        for token in 0..3 {
            push(&mut cache, token, &[1.0, 1.0])?;
        }
        assert!(cache.truncate(2));
        let stats = cache.stats();
        assert_eq!((stats.tokens_seen, stats.slots_peak), (2, 2));
        assert_eq!(stats.kept_ratio_mean, 1.0, "only the kept steps count: {stats:?}");
        assert_eq!(stats.slots_mean, 1.5, "slots 1 then 2: {stats:?}");
        push(&mut cache, 7, &[1.0, 1.0])?;
        push(&mut cache, 8, &[1.0, 1.0])?;
        assert_eq!(cache.compactions(), 1);
        assert!(!cache.truncate(1));
        Ok(())
    }

    #[test]
    fn the_system_turn_can_be_protected_only_while_it_fits() {
        let policy = CachePolicy::Sep(SepParams { initial: 4, separators: 4, local: 4, capacity: 20 });
        let mut cache = cache_with(policy, shape(), &[]);
        assert!(cache.protect_initial(11).is_ok());
        assert_eq!(cache.max_chunk(), 20 - (11 + 4 + 4));
        let error = cache.protect_initial(12).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("first 12 tokens"), "{error}");
    }

    #[test]
    fn streaming_shifts_by_one_every_step_without_drift() -> Result<()> {
        for format in [KvFormat::F16, KvFormat::Q8] {
            streaming_shifts_without_drift_in(format)?;
        }
        Ok(())
    }

    fn streaming_shifts_without_drift_in(format: KvFormat) -> Result<()> {
        // StreamingLLM evicts one token per step: a rotation by one position every step would
        // round away for the slow pairs in f16 (and add an 8-bit rounding per step). Keys must
        // stay where slot positions say.
        let shape = KvShape { n_layer: 1, n_kv_head: 1, head_dim: 4 };
        let mut config = CacheConfig::new(CachePolicy::Streaming { initial: 2, capacity: 40 });
        config.timing = CompactionTiming::AfterStep;
        config.format = format;
        let rope = RopeSpec { freq_base: 10_000.0, head_dim: 4, freq_factors: None };
        let mut cache = KvCache::new(config, shape, rope.clone(), Arc::new(SeparatorSet::default()), &Device::Cpu);
        let raw = |i: usize| [1.0 + (i % 7) as f32 * 0.1, -0.5, 0.3, 0.75 - (i % 5) as f32 * 0.1];
        let rotated = |i: usize, position: usize| rotate_key(&rope, raw(i), position);
        // Past RENORMALIZE_OFFSET too, so the fold-back is covered.
        for i in 0..9000 {
            push_at(&mut cache, i as u32, |position| rotated(i, position))?;
        }
        assert_eq!(cache.len(), 40);
        assert!(cache.rope_offset < RENORMALIZE_OFFSET + 40);
        // Relative to the newest key, every key sits at (its slot - newest slot).
        let newest = cache.len() - 1 + cache.rope_offset;
        for (slot, (key, &stream)) in keys(&cache)?.iter().zip(cache.slot_stream_positions()).enumerate() {
            let expected = rotated(stream, slot + cache.rope_offset);
            assert_eq!(slot + cache.rope_offset + (cache.len() - 1 - slot), newest);
            for (got, want) in key.iter().zip(&expected) {
                let close = (got - want).abs() < tolerance(format);
                assert!(close, "{format:?} slot {slot} (stream {stream}): {key:?} vs {expected:?}");
            }
        }
        Ok(())
    }
}
