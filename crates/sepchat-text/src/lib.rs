//! Text in and out of a GGUF model, with nothing but the GGUF file:
//!
//! - [`GgufTokenizer`]: a byte-level BPE tokenizer rebuilt from `tokenizer.ggml.*` metadata, giving the same
//!   ids as llama.cpp (special tokens in the text are parsed), plus the model's stop tokens and its SepLLM
//!   separator set ([`GgufTokenizer::separator_ids`]);
//! - [`ChatTemplate`]: the model's own `tokenizer.chat_template`, rendered with minijinja;
//! - [`StreamingDetokenizer`]: generated ids to text deltas that never split a UTF-8 character.
//!
//! Every fallible function returns [`TextError`].

mod detok;
mod error;
mod template;
mod tokenizer;

pub use detok::StreamingDetokenizer;
pub use error::TextError;
pub use template::{ChatMessage, ChatTemplate, CHAT_TEMPLATE_KEY};
pub use tokenizer::GgufTokenizer;
