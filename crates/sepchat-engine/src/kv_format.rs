//! How the KV cache stores its rows (one token's key or value in one KV head): f16, as
//! llama.cpp does by default, or 8-bit integers with one f32 scale per row.
//!
//! A decode step reads every held row of every layer, and at the default SepCache profile's
//! ~1,700 slots those reads, not arithmetic, set its pace (docs/BENCHMARKS.md, "decode is bound
//! by the bytes it reads"). 8-bit rows take 68 bytes per 64 values where f16 takes 128, so a
//! long conversation decodes faster and its cache takes about half the memory. The price is a
//! rounding of each value to 1/254 of its row's largest magnitude (llama.cpp's `q8_0` cache type
//! rounds the same way, per 32 values).
//!
//! [`KvRows`] is one layer's keys or values in either format: the preallocated buffers, views of
//! their held rows, and what the attention kernels read.

use std::io::{Read, Write};

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};

/// The storage of the cache's keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum KvFormat {
    /// Two bytes per value, rounded as llama.cpp's default cache rounds them.
    #[default]
    F16,
    /// One signed byte per value and an f32 scale per row: value = scale x byte, with
    /// scale = (largest magnitude in the row) / 127.
    Q8,
}

impl KvFormat {
    /// The name the cache spec's `kv=` option takes.
    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F16 => "f16",
            KvFormat::Q8 => "q8",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "f16" => Some(KvFormat::F16),
            "q8" => Some(KvFormat::Q8),
            _ => None,
        }
    }

    /// Bytes one row of `head_dim` values takes, its scale included.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            KvFormat::F16 => 2 * head_dim,
            KvFormat::Q8 => head_dim + 4,
        }
    }
}

/// Rounds `values` (whole rows of `head_dim`) to 8 bits, appending each row's bytes (two's
/// complement) to `data` and its scale to `scales`. A row of zeros gets scale 0.
pub(crate) fn quantize_q8(values: &[f32], head_dim: usize, data: &mut Vec<u8>, scales: &mut Vec<f32>) {
    for row in values.chunks_exact(head_dim) {
        let (scale, elements) = q8_row(row);
        data.extend(elements.map(|element| element as u8));
        scales.push(scale);
    }
}

/// One row in 8 bits: its scale (largest magnitude / 127) and its elements in units of it.
/// The attention kernel for AVX-512 VNNI rounds its queries this way too.
pub(crate) fn q8_row(row: &[f32]) -> (f32, impl Iterator<Item = i8> + '_) {
    let largest = row.iter().fold(0f32, |largest, value| largest.max(value.abs()));
    let scale = largest / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    // |value x inverse| <= 127 (up to rounding of the inverse, which the clamp absorbs).
    (scale, row.iter().map(move |&value| (value * inverse).round().clamp(-127.0, 127.0) as i8))
}

/// The f32 values of 8-bit rows, appended to `out`.
pub(crate) fn dequantize_q8(data: &[u8], scales: &[f32], head_dim: usize, out: &mut Vec<f32>) {
    for (row, &scale) in data.chunks_exact(head_dim).zip(scales) {
        out.extend(row.iter().map(|&byte| f32::from(byte as i8) * scale));
    }
}

/// One layer's keys or values, `[n_kv_head, slots, head_dim]`: a preallocated buffer, or a view
/// of the rows attention may read.
#[derive(Debug, Clone)]
pub enum KvRows {
    /// f16 values.
    F16(Tensor),
    /// u8 `data` holding i8 values, `[n_kv_head, slots, head_dim]`, and f32 `scales`,
    /// `[n_kv_head, slots]`.
    Q8 { data: Tensor, scales: Tensor },
}

impl KvRows {
    /// A zeroed buffer for `slots` rows per head.
    pub(crate) fn zeros(
        format: KvFormat,
        n_kv_head: usize,
        slots: usize,
        head_dim: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(match format {
            KvFormat::F16 => KvRows::F16(Tensor::zeros((n_kv_head, slots, head_dim), DType::F16, device)?),
            KvFormat::Q8 => KvRows::Q8 {
                data: Tensor::zeros((n_kv_head, slots, head_dim), DType::U8, device)?,
                scales: Tensor::zeros((n_kv_head, slots), DType::F32, device)?,
            },
        })
    }

    pub fn format(&self) -> KvFormat {
        match self {
            KvRows::F16(_) => KvFormat::F16,
            KvRows::Q8 { .. } => KvFormat::Q8,
        }
    }

