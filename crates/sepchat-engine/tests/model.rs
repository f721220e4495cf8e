//! The forward pass and the worker on the real default model.

use std::sync::atomic::Ordering;
use std::sync::mpsc;

use candle_core::Tensor;
use sepchat_engine::model::{logits_to_vec, LlamaModel, LogitsFor};
use sepchat_engine::{CacheConfig, Engine, EngineError, Event, GenerateRequest, SamplingParams, StopReason};

mod support;

fn model() -> LlamaModel {
    support::default_model()
}

fn max_abs_difference(a: &Tensor, b: &Tensor) -> f32 {
    let a = logits_to_vec(a).expect("logits");
    let b = logits_to_vec(b).expect("logits");
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

const TEXT: &str = "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times; \
it was the age of wisdom, it was the age of foolishness, it was the epoch of belief.";

#[test]
fn default_model_has_the_expected_shape() {
    let model = model();
    let config = model.config();
    assert_eq!((config.n_layer, config.n_head, config.n_kv_head, config.head_dim), (30, 9, 3, 64));
    assert_eq!(config.vocab_size, 49152);
    assert_eq!(config.context_length, 8192);
    // 30 layers x (K and V) x 3 heads x 64 dims x 2 bytes (f16) = 22.5 KiB per token (SEPLLM.md).
    assert_eq!(config.kv_shape().bytes_per_slot(), 23_040);
}

#[test]
fn chunked_prefill_gives_the_same_logits_as_one_pass() {
    let model = model();
    let tokens = model.tokenizer().encode(TEXT).expect("encode");
    assert!(tokens.len() > 30);
    let mut whole = model.new_dense_cache();
    let one_pass = model.prefill(&tokens, &mut whole, 512).expect("prefill");
    for chunk in [1, 7, 16] {
        let mut chunked = model.new_dense_cache();
        let logits = model.prefill(&tokens, &mut chunked, chunk).expect("prefill");
        let difference = max_abs_difference(&one_pass, &logits);
        assert!(difference < 2e-3, "chunk {chunk}: max difference {difference}");
        assert_eq!(chunked.slot_tokens(), whole.slot_tokens());
    }
}

#[test]
fn every_token_logits_match_last_token_logits_of_prefixes() {
    let model = model();
    let tokens = model.tokenizer().encode(TEXT).expect("encode");
    let mut cache = model.new_dense_cache();
    let all = model.forward(&tokens[..20], &mut cache, LogitsFor::From(0)).expect("forward");
    assert_eq!(all.dims(), &[20, 49152]);
    for end in [1usize, 5, 20] {
        let mut prefix_cache = model.new_dense_cache();
        let last = model.prefill(&tokens[..end], &mut prefix_cache, 512).expect("prefill");
        let row = all.get(end - 1).expect("row");
        let difference = max_abs_difference(&row, &last);
        assert!(difference < 2e-3, "prefix {end}: max difference {difference}");
    }
}

#[test]
fn out_of_vocabulary_tokens_and_empty_prompts_are_errors() {
    let model = model();
    let mut cache = model.new_dense_cache();
    assert!(matches!(model.prefill(&[], &mut cache, 8), Err(EngineError::EmptyPrompt)));
    assert!(matches!(model.prefill(&[1, 49152], &mut cache, 8), Err(EngineError::TokenOutOfRange { id: 49152, .. })));
    // A refused chunk leaves the cache untouched.
    assert_eq!(cache.len(), 0);
}

#[test]
fn dense_cache_refuses_to_overflow_instead_of_truncating() {
    let model = model();
    let mut cache = model.new_cache(CacheConfig::dense(16));
    let tokens = model.tokenizer().encode(TEXT).expect("encode");
    let error = model.prefill(&tokens[..20], &mut cache, 8).expect_err("too long for 16 slots");
    assert!(matches!(error, EngineError::ContextFull { capacity: 16, .. }), "{error}");
}

fn collect(receiver: mpsc::Receiver<Event>) -> (String, Vec<Event>) {
    let mut text = String::new();
    let mut events = Vec::new();
    for event in receiver {
        if let Event::Token { text: piece } = &event {
            text.push_str(piece);
        }
        let last = matches!(event, Event::Done(_) | Event::Error { .. });
        events.push(event);
        if last {
            break;
        }
    }
    (text, events)
}

#[test]
fn worker_streams_tokens_and_reuses_the_session_cache() {
    let engine = Engine::start(model()).expect("worker");
    let tokenizer = engine.model().tokenizer();
    let first_prompt =
        tokenizer.encode("<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n").expect("encode");
    let (sender, receiver) = mpsc::channel();
    engine.submit(GenerateRequest::new(7, first_prompt.clone(), SamplingParams::greedy(), 12, sender)).expect("submit");
    let (streamed, events) = collect(receiver);
    let Some(Event::Done(summary)) = events.last() else { panic!("no Done event: {events:?}") };
    assert_eq!(summary.text, streamed, "the deltas add up to the final text");
    assert!(!summary.text.is_empty());
    assert_eq!(summary.reused_tokens, 0);
    assert!(events.iter().any(|e| matches!(e, Event::Stats(_))));

    // The second turn starts with the first: only the new tokens are prefilled.
    let mut second_prompt = first_prompt.clone();
    second_prompt.extend(tokenizer.encode(" More please.").expect("encode"));
    let (sender, receiver) = mpsc::channel();
    engine.submit(GenerateRequest::new(7, second_prompt, SamplingParams::greedy(), 4, sender)).expect("submit");
    let (_, events) = collect(receiver);
    let Some(Event::Done(summary)) = events.last() else { panic!("no Done event: {events:?}") };
    assert!(summary.reused_tokens >= first_prompt.len(), "reused {} of {}", summary.reused_tokens, first_prompt.len());
}

#[test]
fn worker_honours_the_cancel_flag_and_reports_errors_with_partial_text() {
    let engine = Engine::start(model()).expect("worker");
    let prompt = engine.model().tokenizer().encode("Once upon a time").expect("encode");
    let (sender, receiver) = mpsc::channel();
    let request = GenerateRequest::new(1, prompt, SamplingParams::greedy(), 10_000, sender);
    let cancel = request.cancel.clone();
    engine.submit(request).expect("submit");
    let mut tokens = 0;
    let summary = loop {
        match receiver.recv().expect("an event") {
            Event::Token { .. } => {
                tokens += 1;
                if tokens == 3 {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
            Event::Done(summary) => break summary,
            Event::Error { message, .. } => panic!("{message}"),
            Event::Stats(_) => {}
        }
    };
    assert_eq!(summary.stop_reason, StopReason::Cancelled);
    assert!(summary.generated_tokens < 10, "stopped after {} tokens", summary.generated_tokens);

    // An empty prompt is an error event, and the worker keeps serving afterwards.
    let (sender, receiver) = mpsc::channel();
    engine.submit(GenerateRequest::new(2, Vec::new(), SamplingParams::greedy(), 4, sender)).expect("submit");
    let (_, events) = collect(receiver);
    assert!(matches!(events.last(), Some(Event::Error { message, .. }) if message.contains("empty")), "{events:?}");
    let (sender, receiver) = mpsc::channel();
    engine.submit(GenerateRequest::new(2, vec![504], SamplingParams::greedy(), 2, sender)).expect("submit");
    let (_, events) = collect(receiver);
    assert!(matches!(events.last(), Some(Event::Done(_))), "{events:?}");
}
