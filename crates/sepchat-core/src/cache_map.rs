//! The token map and the A/B switch: a conversation's active branch replayed through a cache of any setting,
//! without running the model ([`sepchat_engine::CacheSimulator`]), and what that cache would still hold of each
//! message's text.
//!
//! The replay feeds the engine's decisions exactly what a turn-by-turn chat fed them: for each reply, the prompt
//! the turn rendered (the branch up to its user message, as `chat.rs` builds it), of which the simulator prefills
//! only what its session has not seen (rolling back or rebuilding as the worker does), then the reply's tokens one
//! at a time. A reply's tokens are its stored text tokenized again: the ids the model generated are not stored, and
//! a sampler can pick a split the tokenizer would not (`exact` says when the counts disagree with the stored
//! `tokens_out`). The simulation is what a session that stayed warm would hold; a session replayed from the
//! stored text after it went cold (see `session.rs`) was fed the whole prompt at once and can differ.

use sepchat_engine::{CacheConfig, LlamaModel, TokenState as EngineTokenState};
use sepchat_store::{Message, Role};
use sepchat_text::ChatMessage;

use crate::api::{self, ApiError, CacheMap, CacheMapSegment, MessageCacheMap, TokenState};
use crate::app::{blocking, App, LoadedModel};
use crate::error::{CoreError, Result};
use crate::prompt;

impl App {
    /// The active branch of `conversation_id` replayed through the cache `cache` (a spec or profile, checked as the
    /// settings check it; `None`: the conversation's own), with the readout that cache would show and, per message,
    /// its text cut into segments by what the cache still holds of their tokens.
    pub async fn cache_map(&self, conversation_id: i64, cache: Option<String>) -> Result<CacheMap, ApiError> {
        let inner = &self.inner;
        let model = inner.loaded()?;
        let conversation = inner.store.get_conversation(conversation_id).await.map_err(CoreError::from)?;
        let spec = cache.or(conversation.cache_profile.clone());
        let config = prompt::cache_config(spec.as_deref(), model.info.context_length)?;
        let branch = match conversation.active_leaf_id {
            Some(leaf) => inner.store.branch(leaf).await.map_err(CoreError::from)?,
            None => Vec::new(),
        };
        let system_prompt = conversation.system_prompt.clone();
        // Tokenizing every turn's prompt is CPU work proportional to the conversation: off the async threads.
        let map = blocking(move || simulate(conversation_id, &model, config, system_prompt.as_deref(), &branch));
        Ok(map.await?)
    }
}

/// One reply of the branch as the engine saw it.
struct Turn {
    /// The reply's index in the branch.
    index: usize,
    prompt: prompt::Prompt,
    /// The reply's tokens, and how many of them were fed back (a reply cut at its token limit never feeds its
    /// last token: the worker stops before).
    reply: Vec<u32>,
    fed: usize,
}

fn simulate(
    conversation_id: i64,
    model: &LoadedModel,
    config: CacheConfig,
    system_prompt: Option<&str>,
    branch: &[Message],
) -> Result<CacheMap> {
    let llama = model.model();
    let mut simulator = llama.new_cache_simulator(config.clone());
    let mut exact = true;
    let mut last: Option<(Turn, Vec<ChatMessage>)> = None;
    for (index, message) in branch.iter().enumerate() {
        if message.role != Role::Assistant {
            continue;
        }
        let messages = turn_messages(system_prompt, &branch[..index]);
        let prompt = prompt::build_prompt(llama, &messages)?;
        let reply = encode_plain(llama, &message.content)?.0;
        let stats = message.stats.as_ref();
        if let Some(out) = stats.and_then(|stats| stats.tokens_out) {
            exact &= usize::try_from(out).is_ok_and(|out| out == reply.len());
        }
        let cut = stats.and_then(|stats| stats.stop_reason.as_deref()) == Some("max_tokens");
        let fed = if cut { reply.len().saturating_sub(1) } else { reply.len() };
        simulator.prompt(&prompt.tokens, prompt.protected_tokens)?;
        for &token in &reply[..fed] {
            simulator.decode(token)?;
        }
        last = Some((Turn { index, prompt, reply, fed }, messages));
    }
    let states = simulator.token_states();
    let messages = match &last {
        Some((turn, rendered)) => map_messages(llama, system_prompt, branch, turn, rendered, &states)?,
        None => branch.iter().map(unseen).collect(),
    };
    Ok(CacheMap {
        conversation_id,
        cache_spec: config.to_string(),
        stats: api::KvStats::from(&simulator.stats()),
        messages,
        exact,
    })
}

