//! A `tokenizers::Tokenizer` built from a GGUF file's own tokenizer metadata, so that token ids match
//! llama.cpp's on the same file without any `tokenizer.json` next to it.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::TextError;

/// GGUF token type of a control token (`<|im_start|>`, `<|endoftext|>`...), as llama.cpp numbers them.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token type of a user-defined token; llama.cpp splits text on these like on control tokens.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The Llama-3 pre-tokenizer regex, as llama.cpp uses it for `llama-bpe` vocabularies.
const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token texts that end a turn or a document in common chat vocabularies; any of them that is a special
/// token of the vocabulary is a stop token even when the GGUF names another token as EOS.
const CONVENTIONAL_STOP_TOKENS: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "</s>"];

/// The chat turn marker that SepLLM keeps as a separator (it starts every turn, like BOS starts the text).
const TURN_START_TOKEN: &str = "<|im_start|>";

/// Punctuation characters that make a token a SepLLM separator (see [`GgufTokenizer::separator_ids`]).
const SEPARATOR_PUNCTUATION: [char; 6] = ['.', ',', '?', '!', ';', ':'];
/// Whitespace characters allowed in a SepLLM separator token.
const SEPARATOR_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];
/// Longest separator token, in characters: keeps long indentation runs of code out of the set.
const SEPARATOR_MAX_CHARS: usize = 4;

/// A byte-level BPE tokenizer rebuilt from GGUF metadata (`tokenizer.ggml.*`).
///
/// Encoding parses special tokens in the text (as llama.cpp's `llama-tokenize --ids` does), so a rendered
/// chat prompt containing `<|im_start|>` becomes the control token, not its characters.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    tokenizer: Tokenizer,
    /// Raw vocabulary strings, indexed by id (byte-level encoded, e.g. `Ġthe`).
    token_texts: Vec<String>,
    /// `true` for control and user-defined tokens, indexed by id.
    special_flags: Vec<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    add_bos_token: bool,
    stop_token_ids: Vec<u32>,
    separator_ids: Vec<u32>,
}

