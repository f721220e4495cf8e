//! Validation of synthetic GGUF files: a valid tiny Llama, then one corrupted field at a time.

mod support;

use sepchat_gguf::validate::{
    validate_file, MAX_BLOCK_COUNT, MAX_METADATA_ARRAY_ELEMENTS, MAX_NAME_LENGTH, MAX_STRING_VALUE_LENGTH,
};
use sepchat_gguf::{validate_bytes, GgufError, GgufSummary};
use support::{remove_metadata, set_metadata, GgufFile, Lcg, TensorSpec, TinyLlama, Value, LAST_METADATA_KEY};

/// Asserts that `result` is an error matching the pattern (bindings are references), showing the
/// error's message otherwise.
macro_rules! assert_error {
    ($result:expr, $pattern:pat $(if $guard:expr)?) => {
        match $result {
            Err(error) => {
                assert!(matches!(&error, $pattern $(if $guard)?), "unexpected error: {error} ({error:?})");
                let message = error.to_string();
                assert!(!message.contains('\n'), "error message is not one line: {message}");
            }
            Ok(summary) => panic!("expected an error, but the file passed: {summary:?}"),
        }
    };
}

fn valid_file() -> GgufFile {
    TinyLlama::default().build()
}

fn passes(bytes: &[u8]) -> GgufSummary {
    match validate_bytes(bytes) {
        Ok(summary) => summary,
        Err(error) => panic!("expected a valid file, got: {error} ({error:?})"),
    }
}

/// Appends `count` zero bytes, so a patched length field fits in the file and reaches the limit check.
fn pad(file: &mut GgufFile, count: u64) {
    file.bytes.resize(file.bytes.len() + count as usize, 0);
}

// ---------------------------------------------------------------------------------------------
// Valid files

#[test]
fn minimal_llama_passes_with_its_hyperparameters() {
    let file = valid_file();
    let summary = passes(&file.bytes);
    assert_eq!(summary.version, 3);
    assert_eq!(summary.architecture, "llama");
    assert_eq!(summary.block_count, 2);
    assert_eq!(summary.head_count, 4);
    assert_eq!(summary.head_count_kv, 2);
    assert_eq!(summary.embedding_length, 32);
    assert_eq!(summary.context_length, Some(256));
    assert_eq!(summary.alignment, 32);
    assert_eq!(summary.tensor_count, 20);
    assert_eq!(summary.metadata_count, 13);
    assert_eq!(summary.file_type_counts, vec![("F32".to_string(), 20)]);
}

#[test]
fn variants_that_are_still_valid_pass() {
    let untied = TinyLlama { tied_output: false, ..TinyLlama::default() };
    assert_eq!(passes(&untied.build().bytes).tensor_count, 21);

    let no_alignment_key = TinyLlama { alignment: None, ..TinyLlama::default() };
    assert_eq!(passes(&no_alignment_key.build().bytes).alignment, 32);

    let alignment_64 = TinyLlama { alignment: Some(64), ..TinyLlama::default() };
    assert_eq!(passes(&alignment_64.build().bytes).alignment, 64);

    let version_2 = TinyLlama { version: 2, ..TinyLlama::default() };
    assert_eq!(passes(&version_2.build().bytes).version, 2);

    // Without head_count_kv the model is plain multi-head attention.
    let no_head_count_kv = TinyLlama { head_count_kv: None, ..TinyLlama::default() };
    assert_eq!(passes(&no_head_count_kv.build().bytes).head_count_kv, 4);

    let no_context_length = TinyLlama { context_length: None, ..TinyLlama::default() };
    assert_eq!(passes(&no_context_length.build().bytes).context_length, None);

    let one_block = TinyLlama { block_count: 1, ..TinyLlama::default() };
    assert_eq!(passes(&one_block.build().bytes).block_count, 1);

    // The feed-forward length is then taken from blk.0.ffn_gate.weight.
    let file = TinyLlama::default().build_with(|metadata, _| remove_metadata(metadata, "llama.feed_forward_length"));
    passes(&file.bytes);

    // A dense model may declare a single expert.
    let file =
        TinyLlama::default().build_with(|metadata, _| set_metadata(metadata, "llama.expert_count", Value::U32(1)));
    passes(&file.bytes);

    // Arrays nested two deep are fine.
    let nested = Value::Array(9, vec![Value::Array(0, vec![Value::U8(1), Value::U8(2)]), Value::Array(0, vec![])]);
    let file = TinyLlama::default().build_with(|metadata, _| set_metadata(metadata, "test.nested", nested));
    passes(&file.bytes);

    // Every scalar type, and arrays of each.
    let file = TinyLlama::default().build_with(|metadata, _| {
        set_metadata(metadata, "test.f64", Value::F64(0.5));
        set_metadata(metadata, "test.bool", Value::Bool(true));
        set_metadata(metadata, "test.bools", Value::Array(7, vec![Value::Bool(false), Value::Bool(true)]));
        set_metadata(metadata, "test.i16s", Value::Array(3, vec![Value::I16(-1); 5]));
        set_metadata(metadata, "test.f64s", Value::Array(12, vec![Value::F64(1.0); 3]));
        set_metadata(metadata, "test.empty_string", Value::Str(String::new()));
    });
    passes(&file.bytes);
}

