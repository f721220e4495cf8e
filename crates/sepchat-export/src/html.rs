//! The HTML export: one self-contained, printable document. Inline CSS only, no scripts, no external resources,
//! and a Content-Security-Policy of its own that forbids everything else, so that even a bug in the escaping below
//! could not make the file run code or fetch anything when opened.
//!
//! Assistant replies are rendered from Markdown with pulldown-cmark, filtered: raw HTML becomes text, links keep
//! their target only when it is `http:`, `https:` or `mailto:` (anything else, `javascript:` included, keeps only
//! its text), and images become their alt text (an exported chat must not load remote URLs). User, system and
//! error text is shown as written, escaped, with its line breaks.

use std::fmt::Write as _;

use pulldown_cmark::{html::push_html, CowStr, Event, LinkType, Options, Parser, Tag, TagEnd};
use sepchat_store::{FullConversation, Message, Role};

use crate::transcript::{
    active_branch, date_or_raw, display_title, marker_summary, markers_by_message, message_summary, role_label,
    sampling_summary,
};

/// The document's policy: nothing may load or run; only the inline `<style>` applies. `base-uri` and
/// `form-action` are not covered by `default-src`, so they are closed separately.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

const STYLE: &str = r#"
:root { color-scheme: light dark; --fg: #1f2328; --bg: #ffffff; --muted: #656d76; --line: #d0d7de;
  --user: #f6f8fa; --code: #f6f8fa; --accent: #0969da; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6edf3; --bg: #0d1117; --muted: #9198a1; --line: #3d444d; --user: #161b22; --code: #161b22;
    --accent: #4493f8; }
}
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 52rem; padding: 2rem 1.25rem; color: var(--fg); background: var(--bg);
  font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; overflow-wrap: anywhere; }
h1 { font-size: 1.6rem; margin: 0 0 .5rem; }
h2 { font-size: .8rem; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin: 0 0 .4rem; }
a { color: var(--accent); }
nav ol { padding-left: 1.5rem; }
article.conversation { margin-bottom: 3rem; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: 0 0 1.5rem;
  font-size: .85rem; color: var(--muted); }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
section.message { border-top: 1px solid var(--line); padding: .9rem 0; }
section.user .content, section.system .content { background: var(--user); border-radius: 8px; padding: .6rem .8rem; }
.plain { white-space: pre-wrap; margin: 0; }
.content > :first-child { margin-top: 0; }
.content > :last-child { margin-bottom: 0; }
pre, code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; }
pre { background: var(--code); border: 1px solid var(--line); border-radius: 6px; padding: .7rem; overflow-x: auto;
  white-space: pre-wrap; }
