//! Streaming detokenization: text deltas from token ids arriving one at a time, never splitting a
//! UTF-8 character across deltas.

use crate::error::TextError;
use crate::tokenizer::GgufTokenizer;

/// The replacement character lossy UTF-8 decoding puts where bytes are incomplete.
const REPLACEMENT_CHARACTER: char = '\u{FFFD}';

/// Turns a stream of token ids into text deltas.
///
/// A byte-level BPE token can end in the middle of a multi-byte character (an emoji is often two or three
/// tokens), so decoding token by token would print U+FFFD. This is the standard prefix-offset / read-offset
/// technique over a small window of recent ids: the window starts at the prefix offset (the ids of the last
/// emitted delta, kept only as decoding context) and `read_offset` marks the first id not yet emitted. Each
/// step decodes only the window and emits the part past what `window[..read_offset]` decodes to, unless it
/// ends in an incomplete character, in which case it waits for more ids. Older ids are dropped, so each
/// step costs a few tokens, not the whole history.
#[derive(Debug, Clone, Default)]
pub struct StreamingDetokenizer {
    /// Recent ids, starting at the prefix offset: `window[..read_offset]` is already emitted and only
    /// gives context, the rest is held back.
    window: Vec<u32>,
    read_offset: usize,
    skip_special: bool,
}

impl StreamingDetokenizer {
    /// A detokenizer whose output equals `tokenizer.decode(all_ids, skip_special)` once concatenated.
    pub fn new(skip_special: bool) -> StreamingDetokenizer {
        StreamingDetokenizer { skip_special, ..StreamingDetokenizer::default() }
    }

    /// Adds one id; returns the newly completed text, or `None` while it is held back (an incomplete
    /// character, or a skipped special token).
    pub fn push(&mut self, tokenizer: &GgufTokenizer, id: u32) -> Result<Option<String>, TextError> {
        self.window.push(id);
        let already_emitted = tokenizer.decode(&self.window[..self.read_offset], self.skip_special)?;
        let with_new_ids = tokenizer.decode(&self.window[..], self.skip_special)?;
        if with_new_ids.len() <= already_emitted.len() || with_new_ids.ends_with(REPLACEMENT_CHARACTER) {
            return Ok(None);
        }
        let delta = new_suffix(&with_new_ids, &already_emitted);
        // The emitted ids now end on a character boundary: they become the next step's context.
        self.window.drain(..self.read_offset);
        self.read_offset = self.window.len();
        Ok(Some(delta))
    }

    /// Ends the stream: returns the held-back text, if any. It contains U+FFFD only if the stream really
    /// ended inside a character. The detokenizer is then empty and can start a new stream.
    pub fn finish(&mut self, tokenizer: &GgufTokenizer) -> Result<Option<String>, TextError> {
        let already_emitted = tokenizer.decode(&self.window[..self.read_offset], self.skip_special)?;
        let everything = tokenizer.decode(&self.window[..], self.skip_special)?;
        self.reset();
        if everything.len() <= already_emitted.len() {
            return Ok(None);
        }
        Ok(Some(new_suffix(&everything, &already_emitted)))
    }

    /// Forgets the stream without emitting anything (e.g. when generation is cancelled).
    pub fn reset(&mut self) {
        self.window.clear();
        self.read_offset = 0;
    }

    /// Number of ids currently kept for decoding (context plus held back); stays small.
    pub fn window_len(&self) -> usize {
        self.window.len()
    }
}

/// The text `longer` adds after `prefix`.
///
/// Byte-level decoding maps each token to its bytes, so decoding more ids extends the earlier result and
/// `prefix` ends on a character boundary of `longer`; should a decoder ever break that, fall back to a
/// lossless-as-possible byte cut rather than panic.
fn new_suffix(longer: &str, prefix: &str) -> String {
    match longer.strip_prefix(prefix) {
        Some(suffix) => suffix.to_string(),
        None => String::from_utf8_lossy(longer.as_bytes().get(prefix.len()..).unwrap_or_default()).into_owned(),
    }
}
