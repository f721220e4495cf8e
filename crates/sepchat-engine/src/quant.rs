//! Quantized matrix-vector products for Q4_1 and Q8_0 weights, computed exactly as ggml's x86
//! kernels compute them.
//!
//! Why not candle's `QMatMul` for these two types: candle 0.11 has no SIMD kernel for Q4_1 (the
//! default model's type), and its activation quantization rounds differently from ggml's
//! (1/d instead of 127/amax, ties away from zero instead of to even, the block sum in f16).
//! Those differences move logits by a few hundredths, which flips greedy choices between
//! near-equal tokens and makes llama.cpp's outputs unusable as a golden. Here every step follows
//! ggml (`quantize_row_q8_1`, `ggml_vec_dot_q4_1_q8_1`, `ggml_vec_dot_q8_0_q8_0` for AVX2):
//! the same 8 float lanes of 4-element integer sums, the same fused multiply-adds, the same
//! horizontal sum. The AVX2 path and the portable path give bit-identical results (tested).
//! Other quantization types still go through candle.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::error::{EngineError, Result};

/// Elements per quantization block (Q4_1, Q8_0, Q8_1 all use 32).
const BLOCK: usize = 32;
/// Bytes per Q4_1 block: f16 scale, f16 minimum, 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;
/// Bytes per Q8_0 block: f16 scale, 32 signed bytes.
const Q8_0_BYTES: usize = 34;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightType {
    Q4_1,
    Q8_0,
}

impl WeightType {
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => Q4_1_BYTES,
            Self::Q8_0 => Q8_0_BYTES,
        }
    }
}

/// A weight matrix `[n_out, k]` in its GGUF block layout, one row after the other.
pub(crate) struct QuantMatrix {
    weight_type: WeightType,
    n_out: usize,
    k: usize,
    bytes: Vec<u8>,
}

/// A linear layer: our ggml-exact kernel where we have one, candle's otherwise.
pub(crate) enum Linear {
    Exact(Arc<QuantMatrix>),
    Candle(QMatMul),
}

impl Linear {
    /// Takes over `tensor` (`[n_out, k]` in candle's order).
    pub(crate) fn new(tensor: QTensor, device: &Device) -> Result<Self> {
        match QuantMatrix::from_qtensor(&tensor, device)? {
            Some(matrix) => Ok(Self::Exact(Arc::new(matrix))),
            None => Ok(Self::Candle(QMatMul::from_qtensor(tensor)?)),
        }
    }

    /// `input` is `[m, k]` f32; returns `[m, n_out]`.
    pub(crate) fn forward(&self, input: &Tensor) -> Result<Tensor> {
        match self {
            Self::Exact(matrix) => matrix.forward(input),
            Self::Candle(matmul) => Ok(matmul.forward(input)?),
        }
    }
}

/// The token embedding table, which is also the output projection when the model ties them.
pub(crate) enum EmbeddingTable {
    Exact(Arc<QuantMatrix>),
    Candle(Arc<QTensor>),
}

impl EmbeddingTable {
    pub(crate) fn new(tensor: QTensor, device: &Device) -> Result<Self> {
        match QuantMatrix::from_qtensor(&tensor, device)? {
            Some(matrix) => Ok(Self::Exact(Arc::new(matrix))),
            None => Ok(Self::Candle(Arc::new(tensor))),
        }
    }

    /// Rows of `ids` as f32, `[ids.len(), embedding_length]`.
    pub(crate) fn lookup(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Self::Exact(matrix) => matrix.dequantize_rows(ids),
            Self::Candle(tensor) => Ok(tensor.embedding(&Tensor::new(ids, device)?)?),
        }
    }

    /// Number of rows (the vocabulary size).
    pub(crate) fn rows(&self) -> Result<usize> {
        match self {
            Self::Exact(matrix) => Ok(matrix.n_out),
            Self::Candle(tensor) => Ok(tensor.shape().dims2()?.0),
        }
    }

    /// The same matrix as an output projection (tied embeddings).
    pub(crate) fn as_linear(&self) -> Result<Linear> {
        match self {
            Self::Exact(matrix) => Ok(Linear::Exact(matrix.clone())),
            Self::Candle(tensor) => Ok(Linear::Candle(QMatMul::from_arc(tensor.clone())?)),
        }
    }
}

