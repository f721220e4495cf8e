//! Llama-specific checks: the hyperparameters candle's `quantized_llama` reads, and the tensors it
//! loads, with shapes consistent with those hyperparameters.

use super::error::GgufError;
use super::metadata::Metadata;
use super::tensor_table::{TensorInfo, TensorTable};
use super::MAX_BLOCK_COUNT;

/// The hyperparameters that passed every check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LlamaHyperparameters {
    pub(crate) block_count: u32,
    pub(crate) head_count: u32,
    pub(crate) head_count_kv: u32,
    pub(crate) embedding_length: u32,
    pub(crate) context_length: Option<u32>,
}

/// Checks the architecture, the hyperparameters and the tensors a Llama needs.
pub(crate) fn check_llama(metadata: &Metadata, tensors: &TensorTable) -> Result<LlamaHyperparameters, GgufError> {
    let architecture = metadata.required_string("general.architecture")?;
    if architecture != "llama" {
        return Err(GgufError::UnsupportedArchitecture { architecture: architecture.to_string() });
    }

    // candle allocates per block (Vec::with_capacity(block_count)), so an absurd count must stop here.
    let block_count = metadata.required_u32("llama.block_count")?;
    if !(1..=MAX_BLOCK_COUNT).contains(&block_count) {
        return Err(GgufError::BlockCountOutOfRange { block_count, maximum: MAX_BLOCK_COUNT });
    }

    let head_count = required_positive(metadata, "llama.attention.head_count")?;
    // Without the key, the model uses plain multi-head attention: as many key/value heads as heads.
    let head_count_kv = match metadata.optional_u32("llama.attention.head_count_kv")? {
        Some(0) => return Err(GgufError::ZeroHyperparameter { key: "llama.attention.head_count_kv" }),
        Some(head_count_kv) => head_count_kv,
        None => head_count,
    };
    if head_count % head_count_kv != 0 {
        return Err(GgufError::HeadCountKvDoesNotDivideHeadCount { head_count, head_count_kv });
    }

    let embedding_length = required_positive(metadata, "llama.embedding_length")?;
    if embedding_length % head_count != 0 {
        return Err(GgufError::EmbeddingNotDivisibleByHeadCount { embedding_length, head_count });
    }
    let head_dimension = embedding_length / head_count;

    let context_length = optional_positive(metadata, "llama.context_length")?;

    // candle sizes its rotary tables as 4096 x (dimension_count / 2) floats: an absurd value is
    // an absurd allocation, and anything but an even width within one head cannot be applied.
    if let Some(rope_dimension_count) = metadata.optional_u32("llama.rope.dimension_count")? {
        if rope_dimension_count == 0 || rope_dimension_count % 2 != 0 || rope_dimension_count > head_dimension {
            return Err(GgufError::InvalidRopeDimensionCount { rope_dimension_count, head_dimension });
        }
    }

    // With more than one expert candle looks for per-expert tensors (and allocates per expert), so
    // the dense tensors checked below would not be the ones it loads.
    if let Some(expert_count) = metadata.optional_u32("llama.expert_count")? {
        if expert_count > 1 {
            return Err(GgufError::MixtureOfExpertsUnsupported { expert_count });
        }
    }

    let feed_forward_length = optional_positive(metadata, "llama.feed_forward_length")?;

    let hyperparameters =
        LlamaHyperparameters { block_count, head_count, head_count_kv, embedding_length, context_length };
    check_tensor_shapes(tensors, &hyperparameters, feed_forward_length)?;
    Ok(hyperparameters)
}

fn required_positive(metadata: &Metadata, key: &'static str) -> Result<u32, GgufError> {
    match metadata.required_u32(key)? {
        0 => Err(GgufError::ZeroHyperparameter { key }),
        value => Ok(value),
    }
}

fn optional_positive(metadata: &Metadata, key: &'static str) -> Result<Option<u32>, GgufError> {
    match metadata.optional_u32(key)? {
        Some(0) => Err(GgufError::ZeroHyperparameter { key }),
        value => Ok(value),
    }
}

fn require_tensor<'table>(tensors: &'table TensorTable, name: &str) -> Result<&'table TensorInfo, GgufError> {
    tensors.get(name).ok_or_else(|| GgufError::MissingTensor { name: name.to_string() })
}

