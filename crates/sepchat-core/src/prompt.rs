//! From a stored branch to the tokens the engine is fed: the chat template over the messages (with the system
//! prompt), the protected system turn, and the settings a conversation leaves to the app's defaults.

use sepchat_engine::{CacheConfig, LlamaModel, SamplingParams};
use sepchat_store::{Role, Sampling};
use sepchat_text::ChatMessage;

use crate::error::{CoreError, Result};

/// The GGUF template's own default persona makes the default model's answers degenerate, while this plain one gives
/// correct short answers (checked against llama.cpp; see PRODUCT.md).
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant";

/// The cache profile of a conversation that names none.
pub const DEFAULT_CACHE_PROFILE: &str = "default";

/// The most words an automatic title takes from the first message, and the most characters it keeps.
const TITLE_WORDS: usize = 6;
const TITLE_CHARS: usize = 60;

/// The app's sampling defaults, filled in for every field a conversation leaves unset. The same values as common
/// chat apps (and the CLI's flags).
pub fn default_sampling() -> Sampling {
    Sampling {
        temperature: Some(0.7),
        top_p: Some(0.9),
        top_k: Some(40),
        min_p: Some(0.05),
        repeat_penalty: Some(1.1),
        max_tokens: Some(512),
        seed: Some(299_792_458),
        extra: serde_json::Map::new(),
    }
}

/// The engine's sampling parameters and the token limit for a conversation's settings, defaults filled in and
/// checked. Values that mean "off" in the UI (top-p 1, top-k 0, min-p 0) turn the filter off.
pub fn sampling_params(sampling: &Sampling) -> Result<(SamplingParams, usize)> {
    let defaults = default_sampling();
    let pick_f64 = |value: Option<f64>, default: Option<f64>| value.or(default).unwrap_or_default();
    let temperature = pick_f64(sampling.temperature, defaults.temperature);
    let top_p = pick_f64(sampling.top_p, defaults.top_p);
    let min_p = pick_f64(sampling.min_p, defaults.min_p);
    let repeat_penalty = pick_f64(sampling.repeat_penalty, defaults.repeat_penalty);
    let top_k = sampling.top_k.or(defaults.top_k).unwrap_or_default();
    let max_tokens = sampling.max_tokens.or(defaults.max_tokens).unwrap_or_default();
    let params = SamplingParams {
        temperature,
        top_p: (top_p < 1.0).then_some(top_p),
        top_k: (top_k > 0).then(|| usize::try_from(top_k).unwrap_or(usize::MAX)),
        min_p: (min_p > 0.0).then_some(min_p),
        repeat_penalty: repeat_penalty as f32,
        seed: sampling.seed.or(defaults.seed).unwrap_or_default(),
        ..SamplingParams::default()
    };
    params.validate()?;
    let max_tokens = usize::try_from(max_tokens)
        .map_err(|_| CoreError::InvalidInput(format!("max tokens {max_tokens} is too large")))?;
    Ok((params, max_tokens))
}

/// A conversation's cache spec (or the default profile) checked against the model's trained context.
pub fn cache_config(spec: Option<&str>, context_length: usize) -> Result<CacheConfig> {
    Ok(CacheConfig::parse_for_model(spec.unwrap_or(DEFAULT_CACHE_PROFILE), context_length)?)
}

/// The messages the template renders: the system prompt (the conversation's; `None` the default; empty: none),
/// then the branch. Assistant text is trimmed (the model's leading space or trailing newline is not part of the
/// turn) and empty assistant turns (a reply that failed before its first token) are left out.
pub fn chat_messages<'a>(
    system_prompt: Option<&str>,
    turns: impl IntoIterator<Item = (Role, &'a str)>,
) -> Vec<ChatMessage> {
    let mut messages = Vec::new();
    let system = system_prompt.unwrap_or(DEFAULT_SYSTEM_PROMPT);
    if !system.is_empty() {
        messages.push(ChatMessage::system(system));
    }
    for (role, content) in turns {
        match role {
            Role::Assistant => {
                let text = content.trim();
                if !text.is_empty() {
                    messages.push(ChatMessage::assistant(text));
                }
            }
            Role::User => messages.push(ChatMessage::user(content)),
            Role::System => messages.push(ChatMessage::system(content)),
        }
    }
    messages
}

/// A rendered, tokenized prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub tokens: Vec<u32>,
    /// Leading tokens the cache must never evict: the system turn.
    pub protected_tokens: usize,
}