#[test]
fn quantised_tensor_passes_and_is_counted() {
    let mut file = valid_file();
    // Q8_0 needs 32 elements per row block: token_embd.weight [32, 16] takes 16 blocks of 34 bytes,
    // less than the F32 space the writer reserved.
    let type_offset = file.layout.tensor("token_embd.weight").type_offset;
    file.patch_u32(type_offset, 8);
    let summary = passes(&file.bytes);
    assert_eq!(summary.file_type_counts, vec![("F32".to_string(), 19), ("Q8_0".to_string(), 1)]);
}

#[test]
fn hyperparameters_are_accepted_as_any_integer_type() {
    let file = TinyLlama::default().build_with(|metadata, _| {
        set_metadata(metadata, "llama.block_count", Value::U64(2));
        set_metadata(metadata, "llama.attention.head_count", Value::U8(4));
        set_metadata(metadata, "llama.attention.head_count_kv", Value::I64(2));
        set_metadata(metadata, "llama.embedding_length", Value::I32(32));
        set_metadata(metadata, "llama.context_length", Value::U16(256));
        set_metadata(metadata, "llama.feed_forward_length", Value::I16(64));
        set_metadata(metadata, "llama.rope.dimension_count", Value::I8(8));
    });
    let summary = passes(&file.bytes);
    assert_eq!((summary.block_count, summary.head_count, summary.head_count_kv), (2, 4, 2));
    assert_eq!((summary.embedding_length, summary.context_length), (32, Some(256)));
}

#[test]
fn validate_file_agrees_with_validate_bytes() {
    let file = valid_file();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("tiny.gguf");
    std::fs::write(&path, &file.bytes).unwrap();
    let from_file = validate_file(&path).unwrap();
    let from_bytes = passes(&file.bytes);
    assert_eq!(format!("{from_file:?}"), format!("{from_bytes:?}"));

    std::fs::write(&path, file.prefix(file.bytes.len() as u64 - 1)).unwrap();
    assert_error!(validate_file(&path), GgufError::TensorDataPastEnd { .. });

    assert_error!(validate_file(&directory.path().join("missing.gguf")), GgufError::Open { .. });
    assert_error!(validate_file(directory.path()), GgufError::NotARegularFile { .. });
}

// ---------------------------------------------------------------------------------------------
// Header

#[test]
fn wrong_magic_is_refused() {
    let mut file = valid_file();
    file.patch_byte(0, b'X');
    assert_error!(validate_bytes(&file.bytes), GgufError::BadMagic { found } if found == b"XGUF");
}

#[test]
fn versions_other_than_2_and_3_are_refused() {
    for version in [0, 1, 4, 99, u32::MAX] {
        let mut file = valid_file();
        file.patch_u32(4, version);
        assert_error!(validate_bytes(&file.bytes), GgufError::UnsupportedVersion { version: found } if *found == version);
    }
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    for tensor_count in [u64::MAX, u64::MAX / 32 + 1, 1 << 40] {
        let mut file = valid_file();
        file.patch_u64(8, tensor_count);
        assert_error!(validate_bytes(&file.bytes), GgufError::TooManyTensors { tensor_count: found, .. } if *found == tensor_count);
    }
    for metadata_count in [u64::MAX, u64::MAX / 13 + 1, 1 << 40] {
        let mut file = valid_file();
        file.patch_u64(16, metadata_count);
        assert_error!(validate_bytes(&file.bytes), GgufError::TooManyMetadataEntries { metadata_count: found, .. } if *found == metadata_count);
    }
}

// ---------------------------------------------------------------------------------------------
// Truncation

