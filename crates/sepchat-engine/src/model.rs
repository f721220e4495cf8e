//! A Llama forward pass of our own on candle's quantized tensors.
//!
//! Unlike candle's stock `quantized_llama`, the KV cache is not hidden inside the layers: the
//! caller owns a [`KvCache`] per conversation, and positions (RoPE) and the attention mask come
//! from it. RoPE angles are computed for the positions at hand, so there is no fixed position
//! table. Grouped-query attention folds the query heads that share a KV head into one matmul
//! instead of materialising repeated keys and values.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use sepchat_text::{ChatTemplate, GgufTokenizer};

use crate::error::{EngineError, Result};
use crate::kv_cache::{CachePolicy, KvCache, KvShape};

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub embedding_length: usize,
    pub vocab_size: usize,
    /// The context the model was trained with; a dense cache is bounded by it.
    pub context_length: usize,
    pub rms_norm_eps: f64,
    /// One inverse frequency per rotated pair: `1 / (base^(2i/d) * factor_i)`.
    pub rope_inverse_frequencies: Vec<f64>,
}

impl ModelConfig {
    pub fn kv_shape(&self) -> KvShape {
        KvShape { n_layer: self.n_layer, n_kv_head: self.n_kv_head, head_dim: self.head_dim }
    }
}

struct Layer {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    ffn_gate: QMatMul,
    ffn_up: QMatMul,
    ffn_down: QMatMul,
}

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Only the last token's (generation).
    LastToken,
    /// Those of the chunk's tokens from this index on (perplexity scores only part of a chunk).
    From(usize),
}

/// A loaded Llama-architecture model with its tokenizer and chat template.
pub struct LlamaModel {
    config: ModelConfig,
    device: Device,
    path: PathBuf,
    embeddings: Arc<QTensor>,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: QMatMul,
    tokenizer: GgufTokenizer,
    chat_template: Option<ChatTemplate>,
    weights_bytes: usize,
}

/// Default prefill chunk: long prompts are fed in pieces so the attention matrix stays small.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

