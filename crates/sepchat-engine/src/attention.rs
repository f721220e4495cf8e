//! Attention over the f16 KV cache, computed the way llama.cpp's CPU flash-attention kernel
//! computes it.
//!
//! Why our own kernel: llama.cpp stores keys and values in f16, rounds the query to f16, and
//! accumulates the softmax-weighted values in f16 with an online softmax. Those roundings move
//! logits by a few hundredths, enough to flip a greedy choice between two near-equal tokens.
//! Matching llama.cpp's arithmetic makes its greedy outputs and perplexities a usable golden.
//! The kernel also never materialises the score matrix or repeated K/V heads, and reads the
//! cache in place (no copy per step), which is what a long conversation needs.

use candle_core::{DType, Device, Storage, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::error::{EngineError, Result};

/// Causal attention for `queries` (`[n_head, n_new, head_dim]`, f32, rotated) against the cache
/// views `keys` and `values` (`[n_kv_head, n_held + n_new, head_dim]`, f16). Query `i` of the
/// chunk sees every held slot and chunk tokens `0..=i`. Returns `[n_new, n_head * head_dim]`.
pub(crate) fn cpu_flash_attention(queries: &Tensor, keys: &Tensor, values: &Tensor, scale: f32) -> Result<Tensor> {
    let (n_head, n_new, head_dim) = queries.dims3()?;
    let (n_kv_head, n_keys, _) = keys.dims3()?;
    let n_held = n_keys - n_new;
    let heads_per_kv = n_head / n_kv_head;
    let queries = queries.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let key_rows = CacheRows::new(keys)?;
    let value_rows = CacheRows::new(values)?;
    let key_guard = keys.storage_and_layout().0;
    let value_guard = values.storage_and_layout().0;
    let key_data = f16_slice(&key_guard)?;
    let value_data = f16_slice(&value_guard)?;

    // One task per (head, query row); each writes its own head_dim outputs.
    let mut output = vec![0f32; n_new * n_head * head_dim];
    output.par_chunks_mut(head_dim).enumerate().for_each(|(task, out)| {
        let row = task / n_head;
        let head = task % n_head;
        let kv_head = head / heads_per_kv;
        let query = &queries[(head * n_new + row) * head_dim..][..head_dim];
        let visible = n_held + row + 1;
        attend_one(query, kv_head, visible, &key_rows, key_data, &value_rows, value_data, scale, out);
    });
    Ok(Tensor::from_vec(output, (n_new, n_head * head_dim), &Device::Cpu)?)
}

/// Where row `slot` of head `kv_head` starts in a cache view's storage.
#[derive(Clone, Copy)]
struct CacheRows {
    offset: usize,
    head_stride: usize,
    slot_stride: usize,
}

impl CacheRows {
    fn new(view: &Tensor) -> Result<Self> {
        let layout = view.layout();
        let stride = layout.stride();
        if view.dtype() != DType::F16 || stride.len() != 3 || stride[2] != 1 {
            return Err(EngineError::Candle(candle_core::Error::Msg(format!(
                "attention expects an f16 cache view with contiguous rows, got {:?} strides {stride:?}",
                view.dtype()
            ))));
        }
        Ok(Self { offset: layout.start_offset(), head_stride: stride[0], slot_stride: stride[1] })
    }

    fn start(&self, kv_head: usize, slot: usize) -> usize {
        self.offset + kv_head * self.head_stride + slot * self.slot_stride
    }
}

fn f16_slice(storage: &Storage) -> Result<&[f16]> {
    match storage {
        Storage::Cpu(cpu) => Ok(cpu.as_slice::<f16>()?),
        _ => Err(EngineError::Candle(candle_core::Error::Msg("cpu attention called on a device tensor".to_string()))),
    }
}

/// llama.cpp's `flash_attn_ext_f16_one_chunk` for one query row: f16 query, f32 dot products,
/// online softmax in f32, values accumulated in f16.
#[allow(clippy::too_many_arguments)]
fn attend_one(
    query: &[f32],
    kv_head: usize,
    visible: usize,
    key_rows: &CacheRows,
    key_data: &[f16],
    value_rows: &CacheRows,
    value_data: &[f16],
    scale: f32,
    out: &mut [f32],
) {
    let head_dim = query.len();
    let query: Vec<f32> = query.iter().map(|&q| f16::from_f32(q).to_f32()).collect();
    let mut accumulated = vec![f16::ZERO; head_dim];
    let mut running_max = f32::NEG_INFINITY;
    let mut running_sum = 0f32;
    for slot in 0..visible {
        let key = &key_data[key_rows.start(kv_head, slot)..][..head_dim];
        let value = &value_data[value_rows.start(kv_head, slot)..][..head_dim];
        let score = crate::ggml_exact::dot_f16(&query, key) * scale;
        let mut max_scale = 1f32;
        let mut weight = 1f32;
        if score > running_max {
            let previous = running_max;
            running_max = score;
            max_scale = (previous - running_max).exp();
            for acc in accumulated.iter_mut() {
                *acc = f16::from_f32(acc.to_f32() * max_scale);
            }
        } else {
            weight = (score - running_max).exp();
        }
        for (acc, &v) in accumulated.iter_mut().zip(value) {
            *acc = f16::from_f32(v.to_f32().mul_add(weight, acc.to_f32()));
        }
        // `S = S*ms + vs` in ggml, contracted to one fused multiply-add by the compiler.
        running_sum = running_sum.mul_add(max_scale, weight);
    }
    let inverse_sum = if running_sum == 0.0 { 0.0 } else { 1.0 / running_sum };
    for (out, acc) in out.iter_mut().zip(&accumulated) {
        *out = acc.to_f32() * inverse_sum;
    }
}