impl QuantMatrix {
    /// `Some` for Q4_1 and Q8_0 matrices on the CPU whose rows are whole blocks.
    pub(crate) fn from_qtensor(tensor: &QTensor, device: &Device) -> Result<Option<Self>> {
        let weight_type = match tensor.dtype() {
            GgmlDType::Q4_1 => WeightType::Q4_1,
            GgmlDType::Q8_0 => WeightType::Q8_0,
            _ => return Ok(None),
        };
        let Ok((n_out, k)) = tensor.shape().dims2() else { return Ok(None) };
        if !device.is_cpu() || k % BLOCK != 0 {
            return Ok(None);
        }
        let bytes = tensor.data()?.into_owned();
        if bytes.len() != n_out * (k / BLOCK) * weight_type.block_bytes() {
            return Err(EngineError::Candle(candle_core::Error::Msg(format!(
                "quantized matrix [{n_out}, {k}] has {} bytes, expected {}",
                bytes.len(),
                n_out * (k / BLOCK) * weight_type.block_bytes()
            ))));
        }
        Ok(Some(Self { weight_type, n_out, k, bytes }))
    }

    fn row(&self, index: usize) -> &[u8] {
        let row_bytes = (self.k / BLOCK) * self.weight_type.block_bytes();
        &self.bytes[index * row_bytes..(index + 1) * row_bytes]
    }

    /// Rows of the matrix as f32 (an embedding lookup), `[ids.len(), k]`.
    pub(crate) fn dequantize_rows(&self, ids: &[u32]) -> Result<Tensor> {
        let mut output = Vec::with_capacity(ids.len() * self.k);
        for &id in ids {
            let id = id as usize;
            if id >= self.n_out {
                return Err(EngineError::TokenOutOfRange { id: id as u32, vocab_size: self.n_out });
            }
            for block in self.row(id).chunks_exact(self.weight_type.block_bytes()) {
                match self.weight_type {
                    WeightType::Q8_0 => {
                        let scale = read_f16(block, 0);
                        output.extend(block[2..].iter().map(|&q| f32::from(q as i8) * scale));
                    }
                    WeightType::Q4_1 => {
                        let (scale, minimum) = (read_f16(block, 0), read_f16(block, 2));
                        let nibbles = &block[4..];
                        output.extend(nibbles.iter().map(|&q| f32::from(q & 0x0F).mul_add(scale, minimum)));
                        output.extend(nibbles.iter().map(|&q| f32::from(q >> 4).mul_add(scale, minimum)));
                    }
                }
            }
        }
        Ok(Tensor::from_vec(output, (ids.len(), self.k), &Device::Cpu)?)
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let (m, k) = input.dims2()?;
        if k != self.k {
            return Err(EngineError::Candle(candle_core::Error::Msg(format!(
                "matmul input has {k} columns, the weights {}",
                self.k
            ))));
        }
        let values = input.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let activations: Vec<QuantizedRow> = values.chunks_exact(k).map(QuantizedRow::new).collect();
        // Output rows are computed in parallel, in chunks big enough to amortise scheduling.
        let n_out = self.n_out;
        let mut transposed = vec![0f32; n_out * m];
        let rows_per_task = 16;
        transposed.par_chunks_mut(rows_per_task * m).enumerate().for_each(|(task, out)| {
            for (offset, out_row) in out.chunks_exact_mut(m).enumerate() {
                let weights = self.row(task * rows_per_task + offset);
                for (slot, activation) in out_row.iter_mut().zip(&activations) {
                    *slot = match self.weight_type {
                        WeightType::Q4_1 => dot_q4_1_q8_1(weights, activation),
                        WeightType::Q8_0 => dot_q8_0_q8_0(weights, activation),
                    };
                }
            }
        });
        let output = if m == 1 {
            transposed
        } else {
            let mut output = vec![0f32; m * n_out];
            for (row, chunk) in transposed.chunks_exact(m).enumerate() {
                for (column, &value) in chunk.iter().enumerate() {
                    output[column * n_out + row] = value;
                }
            }
            output
        };
        Ok(Tensor::from_vec(output, (m, n_out), &Device::Cpu)?)
    }
}

fn read_f16(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// One activation row quantized to 8 bits per block, as ggml's `quantize_row_q8_1` (which is
/// also `quantize_row_q8_0` plus the block sums).
struct QuantizedRow {
    /// Block scale, rounded through f16 as ggml stores it.
    scales: Vec<f32>,
    /// Block scale times the sum of its quants, rounded through f16 (Q8_1's `s`).
    sums: Vec<f32>,
    quants: Vec<i8>,
}

impl QuantizedRow {
    fn new(values: &[f32]) -> Self {
        let n_blocks = values.len() / BLOCK;
        let mut row = Self {
            scales: Vec::with_capacity(n_blocks),
            sums: Vec::with_capacity(n_blocks),
            quants: Vec::with_capacity(values.len()),
        };
        for block in values.chunks_exact(BLOCK) {
            let max_abs = block.iter().fold(0f32, |max, &v| max.max(v.abs()));
            let scale = max_abs / 127.0;
            let inverse = if max_abs != 0.0 { 127.0 / max_abs } else { 0.0 };
            let mut sum = 0i32;
            for &value in block {
                let quant = (value * inverse).round_ties_even() as i32;
                sum += quant;
                row.quants.push(quant as i8);
            }
            row.scales.push(f16::from_f32(scale).to_f32());
            row.sums.push(f16::from_f32(scale * sum as f32).to_f32());
        }
        row
    }
}

/// ggml's `hsum_float_8`: the exact order in which the 8 lanes are added.
fn horizontal_sum(lanes: [f32; 8]) -> f32 {
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}

fn dot_q4_1_q8_1(weights: &[u8], activation: &QuantizedRow) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above); the kernel reads only
        // inside the slices it is given, whose lengths it checks.
        return unsafe { x86::dot_q4_1_q8_1(weights, activation) };
    }
    dot_q4_1_q8_1_portable(weights, activation)
}

