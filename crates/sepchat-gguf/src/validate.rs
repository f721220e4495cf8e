//! GGUF validation in front of candle.
//!
//! candle's GGUF reader trusts much of what a file says: a zero alignment divides by zero, an
//! absurd block or expert count or rotary width becomes an absurd allocation, a missing tensor is
//! found only halfway through loading. This module parses the header, the metadata and the tensor
//! table itself, with its own bounded reader, and checks everything a loader would trust, so a bad
//! file is refused with a precise [`GgufError`] before candle sees it.
//!
//! Guarantees, for any input bytes: no panic, no abort, and no allocation larger than the bytes
//! that really exist in the file (every length is checked against the remaining file length before
//! anything is allocated; counts are also capped by the limits below). Tensor data is never read,
//! so a multi-gigabyte file costs only its header.

mod error;
mod ggml_type;
mod llama;
mod metadata;
mod reader;
mod tensor_table;

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;

pub use error::GgufError;

use ggml_type::SUPPORTED_GGML_TYPES;
use reader::BoundedReader;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent (the GGUF spec default).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most `llama.block_count` accepted; far above any real Llama (the largest have ~128 blocks).
pub const MAX_BLOCK_COUNT: u32 = 1024;
/// Most tensors accepted, whatever the file size (a 1024-block Llama needs about 9,000).
pub const MAX_TENSOR_COUNT: u64 = 1 << 20;
/// Most metadata entries accepted, whatever the file size (real files have a few dozen).
pub const MAX_METADATA_COUNT: u64 = 1 << 20;
/// Longest metadata key or tensor name accepted, in bytes (the GGUF spec caps keys at 65535).
pub const MAX_NAME_LENGTH: u64 = 65_535;
/// Longest string value accepted, in bytes (chat templates, the longest real strings, are a few KiB).
pub const MAX_STRING_VALUE_LENGTH: u64 = 16 * 1024 * 1024;
/// Most array elements accepted across all metadata, nested ones included. candle keeps every
/// element as a 32-byte value, so this bounds its memory at about 512 MiB; real tokenizers have
/// a few hundred thousand elements.
pub const MAX_METADATA_ARRAY_ELEMENTS: u64 = 1 << 24;
/// Deepest array nesting accepted (an array directly under a key is depth 1; real files use 1).
pub const MAX_ARRAY_NESTING_DEPTH: u32 = 4;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_TENSOR_DIMENSIONS: u32 = 4;

/// Smallest possible metadata entry: u64 key length (empty key), u32 value type, one-byte value.
const MINIMUM_METADATA_ENTRY_BYTES: u64 = 8 + 4 + 1;
/// Smallest possible tensor info: u64 name length (empty name), u32 dimension count, one u64
/// dimension, u32 ggml type, u64 offset.
const MINIMUM_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// What a valid file declares, for display and for sizing the model before loading it.
#[derive(Debug, Clone)]
pub struct GgufSummary {
    /// GGUF format version (2 or 3).
    pub version: u32,
    /// `general.architecture`; always `"llama"` for a file that passed.
    pub architecture: String,
    /// `llama.block_count`: the number of transformer blocks.
    pub block_count: u32,
    /// `llama.attention.head_count`: query heads per block.
    pub head_count: u32,
    /// `llama.attention.head_count_kv`, or `head_count` when absent.
    pub head_count_kv: u32,
    /// `llama.embedding_length`: the hidden size.
    pub embedding_length: u32,
    /// `llama.context_length`, if the file declares it.
    pub context_length: Option<u32>,
    /// Tensor data alignment in bytes (`general.alignment`, default 32).
    pub alignment: u64,
    /// Number of tensors in the file.
    pub tensor_count: u64,
    /// Number of metadata key/value entries in the file.
    pub metadata_count: u64,
    /// How many tensors use each ggml type, by type name ("F32", "Q4_1", ...), in type-id order;
    /// types no tensor uses are left out.
    pub file_type_counts: Vec<(String, u64)>,
}

