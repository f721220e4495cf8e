//! The one error type of this crate.

/// Everything that can go wrong while turning text into token ids and back, or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A metadata key the tokenizer cannot do without is absent from the GGUF file.
    #[error("GGUF metadata key `{key}` is missing")]
    MissingMetadata {
        /// The GGUF metadata key, e.g. `tokenizer.ggml.tokens`.
        key: String,
    },

    /// A metadata key is present but its value has the wrong type or an impossible content.
    #[error("GGUF metadata key `{key}` is invalid: {message}")]
    InvalidMetadata {
        /// The GGUF metadata key.
        key: String,
        /// What is wrong with the value.
        message: String,
    },

    /// `tokenizer.ggml.model` names a tokenizer family this crate does not build.
    #[error("unsupported tokenizer model `{model}` (tokenizer.ggml.model); only `gpt2` (byte-level BPE) is supported")]
    UnsupportedTokenizerModel {
        /// The value of `tokenizer.ggml.model`.
        model: String,
    },

    /// `tokenizer.ggml.pre` names a pre-tokenizer whose splitting rules this crate does not know,
    /// so encoding would silently disagree with llama.cpp.
    #[error(
        "unsupported pre-tokenizer `{pre}` (tokenizer.ggml.pre); supported: smollm, llama-bpe, llama3, llama-v3, gpt2, default"
    )]
    UnsupportedPreTokenizer {
        /// The value of `tokenizer.ggml.pre`.
        pre: String,
    },

    /// The `tokenizers` library refused to build, encode or decode.
    #[error("tokenizer failed to {operation}: {message}")]
    Tokenizer {
        /// What was being done ("build the BPE model", "encode text", ...).
        operation: &'static str,
        /// The library's explanation.
        message: String,
    },

    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    TokenIdOutOfRange {
        /// The offending id.
        id: u32,
        /// Number of tokens in the vocabulary.
        vocab_size: usize,
    },

    /// A chat template failed to compile or to render (including a template's own `raise_exception`).
    #[error("chat template '{name}' {message}")]
    Template {
        /// Name of the template, e.g. `tokenizer.chat_template`.
        name: String,
        /// What failed ("failed to compile: ..." or "failed to render: ...") with minijinja's explanation.
        message: String,
    },
}

impl TextError {
    /// Wraps an error of the `tokenizers` library, which is a boxed trait object we cannot keep as a source.
    pub(crate) fn tokenizer(operation: &'static str, error: tokenizers::Error) -> Self {
        TextError::Tokenizer { operation, message: error.to_string() }
    }
}