impl LlamaModel {
    /// Validates the GGUF (so candle never sees a malformed file), then loads it onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        sepchat_gguf::validate_file(path)
            .map_err(|source| EngineError::InvalidGguf { path: path.to_path_buf(), source })?;
        let mut file =
            File::open(path).map_err(|source| EngineError::ModelOpen { path: path.to_path_buf(), source })?;
        let content = gguf_file::Content::read(&mut file).map_err(|error| load_error(path, error))?;
        let tokenizer = GgufTokenizer::from_gguf(&content)?;
        let chat_template = ChatTemplate::from_gguf(&content)?;
        let config = read_config(&content, path)?;
        let weights = Weights { content: &content, file: &mut file, device, path, bytes_loaded: 0 };
        Self::from_weights(weights, config, tokenizer, chat_template)
    }

    fn from_weights(
        mut weights: Weights<'_>,
        mut config: ModelConfig,
        tokenizer: GgufTokenizer,
        chat_template: Option<ChatTemplate>,
    ) -> Result<Self> {
        let device = weights.device.clone();
        let path = weights.path.to_path_buf();
        let embeddings = Arc::new(weights.qtensor("token_embd.weight")?);
        config.vocab_size = embeddings.shape().dims2()?.0;
        // Llama 3 scales RoPE frequencies per pair with a `rope_freqs` tensor; most models have none.
        if weights.content.tensor_infos.contains_key("rope_freqs.weight") {
            let factors = weights.qtensor("rope_freqs.weight")?.dequantize(&Device::Cpu)?.to_vec1::<f32>()?;
            for (inverse_frequency, factor) in config.rope_inverse_frequencies.iter_mut().zip(factors) {
                *inverse_frequency /= f64::from(factor);
            }
        }
        let output = if weights.content.tensor_infos.contains_key("output.weight") {
            QMatMul::from_qtensor(weights.qtensor("output.weight")?)?
        } else {
            // Tied embeddings: the output projection reuses the embedding matrix.
            QMatMul::from_arc(embeddings.clone())?
        };
        let output_norm = weights.vector("output_norm.weight")?;
        let mut layers = Vec::with_capacity(config.n_layer);
        for layer_idx in 0..config.n_layer {
            let name = |suffix: &str| format!("blk.{layer_idx}.{suffix}.weight");
            layers.push(Layer {
                attn_norm: weights.vector(&name("attn_norm"))?,
                wq: weights.matmul(&name("attn_q"))?,
                wk: weights.matmul(&name("attn_k"))?,
                wv: weights.matmul(&name("attn_v"))?,
                wo: weights.matmul(&name("attn_output"))?,
                ffn_norm: weights.vector(&name("ffn_norm"))?,
                ffn_gate: weights.matmul(&name("ffn_gate"))?,
                ffn_up: weights.matmul(&name("ffn_up"))?,
                ffn_down: weights.matmul(&name("ffn_down"))?,
            });
        }
        let weights_bytes = weights.bytes_loaded;
        Ok(Self {
            config,
            device,
            path,
            embeddings,
            layers,
            output_norm,
            output,
            tokenizer,
            chat_template,
            weights_bytes,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Bytes of weights as stored (quantized) in memory.
    pub fn weights_bytes(&self) -> usize {
        self.weights_bytes
    }

    /// A new, empty cache for one conversation.
    pub fn new_cache(&self, policy: CachePolicy) -> KvCache {
        KvCache::new(policy, self.config.kv_shape(), &self.device)
    }

    /// A dense cache bounded by the model's trained context.
    pub fn new_dense_cache(&self) -> KvCache {
        self.new_cache(CachePolicy::Dense { capacity: self.config.context_length })
    }

    /// Feeds `tokens` through the model in chunks of at most `chunk_size`, appending to `cache`,
    /// and returns the logits of the last token as a `[vocab]` f32 tensor.
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache, chunk_size: usize) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let mut last_logits = None;
        for chunk in tokens.chunks(chunk_size.max(1)) {
            last_logits = Some(self.forward(chunk, cache, LogitsFor::LastToken)?);
        }
        let logits = last_logits.ok_or(EngineError::EmptyPrompt)?;
        Ok(logits.squeeze(0)?)
    }

    /// One forward pass over `tokens` (one chunk), appended to `cache`. Returns logits of shape
    /// `[1, vocab]` for [`LogitsFor::LastToken`] or `[tokens.len() - from, vocab]` for [`LogitsFor::From`].
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, logits_for: LogitsFor) -> Result<Tensor> {
        let n_new = tokens.len();
        if n_new == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(EngineError::TokenOutOfRange { id, vocab_size: self.config.vocab_size });
        }
        cache.reserve(n_new)?;
        let n_held = cache.len();
        let (cos, sin) = self.rope_tables(cache.next_rope_position(), n_new)?;
        // The CPU kernel applies causality itself; only the matmul path needs an explicit mask.
        let mask = if n_new > 1 && !self.device.is_cpu() { Some(causal_mask(n_held, n_new, &self.device)?) } else { None };

        let ids = Tensor::new(tokens, &self.device)?;
        let mut hidden = self.embeddings.embedding(&ids)?;
        for (layer_idx, layer) in self.layers.iter().enumerate() {
            let attn_in = candle_nn::ops::rms_norm(&hidden, &layer.attn_norm, self.config.rms_norm_eps as f32)?;
            let attn_out = self.attention(layer, layer_idx, &attn_in, cache, &cos, &sin, mask.as_ref())?;
            hidden = (hidden + attn_out)?;
            let ffn_in = candle_nn::ops::rms_norm(&hidden, &layer.ffn_norm, self.config.rms_norm_eps as f32)?;
            let gate = layer.ffn_gate.forward(&ffn_in)?;
            let up = layer.ffn_up.forward(&ffn_in)?;
            let ffn_out = layer.ffn_down.forward(&(candle_nn::ops::silu(&gate)? * up)?)?;
            hidden = (hidden + ffn_out)?;
        }
        cache.commit(tokens);
        let hidden = match logits_for {
            LogitsFor::LastToken => hidden.narrow(0, n_new - 1, 1)?,
            LogitsFor::From(first) => hidden.narrow(0, first.min(n_new - 1), n_new - first.min(n_new - 1))?,
        };
        let normed = candle_nn::ops::rms_norm(&hidden, &self.output_norm, self.config.rms_norm_eps as f32)?;
        Ok(self.output.forward(&normed)?.to_dtype(DType::F32)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        layer_idx: usize,
        input: &Tensor,
        cache: &mut KvCache,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let ModelConfig { n_head, n_kv_head, head_dim, .. } = self.config;
        let n_new = input.dim(0)?;
        let heads_per_kv = n_head / n_kv_head;
        // [n_new, heads * head_dim] -> [1, heads, n_new, head_dim], the layout rope_i expects.
        let to_heads = |projected: Tensor, heads: usize| -> candle_core::Result<Tensor> {
            projected.reshape((n_new, heads, head_dim))?.transpose(0, 1)?.contiguous()?.unsqueeze(0)
        };
        let queries = to_heads(layer.wq.forward(input)?, n_head)?;
        let keys = to_heads(layer.wk.forward(input)?, n_kv_head)?;
        let values = to_heads(layer.wv.forward(input)?, n_kv_head)?;
        // GGUF Llama weights pair rotated dimensions (2i, 2i+1): candle's interleaved `rope_i`.
        let queries = candle_nn::rotary_emb::rope_i(&queries, cos, sin)?.squeeze(0)?;
        let keys = candle_nn::rotary_emb::rope_i(&keys, cos, sin)?.squeeze(0)?;
        let (all_keys, all_values) = cache.append_layer(layer_idx, &keys, &values.squeeze(0)?)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mixed = if self.device.is_cpu() {
            crate::attention::cpu_flash_attention(&queries, &all_keys, &all_values, scale as f32)?
        } else {
            // Accelerators: plain batched matmuls (the f16 cache is widened to f32 first).
            let all_keys = all_keys.to_dtype(DType::F32)?;
            let all_values = all_values.to_dtype(DType::F32)?;
            let n_keys = all_keys.dim(1)?;
            // Query head h uses KV head h / heads_per_kv: group them so one batched matmul per
            // KV head covers all its query heads, without repeating keys or values in memory.
            let grouped_queries = queries.reshape((n_kv_head, heads_per_kv * n_new, head_dim))?;
            let scores = (grouped_queries.matmul(&all_keys.t()?)? * scale)?;
            let scores = match mask {
                Some(mask) => scores
                    .reshape((n_kv_head, heads_per_kv, n_new, n_keys))?
                    .broadcast_add(mask)?
                    .reshape((n_kv_head, heads_per_kv * n_new, n_keys))?,
                None => scores,
            };
            let weights = candle_nn::ops::softmax_last_dim(&scores)?;
            let mixed = weights.matmul(&all_values.contiguous()?)?;
            mixed.reshape((n_head, n_new, head_dim))?.transpose(0, 1)?.reshape((n_new, n_head * head_dim))?
        };
        Ok(layer.wo.forward(&mixed.contiguous()?)?)
    }

    /// cos and sin of the RoPE angles for `n` consecutive positions from `start`, `[n, head_dim/2]`.
    fn rope_tables(&self, start: usize, n: usize) -> Result<(Tensor, Tensor)> {
        let inverse_frequencies = &self.config.rope_inverse_frequencies;
        let half = inverse_frequencies.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for position in start..start + n {
            for inverse_frequency in inverse_frequencies {
                let angle = position as f64 * inverse_frequency;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok((Tensor::from_vec(cos, (n, half), &self.device)?, Tensor::from_vec(sin, (n, half), &self.device)?))
    }
}

/// Additive mask `[n_new, n_held + n_new]`: every held slot is visible; inside the chunk, token
/// i sees chunk tokens 0..=i.
fn causal_mask(n_held: usize, n_new: usize, device: &Device) -> Result<Tensor> {
    let n_keys = n_held + n_new;
    let mut mask = vec![0f32; n_new * n_keys];
    for row in 0..n_new {
        for column in (n_held + row + 1)..n_keys {
            mask[row * n_keys + column] = f32::NEG_INFINITY;
        }
    }
    Ok(Tensor::from_vec(mask, (n_new, n_keys), device)?)
}

/// Reads tensors out of an open GGUF, counting the bytes loaded.
struct Weights<'a> {
    content: &'a gguf_file::Content,
    file: &'a mut File,
    device: &'a Device,
    path: &'a Path,
    bytes_loaded: usize,
}

