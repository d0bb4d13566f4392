//! A validating reader of one safetensors file.
//!
//! The format (<https://github.com/huggingface/safetensors>): 8 bytes little-endian header length
//! `n`, `n` bytes of JSON mapping tensor names to `{dtype, shape, data_offsets: [begin, end]}`
//! (offsets relative to the data section that follows) plus an optional `__metadata__` map of
//! strings, then the data section. Every check the reference implementation makes is made here
//! too, but each failure names the file and the tensor, so a user can tell which shard and which
//! entry a converter got wrong.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::dtype::Dtype;
use crate::error::{QuantizeError, Result};
use crate::mapped::MappedFile;

/// The largest header accepted, as in the reference implementation: a larger one is far more
/// likely a corrupt length than a real header.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Bytes of the little-endian header-length prefix.
const LENGTH_PREFIX_BYTES: usize = 8;

/// One tensor entry of a safetensors header, validated against the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its bytes within the file (absolute offsets, not relative to the data section).
    pub file_range: Range<usize>,
}

impl TensorEntry {
    /// Number of elements.
    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of bytes.
    pub fn byte_len(&self) -> usize {
        self.file_range.len()
    }
}

/// A memory-mapped safetensors file whose header has been fully validated.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: MappedFile,
    tensors: Vec<TensorEntry>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Maps and validates `path`.
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let map = MappedFile::open(path)?;
        let (tensors, metadata) = parse(path, map.bytes())?;
        Ok(SafetensorsFile { path: path.to_path_buf(), map, tensors, metadata })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensors, in the order of their data in the file.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The header's `__metadata__` map (empty when absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The raw little-endian bytes of `tensor`, which must come from this file.
    pub fn bytes(&self, tensor: &TensorEntry) -> &[u8] {
        &self.map.bytes()[tensor.file_range.clone()]
    }

    /// Lets the kernel drop the resident pages of `range` (absolute file offsets) once they have
    /// been processed.
    pub fn release(&self, range: Range<usize>) {
        self.map.release(range);
    }
}

fn invalid(path: &Path, problem: impl Into<String>) -> QuantizeError {
    QuantizeError::InvalidSafetensors { path: path.to_path_buf(), problem: problem.into() }
}

fn invalid_tensor(path: &Path, tensor: &str, problem: impl Into<String>) -> QuantizeError {
    QuantizeError::InvalidTensor { path: path.to_path_buf(), tensor: tensor.to_string(), problem: problem.into() }
}

