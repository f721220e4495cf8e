//! The tokenizer, chat template and streaming detokenizer on the default model (SmolLM2-135M-Instruct).

mod common;

use sepchat_text::{ChatMessage, ChatTemplate, GgufTokenizer, StreamingDetokenizer, TextError};

#[test]
fn vocabulary_and_special_tokens() {
    let tokenizer = common::default_tokenizer();
    assert_eq!(tokenizer.vocab_size(), 49152);
    assert_eq!(tokenizer.bos_token_id(), Some(1));
    assert_eq!(tokenizer.eos_token_id(), Some(2));
    assert!(!tokenizer.adds_bos_token());
    assert_eq!(tokenizer.token_text(1), Some("<|im_start|>"));
    assert_eq!(tokenizer.token_text(216), Some("Ġ"));
    assert_eq!(tokenizer.token_text(49152), None);
    assert!(tokenizer.is_special(0) && tokenizer.is_special(1) && tokenizer.is_special(2));
    assert!(!tokenizer.is_special(216));
    assert_eq!(tokenizer.special_token_id("<|im_end|>"), Some(2));
    // EOS is <|im_end|> here; <|endoftext|> is not in the conventional list, so only one stop id.
    assert_eq!(tokenizer.stop_token_ids(), &[2]);
    assert_eq!(tokenizer.inner().get_vocab_size(true), 49152);
}

#[test]
fn decode_can_skip_special_tokens() {
    let tokenizer = common::default_tokenizer();
    let ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>").expect("encode");
    assert_eq!(tokenizer.decode(&ids, false).expect("decode"), "<|im_start|>user\nHi<|im_end|>");
    assert_eq!(tokenizer.decode(&ids, true).expect("decode"), "user\nHi");
    assert!(matches!(tokenizer.decode(&[49152], false), Err(TextError::TokenIdOutOfRange { id: 49152, .. })));
}

#[test]
fn separator_set_covers_the_design_list() {
    let tokenizer = common::default_tokenizer();
    let separators = tokenizer.separator_ids();
    let required = [
        17, 28, 30, 42, 43, 47, 197, 198, 216, 1673, 3297, 9148, 5728, 8544, 1577, 3717, 1116, 256, 333, 289,
        // <|im_start|>, also BOS.
        1,
    ];
    let missing: Vec<u32> = required.iter().copied().filter(|id| !separators.contains(id)).collect();
    let listing: Vec<String> =
        separators.iter().map(|&id| format!("{id}={:?}", tokenizer.decode(&[id], false).unwrap_or_default())).collect();
    println!("separator rule yields {} ids: {}", separators.len(), listing.join(" "));
    assert!(missing.is_empty(), "missing separator ids {missing:?}; the rule yields {listing:?}");
    // "A few dozen at most": the rule yields 48 on SmolLM2; a much larger set would mean the rule lets in
    // ordinary text.
    assert!(separators.len() <= 64, "separator set too large: {} ids", separators.len());
    // Sorted, no duplicates, and no token that merely contains punctuation next to other text.
    assert!(separators.windows(2).all(|pair| pair[0] < pair[1]));
    for not_separator in ["...", ".\"", ").", "a"] {
        let ids = tokenizer.encode(not_separator).expect("encode");
        if let [single_id] = ids[..] {
            assert!(!separators.contains(&single_id), "{not_separator:?} (id {single_id}) is not a separator");
        }
    }
}

#[test]
fn default_template_renders_llama_cpp_prompt() {
    let content = common::default_model_content();
    let template =
        ChatTemplate::from_gguf(&content).expect("template compiles").expect("the default model has a chat template");
    let messages = [
        ChatMessage::system("You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
        ChatMessage::user("What is the capital of France?"),
    ];
    let rendered = template.render(&messages, true).expect("template renders");
    let greedy = common::reference_json("greedy.json");
    let expected = greedy["cases"][0]["prompt"].as_str().expect("first greedy case has a prompt");
    assert_eq!(rendered, expected);

    // Without a system message the template inserts its default persona; without the generation prompt
    // the text ends after the last turn.
    let without_system =
        template.render(&[ChatMessage::user("What is the capital of France?")], false).expect("template renders");
    assert!(without_system.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
    assert!(without_system.ends_with("France?<|im_end|>\n"));
}

#[test]
fn rendered_prompt_tokenizes_with_control_tokens() {
    let tokenizer = common::default_tokenizer();
    let greedy = common::reference_json("greedy.json");
    let prompt = greedy["cases"][0]["prompt"].as_str().expect("prompt");
    let ids = tokenizer.encode(prompt).expect("encode");
    assert_eq!(ids.first(), Some(&1), "prompt starts with the <|im_start|> control token");
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 3);
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 2);
}

#[test]
fn missing_chat_template_is_none() {
    let mut content = common::default_model_content();
    content.metadata.remove("tokenizer.chat_template");
    assert!(ChatTemplate::from_gguf(&content).expect("no error").is_none());
}