impl GgufTokenizer {
    /// Builds the tokenizer from the metadata of a GGUF file.
    ///
    /// Requires `tokenizer.ggml.model` = `gpt2` (byte-level BPE), `tokenizer.ggml.tokens`,
    /// `tokenizer.ggml.merges` and a known `tokenizer.ggml.pre`; anything else is a typed error rather than a
    /// tokenizer that would quietly produce ids the model was not trained on.
    pub fn from_gguf(content: &Content) -> Result<GgufTokenizer, TextError> {
        let model = required_string(content, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TextError::UnsupportedTokenizerModel { model: model.to_string() });
        }
        let token_texts = string_array(content, "tokenizer.ggml.tokens")?;
        let merges = string_array(content, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|merge| {
                merge.split_once(' ').map(|(left, right)| (left.to_string(), right.to_string())).ok_or_else(|| {
                    TextError::InvalidMetadata {
                        key: "tokenizer.ggml.merges".to_string(),
                        message: format!("merge `{merge}` is not two tokens separated by a space"),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Missing pre-tokenizer: llama.cpp falls back to its default (GPT-2) splitting, so do we.
        let pre_tokenizer_name = optional_string(content, "tokenizer.ggml.pre")?.unwrap_or("default");

        let vocab_size = u32::try_from(token_texts.len()).map_err(|_| TextError::InvalidMetadata {
            key: "tokenizer.ggml.tokens".to_string(),
            message: format!("{} tokens do not fit u32 ids", token_texts.len()),
        })?;
        let vocab: Vocab = token_texts.iter().cloned().zip(0..vocab_size).collect();

        let mut bpe_builder = BPE::builder().vocab_and_merges(vocab, merges);
        if let Some(unknown_id) = optional_u32(content, "tokenizer.ggml.unknown_token_id")? {
            if let Some(unknown_text) = token_texts.get(unknown_id as usize) {
                bpe_builder = bpe_builder.unk_token(unknown_text.clone());
            }
        }
        if is_llama3_pre_tokenizer(pre_tokenizer_name) {
            // llama.cpp emits a whole pre-token as one id when it is in the vocabulary for Llama-3
            // vocabularies (its `ignore_merges`), which can differ from applying the merges.
            bpe_builder = bpe_builder.ignore_merges(true);
        }
        let bpe = bpe_builder.build().map_err(|error| TextError::tokenizer("build the BPE model", error))?;

        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer_for(pre_tokenizer_name)?));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

        let special_flags = special_flags(content, token_texts.len())?;
        let special_tokens: Vec<AddedToken> = token_texts
            .iter()
            .zip(&special_flags)
            .filter(|(_, is_special)| **is_special)
            .map(|(text, _)| AddedToken::from(text.clone(), true))
            .collect();
        tokenizer
            .add_special_tokens(special_tokens)
            .map_err(|error| TextError::tokenizer("register the special tokens", error))?;

        let bos_token_id = optional_token_id(content, "tokenizer.ggml.bos_token_id", vocab_size)?;
        let eos_token_id = optional_token_id(content, "tokenizer.ggml.eos_token_id", vocab_size)?;
        let add_bos_token = optional_bool(content, "tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        if add_bos_token && bos_token_id.is_none() {
            return Err(TextError::InvalidMetadata {
                key: "tokenizer.ggml.add_bos_token".to_string(),
                message: "is true but tokenizer.ggml.bos_token_id is missing".to_string(),
            });
        }

        let mut stop_token_ids = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = optional_token_id(content, key, vocab_size)? {
                push_unique(&mut stop_token_ids, id);
            }
        }
        for text in CONVENTIONAL_STOP_TOKENS {
            if let Some(id) = special_token_id(&token_texts, &special_flags, text) {
                push_unique(&mut stop_token_ids, id);
            }
        }

        let mut gguf_tokenizer = GgufTokenizer {
            tokenizer,
            token_texts,
            special_flags,
            bos_token_id,
            eos_token_id,
            add_bos_token,
            stop_token_ids,
            separator_ids: Vec::new(),
        };
        gguf_tokenizer.separator_ids = gguf_tokenizer.compute_separator_ids()?;
        Ok(gguf_tokenizer)
    }

    /// Turns text into token ids: special tokens written in the text (`<|im_start|>`) become their ids,
    /// and BOS is prepended only when the GGUF asks for it (`tokenizer.ggml.add_bos_token`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        // `add_special_tokens` only drives the post-processor, and there is none: BOS is handled here.
        let encoding =
            self.tokenizer.encode_fast(text, false).map_err(|error| TextError::tokenizer("encode text", error))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if self.add_bos_token {
            ids.extend(self.bos_token_id);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Turns token ids back into text, leaving out control and user-defined tokens when `skip_special`.
    ///
    /// Bytes that do not form valid UTF-8 (a token sequence cut inside a character) become U+FFFD;
    /// use [`crate::StreamingDetokenizer`] for text that arrives one token at a time.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TextError> {
        // The `tokenizers` library silently drops unknown ids; an id past the vocabulary is a caller bug.
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.token_texts.len()) {
            return Err(TextError::TokenIdOutOfRange { id, vocab_size: self.token_texts.len() });
        }
        self.tokenizer.decode(ids, skip_special).map_err(|error| TextError::tokenizer("decode token ids", error))
    }

