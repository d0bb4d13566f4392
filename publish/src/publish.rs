//! Publishing: collect and hash the artifact, apply the gates, then upload to
//! `<store>/<model>/<version>/` with the manifest last and the `latest` pointer after it.
//!
//! A version belongs to one content: the first publish claims it with a conditional write of a
//! small claim object (`If-None-Match: *`, read back to catch stores that ignore the condition),
//! and a publish of different content to the same version is refused before it uploads a byte.
//! Re-publishing the same content is idempotent: files already in place with the same sha256 are
//! skipped, and an interrupted publish resumes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::error::{PublishError, Result};
use crate::gates::{self, GatePolicy};
use crate::manifest::{
    DEFAULT_VERSION_HEX_DIGITS, FileEntry, ForcedPublish, MANIFEST_FILE, MANIFEST_SCHEMA_VERSION, Manifest, Publisher,
    SourceFile, TierOutcome, content_digest, hash_file, list_files,
};
use crate::store::{PutOutcome, Store, TransferProgress, Verification};

/// Where the eval report sits in an artifact.
pub const EVAL_REPORT_PATH: &str = "reports/eval.json";
/// Where the recommendation sits in an artifact.
pub const RECOMMENDATION_PATH: &str = "reports/recommendation.json";
/// The folder of bench reports in an artifact.
pub const BENCH_REPORTS_DIR: &str = "reports/bench";
/// The pointer to the newest version, beside the versions: `<model>/latest`, holding the version
/// name and a newline.
pub const LATEST_POINTER: &str = "latest";
/// The claim object of a version (not part of the artifact).
pub const CLAIM_FILE: &str = ".qtier-publish-claim.json";

/// How long a fresh claim is left to settle before it is read back, on stores whose conditional
/// writes may not be atomic: far longer than one small PUT takes on a working connection.
const CLAIM_SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The artifact directory (the quantized model; may already hold `reports/`).
    pub artifact: PathBuf,
    /// An eval report to include as [`EVAL_REPORT_PATH`].
    pub eval_report: Option<PathBuf>,
    /// A recommendation to include as [`RECOMMENDATION_PATH`].
    pub recommendation: Option<PathBuf>,
    /// Bench reports to include under [`BENCH_REPORTS_DIR`].
    pub bench_reports: Vec<PathBuf>,
    /// The model's name (default: the artifact directory's name).
    pub model_name: Option<String>,
    /// The version (default: the first [`DEFAULT_VERSION_HEX_DIGITS`] of the content hash).
    pub version: Option<String>,
    /// The gates.
    pub policy: GatePolicy,
    /// Publish even when gates fail, recording this reason.
    pub force_reason: Option<String>,
    /// qtier's version and git revision, for the manifest.
    pub tool_version: String,
    /// qtier's git revision.
    pub tool_git_revision: String,
}

/// An artifact ready to upload: its files, hashed, and its manifest.
#[derive(Debug, Clone)]
pub struct PreparedArtifact {
    /// Every file with its source on disk.
    pub files: Vec<SourceFile>,
    /// The manifest to write last.
    pub manifest: Manifest,
    /// Gates that failed (overridden by `force_reason`; empty otherwise).
    pub gate_failures: Vec<String>,
}

impl PreparedArtifact {
    /// Total bytes of the files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.entry.size).sum()
    }
}

/// How one file fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileOutcome {
    /// Already in place with the same sha256.
    Skipped,
    /// Uploaded; the store's SHA-256 checksum matched.
    UploadedVerifiedByStore,
    /// Uploaded; read back and hashed.
    UploadedVerifiedByReadBack,
    /// Copied into a local store while hashing.
    Copied,
    /// An earlier version of the model (the one `latest` names first, then the others, most
    /// recently published first) holds the same bytes: copied within the store (a server-side
    /// copy on S3, a hard link locally), checked like an upload.
    Reused,
}