#[test]
fn unsupported_tokenizer_metadata_is_a_typed_error() {
    use candle_core::quantized::gguf_file::Value;

    let mut content = common::default_model_content();
    content.metadata.insert("tokenizer.ggml.pre".to_string(), Value::String("made-up-pre".to_string()));
    let error = GgufTokenizer::from_gguf(&content).expect_err("unknown pre-tokenizer is refused");
    assert!(matches!(&error, TextError::UnsupportedPreTokenizer { pre } if pre == "made-up-pre"));
    assert!(error.to_string().contains("made-up-pre"), "{error}");

    content.metadata.insert("tokenizer.ggml.model".to_string(), Value::String("bert".to_string()));
    let error = GgufTokenizer::from_gguf(&content).expect_err("unknown model is refused");
    assert!(matches!(&error, TextError::UnsupportedTokenizerModel { model } if model == "bert"));

    content.metadata.remove("tokenizer.ggml.model");
    let error = GgufTokenizer::from_gguf(&content).expect_err("missing model is refused");
    assert!(matches!(&error, TextError::MissingMetadata { key } if key == "tokenizer.ggml.model"));
}

#[test]
fn bos_is_prepended_only_when_the_gguf_asks() {
    use candle_core::quantized::gguf_file::Value;

    let mut content = common::default_model_content();
    assert_eq!(GgufTokenizer::from_gguf(&content).expect("builds").encode("Hi").expect("encode"), [26843]);
    content.metadata.insert("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(true));
    let tokenizer = GgufTokenizer::from_gguf(&content).expect("builds");
    assert!(tokenizer.adds_bos_token());
    assert_eq!(tokenizer.encode("Hi").expect("encode"), [1, 26843]);

    content.metadata.remove("tokenizer.ggml.bos_token_id");
    assert!(matches!(
        GgufTokenizer::from_gguf(&content),
        Err(TextError::InvalidMetadata { key, .. }) if key == "tokenizer.ggml.add_bos_token"
    ));
}

fn stream(tokenizer: &GgufTokenizer, ids: &[u32]) -> Vec<String> {
    let mut detokenizer = StreamingDetokenizer::new(false);
    let mut deltas = Vec::new();
    for &id in ids {
        if let Some(delta) = detokenizer.push(tokenizer, id).expect("push") {
            deltas.push(delta);
        }
        assert!(detokenizer.window_len() <= 8, "window grows: {}", detokenizer.window_len());
    }
    deltas.extend(detokenizer.finish(tokenizer).expect("finish"));
    deltas
}

#[test]
fn streaming_detokenizer_never_splits_characters() {
    let tokenizer = common::default_tokenizer();
    let texts = [
        "Emoji 🙂🚀 and family 👨‍👩‍👧 done",
        "🙂🚀👨‍👩‍👧",
        "CJK 漢字かな and more 漢字かな",
        "Accents: café, naïve, Zürich, Ærøskøbing, ñandú",
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        "<|im_start|>assistant\nSure 🙂<|im_end|>\n",
    ];
    for text in texts {
        let ids = tokenizer.encode(text).expect("encode");
        let deltas = stream(&tokenizer, &ids);
        for delta in &deltas {
            assert!(!delta.contains('\u{FFFD}'), "delta {delta:?} of {text:?} holds a broken character");
        }
        let streamed = deltas.concat();
        assert_eq!(streamed, tokenizer.decode(&ids, false).expect("decode"));
        assert_eq!(streamed, text);
    }
}

#[test]
fn streaming_detokenizer_holds_back_partial_characters() {
    let tokenizer = common::default_tokenizer();
    let ids = tokenizer.encode("🚀").expect("encode");
    assert!(ids.len() > 1, "the rocket takes several byte tokens: {ids:?}");
    let mut detokenizer = StreamingDetokenizer::new(false);
    for &id in &ids[..ids.len() - 1] {
        assert_eq!(detokenizer.push(&tokenizer, id).expect("push"), None);
    }
    assert_eq!(detokenizer.push(&tokenizer, ids[ids.len() - 1]).expect("push").as_deref(), Some("🚀"));
    assert_eq!(detokenizer.finish(&tokenizer).expect("finish"), None);

    // A stream that really ends inside a character gives the replacement character at finish.
    let mut cut = StreamingDetokenizer::new(false);
    assert_eq!(cut.push(&tokenizer, ids[0]).expect("push"), None);
    assert_eq!(cut.finish(&tokenizer).expect("finish").as_deref(), Some("\u{FFFD}"));
}

#[test]
fn streaming_detokenizer_can_skip_special_tokens() {
    let tokenizer = common::default_tokenizer();
    let ids = tokenizer.encode("<|im_start|>assistant\nHi 🙂<|im_end|>").expect("encode");
    let mut detokenizer = StreamingDetokenizer::new(true);
    let mut streamed = String::new();
    for &id in &ids {
        streamed.extend(detokenizer.push(&tokenizer, id).expect("push"));
    }
    streamed.extend(detokenizer.finish(&tokenizer).expect("finish"));
    assert_eq!(streamed, "assistant\nHi 🙂");
}

#[test]
fn paper_separator_rule_gives_the_reference_experiments_ids() {
    let tokenizer = common::default_tokenizer();
    let mut ids = tokenizer.paper_separator_ids().expect("decode");
    ids.sort_unstable();
    // The list in ../shared/reference/stream-ppl.md, sorted.
    let mut expected = vec![17, 28, 30, 42, 43, 47, 197, 198, 216, 1577, 1673, 3297, 5728, 8544, 9148, 3717, 256, 333];
    expected.sort_unstable();
    assert_eq!(ids, expected);
}
