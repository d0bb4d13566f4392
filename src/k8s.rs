//! Kubernetes manifests for EKS, as YAML: the Deployment, Service, HorizontalPodAutoscaler and
//! PodDisruptionBudget that serve an artifact on a tier's instance type (`qtier k8s deploy`), and
//! one benchmark Job per instance type (`qtier k8s bench-jobs`).
//!
//! Pure functions: a config in, the documents (`serde_json::Value`) or a multi-document YAML
//! string out. YAML comes from `serde-saphyr`, whose default quoting keeps a string a string for
//! YAML 1.1 readers too (kubectl's go-yaml, PyYAML): `"8080"`, `"true"`, `"yes"`, `"on"` are
//! quoted.
//!
//! Pods get their artifact from an init container that runs `qtier pull` into an `emptyDir` at
//! [`MODELS_DIR`]; AWS credentials come only from IRSA (the service account's IAM role), never
//! from the manifests. Each pod takes one whole node of its instance type: it requests the node's
//! vCPUs and memory less what the node keeps for itself ([`pod_resources`]), its memory is limited
//! to that, and its CPU to the node's whole vCPUs, which `qtier serve` and `qtier bench` run as
//! many threads on (see [`PodResources::cpu_limit_millicores`]).

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use qtier_profiles::catalog::Service;
use qtier_profiles::recommend::{Purchase, TierRecommendation};
use qtier_profiles::{InstanceCatalog, InstanceProfile, TierSla, Tiers};
use serde_json::{Map, Value, json};

/// The image both containers run when `--image` is not given.
pub const DEFAULT_IMAGE: &str = "qtier:latest";
/// The port `qtier serve` listens on when `--port` is not given.
pub const DEFAULT_PORT: u16 = 8080;
/// The port the Service exposes (plain HTTP's).
pub const SERVICE_PORT: u16 = 80;
/// Where the `emptyDir` that holds the artifact is mounted.
pub const MODELS_DIR: &str = "/models";
/// Where `qtier pull` writes the artifact, and `qtier serve` and `qtier bench` read it.
pub const ARTIFACT_DIR: &str = "/models/artifact";
/// Where a bench Job writes its report before uploading it.
pub const BENCH_REPORT_FILE: &str = "/models/bench-report.json";
/// The numeric user and group the containers run as; the Dockerfile creates this user, with a
/// numeric `USER` so the kubelet can check `runAsNonRoot`.
pub const RUN_AS_ID: u32 = 10001;
/// The cache directory qtier gets in the pod (`$QTIER_CACHE`): the root filesystem is read-only,
/// `/tmp` is an `emptyDir`.
pub const CACHE_DIR: &str = "/tmp/qtier-cache";

/// Seconds before the first readiness check: loading and warming the model comes first.
pub const READINESS_INITIAL_DELAY_SECONDS: u32 = 60;
/// Seconds between readiness checks: a replica leaves the Service within about
/// `period x failure threshold` of failing.
pub const READINESS_PERIOD_SECONDS: u32 = 5;
/// Seconds before the first liveness check: `/healthz` answers as soon as the server listens,
/// before the model is loaded.
pub const LIVENESS_INITIAL_DELAY_SECONDS: u32 = 10;
/// Seconds between liveness checks.
pub const LIVENESS_PERIOD_SECONDS: u32 = 10;
/// Seconds a probe may take.
pub const PROBE_TIMEOUT_SECONDS: u32 = 2;
/// Failed probes in a row before a replica is restarted (liveness) or taken out (readiness).
pub const PROBE_FAILURE_THRESHOLD: u32 = 3;

/// CPU utilization, percent of the request, the autoscaler keeps replicas at: the recommendation
/// sizes replicas to run at [`qtier_profiles::recommend::TARGET_UTILIZATION`] of their capacity.
pub const HPA_CPU_UTILIZATION_PERCENT: u32 = 70;
/// The fraction of time busy encoding, thousandths, the autoscaler keeps replicas at when it goes by
/// [`ENCODER_BUSY_METRIC`]: [`qtier_profiles::recommend::TARGET_UTILIZATION`], as for CPU.
pub const HPA_ENCODER_BUSY_MILLI: u32 = 700;
/// Memory utilization, percent of the request, above which the autoscaler adds replicas. The model's
/// weights are a fixed part of it; growth beyond that is queued requests.
pub const HPA_MEMORY_UTILIZATION_PERCENT: u32 = 85;
/// The autoscaler's maximum is this many times the minimum when `--max-replicas` is not given.
pub const HPA_MAX_REPLICAS_FACTOR: u32 = 3;
/// Replicas when neither `--replicas` nor the recommendation says more: two, so that a node's loss
/// or a drain never takes the service down.
pub const DEFAULT_MIN_REPLICAS: u32 = 2;

/// CPU a node keeps for itself, millicores. EKS AMIs reserve 70 m (kube-reserved) on a 2-vCPU
/// node, plus about 2.5 m per vCPU above 4, and every EKS node runs DaemonSets (aws-node,
/// kube-proxy, the EBS CSI node plugin; the NVIDIA device plugin on GPU nodes) that request about
/// 150-250 m more. A judgement with headroom, never tight against the node's allocatable CPU.
pub const SYSTEM_CPU_MILLICORES: u64 = 400;
/// CPU a node keeps for itself per vCPU, millicores, on top of [`SYSTEM_CPU_MILLICORES`]: the
/// reservation grows with the node's size (kube-reserved and per-pod overheads).
pub const SYSTEM_CPU_MILLICORES_PER_VCPU: u64 = 10;
/// Memory a node keeps for itself, MiB: EKS's kube-reserved is 255 MiB + 11 MiB per pod the type
/// allows (29 pods on a c5.large: 574 MiB), the kubelet's hard eviction threshold is 100 MiB, and
/// DaemonSets take about 200 MiB.
pub const SYSTEM_MEMORY_MIB: u64 = 1024;
/// Further fraction of an instance's nominal memory the pod leaves: the kernel and firmware keep
/// 3-5% of it (a node reports that much less capacity than the instance type's figure), and
/// kube-reserved grows with the node's pod limit.
pub const SYSTEM_MEMORY_FRACTION: f64 = 0.08;
/// The smallest CPU a qtier pod is given, millicores: below this the node is too small to serve.
pub const MIN_POD_CPU_MILLICORES: u64 = 500;
/// The smallest memory a qtier pod is given, MiB.
pub const MIN_POD_MEMORY_MIB: u64 = 1024;

