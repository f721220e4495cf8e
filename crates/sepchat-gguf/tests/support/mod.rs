//! A tiny GGUF writer for tests: builds a valid minimal Llama in memory and records where every
//! field lives, so tests can corrupt exactly one field.

#![allow(dead_code)] // Each test binary uses a different part of the helpers.

/// A metadata value, written with its GGUF type id.
#[derive(Debug, Clone)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    /// Element type id, then the elements (which must all be of that type).
    Array(u32, Vec<Value>),
}

impl Value {
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(..) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::Str(text) => write_string(out, text),
            Value::Array(element_type, elements) => {
                out.extend_from_slice(&element_type.to_le_bytes());
                out.extend_from_slice(&(elements.len() as u64).to_le_bytes());
                for element in elements {
                    assert_eq!(element.type_id(), *element_type, "mixed array");
                    element.write(out);
                }
            }
        }
    }
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// One tensor to write; its data is zeroed, `data_length` bytes long.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dimensions: Vec<u64>,
    pub type_id: u32,
    pub data_length: u64,
}

impl TensorSpec {
    /// An F32 tensor (4 bytes per element).
    pub fn f32(name: &str, dimensions: &[u64]) -> TensorSpec {
        let elements: u64 = dimensions.iter().product();
        TensorSpec { name: name.to_string(), dimensions: dimensions.to_vec(), type_id: 0, data_length: elements * 4 }
    }
}

/// Byte offsets of one metadata entry's fields.
#[derive(Debug, Clone)]
pub struct EntryLayout {
    pub key: String,
    /// Offset of the key's u64 length; the key bytes follow it.
    pub key_length_offset: u64,
    pub value_type_offset: u64,
    /// Offset of the value (for a string: its u64 length; for an array: its element type).
    pub value_offset: u64,
    pub end_offset: u64,
}

/// Byte offsets of one tensor info's fields, and of its data.
#[derive(Debug, Clone)]
pub struct TensorLayout {
    pub name: String,
    pub name_length_offset: u64,
    pub dimension_count_offset: u64,
    pub dimensions_offset: u64,
    pub type_offset: u64,
    pub offset_field_offset: u64,
    pub relative_data_offset: u64,
    pub absolute_data_offset: u64,
    pub data_length: u64,
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub metadata: Vec<EntryLayout>,
    pub tensors: Vec<TensorLayout>,
    pub tensor_table_end: u64,
    pub data_section_start: u64,
}

impl Layout {
    pub fn entry(&self, key: &str) -> &EntryLayout {
        self.metadata.iter().find(|entry| entry.key == key).unwrap_or_else(|| panic!("no metadata key {key}"))
    }

    pub fn tensor(&self, name: &str) -> &TensorLayout {
        self.tensors.iter().find(|tensor| tensor.name == name).unwrap_or_else(|| panic!("no tensor {name}"))
    }
}

/// A written file and where its fields are.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub bytes: Vec<u8>,
    pub layout: Layout,
}

impl GgufFile {
    pub fn patch_u32(&mut self, offset: u64, value: u32) {
        let start = offset as usize;
        self.bytes[start..start + 4].copy_from_slice(&value.to_le_bytes());
    }

    pub fn patch_u64(&mut self, offset: u64, value: u64) {
        let start = offset as usize;
        self.bytes[start..start + 8].copy_from_slice(&value.to_le_bytes());
    }

    pub fn patch_byte(&mut self, offset: u64, value: u8) {
        self.bytes[offset as usize] = value;
    }

    /// The first `length` bytes, as a truncated file.
    pub fn prefix(&self, length: u64) -> &[u8] {
        &self.bytes[..length as usize]
    }
}

fn align_up(value: u64, alignment: u64) -> u64 {
    value.div_ceil(alignment) * alignment
}

