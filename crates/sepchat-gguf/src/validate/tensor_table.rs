//! The tensor info table: names, shapes, types and offsets, each checked before it is trusted.

use std::collections::HashMap;
use std::io::{Read, Seek};

use super::error::GgufError;
use super::ggml_type::GgmlType;
use super::metadata::{decode_name, printable, read_string_bytes};
use super::reader::BoundedReader;
use super::{MAX_NAME_LENGTH, MAX_TENSOR_DIMENSIONS};

/// One tensor, after its info has passed every check.
#[derive(Debug, Clone)]
pub(crate) struct TensorInfo {
    pub(crate) name: String,
    /// In GGUF order: the first dimension is the innermost (the row length).
    pub(crate) dimensions: Vec<u64>,
    pub(crate) ggml_type: GgmlType,
}

/// All tensors, in file order, with a name index.
#[derive(Debug, Default)]
pub(crate) struct TensorTable {
    pub(crate) tensors: Vec<TensorInfo>,
    index_by_name: HashMap<String, usize>,
}

impl TensorTable {
    pub(crate) fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.index_by_name.get(name).and_then(|&index| self.tensors.get(index))
    }
}

/// Where a tensor's bytes are, kept only until the data section start is known.
struct DataPlacement {
    relative_offset: u64,
    byte_size: u64,
}

/// Reads `tensor_count` tensor infos (already checked against the file size), then checks that
/// every tensor's bytes lie inside the file, after the table padded to `alignment`.
pub(crate) fn read_tensor_table<R: Read + Seek>(
    reader: &mut BoundedReader<R>,
    tensor_count: u64,
    alignment: u64,
) -> Result<TensorTable, GgufError> {
    let mut table = TensorTable::default();
    let mut placements = Vec::new();
    for tensor_index in 0..tensor_count {
        let (info, placement) = read_tensor_info(reader, tensor_index, alignment)?;
        if table.index_by_name.contains_key(&info.name) {
            return Err(GgufError::DuplicateTensorName { name: info.name });
        }
        table.index_by_name.insert(info.name.clone(), table.tensors.len());
        table.tensors.push(info);
        placements.push(placement);
    }

    // The data section starts at the first multiple of the alignment after the table. u128
    // arithmetic: neither this rounding nor start + offset + size can overflow.
    // max(1): the caller guarantees a non-zero alignment, but a zero must never divide.
    let alignment_wide = u128::from(alignment.max(1));
    let data_section_start = u128::from(reader.position()).div_ceil(alignment_wide) * alignment_wide;
    let file_length = reader.file_length();
    for (info, placement) in table.tensors.iter().zip(&placements) {
        let data_end = data_section_start + u128::from(placement.relative_offset) + u128::from(placement.byte_size);
        if data_end > u128::from(file_length) {
            return Err(GgufError::TensorDataPastEnd {
                tensor: info.name.clone(),
                data_section_start: u64::try_from(data_section_start).unwrap_or(u64::MAX),
                relative_offset: placement.relative_offset,
                byte_size: placement.byte_size,
                file_length,
            });
        }
    }
    Ok(table)
}

fn read_tensor_info<R: Read + Seek>(
    reader: &mut BoundedReader<R>,
    tensor_index: u64,
    alignment: u64,
) -> Result<(TensorInfo, DataPlacement), GgufError> {
    let name_offset = reader.position();
    let describe_name = || format!("the name of tensor #{tensor_index}");
    let name_bytes = read_string_bytes(reader, MAX_NAME_LENGTH, &describe_name)?;
    let name = decode_name(name_bytes, name_offset, &describe_name)?;
    let describe = |field: &str| format!("the {field} of tensor '{}'", printable(&name));

    let dimension_count = reader.read_u32(|| describe("dimension count"))?;
    // Checked before reading the dimensions, so a huge count cannot drive a long loop.
    if !(1..=MAX_TENSOR_DIMENSIONS).contains(&dimension_count) {
        return Err(GgufError::TensorDimensionCount { tensor: name, dimension_count });
    }
    let mut dimensions = Vec::new();
    for _ in 0..dimension_count {
        dimensions.push(reader.read_u64(|| describe("dimensions"))?);
    }
    let type_id = reader.read_u32(|| describe("ggml type"))?;
    let relative_offset = reader.read_u64(|| describe("data offset"))?;

    if let Some(dimension_index) = dimensions.iter().position(|&dimension| dimension == 0) {
        return Err(GgufError::ZeroTensorDimension { tensor: name, dimension_index, dimensions });
    }
    let Some(ggml_type) = GgmlType::from_type_id(type_id) else {
        return Err(GgufError::UnsupportedTensorType { tensor: name, type_id });
    };
    let Some(element_count) = dimensions.iter().try_fold(1u64, |product, &dimension| product.checked_mul(dimension))
    else {
        return Err(GgufError::TensorElementCountOverflow { tensor: name, dimensions });
    };
    // Quantised rows are stored as whole blocks; a row length that is not a multiple of the block
    // size has no valid encoding. The first dimension always exists (at least one is required).
    let first_dimension = dimensions.first().copied().unwrap_or(0);
    if first_dimension % ggml_type.elements_per_block != 0 {
        return Err(GgufError::TensorRowNotMultipleOfBlock {
            tensor: name,
            first_dimension,
            type_name: ggml_type.name,
            block_size: ggml_type.elements_per_block,
        });
    }
    let Some(byte_size) = (element_count / ggml_type.elements_per_block).checked_mul(ggml_type.bytes_per_block) else {
        return Err(GgufError::TensorByteSizeOverflow { tensor: name, element_count, type_name: ggml_type.name });
    };
    // checked_rem: the caller guarantees a non-zero alignment, but a zero must never divide.
    if relative_offset.checked_rem(alignment) != Some(0) {
        return Err(GgufError::UnalignedTensorOffset { tensor: name, offset: relative_offset, alignment });
    }
    Ok((TensorInfo { name, dimensions, ggml_type }, DataPlacement { relative_offset, byte_size }))
}