/// Seconds a bench Job may run before Kubernetes stops it: pull, warm-up and every workload of
/// `qtier bench model` (300 s at most each), with room for a slow node start.
pub const BENCH_JOB_DEADLINE_SECONDS: u32 = 7200;
/// Seconds a finished bench Job is kept (its logs with it) before Kubernetes deletes it.
pub const BENCH_JOB_TTL_SECONDS: u32 = 7 * 24 * 3600;
/// Retries of a failed bench pod (one: a reclaimed spot node, a failed pull).
pub const BENCH_JOB_BACKOFF_LIMIT: u32 = 1;
/// Prefix of every bench Job's name.
pub const BENCH_JOB_PREFIX: &str = "qtier-bench-";

/// The node label EKS sets to the EC2 instance type.
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";
/// The node label EKS managed node groups set to `SPOT` or `ON_DEMAND`.
pub const CAPACITY_TYPE_LABEL: &str = "eks.amazonaws.com/capacityType";
/// The extended resource (and node taint) of NVIDIA GPUs, from the NVIDIA device plugin.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// GPUs a qtier pod uses.
pub const GPUS_PER_POD: u32 = 1;
/// The label that carries the service tier.
pub const TIER_LABEL: &str = "qtier/tier";
/// The label that carries a bench Job's instance type.
pub const BENCH_INSTANCE_LABEL: &str = "qtier/instance-type";

/// The longest DNS-1123 label (names of most Kubernetes objects, label values).
const DNS_LABEL_MAX: usize = 63;
/// The longest DNS-1123 subdomain (service account names).
const DNS_SUBDOMAIN_MAX: usize = 253;

/// How a node's capacity is bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// On-demand instances only.
    OnDemand,
    /// Spot instances.
    Spot,
}

impl Capacity {
    /// The value of [`CAPACITY_TYPE_LABEL`].
    pub fn label(self) -> &'static str {
        match self {
            Capacity::OnDemand => "ON_DEMAND",
            Capacity::Spot => "SPOT",
        }
    }
}

/// CPU and memory a pod requests and is limited to, its threads and its GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodResources {
    /// CPU requested, millicores: the node's vCPUs less its own share.
    pub cpu_millicores: u64,
    /// The node's vCPUs: the threads `qtier serve` and `qtier bench` run (`--threads`), and the
    /// CPU limit.
    pub vcpu: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// NVIDIA GPUs (0 on CPU types).
    pub gpus: u32,
}

/// The CPU and memory a pod that takes a whole node of `vcpu` vCPUs and `memory_gib` GiB gets:
/// everything less [`SYSTEM_CPU_MILLICORES`] + [`SYSTEM_CPU_MILLICORES_PER_VCPU`] per vCPU and
/// [`SYSTEM_MEMORY_MIB`] + [`SYSTEM_MEMORY_FRACTION`] of the memory. An error when that leaves less
/// than [`MIN_POD_CPU_MILLICORES`] or [`MIN_POD_MEMORY_MIB`].
pub fn pod_resources(instance_type: &str, vcpu: u32, memory_gib: f64, gpus: u32) -> anyhow::Result<PodResources> {
    let vcpus = u64::from(vcpu);
    let cpu_millicores = (vcpus * 1000).saturating_sub(SYSTEM_CPU_MILLICORES + vcpus * SYSTEM_CPU_MILLICORES_PER_VCPU);
    let total_mib = (memory_gib * 1024.0).floor();
    let reserved_mib = SYSTEM_MEMORY_MIB as f64 + (total_mib * SYSTEM_MEMORY_FRACTION).ceil();
    let memory_mib = (total_mib - reserved_mib).max(0.0) as u64;
    if cpu_millicores < MIN_POD_CPU_MILLICORES || memory_mib < MIN_POD_MEMORY_MIB {
        bail!(
            "{instance_type} ({vcpu} vCPUs, {memory_gib} GiB) is too small: after what the node keeps for \
             itself a pod would get {cpu_millicores}m CPU and {memory_mib} MiB, below the minimum \
             {MIN_POD_CPU_MILLICORES}m and {MIN_POD_MEMORY_MIB} MiB"
        );
    }
    Ok(PodResources { cpu_millicores, vcpu, memory_mib, gpus })
}

impl PodResources {
    /// The CPU limit, millicores: the node's whole vCPUs, not the request. A limit equal to the
    /// request (1580m on a 2-vCPU node) is a CFS quota of 1.58 CPUs, which Rust's
    /// `available_parallelism` rounds down to one thread, so `qtier serve` ran single-threaded
    /// on the 2-vCPU types the recommendation picks for silver and bronze; two threads under that
    /// quota were throttled. MiniLM int8 b1 x s128 (`qtier bench model` in a cgroup with that
    /// quota, 2-core Zen 4): p50/p99 17.8/21.4 ms on one thread, 14.1/38.4 ms on two, against
    /// 9.1/14.8 ms on two under a 2-CPU quota. The pod's QoS class is Burstable; its memory is
    /// still limited to its request, so it is not the first evicted under memory pressure.
    pub fn cpu_limit_millicores(&self) -> u64 {
        u64::from(self.vcpu) * 1000
    }
}

/// The nodes a pod runs on and what it takes of them.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePlacement {
    /// The EC2 instance type.
    pub instance_type: String,
    /// On-demand or spot; None: either (the selector does not name a capacity type).
    pub capacity: Option<Capacity>,
    /// What the pod requests.
    pub resources: PodResources,
}

impl NodePlacement {
    /// The placement on `instance` (an EC2 type of the catalog). SageMaker types are refused:
    /// EKS nodes are EC2 instances.
    pub fn on(instance: &InstanceProfile, capacity: Option<Capacity>) -> anyhow::Result<Self> {
        let name = instance.name.as_str();
        if instance.service != Service::Ec2 {
            bail!("{name} is a SageMaker instance type; EKS nodes are EC2 instances (e.g. {})", ec2_name(name));
        }
        let gpus = if instance.gpu.is_some() { GPUS_PER_POD } else { 0 };
        let resources = pod_resources(name, instance.vcpu, instance.memory_gib.get(), gpus)?;
        Ok(Self { instance_type: name.to_string(), capacity, resources })
    }
}

/// `ml.g5.2xlarge` -> `g5.2xlarge`.
fn ec2_name(name: &str) -> &str {
    name.strip_prefix("ml.").unwrap_or(name)
}

