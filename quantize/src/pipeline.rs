//! `quantize_checkpoint`: checkpoint in, compressed-tensors artifact out.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::{Map, Value};

use crate::checkpoint::{CONFIG_FILE, Checkpoint, INDEX_SUFFIX, SAFETENSORS_SUFFIX, TensorRef};
use crate::compressed_tensors::{WEIGHT_SCALE_SUFFIX, quantization_config};
use crate::dtype::{Dtype, WeightDtype};
use crate::error::{QuantizeError, Result};
use crate::report::{
    KeptTensor, LayerReport, QuantReport, REPORT_JSON, REPORT_MARKDOWN, REPORT_SCHEMA_VERSION, SchemeSummary,
    SkippedFile, Totals,
};
use crate::safetensors_file::{SafetensorsFile, TensorEntry};
use crate::scheme::{ErrorSums, quantize_row};
use crate::select::{Decision, KeepReason, LayerSelection};
use crate::shard_writer::{PlannedTensor, ShardWriter};
use crate::staging::StagedDir;

/// Input bytes handled by one parallel task of a tensor: large enough that a task's write and page
/// release amortize their system calls, small enough that a 4096-wide layer still splits into
/// dozens of tasks for the cores to share.
const TASK_BYTES: usize = 1 << 20;

/// Bytes copied per write for tensors kept unchanged (their input pages are released after each).
const COPY_BYTES: usize = 8 << 20;

/// Extensions of weight files in other formats, which an int8 artifact must not carry along (a
/// loader could pick the float weights instead of the quantized ones).
const OTHER_WEIGHT_EXTENSIONS: [&str; 10] =
    ["bin", "pt", "pth", "ckpt", "h5", "msgpack", "onnx", "gguf", "ot", "safetensors"];

/// Deepest directory level copied from the input (guards against symlink loops).
const MAX_COPY_DEPTH: usize = 8;

/// What to quantize, where to, and how.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// A model directory or a single `.safetensors` file.
    pub input: PathBuf,
    /// The artifact directory to create.
    pub output: PathBuf,
    /// Which layers to quantize.
    pub selection: LayerSelection,
    /// Keep layers with NaN or infinite weights in float instead of failing.
    pub allow_nonfinite: bool,
    /// Replace an existing output directory.
    pub force: bool,
    /// Flush every file to disk before renaming the artifact into place. Without it the rename is
    /// still atomic for every process, but a power loss soon after a run may lose data the page
    /// cache had not written back; `qtier publish` verifies checksums either way.
    pub durable: bool,
}

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum QuantizeProgress {
    /// Work starts: this many input bytes will be processed.
    Started {
        /// Input tensor bytes in total.
        total_bytes: u64,
    },
    /// This many more input bytes are done.
    Advanced {
        /// Bytes just finished.
        bytes: u64,
    },
}

/// What happens to one tensor, with its source.
struct TensorPlan<'a> {
    source: TensorRef<'a>,
    decision: Decision,
}