    /// Rows `start..start + len` of every head (a view, no copy).
    pub(crate) fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(match self {
            KvRows::F16(values) => KvRows::F16(values.narrow(1, start, len)?),
            KvRows::Q8 { data, scales } => {
                KvRows::Q8 { data: data.narrow(1, start, len)?, scales: scales.narrow(1, start, len)? }
            }
        })
    }

    /// Rows per head.
    pub fn slots(&self) -> Result<usize> {
        Ok(match self {
            KvRows::F16(values) => values.dim(1)?,
            KvRows::Q8 { data, .. } => data.dim(1)?,
        })
    }

    /// The rows at `indices` (a u32 tensor), in that order, as new tensors.
    pub(crate) fn index_select(&self, indices: &Tensor) -> Result<Self> {
        Ok(match self {
            KvRows::F16(values) => KvRows::F16(values.index_select(indices, 1)?),
            KvRows::Q8 { data, scales } => {
                KvRows::Q8 { data: data.index_select(indices, 1)?, scales: scales.index_select(indices, 1)? }
            }
        })
    }

    /// A copy that shares no storage with this buffer.
    pub(crate) fn copy(&self) -> Result<Self> {
        Ok(match self {
            KvRows::F16(values) => KvRows::F16(values.copy()?),
            KvRows::Q8 { data, scales } => KvRows::Q8 { data: data.copy()?, scales: scales.copy()? },
        })
    }

    /// Writes `rows` (same format) into this buffer from row `offset` on.
    pub(crate) fn set_rows(&self, rows: &KvRows, offset: usize) -> Result<()> {
        match (self, rows) {
            (KvRows::F16(buffer), KvRows::F16(rows)) => buffer.slice_set(&rows.contiguous()?, 1, offset)?,
            (KvRows::Q8 { data, scales }, KvRows::Q8 { data: new_data, scales: new_scales }) => {
                data.slice_set(&new_data.contiguous()?, 1, offset)?;
                scales.slice_set(&new_scales.contiguous()?, 1, offset)?;
            }
            _ => return Err(format_mismatch()),
        }
        Ok(())
    }

    /// `values` (`[n_kv_head, n, head_dim]`, any float dtype) in `format`.
    pub(crate) fn encode(values: &Tensor, format: KvFormat) -> Result<Self> {
        Ok(match format {
            KvFormat::F16 => KvRows::F16(values.to_dtype(DType::F16)?),
            KvFormat::Q8 => {
                let (n_kv_head, slots, head_dim) = values.dims3()?;
                let floats = values.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let mut data = Vec::with_capacity(floats.len());
                let mut scales = Vec::with_capacity(n_kv_head * slots);
                quantize_q8(&floats, head_dim, &mut data, &mut scales);
                KvRows::Q8 {
                    data: Tensor::from_vec(data, (n_kv_head, slots, head_dim), values.device())?,
                    scales: Tensor::from_vec(scales, (n_kv_head, slots), values.device())?,
                }
            }
        })
    }

    /// Writes `values` (`[n_kv_head, n, head_dim]`, any float dtype) into this buffer from row
    /// `offset` on, rounded to its format.
    pub(crate) fn write(&self, values: &Tensor, offset: usize) -> Result<()> {
        self.set_rows(&KvRows::encode(values, self.format())?, offset)
    }

    /// The rows in f32, `[n_kv_head, slots, head_dim]`: what the batched matmuls of long chunks
    /// and re-rotation take.
    pub(crate) fn to_f32(&self) -> Result<Tensor> {
        Ok(match self {
            KvRows::F16(values) => values.to_dtype(DType::F32)?,
            KvRows::Q8 { data, scales } => {
                let (n_kv_head, slots, head_dim) = data.dims3()?;
                let bytes = data.contiguous()?.flatten_all()?.to_vec1::<u8>()?;
                let scales = scales.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let mut floats = Vec::with_capacity(bytes.len());
                dequantize_q8(&bytes, &scales, head_dim, &mut floats);
                Tensor::from_vec(floats, (n_kv_head, slots, head_dim), data.device())?
            }
        })
    }

    /// The rows' bytes as a snapshot stores them: f16 values little-endian, or the i8 values
    /// then the scales as little-endian f32, each `[n_kv_head, slots(, head_dim)]`.
    pub(crate) fn write_bytes(&self, writer: &mut impl Write) -> Result<()> {
        match self {
            KvRows::F16(values) => {
                let values = values.contiguous()?.flatten_all()?.to_vec1::<half::f16>()?;
                let bytes: Vec<u8> = values.iter().flat_map(|value| value.to_le_bytes()).collect();
                writer.write_all(&bytes)?;
            }
            KvRows::Q8 { data, scales } => {
                writer.write_all(&data.contiguous()?.flatten_all()?.to_vec1::<u8>()?)?;
                let scales = scales.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let bytes: Vec<u8> = scales.iter().flat_map(|scale| scale.to_le_bytes()).collect();
                writer.write_all(&bytes)?;
            }
        }
        Ok(())
    }

    /// Reads rows `write_bytes` wrote (`slots` rows per head, in `format`).
    pub(crate) fn read_bytes(
        reader: &mut impl Read,
        format: KvFormat,
        n_kv_head: usize,
        slots: usize,
        head_dim: usize,
        device: &Device,
    ) -> Result<Self> {
        let mut read = |len: usize| -> Result<Vec<u8>> {
            let mut bytes = vec![0u8; len];
            reader.read_exact(&mut bytes)?;
            Ok(bytes)
        };
        let values = n_kv_head * slots * head_dim;
        Ok(match format {
            KvFormat::F16 => {
                let bytes = read(2 * values)?;
                let values: Vec<half::f16> =
                    bytes.chunks_exact(2).map(|pair| half::f16::from_le_bytes([pair[0], pair[1]])).collect();
                KvRows::F16(Tensor::from_vec(values, (n_kv_head, slots, head_dim), device)?)
            }
            KvFormat::Q8 => {
                let data = read(values)?;
                let bytes = read(4 * n_kv_head * slots)?;
                let scales: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|four| f32::from_le_bytes([four[0], four[1], four[2], four[3]]))
                    .collect();
                if scales.iter().any(|scale| !scale.is_finite() || *scale < 0.0) {
                    return Err(EngineError::SnapshotCorrupt("a row scale is negative or not finite".to_string()));
                }
                KvRows::Q8 {
                    data: Tensor::from_vec(data, (n_kv_head, slots, head_dim), device)?,
                    scales: Tensor::from_vec(scales, (n_kv_head, slots), device)?,
                }
            }
        })
    }
}

