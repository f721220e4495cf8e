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

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Tensor};
use sepchat_text::{ChatTemplate, GgufTokenizer};

use crate::attention::Arithmetic;
use crate::cache_map::CacheSimulator;
use crate::cache_policy::{CacheConfig, SeparatorRule};
use crate::causal_softmax::CausalSoftmax;
use crate::error::{EngineError, Result};
use crate::ggml_exact;
use crate::kv_cache::{KvCache, KvShape, RopeSpec, SeparatorSet};
use crate::quant::{EmbeddingTable, Linear};

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
    pub rms_norm_eps: f32,
    pub rope_freq_base: f32,
    /// Per-pair divisors of the RoPE angle (Llama 3's `rope_freqs` tensor); `None` for most models.
    pub rope_freq_factors: Option<Vec<f32>>,
}

impl ModelConfig {
    pub fn kv_shape(&self) -> KvShape {
        KvShape { n_layer: self.n_layer, n_kv_head: self.n_kv_head, head_dim: self.head_dim }
    }
}

/// An RMS norm weight, kept both as a tensor (accelerators) and as plain values (CPU).
struct Norm {
    weight: Tensor,
    values: Vec<f32>,
}

struct Layer {
    attn_norm: Norm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Norm,
    ffn_gate: Linear,
    ffn_up: Linear,
    ffn_down: Linear,
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
    embeddings: EmbeddingTable,
    layers: Vec<Layer>,
    output_norm: Norm,
    output: Linear,
    tokenizer: GgufTokenizer,
    chat_template: Option<ChatTemplate>,
    weights_bytes: usize,
    /// Separator sets by rule, built from the vocabulary at load (SepCache's token-id test).
    vocabulary_separators: Arc<SeparatorSet>,
    paper_separators: Arc<SeparatorSet>,
    /// The threads every forward pass runs on.
    pool: rayon::ThreadPool,
    /// How decode steps and short chunks round their attention on the CPU.
    attention_arithmetic: Arithmetic,
}