/// Validates the GGUF file at `path`, reading only its header, metadata and tensor table.
///
/// The file's length comes from the file system, so offsets are checked against the real size
/// without reading the tensor data.
pub fn validate_file(path: &Path) -> Result<GgufSummary, GgufError> {
    let open_error = |source| GgufError::Open { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(open_error)?;
    let file_metadata = file.metadata().map_err(open_error)?;
    if !file_metadata.is_file() {
        return Err(GgufError::NotARegularFile { path: path.to_path_buf() });
    }
    validate_reader(BufReader::with_capacity(64 * 1024, file), file_metadata.len())
}

/// Validates a GGUF file held in memory (used by the fuzz target and tests).
pub fn validate_bytes(bytes: &[u8]) -> Result<GgufSummary, GgufError> {
    let file_length = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    validate_reader(Cursor::new(bytes), file_length)
}

/// Validates a GGUF file from any seekable source whose total length is `file_length` bytes.
/// Reading starts at byte 0 of the source. Prefer a buffered source: fields are read a few bytes
/// at a time.
pub fn validate_reader<R: Read + Seek>(source: R, file_length: u64) -> Result<GgufSummary, GgufError> {
    let mut reader = BoundedReader::new(source, file_length)?;

    let magic: [u8; 4] = reader.read_array(|| "the magic bytes".to_string())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic.to_vec() });
    }
    let version = reader.read_u32(|| "the version".to_string())?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let tensor_count = reader.read_u64(|| "the tensor count".to_string())?;
    let metadata_count = reader.read_u64(|| "the metadata entry count".to_string())?;
    check_declared_counts(tensor_count, metadata_count, reader.remaining())?;

    let metadata = metadata::read_metadata(&mut reader, metadata_count)?;
    // Needed before the tensor table: every tensor offset must be a multiple of it.
    let alignment = metadata.alignment()?;
    let tensors = tensor_table::read_tensor_table(&mut reader, tensor_count, alignment)?;
    let hyperparameters = llama::check_llama(&metadata, &tensors)?;

    let file_type_counts = SUPPORTED_GGML_TYPES
        .iter()
        .map(|ggml_type| {
            let count = tensors.tensors.iter().filter(|tensor| tensor.ggml_type == *ggml_type).count();
            (ggml_type.name.to_string(), u64::try_from(count).unwrap_or(u64::MAX))
        })
        .filter(|(_, count)| *count > 0)
        .collect();

    Ok(GgufSummary {
        version,
        architecture: "llama".to_string(),
        block_count: hyperparameters.block_count,
        head_count: hyperparameters.head_count,
        head_count_kv: hyperparameters.head_count_kv,
        embedding_length: hyperparameters.embedding_length,
        context_length: hyperparameters.context_length,
        alignment,
        tensor_count,
        metadata_count,
        file_type_counts,
    })
}

/// Refuses counts the rest of the file cannot hold, before any loop or allocation uses them.
fn check_declared_counts(tensor_count: u64, metadata_count: u64, remaining_bytes: u64) -> Result<(), GgufError> {
    // u128: a u64 count times a small size cannot overflow it.
    let minimum_metadata_bytes = u128::from(metadata_count) * u128::from(MINIMUM_METADATA_ENTRY_BYTES);
    if metadata_count > MAX_METADATA_COUNT || minimum_metadata_bytes > u128::from(remaining_bytes) {
        return Err(GgufError::TooManyMetadataEntries {
            metadata_count,
            minimum_bytes_each: MINIMUM_METADATA_ENTRY_BYTES,
            remaining_bytes,
            limit: MAX_METADATA_COUNT,
        });
    }
    let remaining_after_metadata = u128::from(remaining_bytes).saturating_sub(minimum_metadata_bytes);
    let minimum_tensor_bytes = u128::from(tensor_count) * u128::from(MINIMUM_TENSOR_INFO_BYTES);
    if tensor_count > MAX_TENSOR_COUNT || minimum_tensor_bytes > remaining_after_metadata {
        return Err(GgufError::TooManyTensors {
            tensor_count,
            minimum_bytes_each: MINIMUM_TENSOR_INFO_BYTES,
            remaining_bytes: u64::try_from(remaining_after_metadata).unwrap_or(u64::MAX),
            limit: MAX_TENSOR_COUNT,
        });
    }
    Ok(())
}
