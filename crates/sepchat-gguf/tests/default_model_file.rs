//! Validation of the real default model (SmolLM2-135M-Instruct, Q4_1), whole and truncated.
//!
//! The model is fetched by `make fetch-model` before tests run; a missing file fails these tests
//! rather than skipping them, so a broken fetch cannot pass silently.

use std::io::{Read, Write};
use std::path::PathBuf;

use sepchat_gguf::default_model::default_model_path;
use sepchat_gguf::{validate_file, GgufError};

fn model_path() -> PathBuf {
    let path = default_model_path().expect(
        "no home directory, so the default model cannot be located: set SEPCHAT_MODEL_DIR and run `make fetch-model`",
    );
    assert!(path.is_file(), "the default model is missing at {}: run `make fetch-model` first", path.display());
    path
}

#[test]
fn default_model_is_a_valid_llama() {
    let summary = validate_file(&model_path()).unwrap_or_else(|error| panic!("the default model was refused: {error}"));
    assert_eq!(summary.architecture, "llama");
    assert_eq!(summary.version, 3);
    assert_eq!(summary.block_count, 30);
    assert_eq!(summary.head_count, 9);
    assert_eq!(summary.head_count_kv, 3);
    assert_eq!(summary.embedding_length, 576);
    assert_eq!(summary.context_length, Some(8192));
    assert_eq!(summary.alignment, 32);
    // token_embd + output_norm + 9 per block; the output projection is tied to the embedding.
    assert_eq!(summary.tensor_count, 2 + 30 * 9);
    assert_eq!(summary.metadata_count, 33);
    let total_by_type: u64 = summary.file_type_counts.iter().map(|(_, count)| count).sum();
    assert_eq!(total_by_type, summary.tensor_count);
    let count_of =
        |name: &str| summary.file_type_counts.iter().find(|(type_name, _)| type_name == name).map(|(_, count)| *count);
    // Norms stay F32, the embedding is Q8_0, the 7 projections per block are Q4_1.
    assert_eq!(count_of("F32"), Some(1 + 30 * 2));
    assert_eq!(count_of("Q8_0"), Some(1));
    assert_eq!(count_of("Q4_1"), Some(30 * 7));
}

#[test]
fn truncated_default_model_is_always_refused() {
    let path = model_path();
    let file_length = std::fs::metadata(&path).unwrap().len();
    // Metadata ends near 1.77 MB and the tensor table near 1.79 MB in this file; the cuts land in
    // the counts, early metadata, the tokenizer arrays, the tensor table and the data.
    let cuts = [10, 100, 1_000, 900_000, 1_777_000, file_length / 2, file_length - 1_000_000, file_length - 1];
    let directory = tempfile::tempdir().unwrap();
    let truncated_path = directory.path().join("truncated.gguf");
    for cut in cuts {
        let mut prefix = std::fs::File::open(&path).unwrap().take(cut);
        let mut truncated = std::fs::File::create(&truncated_path).unwrap();
        let copied = std::io::copy(&mut prefix, &mut truncated).unwrap();
        truncated.flush().unwrap();
        assert_eq!(copied, cut);
        match validate_file(&truncated_path) {
            Ok(summary) => panic!("the model cut at {cut} bytes passed: {summary:?}"),
            Err(error @ (GgufError::Open { .. } | GgufError::Io { .. })) => {
                panic!("the model cut at {cut} bytes failed to read rather than validate: {error}")
            }
            Err(error) => println!("cut at {cut}: {error}"),
        }
    }
}