fn format_mismatch() -> EngineError {
    EngineError::Candle(candle_core::Error::Msg("KV rows of two different formats".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_rows_round_to_within_half_a_step_of_their_row_scale() {
        let head_dim = 64;
        let values: Vec<f32> = (0..3 * head_dim).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173).collect();
        let (mut data, mut scales) = (Vec::new(), Vec::new());
        quantize_q8(&values, head_dim, &mut data, &mut scales);
        assert_eq!((data.len(), scales.len()), (values.len(), 3));
        let mut back = Vec::new();
        dequantize_q8(&data, &scales, head_dim, &mut back);
        for (row, (original, restored)) in values.chunks(head_dim).zip(back.chunks(head_dim)).enumerate() {
            let largest = original.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!((scales[row] - largest / 127.0).abs() <= f32::EPSILON * largest);
            for (a, b) in original.iter().zip(restored) {
                assert!((a - b).abs() <= scales[row] * 0.5 * (1.0 + 1e-5), "row {row}: {a} came back as {b}");
            }
            // The largest magnitude is exactly representable: it maps to +-127.
            assert!(restored.iter().any(|v| (v.abs() - largest).abs() <= largest * 1e-6));
        }
    }

    #[test]
    fn q8_keeps_a_zero_row_zero() {
        let (mut data, mut scales) = (Vec::new(), Vec::new());
        quantize_q8(&[0.0; 64], 64, &mut data, &mut scales);
        assert_eq!(scales, [0.0]);
        assert!(data.iter().all(|&byte| byte == 0));
    }

    #[test]
    fn rows_survive_a_write_and_read_of_their_bytes() -> Result<()> {
        let values = Tensor::arange(0f32, 2.0 * 3.0 * 64.0, &Device::Cpu)?.reshape((2, 3, 64))?;
        for format in [KvFormat::F16, KvFormat::Q8] {
            let rows = KvRows::encode(&values, format)?;
            let mut bytes = Vec::new();
            rows.write_bytes(&mut bytes)?;
            assert_eq!(bytes.len(), 2 * 3 * format.row_bytes(64));
            let back = KvRows::read_bytes(&mut bytes.as_slice(), format, 2, 3, 64, &Device::Cpu)?;
            let (a, b) =
                (rows.to_f32()?.flatten_all()?.to_vec1::<f32>()?, back.to_f32()?.flatten_all()?.to_vec1::<f32>()?);
            assert_eq!(a, b, "{format:?}");
        }
        Ok(())
    }
}