/// Parses and validates the header of a safetensors file held in `bytes`.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<(Vec<TensorEntry>, BTreeMap<String, String>)> {
    if bytes.len() < LENGTH_PREFIX_BYTES {
        return Err(invalid(
            path,
            format!(
                "file is truncated: {} bytes, shorter than the {LENGTH_PREFIX_BYTES}-byte header length",
                bytes.len()
            ),
        ));
    }
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    prefix.copy_from_slice(&bytes[..LENGTH_PREFIX_BYTES]);
    let header_len = u64::from_le_bytes(prefix);
    let available = (bytes.len() - LENGTH_PREFIX_BYTES) as u64;
    if header_len > available {
        return Err(invalid(
            path,
            format!(
                "header length {header_len} is larger than the {available} bytes that follow it \
                 (file truncated, or not a safetensors file)"
            ),
        ));
    }
    if header_len > MAX_HEADER_BYTES {
        return Err(invalid(path, format!("header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit")));
    }
    let data_start = LENGTH_PREFIX_BYTES + header_len as usize;
    let header_bytes = &bytes[LENGTH_PREFIX_BYTES..data_start];
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(header_bytes).map_err(|e| invalid(path, format!("header is not a JSON object: {e}")))?;
    let data_len = bytes.len() - data_start;

    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(header.len());
    for (name, entry) in &header {
        if name == "__metadata__" {
            metadata = parse_metadata(path, entry)?;
            continue;
        }
        let (dtype, shape, relative) = parse_entry(path, name, entry)?;
        let element_count = shape
            .iter()
            .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))
            .ok_or_else(|| invalid_tensor(path, name, format!("shape {shape:?} overflows the element count")))?;
        let expected = element_count
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| invalid_tensor(path, name, format!("shape {shape:?} overflows the byte count")))?;
        let (begin, end) = relative;
        if end < begin {
            return Err(invalid_tensor(path, name, format!("data_offsets [{begin}, {end}] end before they begin")));
        }
        if end > data_len {
            return Err(invalid_tensor(
                path,
                name,
                format!(
                    "data_offsets [{begin}, {end}] lie outside the {data_len}-byte data section \
                     (file truncated, or offsets wrong)"
                ),
            ));
        }
        if end - begin != expected {
            return Err(invalid_tensor(
                path,
                name,
                format!(
                    "data_offsets [{begin}, {end}] span {} bytes, but dtype {dtype} with shape {shape:?} needs {expected}",
                    end - begin
                ),
            ));
        }
        tensors.push(TensorEntry {
            name: name.clone(),
            dtype,
            shape,
            file_range: data_start + begin..data_start + end,
        });
    }

    // The data section must be covered exactly, without overlaps or holes, as the reference
    // implementation requires.
    tensors.sort_by_key(|t| (t.file_range.start, t.file_range.end));
    let mut covered_to = data_start;
    let mut previous: Option<&TensorEntry> = None;
    for tensor in &tensors {
        if tensor.file_range.start < covered_to {
            let other = previous.map(|p| p.name.as_str()).unwrap_or("?");
            return Err(invalid_tensor(
                path,
                &tensor.name,
                format!(
                    "data_offsets [{}, {}] overlap those of tensor `{other}`",
                    tensor.file_range.start - data_start,
                    tensor.file_range.end - data_start
                ),
            ));
        }
        if tensor.file_range.start > covered_to {
            return Err(invalid(
                path,
                format!(
                    "bytes {}..{} of the data section belong to no tensor (a hole before `{}`)",
                    covered_to - data_start,
                    tensor.file_range.start - data_start,
                    tensor.name
                ),
            ));
        }
        covered_to = tensor.file_range.end;
        previous = Some(tensor);
    }
    if covered_to != bytes.len() {
        return Err(invalid(
            path,
            format!("the data section has {} bytes but its tensors cover only {}", data_len, covered_to - data_start),
        ));
    }
    Ok((tensors, metadata))
}

fn parse_metadata(path: &Path, entry: &Value) -> Result<BTreeMap<String, String>> {
    let object = entry.as_object().ok_or_else(|| invalid(path, "`__metadata__` is not a JSON object"))?;
    object
        .iter()
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key.clone(), text.clone())),
            _ => Err(invalid(path, format!("`__metadata__.{key}` is not a string"))),
        })
        .collect()
}

