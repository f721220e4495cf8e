//! Attention over the f16 KV cache, computed the way llama.cpp's CPU flash-attention kernel
//! computes it.
//!
//! Why our own kernel: llama.cpp stores keys and values in f16, rounds the query to f16, and
//! accumulates the softmax-weighted values in f16 with an online softmax. Those roundings move
//! logits by a few hundredths, enough to flip a greedy choice between two near-equal tokens.
//! Matching llama.cpp's arithmetic makes its greedy outputs and perplexities a usable golden.
//! The kernel also never materialises the score matrix or repeated K/V heads, and reads the
//! cache in place (no copy per step), which is what a long conversation needs.

use candle_core::{DType, Device, Storage, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::error::{EngineError, Result};

/// Causal attention for `queries` (`[n_head, n_new, head_dim]`, f32, rotated) against the cache
/// views `keys` and `values` (`[n_kv_head, n_held + n_new, head_dim]`, f16). Query `i` of the
/// chunk sees every held slot and chunk tokens `0..=i`. Returns `[n_new, n_head * head_dim]`.
pub(crate) fn cpu_flash_attention(queries: &Tensor, keys: &Tensor, values: &Tensor, scale: f32) -> Result<Tensor> {
    let (n_head, n_new, head_dim) = queries.dims3()?;
    let (n_kv_head, n_keys, _) = keys.dims3()?;
    let n_held = n_keys - n_new;
    let heads_per_kv = n_head / n_kv_head;
    let queries = queries.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let key_rows = CacheRows::new(keys)?;
    let value_rows = CacheRows::new(values)?;
    let key_guard = keys.storage_and_layout().0;
    let value_guard = values.storage_and_layout().0;
    let key_data = f16_slice(&key_guard)?;
    let value_data = f16_slice(&value_guard)?;

    // One task per (head, query row); each writes its own head_dim outputs.
    let mut output = vec![0f32; n_new * n_head * head_dim];
    output.par_chunks_mut(head_dim).enumerate().for_each(|(task, out)| {
        let row = task / n_head;
        let head = task % n_head;
        let kv_head = head / heads_per_kv;
        let query = &queries[(head * n_new + row) * head_dim..][..head_dim];
        let visible = n_held + row + 1;
        attend_one(query, kv_head, visible, &key_rows, key_data, &value_rows, value_data, scale, out);
    });
    Ok(Tensor::from_vec(output, (n_new, n_head * head_dim), &Device::Cpu)?)
}

/// Where row `slot` of head `kv_head` starts in a cache view's storage.
#[derive(Clone, Copy)]
struct CacheRows {
    offset: usize,
    head_stride: usize,
    slot_stride: usize,
}

impl CacheRows {
    fn new(view: &Tensor) -> Result<Self> {
        let layout = view.layout();
        let stride = layout.stride();
        if view.dtype() != DType::F16 || stride.len() != 3 || stride[2] != 1 {
            return Err(EngineError::Candle(candle_core::Error::Msg(format!(
                "attention expects an f16 cache view with contiguous rows, got {:?} strides {stride:?}",
                view.dtype()
            ))));
        }
        Ok(Self { offset: layout.start_offset(), head_stride: stride[0], slot_stride: stride[1] })
    }

    fn start(&self, kv_head: usize, slot: usize) -> usize {
        self.offset + kv_head * self.head_stride + slot * self.slot_stride
    }
}

fn f16_slice(storage: &Storage) -> Result<&[f16]> {
    match storage {
        Storage::Cpu(cpu) => Ok(cpu.as_slice::<f16>()?),
        _ => Err(EngineError::Candle(candle_core::Error::Msg("cpu attention called on a device tensor".to_string()))),
    }
}

/// llama.cpp's `flash_attn_ext_f16_one_chunk` for one query row: f16 query, f32 dot products,
/// online softmax in f32, values accumulated in f16. Runs the AVX2/F16C kernel when the CPU has
/// it (bit-identical to the portable one, which a test checks), since at long contexts this loop
/// is most of a decode step.
#[allow(clippy::too_many_arguments)]
fn attend_one(
    query: &[f32],
    kv_head: usize,
    visible: usize,
    key_rows: &CacheRows,
    key_data: &[f16],
    value_rows: &CacheRows,
    value_data: &[f16],
    scale: f32,
    out: &mut [f32],
) {
    let rows = Rows { key_rows, key_data, value_rows, value_data, kv_head, visible };
    #[cfg(target_arch = "x86_64")]
    if x86::supported(query.len()) {
        // SAFETY: `supported` checked the CPU features and the head size; the kernel reads only
        // rows `0..visible` of `kv_head`, which `Rows::key`/`Rows::value` bound-check.
        unsafe { x86::attend_one(query, &rows, scale, out) };
        return;
    }
    attend_one_portable(query, &rows, scale, out);
}

/// The cache rows one query row attends to.
struct Rows<'a> {
    key_rows: &'a CacheRows,
    key_data: &'a [f16],
    value_rows: &'a CacheRows,
    value_data: &'a [f16],
    kv_head: usize,
    visible: usize,
}