/// Renders `messages` with the model's chat template (generation prompt appended) and tokenizes them.
pub fn build_prompt(model: &LlamaModel, messages: &[ChatMessage]) -> Result<Prompt> {
    let template = model.chat_template().ok_or(CoreError::NoChatTemplate)?;
    let tokens = model.tokenizer().encode(&template.render(messages, true)?)?;
    let protected_tokens = system_turn_tokens(model, messages, &tokens);
    Ok(Prompt { tokens, protected_tokens })
}

/// Tokens of the rendered system turn when they begin `prompt_tokens`, so the cache keeps the persona forever
/// (SEPLLM.md: the initial block covers the system turn). 0 when there is no system message, or when the turn
/// rendered alone is not a token prefix of the whole prompt (a template that renders it differently in context, or
/// a merge across the boundary): protecting a prefix that is not the system turn would protect the wrong tokens.
pub fn system_turn_tokens(model: &LlamaModel, messages: &[ChatMessage], prompt_tokens: &[u32]) -> usize {
    let Some(system) = messages.first().filter(|message| message.role == "system") else {
        return 0;
    };
    let Some(template) = model.chat_template() else {
        return 0;
    };
    // A template that refuses a conversation of only a system message protects nothing rather than failing the
    // reply: protection is an optimisation of what the cache keeps.
    let rendered = template.render(std::slice::from_ref(system), false);
    let tokens = match rendered.and_then(|text| model.tokenizer().encode(&text)) {
        Ok(tokens) => tokens,
        Err(error) => {
            tracing::debug!(%error, "cannot render the system turn alone; protecting nothing");
            return 0;
        }
    };
    if !tokens.is_empty() && prompt_tokens.starts_with(&tokens) {
        tokens.len()
    } else {
        0
    }
}

/// A title from the first user message: its first few words, cut at a character limit.
pub fn auto_title(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().take(TITLE_WORDS + 1).collect();
    let mut title = words.iter().take(TITLE_WORDS).copied().collect::<Vec<_>>().join(" ");
    let mut cut = words.len() > TITLE_WORDS;
    if title.chars().count() > TITLE_CHARS {
        title = title.chars().take(TITLE_CHARS).collect::<String>().trim_end().to_string();
        cut = true;
    }
    if cut {
        title.push('…');
    }
    title
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_take_the_first_words() {
        assert_eq!(auto_title("What is the capital of France?"), "What is the capital of France?");
        assert_eq!(auto_title("  one two\nthree four five six seven eight"), "one two three four five six…");
        assert_eq!(auto_title(""), "");
        let long = "x".repeat(100);
        assert_eq!(auto_title(&long).chars().count(), TITLE_CHARS + 1);
    }

    #[test]
    fn unset_sampling_takes_the_defaults_and_off_values_turn_filters_off() {
        let (params, max_tokens) = sampling_params(&Sampling::default()).expect("defaults are valid");
        assert_eq!(params, SamplingParams::default());
        assert_eq!(max_tokens, 512);
        let greedy = Sampling {
            temperature: Some(0.0),
            top_p: Some(1.0),
            top_k: Some(0),
            min_p: Some(0.0),
            repeat_penalty: Some(1.0),
            seed: Some(5),
            max_tokens: Some(8),
            ..Sampling::default()
        };
        let (params, max_tokens) = sampling_params(&greedy).expect("valid");
        assert_eq!(params, SamplingParams { seed: 5, ..SamplingParams::greedy() });
        assert_eq!(max_tokens, 8);
        let negative = Sampling { temperature: Some(-1.0), ..Sampling::default() };
        let error = sampling_params(&negative).expect_err("negative temperature");
        assert!(error.to_string().contains("temperature"), "{error}");
    }

    #[test]
    fn the_system_prompt_defaults_and_empty_assistant_turns_are_left_out() {
        let turns = [(Role::User, "hi"), (Role::Assistant, "  "), (Role::User, "again"), (Role::Assistant, " ok\n")];
        let messages = chat_messages(None, turns);
        let roles: Vec<(&str, &str)> =
            messages.iter().map(|message| (message.role.as_str(), message.content.as_str())).collect();
        assert_eq!(roles, [("system", DEFAULT_SYSTEM_PROMPT), ("user", "hi"), ("user", "again"), ("assistant", "ok")]);
        assert_eq!(chat_messages(Some(""), [(Role::User, "hi")]).len(), 1);
        assert_eq!(chat_messages(Some("Be brief"), [])[0].content, "Be brief");
    }
}
