//! A checkpoint on disk: one safetensors file, or shards listed by an index, plus `config.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{QuantizeError, Result};
use crate::safetensors_file::{SafetensorsFile, TensorEntry};

/// The file name suffix of safetensors files.
pub const SAFETENSORS_SUFFIX: &str = ".safetensors";
/// The file name suffix of a sharded checkpoint's index.
pub const INDEX_SUFFIX: &str = ".safetensors.index.json";
/// The model configuration file of the Hugging Face layout.
pub const CONFIG_FILE: &str = "config.json";

/// A sharded checkpoint's index file, as read.
#[derive(Debug, Clone)]
pub struct ShardIndex {
    /// The index file's path.
    pub path: PathBuf,
    /// Its `metadata` object (empty when absent).
    pub metadata: Map<String, Value>,
}

/// A checkpoint opened for reading: every shard mapped and validated.
#[derive(Debug)]
pub struct Checkpoint {
    input: PathBuf,
    directory: Option<PathBuf>,
    shards: Vec<SafetensorsFile>,
    index: Option<ShardIndex>,
    config: Option<Map<String, Value>>,
    location: HashMap<String, usize>,
}

/// Where a tensor lives: which shard and which entry.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// The shard holding the tensor.
    pub shard: &'a SafetensorsFile,
    /// The tensor's header entry.
    pub entry: &'a TensorEntry,
}

impl Checkpoint {
    /// Opens a model directory (`model.safetensors`, or shards with a `*.safetensors.index.json`)
    /// or a single `.safetensors` file.
    pub fn open(input: &Path) -> Result<Checkpoint> {
        let metadata = std::fs::metadata(input).map_err(|e| QuantizeError::io(input, "open", e))?;
        let (directory, shard_paths, index) = if metadata.is_dir() {
            let (shard_paths, index) = find_shards(input)?;
            (Some(input.to_path_buf()), shard_paths, index)
        } else {
            if !input.to_string_lossy().ends_with(SAFETENSORS_SUFFIX) {
                return Err(QuantizeError::NoCheckpoint {
                    path: input.to_path_buf(),
                    problem: "not a directory and not a .safetensors file".into(),
                });
            }
            (None, vec![input.to_path_buf()], None)
        };

        let mut shards = Vec::with_capacity(shard_paths.len());
        let mut location = HashMap::new();
        for (shard_number, shard_path) in shard_paths.iter().enumerate() {
            let shard = SafetensorsFile::open(shard_path)?;
            for entry in shard.tensors() {
                if let Some(previous) = location.insert(entry.name.clone(), shard_number) {
                    return Err(QuantizeError::InvalidTensor {
                        path: shard_path.clone(),
                        tensor: entry.name.clone(),
                        problem: format!("also present in {}", shard_paths[previous].display()),
                    });
                }
            }
            shards.push(shard);
        }
        let config = match &directory {
            Some(dir) => read_config(&dir.join(CONFIG_FILE))?,
            None => None,
        };
        let checkpoint = Checkpoint { input: input.to_path_buf(), directory, shards, index: None, config, location };
        match index {
            Some((path, weight_map, metadata)) => {
                checkpoint.check_index(&path, &weight_map)?;
                Ok(Checkpoint { index: Some(ShardIndex { path, metadata }), ..checkpoint })
            }
            None => Ok(checkpoint),
        }
    }

    /// The path the checkpoint was opened from.
    pub fn input(&self) -> &Path {
        &self.input
    }

    /// The model directory, when the input was one.
    pub fn directory(&self) -> Option<&Path> {
        self.directory.as_deref()
    }

    /// The shards, in index order (one for an unsharded checkpoint).
    pub fn shards(&self) -> &[SafetensorsFile] {
        &self.shards
    }

    /// The index of a sharded checkpoint.
    pub fn index(&self) -> Option<&ShardIndex> {
        self.index.as_ref()
    }

    /// `config.json`, when the input directory has one.
    pub fn config(&self) -> Option<&Map<String, Value>> {
        self.config.as_ref()
    }

