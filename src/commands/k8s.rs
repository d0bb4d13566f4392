//! `qtier k8s ...`: Kubernetes manifests (YAML on stdout) that serve an artifact on a tier's
//! instance type, or benchmark it on several instance types.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use qtier_profiles::recommend::RECOMMENDATION_SCHEMA_VERSION;
use qtier_profiles::{InstanceCatalog, Recommendation, Tiers};

use crate::k8s::{
    BenchJobsConfig, DEFAULT_IMAGE, DEFAULT_MIN_REPLICAS, DEFAULT_PORT, DeployConfig, ENCODER_BUSY_METRIC,
    HPA_MAX_REPLICAS_FACTOR, NodePlacement, bench_job_manifests, catalog_instance, check_dns_label,
    check_dns_subdomain, check_image, check_s3_uri, deploy_manifests, scales_on_busy_time, serve_spin_ms,
    tier_choice_from_recommendation, tier_choice_from_tiers,
};

/// `qtier k8s ...`.
#[derive(Debug, clap::Subcommand)]
pub enum K8sCommand {
    /// Print a Deployment (init container `qtier pull`, then `qtier serve`), a LoadBalancer
    /// Service, a HorizontalPodAutoscaler and a PodDisruptionBudget for one tier, on the instance
    /// type its recommendation chose (for `kubectl apply -f -`).
    Deploy(DeployArgs),
    /// Print one Job per instance type that pulls the artifact, runs `qtier bench model` there and
    /// uploads the report to `<results>/<instance-type>.json`.
    BenchJobs(BenchJobsArgs),
}

/// `qtier k8s deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The published artifact, `s3://bucket/prefix/<model>/<sha>`.
    #[arg(long, value_name = "S3_URI")]
    pub artifact: String,
    /// The service tier (gold, silver, bronze, or one of --tiers).
    #[arg(long)]
    pub tier: String,
    /// A recommendation (`qtier recommend --json` output): the tier's chosen instance type, and
    /// whether it is bought as spot.
    #[arg(long, value_name = "FILE")]
    pub recommendation: Option<PathBuf>,
    /// The instance type to run on (replaces the recommendation's choice; required without
    /// --recommendation).
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// Run on spot capacity also for the tiers that take it only on request (built in: silver),
    /// as `qtier recommend --allow-spot` (a recommendation says itself how each tier is bought).
    #[arg(long, conflicts_with = "recommendation")]
    pub allow_spot: bool,
    /// Service tiers (TOML) replacing the built-in gold, silver and bronze (a recommendation
    /// carries its own).
    #[arg(long, value_name = "FILE", conflicts_with = "recommendation")]
    pub tiers: Option<PathBuf>,
    /// An instance catalog (TOML) replacing the built-in one.
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// The container image (both containers).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// The namespace (default: none in the manifests, so kubectl's current one).
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// The name of the Deployment, Service, autoscaler and disruption budget (default:
    /// `qtier-<tier>`).
    #[arg(long)]
    pub name: Option<String>,
    /// The fewest replicas, one per node (default: the recommendation's instance count for the
    /// tier's required throughput, at least 2).
    #[arg(long, value_name = "N")]
    pub replicas: Option<NonZeroU32>,
    /// The most replicas the autoscaler may run (default: 3 x --replicas).
    #[arg(long, value_name = "N")]
    pub max_replicas: Option<NonZeroU32>,
    /// The port `qtier serve` listens on.
    #[arg(long, default_value_t = DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// The service account whose IAM role (IRSA) may read the artifact; credentials never go into
    /// the manifests.
    #[arg(long, value_name = "NAME")]
    pub service_account: Option<String>,
    /// Make the load balancer reachable from the internet (default: internal to the VPC).
    #[arg(long)]
    pub internet_facing: bool,
    /// Milliseconds the int8 kernels' worker threads spin between requests before parking
    /// (`QTIER_SPIN_MS` of the serving container). Default: 1000 for a tier whose tightest latency
    /// limit is at most 50 ms (gold), qtier's own 2 ms otherwise.
    #[arg(long, value_name = "MS")]
    pub spin_ms: Option<u32>,
}

/// `qtier k8s bench-jobs`.
#[derive(Debug, clap::Args)]
pub struct BenchJobsArgs {
    /// The published artifact, `s3://bucket/prefix/<model>/<sha>`.
    #[arg(long, value_name = "S3_URI")]
    pub artifact: String,
    /// Instance types, comma-separated: one Job each.
    #[arg(long, value_name = "LIST", value_delimiter = ',', required = true)]
    pub instance_types: Vec<String>,
    /// Where the reports go: `<results>/<instance-type>.json`.
    #[arg(long, value_name = "S3_URI")]
    pub results: String,
    /// The container image (both containers).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// An instance catalog (TOML) replacing the built-in one.
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// The namespace (default: none in the manifests, so kubectl's current one).
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// The service account whose IAM role (IRSA) may read the artifact and write the reports.
    #[arg(long, value_name = "NAME")]
    pub service_account: Option<String>,
}

