//! `qtier pull`: download an artifact, verify every file against the manifest, and make it
//! appear in the target directory whole or not at all (an init container may be killed at any
//! moment, and the serving container must never see half a model).

use std::path::Path;
use std::sync::Arc;

use qtier_quantize::staging::StagedDir;
use serde::Serialize;

use crate::error::{PublishError, Result};
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::publish::{LATEST_POINTER, check_name};
use crate::store::{Store, TransferProgress};

/// The result of a pull.
#[derive(Debug, Clone, Serialize)]
pub struct PullOutcome {
    /// Where the manifest was read.
    pub manifest_location: String,
    /// The model's name.
    pub model_name: String,
    /// The version pulled.
    pub version: String,
    /// The content hash.
    pub content_sha256: String,
    /// Files written (besides the manifest).
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// The manifest at the store's root, or (for a model's location) the one `latest` points to.
/// Returns the key prefix of the version (empty or `<version>/`), the manifest and its bytes.
pub async fn find_manifest(store: &Store) -> Result<(String, Manifest, Vec<u8>)> {
    if let Some(bytes) = store.read_document(MANIFEST_FILE).await? {
        let manifest = Manifest::parse(&bytes, &store.describe(MANIFEST_FILE))?;
        return Ok((String::new(), manifest, bytes));
    }
    let Some(pointer) = store.read_document(LATEST_POINTER).await? else {
        return Err(PublishError::NotFound { location: store.describe("") });
    };
    let version = String::from_utf8_lossy(&pointer).trim().to_owned();
    check_name("version in the latest pointer", &version).map_err(|_| PublishError::BadDocument {
        what: store.describe(LATEST_POINTER),
        reason: format!("{version:?} is not a version name"),
    })?;
    let key = format!("{version}/{MANIFEST_FILE}");
    let Some(bytes) = store.read_document(&key).await? else {
        return Err(PublishError::NotFound { location: store.describe(&format!("{version}/")) });
    };
    let manifest = Manifest::parse(&bytes, &store.describe(&key))?;
    Ok((format!("{version}/"), manifest, bytes))
}

/// Downloads the artifact at the store's location into `target`, verifying each file's size and
/// sha256; on any failure nothing appears at `target` (an existing one is replaced only with
/// `force`, and only after everything verified).
pub async fn pull(
    store: &Store,
    target: &Path,
    force: bool,
    progress: Arc<dyn TransferProgress>,
) -> Result<PullOutcome> {
    let (prefix, manifest, manifest_bytes) = find_manifest(store).await?;
    let staged = StagedDir::create(target, force)?;
    progress.start(manifest.files.iter().map(|f| f.size).sum());
    for entry in &manifest.files {
        let key = format!("{prefix}{}", entry.path);
        let destination = staged.path().join(&entry.path);
        if let Some(parent) = destination.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| PublishError::io(parent, e))?;
        }
        let (size, sha256) = store.download_file(&key, &destination, entry.size, progress.clone()).await?;
        if size != entry.size || sha256 != entry.sha256 {
            return Err(PublishError::Verification {
                location: format!("{} ({})", entry.path, store.describe(&key)),
                reason: format!(
                    "downloaded {size} bytes with sha256 {sha256}; the manifest says {} bytes with sha256 {}",
                    entry.size, entry.sha256
                ),
            });
        }
    }
    let manifest_path = staged.path().join(MANIFEST_FILE);
    tokio::fs::write(&manifest_path, &manifest_bytes).await.map_err(|e| PublishError::io(&manifest_path, e))?;
    staged.commit(true)?;
    Ok(PullOutcome {
        manifest_location: store.describe(&format!("{prefix}{MANIFEST_FILE}")),
        model_name: manifest.model_name.clone(),
        version: manifest.version.clone(),
        content_sha256: manifest.content_sha256.clone(),
        files: manifest.files.len(),
        bytes: manifest.files.iter().map(|f| f.size).sum(),
    })
}
