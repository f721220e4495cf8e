//! The model's own chat template (`tokenizer.chat_template`, a Jinja template written for Hugging Face
//! transformers), rendered with minijinja so that any model's prompt format works without reimplementing it.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::quantized::gguf_file::Content;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde::Serialize;

use crate::error::TextError;
use crate::tokenizer::optional_string;

/// The GGUF metadata key that holds the chat template, also used as the template's name in errors.
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// One message of a conversation, as chat templates expect it (`message['role']`, `message['content']`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("assistant", content)
    }
}

/// A compiled chat template.
///
/// Rendering follows Hugging Face transformers' `apply_chat_template`: `trim_blocks` and `lstrip_blocks`
/// on, the variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, the functions
/// `raise_exception(message)` and `strftime_now(format)` (UTC), and Python string methods
/// (`.strip()`, `.startswith()`, ...) through minijinja-contrib's pycompat layer.
#[derive(Clone)]
pub struct ChatTemplate {
    name: String,
    environment: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The template stored in the GGUF under `tokenizer.chat_template`, or `None` when the file has none.
    ///
    /// `bos_token` and `eos_token` are the texts of `tokenizer.ggml.bos_token_id` / `eos_token_id`
    /// (empty when undeclared). A template that does not compile is an error now, not at the first render.
    pub fn from_gguf(content: &Content) -> Result<Option<ChatTemplate>, TextError> {
        let Some(source) = optional_string(content, CHAT_TEMPLATE_KEY)? else {
            return Ok(None);
        };
        let bos_token = token_text_for_id_key(content, "tokenizer.ggml.bos_token_id");
        let eos_token = token_text_for_id_key(content, "tokenizer.ggml.eos_token_id");
        ChatTemplate::from_source(CHAT_TEMPLATE_KEY, source)
            .map(|template| Some(template.with_special_tokens(bos_token, eos_token)))
    }

    /// Compiles a template from its source; `name` identifies it in error messages.
    /// `bos_token` and `eos_token` render as empty strings until set with [`with_special_tokens`](Self::with_special_tokens).
    pub fn from_source(name: impl Into<String>, source: impl Into<String>) -> Result<ChatTemplate, TextError> {
        let name = name.into();
        let mut environment = Environment::new();
        // Hugging Face renders chat templates with jinja2's trim_blocks and lstrip_blocks; templates are
        // written for that whitespace handling.
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|error| template_error(&name, "compile", &error))?;
        environment.set_syntax(syntax);
        environment.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function("raise_exception", raise_exception);
        environment.add_function("strftime_now", strftime_now);
        environment
            .add_template_owned(name.clone(), source.into())
            .map_err(|error| template_error(&name, "compile", &error))?;
        Ok(ChatTemplate { name, environment, bos_token: String::new(), eos_token: String::new() })
    }

    /// Sets the texts the template sees as `bos_token` and `eos_token`.
    pub fn with_special_tokens(mut self, bos_token: impl Into<String>, eos_token: impl Into<String>) -> ChatTemplate {
        self.bos_token = bos_token.into();
        self.eos_token = eos_token.into();
        self
    }

    /// The template's name, as errors show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders the conversation into the prompt text; with `add_generation_prompt` the text ends with the
    /// opening of an assistant turn, ready for generation.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TextError> {
        let template =
            self.environment.get_template(&self.name).map_err(|error| template_error(&self.name, "render", &error))?;
        template
            .render(context! {
                messages => Value::from(Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|error| template_error(&self.name, "render", &error))
    }
}

/// The vocabulary text of the token whose id is stored under `id_key`; empty when anything is missing,
/// because templates only paste these strings and most do not use them at all.
fn token_text_for_id_key(content: &Content, id_key: &str) -> String {
    let id = content.metadata.get(id_key).and_then(|value| value.to_u32().ok());
    let tokens = content.metadata.get("tokenizer.ggml.tokens").and_then(|value| value.to_vec().ok());
    match (id, tokens) {
        (Some(id), Some(tokens)) => {
            tokens.get(id as usize).and_then(|token| token.to_string().ok()).cloned().unwrap_or_default()
        }
        _ => String::new(),
    }
}