/// The catalog's entry for `name`, or an error naming it.
pub fn catalog_instance<'a>(catalog: &'a InstanceCatalog, name: &str) -> anyhow::Result<&'a InstanceProfile> {
    catalog.get(name).with_context(|| {
        format!("unknown instance type `{name}`: not in the instance catalog ({})", catalog.source_name)
    })
}

/// The instance type and capacity a tier is deployed on.
#[derive(Debug, Clone, PartialEq)]
pub struct TierChoice {
    /// The instance type.
    pub instance_type: String,
    /// On-demand or spot.
    pub capacity: Capacity,
    /// Instances the recommendation sized the tier to (for its required throughput), when it
    /// chose this type.
    pub recommended_instances: Option<u64>,
    /// The tier's tightest latency limit, milliseconds.
    pub tightest_limit_ms: f64,
}

/// The tightest latency limit of `sla`, milliseconds.
fn tightest_limit_ms(sla: &TierSla) -> f64 {
    sla.limit.iter().map(|l| l.max_ms.get()).fold(f64::INFINITY, f64::min)
}

/// Tiers whose tightest latency limit is at most this many milliseconds are latency-critical:
/// their pods keep the int8 kernels' worker threads spinning between requests
/// ([`LATENCY_CRITICAL_SPIN_MS`]).
pub const LATENCY_CRITICAL_LIMIT_MS: f64 = 50.0;

/// `QTIER_SPIN_MS` of a latency-critical tier's serving container: a parked worker took longer to
/// wake than a small GEMM, so after each idle gap a request ran partly on one core. MiniLM int8 b1
/// x s128, open loop at 20 requests/s on the development host: p50/p99 9.73/30.08 ms with the
/// default 2 ms spin, 7.47/15.72 ms with 100 ms. A second of spinning keeps a worker awake across
/// the gaps of a tier's traffic at a cost of one busy core per worker, which a pod that takes its
/// node has paid for anyway; its autoscaler then cannot go by CPU ([`ENCODER_BUSY_METRIC`]).
pub const LATENCY_CRITICAL_SPIN_MS: u32 = 1000;

/// The per-pod metric, from the custom metrics API, that the autoscaler of a pod whose workers
/// spin between requests scales on: the rate of `qtier serve`'s
/// `qtier_encoder_busy_seconds_total`, the fraction of time the model is encoding, as a
/// Prometheus adapter rule names it (README). CPU time is no measure of load there: a worker
/// spinning through the gaps of even light traffic takes a whole core (MiniLM int8 at 5 requests/s
/// with `QTIER_SPIN_MS=1000` and 2 threads: 1.01 cores, against 0.05 with the default 2 ms spin),
/// so a CPU target of 70% of the request scaled such a Deployment towards its maximum at once.
pub const ENCODER_BUSY_METRIC: &str = "qtier_encoder_busy_ratio";

/// Whether a serving container with `QTIER_SPIN_MS` `spin_ms` (None: the default) spins longer
/// than the kernels' default ([`qtier_kernels::SPIN_BEFORE_PARK`], 2 ms), which makes its CPU time
/// no measure of its load, so that its autoscaler goes by [`ENCODER_BUSY_METRIC`] instead.
pub fn scales_on_busy_time(spin_ms: Option<u32>) -> bool {
    spin_ms.is_some_and(|ms| u128::from(ms) > qtier_kernels::SPIN_BEFORE_PARK.as_millis())
}

/// The serving container's `QTIER_SPIN_MS` for a tier with `choice`: `override_ms` when given,
/// else [`LATENCY_CRITICAL_SPIN_MS`] for a latency-critical tier, else none (the default spin).
pub fn serve_spin_ms(choice: &TierChoice, override_ms: Option<u32>) -> Option<u32> {
    override_ms.or((choice.tightest_limit_ms <= LATENCY_CRITICAL_LIMIT_MS).then_some(LATENCY_CRITICAL_SPIN_MS))
}

/// The instance type and capacity of tier `tier` from a recommendation (`qtier recommend`'s
/// tiers): its chosen type, or `instance_override`; spot when the recommendation bought that type
/// as spot for the tier (when the type is not among its candidates: when the tier permitted spot).
pub fn tier_choice_from_recommendation(
    tiers: &[TierRecommendation],
    tier: &str,
    instance_override: Option<&str>,
) -> anyhow::Result<TierChoice> {
    let names: Vec<&str> = tiers.iter().map(|t| t.tier.name.as_str()).collect();
    let Some(recommended) = tiers.iter().find(|t| t.tier.name.as_str() == tier) else {
        bail!("unknown tier `{tier}`: the recommendation has tiers {}", names.join(", "));
    };
    let instance_type = match (instance_override, &recommended.chosen) {
        (Some(name), _) => name.to_string(),
        (None, Some(chosen)) => chosen.clone(),
        (None, None) => bail!(
            "tier `{tier}` has no chosen instance type in the recommendation ({}); pass --instance-type to \
             choose one",
            recommended.summary
        ),
    };
    let candidate = recommended.candidates.iter().find(|c| c.instance == instance_type);
    let spot = candidate.map_or(recommended.spot_permitted, |c| c.purchase == Purchase::Spot);
    let recommended_instances =
        candidate.filter(|_| recommended.chosen.as_deref() == Some(&instance_type)).and_then(|c| c.instances);
    Ok(TierChoice {
        instance_type,
        capacity: if spot { Capacity::Spot } else { Capacity::OnDemand },
        recommended_instances,
        tightest_limit_ms: tightest_limit_ms(&recommended.tier),
    })
}

/// Tier `tier` of `tiers` on `instance_type` (the user's `--instance-type`) when no
/// recommendation is given: spot when the tier permits it (`allow_spot`: the user's
/// `--allow-spot`) and the catalog has a spot market for the type's family, as `qtier recommend`
/// prices it.
pub fn tier_choice_from_tiers(
    tiers: &Tiers,
    tier: &str,
    instance_type: Option<&str>,
    catalog: &InstanceCatalog,
    allow_spot: bool,
) -> anyhow::Result<TierChoice> {
    let names: Vec<&str> = tiers.tiers.iter().map(|t| t.name.as_str()).collect();
    let Some(sla) = tiers.tiers.iter().find(|t| t.name.as_str() == tier) else {
        bail!("unknown tier `{tier}`: {} defines {}", tiers.source_name, names.join(", "));
    };
    let Some(instance_type) = instance_type else {
        bail!(
            "no instance type for tier `{tier}`: pass --recommendation (qtier recommend --json output) or \
             --instance-type"
        );
    };
    let instance = catalog_instance(catalog, instance_type)?;
    let spot = sla.spot.permits_spot(allow_spot) && catalog.spot_for(instance.family.as_str()).is_some();
    Ok(TierChoice {
        instance_type: instance.name.to_string(),
        capacity: if spot { Capacity::Spot } else { Capacity::OnDemand },
        recommended_instances: None,
        tightest_limit_ms: tightest_limit_ms(sla),
    })
}

