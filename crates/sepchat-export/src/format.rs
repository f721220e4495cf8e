//! The export formats and their names.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::ExportError;

/// What an export is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    /// Front matter with the settings, then the active branch as `## User` / `## Assistant` sections.
    Markdown,
    /// The whole tree, settings, stats and markers in the versioned schema of `docs/export-format.md`; the only
    /// format that can be imported.
    Json,
    /// One self-contained, printable document: inline CSS, no scripts, a restrictive CSP, everything escaped.
    Html,
    /// `User:` / `Assistant:` blocks under a header.
    Text,
}

impl ExportFormat {
    /// Every format, in the order a menu lists them.
    pub const ALL: [ExportFormat; 4] =
        [ExportFormat::Markdown, ExportFormat::Json, ExportFormat::Html, ExportFormat::Text];

    /// The file name extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Markdown => "md",
            ExportFormat::Json => "json",
            ExportFormat::Html => "html",
            ExportFormat::Text => "txt",
        }
    }

    /// The media type, for a save dialog or a download served by the local server.
    pub fn mime_type(self) -> &'static str {
        match self {
            ExportFormat::Markdown => "text/markdown; charset=utf-8",
            ExportFormat::Json => "application/json",
            ExportFormat::Html => "text/html; charset=utf-8",
            ExportFormat::Text => "text/plain; charset=utf-8",
        }
    }

    /// The format a file name's extension names (`notes.md`, `chat.HTML`, `all.json`), if any; lets
    /// `sepchat export out.html` work without a `--format`.
    pub fn from_path(path: &Path) -> Option<ExportFormat> {
        path.extension()?.to_str()?.parse().ok()
    }
}

impl FromStr for ExportFormat {
    type Err = ExportError;

    /// Accepts `md`/`markdown`, `json`, `html`/`htm` and `txt`/`text`, in any case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "md" | "markdown" => Ok(ExportFormat::Markdown),
            "json" => Ok(ExportFormat::Json),
            "html" | "htm" => Ok(ExportFormat::Html),
            "txt" | "text" => Ok(ExportFormat::Text),
            _ => Err(ExportError::UnknownFormat(text.to_owned())),
        }
    }
}

impl fmt::Display for ExportFormat {
    /// The short name, which [`FromStr`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (name, format) in [
            ("md", ExportFormat::Markdown),
            ("markdown", ExportFormat::Markdown),
            ("MD", ExportFormat::Markdown),
            ("json", ExportFormat::Json),
            ("html", ExportFormat::Html),
            ("htm", ExportFormat::Html),
            ("txt", ExportFormat::Text),
            ("Text", ExportFormat::Text),
        ] {
            assert_eq!(name.parse::<ExportFormat>().expect("known name"), format, "{name}");
        }
        for format in ExportFormat::ALL {
            assert_eq!(format.to_string().parse::<ExportFormat>().expect("round trip"), format);
        }
        assert!(matches!("pdf".parse::<ExportFormat>(), Err(ExportError::UnknownFormat(name)) if name == "pdf"));
        assert!("".parse::<ExportFormat>().is_err());
    }

    #[test]
    fn formats_follow_file_extensions() {
        assert_eq!(ExportFormat::from_path(Path::new("/tmp/chat.HTML")), Some(ExportFormat::Html));
        assert_eq!(ExportFormat::from_path(Path::new("all.json")), Some(ExportFormat::Json));
        assert_eq!(ExportFormat::from_path(Path::new("notes")), None);
        assert_eq!(ExportFormat::from_path(Path::new("archive.tar.gz")), None);
        assert_eq!(ExportFormat::Markdown.extension(), "md");
        assert_eq!(ExportFormat::Text.extension(), "txt");
    }
}
