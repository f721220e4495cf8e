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
//! horizontal sum. The AVX2 paths (several output rows per call, their block loops interleaved,
//! weights prefetched ahead; integer sums with maddubs or VNNI's dpbusd) and the portable path
//! give bit-identical results (tested).
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
        let n_out = self.n_out;
        let transposed = self.products(Kernel::detect(), &activations);
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

impl QuantMatrix {
    /// All dot products, `[n_out, activations.len()]` (the transpose of the output).
    fn products(&self, kernel: Kernel, activations: &[QuantizedRow]) -> Vec<f32> {
        let m = activations.len();
        let n_out = self.n_out;
        let row_bytes = (self.k / BLOCK) * self.weight_type.block_bytes();
        let mut transposed = vec![0f32; n_out * m];
        if m == 0 {
            return transposed;
        }
        // Output rows are computed in parallel, in chunks big enough to amortise scheduling, and
        // within a chunk ROW_GROUP rows at a time (their independent block loops interleaved).
        let rows_per_task = 4 * ROW_GROUP;
        transposed.par_chunks_mut(rows_per_task * m).enumerate().for_each(|(task, out)| {
            let first_row = task * rows_per_task;
            let n_rows = out.len() / m;
            let mut group = [0f32; ROW_GROUP];
            let mut row = 0;
            while row < n_rows {
                let size = if n_rows - row >= ROW_GROUP { ROW_GROUP } else { 1 };
                let weights = &self.bytes[(first_row + row) * row_bytes..(first_row + row + size) * row_bytes];
                for (column, activation) in activations.iter().enumerate() {
                    kernel.dot_rows(self.weight_type, weights, activation, &mut group[..size]);
                    for (offset, &value) in group[..size].iter().enumerate() {
                        out[(row + offset) * m + column] = value;
                    }
                }
                row += size;
            }
        });
        transposed
    }
}

/// Output rows whose dot products one kernel call computes together.
const ROW_GROUP: usize = 4;

