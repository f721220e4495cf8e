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

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};

/// Keys and values are stored in f16, as llama.cpp stores them: half the memory of f32, and the
/// same rounding as the reference implementation our outputs are checked against.
pub const KV_DTYPE: DType = DType::F16;

/// Which slots the cache keeps. Only `Dense` exists yet; the eviction policies join this enum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachePolicy {
    /// Keep every token, up to `capacity` slots (the model's trained context); past it, a
    /// `ContextFull` error, never a silent truncation.
    Dense { capacity: usize },
}

impl CachePolicy {
    /// The most slots this policy ever holds.
    pub fn capacity(&self) -> usize {
        match self {
            Self::Dense { capacity } => *capacity,
        }
    }

    /// A short, stable name used in messages and exports.
    pub fn label(&self) -> String {
        match self {
            Self::Dense { capacity } => format!("dense:c={capacity}"),
        }
    }
}

/// Shape of one layer's cache, derived from the model.
#[derive(Debug, Clone, Copy)]
pub struct KvShape {
    pub n_layer: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Bytes one slot takes across all layers (keys and values, f16 like llama.cpp's cache).
    pub fn bytes_per_slot(&self) -> usize {
        self.n_layer * 2 * self.n_kv_head * self.head_dim * KV_DTYPE.size_in_bytes()
    }
}

/// One layer's preallocated key and value buffers, `[n_kv_head, allocated, head_dim]`.
struct LayerBuffers {
    keys: Tensor,
    values: Tensor,
}

/// Cheap statistics about the cache, readable after every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvStats {
    /// Every token processed in this conversation, template tokens included.
    pub tokens_seen: usize,
    /// Slots held now.
    pub slots_held: usize,
    /// The most slots the policy holds.
    pub capacity: usize,
    /// Bytes of KV cache held now.
    pub bytes_held: usize,
    /// Bytes a dense cache of `tokens_seen` tokens would need.
    pub bytes_dense: usize,
}

/// The cache of one conversation.
pub struct KvCache {
    policy: CachePolicy,
    shape: KvShape,
    device: Device,
    layers: Vec<LayerBuffers>,
    /// Slots the buffers have room for; grows geometrically up to the policy's capacity.
    allocated: usize,
    /// Token id held in each slot, in slot order.
    slot_tokens: Vec<u32>,
    /// Stream position (0-based index in the whole conversation) of each slot's token.
    slot_stream_positions: Vec<usize>,
    tokens_seen: usize,
}

/// Slots allocated the first time a cache is written; small so an idle conversation costs little.
const INITIAL_ALLOCATION: usize = 256;

impl KvCache {
    /// An empty cache; no buffer is allocated until the first token arrives.
    pub fn new(policy: CachePolicy, shape: KvShape, device: &Device) -> Self {
        Self {
            policy,
            shape,
            device: device.clone(),
            layers: Vec::new(),
            allocated: 0,
            slot_tokens: Vec::new(),
            slot_stream_positions: Vec::new(),
            tokens_seen: 0,
        }
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// Slots held now (L).
    pub fn len(&self) -> usize {
        self.slot_tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slot_tokens.is_empty()
    }

    /// Token ids held, in slot order.
    pub fn slot_tokens(&self) -> &[u32] {
        &self.slot_tokens
    }

    /// Stream position of every slot, in slot order.
    pub fn slot_stream_positions(&self) -> &[usize] {
        &self.slot_stream_positions
    }

    pub fn tokens_seen(&self) -> usize {
        self.tokens_seen
    }

    /// Makes room for `n_new` tokens: grows the buffers, or refuses when the policy cannot hold
    /// them. Called once per chunk, before any layer is written.
    pub fn reserve(&mut self, n_new: usize) -> Result<()> {
        let needed = self.len() + n_new;
        let capacity = self.policy.capacity();
        if needed > capacity {
            return Err(EngineError::ContextFull { needed, capacity, policy: self.policy.label() });
        }
        if needed > self.allocated {
            let target = needed.max(INITIAL_ALLOCATION).max(self.allocated * 2).min(capacity);
            self.grow_to(target)?;
        }
        Ok(())
    }

    /// RoPE position of the next token: its slot index. For a dense cache this equals the stream
    /// position; for evicting policies it keeps positions inside the trained range forever.
    pub fn next_rope_position(&self) -> usize {
        self.len()
    }

    /// Writes the chunk's keys and values (`[n_kv_head, n_new, head_dim]`, already rotated) of
    /// one layer after the held slots, and returns views of all keys and values the chunk may
    /// attend to (`[n_kv_head, len + n_new, head_dim]`). `reserve` must have been called.
    pub fn append_layer(&mut self, layer_idx: usize, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        let offset = self.len();
        let n_new = keys.dim(1)?;
        let layer = self.layers.get(layer_idx).ok_or_else(|| {
            EngineError::Candle(candle_core::Error::Msg(format!("KV cache has no layer {layer_idx}")))
        })?;
        layer.keys.slice_set(&keys.to_dtype(KV_DTYPE)?.contiguous()?, 1, offset)?;
        layer.values.slice_set(&values.to_dtype(KV_DTYPE)?.contiguous()?, 1, offset)?;
        let total = offset + n_new;
        Ok((layer.keys.narrow(1, 0, total)?, layer.values.narrow(1, 0, total)?))
    }

    /// Records the chunk's tokens as held slots, once every layer has been written.
    pub fn commit(&mut self, tokens: &[u32]) {
        for &token in tokens {
            self.slot_tokens.push(token);
            self.slot_stream_positions.push(self.tokens_seen);
            self.tokens_seen += 1;
        }
    }

    /// Forgets every slot after the first `keep`: used to reuse a cached prefix when a new
    /// prompt shares it. Only meaningful while no slot was ever dropped (true for dense).
    pub fn truncate(&mut self, keep: usize) {
        if keep < self.len() {
            self.slot_tokens.truncate(keep);
            self.slot_stream_positions.truncate(keep);
            self.tokens_seen = keep;
        }
    }

    /// Empties the cache but keeps its buffers for reuse.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    pub fn stats(&self) -> KvStats {
        let bytes_per_slot = self.shape.bytes_per_slot();
        KvStats {
            tokens_seen: self.tokens_seen,
            slots_held: self.len(),
            capacity: self.policy.capacity(),
            bytes_held: self.len() * bytes_per_slot,
            bytes_dense: self.tokens_seen * bytes_per_slot,
        }
    }