/// The result of a publish.
#[derive(Debug, Clone, Serialize)]
pub struct PublishOutcome {
    /// Where the version is.
    pub location: String,
    /// The manifest's location.
    pub manifest_location: String,
    /// The `latest` pointer's location.
    pub latest_location: String,
    /// The model's name.
    pub model_name: String,
    /// The version.
    pub version: String,
    /// The content hash.
    pub content_sha256: String,
    /// Each file and what happened to it.
    pub files: Vec<(String, FileOutcome)>,
    /// Bytes of all the artifact's files.
    pub total_bytes: u64,
    /// Bytes uploaded (skipped and reused files not counted).
    pub uploaded_bytes: u64,
    /// Bytes copied within the store from earlier versions of the model.
    pub reused_bytes: u64,
    /// The earlier versions files were copied from, in the order first used (the one `latest`
    /// pointed at is tried first for every file).
    pub reused_from: Vec<String>,
    /// Copies from earlier versions that failed, each with the file and why (the file was then
    /// copied from another version or uploaded).
    pub not_reused: Vec<String>,
    /// The version was already complete with this content.
    pub already_published: bool,
    /// Gates overridden with `--force`, with the reason.
    pub forced: Option<ForcedPublish>,
}

/// The claim object's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct VersionClaim {
    content_sha256: String,
    publish_id: String,
    published_by: String,
}

