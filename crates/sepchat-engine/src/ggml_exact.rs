//! Element-wise operations computed bit for bit as ggml's CPU backend computes them on x86-64
//! with AVX-512 (the machines our llama.cpp goldens come from): RMS norm, SwiGLU with ggml's
//! vectorised `expf`, RoPE angles built by repeated multiplication, and the f16 dot product's
//! reduction order.
//!
//! Why bother: a 135M model with 8-bit activations amplifies one-ulp differences into logit
//! differences of a few hundredths, enough to flip greedy choices between near-tied tokens.
//! Matching the reference's arithmetic is what makes its outputs a usable test oracle; the
//! results are otherwise as accurate as candle's (these are not approximations of ours).

use half::f16;

/// `ggml_compute_forward_rms_norm_f32` followed by the weight multiply: the sum of squares in
/// f64 (each square rounded to f32 first), the mean rounded to f32, `1/sqrt` in f32.
pub(crate) fn rms_norm_mul(values: &mut [f32], row_len: usize, weight: &[f32], eps: f32) {
    for row in values.chunks_exact_mut(row_len) {
        let sum: f64 = row.iter().map(|&x| f64::from(x * x)).sum();
        let mean = (sum / row_len as f64) as f32;
        let scale = 1.0f32 / (mean + eps).sqrt();
        for (x, &w) in row.iter_mut().zip(weight) {
            *x = (*x * scale) * w;
        }
    }
}

/// `ggml_vec_swiglu_f32`: silu(gate) * up, with ggml's AVX-512 silu.
pub(crate) fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect()
}

/// ggml's `ggml_v_silu`: x / (1 + expf(-x)) with its vector expf.
fn silu(x: f32) -> f32 {
    x / (1.0 + expf(0.0 - x))
}

/// Builds an f32 from a C hex-float literal `0x1.<fraction>p<exponent>` (`mantissa` holds the
/// leading 1 and the fraction's hex digits, `fraction_bits` their bit count).
fn hex_float(mantissa: u32, fraction_bits: i32, exponent: i32) -> f32 {
    (f64::from(mantissa) * 2f64.powi(exponent - fraction_bits)) as f32
}

