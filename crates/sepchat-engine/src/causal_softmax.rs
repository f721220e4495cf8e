//! The softmax of the batched (prompt-chunk) attention path on the CPU, fused: scale, causal mask and
//! softmax in one pass over the score matrix, with an eight-lane exponential.
//!
//! Why: for a chunk of n new tokens over a cache of k slots the score matrix has n x k entries per query
//! head. Scaling it, adding a mask tensor and running candle's softmax (a scalar `expf` per entry) were
//! four passes over tens of megabytes per layer and one libm call per entry, which made the prompt of a
//! turn slower the longer the conversation's cache. This pass reads each score once, never touches the
//! masked ones, and writes the weights.
//!
//! Not bit-identical to anything: llama.cpp's tiled path uses its own vector exponential too. The
//! one-token decode path (`attention.rs`) is the one that reproduces llama.cpp exactly.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

/// `softmax(scale * scores)` over each row's visible keys, zero after them. The scores are
/// `[groups, rows, n_keys]` with `rows = heads_per_group * n_new`: row r is query row `r % n_new` of the
/// chunk, which sees the `n_keys - n_new` held slots and chunk tokens `0..=r % n_new`.
pub(crate) struct CausalSoftmax {
    pub n_new: usize,
    pub scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "sepchat-causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = layout.shape().clone();
        let n_keys = *shape.dims().last().ok_or_else(|| candle_core::Error::Msg("scores have no dimensions".into()))?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(candle_core::Error::Msg("causal softmax expects contiguous scores".into()));
        };
        let CpuStorage::F32(all) = storage else {
            return Err(candle_core::Error::Msg("causal softmax expects f32 scores".into()));
        };
        if self.n_new == 0 || self.n_new > n_keys || n_keys == 0 {
            return Err(candle_core::Error::Msg(format!(
                "causal softmax: {} new tokens over {n_keys} keys",
                self.n_new
            )));
        }
        let scores = &all[start..end];
        let n_held = n_keys - self.n_new;
        let mut weights = vec![0f32; scores.len()];
        weights.par_chunks_mut(n_keys).zip(scores.par_chunks(n_keys)).enumerate().for_each(|(row, (out, input))| {
            let visible = n_held + row % self.n_new + 1;
            softmax_row(&input[..visible], self.scale, &mut out[..visible]);
        });
        Ok((CpuStorage::F32(weights), shape))
    }
}

