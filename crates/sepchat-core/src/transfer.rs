//! Export and import: conversations read from the store in one snapshot each, rendered by `sepchat-export`, written
//! atomically; a JSON export parsed and checked there, then inserted all or nothing with new ids.

use std::path::PathBuf;

use sepchat_export::ExportFormat as FileFormat;
use sepchat_store::FullConversation;

use crate::api::{ApiError, ExportFormat, ExportRequest, ExportResult, ImportRequest, ImportResult};
use crate::app::{blocking, App};
use crate::error::{CoreError, Result};

fn file_format(format: ExportFormat) -> FileFormat {
    match format {
        ExportFormat::Markdown => FileFormat::Markdown,
        ExportFormat::Json => FileFormat::Json,
        ExportFormat::Html => FileFormat::Html,
        ExportFormat::Text => FileFormat::Text,
    }
}

impl ExportFormat {
    /// Accepts what `sepchat-export` accepts: `md`/`markdown`, `json`, `html`/`htm`, `txt`/`text`, any case.
    pub fn parse(name: &str) -> Result<ExportFormat, ApiError> {
        let format: FileFormat = name.parse().map_err(CoreError::from)?;
        Ok(match format {
            FileFormat::Markdown => ExportFormat::Markdown,
            FileFormat::Json => ExportFormat::Json,
            FileFormat::Html => ExportFormat::Html,
            FileFormat::Text => ExportFormat::Text,
        })
    }

    /// The file name extension, without the dot.
    pub fn extension(self) -> &'static str {
        file_format(self).extension()
    }

    /// The media type, for a download.
    pub fn mime_type(self) -> &'static str {
        file_format(self).mime_type()
    }
}

impl App {
    /// Writes the conversations (`None`: all not in the trash) to `request.path` in the format, atomically
    /// (temporary file and rename). The conversations are read first, so a reply streaming meanwhile is exported
    /// as far as it was flushed.
    pub async fn export(&self, request: ExportRequest) -> Result<ExportResult, ApiError> {
        let conversations = self.full_conversations(request.conversation_ids.as_deref()).await?;
        let document =
            sepchat_export::render(&conversations, file_format(request.format), sepchat_export::now_unix_ms())
                .map_err(CoreError::from)?;
        let path = PathBuf::from(&request.path);
        let bytes = document.len();
        blocking(move || Ok(sepchat_export::write_atomically(&path, document.as_bytes())?)).await?;
        Ok(ExportResult { path: request.path, conversations: conversations.len(), bytes })
    }

    /// The export document itself, for a face that saves or serves it (a download); `exported_at` is now.
    pub async fn render_export(
        &self,
        conversation_ids: Option<Vec<i64>>,
        format: ExportFormat,
    ) -> Result<String, ApiError> {
        let conversations = self.full_conversations(conversation_ids.as_deref()).await?;
        Ok(sepchat_export::render(&conversations, file_format(format), sepchat_export::now_unix_ms())
            .map_err(CoreError::from)?)
    }

    /// Imports a JSON export: every conversation in it, with new ids, or nothing if any of it is invalid.
    pub async fn import(&self, request: ImportRequest) -> Result<ImportResult, ApiError> {
        let path = PathBuf::from(&request.path);
        let read_path = path.clone();
        let text = blocking(move || {
            std::fs::read_to_string(&read_path).map_err(|source| CoreError::Io {
                what: "cannot read the import file",
                path: read_path.clone(),
                source,
            })
        })
        .await?;
        self.import_document(&text).await
    }

    /// Imports a JSON export given as text (a face that received the file's contents, e.g. a browser upload):
    /// every conversation in it, with new ids, or nothing if any of it is invalid.
    pub async fn import_document(&self, document: &str) -> Result<ImportResult, ApiError> {
        let conversations = sepchat_export::parse_json_export(document).map_err(CoreError::from)?;
        let conversation_ids = self.inner.store.import_conversations(&conversations).await.map_err(CoreError::from)?;
        Ok(ImportResult { conversation_ids })
    }

    async fn full_conversations(&self, ids: Option<&[i64]>) -> Result<Vec<FullConversation>> {
        let ids: Vec<i64> = match ids {
            Some(ids) => ids.to_vec(),
            None => self.inner.store.list_conversations().await?.into_iter().map(|row| row.id).collect(),
        };
        let mut conversations = Vec::with_capacity(ids.len());
        for id in ids {
            conversations.push(self.inner.store.full_conversation(id).await?);
        }
        Ok(conversations)
    }
}