fn dot_q8_0_q8_0(weights: &[u8], activation: &QuantizedRow) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: as above.
        return unsafe { x86::dot_q8_0_q8_0(weights, activation) };
    }
    dot_q8_0_q8_0_portable(weights, activation)
}

/// Lane l of a block holds the integer sum over elements 4l..4l+4 (ggml's maddubs + madd).
fn dot_q4_1_q8_1_portable(weights: &[u8], activation: &QuantizedRow) -> f32 {
    let mut lanes = [0f32; 8];
    let mut minimum_sum = 0f32;
    for (block_idx, block) in weights.chunks_exact(Q4_1_BYTES).enumerate() {
        let (scale, minimum) = (read_f16(block, 0), read_f16(block, 2));
        minimum_sum = minimum.mul_add(activation.sums[block_idx], minimum_sum);
        let combined = scale * activation.scales[block_idx];
        let nibbles = &block[4..];
        let quants = &activation.quants[block_idx * BLOCK..][..BLOCK];
        let mut integer_lanes = [0i32; 8];
        for element in 0..16 {
            integer_lanes[element / 4] += i32::from(nibbles[element] & 0x0F) * i32::from(quants[element]);
            integer_lanes[4 + element / 4] += i32::from(nibbles[element] >> 4) * i32::from(quants[16 + element]);
        }
        for (lane, &integer) in lanes.iter_mut().zip(&integer_lanes) {
            *lane = combined.mul_add(integer as f32, *lane);
        }
    }
    horizontal_sum(lanes) + minimum_sum
}