/// Which implementation computes the dot products; all give bit-identical results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Portable,
    /// AVX2 + FMA + F16C, ggml's maddubs/madd integer sums.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// As `Avx2`, the integer sums with AVX-VNNI's `vpdpbusd` (the same i32 sums).
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// As `AvxVnni`, with the EVEX (AVX512-VNNI + VL) encoding of `vpdpbusd` on 256 bits.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Kernel {
    /// The fastest kernel this CPU can run (detected once).
    fn detect() -> Self {
        static DETECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| Self::available().last().copied().unwrap_or(Self::Portable))
    }

    /// Every kernel this CPU can run, the fastest last (tests compare them all).
    fn available() -> Vec<Self> {
        #[cfg(target_arch = "x86_64")]
        let all = [Self::Portable, Self::Avx2, Self::Avx512Vnni, Self::AvxVnni];
        #[cfg(not(target_arch = "x86_64"))]
        let all = [Self::Portable];
        all.into_iter().filter(|kernel| kernel.supported()).collect()
    }

    /// Whether this CPU has every feature the kernel uses (cached by std; a constant when the
    /// build's target features already include them).
    fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = || has!("avx2") && has!("fma") && has!("f16c");
            match self {
                Self::Portable => true,
                Self::Avx2 => avx2(),
                Self::AvxVnni => avx2() && has!("avxvnni"),
                Self::Avx512Vnni => avx2() && has!("avx512vnni") && has!("avx512vl"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        true
    }

    /// Dot products of `out.len()` consecutive weight rows (`weights`, whole rows) with
    /// `activation`, each row computed exactly as the portable one-row kernels compute it. A
    /// kernel the CPU cannot run falls back to the portable one (same bits, only slower).
    fn dot_rows(self, weight_type: WeightType, weights: &[u8], activation: &QuantizedRow, out: &mut [f32]) {
        if let Ok(group) = <&mut [f32; ROW_GROUP]>::try_from(&mut *out) {
            if self.dot_rows_simd(weight_type, weights, activation, group) {
                return;
            }
        }
        let row_bytes = weights.len() / out.len().max(1);
        for (slot, row) in out.iter_mut().zip(weights.chunks_exact(row_bytes.max(1))) {
            let mut one = [0f32; 1];
            *slot = if self.dot_rows_simd(weight_type, row, activation, &mut one) {
                one[0]
            } else {
                match weight_type {
                    WeightType::Q4_1 => dot_q4_1_q8_1_portable(row, activation),
                    WeightType::Q8_0 => dot_q8_0_q8_0_portable(row, activation),
                }
            };
        }
    }

    /// The `N` rows with this kernel's SIMD code; `false` (nothing written) for the portable
    /// kernel or one whose features this CPU lacks.
    fn dot_rows_simd<const N: usize>(
        self,
        weight_type: WeightType,
        weights: &[u8],
        activation: &QuantizedRow,
        out: &mut [f32; N],
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.supported() {
            // SAFETY: `supported` checked just above that the CPU has every feature this kernel
            // needs; the kernels check the lengths of the slices they read.
            return unsafe { x86::dot_rows(self, weight_type, weights, activation, out) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (weight_type, weights, activation, out);
        false
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
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above); the function reads `values` by whole blocks.
            return unsafe { x86::quantize_row(values) };
        }
        Self::new_portable(values)
    }

    fn new_portable(values: &[f32]) -> Self {
        let mut row = Self::with_capacity(values.len());
        for block in values.chunks_exact(BLOCK) {
            let max_abs = block.iter().fold(0f32, |max, &v| max.max(v.abs()));
            let inverse = if max_abs != 0.0 { 127.0 / max_abs } else { 0.0 };
            let mut sum = 0i32;
            for &value in block {
                let quant = (value * inverse).round_ties_even() as i32;
                sum += quant;
                row.quants.push(quant as i8);
            }
            row.push_block_constants(max_abs, sum);
        }
        row
    }

    fn with_capacity(n_values: usize) -> Self {
        let n_blocks = n_values / BLOCK;
        Self {
            scales: Vec::with_capacity(n_blocks),
            sums: Vec::with_capacity(n_blocks),
            quants: Vec::with_capacity(n_values),
        }
    }

    /// A block's scale and `s` from its largest magnitude and the sum of its quants.
    fn push_block_constants(&mut self, max_abs: f32, sum: i32) {
        let scale = max_abs / 127.0;
        self.scales.push(f16::from_f32(scale).to_f32());
        self.sums.push(f16::from_f32(scale * sum as f32).to_f32());
    }
}