/// Quantizes the checkpoint at `options.input` into a compressed-tensors `int-quantized` artifact
/// at `options.output`, returning the report (also written into the artifact).
///
/// The artifact is built in a staging directory beside the output and renamed into place only when
/// complete; on any error nothing is left at the output path.
pub fn quantize_checkpoint(
    options: &QuantizeOptions,
    progress: &(dyn Fn(QuantizeProgress) + Sync),
) -> Result<QuantReport> {
    let started = Instant::now();
    check_paths(options)?;
    let checkpoint = Checkpoint::open(&options.input)?;
    if checkpoint.config().is_some_and(|config| config.contains_key("quantization_config")) {
        return Err(QuantizeError::InvalidConfig {
            path: options.input.join(CONFIG_FILE),
            problem: "the model is already quantized (config.json has a quantization_config)".into(),
        });
    }
    let plans = plan(&checkpoint, options)?;
    let staged = StagedDir::create(&options.output, options.force)?;
    progress(QuantizeProgress::Started { total_bytes: checkpoint.tensor_bytes() });

    let mut layers = Vec::new();
    let mut bytes_after = 0u64;
    for shard in checkpoint.shards() {
        let shard_plans: Vec<&TensorPlan> = plans.iter().filter(|p| std::ptr::eq(p.source.shard, shard)).collect();
        let out_path = staged.path().join(file_name(shard.path()));
        let metadata: Map<String, Value> =
            shard.metadata().iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let writer = ShardWriter::create(&out_path, output_tensors(&shard_plans), &metadata)?;
        for plan in &shard_plans {
            match &plan.decision {
                Decision::Quantize { module } => {
                    layers.push(quantize_tensor(shard, plan.source.entry, module, &writer, progress)?);
                }
                Decision::Keep { .. } => copy_tensor(shard, plan.source.entry, &writer, progress)?,
            }
        }
        bytes_after += writer.tensor_bytes();
    }

    let ignore = linear_modules_kept(&plans);
    write_index(&checkpoint, &plans, staged.path())?;
    write_config(&checkpoint, &ignore, staged.path())?;
    let files_not_copied = match checkpoint.directory() {
        Some(dir) => copy_other_files(dir, staged.path(), &checkpoint)?,
        None => Vec::new(),
    };

    let report = build_report(options, &checkpoint, &plans, layers, files_not_copied, bytes_after, started);
    write_report(&report, staged.path())?;
    staged.commit(options.durable)?;
    Ok(report)
}

fn check_paths(options: &QuantizeOptions) -> Result<()> {
    if options.output.exists() && !options.force {
        return Err(QuantizeError::OutputExists { path: options.output.clone() });
    }
    let input = std::fs::canonicalize(&options.input).map_err(|e| QuantizeError::io(&options.input, "open", e))?;
    let output_parent = options.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let (Ok(parent), Some(name)) = (std::fs::canonicalize(output_parent), options.output.file_name()) {
        let output = parent.join(name);
        if output == input || output.starts_with(&input) && input.is_dir() || input.starts_with(&output) {
            return Err(QuantizeError::InvalidOptions(format!(
                "{}: the output must not be the input or lie inside or around it",
                options.output.display()
            )));
        }
    }
    Ok(())
}

/// Decides every tensor's fate; with `allow_nonfinite`, first finds the selected weights that hold
/// NaN or infinity and keeps them in float.
fn plan<'a>(checkpoint: &'a Checkpoint, options: &QuantizeOptions) -> Result<Vec<TensorPlan<'a>>> {
    let mut plans: Vec<TensorPlan> = checkpoint
        .tensors()
        .map(|source| {
            let decision = options.selection.decide(&source.entry.name, source.entry.dtype, &source.entry.shape);
            TensorPlan { source, decision }
        })
        .collect();
    if let Some(scale) = checkpoint.tensors().find(|t| t.entry.name.ends_with(WEIGHT_SCALE_SUFFIX)) {
        return Err(QuantizeError::InvalidTensor {
            path: scale.shard.path().to_path_buf(),
            tensor: scale.entry.name.clone(),
            problem: "a quantization scale: the checkpoint is already quantized".into(),
        });
    }
    if options.allow_nonfinite {
        plans.par_iter_mut().filter(|plan| matches!(plan.decision, Decision::Quantize { .. })).for_each(|plan| {
            if let Some(detail) = first_nonfinite(plan.source.shard, plan.source.entry) {
                plan.decision = Decision::Keep { reason: KeepReason::NonFinite, detail: Some(detail) };
            }
        });
    }
    Ok(plans)
}

/// Describes the first NaN or infinity of a float weight, if it has one.
fn first_nonfinite(shard: &SafetensorsFile, entry: &TensorEntry) -> Option<String> {
    let dtype = entry.dtype.as_weight_dtype()?;
    let size = entry.dtype.size_in_bytes();
    let columns = entry.shape.get(1).copied().unwrap_or(1).max(1);
    let position = shard.bytes(entry).chunks_exact(size).position(|element| dtype.is_nonfinite_bits(element))?;
    Some(format!("row {}, column {}", position / columns, position % columns))
}