fn expect_shape(tensor: &TensorInfo, expected: &[u64], reason: impl FnOnce() -> String) -> Result<(), GgufError> {
    if tensor.dimensions == expected {
        return Ok(());
    }
    Err(GgufError::TensorShapeMismatch {
        tensor: tensor.name.clone(),
        found: tensor.dimensions.clone(),
        expected: format!("{expected:?}"),
        reason: reason(),
    })
}

/// A 2-D tensor whose first (row) dimension must be `row_length`; returns its second dimension,
/// which the caller cannot know in advance (the vocabulary size, the feed-forward length).
fn expect_rows_of(
    tensor: &TensorInfo,
    row_length: u64,
    second_dimension_name: &str,
    reason: &str,
) -> Result<u64, GgufError> {
    match tensor.dimensions.as_slice() {
        [first, second] if *first == row_length => Ok(*second),
        _ => Err(GgufError::TensorShapeMismatch {
            tensor: tensor.name.clone(),
            found: tensor.dimensions.clone(),
            expected: format!("[{row_length}, {second_dimension_name}]"),
            reason: reason.to_string(),
        }),
    }
}

/// Shapes are in GGUF order, innermost first: a weight mapping `n` inputs to `m` outputs is `[n, m]`.
fn check_tensor_shapes(
    tensors: &TensorTable,
    hyperparameters: &LlamaHyperparameters,
    feed_forward_length_from_metadata: Option<u32>,
) -> Result<(), GgufError> {
    let embedding = u64::from(hyperparameters.embedding_length);
    let head_dimension = embedding / u64::from(hyperparameters.head_count);
    let key_value_width = u64::from(hyperparameters.head_count_kv) * head_dimension;
    let embedding_reason = || format!("llama.embedding_length is {embedding}");

    let token_embedding = require_tensor(tensors, "token_embd.weight")?;
    let vocabulary_size = expect_rows_of(token_embedding, embedding, "vocabulary size", &embedding_reason())?;
    expect_shape(require_tensor(tensors, "output_norm.weight")?, &[embedding], embedding_reason)?;
    // Absent means the output projection is tied to the token embedding.
    if let Some(output) = tensors.get("output.weight") {
        expect_shape(output, &[embedding, vocabulary_size], || {
            format!("llama.embedding_length {embedding} by the {vocabulary_size}-token vocabulary of token_embd.weight")
        })?;
    }

    let feed_forward_length = match feed_forward_length_from_metadata {
        Some(length) => u64::from(length),
        None => expect_rows_of(
            require_tensor(tensors, "blk.0.ffn_gate.weight")?,
            embedding,
            "feed-forward length",
            &embedding_reason(),
        )?,
    };
    let feed_forward_reason =
        || format!("llama.embedding_length {embedding} and feed-forward length {feed_forward_length}");
    let query_reason = || {
        format!(
            "llama.attention.head_count {} x head dimension {head_dimension} = {embedding}",
            hyperparameters.head_count
        )
    };
    let key_value_reason = || {
        format!(
            "llama.attention.head_count_kv {} x head dimension {head_dimension} = {key_value_width}",
            hyperparameters.head_count_kv
        )
    };

    for block in 0..hyperparameters.block_count {
        let tensor = |suffix: &str| require_tensor(tensors, &format!("blk.{block}.{suffix}.weight"));
        expect_shape(tensor("attn_norm")?, &[embedding], embedding_reason)?;
        expect_shape(tensor("attn_q")?, &[embedding, embedding], query_reason)?;
        expect_shape(tensor("attn_k")?, &[embedding, key_value_width], key_value_reason)?;
        expect_shape(tensor("attn_v")?, &[embedding, key_value_width], key_value_reason)?;
        expect_shape(tensor("attn_output")?, &[embedding, embedding], query_reason)?;
        expect_shape(tensor("ffn_norm")?, &[embedding], embedding_reason)?;
        expect_shape(tensor("ffn_gate")?, &[embedding, feed_forward_length], feed_forward_reason)?;
        expect_shape(tensor("ffn_up")?, &[embedding, feed_forward_length], feed_forward_reason)?;
        expect_shape(tensor("ffn_down")?, &[feed_forward_length, embedding], feed_forward_reason)?;
    }
    Ok(())
}
