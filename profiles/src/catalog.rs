//! The instance catalog: the machines a recommendation chooses from, their hardware and prices.
//!
//! The built-in catalog is `profiles/data/instances.toml` ([`BUILTIN_CATALOG_TOML`]); a user's
//! file of the same layout replaces it. Unknown keys, missing fields and out-of-range values are
//! TOML errors naming the line and column; inconsistencies found after parsing (a duplicate name,
//! a family that does not match the name, a spot estimate for a family with no instance) name the
//! line of the entry.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{ProfilesError, Result, line_of, toml_error};
use crate::values::{Fraction, IsoDate, Positive, Text};

/// The built-in catalog's text.
pub const BUILTIN_CATALOG_TOML: &str = include_str!("../data/instances.toml");
/// The name errors and reports give the built-in catalog.
pub const BUILTIN_CATALOG_NAME: &str = "built-in profiles/data/instances.toml";

/// Facts about the whole catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogHeader {
    /// The AWS region the prices are for.
    pub region: Text,
    /// Currency of every price.
    pub currency: Text,
    /// Where the figures come from and how far to trust them.
    pub note: Text,
}

/// How much cheaper spot capacity of a family is estimated to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpotEstimate {
    /// The instance family (`c5`).
    pub family: Text,
    /// Fraction off the on-demand price.
    pub discount: Fraction,
    /// Where the estimate comes from.
    pub source: Text,
    /// When it was made.
    pub as_of: IsoDate,
    /// Caveats (spot prices vary).
    pub note: Text,
}

/// Who sells the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// An EC2 instance the user runs the server on.
    Ec2,
    /// A SageMaker real-time inference endpoint instance.
    Sagemaker,
}

/// Whether the CPU has VNNI (`vpdpbusd`), which qtier's fastest int8 kernels need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VnniSupport {
    /// Always.
    Yes,
    /// Never.
    No,
    /// Depends on which CPU generation AWS allocates (c5: Skylake or Cascade Lake).
    Varies,
}

/// The CPU of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuProfile {
    /// Model name(s).
    pub model: Text,
    /// AVX-512 (F, BW, VL) present.
    pub avx512: bool,
    /// VNNI present.
    pub vnni: VnniSupport,
    /// All-core turbo clock, GHz, as AWS lists it.
    pub all_core_turbo_ghz: Positive,
    /// Main-memory read bandwidth available to the instance, GB/s.
    pub memory_bandwidth_gbps: Positive,
    /// Where these figures come from.
    pub source: Text,
    /// Caveats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Text>,
}

/// The GPUs of an instance (all of one model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuProfile {
    /// Model name.
    pub model: Text,
    /// GPUs per instance.
    pub count: u32,
    /// Memory per GPU, GB.
    pub memory_gb: Positive,
    /// CUDA compute capability (`7.5` is sm_75).
    pub compute_capability: Text,
    /// Dense int8 tensor peak per GPU, TOPS.
    pub int8_tops: Positive,
    /// Dense fp16 tensor peak per GPU, TFLOPS.
    pub fp16_tflops: Positive,
    /// Memory bandwidth per GPU, GB/s.
    pub memory_bandwidth_gbps: Positive,
    /// True when the peaks are estimates rather than published figures.
    pub peak_uncertain: bool,
    /// Where these figures come from.
    pub source: Text,
    /// Caveats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Text>,
}

/// The on-demand price of an instance and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceQuote {
    /// On-demand price, USD per instance-hour.
    pub on_demand_usd_per_hour: Positive,
    /// Where the price was read.
    pub source: Text,
    /// When it was read.
    pub as_of: IsoDate,
    /// Caveats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Text>,
}

/// One instance type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceProfile {
    /// The type's name (`c5.xlarge`, `ml.g5.2xlarge`).
    pub name: Text,
    /// EC2 or SageMaker.
    pub service: Service,
    /// The family: the name without its size (`c5`, `ml.g5`).
    pub family: Text,
    /// Virtual CPUs (hyperthreads).
    pub vcpu: u32,
    /// Memory, GiB.
    pub memory_gib: Positive,
    /// The CPU.
    pub cpu: CpuProfile,
    /// The GPUs, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuProfile>,
    /// The on-demand price.
    pub price: PriceQuote,
}

impl InstanceProfile {
    /// Physical cores: a vCPU is one hyperthread, two per core (at least one core).
    pub fn physical_cores(&self) -> u32 {
        (self.vcpu / 2).max(1)
    }
}

/// The layout of a catalog file, with the position of each entry for error messages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    catalog: CatalogHeader,
    #[serde(default)]
    spot: Vec<Spanned<SpotEstimate>>,
    instance: Vec<Spanned<InstanceProfile>>,
}

