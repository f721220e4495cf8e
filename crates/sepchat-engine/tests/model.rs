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
    assert_eq!(config.kv_shape().bytes_per_slot(sepchat_engine::KvFormat::F16), 23_040);
    // 8-bit rows: 64 bytes and an f32 scale per head, 12 KiB per token.
    assert_eq!(config.kv_shape().bytes_per_slot(sepchat_engine::KvFormat::Q8), 12_240);
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
            Event::Stats(_) | Event::Prefill { .. } => {}
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

/// Logits of feeding `tokens` one at a time through a cache built from `spec`, with the number
/// of compactions the cache had done when each came out.
fn step_logits(model: &LlamaModel, spec: &str, tokens: &[u32]) -> Vec<(Vec<f32>, usize)> {
    let config = CacheConfig::parse_for_model(spec, model.config().context_length).expect("valid spec");
    let mut cache = model.new_cache(config);
    let capacity = cache.policy().capacity();
    tokens
        .iter()
        .map(|&token| {
            let logits = model.forward(&[token], &mut cache, LogitsFor::LastToken).expect("forward");
            assert!(cache.len() <= capacity, "{spec}: {} slots held", cache.len());
            (logits_to_vec(&logits).expect("logits"), cache.compactions())
        })
        .collect()
}

#[test]
fn evicting_caches_give_dense_logits_until_their_first_compaction_and_differ_after() {
    let model = model();
    let text = TEXT.repeat(2);
    let tokens = model.tokenizer().encode(&text).expect("encode");
    assert!(tokens.len() >= 90);
    let tokens = &tokens[..90];
    let dense = step_logits(&model, "dense", tokens);
    for spec in ["sep:a=4,s=8,w=16,c=48", "streaming:a=4,c=40", "sep:a=4,s=8,w=16,c=48,pos=abs"] {
        let evicting = step_logits(&model, spec, tokens);
        let before = evicting.iter().take_while(|(_, compactions)| *compactions == 0).count();
        assert!(before >= 40 && before < tokens.len(), "{spec}: first compaction at step {before}");
        for step in 0..before {
            assert_eq!(evicting[step].0, dense[step].0, "{spec}: step {step} differs before any compaction");
        }
        // Evicting tokens must change what the model sees.
        assert!((before..tokens.len()).any(|step| evicting[step].0 != dense[step].0), "{spec}: nothing was evicted");
    }
}

#[test]
fn chunked_prefill_never_lets_attention_see_more_than_c_keys() {
    let model = model();
    let tokens = model.tokenizer().encode(&TEXT.repeat(4)).expect("encode");
    let config = CacheConfig::parse_for_model("sep:a=4,s=8,w=16,c=48", 8192).expect("valid spec");
    let mut cache = model.new_cache(config);
    // Asked for chunks of 512, the prefill splits at c - (a + s + w) = 20 tokens.
    assert_eq!(cache.max_chunk(), 20);
    model.prefill(&tokens, &mut cache, 512).expect("prefill");
    let stats = cache.stats();
    assert_eq!(stats.tokens_seen, tokens.len());
    assert!(stats.slots_peak <= 48, "attention saw {} keys", stats.slots_peak);
    assert!(stats.compactions > 0);
    assert!(stats.separators_held > 0 && stats.separators_held <= 8, "{stats:?}");
    // The separator block holds only separators of the vocabulary rule.
    let separators = cache.separators();
    let held = &cache.slot_tokens()[stats.initial_held..stats.initial_held + stats.separators_held];
    assert!(held.iter().all(|&id| separators.contains(id)), "{held:?}");
    assert_eq!(stats.bytes_held, cache.len() * 23_040);
    assert!(stats.bytes_held < stats.bytes_dense);
}

#[test]
fn worker_extends_a_compacted_session_without_rebuilding_it() {
    let engine = Engine::start(model()).expect("worker");
    let tokenizer = engine.model().tokenizer();
    let config = CacheConfig::parse_for_model("sep:a=4,s=8,w=16,c=48", 8192).expect("valid spec");
    let first_prompt = tokenizer.encode(TEXT).expect("encode");
    let (sender, receiver) = mpsc::channel();
    let mut request = GenerateRequest::new(11, first_prompt.clone(), SamplingParams::greedy(), 8, sender);
    request.cache = Some(config.clone());
    engine.submit(request).expect("submit");
    let (_, events) = collect(receiver);
    let Some(Event::Done(first)) = events.last() else { panic!("no Done event: {events:?}") };
    assert!(first.kv.compactions > 0, "the first turn should already compact: {:?}", first.kv);

    // The next turn repeats everything fed so far: the prompt and the generated tokens, minus
    // the last one (sampled but not fed). Only the new tokens are fed.
    let mut second_prompt = first_prompt.clone();
    second_prompt.extend(tokenizer.encode(&first.text).expect("encode"));
    second_prompt.extend(tokenizer.encode(" And then?").expect("encode"));
    let (sender, receiver) = mpsc::channel();
    let mut request = GenerateRequest::new(11, second_prompt, SamplingParams::greedy(), 4, sender);
    request.cache = Some(config.clone());
    engine.submit(request).expect("submit");
    let (_, events) = collect(receiver);
    let Some(Event::Done(second)) = events.last() else { panic!("no Done event: {events:?}") };
    assert!(second.reused_tokens >= first_prompt.len(), "reused {}", second.reused_tokens);
    assert_eq!(second.kv.tokens_seen, second.prompt_tokens + second.generated_tokens.saturating_sub(1));

    // A prompt that rewrites history cannot roll back a compacted cache: it is rebuilt.
    let (sender, receiver) = mpsc::channel();
    let mut request = GenerateRequest::new(
        11,
        tokenizer.encode("Another story.").expect("encode"),
        SamplingParams::greedy(),
        2,
        sender,
    );
    request.cache = Some(config);
    engine.submit(request).expect("submit");
    let (_, events) = collect(receiver);
    let Some(Event::Done(third)) = events.last() else { panic!("no Done event: {events:?}") };
    assert_eq!(third.reused_tokens, 0);
    assert_eq!(third.kv.compactions, 0);
}