/// Writes a GGUF file: header, metadata, tensor infos, zero padding to `alignment`, then each
/// tensor's zeroed data at an aligned offset.
pub fn write_gguf(version: u32, metadata: &[(String, Value)], tensors: &[TensorSpec], alignment: u64) -> GgufFile {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());

    let mut metadata_layout = Vec::new();
    for (key, value) in metadata {
        let key_length_offset = out.len() as u64;
        write_string(&mut out, key);
        let value_type_offset = out.len() as u64;
        out.extend_from_slice(&value.type_id().to_le_bytes());
        let value_offset = out.len() as u64;
        value.write(&mut out);
        metadata_layout.push(EntryLayout {
            key: key.clone(),
            key_length_offset,
            value_type_offset,
            value_offset,
            end_offset: out.len() as u64,
        });
    }

    let mut tensor_layout = Vec::new();
    let mut next_relative_offset = 0u64;
    for tensor in tensors {
        let name_length_offset = out.len() as u64;
        write_string(&mut out, &tensor.name);
        let dimension_count_offset = out.len() as u64;
        out.extend_from_slice(&(tensor.dimensions.len() as u32).to_le_bytes());
        let dimensions_offset = out.len() as u64;
        for dimension in &tensor.dimensions {
            out.extend_from_slice(&dimension.to_le_bytes());
        }
        let type_offset = out.len() as u64;
        out.extend_from_slice(&tensor.type_id.to_le_bytes());
        let offset_field_offset = out.len() as u64;
        out.extend_from_slice(&next_relative_offset.to_le_bytes());
        tensor_layout.push(TensorLayout {
            name: tensor.name.clone(),
            name_length_offset,
            dimension_count_offset,
            dimensions_offset,
            type_offset,
            offset_field_offset,
            relative_data_offset: next_relative_offset,
            absolute_data_offset: 0, // Filled in once the data section start is known.
            data_length: tensor.data_length,
        });
        next_relative_offset = align_up(next_relative_offset + tensor.data_length, alignment);
    }

    let tensor_table_end = out.len() as u64;
    let data_section_start = align_up(tensor_table_end, alignment);
    out.resize(data_section_start as usize, 0);
    for tensor in &mut tensor_layout {
        tensor.absolute_data_offset = data_section_start + tensor.relative_data_offset;
        out.resize((tensor.absolute_data_offset + tensor.data_length) as usize, 0);
    }

    GgufFile {
        bytes: out,
        layout: Layout { metadata: metadata_layout, tensors: tensor_layout, tensor_table_end, data_section_start },
    }
}

/// Replaces the value of `key`, or appends it if absent.
pub fn set_metadata(metadata: &mut Vec<(String, Value)>, key: &str, value: Value) {
    match metadata.iter_mut().find(|(existing, _)| existing == key) {
        Some(entry) => entry.1 = value,
        None => metadata.push((key.to_string(), value)),
    }
}

pub fn remove_metadata(metadata: &mut Vec<(String, Value)>, key: &str) {
    metadata.retain(|(existing, _)| existing != key);
}

/// The parameters of a tiny but complete Llama; `Default` is valid.
#[derive(Debug, Clone)]
pub struct TinyLlama {
    pub architecture: String,
    pub version: u32,
    pub block_count: u32,
    pub head_count: u32,
    pub head_count_kv: Option<u32>,
    pub embedding_length: u32,
    pub feed_forward_length: u32,
    pub vocabulary_size: u64,
    pub context_length: Option<u32>,
    /// Written as `general.alignment` (u32) when `Some`; the layout uses 32 otherwise.
    pub alignment: Option<u32>,
    /// Whether to leave out `output.weight` (tied to the token embedding).
    pub tied_output: bool,
}

impl Default for TinyLlama {
    fn default() -> Self {
        TinyLlama {
            architecture: "llama".to_string(),
            version: 3,
            block_count: 2,
            head_count: 4,
            head_count_kv: Some(2),
            embedding_length: 32,
            feed_forward_length: 64,
            vocabulary_size: 16,
            context_length: Some(256),
            alignment: Some(32),
            tied_output: true,
        }
    }
}

/// Keys of the tiny Llama's last metadata entry, whose bytes lie past the counts sanity check's
/// reach, so truncating inside it exercises the per-field checks.
pub const LAST_METADATA_KEY: &str = "llama.attention.layer_norm_rms_epsilon";

