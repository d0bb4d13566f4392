//! The GPU reference table: peaks of the GPUs a measured report may come from.
//!
//! A report from `qtier bench model --device cuda` names its GPU as the driver does
//! (`hardware.gpu.name`, e.g. `NVIDIA H200`). Its efficiency against the roofline needs that
//! GPU's peaks, and the measuring GPU is often not one of the catalog's instance GPUs (a
//! development H200 calibrating the T4s of g4dn). The table is `profiles/data/gpus.toml`
//! ([`BUILTIN_GPUS_TOML`]), embedded; its entries for GPUs the catalog also lists carry the
//! catalog's figures.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{ProfilesError, Result, line_of, toml_error};
use crate::values::{Positive, Text};
use crate::workload::Peaks;

/// The built-in GPU table's text.
pub const BUILTIN_GPUS_TOML: &str = include_str!("../data/gpus.toml");
/// The name errors give the built-in GPU table.
pub const BUILTIN_GPUS_NAME: &str = "built-in profiles/data/gpus.toml";

/// One GPU model's peaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuReference {
    /// The model, as the catalog names it (`NVIDIA T4`).
    pub model: Text,
    /// Device names the NVIDIA driver reports for it (`Tesla T4`); matched ignoring case and
    /// surrounding spaces.
    pub driver_names: Vec<Text>,
    /// CUDA compute capability (`7.5` is sm_75).
    pub compute_capability: Text,
    /// Dense int8 tensor peak, TOPS.
    pub int8_tops: Positive,
    /// Dense fp16 tensor peak, TFLOPS.
    pub fp16_tflops: Positive,
    /// Memory bandwidth, GB/s.
    pub memory_bandwidth_gbps: Positive,
    /// True when the peaks are estimates rather than published figures.
    pub peak_uncertain: bool,
    /// Where these figures come from.
    pub source: Text,
}

impl GpuReference {
    /// The roofline peaks of one GPU: int8 tensor peak for int8 Linear layers, fp16 tensor peak
    /// for the rest (as [`crate::projection::gpu_target`] models a catalog GPU).
    pub fn peaks(&self) -> Peaks {
        Peaks::of_gpu(self.int8_tops.get(), self.fp16_tflops.get(), self.memory_bandwidth_gbps.get())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GpusFile {
    gpu: Vec<Spanned<GpuReference>>,
}

/// The parsed table.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuTable {
    /// The GPUs, in file order.
    pub gpus: Vec<GpuReference>,
}

/// A driver name in the form names are compared in.
fn normalize(name: &str) -> String {
    name.trim().to_lowercase()
}

impl GpuTable {
    /// Parses and validates a table; `source_name` names it in errors. Every entry needs at
    /// least one driver name, and no driver name or model may appear twice.
    pub fn parse(text: &str, source_name: &str) -> Result<Self> {
        let file: GpusFile = toml::from_str(text).map_err(|e| toml_error(source_name, text, &e))?;
        let invalid = |span: std::ops::Range<usize>, item: &str, problem: String| ProfilesError::Invalid {
            file: source_name.to_string(),
            line: line_of(text, span.start),
            item: item.to_string(),
            problem,
        };
        let mut models = std::collections::BTreeSet::new();
        let mut names = std::collections::BTreeSet::new();
        for entry in &file.gpu {
            let gpu = entry.get_ref();
            let model = gpu.model.as_str();
            if !models.insert(model.to_string()) {
                return Err(invalid(entry.span(), model, "listed twice".into()));
            }
            if gpu.driver_names.is_empty() {
                return Err(invalid(entry.span(), model, "driver_names must list at least one name".into()));
            }
            for name in &gpu.driver_names {
                if !names.insert(normalize(name.as_str())) {
                    return Err(invalid(
                        entry.span(),
                        model,
                        format!("driver name `{}` is listed for another GPU too", name.as_str()),
                    ));
                }
            }
        }
        Ok(Self { gpus: file.gpu.into_iter().map(Spanned::into_inner).collect() })
    }

    /// The built-in table.
    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN_GPUS_TOML, BUILTIN_GPUS_NAME)
    }

    /// The GPU the driver calls `driver_name`.
    pub fn find(&self, driver_name: &str) -> Option<&GpuReference> {
        let wanted = normalize(driver_name);
        self.gpus.iter().find(|g| g.driver_names.iter().any(|n| normalize(n.as_str()) == wanted))
    }

    /// The GPU the catalog calls `model`.
    pub fn by_model(&self, model: &str) -> Option<&GpuReference> {
        self.gpus.iter().find(|g| g.model.as_str() == model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InstanceCatalog;

    #[test]
    fn builtin_table_finds_driver_names_and_agrees_with_the_catalog() {
        let table = GpuTable::builtin().unwrap();
        assert_eq!(table.find("Tesla T4").unwrap().model.as_str(), "NVIDIA T4");
        assert_eq!(table.find("  nvidia h200 ").unwrap().model.as_str(), "NVIDIA H200 SXM");
        assert_eq!(table.find("NVIDIA H200 NVL").unwrap().model.as_str(), "NVIDIA H200 NVL");
        assert!(table.find("NVIDIA GeForce RTX 4090").is_none());
        let catalog = InstanceCatalog::builtin().unwrap();
        for instance in &catalog.instances {
            let Some(gpu) = &instance.gpu else { continue };
            let reference = table
                .by_model(gpu.model.as_str())
                .unwrap_or_else(|| panic!("{}: GPU `{}` not in gpus.toml", instance.name.as_str(), gpu.model.as_str()));
            assert_eq!(
                (
                    reference.int8_tops,
                    reference.fp16_tflops,
                    reference.memory_bandwidth_gbps,
                    reference.peak_uncertain,
                    reference.compute_capability.as_str()
                ),
                (
                    gpu.int8_tops,
                    gpu.fp16_tflops,
                    gpu.memory_bandwidth_gbps,
                    gpu.peak_uncertain,
                    gpu.compute_capability.as_str()
                ),
                "{}",
                gpu.model.as_str()
            );
        }
    }

    #[test]
    fn bad_tables_name_the_entry_and_line() {
        let entry = |model: &str, names: &str| {
            format!(
                "[[gpu]]\nmodel = \"{model}\"\ndriver_names = [{names}]\ncompute_capability = \"7.5\"\nint8_tops = 1\n\
                 fp16_tflops = 1\nmemory_bandwidth_gbps = 1\npeak_uncertain = false\nsource = \"test\"\n"
            )
        };
        let twice = format!("{}{}", entry("A", "\"a\""), entry("B", "\" A \""));
        let message = GpuTable::parse(&twice, "t.toml").unwrap_err().to_string();
        assert!(message.contains("t.toml:10") && message.contains("another GPU"), "{message}");
        let none = entry("A", "");
        assert!(GpuTable::parse(&none, "t.toml").unwrap_err().to_string().contains("at least one"));
        let negative = entry("A", "\"a\"").replace("int8_tops = 1", "int8_tops = -3");
        let message = GpuTable::parse(&negative, "t.toml").unwrap_err().to_string();
        assert!(message.contains("t.toml") && message.contains("greater than zero"), "{message}");
    }
}