/// Runs `qtier k8s ...`.
pub fn run(command: K8sCommand) -> anyhow::Result<()> {
    let yaml = match command {
        K8sCommand::Deploy(args) => deploy(args)?,
        K8sCommand::BenchJobs(args) => bench_jobs(args)?,
    };
    out!("{yaml}");
    Ok(())
}

fn deploy(args: DeployArgs) -> anyhow::Result<String> {
    check_s3_uri("--artifact", &args.artifact)?;
    check_image(&args.image)?;
    check_common_names(args.namespace.as_deref(), args.service_account.as_deref())?;
    let catalog = read_catalog(args.catalog.as_deref())?;
    let choice = match &args.recommendation {
        Some(path) => {
            let recommendation = read_recommendation(path)?;
            tier_choice_from_recommendation(&recommendation.tiers, &args.tier, args.instance_type.as_deref())
                .with_context(|| format!("recommendation {}", path.display()))?
        }
        None => {
            let tiers = match &args.tiers {
                Some(path) => Tiers::parse(&read(path, "tiers")?, &path.display().to_string())?,
                None => Tiers::builtin()?,
            };
            tier_choice_from_tiers(&tiers, &args.tier, args.instance_type.as_deref(), &catalog, args.allow_spot)?
        }
    };
    let instance = catalog_instance(&catalog, &choice.instance_type)?;
    let placement = NodePlacement::on(instance, Some(choice.capacity))?;

    let name = args.name.clone().unwrap_or_else(|| format!("qtier-{}", args.tier.replace('_', "-")));
    check_dns_label("--name", &name, true)?;
    let recommended = choice.recommended_instances.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let min_replicas = args.replicas.map_or(recommended.max(DEFAULT_MIN_REPLICAS), NonZeroU32::get);
    let max_replicas = args.max_replicas.map_or(min_replicas.saturating_mul(HPA_MAX_REPLICAS_FACTOR), NonZeroU32::get);
    if max_replicas < min_replicas {
        bail!("--max-replicas {max_replicas} is below the minimum of {min_replicas} replicas");
    }
    let spin_ms = serve_spin_ms(&choice, args.spin_ms);
    if scales_on_busy_time(spin_ms) {
        eprintln!(
            "note: tier {}'s workers spin between requests (QTIER_SPIN_MS={}), so its autoscaler scales on \
             the per-pod metric {ENCODER_BUSY_METRIC}, not CPU: the cluster needs Prometheus and the \
             Prometheus adapter with the rule in qtier's README; without them it keeps {min_replicas} replicas",
            args.tier,
            spin_ms.unwrap_or_default()
        );
    }
    deploy_manifests(&DeployConfig {
        name,
        namespace: args.namespace,
        tier: args.tier,
        artifact: args.artifact,
        image: args.image,
        port: args.port,
        min_replicas,
        max_replicas,
        placement,
        service_account: args.service_account,
        internet_facing: args.internet_facing,
        spin_ms,
    })
}

fn bench_jobs(args: BenchJobsArgs) -> anyhow::Result<String> {
    check_s3_uri("--artifact", &args.artifact)?;
    check_s3_uri("--results", &args.results)?;
    check_image(&args.image)?;
    check_common_names(args.namespace.as_deref(), args.service_account.as_deref())?;
    let catalog = read_catalog(args.catalog.as_deref())?;
    let placements = args
        .instance_types
        .iter()
        .map(|name| NodePlacement::on(catalog_instance(&catalog, name.trim())?, None))
        .collect::<anyhow::Result<Vec<_>>>()?;
    bench_job_manifests(&BenchJobsConfig {
        namespace: args.namespace,
        artifact: args.artifact,
        results: args.results,
        image: args.image,
        placements,
        service_account: args.service_account,
    })
}

fn check_common_names(namespace: Option<&str>, service_account: Option<&str>) -> anyhow::Result<()> {
    if let Some(namespace) = namespace {
        check_dns_label("--namespace", namespace, false)?;
    }
    if let Some(account) = service_account {
        check_dns_subdomain("--service-account", account)?;
    }
    Ok(())
}

fn read_catalog(path: Option<&Path>) -> anyhow::Result<InstanceCatalog> {
    Ok(match path {
        Some(path) => InstanceCatalog::parse(&read(path, "catalog")?, &path.display().to_string())?,
        None => InstanceCatalog::builtin()?,
    })
}

fn read_recommendation(path: &Path) -> anyhow::Result<Recommendation> {
    let text = read(path, "recommendation")?;
    let recommendation: Recommendation = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a `qtier recommend --json` recommendation", path.display()))?;
    if recommendation.schema_version != RECOMMENDATION_SCHEMA_VERSION {
        bail!(
            "{}: recommendation schema version {} (this qtier reads version {RECOMMENDATION_SCHEMA_VERSION})",
            path.display(),
            recommendation.schema_version
        );
    }
    Ok(recommendation)
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}