/// The chat messages a turn's prompt renders: the system prompt, then the branch before the reply (as `chat.rs`).
fn turn_messages(system_prompt: Option<&str>, before: &[Message]) -> Vec<ChatMessage> {
    prompt::chat_messages(system_prompt, before.iter().map(|message| (message.role, message.content.as_str())))
}

/// Token ids of a text without BOS, and each token's byte range in the text.
type Encoded = (Vec<u32>, Vec<(usize, usize)>);

fn encode_plain(model: &LlamaModel, text: &str) -> Result<Encoded> {
    let encoding = model
        .tokenizer()
        .inner()
        .encode(text, false)
        .map_err(|error| CoreError::InvalidInput(format!("cannot tokenize the conversation: {error}")))?;
    Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
}

/// Segments for every message of the branch from the last turn's stream: its prompt (everything up to the last
/// reply, as rendered) and the reply's tokens after it.
fn map_messages(
    model: &LlamaModel,
    system_prompt: Option<&str>,
    branch: &[Message],
    turn: &Turn,
    rendered_messages: &[ChatMessage],
    states: &[EngineTokenState],
) -> Result<Vec<MessageCacheMap>> {
    let template = model.chat_template().ok_or(CoreError::NoChatTemplate)?;
    let rendered = template.render(rendered_messages, true)?;
    let (ids, offsets) = encode_plain(model, &rendered)?;
    // `build_prompt` may have put BOS in front; everything after it is this encoding.
    let bos = turn.prompt.tokens.len().saturating_sub(ids.len());
    let mut by_byte: Vec<Option<TokenState>> = vec![None; rendered.len()];
    if turn.prompt.tokens.get(bos..) == Some(ids.as_slice()) {
        for (token, &(start, end)) in offsets.iter().enumerate() {
            let state = states.get(bos + token).copied().map(TokenState::from);
            for slot in by_byte.get_mut(start..end).into_iter().flatten() {
                *slot = state;
            }
        }
    }
    let starts = content_starts(template, rendered_messages, &rendered)?;
    // `chat_messages` puts the system prompt first unless it is empty, then the branch, leaving out empty replies.
    let mut rendered_index = usize::from(!system_prompt.unwrap_or(prompt::DEFAULT_SYSTEM_PROMPT).is_empty());
    let mut maps = Vec::with_capacity(branch.len());
    for (index, message) in branch.iter().enumerate() {
        if index == turn.index {
            maps.push(reply_map(model, message, turn, states)?);
            continue;
        }
        if index > turn.index {
            maps.push(unseen(message));
            continue;
        }
        // What of the message the template renders: assistant text trimmed, an empty reply left out.
        let (text, lead) = match message.role {
            Role::Assistant => {
                let trimmed = message.content.trim();
                (trimmed, message.content.len() - message.content.trim_start().len())
            }
            _ => (message.content.as_str(), 0),
        };
        if message.role == Role::Assistant && text.is_empty() {
            maps.push(unseen(message));
            continue;
        }
        let start = starts.get(rendered_index).copied().flatten();
        rendered_index += 1;
        let Some(start) = start else {
            maps.push(unseen(message));
            continue;
        };
        let inner = segments(text, |byte| by_byte.get(start + byte).copied().flatten());
        maps.push(MessageCacheMap { message_id: message.id, segments: pad(&message.content, lead, text.len(), inner) });
    }
    Ok(maps)
}

/// Where each message's content begins in `rendered`, found by rendering the same messages with a unique marker
/// for each content (a search for the text itself could match the template's own words, e.g. a message "user").
/// `None` for a content the template did not insert verbatim.
fn content_starts(
    template: &sepchat_text::ChatTemplate,
    messages: &[ChatMessage],
    rendered: &str,
) -> Result<Vec<Option<usize>>> {
    let marker = |index: usize| format!("\u{E000}{index}\u{E001}");
    let marked: Vec<ChatMessage> = messages
        .iter()
        .enumerate()
        .map(|(index, message)| ChatMessage::new(message.role.clone(), marker(index)))
        .collect();
    let marked_text = template.render(&marked, true)?;
    let mut starts = Vec::with_capacity(messages.len());
    // Bytes the real contents add (or remove) against the markers before the current one.
    let mut shift: isize = 0;
    for (index, message) in messages.iter().enumerate() {
        let tag = marker(index);
        let start = marked_text.find(&tag).and_then(|at| at.checked_add_signed(shift));
        let verbatim =
            start.filter(|&start| rendered.get(start..start + message.content.len()) == Some(message.content.as_str()));
        starts.push(verbatim);
        shift += message.content.len() as isize - tag.len() as isize;
    }
    Ok(starts)
}