    /// The tensor called `name`, wherever it is.
    pub fn tensor(&self, name: &str) -> Option<TensorRef<'_>> {
        let shard = &self.shards[*self.location.get(name)?];
        Some(TensorRef { shard, entry: shard.tensor(name)? })
    }

    /// Every tensor, shard by shard, in data order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorRef<'_>> {
        self.shards.iter().flat_map(|shard| shard.tensors().iter().map(move |entry| TensorRef { shard, entry }))
    }

    /// Total bytes of tensor data over all shards.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors().map(|t| t.entry.byte_len() as u64).sum()
    }

    /// Reads a float tensor into `f32`, whatever its stored float dtype.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let tensor = self.require(name)?;
        let dtype = tensor.entry.dtype.as_weight_dtype().ok_or_else(|| QuantizeError::InvalidTensor {
            path: tensor.shard.path().to_path_buf(),
            tensor: name.to_string(),
            problem: format!("dtype {} is not F32, F16 or BF16", tensor.entry.dtype),
        })?;
        let mut values = vec![0.0; tensor.entry.element_count()];
        dtype.decode_into(tensor.shard.bytes(tensor.entry), &mut values);
        // The caller now holds its own copy: drop the mapped pages from the resident set.
        tensor.shard.release(tensor.entry.file_range.clone());
        Ok(values)
    }

    /// The tensor called `name`, or an error naming the checkpoint.
    pub fn require(&self, name: &str) -> Result<TensorRef<'_>> {
        self.tensor(name).ok_or_else(|| QuantizeError::NoCheckpoint {
            path: self.input.clone(),
            problem: format!("no tensor named `{name}`"),
        })
    }

    fn check_index(&self, index_path: &Path, weight_map: &BTreeMap<String, String>) -> Result<()> {
        for (tensor, shard_name) in weight_map {
            let found = self.location.get(tensor).map(|&n| &self.shards[n]);
            let in_named_shard = found.is_some_and(|shard| shard.path().file_name() == Some(shard_name.as_ref()));
            if !in_named_shard {
                return Err(QuantizeError::InvalidIndex {
                    path: index_path.to_path_buf(),
                    problem: format!("the index puts tensor `{tensor}` in {shard_name}, which does not hold it"),
                });
            }
        }
        if let Some(unlisted) = self.location.keys().find(|name| !weight_map.contains_key(*name)) {
            let shard = &self.shards[self.location[unlisted]];
            return Err(QuantizeError::InvalidIndex {
                path: index_path.to_path_buf(),
                problem: format!("tensor `{unlisted}` of {} is missing from the index", shard.path().display()),
            });
        }
        Ok(())
    }
}

type IndexContents = (PathBuf, BTreeMap<String, String>, Map<String, Value>);

/// Finds the shards of a model directory and, if there is one, reads its index.
fn find_shards(dir: &Path) -> Result<(Vec<PathBuf>, Option<IndexContents>)> {
    let mut indexes = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| QuantizeError::io(dir, "list", e))? {
        let entry = entry.map_err(|e| QuantizeError::io(dir, "list", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(INDEX_SUFFIX) {
            indexes.push(entry.path());
        } else if name.ends_with(SAFETENSORS_SUFFIX) && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    indexes.sort();
    files.sort();
    match (indexes.len(), files.len()) {
        (0, 0) => Err(QuantizeError::NoCheckpoint {
            path: dir.to_path_buf(),
            problem: "no *.safetensors file in this directory".into(),
        }),
        (0, 1) => Ok((files, None)),
        (0, _) => Err(QuantizeError::NoCheckpoint {
            path: dir.to_path_buf(),
            problem: format!("{} .safetensors files but no *{INDEX_SUFFIX} saying how they fit together", files.len()),
        }),
        (1, _) => {
            let index_path = indexes.remove(0);
            let (weight_map, metadata) = read_index(&index_path)?;
            let mut shard_names: Vec<&String> = weight_map.values().collect();
            shard_names.sort();
            shard_names.dedup();
            let mut shard_paths = Vec::with_capacity(shard_names.len());
            for shard_name in shard_names {
                let shard_path = dir.join(shard_name);
                if Path::new(shard_name).components().count() != 1 || !shard_path.is_file() {
                    return Err(QuantizeError::InvalidIndex {
                        path: index_path,
                        problem: format!("shard `{shard_name}` named by the index is missing"),
                    });
                }
                shard_paths.push(shard_path);
            }
            Ok((shard_paths, Some((index_path, weight_map, metadata))))
        }
        (_, _) => Err(QuantizeError::NoCheckpoint {
            path: dir.to_path_buf(),
            problem: format!("{} index files (*{INDEX_SUFFIX}); expected one", indexes.len()),
        }),
    }
}

fn read_index(path: &Path) -> Result<(BTreeMap<String, String>, Map<String, Value>)> {
    let text = std::fs::read(path).map_err(|e| QuantizeError::io(path, "read", e))?;
    let bad = |problem: String| QuantizeError::InvalidIndex { path: path.to_path_buf(), problem };
    let index: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let weight_map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no `weight_map` object".into()))?
        .iter()
        .map(|(tensor, shard)| match shard.as_str() {
            Some(shard) => Ok((tensor.clone(), shard.to_string())),
            None => Err(bad(format!("`weight_map.{tensor}` is not a file name"))),
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    if weight_map.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    let metadata = index.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
    Ok((weight_map, metadata))
}

fn read_config(path: &Path) -> Result<Option<Map<String, Value>>> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(QuantizeError::io(path, "read", e)),
    };
    let config: Value = serde_json::from_slice(&text).map_err(|e| QuantizeError::InvalidConfig {
        path: path.to_path_buf(),
        problem: format!("not valid JSON: {e}"),
    })?;
    match config {
        Value::Object(config) => Ok(Some(config)),
        _ => Err(QuantizeError::InvalidConfig { path: path.to_path_buf(), problem: "not a JSON object".into() }),
    }
}
