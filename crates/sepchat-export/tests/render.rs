//! The human-readable formats: hostile input in HTML (checked by parsing the output), Markdown front matter
//! (checked with a YAML parser) and the branch each format shows.

mod common;

use common::{conversation, empty_conversation, message, rich_conversation, T0};
use scraper::{Html, Selector};
use sepchat_export::{render, render_html, render_markdown, render_text, ExportFormat, CONTENT_SECURITY_POLICY};
use sepchat_store::{FullConversation, MessageStats, Role};
use yaml_rust2::{Yaml, YamlLoader};

const HOSTILE: &str = "<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n[click](javascript:alert(1))\n\n\
     <a href=\"javascript:alert(1)\">x</a>\n\n![x](http://example.com/a.png)\n\n[ok](https://example.com/ok)\n\n\
     <iframe src=\"http://example.com/frame\"></iframe> <svg onload=alert(1)> [data](data:text/html,hi) \
     [vb](VBScript:msgbox) <JAVASCRIPT:alert(1)> <style>body{display:none}</style> <base href=\"http://example.com/\">";

const HOSTILE_TITLE: &str = "</title><script>alert(1)</script><title>";

fn hostile_conversation() -> FullConversation {
    let mut c = conversation(1, HOSTILE_TITLE);
    c.system_prompt = Some(HOSTILE.into());
    c.model_path = Some("\"><script>alert(1)</script>".into());
    c.cache_profile = Some("<img src=x onerror=alert(1)>".into());
    c.sampling_raw = Some("<script>alert(1)</script>".into());
    c.active_leaf_id = Some(3);
    let mut reply = message(1, 2, Some(1), Role::Assistant, HOSTILE);
    reply.error = Some("<script>alert(1)</script>".into());
    reply.stats = Some(MessageStats { stop_reason: Some("<img src=x onerror=alert(1)>".into()), ..Default::default() });
    FullConversation {
        conversation: c,
        messages: vec![message(1, 1, None, Role::User, HOSTILE), reply, message(1, 3, Some(2), Role::System, HOSTILE)],
        markers: vec![common::marker(1, 1, 2)],
    }
}

/// Every element of the document that could run code, load something or navigate somewhere it should not.
fn assert_inert(document: &Html) {
    let every = Selector::parse("*").expect("selector");
    for element in document.select(&every) {
        let name = element.value().name();
        assert!(
            !["script", "img", "iframe", "object", "embed", "svg", "base", "form", "link", "frame", "audio", "video"]
                .contains(&name),
            "a <{name}> element made it into the output"
        );
        if name == "meta" {
            let http_equiv = element.value().attr("http-equiv").unwrap_or_default().to_ascii_lowercase();
            assert!(http_equiv.is_empty() || http_equiv == "content-security-policy", "meta http-equiv={http_equiv}");
        }
        for (attribute, value) in element.value().attrs() {
            assert!(!attribute.to_ascii_lowercase().starts_with("on"), "<{name} {attribute}=...> is an event handler");
            assert_ne!(attribute, "src", "<{name} src={value}> loads something");
            let value = value.trim().to_ascii_lowercase();
            for scheme in ["javascript:", "vbscript:", "data:"] {
                assert!(!value.contains(scheme), "<{name} {attribute}=\"{value}\">");
            }
            if attribute == "href" {
                assert!(
                    value.starts_with("https://") || value.starts_with("http://") || value.starts_with('#'),
                    "<{name} href=\"{value}\">"
                );
            }
        }
    }
    // Exactly one style element, the document's own.
    assert_eq!(document.select(&Selector::parse("style").expect("selector")).count(), 1);
}

#[test]
fn hostile_content_stays_text() {
    let html = render_html(&[hostile_conversation()], T0);
    let document = Html::parse_document(&html);
    assert_inert(&document);

    let title = document.select(&Selector::parse("head > title").expect("selector")).next().expect("a title");
    assert_eq!(title.text().collect::<String>(), HOSTILE_TITLE, "the title is text, shown as written");
    let csp = document
        .select(&Selector::parse("head > meta[http-equiv=\"Content-Security-Policy\"]").expect("selector"))
        .next()
        .expect("a CSP meta element");
    assert_eq!(csp.value().attr("content"), Some(CONTENT_SECURITY_POLICY));
    assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none'"));
    // The policy must precede what it governs.
    assert!(html.find("Content-Security-Policy").expect("csp") < html.find("<style>").expect("style"));

    let links: Vec<_> = document
        .select(&Selector::parse("a").expect("selector"))
        .filter_map(|a| a.value().attr("href").map(str::to_owned))
        .collect();
    assert_eq!(links, ["https://example.com/ok"], "only the plain https link stays a link");

    // The payloads are still there for the reader, as text.
    let body: String = document.select(&Selector::parse("body").expect("selector")).flat_map(|b| b.text()).collect();
    for payload in
        ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<a href=\"javascript:alert(1)\">x</a>"]
    {
        assert!(body.contains(payload), "{payload} should show as text");
    }
    assert!(body.contains("[image: x]"), "images become their alt text");
    assert!(body.contains("click"), "a neutralised link keeps its text");
    assert!(!html.contains("http://example.com/a.png\""), "no image URL in any attribute");
}