impl Rows<'_> {
    fn key(&self, slot: usize, head_dim: usize) -> &[f16] {
        &self.key_data[self.key_rows.start(self.kv_head, slot)..][..head_dim]
    }

    fn value(&self, slot: usize, head_dim: usize) -> &[f16] {
        &self.value_data[self.value_rows.start(self.kv_head, slot)..][..head_dim]
    }
}

fn attend_one_portable(query: &[f32], rows: &Rows<'_>, scale: f32, out: &mut [f32]) {
    let head_dim = query.len();
    let query: Vec<f32> = query.iter().map(|&q| f16::from_f32(q).to_f32()).collect();
    let mut accumulated = vec![f16::ZERO; head_dim];
    let mut running_max = f32::NEG_INFINITY;
    let mut running_sum = 0f32;
    for slot in 0..rows.visible {
        let key = rows.key(slot, head_dim);
        let value = rows.value(slot, head_dim);
        let score = crate::ggml_exact::dot_f16(&query, key) * scale;
        let mut max_scale = 1f32;
        let mut weight = 1f32;
        if score > running_max {
            let previous = running_max;
            running_max = score;
            max_scale = (previous - running_max).exp();
            for acc in accumulated.iter_mut() {
                *acc = f16::from_f32(acc.to_f32() * max_scale);
            }
        } else {
            weight = (score - running_max).exp();
        }
        for (acc, &v) in accumulated.iter_mut().zip(value) {
            *acc = f16::from_f32(v.to_f32().mul_add(weight, acc.to_f32()));
        }
        // `S = S*ms + vs` in ggml, contracted to one fused multiply-add by the compiler.
        running_sum = running_sum.mul_add(max_scale, weight);
    }
    let inverse_sum = if running_sum == 0.0 { 0.0 } else { 1.0 / running_sum };
    for (out, acc) in out.iter_mut().zip(&accumulated) {
        *out = acc.to_f32() * inverse_sum;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The row kernel with AVX2, FMA and F16C: the same roundings in the same order as the
    //! portable kernel (and ggml), eight lanes at a time.

    use std::arch::x86_64::*;

    use half::f16;

    use super::Rows;

    /// Head sizes the kernel handles: whole 64-element blocks of ggml's f16 dot product, and
    /// at most `MAX_HEAD_DIM` accumulator lanes kept in registers or on the stack.
    const MAX_HEAD_DIM: usize = 256;

    /// Slots per block of the row kernel's passes (scores, exponentials, values).
    const BLOCK: usize = 32;

    pub(super) fn supported(head_dim: usize) -> bool {
        head_dim > 0
            && head_dim.is_multiple_of(64)
            && head_dim <= MAX_HEAD_DIM
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }

    /// Rounds each lane to f16 and back: the accumulator's precision in ggml.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn round_to_f16(x: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
    }

    /// Eight f16 values widened to f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f16(values: &[f16]) -> __m256 {
        debug_assert!(values.len() >= 8);
        _mm256_cvtph_ps(_mm_loadu_si128(values.as_ptr().cast()))
    }

    /// `ggml_vec_dot_f16` in ggml's AVX-512 order (see `ggml_exact::dot_f16`): per 64-element
    /// block, four 16-lane accumulators, each 16 lanes held as two 8-lane halves.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f16(query: &[f32], key: &[f16]) -> f32 {
        let head_dim = query.len();
        let zero = _mm256_setzero_ps();
        let mut low = [zero; 4];
        let mut high = [zero; 4];
        for start in (0..head_dim).step_by(64) {
            for j in 0..4 {
                let e = start + 16 * j;
                let q_low = _mm256_loadu_ps(query[e..e + 8].as_ptr());
                let q_high = _mm256_loadu_ps(query[e + 8..e + 16].as_ptr());
                low[j] = _mm256_fmadd_ps(q_low, load_f16(&key[e..e + 8]), low[j]);
                high[j] = _mm256_fmadd_ps(q_high, load_f16(&key[e + 8..e + 16]), high[j]);
            }
        }
        // lanes = (acc0 + acc2) + (acc1 + acc3), then _mm512_reduce_add_ps: lanes 8..16 + 0..8,
        // then the upper four + the lower four, then (0 + 2) + (1 + 3).
        let lanes_low = _mm256_add_ps(_mm256_add_ps(low[0], low[2]), _mm256_add_ps(low[1], low[3]));
        let lanes_high = _mm256_add_ps(_mm256_add_ps(high[0], high[2]), _mm256_add_ps(high[1], high[3]));
        let eight = _mm256_add_ps(lanes_high, lanes_low);
        let four = _mm_add_ps(_mm256_extractf128_ps::<1>(eight), _mm256_castps256_ps128(eight));
        let mut f = [0f32; 4];
        _mm_storeu_ps(f.as_mut_ptr(), four);
        (f[0] + f[2]) + (f[1] + f[3])
    }

    /// `out[i] = exp(x[i])` exactly as the C library's `expf` computes it, eight at a time where
    /// the vector version applies, so the kernel stays bit-identical to the portable one (and to
    /// llama.cpp, which calls `expf`).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn exp_block(x: &[f32], out: &mut [f32]) {
        let mut start = 0;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        while start + 8 <= x.len() {
            let lanes = &x[start..start + 8];
            match super::glibc_expf::exp8(lanes) {
                Some(e) => out[start..start + 8].copy_from_slice(&e),
                None => {
                    for (o, &v) in out[start..start + 8].iter_mut().zip(lanes) {
                        *o = v.exp();
                    }
                }
            }
            start += 8;
        }
        for (o, &v) in out[start..].iter_mut().zip(&x[start..]) {
            *o = v.exp();
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend_one(query: &[f32], rows: &Rows<'_>, scale: f32, out: &mut [f32]) {
        let head_dim = query.len();
        let groups = head_dim / 8;
        let mut rounded_query = [0f32; MAX_HEAD_DIM];
        for (rounded, &q) in rounded_query.iter_mut().zip(query) {
            *rounded = f16::from_f32(q).to_f32();
        }
        let rounded_query = &rounded_query[..head_dim];
        let mut accumulated = [_mm256_setzero_ps(); MAX_HEAD_DIM / 8];
        let accumulated = &mut accumulated[..groups];
        let mut running_max = f32::NEG_INFINITY;
        let mut running_sum = 0f32;
        // The same operations in the same order as the portable kernel, regrouped in blocks of
        // slots: first the block's dot products, then its exponentials (they depend on each other
        // only through the running maximum), then the value accumulation. Each pass is a run of
        // independent work the CPU can overlap; slot by slot, every slot waited for the previous
        // slot's exponential and f16 roundings.
        let mut first = 0;
        while first < rows.visible {
            let count = (rows.visible - first).min(BLOCK);
            let mut scores = [0f32; BLOCK];
            for (offset, score) in scores[..count].iter_mut().enumerate() {
                *score = dot_f16(rounded_query, rows.key(first + offset, head_dim)) * scale;
            }
            // Per slot, the one exponential ggml takes: of (previous max - new max) where the
            // maximum rose (the rescale factor; the slot's weight is then 1), else of (score - max).
            let mut rose = [false; BLOCK];
            let mut exponents = [0f32; BLOCK];
            for ((&score, rose), exponent) in scores[..count].iter().zip(rose.iter_mut()).zip(exponents.iter_mut()) {
                if score > running_max {
                    *exponent = running_max - score;
                    *rose = true;
                    running_max = score;
                } else {
                    *exponent = score - running_max;
                }
            }
            let mut exps = [0f32; BLOCK];
            exp_block(&exponents[..count], &mut exps[..count]);
            for (offset, (&rose, &e)) in rose[..count].iter().zip(&exps[..count]).enumerate() {
                let (max_scale, weight) = if rose { (e, 1f32) } else { (1f32, e) };
                if rose {
                    let factor = _mm256_set1_ps(max_scale);
                    for acc in accumulated.iter_mut() {
                        *acc = round_to_f16(_mm256_mul_ps(*acc, factor));
                    }
                }
                let value = rows.value(first + offset, head_dim);
                let factor = _mm256_set1_ps(weight);
                for (group, acc) in accumulated.iter_mut().enumerate() {
                    let v = load_f16(&value[group * 8..group * 8 + 8]);
                    *acc = round_to_f16(_mm256_fmadd_ps(v, factor, *acc));
                }
                running_sum = running_sum.mul_add(max_scale, weight);
            }
            first += count;
        }
        let inverse_sum = _mm256_set1_ps(if running_sum == 0.0 { 0.0 } else { 1.0 / running_sum });
        for (group, acc) in accumulated.iter().enumerate() {
            _mm256_storeu_ps(out[group * 8..group * 8 + 8].as_mut_ptr(), _mm256_mul_ps(*acc, inverse_sum));
        }
    }
}