    /// The raw vocabulary string of a token (byte-level encoded, e.g. `Ġthe` for " the").
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.token_texts.get(id as usize).map(String::as_str)
    }

    /// Number of tokens in the vocabulary (`tokenizer.ggml.tokens`).
    pub fn vocab_size(&self) -> usize {
        self.token_texts.len()
    }

    /// `tokenizer.ggml.bos_token_id`, if the GGUF declares one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// `tokenizer.ggml.eos_token_id`, if the GGUF declares one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// Whether [`encode`](Self::encode) prepends BOS (`tokenizer.ggml.add_bos_token`).
    pub fn adds_bos_token(&self) -> bool {
        self.add_bos_token
    }

    /// Ids that end generation: EOS, the end-of-turn / end-of-message ids the GGUF declares
    /// (`tokenizer.ggml.eot_token_id`, `tokenizer.ggml.eom_token_id`), and whichever of `<|im_end|>`,
    /// `<|eot_id|>`, `<|end_of_text|>`, `</s>` are special tokens of the vocabulary. No duplicates.
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_token_ids
    }

    /// Whether the id is a control or user-defined token (GGUF token type 3 or 4).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_flags.get(id as usize).copied().unwrap_or(false)
    }

    /// The id of a special token by its text, e.g. `<|im_end|>`; `None` if absent or not special.
    pub fn special_token_id(&self, text: &str) -> Option<u32> {
        special_token_id(&self.token_texts, &self.special_flags, text)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// The SepLLM separator set of this vocabulary, sorted by id.
    ///
    /// Rule, derived from the vocabulary and never from hard-coded ids:
    /// 1. Each token is byte-level decoded on its own (special tokens are not considered here). A token is a
    ///    separator when its decoded text
    ///    - is non-empty,
    ///    - consists only of the punctuation characters `.` `,` `?` `!` `;` `:` and the whitespace
    ///      characters space, tab (`\t`), newline (`\n`) and carriage return (`\r`),
    ///    - contains at most one of those punctuation characters, and
    ///    - is at most 4 characters long (so runs of up to 4 spaces or newlines count, longer indentation
    ///      runs do not).
    ///
    ///    A token that decodes to invalid UTF-8 on its own (part of a multi-byte character) contains
    ///    U+FFFD and is never a separator. Tokens that merely contain punctuation next to other characters
    ///    (`."`, `).`, `...`) are not separators.
    /// 2. BOS (`tokenizer.ggml.bos_token_id`) and the chat turn marker `<|im_start|>`, when it is a special
    ///    token of the vocabulary, are added: every turn starts with one, like the text starts with BOS
    ///    in the paper's Llama-3 list.
    pub fn separator_ids(&self) -> Vec<u32> {
        self.separator_ids.clone()
    }

    /// The separator set of the SepLLM paper's streaming experiment, for reproducing it: tokens
    /// whose text is exactly one of the paper's nine separators (`.` `,` `?` `!` `;` `:` space,
    /// tab, newline), one of `.` `,` `?` `!` `;` `:` newline after one space, or a run of two or
    /// three spaces. On SmolLM2 these are the 18 ids of ../shared/reference/stream-ppl.md.
    pub fn paper_separator_ids(&self) -> Result<Vec<u32>, TextError> {
        const NINE: [&str; 9] = [".", ",", "?", "!", ";", ":", " ", "\t", "\n"];
        let mut ids = Vec::new();
        for (id, is_special) in (0u32..).zip(&self.special_flags) {
            if *is_special {
                continue;
            }
            let text = self.decode(&[id], false)?;
            let after_space = text.strip_prefix(' ').is_some_and(|rest| NINE[..6].contains(&rest) || rest == "\n");
            if NINE.contains(&text.as_str()) || after_space || text == "  " || text == "   " {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn compute_separator_ids(&self) -> Result<Vec<u32>, TextError> {
        let mut separator_ids = Vec::new();
        for (id, is_special) in (0u32..).zip(&self.special_flags) {
            if *is_special {
                continue;
            }
            if is_separator_text(&self.decode(&[id], false)?) {
                separator_ids.push(id);
            }
        }
        separator_ids.extend(self.bos_token_id);
        separator_ids.extend(self.special_token_id(TURN_START_TOKEN));
        separator_ids.sort_unstable();
        separator_ids.dedup();
        Ok(separator_ids)
    }
}

/// The text part of the separator rule documented on [`GgufTokenizer::separator_ids`].
fn is_separator_text(text: &str) -> bool {
    let mut char_count = 0;
    let mut punctuation_count = 0;
    for character in text.chars() {
        char_count += 1;
        if SEPARATOR_PUNCTUATION.contains(&character) {
            punctuation_count += 1;
        } else if !SEPARATOR_WHITESPACE.contains(&character) {
            return false;
        }
    }
    char_count > 0 && char_count <= SEPARATOR_MAX_CHARS && punctuation_count <= 1
}

fn is_llama3_pre_tokenizer(name: &str) -> bool {
    matches!(name, "llama-bpe" | "llama3" | "llama-v3")
}

/// The pre-tokenizer that reproduces llama.cpp's splitting for a `tokenizer.ggml.pre` value.
fn pre_tokenizer_for(name: &str) -> Result<PreTokenizerWrapper, TextError> {
    match name {
        // llama.cpp splits every digit on its own for SmolLM, then applies the GPT-2 regex.
        "smollm" => Ok(Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into()),
        _ if is_llama3_pre_tokenizer(name) => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT_REGEX.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|error| TextError::tokenizer("compile the Llama-3 pre-tokenizer regex", error))?;
            // The Split already applied the regex; ByteLevel only maps bytes to its alphabet.
            Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
        }
        "gpt2" | "default" => Ok(ByteLevel::new(false, true, true).into()),
        other => Err(TextError::UnsupportedPreTokenizer { pre: other.to_string() }),
    }
}

fn special_token_id(token_texts: &[String], special_flags: &[bool], text: &str) -> Option<u32> {
    let index =
        token_texts.iter().zip(special_flags).position(|(token_text, is_special)| *is_special && token_text == text)?;
    u32::try_from(index).ok()
}

fn push_unique(ids: &mut Vec<u32>, id: u32) {
    if !ids.contains(&id) {
        ids.push(id);
    }
}

/// Per-id flag: control or user-defined token. A GGUF without token types has no special tokens.
fn special_flags(content: &Content, vocab_size: usize) -> Result<Vec<bool>, TextError> {
    let key = "tokenizer.ggml.token_type";
    let Some(value) = content.metadata.get(key) else {
        return Ok(vec![false; vocab_size]);
    };
    let token_types = value.to_vec().map_err(|error| invalid(key, error))?;
    if token_types.len() != vocab_size {
        return Err(TextError::InvalidMetadata {
            key: key.to_string(),
            message: format!("has {} entries for {vocab_size} tokens", token_types.len()),
        });
    }
    token_types
        .iter()
        .map(|token_type| {
            let token_type = integer(token_type).ok_or_else(|| TextError::InvalidMetadata {
                key: key.to_string(),
                message: format!("entry {token_type:?} is not an integer"),
            })?;
            Ok(token_type == TOKEN_TYPE_CONTROL || token_type == TOKEN_TYPE_USER_DEFINED)
        })
        .collect()
}

fn invalid(key: &str, error: candle_core::Error) -> TextError {
    TextError::InvalidMetadata { key: key.to_string(), message: error.to_string() }
}

fn required_string<'content>(content: &'content Content, key: &str) -> Result<&'content str, TextError> {
    optional_string(content, key)?.ok_or_else(|| TextError::MissingMetadata { key: key.to_string() })
}

