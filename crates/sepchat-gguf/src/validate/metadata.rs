//! The metadata key/value section: every value is walked and bounds-checked, only scalars are kept.

use std::collections::HashMap;
use std::io::{Read, Seek};

use super::error::GgufError;
use super::reader::BoundedReader;
use super::{
    DEFAULT_ALIGNMENT, MAX_ARRAY_NESTING_DEPTH, MAX_METADATA_ARRAY_ELEMENTS, MAX_NAME_LENGTH, MAX_STRING_VALUE_LENGTH,
};

/// The key holding the tensor data alignment.
pub(crate) const ALIGNMENT_KEY: &str = "general.alignment";

/// The value types GGUF defines, by their on-disk id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub(crate) fn from_type_id(type_id: u32) -> Option<ValueType> {
        Some(match type_id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type can take on disk, used to reject array lengths that
    /// cannot possibly fit in the rest of the file. Exact for the fixed-size types.
    fn minimum_encoded_bytes(self) -> u64 {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 8,
            // An empty string is just its u64 length.
            ValueType::String => 8,
            // An empty array is its u32 element type and u64 length.
            ValueType::Array => 4 + 8,
        }
    }
}

/// What we keep of a value: integers and strings, the only kinds the checks read. Floats, booleans
/// and arrays are checked while walking past them, then only their type is kept.
#[derive(Debug, Clone)]
pub(crate) enum MetadataValue {
    /// Any of the eight integer types, widened so negative and u64 values keep their meaning.
    Integer(i128),
    Text(String),
    /// A float, boolean or array: validated, not kept.
    NotKept,
}

#[derive(Debug, Clone)]
pub(crate) struct MetadataEntry {
    pub(crate) value_type: ValueType,
    pub(crate) value: MetadataValue,
}

/// All metadata entries by key.
#[derive(Debug, Default)]
pub(crate) struct Metadata {
    entries: HashMap<String, MetadataEntry>,
}

/// Counts array elements across the whole metadata section against [`MAX_METADATA_ARRAY_ELEMENTS`].
struct ArrayElementBudget {
    elements_used: u64,
}

/// Escapes a name read from the file for use inside an error message.
pub(crate) fn printable(name: &str) -> String {
    name.escape_debug().to_string()
}

impl Metadata {
    /// An integer stored as any integer type, which must lie in `0..=u32::MAX`; `None` if absent.
    pub(crate) fn optional_u32(&self, key: &'static str) -> Result<Option<u32>, GgufError> {
        let Some(entry) = self.entries.get(key) else {
            return Ok(None);
        };
        match entry.value {
            MetadataValue::Integer(value) => {
                u32::try_from(value).map(Some).map_err(|_| GgufError::MetadataValueOutOfRange {
                    key: key.to_string(),
                    value,
                    minimum: 0,
                    maximum: i128::from(u32::MAX),
                })
            }
            _ => Err(GgufError::MetadataWrongType {
                key: key.to_string(),
                expected: "an integer",
                found: entry.value_type.name(),
            }),
        }
    }

    /// Like [`Metadata::optional_u32`], but the key must be present.
    pub(crate) fn required_u32(&self, key: &'static str) -> Result<u32, GgufError> {
        self.optional_u32(key)?.ok_or(GgufError::MissingMetadata { key })
    }

    /// A string value that must be present.
    pub(crate) fn required_string(&self, key: &'static str) -> Result<&str, GgufError> {
        let entry = self.entries.get(key).ok_or(GgufError::MissingMetadata { key })?;
        match &entry.value {
            MetadataValue::Text(text) => Ok(text),
            _ => Err(GgufError::MetadataWrongType {
                key: key.to_string(),
                expected: "a string",
                found: entry.value_type.name(),
            }),
        }
    }

    /// The tensor data alignment: `general.alignment` if present, else 32.
    ///
    /// Unlike the hyperparameters, only a u32 is accepted, as the GGUF spec says: candle reads the
    /// alignment from u8/u16/u32/i8/i16/i32 but silently falls back to 32 for u64/i64, so accepting
    /// those would make us check offsets against a different alignment than the loader uses.
    pub(crate) fn alignment(&self) -> Result<u64, GgufError> {
        let Some(entry) = self.entries.get(ALIGNMENT_KEY) else {
            return Ok(DEFAULT_ALIGNMENT);
        };
        match (entry.value_type, &entry.value) {
            (ValueType::U32, MetadataValue::Integer(value)) => {
                let alignment = u64::try_from(*value).unwrap_or(0);
                if alignment == 0 || !alignment.is_power_of_two() {
                    return Err(GgufError::AlignmentNotPowerOfTwo { alignment });
                }
                Ok(alignment)
            }
            _ => Err(GgufError::MetadataWrongType {
                key: ALIGNMENT_KEY.to_string(),
                expected: "a u32",
                found: entry.value_type.name(),
            }),
        }
    }
}