/// Builds the crate error from a minijinja error, keeping the whole cause chain (a template's own
/// `raise_exception` message, the line it failed on).
fn template_error(name: &str, stage: &str, error: &Error) -> TextError {
    let mut message = format!("failed to {stage}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    TextError::Template { name: name.to_string(), message }
}

/// `raise_exception(message)`: how Hugging Face templates reject a conversation they cannot format.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("template raised an exception: {message}")))
}

/// `strftime_now(format)`: the current UTC time formatted like Python's `strftime`, for templates that
/// print today's date. Supports `%Y %y %m %d %e %H %I %M %S %p %j %a %A %b %B %%`; other directives are
/// copied as written.
fn strftime_now(format: String) -> String {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|duration| duration.as_secs()).unwrap_or(0);
    format_utc(seconds, &format)
}

const WEEKDAY_NAMES: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Formats seconds since the Unix epoch (UTC) with the subset of strftime directives documented on
/// [`strftime_now`].
fn format_utc(seconds_since_epoch: u64, format: &str) -> String {
    let days_since_epoch = seconds_since_epoch / 86_400;
    let second_of_day = seconds_since_epoch % 86_400;
    let (hour, minute, second) = (second_of_day / 3600, second_of_day % 3600 / 60, second_of_day % 60);
    let (year, month, day) = civil_from_days(days_since_epoch);
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    let weekday = ((days_since_epoch + 3) % 7) as usize;
    let day_of_year = days_since_epoch - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTH_NAMES[(month - 1) as usize];
    let weekday_name = WEEKDAY_NAMES[weekday];
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut output = String::with_capacity(format.len() + 16);
    let mut characters = format.chars();
    while let Some(character) = characters.next() {
        if character != '%' {
            output.push(character);
            continue;
        }
        match characters.next() {
            Some('Y') => output.push_str(&year.to_string()),
            Some('y') => output.push_str(&format!("{:02}", year % 100)),
            Some('m') => output.push_str(&format!("{month:02}")),
            Some('d') => output.push_str(&format!("{day:02}")),
            Some('e') => output.push_str(&format!("{day:2}")),
            Some('H') => output.push_str(&format!("{hour:02}")),
            Some('I') => output.push_str(&format!("{hour12:02}")),
            Some('M') => output.push_str(&format!("{minute:02}")),
            Some('S') => output.push_str(&format!("{second:02}")),
            Some('p') => output.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('j') => output.push_str(&format!("{day_of_year:03}")),
            Some('a') => output.push_str(&weekday_name[..3]),
            Some('A') => output.push_str(weekday_name),
            Some('b') => output.push_str(&month_name[..3]),
            Some('B') => output.push_str(month_name),
            Some('%') => output.push('%'),
            Some(other) => {
                output.push('%');
                output.push(other);
            }
            None => output.push('%'),
        }
    }
    output
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days_since_epoch: u64) -> (u64, u64, u64) {
    let shifted = days_since_epoch + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date on or after it (inverse of [`civil_from_days`]).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year % 400;
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday, day 60 of a leap year.
        let seconds = 1_709_211_909;
        assert_eq!(format_utc(seconds, "%Y-%m-%d %H:%M:%S"), "2024-02-29 13:05:09");
        assert_eq!(format_utc(seconds, "%d %b %Y"), "29 Feb 2024");
        assert_eq!(format_utc(seconds, "%A %B %j %I%p %y %% %Q"), "Thursday February 060 01PM 24 % %Q");
        assert_eq!(format_utc(0, "%a %e %b %Y"), "Thu  1 Jan 1970");
        assert_eq!(format_utc(951_782_400, "%Y-%m-%d %a"), "2000-02-29 Tue");
    }

    #[test]
    fn renders_python_string_methods_and_special_tokens() {
        let template = ChatTemplate::from_source(
            "test",
            "{{ bos_token }}{% for m in messages %}{{ m.role.upper() }}:{{ m['content'].strip() }}\n{% endfor %}",
        )
        .and_then(|template| template.with_special_tokens("<s>", "</s>").render(&[ChatMessage::user("  hi  ")], false));
        assert_eq!(template.ok().as_deref(), Some("<s>USER:hi\n"));
    }

    #[test]
    fn strftime_now_is_callable_from_templates() {
        let rendered = ChatTemplate::from_source("date", "{{ strftime_now('%Y') }}")
            .and_then(|template| template.render(&[], false));
        let year = rendered.ok().and_then(|text| text.parse::<u32>().ok());
        assert!(year.is_some_and(|year| year >= 2024), "{year:?}");
    }
}