#[test]
fn truncation_in_every_section_gives_the_specific_error() {
    let file = valid_file();
    let layout = &file.layout;
    let first_key = layout.entry("general.architecture");
    let chat_template = layout.entry("tokenizer.chat_template");
    let tokens = layout.entry("tokenizer.ggml.tokens");
    let last_key = layout.entry(LAST_METADATA_KEY);
    let first_tensor = layout.tensor("token_embd.weight");
    let last_tensor = layout.tensor("blk.1.ffn_down.weight");
    let file_length = file.bytes.len() as u64;
    let validate_prefix = |length: u64| validate_bytes(file.prefix(length));

    assert_error!(validate_prefix(0), GgufError::Truncated { section, .. } if section == "the magic bytes");
    assert_error!(validate_prefix(2), GgufError::Truncated { section, .. } if section == "the magic bytes");
    assert_error!(validate_prefix(6), GgufError::Truncated { section, .. } if section == "the version");
    assert_error!(validate_prefix(12), GgufError::Truncated { section, .. } if section == "the tensor count");
    assert_error!(validate_prefix(20), GgufError::Truncated { section, .. } if section == "the metadata entry count");
    // Early in the metadata, the declared counts no longer fit in what is left: refused up front.
    assert_error!(validate_prefix(24), GgufError::TooManyMetadataEntries { .. });
    assert_error!(validate_prefix(first_key.key_length_offset + 8 + 3), GgufError::TooManyMetadataEntries { .. });
    // Later, the per-field checks catch it.
    assert_error!(validate_prefix(chat_template.value_offset + 8 + 1000), GgufError::StringLengthPastEnd { what, .. }
        if what == "the value of metadata key 'tokenizer.chat_template'");
    assert_error!(validate_prefix(tokens.value_offset + 2), GgufError::Truncated { .. });
    assert_error!(validate_prefix(tokens.value_offset + 4 + 3), GgufError::Truncated { .. });
    // Cut early in the array, its 16 strings cannot fit even if empty: refused before walking it.
    assert_error!(validate_prefix(tokens.value_offset + 12 + 8 + 2), GgufError::ArrayLengthPastEnd { key, length: 16, .. }
        if key == "tokenizer.ggml.tokens");
    // Cut inside its last string ("token15"), only that string is found short.
    assert_error!(validate_prefix(tokens.end_offset - 3), GgufError::StringLengthPastEnd { what, length: 7, remaining_bytes: 4, .. }
        if what == "element 15 of an array in metadata key 'tokenizer.ggml.tokens'");
    assert_error!(validate_prefix(last_key.key_length_offset + 4), GgufError::Truncated { .. });
    assert_error!(validate_prefix(last_key.key_length_offset + 8 + 5), GgufError::StringLengthPastEnd { .. });
    assert_error!(validate_prefix(last_key.value_type_offset + 2), GgufError::Truncated { .. });
    assert_error!(validate_prefix(last_key.value_offset + 2), GgufError::Truncated { .. });
    assert_error!(validate_prefix(first_tensor.name_length_offset + 8 + 4), GgufError::StringLengthPastEnd { .. });
    assert_error!(validate_prefix(last_tensor.name_length_offset + 3), GgufError::Truncated { .. });
    assert_error!(validate_prefix(last_tensor.name_length_offset + 8 + 4), GgufError::StringLengthPastEnd { .. });
    assert_error!(validate_prefix(last_tensor.dimension_count_offset + 1), GgufError::Truncated { .. });
    assert_error!(validate_prefix(last_tensor.dimensions_offset + 12), GgufError::Truncated { .. });
    assert_error!(validate_prefix(last_tensor.type_offset + 3), GgufError::Truncated { .. });
    assert_error!(validate_prefix(last_tensor.offset_field_offset + 7), GgufError::Truncated { .. });
    // Once the table is complete, missing data is a tensor past the end of the file.
    assert_error!(validate_prefix(layout.tensor_table_end), GgufError::TensorDataPastEnd { tensor, .. } if tensor == "token_embd.weight");
    assert_error!(validate_prefix(layout.data_section_start + 1), GgufError::TensorDataPastEnd { .. });
    assert_error!(validate_prefix(file_length / 2), GgufError::TensorDataPastEnd { .. });
    assert_error!(validate_prefix(file_length - 1), GgufError::TensorDataPastEnd { tensor, relative_offset, byte_size, file_length: length, .. }
        if tensor == "blk.1.ffn_down.weight" && *relative_offset == last_tensor.relative_data_offset
            && *byte_size == 64 * 32 * 4 && *length == file_length - 1);
}

#[test]
fn every_prefix_of_a_valid_file_is_refused() {
    let file = valid_file();
    let file_length = file.bytes.len() as u64;
    // Every cut through the header; the data region is zeros, so a sparse sample of it suffices.
    let cuts =
        (0..file.layout.data_section_start + 64).chain((file.layout.data_section_start..file_length).step_by(61));
    for length in cuts {
        assert!(validate_bytes(file.prefix(length)).is_err(), "prefix of {length} bytes passed");
    }
}