/// Everything `qtier k8s deploy` prints manifests for.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployConfig {
    /// Name of the Deployment, Service, autoscaler and disruption budget (a DNS-1035 label).
    pub name: String,
    /// Namespace (None: the one `kubectl` uses).
    pub namespace: Option<String>,
    /// The service tier (a label).
    pub tier: String,
    /// The artifact's S3 URI.
    pub artifact: String,
    /// The container image.
    pub image: String,
    /// The port `qtier serve` listens on.
    pub port: u16,
    /// The autoscaler's minimum (the Deployment itself names no replica count, so that
    /// re-applying it never undoes the autoscaler's scaling).
    pub min_replicas: u32,
    /// The autoscaler's maximum.
    pub max_replicas: u32,
    /// The nodes.
    pub placement: NodePlacement,
    /// The service account whose IAM role (IRSA) reads the artifact.
    pub service_account: Option<String>,
    /// Whether the load balancer is reachable from the internet (default: inside the VPC).
    pub internet_facing: bool,
    /// `QTIER_SPIN_MS` of the serving container (None: qtier's default), see [`serve_spin_ms`].
    pub spin_ms: Option<u32>,
}

/// Everything `qtier k8s bench-jobs` prints manifests for.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchJobsConfig {
    /// Namespace (None: the one `kubectl` uses).
    pub namespace: Option<String>,
    /// The artifact's S3 URI.
    pub artifact: String,
    /// Where reports go: `<results>/<instance-type>.json`.
    pub results: String,
    /// The container image.
    pub image: String,
    /// One Job per placement (on-demand or spot alike: no capacity type is selected).
    pub placements: Vec<NodePlacement>,
    /// The service account whose IAM role (IRSA) reads the artifact and writes the reports.
    pub service_account: Option<String>,
}

/// Checks a DNS-1123 label (`what` names it in the error): at most 63 lowercase letters, digits
/// and `-`, starting and ending with a letter or digit; a DNS-1035 label (Service names) must also
/// start with a letter.
pub fn check_dns_label(what: &str, value: &str, dns_1035: bool) -> anyhow::Result<()> {
    let bytes = value.as_bytes();
    let valid = !value.is_empty()
        && value.len() <= DNS_LABEL_MAX
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && (!dns_1035 || bytes[0].is_ascii_lowercase());
    if !valid {
        bail!(
            "{what} `{value}` is not a valid Kubernetes name: at most {DNS_LABEL_MAX} lowercase letters, digits \
             and `-`, starting with a {} and ending with a letter or digit",
            if dns_1035 { "letter" } else { "letter or digit" }
        );
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain (service account names): dot-separated DNS-1123 labels, at most
/// 253 characters.
pub fn check_dns_subdomain(what: &str, value: &str) -> anyhow::Result<()> {
    if value.len() > DNS_SUBDOMAIN_MAX || value.split('.').any(|label| check_dns_label(what, label, false).is_err()) {
        bail!(
            "{what} `{value}` is not a valid Kubernetes name: dot-separated lowercase letters, digits and `-`, \
             at most {DNS_SUBDOMAIN_MAX} characters"
        );
    }
    Ok(())
}

/// Checks an `s3://bucket/key...` URI (`what` names it in the error).
pub fn check_s3_uri(what: &str, value: &str) -> anyhow::Result<()> {
    let bucket = value.strip_prefix("s3://").and_then(|rest| rest.split('/').next()).unwrap_or("");
    if bucket.is_empty() || value.chars().any(char::is_whitespace) {
        bail!("{what} `{value}` is not an S3 URI (s3://bucket/prefix)");
    }
    Ok(())
}

/// Checks a container image reference: not empty, no whitespace.
pub fn check_image(value: &str) -> anyhow::Result<()> {
    if value.is_empty() || value.chars().any(char::is_whitespace) {
        bail!("image `{value}` is not an image reference (e.g. {DEFAULT_IMAGE}, or registry/qtier:tag)");
    }
    Ok(())
}

/// The Job name for `instance_type`: [`BENCH_JOB_PREFIX`] and the type with dots as dashes
/// (`g4dn.xlarge` -> `qtier-bench-g4dn-xlarge`), checked as a DNS-1123 label.
pub fn bench_job_name(instance_type: &str) -> anyhow::Result<String> {
    let name = format!("{BENCH_JOB_PREFIX}{}", instance_type.to_ascii_lowercase().replace('.', "-"));
    check_dns_label(&format!("the Job name for instance type {instance_type}:"), &name, true)?;
    Ok(name)
}

/// The report URI of `instance_type` under `results`: `<results>/<instance-type>.json`.
pub fn bench_report_uri(results: &str, instance_type: &str) -> String {
    format!("{}/{instance_type}.json", results.trim_end_matches('/'))
}

/// The Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget, as multi-document
/// YAML.
pub fn deploy_manifests(config: &DeployConfig) -> anyhow::Result<String> {
    to_yaml(&deploy_documents(config))
}

/// The Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget.
pub fn deploy_documents(config: &DeployConfig) -> Vec<Value> {
    let labels = json!({
        "app.kubernetes.io/name": "qtier",
        "app.kubernetes.io/instance": config.name,
        "app.kubernetes.io/component": "serve",
        TIER_LABEL: config.tier,
    });
    let selector = json!({
        "app.kubernetes.io/name": "qtier",
        "app.kubernetes.io/instance": config.name,
    });
    let metadata = |annotations: Option<Value>| {
        let mut metadata = Map::new();
        metadata.insert("name".into(), json!(config.name));
        if let Some(namespace) = &config.namespace {
            metadata.insert("namespace".into(), json!(namespace));
        }
        metadata.insert("labels".into(), labels.clone());
        if let Some(annotations) = annotations {
            metadata.insert("annotations".into(), annotations);
        }
        Value::Object(metadata)
    };

    let placement = &config.placement;
    let pull = pull_container(&config.image, &config.artifact, &placement.resources);
    let serve = json!({
        "name": "serve",
        "image": config.image,
        "command": ["qtier"],
        "args": [
            "serve", ARTIFACT_DIR, "--port", config.port.to_string(), "--threads", placement.resources.vcpu.to_string(),
        ],
        "ports": [{"name": "http", "containerPort": config.port, "protocol": "TCP"}],
        "env": serve_env(config.spin_ms),
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "initialDelaySeconds": LIVENESS_INITIAL_DELAY_SECONDS,
            "periodSeconds": LIVENESS_PERIOD_SECONDS,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": PROBE_FAILURE_THRESHOLD,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "initialDelaySeconds": READINESS_INITIAL_DELAY_SECONDS,
            "periodSeconds": READINESS_PERIOD_SECONDS,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": PROBE_FAILURE_THRESHOLD,
        },
        "resources": resources(&placement.resources, true),
        "securityContext": container_security_context(),
        "volumeMounts": volume_mounts(),
    });
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(None),
        "spec": {
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": labels,
                    // The common scrape convention, for the Prometheus that feeds ENCODER_BUSY_METRIC.
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": config.port.to_string(),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec(placement, config.service_account.as_deref(), None, pull, serve),
            },
        },
    });

    let scheme = if config.internet_facing { "internet-facing" } else { "internal" };
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(Some(json!({
            // The AWS Load Balancer Controller's annotation, and the in-tree controller's.
            "service.beta.kubernetes.io/aws-load-balancer-scheme": scheme,
            "service.beta.kubernetes.io/aws-load-balancer-internal": (!config.internet_facing).to_string(),
        }))),
        "spec": {
            "type": "LoadBalancer",
            "selector": selector,
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    });

    let utilization = |name: &str, percent: u32| {
        json!({
            "type": "Resource",
            "resource": {"name": name, "target": {"type": "Utilization", "averageUtilization": percent}},
        })
    };
    let load = if scales_on_busy_time(config.spin_ms) {
        json!({
            "type": "Pods",
            "pods": {
                "metric": {"name": ENCODER_BUSY_METRIC},
                "target": {"type": "AverageValue", "averageValue": format!("{HPA_ENCODER_BUSY_MILLI}m")},
            },
        })
    } else {
        utilization("cpu", HPA_CPU_UTILIZATION_PERCENT)
    };
    let autoscaler = json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(None),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": config.name},
            "minReplicas": config.min_replicas,
            "maxReplicas": config.max_replicas,
            "metrics": [load, utilization("memory", HPA_MEMORY_UTILIZATION_PERCENT)],
        },
    });

    // maxUnavailable rather than minAvailable: a drain can always proceed one pod at a time, even
    // with a single replica.
    let disruption_budget = json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(None),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    });

    vec![deployment, service, autoscaler, disruption_budget]
}

