//! Every way a GGUF file can be refused, one variant per kind of failure.

use std::path::PathBuf;

/// Why a GGUF file was refused.
///
/// Each variant is one kind of failure; its `Display` is a single readable line naming what is
/// wrong and the numbers involved, so it can be shown to a user as is. Names read from the file
/// (keys, tensor names, strings) are escaped when displayed so a hostile file cannot inject line
/// breaks or control characters into a log line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened or its length could not be read.
    #[error("cannot open GGUF file {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The path names something other than a regular file (a directory, a device, a pipe).
    #[error("{} is not a regular file, so it cannot be a GGUF model", path.display())]
    NotARegularFile { path: PathBuf },

    /// Reading failed for a reason other than the file being too short.
    #[error("I/O error while reading the GGUF file at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },

    /// The file ends before a fixed-size field could be read. `section` says which field, with any
    /// name from the file already escaped.
    #[error("the file ends inside {section}: {needed} bytes are needed at offset {offset} but the file is only {file_length} bytes long")]
    Truncated { section: String, offset: u64, needed: u64, file_length: u64 },

    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: the first bytes are \"{}\" instead of \"GGUF\"", found.escape_ascii())]
    BadMagic { found: Vec<u8> },

    /// Only versions 2 and 3 are understood (version 1 used 32-bit lengths and is obsolete).
    #[error("unsupported GGUF version {version}: only versions 2 and 3 are supported")]
    UnsupportedVersion { version: u32 },

    /// The header declares more metadata entries than the file could hold, or more than we accept.
    #[error("the header declares {metadata_count} metadata entries; each needs at least {minimum_bytes_each} bytes but only {remaining_bytes} bytes remain (and at most {limit} entries are accepted)")]
    TooManyMetadataEntries { metadata_count: u64, minimum_bytes_each: u64, remaining_bytes: u64, limit: u64 },

    /// The header declares more tensors than the file could hold, or more than we accept.
    #[error("the header declares {tensor_count} tensors; each tensor info needs at least {minimum_bytes_each} bytes but only {remaining_bytes} bytes remain after the smallest possible metadata (and at most {limit} tensors are accepted)")]
    TooManyTensors { tensor_count: u64, minimum_bytes_each: u64, remaining_bytes: u64, limit: u64 },

    /// A string's declared length runs past the end of the file.
    #[error("{what} declares a string of {length} bytes at offset {offset}, but only {remaining_bytes} bytes remain in the file")]
    StringLengthPastEnd { what: String, offset: u64, length: u64, remaining_bytes: u64 },

    /// A string fits in the file but is longer than any sane GGUF string.
    #[error("{what} declares a string of {length} bytes at offset {offset}, more than the {limit} bytes accepted")]
    StringTooLong { what: String, offset: u64, length: u64, limit: u64 },

    /// A metadata key or tensor name is not valid UTF-8.
    #[error("{what} at offset {offset} is not valid UTF-8 (read as '{}')", lossy.escape_debug())]
    InvalidUtf8 { what: String, offset: u64, lossy: String },

    /// The same metadata key appears twice; loaders keep only one of them, so which one is ambiguous.
    #[error("metadata key '{}' appears more than once", key.escape_debug())]
    DuplicateMetadataKey { key: String },

    /// A value type id that GGUF does not define.
    #[error("{what} has unknown value type {type_id} at offset {offset} (known types are 0..=12)")]
    UnknownValueType { what: String, type_id: u32, offset: u64 },

    /// A boolean stored as something other than 0 or 1.
    #[error("metadata key '{}' holds a boolean byte {byte} at offset {offset}; only 0 and 1 are valid", key.escape_debug())]
    InvalidBool { key: String, byte: u8, offset: u64 },

    /// An array's declared length cannot fit in the rest of the file.
    #[error("metadata key '{}' declares an array of {length} {element_type} values at offset {offset}; each needs at least {minimum_bytes_each} bytes but only {remaining_bytes} bytes remain", key.escape_debug())]
    ArrayLengthPastEnd {
        key: String,
        offset: u64,
        length: u64,
        element_type: &'static str,
        minimum_bytes_each: u64,
        remaining_bytes: u64,
    },

    /// Arrays in the metadata hold more elements, in total, than we accept (a loader materialises
    /// every element, typically at 32 bytes each, so this bounds its memory).
    #[error("metadata key '{}' declares an array of {length} elements after {elements_before} array elements already; at most {limit} array elements are accepted in total", key.escape_debug())]
    ArrayElementBudgetExceeded { key: String, length: u64, elements_before: u64, limit: u64 },

    /// Arrays nested deeper than we accept.
    #[error("metadata key '{}' nests arrays {depth} levels deep; at most {limit} levels are accepted", key.escape_debug())]
    ArrayNestingTooDeep { key: String, depth: u32, limit: u32 },

    /// A metadata value has a type that makes no sense for its key.
    #[error("metadata key '{}' holds a {found} value, expected {expected}", key.escape_debug())]
    MetadataWrongType { key: String, expected: &'static str, found: &'static str },

    /// An integer metadata value outside the range its key allows (negative, or too large for u32).
    #[error("metadata key '{}' is {value}, outside the accepted range {minimum}..={maximum}", key.escape_debug())]
    MetadataValueOutOfRange { key: String, value: i128, minimum: i128, maximum: i128 },

    /// A metadata key that is needed is absent.
    #[error("required metadata key '{key}' is missing")]
    MissingMetadata { key: &'static str },

    /// `general.alignment` is zero or not a power of two, so tensor offsets cannot be aligned to it.
    #[error("general.alignment is {alignment}; it must be a non-zero power of two")]
    AlignmentNotPowerOfTwo { alignment: u64 },

    /// A tensor with no dimensions or more than four.
    #[error("tensor '{}' has {dimension_count} dimensions; 1 to 4 are supported", tensor.escape_debug())]
    TensorDimensionCount { tensor: String, dimension_count: u32 },

    /// A tensor with a dimension of zero elements.
    #[error("tensor '{}' has dimension {dimension_index} equal to zero (dimensions {dimensions:?})", tensor.escape_debug())]
    ZeroTensorDimension { tensor: String, dimension_index: usize, dimensions: Vec<u64> },

    /// The product of a tensor's dimensions does not fit in 64 bits.
    #[error("tensor '{}' dimensions {dimensions:?} multiply to more than 2^64 elements", tensor.escape_debug())]
    TensorElementCountOverflow { tensor: String, dimensions: Vec<u64> },

    /// A ggml type id that candle 0.11 cannot load (unknown, or known but unsupported such as IQ types).
    #[error("tensor '{}' has ggml type id {type_id}, which is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K..Q8_K)", tensor.escape_debug())]
    UnsupportedTensorType { tensor: String, type_id: u32 },

    /// The first (innermost) dimension is not a whole number of quantisation blocks.
    #[error("tensor '{}' has first dimension {first_dimension}, not a multiple of the {type_name} block size {block_size}", tensor.escape_debug())]
    TensorRowNotMultipleOfBlock { tensor: String, first_dimension: u64, type_name: &'static str, block_size: u64 },

    /// The tensor's size in bytes does not fit in 64 bits.
    #[error("tensor '{}' with {element_count} {type_name} elements needs more than 2^64 bytes", tensor.escape_debug())]
    TensorByteSizeOverflow { tensor: String, element_count: u64, type_name: &'static str },

    /// A tensor's offset inside the data section is not a multiple of the alignment.
    #[error("tensor '{}' data offset {offset} is not a multiple of the alignment {alignment}", tensor.escape_debug())]
    UnalignedTensorOffset { tensor: String, offset: u64, alignment: u64 },

    /// A tensor's data runs past the end of the file.
    #[error("tensor '{}' data [offset {}, {byte_size} bytes] ends past the end of the file ({file_length} bytes)", tensor.escape_debug(), u128::from(*data_section_start) + u128::from(*relative_offset))]
    TensorDataPastEnd {
        tensor: String,
        data_section_start: u64,
        relative_offset: u64,
        byte_size: u64,
        file_length: u64,
    },

    /// Two tensors share a name; a loader keeps only one of them.
    #[error("tensor name '{}' appears more than once", name.escape_debug())]
    DuplicateTensorName { name: String },

    /// The model is not a Llama; only Llama is supported.
    #[error("unsupported model architecture '{}': only 'llama' is supported", architecture.escape_debug())]
    UnsupportedArchitecture { architecture: String },

    /// `llama.block_count` is zero or absurdly large.
    #[error("absurd block count: llama.block_count is {block_count}, expected 1..={maximum}")]
    BlockCountOutOfRange { block_count: u32, maximum: u32 },

    /// A hyperparameter that must be positive is zero.
    #[error("metadata key '{key}' is 0; it must be positive")]
    ZeroHyperparameter { key: &'static str },

    /// Grouped-query attention needs the query heads to split evenly over the key/value heads.
    #[error("llama.attention.head_count_kv {head_count_kv} does not divide llama.attention.head_count {head_count}")]
    HeadCountKvDoesNotDivideHeadCount { head_count: u32, head_count_kv: u32 },

    /// The embedding must split evenly into heads.
    #[error("llama.embedding_length {embedding_length} is not divisible by llama.attention.head_count {head_count}")]
    EmbeddingNotDivisibleByHeadCount { embedding_length: u32, head_count: u32 },

    /// The rotary embedding width must be even and fit in one head (candle sizes its tables from it).
    #[error("llama.rope.dimension_count is {rope_dimension_count}; it must be even and within 2..={head_dimension} (the head dimension)")]
    InvalidRopeDimensionCount { rope_dimension_count: u32, head_dimension: u32 },

    /// Mixture-of-experts Llama files use different tensors than the dense model we check.
    #[error("llama.expert_count is {expert_count}: mixture-of-experts models are not supported")]
    MixtureOfExpertsUnsupported { expert_count: u32 },

    /// A tensor the Llama loader needs is absent.
    #[error("required tensor '{name}' is missing")]
    MissingTensor { name: String },

    /// A tensor's shape disagrees with the hyperparameters.
    #[error("tensor '{tensor}' has shape {found:?}, expected {expected} ({reason})")]
    TensorShapeMismatch { tensor: String, found: Vec<u64>, expected: String, reason: String },
}