/// Collects and hashes the artifact's files, reads its reports and applies the gates. Fails with
/// [`PublishError::GateFailed`] when a gate fails and no force reason was given.
pub fn prepare(request: &PublishRequest) -> Result<PreparedArtifact> {
    if !request.artifact.is_dir() {
        return Err(PublishError::BadDocument {
            what: request.artifact.display().to_string(),
            reason: "not a directory (publish takes an artifact directory from `qtier quantize`)".into(),
        });
    }
    let mut sources: Vec<(String, PathBuf)> = list_files(&request.artifact)?;
    let mut add = |path_in_artifact: String, source: &Path| -> Result<()> {
        if sources.iter().any(|(existing, _)| *existing == path_in_artifact) {
            return Err(PublishError::BadDocument {
                what: source.display().to_string(),
                reason: format!("the artifact already has {path_in_artifact}; give it once"),
            });
        }
        sources.push((path_in_artifact, source.to_path_buf()));
        Ok(())
    };
    if let Some(eval) = &request.eval_report {
        add(EVAL_REPORT_PATH.to_owned(), eval)?;
    }
    if let Some(recommendation) = &request.recommendation {
        add(RECOMMENDATION_PATH.to_owned(), recommendation)?;
    }
    for bench in &request.bench_reports {
        let name = bench.file_name().and_then(|n| n.to_str()).ok_or_else(|| PublishError::BadDocument {
            what: bench.display().to_string(),
            reason: "not a file name qtier can publish (UTF-8)".into(),
        })?;
        add(format!("{BENCH_REPORTS_DIR}/{name}"), bench)?;
    }
    sources.sort();

    let mut files = Vec::with_capacity(sources.len());
    for (path, source) in sources {
        let (size, sha256) = hash_file(&source)?;
        files.push(SourceFile { source, entry: FileEntry { path, size, sha256 } });
    }
    let source_of = |path: &str| files.iter().find(|f| f.entry.path == path).map(|f| f.source.as_path());

    let eval = source_of(EVAL_REPORT_PATH)
        .map(|source| gates::parse_eval(&read(source)?, &source.display().to_string(), EVAL_REPORT_PATH))
        .transpose()?;
    let tiers = source_of(RECOMMENDATION_PATH)
        .map(|source| gates::parse_recommendation(&read(source)?, &source.display().to_string()))
        .transpose()?;
    let quantization_config = match source_of("config.json") {
        Some(source) => quantization_config(&read(source)?, source)?,
        None => None,
    };
    let gate_failures = gates::check(&request.policy, eval.as_ref(), tiers.as_deref());
    let forced = match (&request.force_reason, gate_failures.is_empty()) {
        (Some(reason), _) => Some(ForcedPublish { reason: reason.clone(), overridden: gate_failures.clone() }),
        (None, true) => None,
        (None, false) => return Err(PublishError::GateFailed { failures: gate_failures }),
    };

    let entries: Vec<FileEntry> = files.iter().map(|f| f.entry.clone()).collect();
    let content_sha256 = content_digest(&entries);
    let model_name = match &request.model_name {
        Some(name) => name.clone(),
        None => request
            .artifact
            .canonicalize()
            .map_err(|e| PublishError::io(&request.artifact, e))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    check_name("model name", &model_name)?;
    let version = request.version.clone().unwrap_or_else(|| content_sha256[..DEFAULT_VERSION_HEX_DIGITS].to_owned());
    check_name("version", &version)?;
    let bench_reports = entries
        .iter()
        .filter(|e| e.path.starts_with(&format!("{BENCH_REPORTS_DIR}/")))
        .map(|e| e.path.clone())
        .collect();
    let tiers: Vec<TierOutcome> = tiers.unwrap_or_default();
    let manifest = Manifest {
        schema_version: MANIFEST_SCHEMA_VERSION,
        model_name,
        version,
        content_sha256,
        files: entries,
        quantization_config,
        eval: eval.clone(),
        recommendation: source_of(RECOMMENDATION_PATH).map(|_| RECOMMENDATION_PATH.to_owned()),
        tiers_met: tiers.iter().filter(|t| t.instance_type.is_some()).map(|t| t.tier.clone()).collect(),
        tiers,
        bench_reports,
        forced,
        publisher: Publisher {
            qtier_version: request.tool_version.clone(),
            qtier_git_revision: request.tool_git_revision.clone(),
            published_by: who(),
            published_at: aws_smithy_types::DateTime::from(std::time::SystemTime::now())
                .fmt(aws_smithy_types::date_time::Format::DateTime)
                .unwrap_or_default(),
        },
    };
    Ok(PreparedArtifact { files, manifest, gate_failures })
}

/// Uploads a prepared artifact to `<model>/<version>/` in `store`, manifest last, then points
/// `<model>/latest` at it.
pub async fn publish(
    artifact: &PreparedArtifact,
    store: &Store,
    progress: Arc<dyn TransferProgress>,
) -> Result<PublishOutcome> {
    let manifest = &artifact.manifest;
    progress.start(artifact.total_bytes());
    let version_key = format!("{}/{}", manifest.model_name, manifest.version);
    let key = |path: &str| format!("{version_key}/{path}");
    let manifest_key = key(MANIFEST_FILE);
    let latest_key = format!("{}/{LATEST_POINTER}", manifest.model_name);
    let mut outcome = PublishOutcome {
        location: store.describe(&version_key),
        manifest_location: store.describe(&manifest_key),
        latest_location: store.describe(&latest_key),
        model_name: manifest.model_name.clone(),
        version: manifest.version.clone(),
        content_sha256: manifest.content_sha256.clone(),
        files: Vec::new(),
        total_bytes: artifact.total_bytes(),
        uploaded_bytes: 0,
        reused_bytes: 0,
        reused_from: Vec::new(),
        not_reused: Vec::new(),
        already_published: false,
        forced: manifest.forced.clone(),
    };

    if let Some(existing) = read_manifest(store, &manifest_key).await? {
        check_same_content(store, &manifest_key, &existing.content_sha256, manifest)?;
        outcome.already_published = true;
        outcome.files = manifest.files.iter().map(|f| (f.path.clone(), FileOutcome::Skipped)).collect();
        write_latest(store, &latest_key, &manifest.version).await?;
        return Ok(outcome);
    }

    let claim_key = key(CLAIM_FILE);
    let claim = VersionClaim {
        content_sha256: manifest.content_sha256.clone(),
        publish_id: publish_id(),
        published_by: manifest.publisher.published_by.clone(),
    };
    let claim_bytes = serde_json::to_vec_pretty(&claim).expect("a claim serializes");
    let claimed = store.write_document(&claim_key, claim_bytes, true).await?;
    if claimed == PutOutcome::Written && !store.conditional_writes_are_atomic() {
        // A store may check If-None-Match and then write non-atomically (s3s-fs does), letting a
        // concurrent claimant that checked before our write overwrite us right after it. Such a
        // write lands within its own request time; once it has, the read-back below sees it and
        // the loser gives up before uploading anything.
        tokio::time::sleep(CLAIM_SETTLE).await;
    }
    // Whether written now or found from an earlier run: the claim must be for this content.
    check_claim(store, &claim_key, manifest).await?;

    let mut earlier = EarlierVersions::new(store, manifest, &latest_key).await;
    for file in &artifact.files {
        let file_key = key(&file.entry.path);
        if store.holds(&file_key, &file.entry).await? {
            progress.advance(file.entry.size);
            outcome.files.push((file.entry.path.clone(), FileOutcome::Skipped));
            continue;
        }
        if let Some(version) = copy_from_earlier(store, &mut earlier, file, &file_key, &mut outcome.not_reused).await {
            progress.advance(file.entry.size);
            outcome.reused_bytes += file.entry.size;
            outcome.files.push((file.entry.path.clone(), FileOutcome::Reused));
            if !outcome.reused_from.contains(&version) {
                outcome.reused_from.push(version);
            }
            continue;
        }
        let verification = store.upload_file(&file_key, &file.source, &file.entry, progress.clone()).await?;
        outcome.uploaded_bytes += file.entry.size;
        outcome.files.push((
            file.entry.path.clone(),
            match verification {
                Verification::StoreChecksum => FileOutcome::UploadedVerifiedByStore,
                Verification::ReadBack => FileOutcome::UploadedVerifiedByReadBack,
                Verification::LocalCopy => FileOutcome::Copied,
            },
        ));
    }

    // On a store that ignores conditional writes, another publish could have replaced the claim
    // meanwhile; look again before making the version visible.
    check_claim(store, &claim_key, manifest).await?;
    let manifest_bytes = manifest.to_json();
    if store.write_document(&manifest_key, manifest_bytes.clone(), true).await? == PutOutcome::AlreadyExists {
        let existing = read_manifest(store, &manifest_key).await?.ok_or_else(|| PublishError::VersionTaken {
            location: outcome.manifest_location.clone(),
            reason: "the manifest was reported present but cannot be read".into(),
        })?;
        check_same_content(store, &manifest_key, &existing.content_sha256, manifest)?;
        outcome.already_published = true;
    } else {
        let stored = store.read_document(&manifest_key).await?;
        if stored.as_deref() != Some(manifest_bytes.as_slice()) {
            let existing = read_manifest(store, &manifest_key).await?;
            let found = existing.map(|m| m.content_sha256).unwrap_or_else(|| "nothing".into());
            check_same_content(store, &manifest_key, &found, manifest)?;
        }
    }
    write_latest(store, &latest_key, &manifest.version).await?;
    Ok(outcome)
}

/// Copies `file` to `file_key` within the store from the first earlier version holding the
/// same bytes; returns that version. Each failed copy is noted in `not_reused`.
async fn copy_from_earlier(
    store: &Store,
    earlier: &mut EarlierVersions,
    file: &SourceFile,
    file_key: &str,
    not_reused: &mut Vec<String>,
) -> Option<String> {
    let mut tried = 0;
    loop {
        let (version, from) = earlier.candidate(store, &file.entry, tried).await?;
        tried += 1;
        match store.copy_within(&from, file_key, &file.source, &file.entry).await {
            Ok(true) => return Some(version),
            Ok(false) => not_reused.push(format!(
                "{}: not copied from {} (it no longer holds those bytes)",
                file.entry.path,
                store.describe(&from)
            )),
            Err(error) => {
                not_reused.push(format!("{}: not copied from {}: {error}", file.entry.path, store.describe(&from)))
            }
        }
    }
}

/// Files smaller than this are not looked for beyond the version `latest` names: uploading one
/// costs less than listing the model's versions and reading their manifests.
const SEARCH_EARLIER_VERSIONS_FROM_BYTES: u64 = 1 << 20;

/// Manifests read at once when looking through a model's other versions.
const MANIFEST_READS_IN_FLIGHT: usize = 16;

/// The files of a model's earlier versions, offered for reuse by a publish of another version:
/// a file with the same size and SHA-256 is copied within the store instead of uploaded
/// (weights seldom change between versions; reports do, and a rollback brings back weights an
/// older version holds). The version the model's `latest` pointer names is read first; the
/// others only when a file of at least [`SEARCH_EARLIER_VERSIONS_FROM_BYTES`] is needed that it
/// does not hold intact (then once: one listing of the model's keys and one read per version's
/// manifest, several at a time). Any problem reading a version only means its files are not
/// offered.
struct EarlierVersions {
    /// The model's name.
    model_name: String,
    /// The version being published, never offered.
    publishing: String,
    /// Each offered file's candidates by size and SHA-256, as (version, key) in the order to
    /// try them: the version `latest` names first, then the others, most recently published
    /// first.
    candidates: HashMap<(u64, String), Vec<(String, String)>>,
    /// The version `latest` names, when its files are offered (read first, so not again).
    latest: Option<String>,
    /// Whether the versions other than `latest`'s have been read.
    all_read: bool,
}

impl EarlierVersions {
    /// Reads the version `latest_key` names, when it is another complete version.
    async fn new(store: &Store, manifest: &Manifest, latest_key: &str) -> EarlierVersions {
        let mut earlier = EarlierVersions {
            model_name: manifest.model_name.clone(),
            publishing: manifest.version.clone(),
            candidates: HashMap::new(),
            latest: None,
            all_read: false,
        };
        if let Some(version) = read_latest(store, latest_key).await
            && let Some(found) = read_version(store, &earlier.model_name, &earlier.publishing, &version).await
        {
            earlier.offer(found);
            earlier.latest = Some(version);
        }
        earlier
    }

    /// The `skip`-th candidate (version, key) for a file like `entry`, reading the other
    /// versions first when the ones read so far have no more and the file is large enough to be
    /// worth it.
    async fn candidate(&mut self, store: &Store, entry: &FileEntry, skip: usize) -> Option<(String, String)> {
        let wanted = (entry.size, entry.sha256.clone());
        let known = self.candidates.get(&wanted).map_or(0, Vec::len);
        if skip >= known && !self.all_read && entry.size >= SEARCH_EARLIER_VERSIONS_FROM_BYTES {
            self.read_the_others(store).await;
        }
        self.candidates.get(&wanted)?.get(skip).cloned()
    }

    /// Reads every other complete version of the model (listed from the store,
    /// [`MANIFEST_READS_IN_FLIGHT`] manifests at a time), most recently published first.
    async fn read_the_others(&mut self, store: &Store) {
        self.all_read = true;
        let model_prefix = format!("{}/", self.model_name);
        let Ok(keys) = store.list(&model_prefix).await else { return };
        let versions: Vec<&str> = keys
            .iter()
            .filter_map(|key| match key.strip_prefix(&model_prefix)?.split_once('/')? {
                (version, MANIFEST_FILE) if self.latest.as_deref() != Some(version) => Some(version),
                _ => None,
            })
            .collect();
        let mut found = Vec::new();
        for batch in versions.chunks(MANIFEST_READS_IN_FLIGHT) {
            let mut reads = JoinSet::new();
            for version in batch {
                let (store, model_name, publishing, version) =
                    (store.clone(), self.model_name.clone(), self.publishing.clone(), version.to_string());
                reads.spawn(async move { read_version(&store, &model_name, &publishing, &version).await });
            }
            while let Some(read) = reads.join_next().await {
                found.extend(read.expect("reading a manifest does not panic"));
            }
        }
        found.sort_by(|a, b| (&b.publisher.published_at, &b.version).cmp(&(&a.publisher.published_at, &a.version)));
        for manifest in found {
            self.offer(manifest);
        }
    }

    /// Offers `manifest`'s files after those of the versions read before it.
    fn offer(&mut self, manifest: Manifest) {
        let version_key = format!("{}/{}", self.model_name, manifest.version);
        for file in manifest.files {
            let key = format!("{version_key}/{}", file.path);
            self.candidates.entry((file.size, file.sha256)).or_default().push((manifest.version.clone(), key));
        }
    }
}

/// The manifest of `version` of `model_name`, when it is a complete version other than
/// `publishing`.
async fn read_version(store: &Store, model_name: &str, publishing: &str, version: &str) -> Option<Manifest> {
    if version == publishing || check_name("version", version).is_err() {
        return None;
    }
    let key = format!("{model_name}/{version}/{MANIFEST_FILE}");
    let manifest = read_manifest(store, &key).await.ok()??;
    (manifest.model_name == model_name && manifest.version == version).then_some(manifest)
}

/// The version a model's `latest` pointer names, if it names one.
async fn read_latest(store: &Store, latest_key: &str) -> Option<String> {
    let pointer = store.read_document(latest_key).await.ok()??;
    Some(String::from_utf8(pointer).ok()?.trim_end().to_owned())
}

/// Reads and parses the manifest at `key`, if any.
pub async fn read_manifest(store: &Store, key: &str) -> Result<Option<Manifest>> {
    match store.read_document(key).await? {
        Some(bytes) => Ok(Some(Manifest::parse(&bytes, &store.describe(key))?)),
        None => Ok(None),
    }
}

/// Refuses a version that holds different content.
fn check_same_content(store: &Store, key: &str, found: &str, manifest: &Manifest) -> Result<()> {
    if found == manifest.content_sha256 {
        return Ok(());
    }
    Err(PublishError::VersionTaken {
        location: store.describe(key),
        reason: format!(
            "version {} already holds a different artifact (content {found}, this one {}); choose another --version",
            manifest.version, manifest.content_sha256
        ),
    })
}

/// Reads the version's claim and refuses it when it is for other content.
async fn check_claim(store: &Store, key: &str, manifest: &Manifest) -> Result<()> {
    let bytes = store.read_document(key).await?.ok_or_else(|| PublishError::VersionTaken {
        location: store.describe(key),
        reason: "the version's claim vanished while publishing (another run removed it?)".into(),
    })?;
    let claim: VersionClaim = serde_json::from_slice(&bytes).map_err(|e| PublishError::BadDocument {
        what: store.describe(key),
        reason: format!("not a qtier version claim: {e}"),
    })?;
    if claim.content_sha256 == manifest.content_sha256 {
        return Ok(());
    }
    Err(PublishError::VersionTaken {
        location: store.describe(key),
        reason: format!(
            "version {} is claimed by another publish of different content (by {}, content {}); choose another \
             --version, or delete the version's objects if that publish died",
            manifest.version, claim.published_by, claim.content_sha256
        ),
    })
}

/// Points `<model>/latest` at `version`.
async fn write_latest(store: &Store, key: &str, version: &str) -> Result<()> {
    store.write_document(key, format!("{version}\n").into_bytes(), false).await?;
    Ok(())
}

/// Model names and versions become object key segments: letters, digits, `.`, `_`, `-`, not
/// starting with `.` (so never `.` or `..`), at most 128 characters.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name != LATEST_POINTER
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        return Ok(());
    }
    Err(PublishError::BadDocument {
        what: format!("{what} {name:?}"),
        reason: "use 1-128 letters, digits, '.', '_' or '-', not starting with '.', and not \"latest\"".into(),
    })
}

/// Reads a small local file.
fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| PublishError::io(path, e))
}

/// The `quantization_config` of a config.json, when it has one.
fn quantization_config(bytes: &[u8], source: &Path) -> Result<Option<serde_json::Value>> {
    let config: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| PublishError::BadDocument {
        what: source.display().to_string(),
        reason: format!("not JSON: {e}"),
    })?;
    Ok(config.get("quantization_config").cloned())
}

/// `user@host` of this process.
fn who() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", hostname())
}

/// This machine's host name (Linux's, or `$HOSTNAME`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// An identifier unique to this publish run.
fn publish_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{}-{nanos}", hostname(), std::process::id())
}