#[test]
fn html_is_self_contained_and_printable() {
    let html = render_html(&[rich_conversation(), empty_conversation()], T0);
    let document = Html::parse_document(&html);
    assert_inert(&document);
    assert!(html.starts_with("<!DOCTYPE html>\n"));
    assert!(html.contains("@media print"));
    assert!(html.contains("Exported from sepchat on 2024-05-01T09:30:00.000Z."));
    // A list of both conversations, linking to their articles.
    let toc: Vec<_> = document
        .select(&Selector::parse("nav a").expect("selector"))
        .map(|a| (a.value().attr("href").unwrap_or_default().to_owned(), a.text().collect::<String>()))
        .collect();
    assert_eq!(toc[1], ("#conversation-8".to_owned(), "Untitled conversation".to_owned()));
    assert_eq!(document.select(&Selector::parse("article#conversation-7").expect("selector")).count(), 1);
    // The active branch only: system, user, regenerated reply, user, last reply.
    let roles: Vec<_> = document
        .select(&Selector::parse("article#conversation-7 section.message h2").expect("selector"))
        .map(|h| h.text().collect::<String>())
        .collect();
    assert_eq!(roles, ["System prompt", "System", "User", "Assistant", "User", "Assistant"]);
    assert!(!html.contains("First try"), "the old branch is not shown");
    // Markdown in replies is rendered.
    assert_eq!(document.select(&Selector::parse("article#conversation-7 strong").expect("selector")).count(), 1);
    let markers = document.select(&Selector::parse("p.marker").expect("selector")).count();
    assert_eq!(markers, 3);
    assert!(html.contains("KV cache compacted here: 2048 → 1284 slots"));
}

/// The front matter blocks of a Markdown export: a `---` line at the start or after a blank line, up to the next
/// `---` line.
fn front_matters(markdown: &str) -> Vec<Yaml> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i] == "---" && (i == 0 || lines[i - 1].is_empty()) {
            let end = (i + 1..lines.len()).find(|&j| lines[j] == "---").expect("a closing ---");
            let yaml = lines[i + 1..end].join("\n");
            let mut docs = YamlLoader::load_from_str(&yaml).expect("front matter is valid YAML");
            blocks.push(docs.remove(0));
            i = end + 1;
        } else {
            i += 1;
        }
    }
    blocks
}

#[test]
fn markdown_front_matter_holds_the_settings() {
    let rich = rich_conversation();
    let markdown = render_markdown(&[rich.clone(), empty_conversation()]);
    let blocks = front_matters(&markdown);
    assert_eq!(blocks.len(), 2, "one front matter per conversation");

    let yaml = &blocks[0];
    assert_eq!(yaml["title"].as_str(), Some(rich.conversation.title.as_str()));
    assert_eq!(yaml["id"].as_i64(), Some(7));
    assert_eq!(yaml["created"].as_str(), Some("2024-05-01T09:30:00.000Z"));
    assert_eq!(yaml["updated"].as_str(), Some("2024-05-01T09:31:00.000Z"));
    assert_eq!(yaml["model_path"].as_str(), rich.conversation.model_path.as_deref());
    assert_eq!(yaml["model_sha256"].as_str(), rich.conversation.model_sha256.as_deref());
    assert_eq!(yaml["cache_profile"].as_str(), Some("sep:a=4,s=256,w=1024,c=2048"));
    assert_eq!(yaml["system_prompt"].as_str(), Some("You are terse.\nAnswer in English."));
    let sampling = &yaml["sampling"];
    assert_eq!(sampling["temperature"].as_f64(), Some(0.7));
    assert_eq!(sampling["top_k"].as_i64(), Some(40));
    assert_eq!(sampling["seed"].as_i64(), Some(42));
    assert_eq!(sampling["x_flag"].as_bool(), Some(true));
    assert_eq!(sampling["x_future"][1].as_str(), Some("two"));
    assert_eq!(sampling["x_future"][2]["three"].as_f64(), Some(3.5));

    let empty = &blocks[1];
    assert_eq!(empty["title"].as_str(), Some(""));
    assert!(empty["model_path"].is_null() && empty["sampling"].is_null() && empty["system_prompt"].is_null());

    // The active branch as sections, text as written, stats and markers after their message.
    let body =
        markdown.split("# Planning: «naïve» café ☕ — \"quotes\" \\& \\<tags\\>\n").nth(1).expect("the title heading");
    let sections: Vec<&str> = body.lines().filter(|line| line.starts_with("## ")).collect();
    assert_eq!(sections, ["## System", "## User", "## Assistant", "## User", "## Assistant"]);
    assert!(body.contains(
        "Sure — here's a plan:\n\n1. **Coffee**\n2. `code`\n\n*27 tokens in · 19 tokens out · first token 85 ms · \
         prefill 812.5 tok/s · decode 41.3 tok/s · stop: eos · KV 46 slots, 1.4 MiB*\n\n> KV cache compacted here: \
         2048 → 1284 slots (dropped 12 separators and 752 other tokens, freed 18.0 MiB, after 4096 tokens)\n\n## User\n"
    ));
    assert!(body.contains("And tomorrow?\r\nWith CRLF."));
    assert_eq!(body.matches("> KV cache compacted here").count(), 3);
    assert!(!body.contains("First try"));
}