fn dot_q8_0_q8_0_portable(weights: &[u8], activation: &QuantizedRow) -> f32 {
    let mut lanes = [0f32; 8];
    for (block_idx, block) in weights.chunks_exact(Q8_0_BYTES).enumerate() {
        let combined = read_f16(block, 0) * activation.scales[block_idx];
        let quants = &activation.quants[block_idx * BLOCK..][..BLOCK];
        let mut integer_lanes = [0i32; 8];
        for element in 0..BLOCK {
            integer_lanes[element / 4] += i32::from(block[2 + element] as i8) * i32::from(quants[element]);
        }
        for (lane, &integer) in lanes.iter_mut().zip(&integer_lanes) {
            *lane = combined.mul_add(integer as f32, *lane);
        }
    }
    horizontal_sum(lanes)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The same arithmetic with AVX2 intrinsics, instruction for instruction as in ggml.

    use std::arch::x86_64::*;

    use super::{horizontal_sum, read_f16, QuantizedRow, BLOCK, Q4_1_BYTES, Q8_0_BYTES};

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q4_1_q8_1(weights: &[u8], activation: &QuantizedRow) -> f32 {
        let n_blocks = weights.len() / Q4_1_BYTES;
        assert!(activation.quants.len() >= n_blocks * BLOCK && activation.scales.len() >= n_blocks);
        let mut accumulator = _mm256_setzero_ps();
        let mut minimum_sum = 0f32;
        let low_mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        for block_idx in 0..n_blocks {
            let block = &weights[block_idx * Q4_1_BYTES..][..Q4_1_BYTES];
            let (scale, minimum) = (read_f16(block, 0), read_f16(block, 2));
            minimum_sum = minimum.mul_add(activation.sums[block_idx], minimum_sum);
            let combined = _mm256_set1_ps(scale * activation.scales[block_idx]);
            // SAFETY: `block[4..20]` is 16 bytes and the quants slice is 32 bytes (asserted above).
            let packed = _mm_loadu_si128(block[4..].as_ptr().cast());
            let nibbles = _mm256_and_si256(low_mask, _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed));
            let quants = _mm256_loadu_si256(activation.quants[block_idx * BLOCK..].as_ptr().cast());
            let pairs = _mm256_maddubs_epi16(nibbles, quants);
            let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, pairs));
            accumulator = _mm256_fmadd_ps(combined, products, accumulator);
        }
        horizontal_sum(lanes(accumulator)) + minimum_sum
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q8_0_q8_0(weights: &[u8], activation: &QuantizedRow) -> f32 {
        let n_blocks = weights.len() / Q8_0_BYTES;
        assert!(activation.quants.len() >= n_blocks * BLOCK && activation.scales.len() >= n_blocks);
        let mut accumulator = _mm256_setzero_ps();
        let ones = _mm256_set1_epi16(1);
        for block_idx in 0..n_blocks {
            let block = &weights[block_idx * Q8_0_BYTES..][..Q8_0_BYTES];
            let combined = _mm256_set1_ps(read_f16(block, 0) * activation.scales[block_idx]);
            // SAFETY: `block[2..34]` and the quants slice are 32 bytes each.
            let x = _mm256_loadu_si256(block[2..].as_ptr().cast());
            let y = _mm256_loadu_si256(activation.quants[block_idx * BLOCK..].as_ptr().cast());
            // ggml's mul_sum_i8_pairs_float: |x| times y with x's sign, then pairwise sums.
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
            let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, pairs));
            accumulator = _mm256_fmadd_ps(combined, products, accumulator);
        }
        horizontal_sum(lanes(accumulator))
    }

    #[target_feature(enable = "avx2")]
    unsafe fn lanes(vector: __m256) -> [f32; 8] {
        let mut out = [0f32; 8];
        // SAFETY: `out` is 8 f32s, the size of one __m256.
        _mm256_storeu_ps(out.as_mut_ptr(), vector);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random generator (no extra crate needed).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn float(&mut self) -> f32 {
            (self.next() as f32 / u32::MAX as f32 - 0.25) * 4.0
        }
    }

    fn random_blocks(rng: &mut Lcg, n_blocks: usize, block_bytes: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(n_blocks * block_bytes);
        for _ in 0..n_blocks {
            bytes.extend(f16::from_f32(rng.float() * 0.01).to_le_bytes());
            let rest = block_bytes - 2;
            if block_bytes == Q4_1_BYTES {
                bytes.extend(f16::from_f32(rng.float() * 0.01).to_le_bytes());
                bytes.extend((0..rest - 2).map(|_| rng.next() as u8));
            } else {
                bytes.extend((0..rest).map(|_| (rng.next() % 255) as u8 as i8 as u8).map(|b| {
                    if b == 0x80 {
                        0x81
                    } else {
                        b
                    }
                }));
            }
        }
        bytes
    }

    #[test]
    fn simd_and_portable_kernels_agree_to_the_bit() {
        let mut rng = Lcg(42);
        for _ in 0..50 {
            let values: Vec<f32> = (0..576).map(|_| rng.float()).collect();
            let row = QuantizedRow::new(&values);
            let q4 = random_blocks(&mut rng, 18, Q4_1_BYTES);
            let q8 = random_blocks(&mut rng, 18, Q8_0_BYTES);
            assert_eq!(dot_q4_1_q8_1(&q4, &row).to_bits(), dot_q4_1_q8_1_portable(&q4, &row).to_bits());
            assert_eq!(dot_q8_0_q8_0(&q8, &row).to_bits(), dot_q8_0_q8_0_portable(&q8, &row).to_bits());
        }
    }

    #[test]
    fn activation_quantization_rounds_ties_to_even_like_ggml() {
        // max 127 gives scale 1 and inverse 1: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2.
        let mut values = vec![0f32; 32];
        values[0] = 127.0;
        values[1] = 2.5;
        values[2] = 3.5;
        values[3] = -2.5;
        let row = QuantizedRow::new(&values);
        assert_eq!(&row.quants[..4], &[127, 2, 4, -2]);
        assert_eq!(row.scales[0], 1.0);
        assert_eq!(row.sums[0], 131.0);
    }

    #[test]
    fn kernels_approximate_the_dequantized_product() -> Result<()> {
        let mut rng = Lcg(7);
        let q4 = random_blocks(&mut rng, 4 * 2, Q4_1_BYTES);
        let matrix = QuantMatrix { weight_type: WeightType::Q4_1, n_out: 4, k: 64, bytes: q4 };
        let values: Vec<f32> = (0..128).map(|_| rng.float()).collect();
        let input = Tensor::from_vec(values.clone(), (2, 64), &Device::Cpu)?;
        let output = matrix.forward(&input)?.to_vec2::<f32>()?;
        let dense = matrix.dequantize_rows(&[0, 1, 2, 3])?.to_vec2::<f32>()?;
        for (m, input_row) in values.chunks_exact(64).enumerate() {
            for (n, weight_row) in dense.iter().enumerate() {
                let exact: f32 = input_row.iter().zip(weight_row).map(|(a, b)| a * b).sum();
                let scale: f32 = input_row.iter().zip(weight_row).map(|(a, b)| (a * b).abs()).sum();
                assert!((output[m][n] - exact).abs() <= 0.02 * scale + 1e-6, "[{m},{n}] {} vs {exact}", output[m][n]);
            }
        }
        Ok(())
    }
}