:not(pre) > code { background: var(--code); border-radius: 4px; padding: .1em .3em; }
table { border-collapse: collapse; }
th, td { border: 1px solid var(--line); padding: .25rem .5rem; }
blockquote { margin: 0; padding-left: 1rem; border-left: 3px solid var(--line); color: var(--muted); }
p.stats { font-size: .8rem; color: var(--muted); margin: .5rem 0 0; }
p.error { color: #cf222e; margin: .5rem 0 0; }
p.marker { font-size: .8rem; color: var(--muted); border: 1px dashed var(--line); border-radius: 6px;
  padding: .3rem .6rem; margin: .6rem 0 0; }
footer { font-size: .8rem; color: var(--muted); border-top: 1px solid var(--line); padding-top: .8rem; }
@media print {
  :root { --fg: #000; --bg: #fff; --muted: #444; --line: #bbb; --user: #f3f3f3; --code: #f3f3f3; --accent: #000; }
  body { max-width: none; padding: 0; font-size: 11pt; }
  nav { display: none; }
  article.conversation + article.conversation { break-before: page; }
  section.message, pre, blockquote, table, p.marker { break-inside: avoid; }
  h1, h2 { break-after: avoid; }
  pre { overflow: visible; }
}
"#;

/// The HTML export of `conversations`: each conversation's settings and its active branch, plus a list of
/// conversations at the top when there are several (hidden in print, where each starts a new page). The footer
/// states `exported_at` (unix milliseconds).
pub fn render_html(conversations: &[FullConversation], exported_at: i64) -> String {
    let title = match conversations {
        [one] => display_title(&one.conversation.title),
        many => format!("sepchat export: {} conversations", many.len()),
    };
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    // The policy comes before anything it governs: a meta CSP applies only to what follows it.
    let _ = writeln!(out, "<meta http-equiv=\"Content-Security-Policy\" content=\"{CONTENT_SECURITY_POLICY}\">");
    out.push_str("<meta name=\"referrer\" content=\"no-referrer\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<meta name=\"generator\" content=\"sepchat\">\n");
    let _ = writeln!(out, "<title>{}</title>", escape(&title));
    let _ = writeln!(out, "<style>{STYLE}</style>\n</head>\n<body>");

    if conversations.len() > 1 {
        let _ = writeln!(out, "<nav>\n<h1>{}</h1>\n<ol>", escape(&title));
        for full in conversations {
            let _ = writeln!(
                out,
                "<li><a href=\"#conversation-{}\">{}</a></li>",
                full.conversation.id,
                escape(&display_title(&full.conversation.title))
            );
        }
        out.push_str("</ol>\n</nav>\n");
    }
    for full in conversations {
        write_conversation(&mut out, full);
    }
    let _ = writeln!(out, "<footer>Exported from sepchat on {}.</footer>", escape(&date_or_raw(exported_at)));
    out.push_str("</body>\n</html>\n");
    out
}

fn write_conversation(out: &mut String, full: &FullConversation) {
    let c = &full.conversation;
    let _ = writeln!(out, "<article class=\"conversation\" id=\"conversation-{}\">\n<header>", c.id);
    let _ = writeln!(out, "<h1>{}</h1>\n<dl class=\"meta\">", escape(&display_title(&c.title)));
    let mut meta = |name: &str, value: &str| {
        let _ = writeln!(out, "<dt>{}</dt><dd>{}</dd>", escape(name), escape(value));
    };
    meta("Created", &date_or_raw(c.created_at));
    meta("Updated", &date_or_raw(c.updated_at));
    if let Some(path) = &c.model_path {
        meta("Model", path);
    }
    if let Some(sha256) = &c.model_sha256 {
        meta("Model SHA-256", sha256);
    }
    if let Some(profile) = &c.cache_profile {
        meta("Cache profile", profile);
    }
    if let Some(sampling) = sampling_summary(c) {
        meta("Sampling", &sampling);
    }
    out.push_str("</dl>\n");
    if let Some(prompt) = &c.system_prompt {
        let _ = writeln!(
            out,
            "<section class=\"message system\">\n<h2>System prompt</h2>\n<div class=\"content plain\">{}</div>\n</section>",
            escape(prompt)
        );
    }
    out.push_str("</header>\n");

    let markers = markers_by_message(full);
    for message in active_branch(full) {
        write_message(out, message);
        for marker in markers.get(&message.id).into_iter().flatten() {
            let _ = writeln!(out, "<p class=\"marker\">{}</p>", escape(&marker_summary(marker)));
        }
        out.push_str("</section>\n");
    }
    out.push_str("</article>\n");
}

/// Writes a message's section up to (not including) its closing tag, so markers can follow inside it.
fn write_message(out: &mut String, message: &Message) {
    let role = role_label(message.role);
    let _ = writeln!(out, "<section class=\"message {}\">\n<h2>{role}</h2>", message.role.as_str());
    match message.role {
        Role::Assistant => {
            out.push_str("<div class=\"content\">\n");
            push_markdown(out, &message.content);
            out.push_str("</div>\n");
        }
        Role::User | Role::System => {
            let _ = writeln!(out, "<div class=\"content plain\">{}</div>", escape(&message.content));
        }
    }
    if let Some(error) = &message.error {
        let _ = writeln!(out, "<p class=\"error plain\">Error: {}</p>", escape(error));
    }
    if let Some(summary) = message_summary(message) {
        let _ = writeln!(out, "<p class=\"stats\">{}</p>", escape(&summary));
    }
}

/// Markdown to HTML with the filtering described in the module comment.
fn push_markdown(out: &mut String, text: &str) {
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    // One entry per open link: whether its tags are kept. Links do not nest in CommonMark, but the stack keeps
    // the start and end decisions paired whatever the parser yields.
    let mut kept_links: Vec<bool> = Vec::new();
    let events = Parser::new_ext(text, options).filter_map(|event| match event {
        // Raw HTML is shown as the text it is, never interpreted.
        Event::Html(raw) | Event::InlineHtml(raw) => Some(Event::Text(raw)),
        Event::Start(Tag::HtmlBlock) => Some(Event::Start(Tag::Paragraph)),
        Event::End(TagEnd::HtmlBlock) => Some(Event::End(TagEnd::Paragraph)),
        Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
            let keep = link_type == LinkType::Email || is_safe_link_target(&dest_url);
            kept_links.push(keep);
            keep.then_some(Event::Start(Tag::Link { link_type, dest_url, title, id }))
        }
        Event::End(TagEnd::Link) => kept_links.pop().unwrap_or(false).then_some(Event::End(TagEnd::Link)),
        // The alt text (the events between these two) stays, bracketed so it reads as an image placeholder.
        Event::Start(Tag::Image { .. }) => Some(Event::Text(CowStr::Borrowed("[image: "))),
        Event::End(TagEnd::Image) => Some(Event::Text(CowStr::Borrowed("]"))),
        other => Some(other),
    });
    push_html(out, events);
}

/// Whether a link may keep its target: only absolute `http:`, `https:` and `mailto:` URLs. An allow-list, because
/// browsers accept many spellings of dangerous schemes (`JavaScript:`, leading control characters, tabs inside
/// the scheme); anything that does not plainly start with an allowed scheme is refused.
fn is_safe_link_target(url: &str) -> bool {
    let url = url.trim_start_matches(|c: char| c.is_ascii_whitespace() || c.is_ascii_control());
    ["http://", "https://", "mailto:"]
        .iter()
        .any(|scheme| url.get(..scheme.len()).is_some_and(|start| start.eq_ignore_ascii_case(scheme)))
}

/// Text for HTML element content or a double- or single-quoted attribute value.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x" title='y'>&amp;</a>"#),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;"
        );
        assert_eq!(escape("héllo 👋"), "héllo 👋");
    }

    #[test]
    fn only_plain_web_and_mail_links_are_kept() {
        for url in ["http://example.com", "HTTPS://example.com/a?b=c", "mailto:a@example.com", " https://x"] {
            assert!(is_safe_link_target(url), "{url}");
        }
        for url in [
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "\u{1}javascript:alert(1)",
            "java\tscript:alert(1)",
            "vbscript:msgbox",
            "data:text/html,<script>alert(1)</script>",
            "file:///etc/passwd",
            "relative/path.html",
            "#fragment",
            "//example.com",
            "",
            "http:",
        ] {
            assert!(!is_safe_link_target(url), "{url:?}");
        }
    }

    fn markdown(text: &str) -> String {
        let mut out = String::new();
        push_markdown(&mut out, text);
        out
    }

    #[test]
    fn markdown_renders_without_raw_html_links_or_images() {
        assert_eq!(markdown("**bold** and `code`"), "<p><strong>bold</strong> and <code>code</code></p>\n");
        assert_eq!(markdown("[site](https://example.com)"), "<p><a href=\"https://example.com\">site</a></p>\n");
        assert_eq!(markdown("[click](javascript:alert(1))"), "<p>click</p>\n");
        assert_eq!(markdown("<javascript:alert(1)>"), "<p>javascript:alert(1)</p>\n");
        assert_eq!(markdown("![a cat](http://example.com/a.png)"), "<p>[image: a cat]</p>\n");
        assert_eq!(markdown("x <b onclick=\"f()\">y</b>"), "<p>x &lt;b onclick=\"f()\"&gt;y&lt;/b&gt;</p>\n");
        assert_eq!(markdown("<script>alert(1)</script>"), "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>\n");
        assert_eq!(markdown("<me@example.com>"), "<p><a href=\"mailto:me@example.com\">me@example.com</a></p>\n");
    }
}