    fn grow_to(&mut self, new_allocated: usize) -> Result<()> {
        let KvShape { n_layer, n_kv_head, head_dim } = self.shape;
        let held = self.len();
        let mut layers = Vec::with_capacity(n_layer);
        for layer_idx in 0..n_layer {
            let keys = Tensor::zeros((n_kv_head, new_allocated, head_dim), KV_DTYPE, &self.device)?;
            let values = Tensor::zeros((n_kv_head, new_allocated, head_dim), KV_DTYPE, &self.device)?;
            if let Some(old) = self.layers.get(layer_idx) {
                if held > 0 {
                    keys.slice_set(&old.keys.narrow(1, 0, held)?.contiguous()?, 1, 0)?;
                    values.slice_set(&old.values.narrow(1, 0, held)?.contiguous()?, 1, 0)?;
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

    fn shape() -> KvShape {
        KvShape { n_layer: 2, n_kv_head: 1, head_dim: 2 }
    }

    #[test]
    fn append_commit_and_views_keep_earlier_slots() -> Result<()> {
        let mut cache = KvCache::new(CachePolicy::Dense { capacity: 600 }, shape(), &Device::Cpu);
        for step in 0..300u32 {
            cache.reserve(1)?;
            let value = Tensor::new(&[[[step as f32, -(step as f32)]]], &Device::Cpu)?;
            for layer in 0..2 {
                let (keys, values) = cache.append_layer(layer, &value, &value)?;
                assert_eq!(keys.dims(), &[1, step as usize + 1, 2]);
                assert_eq!(values.dims(), &[1, step as usize + 1, 2]);
            }
            cache.commit(&[step]);
        }
        // Growth past the initial 256 slots must have copied the old slots.
        let (keys, _) = {
            cache.reserve(1)?;
            let value = Tensor::new(&[[[300f32, -300f32]]], &Device::Cpu)?;
            cache.append_layer(0, &value, &value)?
        };
        let firsts: Vec<f32> = keys.squeeze(0)?.narrow(1, 0, 1)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let expected: Vec<f32> = (0..=300).map(|i| i as f32).collect();
        assert_eq!(firsts, expected);
        assert_eq!(cache.slot_stream_positions().last(), Some(&299));
        Ok(())
    }

    #[test]
    fn dense_refuses_past_capacity_with_a_clear_error() {
        let mut cache = KvCache::new(CachePolicy::Dense { capacity: 8 }, shape(), &Device::Cpu);
        let error = cache.reserve(9).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("needs 9 KV slots"), "{error}");
        assert!(error.contains("at most 8"), "{error}");
    }

    #[test]
    fn stats_count_bytes_against_dense() -> Result<()> {
        let mut cache = KvCache::new(CachePolicy::Dense { capacity: 8 }, shape(), &Device::Cpu);
        cache.reserve(3)?;
        let chunk = Tensor::zeros((1, 3, 2), DType::F32, &Device::Cpu)?;
        for layer in 0..2 {
            cache.append_layer(layer, &chunk, &chunk)?;
        }
        cache.commit(&[5, 6, 7]);
        let stats = cache.stats();
        assert_eq!(stats.tokens_seen, 3);
        assert_eq!(stats.slots_held, 3);
        // 2 layers x (K and V) x 1 head x 2 dims x 2 bytes = 16 bytes per slot.
        assert_eq!(stats.bytes_held, 48);
        assert_eq!(stats.bytes_dense, 48);
        Ok(())
    }
}