/// ggml's `hsum_float_8`: the exact order in which the 8 lanes are added.
fn horizontal_sum(lanes: [f32; 8]) -> f32 {
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
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
    //! The same arithmetic with AVX2 intrinsics, instruction for instruction as in ggml, for
    //! `N` rows at once: each row keeps its own accumulator, block order and minimum sum, so
    //! its result is exactly the one-row result; only the rows' instructions are interleaved
    //! (their dependency chains are independent) and the activation block is loaded once.

    use std::arch::x86_64::*;

    use super::{horizontal_sum, Kernel, QuantizedRow, WeightType, BLOCK, Q4_1_BYTES, Q8_0_BYTES};

    /// How a block's 32 u8 x i8 products become 8 i32 sums of 4.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum IntegerSums {
        /// ggml's AVX2 `maddubs` (pairs, no saturation here) then `madd` with ones.
        MaddUbs,
        /// `vpdpbusd` with VEX encoding (AVX-VNNI).
        AvxVnni,
        /// `vpdpbusd` with EVEX encoding (AVX512-VNNI + AVX512-VL).
        Avx512Vnni,
    }

    /// `false` (nothing written) for `Kernel::Portable`, which has no x86 code.
    ///
    /// # Safety
    /// The CPU must have the features `kernel` needs (`Kernel::supported`).
    pub(super) unsafe fn dot_rows<const N: usize>(
        kernel: Kernel,
        weight_type: WeightType,
        weights: &[u8],
        activation: &QuantizedRow,
        out: &mut [f32; N],
    ) -> bool {
        // SAFETY (every arm): the caller guarantees the features each kernel needs.
        match (kernel, weight_type) {
            (Kernel::Avx2, WeightType::Q4_1) => unsafe { q4_1_avx2(weights, activation, out) },
            (Kernel::Avx2, WeightType::Q8_0) => unsafe { q8_0_avx2(weights, activation, out) },
            (Kernel::AvxVnni, WeightType::Q4_1) => unsafe { q4_1_avx_vnni(weights, activation, out) },
            (Kernel::AvxVnni, WeightType::Q8_0) => unsafe { q8_0_avx_vnni(weights, activation, out) },
            (Kernel::Avx512Vnni, WeightType::Q4_1) => unsafe { q4_1_avx512_vnni(weights, activation, out) },
            (Kernel::Avx512Vnni, WeightType::Q8_0) => unsafe { q8_0_avx512_vnni(weights, activation, out) },
            (Kernel::Portable, _) => return false,
        }
        true
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_avx2<const N: usize>(weights: &[u8], activation: &QuantizedRow, out: &mut [f32; N]) {
        // SAFETY: this function's features are those the body needs for `MaddUbs`.
        unsafe { q4_1_body::<N>(IntegerSums::MaddUbs, weights, activation, out) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn q4_1_avx_vnni<const N: usize>(weights: &[u8], activation: &QuantizedRow, out: &mut [f32; N]) {
        // SAFETY: this function's features are those the body needs for `AvxVnni`.
        unsafe { q4_1_body::<N>(IntegerSums::AvxVnni, weights, activation, out) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn q4_1_avx512_vnni<const N: usize>(weights: &[u8], activation: &QuantizedRow, out: &mut [f32; N]) {
        // SAFETY: this function's features are those the body needs for `Avx512Vnni`.
        unsafe { q4_1_body::<N>(IntegerSums::Avx512Vnni, weights, activation, out) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_avx2<const N: usize>(weights: &[u8], activation: &QuantizedRow, out: &mut [f32; N]) {
        // SAFETY: this function's features are those the body needs for `MaddUbs`.
        unsafe { q8_0_body::<N>(IntegerSums::MaddUbs, weights, activation, out) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn q8_0_avx_vnni<const N: usize>(weights: &[u8], activation: &QuantizedRow, out: &mut [f32; N]) {
        // SAFETY: this function's features are those the body needs for `AvxVnni`.
        unsafe { q8_0_body::<N>(IntegerSums::AvxVnni, weights, activation, out) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn q8_0_avx512_vnni<const N: usize>(weights: &[u8], activation: &QuantizedRow, out: &mut [f32; N]) {
        // SAFETY: this function's features are those the body needs for `Avx512Vnni`.
        unsafe { q8_0_body::<N>(IntegerSums::Avx512Vnni, weights, activation, out) }
    }

    /// The 8 i32 sums of 4 consecutive `unsigned[i] * signed[i]` products (never saturating for
    /// our operands: unsigned <= 128, |signed| <= 127, so a maddubs pair is at most 32512).
    ///
    /// # Safety
    /// AVX2, plus AVX-VNNI or AVX512-VNNI + VL for those variants.
    #[inline(always)]
    unsafe fn integer_sums(sums: IntegerSums, unsigned: __m256i, signed: __m256i) -> __m256i {
        // SAFETY: the caller guarantees the features of the chosen variant.
        unsafe {
            match sums {
                IntegerSums::MaddUbs => _mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(unsigned, signed)),
                IntegerSums::AvxVnni => _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), unsigned, signed),
                IntegerSums::Avx512Vnni => _mm256_dpbusd_epi32(_mm256_setzero_si256(), unsigned, signed),
            }
        }
    }

    /// The two f16 values at `at` as f32 (exact, F16C).
    ///
    /// # Safety
    /// F16C; `at` must be readable for 4 bytes.
    #[inline(always)]
    unsafe fn two_f16(at: *const u8) -> (f32, f32) {
        // SAFETY: the caller guarantees F16C and 4 readable bytes.
        unsafe {
            let both = _mm_cvtph_ps(_mm_cvtsi32_si128(at.cast::<i32>().read_unaligned()));
            (_mm_cvtss_f32(both), _mm_cvtss_f32(_mm_movehdup_ps(both)))
        }
    }

    /// # Safety
    /// F16C; `at` must be readable for 2 bytes.
    #[inline(always)]
    unsafe fn one_f16(at: *const u8) -> f32 {
        // SAFETY: the caller guarantees F16C and 2 readable bytes.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(at.cast::<u16>().read_unaligned())))) }
    }

    /// `weights` holds `N` whole rows; checks the activation covers them.
    fn row_blocks<const N: usize>(weights: &[u8], block_bytes: usize, activation: &QuantizedRow) -> usize {
        assert!(N > 0 && weights.len().is_multiple_of(N * block_bytes), "weights are not {N} whole rows");
        let n_blocks = weights.len() / (N * block_bytes);
        assert!(
            activation.quants.len() >= n_blocks * BLOCK
                && activation.scales.len() >= n_blocks
                && activation.sums.len() >= n_blocks,
            "activation shorter than the weight rows"
        );
        n_blocks
    }

    /// # Safety
    /// AVX2, FMA, F16C and the features of `sums`.
    #[inline(always)]
    unsafe fn q4_1_body<const N: usize>(
        sums: IntegerSums,
        weights: &[u8],
        activation: &QuantizedRow,
        out: &mut [f32; N],
    ) {
        let n_blocks = row_blocks::<N>(weights, Q4_1_BYTES, activation);
        let row_bytes = n_blocks * Q4_1_BYTES;
        let rows: [*const u8; N] = std::array::from_fn(|r| weights[r * row_bytes..].as_ptr());
        let prefetch_distance = PREFETCH_ROWS * row_bytes;
        // SAFETY: every pointer below stays inside the slices checked by `row_blocks`: row r's
        // block b is bytes [b*20, b*20+20) of row r, and the activation's block b is quants
        // [32b, 32b+32), scales[b], sums[b] with b < n_blocks; the features are the caller's.
        unsafe {
            let mut accumulators = [_mm256_setzero_ps(); N];
            let mut minimum_sums = [0f32; N];
            let low_mask = _mm256_set1_epi8(0x0F);
            let high_half_shift = _mm256_set_epi64x(4, 4, 0, 0);
            for block_idx in 0..n_blocks {
                let quants = _mm256_loadu_si256(activation.quants.as_ptr().add(block_idx * BLOCK).cast());
                let activation_scale = *activation.scales.get_unchecked(block_idx);
                let activation_sum = *activation.sums.get_unchecked(block_idx);
                for r in 0..N {
                    let block = rows[r].add(block_idx * Q4_1_BYTES);
                    prefetch(block, prefetch_distance);
                    let (scale, minimum) = two_f16(block);
                    minimum_sums[r] = minimum.mul_add(activation_sum, minimum_sums[r]);
                    let combined = _mm256_set1_ps(scale * activation_scale);
                    // The 16 bytes in both halves, the upper half shifted right by 4: the low
                    // nibbles then the high ones, as ggml's `bytes_from_nibbles_32`.
                    let packed = _mm256_broadcastsi128_si256(_mm_loadu_si128(block.add(4).cast()));
                    let nibbles = _mm256_and_si256(low_mask, _mm256_srlv_epi64(packed, high_half_shift));
                    let products = _mm256_cvtepi32_ps(integer_sums(sums, nibbles, quants));
                    accumulators[r] = _mm256_fmadd_ps(combined, products, accumulators[r]);
                }
            }
            for r in 0..N {
                out[r] = horizontal_sum(lanes(accumulators[r])) + minimum_sums[r];
            }
        }
    }

    /// # Safety
    /// AVX2, FMA, F16C and the features of `sums`.
    #[inline(always)]
    unsafe fn q8_0_body<const N: usize>(
        sums: IntegerSums,
        weights: &[u8],
        activation: &QuantizedRow,
        out: &mut [f32; N],
    ) {
        let n_blocks = row_blocks::<N>(weights, Q8_0_BYTES, activation);
        let row_bytes = n_blocks * Q8_0_BYTES;
        let rows: [*const u8; N] = std::array::from_fn(|r| weights[r * row_bytes..].as_ptr());
        let prefetch_distance = PREFETCH_ROWS * row_bytes;
        // SAFETY: as in `q4_1_body`, with 34-byte weight blocks.
        unsafe {
            let mut accumulators = [_mm256_setzero_ps(); N];
            for block_idx in 0..n_blocks {
                let y = _mm256_loadu_si256(activation.quants.as_ptr().add(block_idx * BLOCK).cast());
                let activation_scale = *activation.scales.get_unchecked(block_idx);
                for r in 0..N {
                    let block = rows[r].add(block_idx * Q8_0_BYTES);
                    prefetch(block, prefetch_distance);
                    let combined = _mm256_set1_ps(one_f16(block) * activation_scale);
                    let x = _mm256_loadu_si256(block.add(2).cast());
                    // ggml's mul_sum_i8_pairs_float: |x| times y with x's sign, then sums.
                    let products =
                        _mm256_cvtepi32_ps(integer_sums(sums, _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)));
                    accumulators[r] = _mm256_fmadd_ps(combined, products, accumulators[r]);
                }
            }
            for r in 0..N {
                out[r] = horizontal_sum(lanes(accumulators[r]));
            }
        }
    }

    /// `QuantizedRow::new_portable` eight lanes at a time, with the same result bit for bit: the
    /// block's largest magnitude (a maximum, so the order does not matter; a NaN is skipped as
    /// `f32::max` skips it), one multiply per value, rounding half to even, and NaN products set to
    /// 0 as Rust's `as i32` sets them; the quants fit i8 (|v * 127 / max| <= 127 after rounding),
    /// so the saturating packs do not change them. The packs interleave 128-bit lanes; the
    /// permutation puts the values back in order, as ggml's `quantize_row_q8_1` does.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_row(values: &[f32]) -> QuantizedRow {
        let mut row = QuantizedRow::with_capacity(values.len());
        let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for block in values.chunks_exact(BLOCK) {
            // SAFETY: `block` holds 32 f32s, four unaligned 8-lane loads; the store writes 32 bytes
            // into `quants`, which has room for them (`with_capacity` reserved every value).
            unsafe {
                let lanes: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(block.as_ptr().add(8 * i)));
                let mut max = _mm256_setzero_ps();
                for &v in &lanes {
                    // `max_ps` returns its second operand when either is NaN: the running maximum.
                    max = _mm256_max_ps(_mm256_and_ps(v, magnitude), max);
                }
                let mut wide = [0f32; 8];
                _mm256_storeu_ps(wide.as_mut_ptr(), max);
                let max_abs = wide.iter().fold(0f32, |max, &v| max.max(v));
                let inverse = _mm256_set1_ps(if max_abs != 0.0 { 127.0 / max_abs } else { 0.0 });
                let quants: [__m256i; 4] = std::array::from_fn(|i| {
                    let rounded = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                        lanes[i], inverse,
                    ));
                    let finite = _mm256_and_ps(rounded, _mm256_cmp_ps::<_CMP_ORD_Q>(rounded, rounded));
                    _mm256_cvtps_epi32(finite)
                });
                let total =
                    _mm256_add_epi32(_mm256_add_epi32(quants[0], quants[1]), _mm256_add_epi32(quants[2], quants[3]));
                let mut sums = [0i32; 8];
                _mm256_storeu_si256(sums.as_mut_ptr().cast(), total);
                let packed = _mm256_packs_epi16(
                    _mm256_packs_epi32(quants[0], quants[1]),
                    _mm256_packs_epi32(quants[2], quants[3]),
                );
                let ordered = _mm256_permutevar8x32_epi32(packed, order);
                let start = row.quants.len();
                _mm256_storeu_si256(row.quants.spare_capacity_mut().as_mut_ptr().cast(), ordered);
                row.quants.set_len(start + BLOCK);
                row.push_block_constants(max_abs, sums.iter().sum());
            }
        }
        row
    }

    /// How far ahead (in rows of the matrix, which are read one after the other) the kernels
    /// ask for weights: decode streams the whole matrix from memory once per token, and the
    /// loads otherwise wait on it.
    const PREFETCH_ROWS: usize = 8;

    /// Asks for the cache line `distance` bytes after `at` (a hint: it never faults, so the
    /// address may lie past the matrix, and it changes no result).
    #[inline(always)]
    fn prefetch(at: *const u8, distance: usize) {
        // SAFETY: a prefetch reads nothing architecturally and cannot fault, whatever the
        // address; `wrapping_add` computes it without asserting it is in bounds. SSE is part of
        // x86_64's baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(distance).cast()) }
    }

    #[inline(always)]
    fn lanes(vector: __m256) -> [f32; 8] {
        // SAFETY: __m256 and [f32; 8] have the same size, and every bit pattern is valid for both.
        unsafe { std::mem::transmute::<__m256, [f32; 8]>(vector) }
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

    /// Every kernel this CPU runs, for `n_rows` random rows of each weight type, one row at a
    /// time and through `products` (row groups plus the remainder, several tasks), gives exactly
    /// the portable per-row kernel's bits.
    #[test]
    fn simd_and_portable_kernels_agree_to_the_bit() {
        let kernels = Kernel::available();
        eprintln!("kernels compared with the portable one: {kernels:?}");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(kernels.contains(&Kernel::Avx2), "the AVX2 kernel should be tested here");
        }
        let mut rng = Lcg(42);
        for trial in 0..20 {
            let n_blocks = [18, 1, 3, 64][trial % 4];
            let k = n_blocks * BLOCK;
            let activations: Vec<QuantizedRow> = (0..1 + trial % 3)
                .map(|_| QuantizedRow::new(&(0..k).map(|_| rng.float()).collect::<Vec<f32>>()))
                .collect();
            for weight_type in [WeightType::Q4_1, WeightType::Q8_0] {
                for n_rows in [1, 3, 4, 5, 17, 37] {
                    let bytes = random_blocks(&mut rng, n_rows * n_blocks, weight_type.block_bytes());
                    let matrix = QuantMatrix { weight_type, n_out: n_rows, k, bytes };
                    let matrix = &matrix;
                    let expected: Vec<u32> = (0..n_rows)
                        .flat_map(|row| {
                            activations.iter().map(move |a| match weight_type {
                                WeightType::Q4_1 => dot_q4_1_q8_1_portable(matrix.row(row), a),
                                WeightType::Q8_0 => dot_q8_0_q8_0_portable(matrix.row(row), a),
                            })
                        })
                        .map(f32::to_bits)
                        .collect::<Vec<u32>>();
                    for &kernel in &kernels {
                        let got: Vec<u32> =
                            matrix.products(kernel, &activations).into_iter().map(f32::to_bits).collect();
                        assert_eq!(got, expected, "{kernel:?} {weight_type:?} {n_rows} rows, {n_blocks} blocks");
                        for row in 0..n_rows {
                            for (column, activation) in activations.iter().enumerate() {
                                let mut one = [0f32; 1];
                                kernel.dot_rows(weight_type, matrix.row(row), activation, &mut one);
                                assert_eq!(one[0].to_bits(), expected[row * activations.len() + column]);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Extreme operands: nibbles 15 and quants +-127 (the largest maddubs pairs), Q8_0 weights
    /// -128 and 127, so that no integer-sum path can saturate differently.
    #[test]
    fn kernels_agree_on_extreme_quants() {
        let k = 4 * BLOCK;
        let mut values = vec![0f32; k];
        for (i, value) in values.iter_mut().enumerate() {
            *value = if i % 3 == 0 { -1.0 } else { 1.0 };
        }
        let activations = vec![QuantizedRow::new(&values)];
        assert!(activations[0].quants.iter().all(|q| q.abs() == 127));
        let one = f16::from_f32(0.5).to_le_bytes();
        let mut q4 = Vec::new();
        let mut q8 = Vec::new();
        for block in 0..5 * 4u8 {
            q4.extend(one);
            q4.extend(f16::from_f32(-0.25).to_le_bytes());
            q4.extend([if block.is_multiple_of(2) { 0xFF } else { 0x0F }; 16]);
            q8.extend(one);
            q8.extend((0..32).map(|i: u8| if (i + block).is_multiple_of(2) { 0x80 } else { 0x7F }));
        }
        for (weight_type, bytes) in [(WeightType::Q4_1, q4), (WeightType::Q8_0, q8)] {
            let matrix = QuantMatrix { weight_type, n_out: 5, k, bytes };
            let expected: Vec<u32> =
                matrix.products(Kernel::Portable, &activations).into_iter().map(f32::to_bits).collect();
            for kernel in Kernel::available() {
                let got: Vec<u32> = matrix.products(kernel, &activations).into_iter().map(f32::to_bits).collect();
                assert_eq!(got, expected, "{kernel:?} {weight_type:?}");
            }
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
        for row in [QuantizedRow::new(&values), QuantizedRow::new_portable(&values)] {
            assert_eq!(&row.quants[..4], &[127, 2, 4, -2]);
            assert_eq!(row.scales[0], 1.0);
            assert_eq!(row.sums[0], 131.0);
        }
    }

    /// The vector quantizer gives the portable one's quants, scales and sums bit for bit: random
    /// rows, ties, zeros of both signs, an all-zero block, huge and tiny magnitudes, NaN and
    /// infinities (which the portable code turns into 0 quants), and a tail shorter than a block.
    #[test]
    fn vector_and_portable_activation_quantization_agree_to_the_bit() {
        let mut rng = Lcg(7);
        let mut rows: Vec<Vec<f32>> =
            (0..40).map(|n| (0..(n % 5 + 1) * BLOCK).map(|_| rng.float() * 9.0).collect()).collect();
        let mut special = vec![0f32; 8 * BLOCK + 7];
        special[0] = 127.0;
        special[1] = 2.5;
        special[2] = -3.5;
        special[3] = -0.0;
        // Block 1 stays all zero. Block 2: tiny and huge magnitudes.
        special[2 * BLOCK] = f32::MIN_POSITIVE;
        special[2 * BLOCK + 1] = 1e-30;
        special[2 * BLOCK + 2] = -3e38;
        // Block 3: a NaN among finite values; block 4: an infinity; block 5: -NaN and -inf; block 6: only NaN.
        special[3 * BLOCK] = f32::NAN;
        special[3 * BLOCK + 1] = 5.0;
        special[3 * BLOCK + 2] = -1.25;
        special[4 * BLOCK] = f32::INFINITY;
        special[4 * BLOCK + 1] = 3.0;
        special[5 * BLOCK] = -f32::NAN;
        special[5 * BLOCK + 1] = f32::NEG_INFINITY;
        for value in &mut special[6 * BLOCK..7 * BLOCK] {
            *value = f32::NAN;
        }
        for (i, value) in special[7 * BLOCK..].iter_mut().enumerate() {
            *value = i as f32 - 12.5;
        }
        rows.push(special);
        for (index, values) in rows.iter().enumerate() {
            let (vector, portable) = (QuantizedRow::new(values), QuantizedRow::new_portable(values));
            assert_eq!(vector.quants, portable.quants, "row {index}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&vector.scales), bits(&portable.scales), "row {index}");
            assert_eq!(bits(&vector.sums), bits(&portable.sums), "row {index}");
        }
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