pub(crate) fn optional_string<'content>(
    content: &'content Content,
    key: &str,
) -> Result<Option<&'content str>, TextError> {
    content
        .metadata
        .get(key)
        .map(|value| value.to_string().map(String::as_str).map_err(|error| invalid(key, error)))
        .transpose()
}

fn string_array(content: &Content, key: &str) -> Result<Vec<String>, TextError> {
    let value = content.metadata.get(key).ok_or_else(|| TextError::MissingMetadata { key: key.to_string() })?;
    value
        .to_vec()
        .map_err(|error| invalid(key, error))?
        .iter()
        .map(|element| element.to_string().cloned().map_err(|error| invalid(key, error)))
        .collect()
}

fn optional_bool(content: &Content, key: &str) -> Result<Option<bool>, TextError> {
    content.metadata.get(key).map(|value| value.to_bool().map_err(|error| invalid(key, error))).transpose()
}

/// Any GGUF integer type as a u32: writers differ in the integer type they use for ids.
fn optional_u32(content: &Content, key: &str) -> Result<Option<u32>, TextError> {
    let Some(value) = content.metadata.get(key) else {
        return Ok(None);
    };
    let number = integer(value).ok_or_else(|| TextError::InvalidMetadata {
        key: key.to_string(),
        message: format!("{value:?} is not an integer"),
    })?;
    u32::try_from(number).map(Some).map_err(|_| TextError::InvalidMetadata {
        key: key.to_string(),
        message: format!("{number} is not a valid token id"),
    })
}

