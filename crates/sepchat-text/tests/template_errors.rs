//! Broken chat templates give a `TextError::Template` that names the template.

use sepchat_text::{ChatMessage, ChatTemplate, TextError};

#[test]
fn syntax_error_names_the_template() {
    let error = ChatTemplate::from_source("tokenizer.chat_template", "{% for message in messages %}{{ message")
        .expect_err("syntax error is reported");
    assert!(matches!(&error, TextError::Template { name, .. } if name == "tokenizer.chat_template"));
    let text = error.to_string();
    assert!(text.starts_with("chat template 'tokenizer.chat_template' failed to compile: "), "{text}");
}

#[test]
fn raise_exception_names_the_template_and_keeps_the_message() {
    let template = ChatTemplate::from_source(
        "tokenizer.chat_template",
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('Conversation must start with system') }}{% endif %}ok",
    )
    .expect("template compiles");
    let error = template.render(&[ChatMessage::user("hi")], true).expect_err("the template rejects the conversation");
    assert!(matches!(&error, TextError::Template { name, .. } if name == "tokenizer.chat_template"));
    let text = error.to_string();
    assert!(text.starts_with("chat template 'tokenizer.chat_template' failed to render: "), "{text}");
    assert!(text.contains("Conversation must start with system"), "{text}");
    assert_eq!(template.render(&[ChatMessage::system("s")], true).expect("renders").as_str(), "ok");
}

#[test]
fn hugging_face_whitespace_rules_apply() {
    // trim_blocks and lstrip_blocks, as transformers' apply_chat_template sets them.
    let template = ChatTemplate::from_source(
        "blocks",
        "{% for message in messages %}\n    {% if message.role == 'user' %}\n[{{ message.content }}]\n    {% endif %}\n{% endfor %}",
    )
    .expect("template compiles");
    let rendered = template
        .render(&[ChatMessage::user("a"), ChatMessage::assistant("b"), ChatMessage::user("c")], false)
        .expect("renders");
    assert_eq!(rendered, "[a]\n[c]\n");
}