/// Sends one request and returns its summary.
fn generate(
    engine: &Engine,
    session: u64,
    prompt: Vec<u32>,
    cache: &CacheConfig,
    max_tokens: usize,
) -> sepchat_engine::GenerationSummary {
    let (sender, receiver) = mpsc::channel();
    let mut request = GenerateRequest::new(session, prompt, SamplingParams::greedy(), max_tokens, sender);
    request.cache = Some(cache.clone());
    engine.submit(request).expect("submit");
    let (_, events) = collect(receiver);
    match events.last() {
        Some(Event::Done(summary)) => summary.clone(),
        other => panic!("no Done event: {other:?}"),
    }
}

#[test]
fn a_restored_snapshot_continues_exactly_like_the_live_cache() {
    restored_snapshot_continues_like_the_live_cache("sep:a=4,s=8,w=16,c=48");
}

#[test]
fn a_restored_8_bit_snapshot_continues_exactly_like_the_live_cache() {
    restored_snapshot_continues_like_the_live_cache("sep:a=4,s=8,w=16,c=48,kv=q8");
}

fn restored_snapshot_continues_like_the_live_cache(spec: &str) {
    let directory = tempfile::tempdir().expect("tempdir");
    let snapshot = directory.path().join("session.kv");
    let config = CacheConfig::parse_for_model(spec, 8192).expect("valid spec");
    let live = Engine::start(model()).expect("worker");
    let tokenizer = live.model().tokenizer();
    let first_prompt = tokenizer.encode(TEXT).expect("encode");
    let first = generate(&live, 5, first_prompt.clone(), &config, 6);
    assert!(first.kv.compactions > 0);
    let info = live.snapshot_session(5, &snapshot, "model-a").expect("snapshot");
    assert_eq!(info.slots, first.kv.slots_held);
    assert_eq!(info.bytes, first.kv.bytes_held);

    let mut second_prompt = first_prompt.clone();
    second_prompt.extend(tokenizer.encode(&first.text).expect("encode"));
    second_prompt.extend(tokenizer.encode(" The end.").expect("encode"));
    let continued_live = generate(&live, 5, second_prompt.clone(), &config, 8);

    let restored_engine = Engine::start(model()).expect("worker");
    let restored = restored_engine.restore_session(9, &snapshot, "model-a", config.clone()).expect("restore");
    assert_eq!(restored, info);
    let continued_restored = generate(&restored_engine, 9, second_prompt, &config, 8);
    assert_eq!(continued_restored.reused_tokens, continued_live.reused_tokens);
    assert_eq!(continued_restored.text, continued_live.text);
    assert_eq!(continued_restored.kv, continued_live.kv);

    // Another model, other cache settings, or a damaged file: refused with a typed error.
    let error = restored_engine.restore_session(9, &snapshot, "model-b", config.clone()).expect_err("other model");
    assert!(matches!(error, EngineError::SnapshotMismatch(ref message) if message.contains("model")), "{error}");
    let other_cache = CacheConfig::parse_for_model("low", 8192).expect("valid spec");
    let error = restored_engine.restore_session(9, &snapshot, "model-a", other_cache).expect_err("other cache");
    assert!(matches!(error, EngineError::SnapshotMismatch(ref message) if message.contains("cache")), "{error}");
    let bytes = std::fs::read(&snapshot).expect("read");
    let damaged = directory.path().join("damaged.kv");
    for cut in [3, 20, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&damaged, &bytes[..cut]).expect("write");
        let error = restored_engine.restore_session(9, &damaged, "model-a", config.clone()).expect_err("truncated");
        assert!(matches!(error, EngineError::SnapshotCorrupt(_) | EngineError::SnapshotIo(_)), "cut {cut}: {error}");
    }
    // After a refused restore the session starts afresh and still answers.
    let fresh = generate(&restored_engine, 9, tokenizer.encode("Hello").expect("encode"), &config, 2);
    assert_eq!(fresh.reused_tokens, 0);
}