impl Weights<'_> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        let tensor = self.content.tensor(self.file, name, self.device).map_err(|error| load_error(self.path, error))?;
        self.bytes_loaded += tensor.storage_size_in_bytes();
        Ok(tensor)
    }

    fn matmul(&mut self, name: &str) -> Result<QMatMul> {
        Ok(QMatMul::from_qtensor(self.qtensor(name)?)?)
    }

    /// A small vector (norm weights), dequantized to f32.
    fn vector(&mut self, name: &str) -> Result<Tensor> {
        Ok(self.qtensor(name)?.dequantize(self.device)?.to_dtype(DType::F32)?)
    }
}

fn load_error(path: &Path, error: impl std::fmt::Display) -> EngineError {
    EngineError::ModelLoad { path: path.to_path_buf(), message: error.to_string() }
}

fn read_config(content: &gguf_file::Content, path: &Path) -> Result<ModelConfig> {
    let get_u32 = |key: &str| -> Result<Option<u32>> {
        match content.metadata.get(key) {
            None => Ok(None),
            Some(value) => value.to_u32().map(Some).map_err(|error| load_error(path, format!("{key}: {error}"))),
        }
    };
    let get_f32 = |key: &str| -> Result<Option<f32>> {
        match content.metadata.get(key) {
            None => Ok(None),
            Some(value) => value.to_f32().map(Some).map_err(|error| load_error(path, format!("{key}: {error}"))),
        }
    };
    let required = |key: &str| -> Result<usize> {
        get_u32(key)?.map(|v| v as usize).ok_or_else(|| load_error(path, format!("missing metadata {key}")))
    };
    let n_layer = required("llama.block_count")?;
    let n_head = required("llama.attention.head_count")?;
    let n_kv_head = get_u32("llama.attention.head_count_kv")?.map_or(n_head, |v| v as usize);
    let embedding_length = required("llama.embedding_length")?;
    // The validator has checked these are non-zero and divide evenly.
    let head_dim = embedding_length / n_head.max(1);
    let rope_dim = get_u32("llama.rope.dimension_count")?.map_or(head_dim, |v| v as usize);
    if rope_dim != head_dim {
        return Err(load_error(path, format!("partial RoPE (dimension_count {rope_dim} != head dim {head_dim}) is not supported")));
    }
    let rope_base = f64::from(get_f32("llama.rope.freq_base")?.unwrap_or(10_000.0));
    let rope_inverse_frequencies =
        (0..head_dim / 2).map(|pair| 1.0 / rope_base.powf((2 * pair) as f64 / head_dim as f64)).collect();
    Ok(ModelConfig {
        n_layer,
        n_head,
        n_kv_head,
        head_dim,
        embedding_length,
        vocab_size: 0,
        context_length: get_u32("llama.context_length")?.map_or(4096, |v| v as usize),
        rms_norm_eps: f64::from(get_f32("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5)),
        rope_inverse_frequencies,
    })
}

/// Logits as a plain vector, for sampling and scoring.
pub fn logits_to_vec(logits: &Tensor) -> Result<Vec<f32>> {
    Ok(logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// log-softmax of one row of logits at `target`: the log-likelihood of that token.
pub fn log_likelihood(logits: &[f32], target: u32) -> Option<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    logits.get(target as usize).map(|&l| f64::from(l - max) - sum.ln())
}