/// glibc's `expf` (sysdeps/ieee754/flt-32/e_expf.c, as built with FMA), four lanes of double at a
/// time: x/ln2 scaled by 32 split into an integer k and r, 2^(k/32) from a 32-entry table with k's
/// high bits added to the exponent, a degree-3 polynomial in r. Only for arguments where glibc takes
/// this path and the result is normal (-87.9 <= x <= 0, the range of a softmax's shifted scores);
/// other lanes are left to the C library. `glibc_expf_matches_the_c_library` checks it bit for bit.
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod glibc_expf {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    const TABLE_BITS: u32 = 5;
    const N: f64 = (1u32 << TABLE_BITS) as f64;
    /// 0x1.71547652b82fep+0 * N (1/ln 2, scaled).
    const INV_LN2_N: f64 = std::f64::consts::LOG2_E * N;
    /// 0x1.8p+52: adding it rounds to an integer held in the low mantissa bits.
    const SHIFT: f64 = 6755399441055744.0;
    /// glibc's `__exp2f_data.poly_scaled`: 0x1.c6af84b912394p-5/N^3, 0x1.ebfce50fac4f3p-3/N^2,
    /// 0x1.62e42ff0c52d6p-1/N, built from the bits of the unscaled coefficients (exact divisions).
    const POLY: [f64; 3] = [
        f64::from_bits(0x3FAC_6AF8_4B91_2394) / (N * N * N),
        f64::from_bits(0x3FCE_BFCE_50FA_C4F3) / (N * N),
        f64::from_bits(0x3FE6_2E42_FF0C_52D6) / N,
    ];

    /// `__exp2f_data.tab`: the bits of 2^(i/32) less i << 47 (the exponent part k adds back).
    fn table() -> &'static [u64; 32] {
        static TABLE: OnceLock<[u64; 32]> = OnceLock::new();
        TABLE.get_or_init(|| {
            std::array::from_fn(|i| {
                let value = exp2_correctly_rounded(i as u32);
                value.to_bits().wrapping_sub((i as u64) << (52 - TABLE_BITS))
            })
        })
    }

    /// 2^(i/32) as a double. glibc's table holds the correctly rounded values, which `f64::exp2`
    /// gives for these 32 arguments; an entry one ulp off would change results for some inputs of
    /// its index, which `glibc_expf_matches_the_c_library` (11 million inputs) would catch.
    fn exp2_correctly_rounded(i: u32) -> f64 {
        (f64::from(i) / N).exp2()
    }

    pub(super) fn lane_in_range(x: f32) -> bool {
        (-87.9..=0.0).contains(&x)
    }

    /// `Some` when every lane is in range (see the module comment), else `None`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp8(x: &[f32]) -> Option<[f32; 8]> {
        if x.len() < 8 || !x[..8].iter().all(|&v| lane_in_range(v)) {
            return None;
        }
        let table = table();
        let [c0, c1, c2] = POLY;
        let mut out = [0f32; 8];
        for half in 0..2 {
            let xd = _mm256_cvtps_pd(_mm_loadu_ps(x[half * 4..half * 4 + 4].as_ptr()));
            let z = _mm256_mul_pd(_mm256_set1_pd(INV_LN2_N), xd);
            let shifted = _mm256_add_pd(z, _mm256_set1_pd(SHIFT));
            let ki = _mm256_castpd_si256(shifted);
            let kd = _mm256_sub_pd(shifted, _mm256_set1_pd(SHIFT));
            let r = _mm256_sub_pd(z, kd);
            let index = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
            let entry = _mm256_i64gather_epi64::<8>(table.as_ptr().cast(), index);
            let s = _mm256_castsi256_pd(_mm256_add_epi64(entry, _mm256_slli_epi64::<{ 52 - TABLE_BITS as i32 }>(ki)));
            let zz = _mm256_fmadd_pd(_mm256_set1_pd(c0), r, _mm256_set1_pd(c1));
            let r2 = _mm256_mul_pd(r, r);
            let y = _mm256_fmadd_pd(_mm256_set1_pd(c2), r, _mm256_set1_pd(1.0));
            let y = _mm256_fmadd_pd(zz, r2, y);
            let y = _mm256_mul_pd(y, s);
            _mm_storeu_ps(out[half * 4..half * 4 + 4].as_mut_ptr(), _mm256_cvtpd_ps(y));
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pseudo-random cache with a wide range of scores, so the online softmax rescales often.
    fn cache_values(n: usize, seed: u32) -> Vec<f16> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                f16::from_f32(((state >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 6.0)
            })
            .collect()
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_expf_matches_the_c_library() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            return;
        }
        // Every 97th f32 from -0 down to -87.9 (about 11 million values), eight at a time.
        let mut bits = (-0.0f32).to_bits();
        let mut mismatches = Vec::new();
        loop {
            let lanes: [f32; 8] = std::array::from_fn(|lane| f32::from_bits(bits + 97 * lane as u32));
            if !lanes.iter().all(|&x| glibc_expf::lane_in_range(x)) {
                break;
            }
            // SAFETY: the features were checked above.
            let got = unsafe { glibc_expf::exp8(&lanes) }.expect("in range");
            for (x, e) in lanes.iter().zip(got) {
                if e.to_bits() != x.exp().to_bits() && mismatches.len() < 5 {
                    mismatches.push((*x, e, x.exp()));
                }
            }
            bits += 97 * 8;
        }
        assert!(mismatches.is_empty(), "x, ours, libm: {mismatches:?}");
        // SAFETY: as above.
        assert!(unsafe { glibc_expf::exp8(&[0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -88.5]) }.is_none());
    }

    #[test]
    fn simd_and_portable_row_kernels_agree_to_the_bit() {
        for head_dim in [64usize, 128] {
            let slots = 300;
            let keys = cache_values(slots * head_dim, 1);
            let values = cache_values(slots * head_dim, 2);
            let layout = CacheRows { offset: 0, head_stride: slots * head_dim, slot_stride: head_dim };
            let query: Vec<f32> = cache_values(head_dim, 3).iter().map(|q| q.to_f32() * 1.37).collect();
            for visible in [1usize, 2, 17, 32, 33, 65, 300] {
                let rows = Rows {
                    key_rows: &layout,
                    key_data: &keys,
                    value_rows: &layout,
                    value_data: &values,
                    kv_head: 0,
                    visible,
                };
                let mut portable = vec![0f32; head_dim];
                attend_one_portable(&query, &rows, 0.125, &mut portable);
                let mut dispatched = vec![0f32; head_dim];
                attend_one(&query, 0, visible, &layout, &keys, &layout, &values, 0.125, &mut dispatched);
                let portable_bits: Vec<u32> = portable.iter().map(|x| x.to_bits()).collect();
                let dispatched_bits: Vec<u32> = dispatched.iter().map(|x| x.to_bits()).collect();
                assert_eq!(portable_bits, dispatched_bits, "head_dim {head_dim}, {visible} slots");
            }
        }
    }
}
