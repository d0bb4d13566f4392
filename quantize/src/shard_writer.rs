//! Writing one safetensors file whose layout is fixed before any data is produced.
//!
//! The header is computed from the planned tensors first, so that tensors can be produced in any
//! order, in parallel, and written straight to their final place with positional writes: nothing
//! of the model is buffered beyond the tensor (block) being worked on.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::dtype::Dtype;
use crate::error::{QuantizeError, Result};

/// Header sizes are padded to a multiple of this with spaces, as the reference writer does, so
/// the data section starts aligned for every dtype.
const HEADER_ALIGNMENT: usize = 8;

/// A tensor of the output file: its header entry and, once laid out, its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    /// Bytes of data.
    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }
}

/// An output safetensors file with its header written and its data to be filled in.
#[derive(Debug)]
pub struct ShardWriter {
    path: PathBuf,
    file: File,
    offsets: std::collections::HashMap<String, usize>,
    tensor_bytes: u64,
}

impl ShardWriter {
    /// Lays out `tensors` (largest element size first, then by name, so every tensor is aligned
    /// to its element size), writes the header and sizes the file.
    pub fn create(path: &Path, mut tensors: Vec<PlannedTensor>, metadata: &Map<String, Value>) -> Result<ShardWriter> {
        tensors.sort_by(|a, b| b.dtype.size_in_bytes().cmp(&a.dtype.size_in_bytes()).then_with(|| a.name.cmp(&b.name)));
        let mut header = Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), Value::Object(metadata.clone()));
        }
        let mut relative_offsets = Vec::with_capacity(tensors.len());
        let mut data_len = 0usize;
        for tensor in &tensors {
            let end = data_len + tensor.byte_len();
            header.insert(
                tensor.name.clone(),
                json!({"dtype": tensor.dtype.name(), "shape": tensor.shape, "data_offsets": [data_len, end]}),
            );
            relative_offsets.push(data_len);
            data_len = end;
        }
        let mut header_bytes = serde_json::to_vec(&header).expect("a JSON map always serializes");
        let padded = header_bytes.len().div_ceil(HEADER_ALIGNMENT) * HEADER_ALIGNMENT;
        header_bytes.resize(padded, b' ');
        let data_start = 8 + header_bytes.len();

        let file = File::create(path).map_err(|e| QuantizeError::io(path, "create", e))?;
        file.set_len((data_start + data_len) as u64).map_err(|e| QuantizeError::io(path, "size", e))?;
        let mut prefix = (header_bytes.len() as u64).to_le_bytes().to_vec();
        prefix.extend_from_slice(&header_bytes);
        file.write_all_at(&prefix, 0).map_err(|e| QuantizeError::io(path, "write header", e))?;
        let offsets = tensors
            .iter()
            .zip(relative_offsets)
            .map(|(tensor, offset)| (tensor.name.clone(), data_start + offset))
            .collect();
        Ok(ShardWriter { path: path.to_path_buf(), file, offsets, tensor_bytes: data_len as u64 })
    }

    /// Total bytes of tensor data in this file.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensor_bytes
    }

    /// Writes `bytes` at byte `offset` within tensor `name`'s data.
    pub fn write(&self, name: &str, offset: usize, bytes: &[u8]) -> Result<()> {
        let start = self.offsets.get(name).ok_or_else(|| {
            QuantizeError::InvalidOptions(format!("{}: tensor `{name}` was not planned", self.path.display()))
        })?;
        self.file.write_all_at(bytes, (start + offset) as u64).map_err(|e| QuantizeError::io(&self.path, "write", e))
    }
}