fn parse_entry(path: &Path, name: &str, entry: &Value) -> Result<(Dtype, Vec<usize>, (usize, usize))> {
    let object = entry.as_object().ok_or_else(|| invalid_tensor(path, name, "entry is not a JSON object"))?;
    let dtype_name = object
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_tensor(path, name, "missing or non-string `dtype`"))?;
    let dtype = Dtype::from_name(dtype_name)
        .ok_or_else(|| invalid_tensor(path, name, format!("unknown dtype `{dtype_name}`")))?;
    let shape = object
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid_tensor(path, name, "missing or non-array `shape`"))?
        .iter()
        .map(|dim| dim.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| invalid_tensor(path, name, "`shape` holds something other than non-negative integers"))?;
    let offsets = object
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|offsets| offsets.len() == 2)
        .and_then(|offsets| {
            let begin = usize::try_from(offsets[0].as_u64()?).ok()?;
            let end = usize::try_from(offsets[1].as_u64()?).ok()?;
            Some((begin, end))
        })
        .ok_or_else(|| invalid_tensor(path, name, "`data_offsets` is not a pair of non-negative integers"))?;
    Ok((dtype, shape, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 0);
        bytes
    }

    fn error(bytes: &[u8]) -> String {
        parse(Path::new("m.safetensors"), bytes).unwrap_err().to_string()
    }

    #[test]
    fn valid_header_gives_entries_in_data_order() {
        let bytes = file(
            r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            12,
        );
        let (tensors, metadata) = parse(Path::new("m.safetensors"), &bytes).unwrap();
        assert_eq!(tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(metadata["format"], "pt");
        assert_eq!(tensors[1].byte_len(), 4);
    }

    #[test]
    fn each_inconsistency_is_named() {
        assert!(error(&[1, 2, 3]).contains("truncated"));
        let mut long = 1_000u64.to_le_bytes().to_vec();
        long.extend_from_slice(b"{}");
        assert!(error(&long).contains("header length 1000 is larger"));
        assert!(error(&file("not json", 0)).contains("not a JSON object"));
        let unknown = file(r#"{"w":{"dtype":"F17","shape":[1],"data_offsets":[0,4]}}"#, 4);
        assert!(error(&unknown).contains("tensor `w`: unknown dtype `F17`"));
        let mismatch = file(r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8);
        assert!(error(&mismatch).contains("needs 12"));
        let outside = file(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 4);
        assert!(error(&outside).contains("outside the 4-byte data section"));
        let overlap = file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
        );
        assert!(error(&overlap).contains("overlap those of tensor `a`"));
        let hole = file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8);
        assert!(error(&hole).contains("belong to no tensor"));
        let overflow = file(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#, 8);
        assert!(error(&overflow).contains("overflows"));
    }

    /// A valid file of up to four tensors (dtype index into `DTYPES`, shape) laid out in order.
    fn valid_file(tensors: &[(usize, Vec<usize>)]) -> Vec<u8> {
        const DTYPES: [Dtype; 5] = [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::I8, Dtype::I32];
        let mut entries = Vec::new();
        let mut offset = 0;
        for (i, (dtype, shape)) in tensors.iter().enumerate() {
            let dtype = DTYPES[dtype % DTYPES.len()];
            let len = shape.iter().product::<usize>() * dtype.size_in_bytes();
            entries.push(format!(
                r#""t{i}":{{"dtype":"{}","shape":{shape:?},"data_offsets":[{offset},{}]}}"#,
                dtype.name(),
                offset + len
            ));
            offset += len;
        }
        let header = format!(r#"{{"__metadata__":{{"format":"pt"}},{}}}"#, entries.join(","));
        let mut bytes = file(&header, offset);
        let data_start = bytes.len() - offset;
        for (i, b) in bytes[data_start..].iter_mut().enumerate() {
            *b = i as u8;
        }
        bytes
    }

    /// One way to damage a file: truncate it, overwrite a byte (anywhere, or in the header with
    /// a JSON character), change the header length prefix, or make the header lie: replace one
    /// of its numbers (a dimension or an offset) with another, keeping the prefix consistent.
    #[derive(Debug, Clone)]
    enum Damage {
        Truncate(usize),
        Byte(usize, u8),
        JsonChar(usize, char),
        LengthDelta(i64),
        Number(usize, u64),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            any::<usize>().prop_map(Damage::Truncate),
            (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Damage::Byte(at, b)),
            (any::<usize>(), proptest::sample::select(r#"{}[]",:-.eE0123456789 "#.chars().collect::<Vec<_>>()))
                .prop_map(|(at, c)| Damage::JsonChar(at, c)),
            (-64i64..64).prop_map(Damage::LengthDelta),
            (any::<usize>(), prop_oneof![0u64..64, Just(u64::MAX), Just(1 << 32)])
                .prop_map(|(which, value)| Damage::Number(which, value)),
        ]
    }

    fn apply(bytes: &mut Vec<u8>, damage: &Damage) {
        let header_end = LENGTH_PREFIX_BYTES + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        match *damage {
            Damage::Truncate(at) => bytes.truncate(at % bytes.len()),
            Damage::Byte(at, b) => {
                let at = at % bytes.len();
                bytes[at] = b;
            }
            Damage::JsonChar(at, c) => {
                let at = LENGTH_PREFIX_BYTES + at % (header_end - LENGTH_PREFIX_BYTES);
                bytes[at] = c as u8;
            }
            Damage::LengthDelta(delta) => {
                let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()).wrapping_add_signed(delta);
                bytes[..8].copy_from_slice(&len.to_le_bytes());
            }
            Damage::Number(which, value) => {
                let header = &bytes[LENGTH_PREFIX_BYTES..header_end];
                let numbers: Vec<Range<usize>> = header
                    .chunk_by(|a, b| a.is_ascii_digit() == b.is_ascii_digit())
                    .scan(0, |at, run| {
                        let range = *at..*at + run.len();
                        *at += run.len();
                        Some((range, run[0].is_ascii_digit()))
                    })
                    .filter_map(|(range, digits)| digits.then_some(range))
                    .collect();
                if numbers.is_empty() {
                    return;
                }
                let target = numbers[which % numbers.len()].clone();
                let mut new_header = header[..target.start].to_vec();
                new_header.extend_from_slice(value.to_string().as_bytes());
                new_header.extend_from_slice(&header[target.end..]);
                let mut rebuilt = (new_header.len() as u64).to_le_bytes().to_vec();
                rebuilt.extend_from_slice(&new_header);
                rebuilt.extend_from_slice(&bytes[header_end..]);
                *bytes = rebuilt;
            }
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Damaged files never panic the parser; what it accepts is self-consistent (every
        /// tensor's bytes inside the file, sized by dtype and shape, the data section covered
        /// exactly) and accepted alike by the reference implementation (the `safetensors` crate),
        /// tensor for tensor.
        #[test]
        fn damaged_files_are_rejected_or_read_as_the_reference_reads_them(
            tensors in proptest::collection::vec((0usize..5, proptest::collection::vec(1usize..5, 0..3)), 1..4),
            damages in proptest::collection::vec(damage(), 1..3),
        ) {
            let mut bytes = valid_file(&tensors);
            for d in &damages {
                if bytes.len() >= LENGTH_PREFIX_BYTES
                    && u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + LENGTH_PREFIX_BYTES <= bytes.len()
                {
                    apply(&mut bytes, d);
                }
            }
            let Ok((entries, _)) = parse(Path::new("m.safetensors"), &bytes) else { return Ok(()) };
            let data_start = entries.first().map_or(bytes.len(), |e| e.file_range.start);
            let mut covered_to = data_start;
            for e in &entries {
                prop_assert_eq!(e.file_range.start, covered_to, "{} leaves a hole or overlaps", &e.name);
                prop_assert_eq!(e.byte_len(), e.element_count() * e.dtype.size_in_bytes());
                covered_to = e.file_range.end;
            }
            prop_assert_eq!(covered_to, bytes.len(), "the data section is covered to the end");
            let reference = safetensors::SafeTensors::deserialize(&bytes);
            prop_assert!(reference.is_ok(), "accepted what the reference rejects: {:?}", reference.err());
            let reference = reference.unwrap();
            let mut theirs: Vec<(String, Vec<usize>, usize, usize)> = reference
                .tensors()
                .into_iter()
                .map(|(name, view)| {
                    let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
                    (name, view.shape().to_vec(), start, start + view.data().len())
                })
                .collect();
            theirs.sort_by_key(|t| (t.2, t.3, t.0.clone()));
            let ours: Vec<(String, Vec<usize>, usize, usize)> =
                entries.iter().map(|e| (e.name.clone(), e.shape.clone(), e.file_range.start, e.file_range.end)).collect();
            prop_assert_eq!(ours, theirs);
        }
    }
}