fn output_tensors(plans: &[&TensorPlan]) -> Vec<PlannedTensor> {
    let mut tensors = Vec::with_capacity(plans.len() * 2);
    for plan in plans {
        let entry = plan.source.entry;
        match &plan.decision {
            Decision::Quantize { module } => {
                tensors.push(PlannedTensor { name: entry.name.clone(), dtype: Dtype::I8, shape: entry.shape.clone() });
                tensors.push(PlannedTensor {
                    name: format!("{module}{WEIGHT_SCALE_SUFFIX}"),
                    dtype: entry.dtype,
                    shape: vec![entry.shape[0], 1],
                });
            }
            Decision::Keep { .. } => {
                tensors.push(PlannedTensor {
                    name: entry.name.clone(),
                    dtype: entry.dtype,
                    shape: entry.shape.clone(),
                });
            }
        }
    }
    tensors
}

fn copy_tensor(
    shard: &SafetensorsFile,
    entry: &TensorEntry,
    writer: &ShardWriter,
    progress: &(dyn Fn(QuantizeProgress) + Sync),
) -> Result<()> {
    let bytes = shard.bytes(entry);
    for (block_number, block) in bytes.chunks(COPY_BYTES).enumerate() {
        let offset = block_number * COPY_BYTES;
        writer.write(&entry.name, offset, block)?;
        let start = entry.file_range.start + offset;
        shard.release(start..start + block.len());
        progress(QuantizeProgress::Advanced { bytes: block.len() as u64 });
    }
    Ok(())
}

fn quantize_tensor(
    shard: &SafetensorsFile,
    entry: &TensorEntry,
    module: &str,
    writer: &ShardWriter,
    progress: &(dyn Fn(QuantizeProgress) + Sync),
) -> Result<LayerReport> {
    let dtype: WeightDtype = entry.dtype.as_weight_dtype().expect("plan() only quantizes float weights");
    let (rows, columns) = (entry.shape[0], entry.shape[1]);
    let row_bytes = columns * entry.dtype.size_in_bytes();
    let rows_per_task = (TASK_BYTES / row_bytes.max(1)).clamp(1, rows.max(1));
    let bytes = shard.bytes(entry);

    // Each task quantizes a run of rows, writes them to their final place and releases their
    // input pages, so the cores never wait on each other's writes and memory stays at one run
    // of rows per core.
    let tasks: Vec<RowsQuantized> = (0..rows.div_ceil(rows_per_task))
        .into_par_iter()
        .map_init(
            || (vec![0.0f32; columns], vec![0i8; rows_per_task * columns]),
            |(row_values, quantized), task| {
                let first_row = task * rows_per_task;
                let task_rows = rows_per_task.min(rows - first_row);
                let input = &bytes[first_row * row_bytes..(first_row + task_rows) * row_bytes];
                let output = &mut quantized[..task_rows * columns];
                let mut scales = Vec::with_capacity(task_rows);
                let mut sums = ErrorSums::default();
                for (row, (raw, q)) in input.chunks(row_bytes.max(1)).zip(output.chunks_mut(columns.max(1))).enumerate()
                {
                    dtype.decode_into(raw, row_values);
                    let (scale, row_sums) =
                        quantize_row(row_values, dtype, q).map_err(|bad| QuantizeError::NonFiniteWeight {
                            path: shard.path().to_path_buf(),
                            tensor: entry.name.clone(),
                            value: bad.value.to_string(),
                            row: first_row + row,
                            column: bad.column,
                        })?;
                    scales.push(scale);
                    sums = sums.merge(row_sums);
                }
                writer.write(&entry.name, first_row * columns, bytemuck::cast_slice(output))?;
                let start = entry.file_range.start + first_row * row_bytes;
                shard.release(start..start + input.len());
                progress(QuantizeProgress::Advanced { bytes: input.len() as u64 });
                Ok(RowsQuantized { scales, sums })
            },
        )
        .collect::<Result<_>>()?;

    let mut scale_bytes = Vec::with_capacity(rows * entry.dtype.size_in_bytes());
    let mut sums = ErrorSums::default();
    for task in tasks {
        for scale in task.scales {
            dtype.encode(scale, &mut scale_bytes);
        }
        sums = sums.merge(task.sums);
    }
    writer.write(&format!("{module}{WEIGHT_SCALE_SUFFIX}"), 0, &scale_bytes)?;
    Ok(LayerReport {
        name: module.to_string(),
        shape: entry.shape.clone(),
        dtype: entry.dtype.name().to_string(),
        sqnr_db: sums.sqnr_db(),
        relative_rmse: sums.relative_rmse(),
        max_abs_error: sums.max_abs_error,
        cosine: sums.cosine(),
    })
}

