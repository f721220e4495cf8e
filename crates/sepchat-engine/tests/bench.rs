//! `bench_sepchat` on the real default model: one fill of each context serves both the prefill and
//! the decode measurement, so the decode run must start from the cache as filled, not from the
//! cache the prefill left behind.

use sepchat_engine::bench::{bench_sepchat, BenchPlan};
use sepchat_engine::CacheConfig;

mod support;

fn plan(prefill_tokens: usize, decode_tokens: usize, contexts: Vec<usize>) -> BenchPlan {
    let model = support::default_model();
    let source_tokens = model
        .tokenizer()
        .encode("It is a truth universally acknowledged, that a single man in possession")
        .expect("encode");
    BenchPlan { source_tokens, prefill_tokens, decode_tokens, contexts }
}

#[test]
fn decode_after_a_prefill_measurement_starts_from_the_filled_cache() {
    let model = support::default_model();
    let (context, prefill, decode) = (150, 40, 6);
    for spec in ["dense", "sep:a=4,s=16,w=32,c=96"] {
        let cache = CacheConfig::parse_for_model(spec, model.config().context_length).expect("cache spec");
        let both = bench_sepchat(&model, &plan(prefill, decode, vec![context]), &cache).expect("bench");
        let decode_only = bench_sepchat(&model, &plan(0, decode, vec![context]), &cache).expect("bench");
        assert!(both[0].prefill_tokens_per_second.is_some() && both[0].decode_tokens_per_second.is_some(), "{spec}");
        assert!(decode_only[0].prefill_tokens_per_second.is_none(), "{spec}: a 0-token prefill is not measured");
        // After decode the point reports the decode cache: the same as when no prefill ran before it.
        assert_eq!(both[0].kv_bytes_held, decode_only[0].kv_bytes_held, "{spec}");
    }
    // And for the dense cache that is exactly context + decode slots (the prefill's 40 are gone).
    let dense = CacheConfig::parse_for_model("dense", model.config().context_length).expect("dense");
    let fresh = bench_sepchat(&model, &plan(0, decode, vec![0]), &dense).expect("bench");
    let bytes_per_slot = fresh[0].kv_bytes_held.expect("held") / decode;
    let both = bench_sepchat(&model, &plan(prefill, decode, vec![context]), &dense).expect("bench");
    assert_eq!(both[0].kv_bytes_held, Some((context + decode) * bytes_per_slot));
}
