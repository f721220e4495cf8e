//! The history commands: `list`, `show`, `search`, `export`, `import`, `rm` and `restore`, each a few calls into
//! the App over the default history (`$SEPCHAT_DATA_DIR`, else the platform data dir). None needs a model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sepchat_core::api::{
    ConversationInfo, ExportFormat, ExportRequest, ImportRequest, MessageInfo, SNIPPET_MATCH_END, SNIPPET_MATCH_START,
};
use sepchat_core::App;

#[derive(Args)]
pub struct ListArgs {
    /// The conversations in the trash instead.
    #[arg(long)]
    trash: bool,
    /// One JSON array of conversations.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    /// The conversation id (see `sepchat list`).
    id: i64,
    /// The conversation, its active branch and markers as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SearchArgs {
    /// Words to find in titles and messages (prefixes match: "capit fra" finds "capital of France").
    text: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Conversation ids to export.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    ids: Vec<i64>,
    /// Every conversation not in the trash.
    #[arg(long)]
    all: bool,
    /// md, json, html or txt; default: from the output file's extension.
    #[arg(long)]
    format: Option<String>,
    /// The file to write (atomically: a temporary file, then a rename).
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Args)]
pub struct ImportArgs {
    /// A JSON export (`sepchat export --format json`).
    file: PathBuf,
}

#[derive(Args)]
pub struct RemoveArgs {
    id: i64,
    /// Delete it for good instead of moving it to the trash.
    #[arg(long)]
    purge: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    id: i64,
}

fn with_app<T>(work: impl AsyncFnOnce(App) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let app = App::open_default().await?;
        work(app).await
    })
}

pub fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let conversations =
        with_app(async |app| Ok(if args.trash { app.list_trash().await? } else { app.list_conversations().await? }))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&conversations)?);
    } else {
        for conversation in &conversations {
            println!("{}", list_line(conversation));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list_line(conversation: &ConversationInfo) -> String {
    let updated = sepchat_core::rfc3339(conversation.updated_at).unwrap_or_default();
    let pin = if conversation.pinned { "*" } else { " " };
    let title = if conversation.title.is_empty() { "(untitled)" } else { conversation.title.as_str() };
    format!("{:>6} {pin} {}  {title}", conversation.id, updated.get(..16).unwrap_or(&updated).replace('T', " "))
}

pub fn show(args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let view = with_app(async |app| Ok(app.get_conversation(args.id).await?))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    let conversation = &view.conversation;
    println!("conversation {}: {}", conversation.id, conversation.title);
    let system = match conversation.system_prompt.as_deref() {
        None => format!("{} (default)", sepchat_core::DEFAULT_SYSTEM_PROMPT),
        Some("") => "(none)".to_string(),
        Some(prompt) => prompt.to_string(),
    };
    println!("system: {system}");
    println!(
        "cache: {} | sampling: {}",
        conversation.cache_profile.as_deref().unwrap_or(sepchat_core::DEFAULT_CACHE_PROFILE),
        serde_json::to_string(&conversation.sampling)?
    );
    if conversation.deleted_at.is_some() {
        println!("(in the trash: `sepchat restore {}` brings it back)", conversation.id);
    }
    for message in &view.branch {
        println!();
        println!("{}", message_header(message));
        println!("{}", message.content);
        if let Some(error) = &message.error {
            println!("error: {error}");
        }
        for marker in view.markers.iter().filter(|marker| marker.message_id == message.id) {
            println!(
                "~ KV cache compressed at {} tokens: {} -> {} slots, dropped {} separators and {} other tokens ({:.1} MiB freed)",
                marker.tokens_seen_at,
                marker.slots_before,
                marker.slots_after,
                marker.dropped_separators,
                marker.dropped_other,
                marker.bytes_freed as f64 / (1024.0 * 1024.0)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `#12 assistant [done] (2/3)`: id, role, status, and which of its siblings it is when there are several.
fn message_header(message: &MessageInfo) -> String {
    let mut header = format!("#{} {} [{}]", message.id, message.role.as_str(), message.status.as_str());
    if message.sibling_ids.len() > 1 {
        header.push_str(&format!(" ({}/{})", message.sibling_index + 1, message.sibling_ids.len()));
    }
    if let Some(ms) = message.stats.as_ref().and_then(|stats| stats.time_to_first_token_ms) {
        header.push_str(&format!(" first token {ms:.0} ms"));
    }
    header
}

pub fn search(args: &SearchArgs) -> anyhow::Result<ExitCode> {
    let hits = with_app(async |app| Ok(app.search(&args.text, None).await?))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
        return Ok(ExitCode::SUCCESS);
    }
    for hit in &hits {
        let snippet = hit.snippet.replace(SNIPPET_MATCH_START, "«").replace(SNIPPET_MATCH_END, "»").replace('\n', " ");
        match hit.message_id {
            Some(message) => println!("{} #{message} ({}): {snippet}", hit.conversation_id, hit.conversation_title),
            None => println!("{} (title): {snippet}", hit.conversation_id),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn export(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let format = match &args.format {
        Some(name) => ExportFormat::parse(name)?,
        None => {
            let extension = args.output.extension().and_then(|extension| extension.to_str()).unwrap_or_default();
            ExportFormat::parse(extension)
                .context("cannot tell the format from the output file's extension; pass --format md|json|html|txt")?
        }
    };
    let request = ExportRequest {
        conversation_ids: (!args.all).then(|| args.ids.clone()),
        format,
        path: args.output.to_string_lossy().into_owned(),
    };
    let result = with_app(async |app| Ok(app.export(request).await?))?;
    println!("wrote {} conversation(s) to {} ({} bytes)", result.conversations, result.path, result.bytes);
    Ok(ExitCode::SUCCESS)
}

pub fn import(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let request = ImportRequest { path: args.file.to_string_lossy().into_owned() };
    let result = with_app(async |app| Ok(app.import(request).await?))?;
    let ids: Vec<String> = result.conversation_ids.iter().map(i64::to_string).collect();
    println!("imported {} conversation(s): {}", ids.len(), ids.join(" "));
    Ok(ExitCode::SUCCESS)
}

pub fn remove(args: &RemoveArgs) -> anyhow::Result<ExitCode> {
    with_app(async |app| {
        if args.purge {
            app.purge_conversation(args.id).await?;
            println!("deleted conversation {} for good", args.id);
        } else {
            app.delete_conversation(args.id).await?;
            println!("moved conversation {} to the trash; `sepchat restore {}` brings it back", args.id, args.id);
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn restore(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let conversation = with_app(async |app| Ok(app.restore_conversation(args.id).await?))?;
    println!("restored conversation {}: {}", conversation.id, conversation.title);
    Ok(ExitCode::SUCCESS)
}