/// `out = softmax(scale * input)`; `scale` must be positive (it is 1/sqrt(head_dim)).
fn softmax_row(input: &[f32], scale: f32, out: &mut [f32]) {
    let max = input.iter().copied().fold(f32::NEG_INFINITY, f32::max) * scale;
    #[cfg(target_arch = "x86_64")]
    let sum = if x86::supported() {
        // SAFETY: `supported` checked AVX2 and FMA.
        unsafe { x86::exp_shifted(input, scale, max, out) }
    } else {
        exp_shifted_portable(input, scale, max, out)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let sum = exp_shifted_portable(input, scale, max, out);
    let inverse = 1.0 / sum;
    for weight in out.iter_mut() {
        *weight *= inverse;
    }
}

/// `out[i] = exp(scale * input[i] - max)`, returning the sum.
fn exp_shifted_portable(input: &[f32], scale: f32, max: f32, out: &mut [f32]) -> f32 {
    let mut sum = 0f32;
    for (o, &x) in out.iter_mut().zip(input) {
        *o = x.mul_add(scale, -max).exp();
        sum += *o;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The exponential of Cephes' `expf` (as in the widely used `avx_mathfun`): range reduction by
    //! ln 2 in two parts, a degree-5 polynomial, the power of two built in the exponent bits. Within
    //! 2 ulp of libm's for arguments in [-87, 0], which is where a softmax's shifted scores lie.

    use std::arch::x86_64::*;

    pub(super) fn supported() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        // Below this the result is under f32's smallest normal; clamping keeps the exponent valid.
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.336_54));
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.0));
        // n = round(x / ln 2); r = x - n ln 2 (ln 2 split so n * high is exact).
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.166_666_65));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        let r2 = _mm256_mul_ps(r, r);
        let p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // 2^n through the exponent field; n is within [-126, 128) after the clamp.
        let exponent = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(exponent))
    }

    /// `out[i] = exp(scale * input[i] - max)`, returning the sum (eight lanes, then the tail in scalar).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted(input: &[f32], scale: f32, max: f32, out: &mut [f32]) -> f32 {
        let len = input.len().min(out.len());
        let scale8 = _mm256_set1_ps(scale);
        let minus_max = _mm256_set1_ps(-max);
        let mut sum8 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= len {
            let x = _mm256_loadu_ps(input[i..i + 8].as_ptr());
            let e = exp8(_mm256_fmadd_ps(x, scale8, minus_max));
            _mm256_storeu_ps(out[i..i + 8].as_mut_ptr(), e);
            sum8 = _mm256_add_ps(sum8, e);
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum8);
        let mut sum: f32 = lanes.iter().sum();
        sum += super::exp_shifted_portable(&input[i..len], scale, max, &mut out[i..len]);
        sum
    }

    #[cfg(test)]
    pub(super) fn exp_lanes(values: [f32; 8]) -> [f32; 8] {
        let mut out = [0f32; 8];
        // SAFETY: only called after `supported`.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_loadu_ps(values.as_ptr()))) };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_exponential_is_within_two_ulp_of_libm_where_softmax_uses_it() {
        if !x86::supported() {
            return;
        }
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let values = std::array::from_fn(|lane| x + lane as f32 * 1e-3);
            let got = x86::exp_lanes(values);
            for (value, e) in values.iter().zip(got) {
                let want = value.exp();
                worst = worst.max(want.to_bits().abs_diff(e.to_bits()));
            }
            x += 0.0137;
        }
        assert!(worst <= 2, "{worst} ulp");
        // Far below the range: zero or a tiny normal, never garbage.
        let tiny = x86::exp_lanes([-1000.0, -200.0, -100.0, -88.0, -87.5, f32::MIN, -90.0, -0.0]);
        assert!(tiny[..7].iter().all(|&e| (0.0..1e-37).contains(&e)), "{tiny:?}");
        assert_eq!(tiny[7], 1.0);
    }

    /// The fused op against scale, mask and candle's softmax, on a chunk with held slots.
    #[test]
    fn fused_causal_softmax_matches_scale_mask_and_softmax() {
        let (groups, heads_per_group, n_new, n_held) = (2usize, 3usize, 5usize, 11usize);
        let n_keys = n_held + n_new;
        let count = groups * heads_per_group * n_new * n_keys;
        let values: Vec<f32> = (0..count).map(|i| ((i * 7919 % 1000) as f32 / 100.0) - 5.0).collect();
        let scores = Tensor::from_vec(values, (groups, heads_per_group * n_new, n_keys), &Device::Cpu).unwrap();
        let scale = 0.125f32;
        let fused = scores.apply_op1_no_bwd(&CausalSoftmax { n_new, scale }).unwrap();

        let mut mask = vec![0f32; n_new * n_keys];
        for row in 0..n_new {
            for column in (n_held + row + 1)..n_keys {
                mask[row * n_keys + column] = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(mask, (n_new, n_keys), &Device::Cpu).unwrap();
        let masked = (scores * scale as f64)
            .unwrap()
            .reshape((groups, heads_per_group, n_new, n_keys))
            .unwrap()
            .broadcast_add(&mask)
            .unwrap()
            .reshape((groups, heads_per_group * n_new, n_keys))
            .unwrap();
        let reference = candle_nn::ops::softmax_last_dim(&masked).unwrap();

        let fused = fused.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let reference = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, (f, r)) in fused.iter().zip(&reference).enumerate() {
            assert!((f - r).abs() <= 1e-6 + 1e-5 * r.abs(), "entry {i}: fused {f}, reference {r}");
            if *r == 0.0 {
                assert_eq!(*f, 0.0, "entry {i} is masked");
            }
        }
    }
}