/// One batch/v1 Job per placement, as multi-document YAML (see [`bench_job_documents`]).
pub fn bench_job_manifests(config: &BenchJobsConfig) -> anyhow::Result<String> {
    to_yaml(&bench_job_documents(config)?)
}

/// One batch/v1 Job per placement: pull the artifact, run `qtier bench model` (which finds the
/// instance type from the instance metadata service), upload the report with
/// `qtier publish-report` to `<results>/<instance-type>.json`. An error when a type is given twice.
pub fn bench_job_documents(config: &BenchJobsConfig) -> anyhow::Result<Vec<Value>> {
    let mut names = BTreeSet::new();
    let mut jobs = Vec::with_capacity(config.placements.len());
    for placement in &config.placements {
        let instance_type = placement.instance_type.as_str();
        let name = bench_job_name(instance_type)?;
        if !names.insert(name.clone()) {
            bail!("instance type {instance_type} is given twice");
        }
        let labels = json!({
            "app.kubernetes.io/name": "qtier",
            "app.kubernetes.io/component": "bench",
            BENCH_INSTANCE_LABEL: instance_type,
        });
        let mut metadata = Map::new();
        metadata.insert("name".into(), json!(name));
        if let Some(namespace) = &config.namespace {
            metadata.insert("namespace".into(), json!(namespace));
        }
        metadata.insert("labels".into(), labels.clone());

        let pull = pull_container(&config.image, &config.artifact, &placement.resources);
        // The shell only redirects the report into a file; the report's URI is an argument ($1),
        // never part of the script.
        let threads = placement.resources.vcpu;
        let script = format!(
            "set -eu\nqtier --threads {threads} bench model {ARTIFACT_DIR} --json > {BENCH_REPORT_FILE}\n\
             exec qtier publish-report {BENCH_REPORT_FILE} \"$1\"\n"
        );
        let bench = json!({
            "name": "bench",
            "image": config.image,
            "command": ["/bin/sh", "-c"],
            "args": [script, "qtier-bench", bench_report_uri(&config.results, instance_type)],
            "env": container_env(),
            "resources": resources(&placement.resources, true),
            "securityContext": container_security_context(),
            "volumeMounts": volume_mounts(),
        });
        jobs.push(json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": Value::Object(metadata),
            "spec": {
                "backoffLimit": BENCH_JOB_BACKOFF_LIMIT,
                "activeDeadlineSeconds": BENCH_JOB_DEADLINE_SECONDS,
                "ttlSecondsAfterFinished": BENCH_JOB_TTL_SECONDS,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": pod_spec(placement, config.service_account.as_deref(), Some("Never"), pull, bench),
                },
            },
        }));
    }
    Ok(jobs)
}