/// The last reply: its own tokens, after the prompt in the stream.
fn reply_map(
    model: &LlamaModel,
    message: &Message,
    turn: &Turn,
    states: &[EngineTokenState],
) -> Result<MessageCacheMap> {
    let (ids, offsets) = encode_plain(model, &message.content)?;
    let base = turn.prompt.tokens.len();
    let mut by_byte: Vec<Option<TokenState>> = vec![None; message.content.len()];
    if ids == turn.reply {
        for (token, &(start, end)) in offsets.iter().enumerate() {
            // A token never fed (the last of a reply cut at its limit) is not in the cache at all.
            let state = if token < turn.fed { states.get(base + token).copied().map(TokenState::from) } else { None };
            for slot in by_byte.get_mut(start..end).into_iter().flatten() {
                *slot = state;
            }
        }
    }
    let segments = segments(&message.content, |byte| by_byte.get(byte).copied().flatten());
    Ok(MessageCacheMap { message_id: message.id, segments })
}

/// `text` cut into runs of characters of one state; a character takes the state of its first byte's token, and
/// bytes no token covers are `unseen`.
fn segments(text: &str, state_at: impl Fn(usize) -> Option<TokenState>) -> Vec<CacheMapSegment> {
    let mut segments: Vec<CacheMapSegment> = Vec::new();
    for (byte, character) in text.char_indices() {
        let state = state_at(byte).unwrap_or(TokenState::Unseen);
        match segments.last_mut() {
            Some(segment) if segment.state == state => segment.text.push(character),
            _ => segments.push(CacheMapSegment { text: character.to_string(), state }),
        }
    }
    segments
}

/// The whitespace the template trims off a reply, put back around its segments so they spell the whole content:
/// it takes the state of the text next to it (it was never a token of its own in the prompt).
fn pad(content: &str, lead: usize, len: usize, mut inner: Vec<CacheMapSegment>) -> Vec<CacheMapSegment> {
    let head = &content[..lead];
    let tail = &content[lead + len..];
    if !head.is_empty() {
        match inner.first_mut() {
            Some(first) => first.text.insert_str(0, head),
            None => inner.push(CacheMapSegment { text: head.to_string(), state: TokenState::Unseen }),
        }
    }
    if !tail.is_empty() {
        match inner.last_mut() {
            Some(last) => last.text.push_str(tail),
            None => inner.push(CacheMapSegment { text: tail.to_string(), state: TokenState::Unseen }),
        }
    }
    inner
}

/// A message the cache was never fed (no reply after it yet, or one the template leaves out).
fn unseen(message: &Message) -> MessageCacheMap {
    let segments = if message.content.is_empty() {
        Vec::new()
    } else {
        vec![CacheMapSegment { text: message.content.clone(), state: TokenState::Unseen }]
    };
    MessageCacheMap { message_id: message.id, segments }
}

impl From<EngineTokenState> for TokenState {
    fn from(state: EngineTokenState) -> Self {
        match state {
            EngineTokenState::Initial => TokenState::Initial,
            EngineTokenState::Separator => TokenState::Separator,
            EngineTokenState::Past => TokenState::Past,
            EngineTokenState::Local => TokenState::Local,
            EngineTokenState::Evicted => TokenState::Evicted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_group_characters_and_cover_the_text() {
        let text = "héllo, wörld";
        let states = |byte: usize| Some(if byte < 5 { TokenState::Evicted } else { TokenState::Local });
        let cut = segments(text, states);
        assert_eq!(cut.iter().map(|segment| segment.text.as_str()).collect::<String>(), text);
        assert_eq!(cut.len(), 2);
        assert_eq!(cut[0].state, TokenState::Evicted);
        let padded = pad("  ab\n", 2, 2, segments("ab", |_| Some(TokenState::Past)));
        assert_eq!(padded, vec![CacheMapSegment { text: "  ab\n".into(), state: TokenState::Past }]);
        assert_eq!(segments("x", |_| None)[0].state, TokenState::Unseen);
    }
}