#[test]
fn tensor_data_past_the_end_names_the_numbers() {
    let file = valid_file();
    let length = file.bytes.len() as u64 - 1;
    let last_tensor = file.layout.tensor("blk.1.ffn_down.weight");
    let message = validate_bytes(file.prefix(length)).unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "tensor 'blk.1.ffn_down.weight' data [offset {}, 8192 bytes] ends past the end of the file ({length} bytes)",
            last_tensor.absolute_data_offset
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Strings, arrays and value types

#[test]
fn string_length_past_the_end_is_refused() {
    let mut file = valid_file();
    let key = file.layout.entry("general.architecture").key_length_offset;
    file.patch_u64(key, u64::MAX);
    assert_error!(validate_bytes(&file.bytes), GgufError::StringLengthPastEnd { what, length, .. }
        if what == "metadata key #0" && *length == u64::MAX);

    let mut file = valid_file();
    let value = file.layout.entry("general.name").value_offset;
    file.patch_u64(value, u64::MAX);
    assert_error!(validate_bytes(&file.bytes), GgufError::StringLengthPastEnd { what, .. }
        if what == "the value of metadata key 'general.name'");

    let mut file = valid_file();
    let name = file.layout.tensor("blk.0.attn_q.weight").name_length_offset;
    file.patch_u64(name, u64::MAX);
    assert_error!(validate_bytes(&file.bytes), GgufError::StringLengthPastEnd { .. });
}

#[test]
fn strings_longer_than_the_limits_are_refused_even_when_the_file_holds_them() {
    let mut file = valid_file();
    pad(&mut file, MAX_STRING_VALUE_LENGTH + 16);
    let value = file.layout.entry("general.name").value_offset;
    file.patch_u64(value, MAX_STRING_VALUE_LENGTH + 1);
    assert_error!(validate_bytes(&file.bytes), GgufError::StringTooLong { limit, .. } if *limit == MAX_STRING_VALUE_LENGTH);

    let mut file = valid_file();
    pad(&mut file, MAX_NAME_LENGTH + 16);
    let key = file.layout.entry("general.name").key_length_offset;
    file.patch_u64(key, MAX_NAME_LENGTH + 1);
    assert_error!(validate_bytes(&file.bytes), GgufError::StringTooLong { limit, .. } if *limit == MAX_NAME_LENGTH);
}

#[test]
fn array_length_past_the_end_is_refused() {
    for length in [u64::MAX, u64::MAX / 8 + 1, 1 << 32] {
        let mut file = valid_file();
        let array = file.layout.entry("tokenizer.ggml.tokens").value_offset;
        file.patch_u64(array + 4, length);
        assert_error!(validate_bytes(&file.bytes), GgufError::ArrayLengthPastEnd { key, length: found, element_type, .. }
            if key == "tokenizer.ggml.tokens" && *found == length && *element_type == "string");
    }
}

#[test]
fn arrays_beyond_the_element_budget_are_refused() {
    let mut file = TinyLlama::default()
        .build_with(|metadata, _| set_metadata(metadata, "test.bytes", Value::Array(0, vec![Value::U8(0); 4])));
    pad(&mut file, MAX_METADATA_ARRAY_ELEMENTS + 16);
    let array = file.layout.entry("test.bytes").value_offset;
    file.patch_u64(array + 4, MAX_METADATA_ARRAY_ELEMENTS);
    // The 16 tokens already counted push the total over the budget.
    assert_error!(validate_bytes(&file.bytes), GgufError::ArrayElementBudgetExceeded { key, elements_before, .. }
        if key == "test.bytes" && *elements_before == 16);
}

#[test]
fn deeply_nested_arrays_are_refused() {
    let mut nested = Value::Array(0, vec![Value::U8(1)]);
    for _ in 0..4 {
        nested = Value::Array(9, vec![nested]);
    }
    let file = TinyLlama::default().build_with(|metadata, _| set_metadata(metadata, "test.nested", nested));
    assert_error!(validate_bytes(&file.bytes), GgufError::ArrayNestingTooDeep { depth: 5, limit: 4, .. });
}

#[test]
fn unknown_value_types_are_refused() {
    let mut file = valid_file();
    let value_type = file.layout.entry("general.name").value_type_offset;
    file.patch_u32(value_type, 13);
    assert_error!(validate_bytes(&file.bytes), GgufError::UnknownValueType { type_id: 13, .. });

    let mut file = valid_file();
    let array = file.layout.entry("tokenizer.ggml.tokens").value_offset;
    file.patch_u32(array, 99);
    assert_error!(validate_bytes(&file.bytes), GgufError::UnknownValueType { type_id: 99, .. });
}

#[test]
fn booleans_other_than_0_and_1_are_refused() {
    let mut file =
        TinyLlama::default().build_with(|metadata, _| set_metadata(metadata, "test.flag", Value::Bool(true)));
    let value = file.layout.entry("test.flag").value_offset;
    file.patch_byte(value, 2);
    assert_error!(validate_bytes(&file.bytes), GgufError::InvalidBool { byte: 2, .. });

    let mut file = TinyLlama::default()
        .build_with(|metadata, _| set_metadata(metadata, "test.flags", Value::Array(7, vec![Value::Bool(false); 3])));
    let array = file.layout.entry("test.flags").value_offset;
    file.patch_byte(array + 12 + 1, 7);
    assert_error!(validate_bytes(&file.bytes), GgufError::InvalidBool { byte: 7, offset, .. } if *offset == array + 13);
}

#[test]
fn names_must_be_utf8() {
    let mut file = valid_file();
    let key = file.layout.entry("general.name").key_length_offset;
    file.patch_byte(key + 8 + 2, 0xFF);
    assert_error!(validate_bytes(&file.bytes), GgufError::InvalidUtf8 { what, .. } if what == "metadata key #1");

    let mut file = valid_file();
    let name = file.layout.tensor("blk.1.attn_q.weight").name_length_offset;
    file.patch_byte(name + 8, 0xC3); // A lone UTF-8 lead byte.
    assert_error!(validate_bytes(&file.bytes), GgufError::InvalidUtf8 { .. });

    // Invalid UTF-8 in a value is fine: values are read lossily, as candle does.
    let mut file = valid_file();
    let value = file.layout.entry("general.name").value_offset;
    file.patch_byte(value + 8, 0xFF);
    passes(&file.bytes);
}

#[test]
fn duplicate_metadata_keys_are_refused() {
    let file =
        TinyLlama::default().build_with(|metadata, _| metadata.push(("llama.block_count".to_string(), Value::U32(2))));
    assert_error!(validate_bytes(&file.bytes), GgufError::DuplicateMetadataKey { key } if key == "llama.block_count");

    // candle drops trailing NULs from names, so this is the same key to it.
    let file =
        TinyLlama::default().build_with(|metadata, _| metadata.push(("general.name\0".to_string(), Value::U32(2))));
    assert_error!(validate_bytes(&file.bytes), GgufError::DuplicateMetadataKey { key } if key == "general.name");
}

// ---------------------------------------------------------------------------------------------
// general.alignment

#[test]
fn zero_alignment_is_refused() {
    let mut file = valid_file();
    let value = file.layout.entry("general.alignment").value_offset;
    file.patch_u32(value, 0);
    assert_error!(validate_bytes(&file.bytes), GgufError::AlignmentNotPowerOfTwo { alignment: 0 });
}

#[test]
fn alignment_that_is_not_a_power_of_two_is_refused() {
    for alignment in [3, 48, u32::MAX] {
        let mut file = valid_file();
        let value = file.layout.entry("general.alignment").value_offset;
        file.patch_u32(value, alignment);
        assert_error!(validate_bytes(&file.bytes), GgufError::AlignmentNotPowerOfTwo { alignment: found } if *found == u64::from(alignment));
    }
}

#[test]
fn alignment_must_be_stored_as_u32() {
    let file =
        TinyLlama::default().build_with(|metadata, _| set_metadata(metadata, "general.alignment", Value::U64(32)));
    assert_error!(validate_bytes(&file.bytes), GgufError::MetadataWrongType { key, found: "u64", .. } if key == "general.alignment");
}

// ---------------------------------------------------------------------------------------------
// Tensor infos

#[test]
fn overflowing_dimensions_are_refused() {
    let mut file = valid_file();
    let dimensions = file.layout.tensor("token_embd.weight").dimensions_offset;
    file.patch_u64(dimensions, u64::MAX / 2);
    file.patch_u64(dimensions + 8, 4);
    assert_error!(validate_bytes(&file.bytes), GgufError::TensorElementCountOverflow { tensor, dimensions }
        if tensor == "token_embd.weight" && *dimensions == vec![u64::MAX / 2, 4]);
}

#[test]
fn byte_size_overflow_is_refused() {
    // 2^62 F32 elements fit in u64, their 2^64 bytes do not.
    let mut file = valid_file();
    let dimensions = file.layout.tensor("token_embd.weight").dimensions_offset;
    file.patch_u64(dimensions, 1 << 62);
    file.patch_u64(dimensions + 8, 1);
    assert_error!(validate_bytes(&file.bytes), GgufError::TensorByteSizeOverflow { element_count, type_name: "F32", .. }
        if *element_count == 1 << 62);
}

#[test]
fn zero_dimension_is_refused() {
    let mut file = valid_file();
    let dimensions = file.layout.tensor("blk.0.attn_q.weight").dimensions_offset;
    file.patch_u64(dimensions + 8, 0);
    assert_error!(validate_bytes(&file.bytes), GgufError::ZeroTensorDimension { tensor, dimension_index: 1, .. } if tensor == "blk.0.attn_q.weight");
}

#[test]
fn dimension_counts_outside_1_to_4_are_refused() {
    for dimension_count in [0, 5, u32::MAX] {
        let mut file = valid_file();
        let offset = file.layout.tensor("blk.0.attn_q.weight").dimension_count_offset;
        file.patch_u32(offset, dimension_count);
        assert_error!(validate_bytes(&file.bytes), GgufError::TensorDimensionCount { dimension_count: found, .. } if *found == dimension_count);
    }
}

#[test]
fn unsupported_tensor_types_are_refused() {
    for type_id in [4, 5, 16, 29, 99, u32::MAX] {
        let mut file = valid_file();
        let offset = file.layout.tensor("blk.0.attn_v.weight").type_offset;
        file.patch_u32(offset, type_id);
        assert_error!(validate_bytes(&file.bytes), GgufError::UnsupportedTensorType { tensor, type_id: found }
            if tensor == "blk.0.attn_v.weight" && *found == type_id);
    }
}

#[test]
fn rows_that_are_not_whole_blocks_are_refused() {
    let mut file = valid_file();
    let tensor = file.layout.tensor("token_embd.weight").clone();
    file.patch_u32(tensor.type_offset, 8); // Q8_0
    file.patch_u64(tensor.dimensions_offset, 33);
    assert_error!(
        validate_bytes(&file.bytes),
        GgufError::TensorRowNotMultipleOfBlock { first_dimension: 33, type_name: "Q8_0", block_size: 32, .. }
    );
}

#[test]
fn tensor_offset_past_the_end_is_refused() {
    for relative_offset in [1 << 20, u64::MAX / 32 * 32] {
        let mut file = valid_file();
        let offset_field = file.layout.tensor("blk.1.ffn_up.weight").offset_field_offset;
        file.patch_u64(offset_field, relative_offset);
        assert_error!(validate_bytes(&file.bytes), GgufError::TensorDataPastEnd { tensor, relative_offset: found, .. }
            if tensor == "blk.1.ffn_up.weight" && *found == relative_offset);
    }
}

#[test]
fn unaligned_tensor_offset_is_refused() {
    let mut file = valid_file();
    let tensor = file.layout.tensor("blk.0.ffn_norm.weight").clone();
    file.patch_u64(tensor.offset_field_offset, tensor.relative_data_offset + 4);
    assert_error!(validate_bytes(&file.bytes), GgufError::UnalignedTensorOffset { alignment: 32, .. });
}

#[test]
fn duplicate_tensor_names_are_refused() {
    let mut file = valid_file();
    // "blk.0.attn_k.weight" -> "blk.0.attn_q.weight"
    let name = file.layout.tensor("blk.0.attn_k.weight").name_length_offset;
    file.patch_byte(name + 8 + 11, b'q');
    assert_error!(validate_bytes(&file.bytes), GgufError::DuplicateTensorName { name } if name == "blk.0.attn_q.weight");
}

// ---------------------------------------------------------------------------------------------
// Llama metadata

fn patch_metadata_u32(key: &str, value: u32) -> GgufFile {
    let mut file = valid_file();
    let offset = file.layout.entry(key).value_offset;
    file.patch_u32(offset, value);
    file
}

#[test]
fn other_architectures_are_refused() {
    let gpt2 = TinyLlama { architecture: "gpt2".to_string(), ..TinyLlama::default() };
    assert_error!(validate_bytes(&gpt2.build().bytes), GgufError::UnsupportedArchitecture { architecture } if architecture == "gpt2");

    let file = TinyLlama::default().build_with(|metadata, _| remove_metadata(metadata, "general.architecture"));
    assert_error!(validate_bytes(&file.bytes), GgufError::MissingMetadata { key: "general.architecture" });

    let file =
        TinyLlama::default().build_with(|metadata, _| set_metadata(metadata, "general.architecture", Value::U32(1)));
    assert_error!(validate_bytes(&file.bytes), GgufError::MetadataWrongType { found: "u32", .. });
}

#[test]
fn absurd_block_count_is_refused() {
    for block_count in [0, MAX_BLOCK_COUNT + 1, 1_000_000, u32::MAX] {
        let file = patch_metadata_u32("llama.block_count", block_count);
        assert_error!(validate_bytes(&file.bytes), GgufError::BlockCountOutOfRange { block_count: found, maximum: 1024 } if *found == block_count);
    }
}

#[test]
fn zero_head_count_is_refused() {
    let file = patch_metadata_u32("llama.attention.head_count", 0);
    assert_error!(validate_bytes(&file.bytes), GgufError::ZeroHyperparameter { key: "llama.attention.head_count" });
    let file = patch_metadata_u32("llama.attention.head_count_kv", 0);
    assert_error!(validate_bytes(&file.bytes), GgufError::ZeroHyperparameter { key: "llama.attention.head_count_kv" });
    let file = patch_metadata_u32("llama.embedding_length", 0);
    assert_error!(validate_bytes(&file.bytes), GgufError::ZeroHyperparameter { key: "llama.embedding_length" });
    let file = patch_metadata_u32("llama.context_length", 0);
    assert_error!(validate_bytes(&file.bytes), GgufError::ZeroHyperparameter { key: "llama.context_length" });
}

#[test]
fn head_count_kv_must_divide_head_count() {
    let file = patch_metadata_u32("llama.attention.head_count_kv", 3);
    assert_error!(
        validate_bytes(&file.bytes),
        GgufError::HeadCountKvDoesNotDivideHeadCount { head_count: 4, head_count_kv: 3 }
    );
}

#[test]
fn embedding_must_split_into_heads() {
    let file = patch_metadata_u32("llama.embedding_length", 30);
    assert_error!(
        validate_bytes(&file.bytes),
        GgufError::EmbeddingNotDivisibleByHeadCount { embedding_length: 30, head_count: 4 }
    );
}

#[test]
fn missing_hyperparameters_are_refused() {
    for key in ["llama.block_count", "llama.attention.head_count", "llama.embedding_length"] {
        let file = TinyLlama::default().build_with(|metadata, _| remove_metadata(metadata, key));
        assert_error!(validate_bytes(&file.bytes), GgufError::MissingMetadata { key: found } if *found == key);
    }
}

#[test]
fn negative_or_oversized_or_non_integer_hyperparameters_are_refused() {
    let file = TinyLlama::default()
        .build_with(|metadata, _| set_metadata(metadata, "llama.attention.head_count", Value::I32(-4)));
    assert_error!(validate_bytes(&file.bytes), GgufError::MetadataValueOutOfRange { value: -4, minimum: 0, .. });

    let file =
        TinyLlama::default().build_with(|metadata, _| set_metadata(metadata, "llama.block_count", Value::U64(1 << 33)));
    assert_error!(validate_bytes(&file.bytes), GgufError::MetadataValueOutOfRange { value, maximum, .. }
        if *value == 1 << 33 && *maximum == i128::from(u32::MAX));

    let file = TinyLlama::default()
        .build_with(|metadata, _| set_metadata(metadata, "llama.attention.head_count", Value::F32(4.0)));
    assert_error!(
        validate_bytes(&file.bytes),
        GgufError::MetadataWrongType { expected: "an integer", found: "f32", .. }
    );

    let file = TinyLlama::default()
        .build_with(|metadata, _| set_metadata(metadata, "llama.embedding_length", Value::Str("32".to_string())));
    assert_error!(validate_bytes(&file.bytes), GgufError::MetadataWrongType { found: "string", .. });
}

#[test]
fn invalid_rope_dimension_count_is_refused() {
    // The head dimension is 32 / 4 = 8.
    for rope_dimension_count in [0, 7, 10, u32::MAX] {
        let file = patch_metadata_u32("llama.rope.dimension_count", rope_dimension_count);
        assert_error!(validate_bytes(&file.bytes), GgufError::InvalidRopeDimensionCount { rope_dimension_count: found, head_dimension: 8 }
            if *found == rope_dimension_count);
    }
}

#[test]
fn mixture_of_experts_is_refused() {
    let file =
        TinyLlama::default().build_with(|metadata, _| set_metadata(metadata, "llama.expert_count", Value::U32(8)));
    assert_error!(validate_bytes(&file.bytes), GgufError::MixtureOfExpertsUnsupported { expert_count: 8 });
}

// ---------------------------------------------------------------------------------------------
// Llama tensors

#[test]
fn missing_tensors_are_refused() {
    for name in [
        "token_embd.weight",
        "output_norm.weight",
        "blk.0.attn_q.weight",
        "blk.1.ffn_down.weight",
        "blk.1.attn_norm.weight",
    ] {
        let file = TinyLlama::default().build_with(|_, tensors| tensors.retain(|tensor| tensor.name != name));
        assert_error!(validate_bytes(&file.bytes), GgufError::MissingTensor { name: found } if found == name);
    }
    // A file that declares more blocks than it has.
    let file = patch_metadata_u32("llama.block_count", 3);
    assert_error!(validate_bytes(&file.bytes), GgufError::MissingTensor { name } if name == "blk.2.attn_norm.weight");
}

#[test]
fn inconsistent_shapes_are_refused() {
    // attn_k must be [embedding, head_count_kv * head_dimension] = [32, 16].
    let mut file = valid_file();
    let dimensions = file.layout.tensor("blk.1.attn_k.weight").dimensions_offset;
    file.patch_u64(dimensions + 8, 8);
    assert_error!(validate_bytes(&file.bytes), GgufError::TensorShapeMismatch { tensor, found, expected, .. }
        if tensor == "blk.1.attn_k.weight" && *found == vec![32, 8] && expected == "[32, 16]");

    // The embedding must match llama.embedding_length.
    let file = patch_metadata_u32("llama.embedding_length", 64);
    assert_error!(validate_bytes(&file.bytes), GgufError::TensorShapeMismatch { tensor, .. } if tensor == "token_embd.weight");

    // ffn_down is [feed_forward_length, embedding].
    let mut file = valid_file();
    let dimensions = file.layout.tensor("blk.1.ffn_down.weight").dimensions_offset;
    file.patch_u64(dimensions, 32);
    assert_error!(validate_bytes(&file.bytes), GgufError::TensorShapeMismatch { tensor, .. } if tensor == "blk.1.ffn_down.weight");

    // An untied output must cover the same vocabulary as the token embedding.
    let mut file = TinyLlama { tied_output: false, ..TinyLlama::default() }.build();
    let dimensions = file.layout.tensor("output.weight").dimensions_offset;
    file.patch_u64(dimensions + 8, 8);
    assert_error!(validate_bytes(&file.bytes), GgufError::TensorShapeMismatch { tensor, .. } if tensor == "output.weight");

    // A norm with two dimensions.
    let file = TinyLlama::default().build_with(|_, tensors| {
        tensors.retain(|tensor| tensor.name != "output_norm.weight");
        tensors.push(TensorSpec::f32("output_norm.weight", &[32, 1]));
    });
    assert_error!(validate_bytes(&file.bytes), GgufError::TensorShapeMismatch { tensor, .. } if tensor == "output_norm.weight");
}

// ---------------------------------------------------------------------------------------------
// Property: no input panics

#[test]
fn random_mutations_never_panic() {
    let file = valid_file();
    let header_length = file.layout.data_section_start;
    let interesting_values = [0, 1, 2, 3, 31, 32, 255, 256, u64::from(u32::MAX), 1 << 32, u64::MAX / 2, u64::MAX];
    let mut random = Lcg::new(0x5EED_CAFE);
    let mut outcomes = [0u32; 2];
    for iteration in 0..2_000 {
        let mut bytes = file.bytes.clone();
        match random.below(4) {
            // A few random bytes, mostly in the header where the parser looks.
            0 | 1 => {
                for _ in 0..=random.below(4) {
                    let position = if random.below(8) == 0 {
                        random.below(bytes.len() as u64)
                    } else {
                        random.below(header_length)
                    };
                    bytes[position as usize] = random.below(256) as u8;
                }
            }
            // An interesting value written over a random (unaligned) spot of the header.
            2 => {
                let value = interesting_values[random.below(interesting_values.len() as u64) as usize];
                let position = random.below(header_length - 8) as usize;
                let width = if random.below(2) == 0 { 4 } else { 8 };
                bytes[position..position + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
            // A random byte, then a random truncation.
            _ => {
                let position = random.below(header_length) as usize;
                bytes[position] ^= 1 << random.below(8);
                bytes.truncate(random.below(bytes.len() as u64) as usize);
            }
        }
        let outcome = std::panic::catch_unwind(|| validate_bytes(&bytes));
        match outcome {
            Ok(Ok(_)) => outcomes[0] += 1,
            Ok(Err(error)) => {
                let message = error.to_string();
                assert!(!message.contains('\n'), "iteration {iteration}: message is not one line: {message}");
                outcomes[1] += 1;
            }
            Err(_) => panic!("validate_bytes panicked on mutation iteration {iteration}"),
        }
    }
    // Both outcomes must occur, or the mutations are not exercising anything.
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "outcomes (ok, err): {outcomes:?}");
}