/// The pod spec shared by the Deployment and the Jobs: one init container that pulls the artifact,
/// one main container, the node selector, GPU toleration, security context and volumes.
fn pod_spec(
    placement: &NodePlacement,
    service_account: Option<&str>,
    restart_policy: Option<&str>,
    init: Value,
    main: Value,
) -> Value {
    let mut node_selector = Map::new();
    node_selector.insert(INSTANCE_TYPE_LABEL.into(), json!(placement.instance_type));
    if let Some(capacity) = placement.capacity {
        node_selector.insert(CAPACITY_TYPE_LABEL.into(), json!(capacity.label()));
    }
    let mut spec = Map::new();
    if let Some(policy) = restart_policy {
        spec.insert("restartPolicy".into(), json!(policy));
    }
    if let Some(account) = service_account {
        spec.insert("serviceAccountName".into(), json!(account));
    }
    // IRSA mounts its own web identity token; the pod needs no Kubernetes API token.
    spec.insert("automountServiceAccountToken".into(), json!(false));
    spec.insert(
        "securityContext".into(),
        json!({
            "runAsNonRoot": true,
            "runAsUser": RUN_AS_ID,
            "runAsGroup": RUN_AS_ID,
            "fsGroup": RUN_AS_ID,
            "seccompProfile": {"type": "RuntimeDefault"},
        }),
    );
    spec.insert("nodeSelector".into(), Value::Object(node_selector));
    if placement.resources.gpus > 0 {
        spec.insert("tolerations".into(), json!([{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]));
    }
    spec.insert("initContainers".into(), json!([init]));
    spec.insert("containers".into(), json!([main]));
    spec.insert("volumes".into(), json!([{"name": "models", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]));
    Value::Object(spec)
}

/// The init container: `qtier pull <artifact> /models/artifact --force`. `--force` because a pod
/// whose sandbox is recreated runs its init containers again on the same `emptyDir`, where the
/// artifact already is. It gets the main container's CPU and memory (no GPU): a pod's request is
/// the larger of its init containers' and the sum of its containers', so this costs nothing.
fn pull_container(image: &str, artifact: &str, resources_of_pod: &PodResources) -> Value {
    json!({
        "name": "pull",
        "image": image,
        "command": ["qtier"],
        "args": ["pull", artifact, ARTIFACT_DIR, "--force"],
        "env": container_env(),
        "resources": resources(resources_of_pod, false),
        "securityContext": container_security_context(),
        "volumeMounts": volume_mounts(),
    })
}

/// Requests; limits equal to them but for the CPU, limited to the node's vCPUs
/// ([`PodResources::cpu_limit_millicores`]); GPUs when `with_gpus` and the pod has any.
fn resources(pod: &PodResources, with_gpus: bool) -> Value {
    let mut requests = Map::new();
    requests.insert("cpu".into(), json!(format!("{}m", pod.cpu_millicores)));
    requests.insert("memory".into(), json!(format!("{}Mi", pod.memory_mib)));
    if with_gpus && pod.gpus > 0 {
        requests.insert(GPU_RESOURCE.into(), json!(pod.gpus));
    }
    let mut limits = requests.clone();
    limits.insert("cpu".into(), json!(format!("{}m", pod.cpu_limit_millicores())));
    json!({"requests": requests, "limits": limits})
}

fn container_env() -> Value {
    json!([{"name": "QTIER_CACHE", "value": CACHE_DIR}])
}

/// The serving container's environment: [`container_env`], plus `QTIER_SPIN_MS` when given.
fn serve_env(spin_ms: Option<u32>) -> Value {
    let mut env = container_env();
    if let (Some(spin_ms), Some(list)) = (spin_ms, env.as_array_mut()) {
        list.push(json!({"name": qtier_kernels::SPIN_ENV_VAR, "value": spin_ms.to_string()}));
    }
    env
}

fn container_security_context() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

fn volume_mounts() -> Value {
    json!([{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}])
}

/// The documents as YAML, separated by `---` lines.
fn to_yaml(documents: &[Value]) -> anyhow::Result<String> {
    let texts = documents
        .iter()
        .map(|document| serde_saphyr::to_string(document).context("serializing a manifest to YAML"))
        .collect::<anyhow::Result<Vec<String>>>()?;
    Ok(texts.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> InstanceCatalog {
        InstanceCatalog::builtin().unwrap()
    }

    fn placement(instance_type: &str, capacity: Option<Capacity>) -> NodePlacement {
        NodePlacement::on(catalog().get(instance_type).unwrap(), capacity).unwrap()
    }

    fn deploy_config(instance_type: &str, capacity: Capacity) -> DeployConfig {
        DeployConfig {
            name: "qtier-gold".into(),
            namespace: Some("models".into()),
            tier: "gold".into(),
            artifact: "s3://bucket/minilm/abc".into(),
            image: DEFAULT_IMAGE.into(),
            port: DEFAULT_PORT,
            min_replicas: 2,
            max_replicas: 6,
            placement: placement(instance_type, Some(capacity)),
            service_account: Some("qtier-reader".into()),
            internet_facing: false,
            spin_ms: Some(LATENCY_CRITICAL_SPIN_MS),
        }
    }

    #[test]
    fn pod_resources_leave_the_nodes_share_and_refuse_tiny_nodes() {
        // c5.2xlarge: 8 vCPUs, 16 GiB.
        let r = pod_resources("c5.2xlarge", 8, 16.0, 0).unwrap();
        assert_eq!((r.cpu_millicores, r.cpu_limit_millicores(), r.vcpu), (8000 - 400 - 80, 8000, 8));
        assert_eq!(r.memory_mib, 16384 - 1024 - 1311);
        // c5.large: 2 vCPUs, 4 GiB still fits.
        let r = pod_resources("c5.large", 2, 4.0, 0).unwrap();
        assert_eq!((r.cpu_millicores, r.memory_mib), (1580, 4096 - 1024 - 328));
        // Limited to both vCPUs: a quota of 1.58 CPUs is one thread.
        assert_eq!(r.cpu_limit_millicores(), 2000);
        let error = pod_resources("t4g.nano", 1, 0.5, 0).unwrap_err().to_string();
        assert!(error.contains("t4g.nano") && error.contains("too small"), "{error}");
    }

    #[test]
    fn gpu_types_request_a_gpu_and_tolerate_its_taint_cpu_types_do_not() {
        let gpu = deploy_documents(&deploy_config("g4dn.xlarge", Capacity::OnDemand));
        let kinds: Vec<&str> = gpu.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]);
        let pod = &gpu[0]["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["resources"]["limits"][GPU_RESOURCE], 1);
        assert_eq!(pod["containers"][0]["resources"]["requests"][GPU_RESOURCE], 1);
        assert!(pod["initContainers"][0]["resources"]["limits"].get(GPU_RESOURCE).is_none());
        assert_eq!(pod["tolerations"], json!([{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]));
        assert_eq!(pod["nodeSelector"][INSTANCE_TYPE_LABEL], "g4dn.xlarge");
        assert_eq!(pod["nodeSelector"][CAPACITY_TYPE_LABEL], "ON_DEMAND");

        let cpu = deploy_documents(&deploy_config("c5.2xlarge", Capacity::Spot));
        let pod = &cpu[0]["spec"]["template"]["spec"];
        assert!(pod["containers"][0]["resources"]["limits"].get(GPU_RESOURCE).is_none());
        assert!(pod.get("tolerations").is_none());
        assert_eq!(pod["nodeSelector"][CAPACITY_TYPE_LABEL], "SPOT");
        assert_eq!(pod["containers"][0]["resources"]["requests"]["cpu"], "7520m");
        assert_eq!(pod["containers"][0]["resources"]["limits"]["cpu"], "8000m");
        assert_eq!(pod["containers"][0]["resources"]["requests"]["memory"], "14049Mi");
        assert_eq!(pod["containers"][0]["resources"]["limits"]["memory"], "14049Mi");
    }

    #[test]
    fn deployment_pulls_then_serves_with_probes_as_non_root() {
        let docs = deploy_documents(&deploy_config("c5.2xlarge", Capacity::OnDemand));
        let deployment = &docs[0];
        assert!(deployment["spec"].get("replicas").is_none(), "the autoscaler owns the replica count");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "qtier-reader");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let pull = &pod["initContainers"][0];
        assert_eq!(pull["args"], json!(["pull", "s3://bucket/minilm/abc", "/models/artifact", "--force"]));
        let serve = &pod["containers"][0];
        assert_eq!(serve["args"], json!(["serve", "/models/artifact", "--port", "8080", "--threads", "8"]));
        assert_eq!(serve["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(serve["readinessProbe"]["initialDelaySeconds"], 60);
        assert_eq!(serve["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(serve["ports"][0]["containerPort"], 8080);
        for container in [pull, serve] {
            assert_eq!(container["image"], DEFAULT_IMAGE);
            assert_eq!(container["volumeMounts"][0]["mountPath"], "/models");
        }
        assert_eq!(docs[0]["metadata"]["namespace"], "models");
        assert_eq!(docs[1]["spec"]["type"], "LoadBalancer");
        assert_eq!(docs[1]["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-internal"], "true");
        assert_eq!(docs[2]["spec"]["minReplicas"], 2);
        assert_eq!(docs[2]["spec"]["maxReplicas"], 6);
        assert_eq!(docs[3]["spec"]["maxUnavailable"], 1);
    }

    #[test]
    fn strings_that_yaml_1_1_reads_as_other_types_are_quoted() {
        let mut config = deploy_config("c5.2xlarge", Capacity::OnDemand);
        config.tier = "yes".into();
        config.namespace = Some("on".into());
        let yaml = deploy_manifests(&config).unwrap();
        // kubectl's go-yaml and PyYAML read a plain `yes`, `on` or `true` as a boolean and `8080`
        // as a number; each must stay a string.
        let quoted_strings =
            ["qtier/tier: \"yes\"", "namespace: \"on\"", "- \"8080\"", "aws-load-balancer-internal: \"true\""];
        for quoted in quoted_strings {
            let single = quoted.replace('"', "'");
            assert!(yaml.contains(quoted) || yaml.contains(&single), "{quoted} missing:\n{yaml}");
        }
        assert_eq!(yaml.matches("\n---\n").count(), 3, "{yaml}");
        assert!(yaml.contains("containerPort: 8080\n"), "numbers stay numbers:\n{yaml}");
    }

    #[test]
    fn bench_jobs_are_named_for_their_type_and_upload_there() {
        let config = BenchJobsConfig {
            namespace: None,
            artifact: "s3://bucket/a".into(),
            results: "s3://bucket/results/".into(),
            image: "registry/qtier:1".into(),
            placements: vec![placement("g4dn.xlarge", None), placement("c5.2xlarge", None)],
            service_account: None,
        };
        let docs = bench_job_documents(&config).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["metadata"]["name"], "qtier-bench-g4dn-xlarge");
        assert_eq!(docs[1]["metadata"]["name"], "qtier-bench-c5-2xlarge");
        let pod = &docs[0]["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert!(pod.get("serviceAccountName").is_none());
        assert!(pod["nodeSelector"].get(CAPACITY_TYPE_LABEL).is_none());
        assert_eq!(pod["containers"][0]["resources"]["limits"][GPU_RESOURCE], 1);
        let args = pod["containers"][0]["args"].as_array().unwrap();
        assert!(
            args[0]
                .as_str()
                .unwrap()
                .contains("qtier --threads 4 bench model /models/artifact --json > /models/bench-report.json")
        );
        assert!(args[0].as_str().unwrap().contains("qtier publish-report /models/bench-report.json \"$1\""));
        assert_eq!(args[2], "s3://bucket/results/g4dn.xlarge.json");
        assert!(docs[1]["spec"]["template"]["spec"].get("tolerations").is_none());

        let twice = BenchJobsConfig { placements: vec![placement("g5.xlarge", None); 2], ..config };
        let error = bench_job_documents(&twice).unwrap_err().to_string();
        assert!(error.contains("g5.xlarge is given twice"), "{error}");
    }

    #[test]
    fn names_and_uris_are_checked() {
        assert!(check_dns_label("name", "qtier-gold", true).is_ok());
        for bad in ["", "Qtier", "qtier_gold", "-qtier", "qtier-", &"a".repeat(64)] {
            assert!(check_dns_label("name", bad, false).is_err(), "{bad}");
        }
        assert!(check_dns_label("namespace", "1models", false).is_ok());
        assert!(check_dns_label("name", "1models", true).is_err());
        assert!(check_dns_subdomain("service account", "qtier.reader-1").is_ok());
        assert!(check_dns_subdomain("service account", "qtier..reader").is_err());
        assert!(check_s3_uri("artifact", "s3://bucket/prefix").is_ok());
        for bad in ["bucket/prefix", "s3://", "s3:///key", "s3://b/a b", "https://bucket/x"] {
            assert!(check_s3_uri("artifact", bad).is_err(), "{bad}");
        }
        assert!(check_image("").is_err());
        assert_eq!(bench_job_name("p4d.24xlarge").unwrap(), "qtier-bench-p4d-24xlarge");
        assert_eq!(bench_report_uri("s3://b/r//", "g5.xlarge"), "s3://b/r/g5.xlarge.json");
    }

    #[test]
    fn sagemaker_types_are_refused_as_nodes() {
        let error = NodePlacement::on(catalog().get("ml.g5.2xlarge").unwrap(), None).unwrap_err().to_string();
        assert!(error.contains("ml.g5.2xlarge is a SageMaker instance type") && error.contains("g5.2xlarge"));
        let error = catalog_instance(&catalog(), "m5.large").unwrap_err().to_string();
        assert!(error.contains("unknown instance type `m5.large`"), "{error}");
    }

    #[test]
    fn tier_capacity_follows_the_tier_definition() {
        let (tiers, catalog) = (Tiers::builtin().unwrap(), catalog());
        let c5 = Some("c5.2xlarge");
        let capacity = |tier: &str, allow_spot: bool| {
            tier_choice_from_tiers(&tiers, tier, c5, &catalog, allow_spot).unwrap().capacity
        };
        assert_eq!(capacity("gold", true), Capacity::OnDemand);
        assert_eq!(capacity("silver", false), Capacity::OnDemand);
        assert_eq!(capacity("silver", true), Capacity::Spot);
        assert_eq!(capacity("bronze", false), Capacity::Spot);
        let error = tier_choice_from_tiers(&tiers, "platinum", c5, &catalog, false).unwrap_err().to_string();
        assert!(error.contains("unknown tier `platinum`") && error.contains("gold, silver, bronze"), "{error}");
        let error = tier_choice_from_tiers(&tiers, "gold", None, &catalog, false).unwrap_err().to_string();
        assert!(error.contains("no instance type for tier `gold`"), "{error}");
    }

    #[test]
    fn spinning_pods_scale_on_the_encoders_busy_time_others_on_cpu() {
        let metric_names = |spin_ms: Option<u32>| {
            let config = DeployConfig { spin_ms, ..deploy_config("c5.2xlarge", Capacity::OnDemand) };
            let docs = deploy_documents(&config);
            let metrics = docs[2]["spec"]["metrics"].as_array().unwrap().clone();
            metrics
                .iter()
                .map(|m| m["resource"]["name"].as_str().or(m["pods"]["metric"]["name"].as_str()).unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(metric_names(None), ["cpu", "memory"]);
        let default_spin_ms = u32::try_from(qtier_kernels::SPIN_BEFORE_PARK.as_millis()).unwrap();
        assert_eq!(default_spin_ms, 2);
        assert_eq!(metric_names(Some(default_spin_ms)), ["cpu", "memory"]);
        assert_eq!(metric_names(Some(default_spin_ms + 1)), [ENCODER_BUSY_METRIC, "memory"]);
        let docs = deploy_documents(&deploy_config("c5.2xlarge", Capacity::OnDemand));
        assert_eq!(
            docs[2]["spec"]["metrics"][0]["pods"]["target"],
            json!({"type": "AverageValue", "averageValue": "700m"})
        );
        // The busy target is the utilization the recommendation sizes replicas for.
        assert_eq!(f64::from(HPA_ENCODER_BUSY_MILLI) / 1000.0, qtier_profiles::recommend::TARGET_UTILIZATION);
        assert_eq!(f64::from(HPA_CPU_UTILIZATION_PERCENT) / 100.0, qtier_profiles::recommend::TARGET_UTILIZATION);
        let annotations = &docs[0]["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/port"], "8080");
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
    }

    #[test]
    fn latency_critical_tiers_keep_the_kernel_workers_spinning() {
        let (tiers, catalog) = (Tiers::builtin().unwrap(), catalog());
        let spin = |tier: &str, override_ms: Option<u32>| {
            let choice = tier_choice_from_tiers(&tiers, tier, Some("c5.2xlarge"), &catalog, false).unwrap();
            serve_spin_ms(&choice, override_ms)
        };
        // Gold's p99 limit is 16 ms; silver's tightest (p50) is 80 ms, bronze's 10 s.
        assert_eq!(spin("gold", None), Some(LATENCY_CRITICAL_SPIN_MS));
        assert_eq!(spin("silver", None), None);
        assert_eq!(spin("bronze", None), None);
        assert_eq!(spin("bronze", Some(0)), Some(0));
        assert_eq!(spin("gold", Some(5)), Some(5));
        let env = |spin_ms| {
            let value = serve_env(spin_ms);
            value
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(env(None), vec![("QTIER_CACHE".to_string(), json!(CACHE_DIR))]);
        assert_eq!(env(Some(1000))[1], ("QTIER_SPIN_MS".to_string(), json!("1000")));
    }

    /// A tier of a recommendation: `chosen` (bought as `purchase`), sized to `instances`.
    fn recommended_tier(name: &str, chosen: Option<&str>, purchase: &str, instances: u64) -> TierRecommendation {
        let tier = Tiers::builtin().unwrap().tiers.into_iter().find(|t| t.name.as_str() == name).unwrap();
        let candidate = |instance: &str, verdict: &str| {
            json!({
                "instance": instance, "service": "ec2", "basis": "measured", "checks": [], "purchase": purchase,
                "price_usd_per_hour": 0.34, "replica_qps": null, "qps_basis": "", "replicas_per_instance": 1,
                "instances": instances, "cost_usd_per_hour": null, "usd_per_million": null, "verdict": verdict,
                "reasons": [],
            })
        };
        let candidates = match chosen {
            Some(chosen) => vec![candidate(chosen, "chosen"), candidate("g5.xlarge", "feasible")],
            None => vec![candidate("g5.xlarge", "rejected")],
        };
        serde_json::from_value(json!({
            "tier": tier, "required_qps": null, "spot_permitted": purchase == "spot", "chosen": chosen,
            "closest_miss": null, "summary": "no instance meets this tier", "candidates": candidates,
        }))
        .unwrap()
    }

    #[test]
    fn recommendation_gives_the_chosen_type_its_purchase_and_count() {
        let tiers = [
            recommended_tier("gold", Some("c5.2xlarge"), "on-demand", 3),
            recommended_tier("bronze", Some("c5.xlarge"), "spot", 1),
            recommended_tier("silver", None, "on-demand", 1),
        ];
        let gold = tier_choice_from_recommendation(&tiers, "gold", None).unwrap();
        assert_eq!(
            gold,
            TierChoice {
                instance_type: "c5.2xlarge".into(),
                capacity: Capacity::OnDemand,
                recommended_instances: Some(3),
                tightest_limit_ms: 16.0,
            }
        );
        let bronze = tier_choice_from_recommendation(&tiers, "bronze", None).unwrap();
        assert_eq!(bronze.capacity, Capacity::Spot);
        // Overriding the type keeps the tier's purchase; the count was for another type.
        let gold_g5 = tier_choice_from_recommendation(&tiers, "gold", Some("g5.xlarge")).unwrap();
        assert_eq!((gold_g5.instance_type.as_str(), gold_g5.recommended_instances), ("g5.xlarge", None));
        let error = tier_choice_from_recommendation(&tiers, "silver", None).unwrap_err().to_string();
        assert!(error.contains("tier `silver` has no chosen instance type") && error.contains("--instance-type"));
        let silver = tier_choice_from_recommendation(&tiers, "silver", Some("c5.large")).unwrap();
        assert_eq!(silver.capacity, Capacity::OnDemand);
        let error = tier_choice_from_recommendation(&tiers, "platinum", None).unwrap_err().to_string();
        assert!(error.contains("unknown tier `platinum`") && error.contains("gold, bronze, silver"), "{error}");
    }
}