#[test]
fn a_title_cannot_break_out_of_the_front_matter() {
    let title = "x\n---\nid: 999\n# not a heading: [a, b] # comment\u{85}\u{2028}'\"";
    let mut full = FullConversation { conversation: conversation(3, title), messages: Vec::new(), markers: Vec::new() };
    full.conversation.model_path = Some("yes".into()); // would be a boolean in YAML 1.1 if unquoted
    full.conversation.cache_profile = Some("123".into()); // a number if unquoted
    let markdown = render_markdown(&[full]);
    let blocks = front_matters(&markdown);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0]["title"].as_str(), Some(title));
    assert_eq!(blocks[0]["id"].as_i64(), Some(3));
    assert_eq!(blocks[0]["model_path"].as_str(), Some("yes"));
    assert_eq!(blocks[0]["cache_profile"].as_str(), Some("123"));
    assert!(markdown.contains("\n# x --- id: 999 \\# not a heading: \\[a, b\\] \\# comment"), "{markdown}");
}

#[test]
fn text_shows_the_header_and_the_active_branch() {
    let text = render_text(&[rich_conversation(), empty_conversation()]);
    assert!(text.starts_with("Planning: «naïve» café ☕ — \"quotes\" & <tags>\n"));
    assert!(text.contains("Created: 2024-05-01T09:30:00.000Z\nUpdated: 2024-05-01T09:31:00.000Z\n"));
    assert!(text.contains("Model: /home/me/.cache/sepchat/models/SmolLM2-135M-Instruct-Q4_1.gguf (sha256 9f86d0"));
    assert!(text.contains("Cache profile: sep:a=4,s=256,w=1024,c=2048\n"));
    assert!(text.contains(
        "Sampling: max_tokens=512, min_p=0.05, repeat_penalty=1.1, seed=42, temperature=0.7, top_k=40, top_p=0.95, \
         x_flag=true, x_future=[1,\"two\",{\"three\":3.5}]\n"
    ));
    assert!(text.contains("System prompt:\n    You are terse.\n    Answer in English.\n"));
    let blocks: Vec<&str> = text.lines().filter(|line| ["System:", "User:", "Assistant:"].contains(line)).collect();
    assert_eq!(blocks, ["System:", "User:", "Assistant:", "User:", "Assistant:"]);
    assert!(text.contains("Assistant:\nSure — here's a plan:"));
    assert!(text.contains("\n[27 tokens in · 19 tokens out"));
    assert_eq!(text.matches("\n[KV cache compacted here: 2048 → 1284 slots").count(), 3);
    assert!(!text.contains("First try"));
    assert!(text.contains(
        "\n========================================================================\n\nUntitled conversation\n"
    ));
}

#[test]
fn render_dispatches_on_the_format() {
    let conversations = [rich_conversation()];
    assert_eq!(render(&conversations, ExportFormat::Markdown, T0).expect("md"), render_markdown(&conversations));
    assert_eq!(render(&conversations, ExportFormat::Html, T0).expect("html"), render_html(&conversations, T0));
    assert_eq!(render(&conversations, ExportFormat::Text, T0).expect("txt"), render_text(&conversations));
    assert!(render(&conversations, ExportFormat::Json, T0)
        .expect("json")
        .starts_with("{\n  \"format\": \"sepchat-export\""));
    // Nothing to export is still a valid document.
    for format in ExportFormat::ALL {
        render(&[], format, T0).expect("renders nothing");
    }
}