impl TinyLlama {
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let head_dimension = self.embedding_length / self.head_count.max(1);
        let mut metadata = vec![
            ("general.architecture".to_string(), Value::Str(self.architecture.clone())),
            ("general.name".to_string(), Value::Str("tiny test llama".to_string())),
            // Long enough that the metadata section is bigger than the smallest possible header
            // for its counts, so truncations late in the metadata reach the per-field checks.
            ("tokenizer.chat_template".to_string(), Value::Str("{{ message }}\n".repeat(100))),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(8, (0..self.vocabulary_size).map(|token| Value::Str(format!("token{token}"))).collect()),
            ),
        ];
        if let Some(alignment) = self.alignment {
            metadata.push(("general.alignment".to_string(), Value::U32(alignment)));
        }
        metadata.push(("llama.block_count".to_string(), Value::U32(self.block_count)));
        if let Some(context_length) = self.context_length {
            metadata.push(("llama.context_length".to_string(), Value::U32(context_length)));
        }
        metadata.push(("llama.embedding_length".to_string(), Value::U32(self.embedding_length)));
        metadata.push(("llama.feed_forward_length".to_string(), Value::U32(self.feed_forward_length)));
        metadata.push(("llama.attention.head_count".to_string(), Value::U32(self.head_count)));
        if let Some(head_count_kv) = self.head_count_kv {
            metadata.push(("llama.attention.head_count_kv".to_string(), Value::U32(head_count_kv)));
        }
        metadata.push(("llama.rope.dimension_count".to_string(), Value::U32(head_dimension)));
        metadata.push((LAST_METADATA_KEY.to_string(), Value::F32(1e-5)));
        metadata
    }

    pub fn tensors(&self) -> Vec<TensorSpec> {
        let embedding = u64::from(self.embedding_length);
        let head_dimension = embedding / u64::from(self.head_count.max(1));
        let key_value_width = u64::from(self.head_count_kv.unwrap_or(self.head_count)) * head_dimension;
        let feed_forward = u64::from(self.feed_forward_length);
        let mut tensors = vec![
            TensorSpec::f32("token_embd.weight", &[embedding, self.vocabulary_size]),
            TensorSpec::f32("output_norm.weight", &[embedding]),
        ];
        if !self.tied_output {
            tensors.push(TensorSpec::f32("output.weight", &[embedding, self.vocabulary_size]));
        }
        for block in 0..self.block_count {
            let name = |suffix: &str| format!("blk.{block}.{suffix}.weight");
            tensors.push(TensorSpec::f32(&name("attn_norm"), &[embedding]));
            tensors.push(TensorSpec::f32(&name("attn_q"), &[embedding, embedding]));
            tensors.push(TensorSpec::f32(&name("attn_k"), &[embedding, key_value_width]));
            tensors.push(TensorSpec::f32(&name("attn_v"), &[embedding, key_value_width]));
            tensors.push(TensorSpec::f32(&name("attn_output"), &[embedding, embedding]));
            tensors.push(TensorSpec::f32(&name("ffn_norm"), &[embedding]));
            tensors.push(TensorSpec::f32(&name("ffn_gate"), &[embedding, feed_forward]));
            tensors.push(TensorSpec::f32(&name("ffn_up"), &[embedding, feed_forward]));
            tensors.push(TensorSpec::f32(&name("ffn_down"), &[feed_forward, embedding]));
        }
        tensors
    }

    /// The layout alignment: the declared one when it is usable, else the default 32.
    pub fn layout_alignment(&self) -> u64 {
        match self.alignment {
            Some(alignment) if alignment.is_power_of_two() => u64::from(alignment),
            _ => 32,
        }
    }

    pub fn build(&self) -> GgufFile {
        write_gguf(self.version, &self.metadata(), &self.tensors(), self.layout_alignment())
    }

    /// Builds with the metadata and tensor lists edited first.
    pub fn build_with(&self, edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<TensorSpec>)) -> GgufFile {
        let mut metadata = self.metadata();
        let mut tensors = self.tensors();
        edit(&mut metadata, &mut tensors);
        write_gguf(self.version, &metadata, &tensors, self.layout_alignment())
    }
}

/// A deterministic linear congruential generator (Knuth's MMIX constants), so property tests
/// need no extra crates and every failure is reproducible from its iteration number.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        // The high bits of an LCG are the most random ones.
        self.0 >> 16
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}