/// Query rows from which llama.cpp's CPU flash attention uses its tiled path (GGML_FA_TILE_Q).
const TILED_ATTENTION_ROWS: usize = 64;

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
        let embeddings = EmbeddingTable::new(weights.qtensor("token_embd.weight")?, &device)?;
        config.vocab_size = embeddings.rows()?;
        // Llama 3 scales RoPE frequencies per pair with a `rope_freqs` tensor; most models have none.
        if weights.content.tensor_infos.contains_key("rope_freqs.weight") {
            config.rope_freq_factors = Some(weights.vector("rope_freqs.weight")?.values);
        }
        let output = if weights.content.tensor_infos.contains_key("output.weight") {
            weights.linear("output.weight")?
        } else {
            // Tied embeddings: the output projection reuses the embedding matrix.
            embeddings.as_linear()?
        };
        let output_norm = weights.vector("output_norm.weight")?;
        let mut layers = Vec::with_capacity(config.n_layer);
        for layer_idx in 0..config.n_layer {
            let name = |suffix: &str| format!("blk.{layer_idx}.{suffix}.weight");
            layers.push(Layer {
                attn_norm: weights.vector(&name("attn_norm"))?,
                wq: weights.linear(&name("attn_q"))?,
                wk: weights.linear(&name("attn_k"))?,
                wv: weights.linear(&name("attn_v"))?,
                wo: weights.linear(&name("attn_output"))?,
                ffn_norm: weights.vector(&name("ffn_norm"))?,
                ffn_gate: weights.linear(&name("ffn_gate"))?,
                ffn_up: weights.linear(&name("ffn_up"))?,
                ffn_down: weights.linear(&name("ffn_down"))?,
            });
        }
        let weights_bytes = weights.bytes_loaded;
        // As many threads as the global pool, which `--threads` sizes.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|index| format!("sepchat-compute-{index}"))
            .build()
            .map_err(|error| load_error(&path, format!("cannot start the compute threads: {error}")))?;
        let vocabulary_separators = Arc::new(SeparatorSet::from_ids(&tokenizer.separator_ids()));
        let paper_separators = Arc::new(SeparatorSet::from_ids(&tokenizer.paper_separator_ids()?));
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
            vocabulary_separators,
            paper_separators,
            pool,
            attention_arithmetic: Arithmetic::default(),
        })
    }

    /// Chooses the CPU attention kernel's arithmetic for decode steps and chunks of fewer than
    /// 64 tokens (longer chunks take the batched f32 path either way): `Arithmetic::Fast` by
    /// default; `Arithmetic::LlamaCpp` reproduces llama.cpp's logits bit for bit, for checks
    /// against its goldens.
    pub fn set_attention_arithmetic(&mut self, arithmetic: Arithmetic) {
        self.attention_arithmetic = arithmetic;
    }

    pub fn attention_arithmetic(&self) -> Arithmetic {
        self.attention_arithmetic
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

    /// The separator set a cache configured with `rule` uses.
    pub fn separators(&self, rule: SeparatorRule) -> &Arc<SeparatorSet> {
        match rule {
            SeparatorRule::Vocabulary => &self.vocabulary_separators,
            SeparatorRule::Paper => &self.paper_separators,
        }
    }

    /// A new, empty cache for one conversation. `config` should have been validated against
    /// this model ([`CacheConfig::validate`]).
    pub fn new_cache(&self, config: CacheConfig) -> KvCache {
        let rope = RopeSpec {
            freq_base: self.config.rope_freq_base,
            head_dim: self.config.head_dim,
            freq_factors: self.config.rope_freq_factors.clone(),
        };
        let separators = self.separators(config.separators).clone();
        KvCache::new(config, self.config.kv_shape(), rope, separators, &self.device)
    }

    /// A tensor-free simulator of the cache `new_cache(config)` would make: the same separators
    /// and slot size, so its decisions and statistics are the engine's (the UI's A/B switch).
    pub fn new_cache_simulator(&self, config: CacheConfig) -> CacheSimulator {
        let separators = self.separators(config.separators).clone();
        let bytes_per_slot = self.config.kv_shape().bytes_per_slot(config.format);
        CacheSimulator::new(config, separators, bytes_per_slot)
    }

    /// A dense cache bounded by the model's trained context.
    pub fn new_dense_cache(&self) -> KvCache {
        self.new_cache(CacheConfig::dense(self.config.context_length))
    }

    /// Feeds `tokens` through the model in chunks of at most `chunk_size` (and never longer than
    /// the cache accepts after a compaction), appending to `cache`, and returns the logits of the
    /// last token as a `[vocab]` f32 tensor.
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache, chunk_size: usize) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let mut last_logits = None;
        for chunk in tokens.chunks(chunk_size.min(cache.max_chunk()).max(1)) {
            last_logits = Some(self.forward(chunk, cache, LogitsFor::LastToken)?);
        }
        let logits = last_logits.ok_or(EngineError::EmptyPrompt)?;
        Ok(logits.squeeze(0)?)
    }

    /// One forward pass over `tokens` (one chunk), appended to `cache`. Returns logits of shape
    /// `[1, vocab]` for [`LogitsFor::LastToken`] or `[tokens.len() - from, vocab]` for [`LogitsFor::From`].
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, logits_for: LogitsFor) -> Result<Tensor> {
        // Run the whole pass on the model's thread pool: the kernels' parallel loops then split
        // work among its threads directly, instead of handing every matmul over from a foreign
        // thread and waiting for it (hundreds of thread wake-ups per token; a third of decode time).
        self.pool.install(|| self.forward_on_pool(tokens, cache, logits_for))
    }

    fn forward_on_pool(&self, tokens: &[u32], cache: &mut KvCache, logits_for: LogitsFor) -> Result<Tensor> {
        let n_new = tokens.len();
        if n_new == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(EngineError::TokenOutOfRange { id, vocab_size: self.config.vocab_size });
        }
        cache.reserve(n_new)?;
        let n_held = cache.len();
        let rope = self.rope_tables(cache.next_rope_position(), n_new)?;
        // The one-row-at-a-time CPU kernel and the CPU's fused softmax apply causality themselves; the
        // matmul path of an accelerator needs a mask.
        let mask =
            if n_new > 1 && !self.device.is_cpu() { Some(causal_mask(n_held, n_new, &self.device)?) } else { None };

        let mut hidden = self.embeddings.lookup(tokens, &self.device)?;
        for (layer_idx, layer) in self.layers.iter().enumerate() {
            let attn_in = self.rms_norm(&hidden, &layer.attn_norm)?;
            let attn_out = self.attention(layer, layer_idx, &attn_in, cache, &rope, mask.as_ref())?;
            hidden = (hidden + attn_out)?;
            let ffn_in = self.rms_norm(&hidden, &layer.ffn_norm)?;
            let gate = layer.ffn_gate.forward(&ffn_in)?;
            let up = layer.ffn_up.forward(&ffn_in)?;
            let ffn_out = layer.ffn_down.forward(&self.swiglu(&gate, &up)?)?;
            hidden = (hidden + ffn_out)?;
        }
        cache.commit(tokens)?;
        let hidden = match logits_for {
            LogitsFor::LastToken => hidden.narrow(0, n_new - 1, 1)?,
            LogitsFor::From(first) => hidden.narrow(0, first.min(n_new - 1), n_new - first.min(n_new - 1))?,
        };
        let normed = self.rms_norm(&hidden, &self.output_norm)?;
        Ok(self.output.forward(&normed)?.to_dtype(DType::F32)?)
    }

    /// Whether attention for a chunk of `n_new` tokens runs the row-at-a-time CPU kernel, which
    /// reproduces llama.cpp's `flash_attn_ext_f16_one_chunk`. llama.cpp itself switches to a tiled
    /// f32 GEMM path from 64 query rows on; so do we, and it is far faster for long prompts.
    fn uses_row_kernel(&self, n_new: usize) -> bool {
        self.device.is_cpu() && n_new < TILED_ATTENTION_ROWS
    }

    fn rms_norm(&self, input: &Tensor, norm: &Norm) -> Result<Tensor> {
        if self.device.is_cpu() {
            let mut values = input.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            ggml_exact::rms_norm_mul(&mut values, self.config.embedding_length, &norm.values, self.config.rms_norm_eps);
            return Ok(Tensor::from_vec(values, input.dims(), &self.device)?);
        }
        Ok(candle_nn::ops::rms_norm(input, &norm.weight, self.config.rms_norm_eps)?)
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        if self.device.is_cpu() {
            let gate_values = gate.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let up_values = up.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            return Ok(Tensor::from_vec(ggml_exact::swiglu(&gate_values, &up_values), gate.dims(), &self.device)?);
        }
        Ok((candle_nn::ops::silu(gate)? * up)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        layer_idx: usize,
        input: &Tensor,
        cache: &mut KvCache,
        rope: &RopeTables,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let ModelConfig { n_head, n_kv_head, head_dim, .. } = self.config;
        let n_new = input.dim(0)?;
        let heads_per_kv = n_head / n_kv_head;
        // [n_new, heads * head_dim] -> [1, heads, n_new, head_dim], the layout rope_i expects.
        let to_heads = |projected: Tensor, heads: usize| -> candle_core::Result<Tensor> {
            projected.reshape((n_new, heads, head_dim))?.transpose(0, 1)?.contiguous()?.unsqueeze(0)
        };
        let queries = self.rotate(to_heads(layer.wq.forward(input)?, n_head)?, rope)?;
        let keys = self.rotate(to_heads(layer.wk.forward(input)?, n_kv_head)?, rope)?;
        let values = to_heads(layer.wv.forward(input)?, n_kv_head)?;
        let (all_keys, all_values) = cache.append_layer(layer_idx, &keys, &values.squeeze(0)?)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mixed = if self.uses_row_kernel(n_new) {
            crate::attention::cpu_flash_attention(
                &queries,
                &all_keys,
                &all_values,
                scale as f32,
                self.attention_arithmetic,
            )?
        } else {
            // Long chunks and accelerators: batched matmuls in f32 (the cache's rows are widened
            // first), as llama.cpp's tiled CPU path does for 64 rows or more.
            let all_keys = all_keys.to_f32()?;
            let all_values = all_values.to_f32()?;
            let n_keys = all_keys.dim(1)?;
            // Query head h uses KV head h / heads_per_kv: group them so one batched matmul per
            // KV head covers all its query heads, without repeating keys or values in memory.
            let grouped_queries = queries.reshape((n_kv_head, heads_per_kv * n_new, head_dim))?;
            let mixed = if self.device.is_cpu() {
                // One KV head at a time: the scores of every head at once (f32, n_head x n_new x
                // n_keys, twice with the softmax's output) were most of the process's peak memory in
                // a long prompt: 302 MiB for 512 new tokens against a full 8,192-token dense cache.
                // The same matmuls per head as the batched one, so the same results.
                let mut per_kv_head = Vec::with_capacity(n_kv_head);
                for kv_head in 0..n_kv_head {
                    let keys = all_keys.narrow(0, kv_head, 1)?;
                    let scores = grouped_queries.narrow(0, kv_head, 1)?.matmul(&keys.t()?)?;
                    // The CPU fuses scale, causal mask and softmax in one pass (see causal_softmax.rs).
                    let weights = scores.apply_op1_no_bwd(&CausalSoftmax { n_new, scale: scale as f32 })?;
                    drop(scores);
                    per_kv_head.push(weights.matmul(&all_values.narrow(0, kv_head, 1)?.contiguous()?)?);
                }
                Tensor::cat(&per_kv_head, 0)?
            } else {
                let scores = grouped_queries.matmul(&all_keys.t()?)?;
                let scores = (scores * scale)?;
                let scores = match mask {
                    Some(mask) => scores
                        .reshape((n_kv_head, heads_per_kv, n_new, n_keys))?
                        .broadcast_add(mask)?
                        .reshape((n_kv_head, heads_per_kv * n_new, n_keys))?,
                    None => scores,
                };
                candle_nn::ops::softmax_last_dim(&scores)?.matmul(&all_values.contiguous()?)?
            };
            mixed.reshape((n_head, n_new, head_dim))?.transpose(0, 1)?.reshape((n_new, n_head * head_dim))?
        };
        layer.wo.forward(&mixed.contiguous()?)
    }

    /// cos and sin of the RoPE angles for `n` consecutive positions from `start`, `[n, head_dim/2]`.
    fn rope_tables(&self, start: usize, n: usize) -> Result<RopeTables> {
        let (cos, sin) = ggml_exact::rope_tables(
            start,
            n,
            self.config.rope_freq_base,
            self.config.head_dim,
            self.config.rope_freq_factors.as_deref(),
        );
        let half = self.config.head_dim / 2;
        let tensors = if self.device.is_cpu() {
            None
        } else {
            Some((
                Tensor::from_vec(cos.clone(), (n, half), &self.device)?,
                Tensor::from_vec(sin.clone(), (n, half), &self.device)?,
            ))
        };
        Ok(RopeTables { n_positions: n, cos, sin, tensors })
    }

    /// Applies RoPE to `[1, heads, n, head_dim]` and returns `[heads, n, head_dim]`. GGUF Llama
    /// weights pair rotated dimensions (2i, 2i+1), ggml's NORM mode and candle's `rope_i`.
    fn rotate(&self, heads: Tensor, rope: &RopeTables) -> Result<Tensor> {
        match &rope.tensors {
            Some((cos, sin)) => Ok(candle_nn::rotary_emb::rope_i(&heads, cos, sin)?.squeeze(0)?),
            None => {
                let dims = heads.dims()[1..].to_vec();
                let mut values = heads.flatten_all()?.to_vec1::<f32>()?;
                ggml_exact::rope_apply(&mut values, rope.n_positions, self.config.head_dim, &rope.cos, &rope.sin);
                Ok(Tensor::from_vec(values, dims, &self.device)?)
            }
        }
    }
}

/// RoPE angles of one chunk's positions.
struct RopeTables {
    n_positions: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The same as device tensors, for accelerators.
    tensors: Option<(Tensor, Tensor)>,
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

    fn linear(&mut self, name: &str) -> Result<Linear> {
        Linear::new(self.qtensor(name)?, self.device)
    }

    /// A small vector (norm weights), dequantized to f32.
    fn vector(&mut self, name: &str) -> Result<Norm> {
        let weight = self.qtensor(name)?.dequantize(self.device)?.to_dtype(DType::F32)?;
        let values = weight.to_vec1::<f32>()?;
        Ok(Norm { weight, values })
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
        return Err(load_error(
            path,
            format!("partial RoPE (dimension_count {rope_dim} != head dim {head_dim}) is not supported"),
        ));
    }
    Ok(ModelConfig {
        n_layer,
        n_head,
        n_kv_head,
        head_dim,
        embedding_length,
        vocab_size: 0,
        context_length: get_u32("llama.context_length")?.map_or(4096, |v| v as usize),
        rms_norm_eps: get_f32("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_freq_base: get_f32("llama.rope.freq_base")?.unwrap_or(10_000.0),
        rope_freq_factors: None,
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
