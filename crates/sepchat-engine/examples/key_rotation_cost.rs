//! Measures the two ways SEPLLM.md allows for giving cache slots their in-cache RoPE position,
//! so the choice in `kv_cache.rs` rests on numbers (recorded in docs/BENCHMARKS.md):
//!
//! 1. keys stored after RoPE and re-rotated by (new slot - old slot) when a compaction moves
//!    them (what the engine does): decode with `pos=shift` against `pos=abs` (same compactions,
//!    no rotation) shows its amortised cost per token;
//! 2. keys stored before RoPE and rotated at their slot index on every step: the extra work per
//!    step is one rotation of every held key in every layer (widened to f32 and back, as the
//!    attention kernel reads f16), timed here on a cache-sized tensor.
//!
//! Run: `cargo run --release -p sepchat-engine --example key_rotation_cost -- [tokens]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use sepchat_engine::model::{LlamaModel, LogitsFor};
use sepchat_engine::CacheConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tokens_to_run: usize = std::env::args().nth(1).and_then(|arg| arg.parse().ok()).unwrap_or(4096);
    let path = sepchat_gguf::default_model::default_model_path().ok_or("no home directory")?;
    let model = LlamaModel::load(&path, &Device::Cpu)?;
    let text = include_str!("../../sepchat-cli/src/bench_text.txt");
    let source = model.tokenizer().encode(text)?;
    let tokens: Vec<u32> = (0..tokens_to_run).map(|i| source[i % source.len()]).collect();

    println!("decode {tokens_to_run} tokens one at a time through the default SepCache profile:");
    let mut per_token = Vec::new();
    for spec in ["default", "default:pos=abs"] {
        let config = CacheConfig::parse_for_model(spec, 1 << 20)?;
        let mut cache = model.new_cache(config);
        let started = Instant::now();
        for &token in &tokens {
            model.forward(&[token], &mut cache, LogitsFor::LastToken)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let stats = cache.stats();
        println!(
            "  {spec:<18} {:.2} ms/token, {} compactions, mean {:.0} slots",
            1e3 * seconds / tokens_to_run as f64,
            stats.compactions,
            stats.slots_mean
        );
        per_token.push((seconds / tokens_to_run as f64, stats.slots_mean));
    }
    let rerotation = per_token[0].0 - per_token[1].0;
    println!("  re-rotation at compaction costs {:.3} ms/token amortised", 1e3 * rerotation);

    // Keys stored before RoPE: every step rotates all held keys of every layer.
    let config = model.config();
    let held = per_token[0].1.round() as usize;
    let half = config.head_dim / 2;
    let keys =
        Tensor::randn(0f32, 1f32, (1, config.n_kv_head, held, config.head_dim), &Device::Cpu)?.to_dtype(DType::F16)?;
    let angles: Vec<f32> = (0..held * half).map(|i| (i / half) as f32 * 0.01).collect();
    let cos = Tensor::from_vec(angles.iter().map(|a| a.cos()).collect::<Vec<_>>(), (held, half), &Device::Cpu)?;
    let sin = Tensor::from_vec(angles.iter().map(|a| a.sin()).collect::<Vec<_>>(), (held, half), &Device::Cpu)?;
    let steps = 50;
    let started = Instant::now();
    for _ in 0..steps {
        for _ in 0..config.n_layer {
            let widened = keys.to_dtype(DType::F32)?;
            let rotated = candle_nn::rotary_emb::rope_i(&widened, &cos, &sin)?.to_dtype(DType::F16)?;
            std::hint::black_box(rotated);
        }
    }
    let pre_rope = started.elapsed().as_secs_f64() / steps as f64;
    println!(
        "  keys stored before RoPE would add {:.3} ms/token (rotating {held} keys x {} layers every step)",
        1e3 * pre_rope,
        config.n_layer
    );
    println!("  decode step with re-rotation: {:.2} ms", 1e3 * per_token[0].0);
    Ok(())
}