/// Reads a string's u64 length and checks it against the remaining bytes, then against `limit`.
fn read_checked_string_length<R: Read + Seek>(
    reader: &mut BoundedReader<R>,
    limit: u64,
    what: &dyn Fn() -> String,
) -> Result<u64, GgufError> {
    let length_offset = reader.position();
    let length = reader.read_u64(|| format!("the length of {}", what()))?;
    // The remaining-bytes check comes first: a length the file cannot hold is the more basic fault.
    if length > reader.remaining() {
        return Err(GgufError::StringLengthPastEnd {
            what: what(),
            offset: length_offset,
            length,
            remaining_bytes: reader.remaining(),
        });
    }
    if length > limit {
        return Err(GgufError::StringTooLong { what: what(), offset: length_offset, length, limit });
    }
    Ok(length)
}

/// Reads a length-prefixed string's bytes, with the length bounded before anything is allocated.
pub(crate) fn read_string_bytes<R: Read + Seek>(
    reader: &mut BoundedReader<R>,
    limit: u64,
    what: &dyn Fn() -> String,
) -> Result<Vec<u8>, GgufError> {
    let length = read_checked_string_length(reader, limit, what)?;
    reader.read_vec(length, || format!("the bytes of {}", what()))
}

/// Walks past a length-prefixed string without keeping it.
fn skip_string<R: Read + Seek>(
    reader: &mut BoundedReader<R>,
    limit: u64,
    what: &dyn Fn() -> String,
) -> Result<(), GgufError> {
    let length = read_checked_string_length(reader, limit, what)?;
    reader.skip(length, || format!("the bytes of {}", what()))
}

/// Turns a key or tensor name into a `String`: trailing NUL bytes are dropped (candle drops them
/// too, so "a\0" and "a" are the same name to it and must be to our duplicate checks), and the
/// rest must be UTF-8 (candle would decode lossily, letting two different byte strings collide).
pub(crate) fn decode_name(mut bytes: Vec<u8>, offset: u64, what: &dyn Fn() -> String) -> Result<String, GgufError> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    String::from_utf8(bytes).map_err(|error| GgufError::InvalidUtf8 {
        what: what(),
        offset,
        lossy: String::from_utf8_lossy(error.as_bytes()).into_owned(),
    })
}

/// Reads `metadata_count` key/value pairs. The count has already been checked against the file size.
pub(crate) fn read_metadata<R: Read + Seek>(
    reader: &mut BoundedReader<R>,
    metadata_count: u64,
) -> Result<Metadata, GgufError> {
    let mut metadata = Metadata::default();
    let mut array_budget = ArrayElementBudget { elements_used: 0 };
    for entry_index in 0..metadata_count {
        let key_offset = reader.position();
        let describe_key = || format!("metadata key #{entry_index}");
        let key_bytes = read_string_bytes(reader, MAX_NAME_LENGTH, &describe_key)?;
        let key = decode_name(key_bytes, key_offset, &describe_key)?;
        if metadata.entries.contains_key(&key) {
            return Err(GgufError::DuplicateMetadataKey { key });
        }
        let type_offset = reader.position();
        let type_id = reader.read_u32(|| format!("the value type of metadata key '{}'", printable(&key)))?;
        let value_type = ValueType::from_type_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            what: format!("metadata key '{}'", printable(&key)),
            type_id,
            offset: type_offset,
        })?;
        let value = read_value(reader, value_type, &key, &mut array_budget)?;
        metadata.entries.insert(key, MetadataEntry { value_type, value });
    }
    Ok(metadata)
}