/// A validated instance catalog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceCatalog {
    /// Where it was read from (a path, or [`BUILTIN_CATALOG_NAME`]).
    pub source_name: String,
    /// Facts about the whole catalog.
    pub header: CatalogHeader,
    /// Spot estimates, one per family that has spot capacity.
    pub spot: Vec<SpotEstimate>,
    /// The instance types, in file order.
    pub instances: Vec<InstanceProfile>,
}

impl InstanceCatalog {
    /// Parses and validates a catalog; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| toml_error(source_name, text, &e))?;
        let invalid = |span: std::ops::Range<usize>, item: &str, problem: String| ProfilesError::Invalid {
            file: source_name.to_string(),
            line: line_of(text, span.start),
            item: item.to_string(),
            problem,
        };
        if file.instance.is_empty() {
            return Err(ProfilesError::Toml {
                file: source_name.to_string(),
                line: None,
                message: "the catalog lists no [[instance]]".into(),
            });
        }
        let mut names = std::collections::BTreeSet::new();
        for entry in &file.instance {
            let instance = entry.get_ref();
            let name = instance.name.as_str();
            if !names.insert(name.to_string()) {
                return Err(invalid(entry.span(), name, "listed twice".into()));
            }
            let expected_family = name.rsplit_once('.').map(|(family, _)| family);
            if expected_family != Some(instance.family.as_str()) {
                return Err(invalid(
                    entry.span(),
                    name,
                    format!("family `{}` does not match the name (expected `family.size`)", instance.family),
                ));
            }
            if instance.vcpu == 0 {
                return Err(invalid(entry.span(), name, "vcpu must be at least 1".into()));
            }
            if let Some(gpu) = &instance.gpu
                && gpu.count == 0
            {
                return Err(invalid(
                    entry.span(),
                    name,
                    "gpu.count must be at least 1 (omit [instance.gpu] instead)".into(),
                ));
            }
        }
        let mut families = std::collections::BTreeSet::new();
        for entry in &file.spot {
            let spot = entry.get_ref();
            let family = spot.family.as_str();
            if !families.insert(family.to_string()) {
                return Err(invalid(entry.span(), family, "spot estimate listed twice".into()));
            }
            let members: Vec<&InstanceProfile> =
                file.instance.iter().map(Spanned::get_ref).filter(|i| i.family.as_str() == family).collect();
            if members.is_empty() {
                return Err(invalid(entry.span(), family, "no instance of this family in the catalog".into()));
            }
            if members.iter().any(|i| i.service == Service::Sagemaker) {
                return Err(invalid(entry.span(), family, "SageMaker real-time endpoints have no spot pricing".into()));
            }
        }
        Ok(Self {
            source_name: source_name.to_string(),
            header: file.catalog,
            spot: file.spot.into_iter().map(Spanned::into_inner).collect(),
            instances: file.instance.into_iter().map(Spanned::into_inner).collect(),
        })
    }

    /// The built-in catalog.
    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN_CATALOG_TOML, BUILTIN_CATALOG_NAME)
    }

    /// The instance type called `name`.
    pub fn get(&self, name: &str) -> Option<&InstanceProfile> {
        self.instances.iter().find(|i| i.name.as_str() == name)
    }

    /// The spot estimate of `family`, if spot capacity is sold for it.
    pub fn spot_for(&self, family: &str) -> Option<&SpotEstimate> {
        self.spot.iter().find(|s| s.family.as_str() == family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: [&str; 21] = [
        "c5.large",
        "c5.xlarge",
        "c5.2xlarge",
        "c5.4xlarge",
        "c6i.large",
        "c6i.xlarge",
        "c6i.2xlarge",
        "c7i.large",
        "c7i.xlarge",
        "c7i.2xlarge",
        "g4dn.xlarge",
        "g4dn.2xlarge",
        "g4dn.4xlarge",
        "g5.xlarge",
        "g5.2xlarge",
        "g5.4xlarge",
        "p4d.24xlarge",
        "p5.48xlarge",
        "ml.g5.2xlarge",
        "ml.g5.4xlarge",
        "ml.p4d.24xlarge",
    ];

    #[test]
    fn builtin_catalog_covers_the_issue_types_with_sourced_dated_prices() {
        let catalog = InstanceCatalog::builtin().unwrap();
        for name in REQUIRED {
            let instance = catalog.get(name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(!instance.price.source.as_str().is_empty());
            assert_eq!(instance.price.as_of.as_str(), "2026-11-30");
            if instance.service == Service::Ec2 {
                let spot = catalog.spot_for(instance.family.as_str()).unwrap_or_else(|| panic!("{name}: no spot"));
                assert!(spot.note.as_str().contains("vary"), "{name}: spot note must say prices vary");
            } else {
                assert!(catalog.spot_for(instance.family.as_str()).is_none());
                assert!(instance.price.source.as_str().contains("SageMaker"));
            }
        }
        let price = |name: &str| catalog.get(name).unwrap().price.on_demand_usd_per_hour.get();
        assert_eq!(price("c5.large"), 0.085);
        assert_eq!(price("c6i.2xlarge"), price("c5.2xlarge"));
        assert_eq!(price("c7i.large"), 0.08925);
        assert_eq!(price("p4d.24xlarge"), 21.958);
        assert_eq!(price("p5.48xlarge"), 55.04);
        assert_eq!(price("ml.p4d.24xlarge"), 37.69);
        let t4 = catalog.get("g4dn.xlarge").unwrap().gpu.as_ref().unwrap();
        assert_eq!((t4.compute_capability.as_str(), t4.int8_tops.get(), t4.fp16_tflops.get()), ("7.5", 130.0, 65.0));
        let a10g = catalog.get("g5.xlarge").unwrap().gpu.as_ref().unwrap();
        assert!(a10g.peak_uncertain && a10g.int8_tops.get() < 250.0 && a10g.fp16_tflops.get() < 125.0);
        assert_eq!(catalog.get("c5.large").unwrap().cpu.vnni, VnniSupport::Varies);
    }

    fn minimal(instance_extra: &str, price: &str) -> String {
        format!(
            r#"[catalog]
region = "us-east-1"
currency = "USD"
note = "test"

[[instance]]
name = "c6i.large"
service = "ec2"
family = "c6i"
vcpu = 2
memory_gib = 4
{instance_extra}
[instance.cpu]
model = "Xeon"
avx512 = true
vnni = "yes"
all_core_turbo_ghz = 3.5
memory_bandwidth_gbps = 12
source = "test"
[instance.price]
on_demand_usd_per_hour = {price}
source = "test"
as_of = "2026-11-30"
"#
        )
    }

    #[test]
    fn a_minimal_catalog_parses() {
        let catalog = InstanceCatalog::parse(&minimal("", "0.085"), "t.toml").unwrap();
        assert_eq!(catalog.instances.len(), 1);
        assert!(catalog.spot.is_empty());
    }

    #[test]
    fn a_negative_price_is_an_error_naming_its_line() {
        let error = InstanceCatalog::parse(&minimal("", "-0.085"), "t.toml").unwrap_err();
        let ProfilesError::Toml { line, message, .. } = &error else { panic!("{error}") };
        assert_eq!(*line, Some(21), "{message}");
        assert!(message.contains("line 21") && message.contains("greater than zero"), "{message}");
        assert!(error.to_string().starts_with("t.toml: "));
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_its_line() {
        let error = InstanceCatalog::parse(&minimal("gpus = 1", "0.085"), "t.toml").unwrap_err();
        let ProfilesError::Toml { line, message, .. } = &error else { panic!("{error}") };
        assert_eq!(*line, Some(12), "{message}");
        assert!(message.contains("gpus"), "{message}");
    }

    #[test]
    fn a_missing_source_is_an_error() {
        let text = minimal("", "0.085").replace("source = \"test\"\nas_of", "as_of");
        let error = InstanceCatalog::parse(&text, "t.toml").unwrap_err();
        assert!(error.to_string().contains("source"), "{error}");
    }

    #[test]
    fn inconsistencies_name_the_entry_line() {
        let one = minimal("", "0.085");
        let twice = format!("{one}\n{}", &one[one.find("[[instance]]").unwrap()..]);
        let error = InstanceCatalog::parse(&twice, "t.toml").unwrap_err();
        assert!(
            matches!(&error, ProfilesError::Invalid { line, item, .. } if *line > 20 && item == "c6i.large"),
            "{error}"
        );

        let wrong_family = minimal("", "0.085").replace("family = \"c6i\"", "family = \"c5\"");
        let error = InstanceCatalog::parse(&wrong_family, "t.toml").unwrap_err();
        assert!(error.to_string().contains("t.toml:6: c6i.large: family"), "{error}");

        let stray_spot = format!(
            "{}\n[[spot]]\nfamily = \"c5\"\ndiscount = 0.5\nsource = \"x\"\nas_of = \"2026-11-30\"\nnote = \"vary\"\n",
            minimal("", "0.085")
        );
        let error = InstanceCatalog::parse(&stray_spot, "t.toml").unwrap_err();
        assert!(error.to_string().contains("no instance of this family"), "{error}");
    }
}