/// What one task of [`quantize_tensor`] produced: the scales of its rows, in order, and their
/// error sums.
struct RowsQuantized {
    scales: Vec<f32>,
    sums: ErrorSums,
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Linear modules that stay in float, for compressed-tensors' `ignore` list.
fn linear_modules_kept(plans: &[TensorPlan]) -> Vec<String> {
    plans
        .iter()
        .filter_map(|plan| match &plan.decision {
            Decision::Keep { reason, .. } if reason.is_linear_kept() => {
                plan.source.entry.name.strip_suffix(".weight").map(str::to_string)
            }
            _ => None,
        })
        .collect()
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| QuantizeError::InvalidOptions(e.to_string()))?;
    text.push(b'\n');
    std::fs::write(path, text).map_err(|e| QuantizeError::io(path, "write", e))
}

fn write_index(checkpoint: &Checkpoint, plans: &[TensorPlan], out_dir: &Path) -> Result<()> {
    let Some(index) = checkpoint.index() else { return Ok(()) };
    let mut weight_map = std::collections::BTreeMap::new();
    let mut total_size = 0u64;
    for plan in plans {
        let shard = file_name(plan.source.shard.path());
        let entry = plan.source.entry;
        match &plan.decision {
            Decision::Quantize { module } => {
                total_size += (entry.element_count() + entry.shape[0] * entry.dtype.size_in_bytes()) as u64;
                weight_map.insert(format!("{module}{WEIGHT_SCALE_SUFFIX}"), shard.clone());
            }
            Decision::Keep { .. } => total_size += entry.byte_len() as u64,
        }
        weight_map.insert(entry.name.clone(), shard);
    }
    let mut metadata = index.metadata.clone();
    metadata.insert("total_size".into(), total_size.into());
    let index_json = serde_json::json!({ "metadata": metadata, "weight_map": weight_map });
    write_json(&out_dir.join(file_name(&index.path)), &index_json)
}

fn write_config(checkpoint: &Checkpoint, ignore: &[String], out_dir: &Path) -> Result<()> {
    let mut config = checkpoint.config().cloned().unwrap_or_default();
    config.insert("quantization_config".into(), quantization_config(ignore));
    write_json(&out_dir.join(CONFIG_FILE), &config)
}

/// Copies every other file of the model directory (tokenizer, sentence-transformers modules, ...)
/// and lists what it left out.
fn copy_other_files(input_dir: &Path, out_dir: &Path, checkpoint: &Checkpoint) -> Result<Vec<SkippedFile>> {
    let mut written: BTreeSet<PathBuf> =
        checkpoint.shards().iter().map(|s| PathBuf::from(file_name(s.path()))).collect();
    if let Some(index) = checkpoint.index() {
        written.insert(PathBuf::from(file_name(&index.path)));
    }
    written.insert(PathBuf::from(CONFIG_FILE));
    let mut skipped = Vec::new();
    copy_tree(input_dir, out_dir, Path::new(""), &written, &mut skipped, 0)?;
    Ok(skipped)
}