fn read_value<R: Read + Seek>(
    reader: &mut BoundedReader<R>,
    value_type: ValueType,
    key: &str,
    array_budget: &mut ArrayElementBudget,
) -> Result<MetadataValue, GgufError> {
    let describe_value = || format!("the value of metadata key '{}'", printable(key));
    let value = match value_type {
        ValueType::U8 => MetadataValue::Integer(i128::from(u8::from_le_bytes(reader.read_array(describe_value)?))),
        ValueType::I8 => MetadataValue::Integer(i128::from(i8::from_le_bytes(reader.read_array(describe_value)?))),
        ValueType::U16 => MetadataValue::Integer(i128::from(u16::from_le_bytes(reader.read_array(describe_value)?))),
        ValueType::I16 => MetadataValue::Integer(i128::from(i16::from_le_bytes(reader.read_array(describe_value)?))),
        ValueType::U32 => MetadataValue::Integer(i128::from(u32::from_le_bytes(reader.read_array(describe_value)?))),
        ValueType::I32 => MetadataValue::Integer(i128::from(i32::from_le_bytes(reader.read_array(describe_value)?))),
        ValueType::U64 => MetadataValue::Integer(i128::from(u64::from_le_bytes(reader.read_array(describe_value)?))),
        ValueType::I64 => MetadataValue::Integer(i128::from(i64::from_le_bytes(reader.read_array(describe_value)?))),
        ValueType::F32 => {
            reader.read_array::<4>(describe_value)?;
            MetadataValue::NotKept
        }
        ValueType::F64 => {
            reader.read_array::<8>(describe_value)?;
            MetadataValue::NotKept
        }
        ValueType::Bool => {
            read_bool(reader, key)?;
            MetadataValue::NotKept
        }
        ValueType::String => {
            let mut bytes = read_string_bytes(reader, MAX_STRING_VALUE_LENGTH, &describe_value)?;
            // Values, unlike keys, may be lossily decoded (candle does the same); trailing NULs are
            // dropped to match what candle will see.
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
            MetadataValue::Text(String::from_utf8_lossy(&bytes).into_owned())
        }
        ValueType::Array => {
            walk_array(reader, key, 1, array_budget)?;
            MetadataValue::NotKept
        }
    };
    Ok(value)
}

fn read_bool<R: Read + Seek>(reader: &mut BoundedReader<R>, key: &str) -> Result<bool, GgufError> {
    let offset = reader.position();
    match reader.read_u8(|| format!("a boolean in metadata key '{}'", printable(key)))? {
        0 => Ok(false),
        1 => Ok(true),
        // candle refuses any other byte, so we must too.
        byte => Err(GgufError::InvalidBool { key: key.to_string(), byte, offset }),
    }
}

/// Walks an array (its element type and length come next in the file), checking every element
/// without keeping any. `depth` is 1 for an array directly under a key.
fn walk_array<R: Read + Seek>(
    reader: &mut BoundedReader<R>,
    key: &str,
    depth: u32,
    array_budget: &mut ArrayElementBudget,
) -> Result<(), GgufError> {
    if depth > MAX_ARRAY_NESTING_DEPTH {
        return Err(GgufError::ArrayNestingTooDeep { key: key.to_string(), depth, limit: MAX_ARRAY_NESTING_DEPTH });
    }
    let type_offset = reader.position();
    let element_type_id = reader.read_u32(|| format!("an array element type in metadata key '{}'", printable(key)))?;
    let element_type = ValueType::from_type_id(element_type_id).ok_or_else(|| GgufError::UnknownValueType {
        what: format!("an array in metadata key '{}'", printable(key)),
        type_id: element_type_id,
        offset: type_offset,
    })?;
    let length_offset = reader.position();
    let length = reader.read_u64(|| format!("an array length in metadata key '{}'", printable(key)))?;

    // Before walking (or, in a loader, allocating) anything: the elements must fit in the file...
    let minimum_bytes_each = element_type.minimum_encoded_bytes();
    let remaining_bytes = reader.remaining();
    if u128::from(length) * u128::from(minimum_bytes_each) > u128::from(remaining_bytes) {
        return Err(GgufError::ArrayLengthPastEnd {
            key: key.to_string(),
            offset: length_offset,
            length,
            element_type: element_type.name(),
            minimum_bytes_each,
            remaining_bytes,
        });
    }
    // ...and stay within the total element budget, since a loader materialises every element.
    let elements_before = array_budget.elements_used;
    match elements_before.checked_add(length) {
        Some(total) if total <= MAX_METADATA_ARRAY_ELEMENTS => array_budget.elements_used = total,
        _ => {
            return Err(GgufError::ArrayElementBudgetExceeded {
                key: key.to_string(),
                length,
                elements_before,
                limit: MAX_METADATA_ARRAY_ELEMENTS,
            })
        }
    }

    match element_type {
        ValueType::Bool => {
            for _ in 0..length {
                read_bool(reader, key)?;
            }
        }
        ValueType::String => {
            for element_index in 0..length {
                skip_string(reader, MAX_STRING_VALUE_LENGTH, &|| {
                    format!("element {element_index} of an array in metadata key '{}'", printable(key))
                })?;
            }
        }
        ValueType::Array => {
            for _ in 0..length {
                walk_array(reader, key, depth + 1, array_budget)?;
            }
        }
        fixed_size => {
            // Cannot overflow: length * size was checked against the remaining bytes above.
            let byte_count = length * fixed_size.minimum_encoded_bytes();
            reader.skip(byte_count, || format!("the array in metadata key '{}'", printable(key)))?;
        }
    }
    Ok(())
}
