//! The streaming-perplexity protocol on the real default model.

use sepchat_engine::stream_eval::{stream_perplexity, stream_tokens};
use sepchat_engine::CacheConfig;

mod support;

const TEXT: &str = "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times; \
it was the age of wisdom, it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, \
it was the season of Light, it was the season of Darkness.";

/// Before its first compaction an evicting cache holds exactly what a dense one holds, so the
/// first c predictions are identical; after it, attention never sees more than c + 1 keys.
#[test]
fn streaming_matches_dense_until_its_first_compaction_and_stays_bounded() {
    let model = support::default_model();
    let context = model.config().context_length;
    let tokens = stream_tokens(&model, TEXT, 64).expect("tokens");
    assert_eq!(tokens.len(), 65, "the text should have at least 65 tokens");
    let config = |spec: &str| CacheConfig::parse_for_model(spec, context).expect(spec);

    let dense = stream_perplexity(&model, &tokens, config("dense"), 16, |_| {}).expect("dense run");
    let mut steps = 0;
    let streaming = stream_perplexity(&model, &tokens, config("streaming:a=4,c=16"), 16, |progress| {
        steps += 1;
        assert_eq!(progress.done, steps);
        assert_eq!(progress.total, 64);
        assert!(progress.slots <= 17, "step {steps} saw {} slots", progress.slots);
    })
    .expect("streaming run");
    assert_eq!(steps, 64);

    for run in [&dense, &streaming] {
        assert_eq!(run.tokens, 64);
        assert_eq!(run.nll.len(), 64);
        assert_eq!(run.stopped, None);
        let checkpoints: Vec<usize> = run.checkpoints.iter().map(|c| c.tokens).collect();
        assert_eq!(checkpoints, vec![16, 32, 48, 64]);
        // The per-step slot counts agree with the cache's own statistics.
        assert_eq!(run.peak_slots, run.final_stats.slots_peak);
        assert!((run.avg_slots - run.final_stats.slots_mean).abs() < 1e-9, "{run:?}");
        let mean_nll = run.nll.iter().map(|&x| f64::from(x)).sum::<f64>() / 64.0;
        assert!((run.ppl - mean_nll.exp()).abs() / run.ppl < 1e-5);
        assert_eq!(run.checkpoints.last().map(|c| c.ppl), Some(run.ppl));
    }
    // The timing is forced, not written into the spec the caller gave.
    assert_eq!(streaming.policy, "streaming:a=4,c=16");
    assert_eq!(dense.policy, format!("dense:c={context}"));
    assert_eq!(dense.slots, (1..=64).collect::<Vec<u32>>());
    assert_eq!(dense.compactions, 0);

    // Steps 1..=16 see at most 16 slots: the same context as dense, so the same logits.
    assert_eq!(streaming.nll[..16], dense.nll[..16]);
    assert_eq!(streaming.peak_slots, 17);
    assert!(streaming.slots.iter().all(|&s| s <= 17));
    assert!(streaming.compactions > 0);
    assert_ne!(streaming.nll[17..], dense.nll[17..], "evicting context must change some prediction");
}

/// A dense cache smaller than the stream stops the run where it fills, with its measurements so
/// far, instead of failing it.
#[test]
fn a_full_dense_cache_stops_the_run_and_keeps_what_it_measured() {
    let model = support::default_model();
    let tokens = stream_tokens(&model, TEXT, 40).expect("tokens");
    let config = CacheConfig::parse_for_model("dense:c=24", model.config().context_length).expect("spec");
    let run = stream_perplexity(&model, &tokens, config, 10, |_| {}).expect("a stopped run is not an error");
    assert_eq!(run.tokens, 24);
    assert_eq!(run.nll.len(), 24);
    let checkpoints: Vec<usize> = run.checkpoints.iter().map(|c| c.tokens).collect();
    assert_eq!(checkpoints, vec![10, 20]);
    let stopped = run.stopped.expect("the run should say why it stopped");
    assert!(stopped.contains("at most 24"), "{stopped}");
}