fn optional_token_id(content: &Content, key: &str, vocab_size: u32) -> Result<Option<u32>, TextError> {
    match optional_u32(content, key)? {
        Some(id) if id >= vocab_size => Err(TextError::InvalidMetadata {
            key: key.to_string(),
            message: format!("token id {id} is outside the vocabulary of {vocab_size} tokens"),
        }),
        other => Ok(other),
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::U8(number) => Some(i64::from(*number)),
        Value::I8(number) => Some(i64::from(*number)),
        Value::U16(number) => Some(i64::from(*number)),
        Value::I16(number) => Some(i64::from(*number)),
        Value::U32(number) => Some(i64::from(*number)),
        Value::I32(number) => Some(i64::from(*number)),
        Value::U64(number) => i64::try_from(*number).ok(),
        Value::I64(number) => Some(*number),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separator_text_rule() {
        for separator in [".", ",", "?", "!", ";", ":", " ", "\t", "\n", "\r\n", " .", ".\n", "\n\n", "    "] {
            assert!(is_separator_text(separator), "{separator:?} should be a separator");
        }
        for other in ["", "a", ".\"", ").", "..", "?!", "     ", " a", "\u{FFFD}"] {
            assert!(!is_separator_text(other), "{other:?} should not be a separator");
        }
    }

    fn pre_tokens(pre_tokenizer_name: &str, text: &str) -> Vec<String> {
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

        let pre_tokenizer = pre_tokenizer_for(pre_tokenizer_name).expect("known pre-tokenizer");
        let mut pre_tokenized = PreTokenizedString::from(text);
        pre_tokenizer.pre_tokenize(&mut pre_tokenized).expect("pre-tokenize");
        pre_tokenized
            .get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_string())
            .collect()
    }

    // "Ġ" is the byte-level form of a space, "Ċ" of a newline. The GPT-2 regex keeps the whitespace before
    // a word with the newlines ("ĊĊĠ"); the Llama-3 regex splits newlines from spaces.
    const SAMPLE: &str = "Hello'Ve world 123\n\n  foo";

    #[test]
    fn smollm_splits_every_digit() {
        assert_eq!(pre_tokens("smollm", SAMPLE), ["Hello", "'", "Ve", "Ġworld", "Ġ", "1", "2", "3", "ĊĊĠ", "Ġfoo"]);
    }

    #[test]
    fn llama3_groups_digits_by_three_and_ignores_contraction_case() {
        for name in ["llama-bpe", "llama3", "llama-v3"] {
            assert_eq!(
                pre_tokens(name, SAMPLE),
                ["Hello", "'Ve", "Ġworld", "Ġ", "123", "ĊĊ", "Ġ", "Ġfoo"],
                "pre-tokenizer {name}"
            );
        }
        assert_eq!(pre_tokens("llama-bpe", "12345"), ["123", "45"]);
    }

    #[test]
    fn gpt2_keeps_digit_runs_and_case_sensitive_contractions() {
        assert_eq!(pre_tokens("gpt2", SAMPLE), ["Hello", "'", "Ve", "Ġworld", "Ġ123", "ĊĊĠ", "Ġfoo"]);
    }

    #[test]
    fn unknown_pre_tokenizer_is_named_in_the_error() {
        let error = pre_tokenizer_for("deepseek-llm").err().map(|error| error.to_string());
        assert!(error.as_deref().is_some_and(|message| message.contains("deepseek-llm")), "{error:?}");
    }
}