fn copy_tree(
    from: &Path,
    to: &Path,
    relative: &Path,
    written: &BTreeSet<PathBuf>,
    skipped: &mut Vec<SkippedFile>,
    depth: usize,
) -> Result<()> {
    let dir = from.join(relative);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| QuantizeError::io(&dir, "list", e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| QuantizeError::io(&dir, "list", e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let rel = relative.join(&name);
        let source = entry.path();
        if written.contains(&rel) || name.to_string_lossy().contains(".qtier-") {
            continue;
        }
        // Follow symlinks: Hugging Face cache snapshots are links to blobs.
        let metadata = std::fs::metadata(&source).map_err(|e| QuantizeError::io(&source, "stat", e))?;
        if metadata.is_dir() {
            if depth + 1 >= MAX_COPY_DEPTH {
                skipped.push(SkippedFile { path: rel.display().to_string(), reason: "nested too deeply".into() });
                continue;
            }
            let target = to.join(&rel);
            std::fs::create_dir_all(&target).map_err(|e| QuantizeError::io(&target, "create directory", e))?;
            copy_tree(from, to, &rel, written, skipped, depth + 1)?;
        } else if !metadata.is_file() {
            skipped.push(SkippedFile { path: rel.display().to_string(), reason: "not a regular file".into() });
        } else if is_other_weight_file(&rel) {
            skipped.push(SkippedFile {
                path: rel.display().to_string(),
                reason: "float weights in another format; the artifact carries only the int8 safetensors".into(),
            });
        } else {
            let target = to.join(&rel);
            std::fs::copy(&source, &target).map_err(|e| QuantizeError::io(&source, "copy", e))?;
        }
    }
    Ok(())
}

fn is_other_weight_file(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(INDEX_SUFFIX)
        || name.ends_with(SAFETENSORS_SUFFIX)
        || path
            .extension()
            .is_some_and(|ext| OTHER_WEIGHT_EXTENSIONS.contains(&ext.to_string_lossy().to_ascii_lowercase().as_str()))
}

fn build_report(
    options: &QuantizeOptions,
    checkpoint: &Checkpoint,
    plans: &[TensorPlan],
    layers: Vec<LayerReport>,
    files_not_copied: Vec<SkippedFile>,
    tensor_bytes_after: u64,
    started: Instant,
) -> QuantReport {
    let kept: Vec<KeptTensor> = plans
        .iter()
        .filter_map(|plan| match &plan.decision {
            Decision::Keep { reason, detail } => Some(KeptTensor {
                name: plan.source.entry.name.clone(),
                dtype: plan.source.entry.dtype.name().to_string(),
                shape: plan.source.entry.shape.clone(),
                reason: reason.clone(),
                detail: detail.clone(),
            }),
            Decision::Quantize { .. } => None,
        })
        .collect();
    let element_counts: HashMap<&str, u64> =
        plans.iter().map(|p| (p.source.entry.name.as_str(), p.source.entry.element_count() as u64)).collect();
    let parameters_quantized = layers.iter().map(|l| element_counts[format!("{}.weight", l.name).as_str()]).sum();
    let mut sqnrs: Vec<(f64, &str)> = layers.iter().filter_map(|l| Some((l.sqnr_db?, l.name.as_str()))).collect();
    sqnrs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median_sqnr_db = match sqnrs.len() {
        0 => None,
        n if n % 2 == 1 => Some(sqnrs[n / 2].0),
        n => Some((sqnrs[n / 2 - 1].0 + sqnrs[n / 2].0) / 2.0),
    };
    let tensor_bytes_before = checkpoint.tensor_bytes();
    let seconds = started.elapsed().as_secs_f64();
    QuantReport {
        schema_version: REPORT_SCHEMA_VERSION,
        qtier_version: env!("CARGO_PKG_VERSION").to_string(),
        input: options.input.display().to_string(),
        output: options.output.display().to_string(),
        scheme: SchemeSummary::default(),
        totals: Totals {
            layers_quantized: layers.len(),
            parameters_quantized,
            parameters_total: element_counts.values().sum(),
            tensor_bytes_before,
            tensor_bytes_after,
            compression_ratio: tensor_bytes_before as f64 / tensor_bytes_after.max(1) as f64,
            min_sqnr_db: sqnrs.first().map(|s| s.0),
            min_sqnr_layer: sqnrs.first().map(|s| s.1.to_string()),
            median_sqnr_db,
            seconds,
            input_gb_per_s: tensor_bytes_before as f64 / seconds.max(f64::MIN_POSITIVE) / 1e9,
        },
        layers,
        kept,
        files_not_copied,
    }
}

fn write_report(report: &QuantReport, out_dir: &Path) -> Result<()> {
    write_json(&out_dir.join(REPORT_JSON), report)?;
    let markdown = out_dir.join(REPORT_MARKDOWN);
    std::fs::write(&markdown, report.to_markdown()).map_err(|e| QuantizeError::io(&markdown, "write", e))
}
