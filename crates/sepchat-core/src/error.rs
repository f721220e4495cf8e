//! The crate's one error type, and how it crosses to faces as `{code, message}`.

use std::path::PathBuf;

use sepchat_engine::EngineError;
use sepchat_store::StoreError;

use crate::api::{ApiError, ErrorCode};

/// Everything an App action can fail with. Sources are kept for logs; [`ApiError`] folds them into one line.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("no model is loaded")]
    NoModel,
    #[error(
        "cannot find a home directory for the model cache or the data; set SEPCHAT_MODEL_DIR and SEPCHAT_DATA_DIR"
    )]
    NoHomeDirectory,
    #[error("the default model is not downloaded yet ({}); run `sepchat fetch-model`, or choose a model file", path.display())]
    DefaultModelMissing { path: PathBuf },
    #[error("cannot load the model")]
    ModelLoad(#[source] Box<EngineError>),
    #[error("this model has no chat template (tokenizer.chat_template)")]
    NoChatTemplate,
    #[error("cannot read the model file {} to fingerprint it", path.display())]
    ModelFingerprint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Boxed, as `ModelLoad`'s: the engine's error is large and every `Result` here would carry its size.
    #[error(transparent)]
    Engine(Box<EngineError>),
    #[error(transparent)]
    Text(#[from] sepchat_text::TextError),
    #[error(transparent)]
    CacheSpec(#[from] sepchat_engine::CacheSpecError),
    #[error("{0}")]
    InvalidInput(String),
    #[error("conversation {0} is in the trash; restore it first")]
    Trashed(i64),
    #[error("conversation {0} is already generating a reply")]
    Busy(i64),
    #[error("a reply is being generated; the model cannot be changed now")]
    ModelBusy,
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Export(#[from] sepchat_export::ExportError),
    #[error("a background task failed: {0}")]
    Task(String),
}

impl CoreError {
    /// The stable code a face branches on.
    pub fn code(&self) -> ErrorCode {
        match self {
            CoreError::NoModel
            | CoreError::NoHomeDirectory
            | CoreError::DefaultModelMissing { .. }
            | CoreError::ModelLoad(_)
            | CoreError::NoChatTemplate
            | CoreError::ModelFingerprint { .. } => ErrorCode::Model,
            CoreError::Store(StoreError::ConversationNotFound(_) | StoreError::MessageNotFound(_)) => {
                ErrorCode::NotFound
            }
            CoreError::Store(StoreError::WrongConversation { .. } | StoreError::InvalidImport(_)) => {
                ErrorCode::InvalidInput
            }
            CoreError::Store(_) => ErrorCode::Storage,
            CoreError::Engine(error) => match **error {
                EngineError::InvalidSampling(_) | EngineError::CacheSpec(_) => ErrorCode::InvalidInput,
                _ => ErrorCode::Engine,
            },
            CoreError::Text(_) => ErrorCode::Model,
            CoreError::CacheSpec(_) | CoreError::InvalidInput(_) | CoreError::Trashed(_) => ErrorCode::InvalidInput,
            CoreError::Busy(_) | CoreError::ModelBusy => ErrorCode::Busy,
            CoreError::Io { .. } => ErrorCode::Io,
            CoreError::Export(sepchat_export::ExportError::Write { .. }) => ErrorCode::Io,
            CoreError::Export(_) => ErrorCode::InvalidInput,
            CoreError::Task(_) => ErrorCode::Internal,
        }
    }
}

impl From<EngineError> for CoreError {
    fn from(error: EngineError) -> Self {
        CoreError::Engine(Box::new(error))
    }
}

impl CoreError {
    pub(crate) fn model_load(error: EngineError) -> Self {
        CoreError::ModelLoad(Box::new(error))
    }
}

impl From<CoreError> for ApiError {
    fn from(error: CoreError) -> Self {
        ApiError { code: error.code(), message: one_line(&error) }
    }
}

/// The error and its causes on one line; a cause whose text is already in the line is skipped (several of our
/// errors quote their source).
fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut current = Some(error);
    while let Some(cause) = current {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        current = cause.source();
    }
    line.replace(['\n', '\r'], " ")
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_carry_the_code_and_every_cause_once() {
        let error = CoreError::Store(StoreError::ConversationNotFound(7));
        let api = ApiError::from(error);
        assert_eq!(api.code, ErrorCode::NotFound);
        assert_eq!(api.message, "conversation 7 does not exist");
        let io = CoreError::Io {
            what: "cannot read",
            path: PathBuf::from("/x"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        let api = ApiError::from(io);
        assert_eq!(api.code, ErrorCode::Io);
        assert_eq!(api.message, "cannot read /x: no such file");
    }
}