/// ggml's AVX-512 `ggml_v_expf` (adapted from ARM's optimized routines; max error 1.45 ulp),
/// one lane at a time. Inputs whose exponent leaves the normal range use the C library's expf.
fn expf(x: f32) -> f32 {
    let shifter = hex_float(0x18, 4, 23);
    let z = x.mul_add(hex_float(0x1715476, 24, 0), shifter);
    let n = z - shifter;
    if n.abs() > 126.0 {
        return x.exp();
    }
    let reduced = (-n).mul_add(hex_float(0x17f7d1c, 24, -20), (-n).mul_add(hex_float(0x162e4, 16, -1), x));
    let b = reduced;
    let u = b * b;
    let inner = hex_float(0x10e4020, 24, -7).mul_add(b, hex_float(0x1573e2e, 24, -5));
    let low = hex_float(0x1555e66, 24, -3).mul_add(b, hex_float(0x1fffdb6, 24, -2));
    let one_term = hex_float(0x1ffffec, 24, -1).mul_add(b, 1.0);
    let j = inner.mul_add(u, low).mul_add(u, one_term);
    // _mm512_scalef_ps(j, n) = j * 2^n, exact for n in the normal range checked above.
    j * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// RoPE cos/sin for `n_positions` consecutive positions from `start`, `[n, pairs]`, as
/// `ggml_rope_cache_init`: theta starts at the position and is multiplied by
/// `powf(base, -2/dims)` once per pair (in f32), then cosf/sinf. Per-pair frequency factors
/// (Llama 3's `rope_freqs`) divide theta as in ggml.
pub(crate) fn rope_tables(
    start: usize,
    n_positions: usize,
    freq_base: f32,
    head_dim: usize,
    factors: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let pairs = head_dim / 2;
    let theta_scale = freq_base.powf(-2.0 / head_dim as f32);
    let mut cos = Vec::with_capacity(n_positions * pairs);
    let mut sin = Vec::with_capacity(n_positions * pairs);
    for position in start..start + n_positions {
        let mut theta = position as f32;
        for pair in 0..pairs {
            let factor = factors.and_then(|f| f.get(pair)).copied().unwrap_or(1.0);
            let angle = theta / factor;
            cos.push(angle.cos());
            sin.push(angle.sin());
            theta *= theta_scale;
        }
    }
    (cos, sin)
}

/// Rotates interleaved pairs (2i, 2i+1) of `values` (`[heads, n_positions, head_dim]`) in place,
/// as ggml's `rope_f32` in NORM mode compiled with FMA contraction: the first product of each
/// expression is fused.
pub(crate) fn rope_apply(values: &mut [f32], n_positions: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let pairs = head_dim / 2;
    for (row_idx, row) in values.chunks_exact_mut(head_dim).enumerate() {
        let position = row_idx % n_positions;
        let (cos, sin) = (&cos[position * pairs..][..pairs], &sin[position * pairs..][..pairs]);
        for pair in 0..pairs {
            let (x0, x1) = (row[2 * pair], row[2 * pair + 1]);
            row[2 * pair] = x0.mul_add(cos[pair], -(x1 * sin[pair]));
            row[2 * pair + 1] = x0.mul_add(sin[pair], x1 * cos[pair]);
        }
    }
}

/// `ggml_vec_dot_f16` with AVX-512: 4 accumulators of 16 lanes over blocks of 64, reduced
/// pairwise, then `_mm512_reduce_add_ps`; a tail beyond a multiple of 64 is added in f64.
pub(crate) fn dot_f16(query: &[f32], key: &[f16]) -> f32 {
    let full = query.len() / 64 * 64;
    let mut accumulators = [[0f32; 16]; 4];
    for start in (0..full).step_by(64) {
        for (j, accumulator) in accumulators.iter_mut().enumerate() {
            for (lane, slot) in accumulator.iter_mut().enumerate() {
                let e = start + 16 * j + lane;
                *slot = query[e].mul_add(key[e].to_f32(), *slot);
            }
        }
    }
    let mut lanes = [0f32; 16];
    for (lane, slot) in lanes.iter_mut().enumerate() {
        *slot = (accumulators[0][lane] + accumulators[2][lane]) + (accumulators[1][lane] + accumulators[3][lane]);
    }
    let mut sum = f64::from(reduce_add_16(&lanes));
    for e in full..query.len() {
        sum += f64::from(query[e] * key[e].to_f32());
    }
    sum as f32
}

/// GCC's `_mm512_reduce_add_ps`: halves added 256, 128, then 64 bits at a time.
fn reduce_add_16(lanes: &[f32; 16]) -> f32 {
    let mut eight = [0f32; 8];
    for i in 0..8 {
        eight[i] = lanes[i + 8] + lanes[i];
    }
    let mut four = [0f32; 4];
    for i in 0..4 {
        four[i] = eight[i + 4] + eight[i];
    }
    (four[0] + four[2]) + (four[1] + four[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_expf_is_within_two_ulp_of_the_c_library() {
        let mut x = -80.0f32;
        while x < 80.0 {
            let ours = expf(x);
            let reference = x.exp();
            let ulp = (reference.to_bits() as i64 - ours.to_bits() as i64).abs();
            assert!(ulp <= 2, "expf({x}) = {ours}, libm {reference}");
            x += 0.37;
        }
    }

    #[test]
    fn rms_norm_matches_the_definition() {
        let mut values = vec![3.0f32, 4.0];
        rms_norm_mul(&mut values, 2, &[1.0, 2.0], 0.0);
        // rms = sqrt((9 + 16) / 2) = 3.5355...
        assert!((values[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
        assert!((values[1] - 8.0 / 12.5f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_pairs_by_position_times_frequency() {
        let (cos, sin) = rope_tables(3, 1, 10_000.0, 4, None);
        // Pair 0 turns by 3 rad, pair 1 by 3 * 10000^(-1/2).
        assert!((cos[0] - 3f32.cos()).abs() < 1e-6 && (sin[1] - (0.03f32).sin()).abs() < 1e-6);
        let mut values = vec![1.0f32, 0.0, 0.0, 1.0];
        rope_apply(&mut values, 1, 4, &cos, &sin);
        assert!((values[0] - 3f32.cos()).abs() < 1e-6 && (values[1] - 3f32.sin()).abs() < 1e-6);
        assert!((values[2] + 0.03f32.sin()).abs() < 1e-6 && (values[3] - 0.03f32.cos()).abs() < 1e-6);
    }

    #[test]
    fn f16_dot_product_is_a_dot_product() {
        let query: Vec<f32> = (0..130).map(|i| (i as f32 * 0.1).sin()).collect();
        let key: Vec<f16> = (0..130).map(|i| f16::from_f32((i as f32 * 0.07).cos())).collect();
        let expected: f64 = query.iter().zip(&key).map(|(&q, &k)| f64::from(q) * f64::from(k.to_f32())).sum();
        assert!((f64::from(dot_f16(&query, &key)) - expected).abs() < 1e-4);
    }
}
