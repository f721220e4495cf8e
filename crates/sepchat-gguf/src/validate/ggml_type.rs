//! The ggml tensor types candle 0.11 can load, with their block geometry.

/// One ggml storage type: how many elements share a block and how many bytes a block takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GgmlType {
    pub(crate) type_id: u32,
    pub(crate) name: &'static str,
    pub(crate) elements_per_block: u64,
    pub(crate) bytes_per_block: u64,
}

/// The types candle 0.11 (`GgmlDType::from_u32`) accepts, in type-id order. Block sizes and bytes
/// per block follow ggml (`ggml_type_traits`) and candle's `k_quants` block structs; any other id
/// makes candle fail, so we refuse it here first.
pub(crate) const SUPPORTED_GGML_TYPES: [GgmlType; 15] = [
    GgmlType { type_id: 0, name: "F32", elements_per_block: 1, bytes_per_block: 4 },
    GgmlType { type_id: 1, name: "F16", elements_per_block: 1, bytes_per_block: 2 },
    GgmlType { type_id: 2, name: "Q4_0", elements_per_block: 32, bytes_per_block: 18 },
    GgmlType { type_id: 3, name: "Q4_1", elements_per_block: 32, bytes_per_block: 20 },
    GgmlType { type_id: 6, name: "Q5_0", elements_per_block: 32, bytes_per_block: 22 },
    GgmlType { type_id: 7, name: "Q5_1", elements_per_block: 32, bytes_per_block: 24 },
    GgmlType { type_id: 8, name: "Q8_0", elements_per_block: 32, bytes_per_block: 34 },
    GgmlType { type_id: 9, name: "Q8_1", elements_per_block: 32, bytes_per_block: 36 },
    GgmlType { type_id: 10, name: "Q2_K", elements_per_block: 256, bytes_per_block: 84 },
    GgmlType { type_id: 11, name: "Q3_K", elements_per_block: 256, bytes_per_block: 110 },
    GgmlType { type_id: 12, name: "Q4_K", elements_per_block: 256, bytes_per_block: 144 },
    GgmlType { type_id: 13, name: "Q5_K", elements_per_block: 256, bytes_per_block: 176 },
    GgmlType { type_id: 14, name: "Q6_K", elements_per_block: 256, bytes_per_block: 210 },
    GgmlType { type_id: 15, name: "Q8_K", elements_per_block: 256, bytes_per_block: 292 },
    GgmlType { type_id: 30, name: "BF16", elements_per_block: 1, bytes_per_block: 2 },
];

impl GgmlType {
    /// The supported type with this id, or `None` for ids candle cannot load.
    pub(crate) fn from_type_id(type_id: u32) -> Option<GgmlType> {
        SUPPORTED_GGML_TYPES.iter().copied().find(|ggml_type| ggml_type.type_id == type_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_ids_are_unique_and_sorted() {
        for pair in SUPPORTED_GGML_TYPES.windows(2) {
            assert!(pair[0].type_id < pair[1].type_id, "{pair:?}");
        }
    }

    #[test]
    fn block_geometry_matches_ggml() {
        let geometry = |type_id| {
            let ggml_type = GgmlType::from_type_id(type_id).unwrap();
            (ggml_type.elements_per_block, ggml_type.bytes_per_block)
        };
        // Quantised blocks store a scale (and maybe a minimum) next to packed weights, so bytes per
        // block = packed weights + f16 scale/min fields.
        assert_eq!(geometry(2), (32, 2 + 16)); // Q4_0: d + 32 nibbles
        assert_eq!(geometry(3), (32, 2 + 2 + 16)); // Q4_1: d, m + 32 nibbles
        assert_eq!(geometry(6), (32, 2 + 4 + 16)); // Q5_0: d, high bits, nibbles
        assert_eq!(geometry(7), (32, 2 + 2 + 4 + 16)); // Q5_1
        assert_eq!(geometry(8), (32, 2 + 32)); // Q8_0
        assert_eq!(geometry(9), (32, 2 + 2 + 32)); // Q8_1
        assert_eq!(geometry(10), (256, 16 + 64 + 2 + 2)); // Q2_K
        assert_eq!(geometry(11), (256, 32 + 64 + 12 + 2)); // Q3_K
        assert_eq!(geometry(12), (256, 2 + 2 + 12 + 128)); // Q4_K
        assert_eq!(geometry(13), (256, 2 + 2 + 12 + 32 + 128)); // Q5_K
        assert_eq!(geometry(14), (256, 128 + 64 + 16 + 2)); // Q6_K
        assert_eq!(geometry(15), (256, 4 + 256 + 32)); // Q8_K
        assert_eq!(GgmlType::from_type_id(4), None); // Q4_2 was removed from ggml
        assert_eq!(GgmlType::from_type_id(16), None); // IQ2_XXS: candle cannot load it
        assert_eq!(GgmlType::from_type_id(99), None);
    }
}
