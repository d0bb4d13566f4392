//! `qtier-manifest.json`: every file of an artifact with its size and sha256, what the artifact
//! is (quantization config, eval summary, tiers met) and who published it. Written last: its
//! presence means the artifact is complete.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{PublishError, Result};

/// The manifest's file name, at the root of an artifact version.
pub const MANIFEST_FILE: &str = "qtier-manifest.json";

/// The manifest layout version. Adding a field keeps it; renaming or removing one bumps it.
pub const MANIFEST_SCHEMA_VERSION: u32 = 1;

/// Hex digits of the content hash used as the default version: 48 bits, so two different
/// artifacts of one model collide with probability about n^2 / 2^49 (negligible for any real
/// number of versions), and the name stays short enough to type.
pub const DEFAULT_VERSION_HEX_DIGITS: usize = 12;

/// Buffer for streaming file hashes.
const HASH_BUFFER_BYTES: usize = 1 << 20;

/// One file of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the artifact root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
}

/// The eval figures the accuracy gate read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// The report's path in the artifact.
    pub report: String,
    /// Texts evaluated.
    pub texts: u64,
    /// Mean embedding cosine, candidate vs reference.
    pub cosine_mean: f64,
    /// Lowest embedding cosine (the gated figure).
    pub cosine_min: f64,
    /// Fraction of texts whose nearest neighbour agrees.
    pub nearest_neighbour_agreement: Option<f64>,
}

/// One service tier of the recommendation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierOutcome {
    /// The tier's name.
    pub tier: String,
    /// The chosen instance type, when one meets the tier.
    pub instance_type: Option<String>,
}

/// Why gates were overridden.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForcedPublish {
    /// The reason given with `--force --reason`.
    pub reason: String,
    /// The gates that failed and were overridden (empty when all passed anyway).
    pub overridden: Vec<String>,
}

/// Who published, with what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publisher {
    /// qtier's version.
    pub qtier_version: String,
    /// qtier's git revision.
    pub qtier_git_revision: String,
    /// `user@host`.
    pub published_by: String,
    /// UTC time, RFC 3339.
    pub published_at: String,
}

/// The artifact's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The model's name (the second level of the store layout).
    pub model_name: String,
    /// The version (the third level; by default a prefix of `content_sha256`).
    pub version: String,
    /// SHA-256 over the file list (see [`content_digest`]): equal for equal artifacts.
    pub content_sha256: String,
    /// Every file, sorted by path.
    pub files: Vec<FileEntry>,
    /// `quantization_config` of the model's config.json, when present.
    pub quantization_config: Option<serde_json::Value>,
    /// The eval summary, when an eval report is part of the artifact.
    pub eval: Option<EvalSummary>,
    /// The recommendation's path in the artifact.
    pub recommendation: Option<String>,
    /// Each tier and the instance chosen for it.
    pub tiers: Vec<TierOutcome>,
    /// Names of the tiers met.
    pub tiers_met: Vec<String>,
    /// Paths of the bench reports in the artifact.
    pub bench_reports: Vec<String>,
    /// Present when gates were overridden.
    pub forced: Option<ForcedPublish>,
    /// Who and when.
    pub publisher: Publisher,
}

impl Manifest {
    /// Parses and checks a manifest: schema version, safe and unique paths, hex digests, and a
    /// content digest that matches the file list.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Manifest> {
        let bad = |reason: String| PublishError::BadDocument { what: what.to_owned(), reason };
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a qtier manifest: {e}")))?;
        if manifest.schema_version != MANIFEST_SCHEMA_VERSION {
            return Err(bad(format!(
                "schema_version {} is not {MANIFEST_SCHEMA_VERSION}; this qtier cannot read it",
                manifest.schema_version
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for entry in &manifest.files {
            check_relative_path(&entry.path).map_err(|reason| bad(format!("file {:?}: {reason}", entry.path)))?;
            if !is_sha256_hex(&entry.sha256) {
                return Err(bad(format!("file {:?}: sha256 {:?} is not 64 hex digits", entry.path, entry.sha256)));
            }
            if !seen.insert(entry.path.as_str()) {
                return Err(bad(format!("file {:?} is listed twice", entry.path)));
            }
        }
        let digest = content_digest(&manifest.files);
        if digest != manifest.content_sha256 {
            return Err(bad(format!(
                "content_sha256 {} does not match its file list ({digest})",
                manifest.content_sha256
            )));
        }
        Ok(manifest)
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest serializes");
        bytes.push(b'\n');
        bytes
    }
}

/// SHA-256 over the sorted file list, one `path\0size\0sha256\n` record per file: two artifacts
/// with the same files have the same digest, whoever published them and when.
pub fn content_digest(files: &[FileEntry]) -> String {
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut hasher = Sha256::new();
    for entry in sorted {
        hasher.update(entry.path.as_bytes());
        hasher.update([0]);
        hasher.update(entry.size.to_string().as_bytes());
        hasher.update([0]);
        hasher.update(entry.sha256.as_bytes());
        hasher.update(b"\n");
    }
    hex(&hasher.finalize())
}

/// Refuses paths a manifest must not hold: empty, absolute, with `..`, `.` or empty segments,
/// backslashes or NUL (a hostile manifest must not write outside the pull target).
pub fn check_relative_path(path: &str) -> std::result::Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.starts_with('/') {
        return Err("absolute path");
    }
    if path.contains('\\') || path.contains('\0') {
        return Err("backslash or NUL in path");
    }
    if path.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return Err("path has an empty, '.' or '..' segment");
    }
    if path == MANIFEST_FILE {
        return Err("the manifest cannot list itself");
    }
    // Belt and braces: the platform's own view of the path must agree.
    if Path::new(path).components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err("path is not plainly relative");
    }
    Ok(())
}

/// 64 lowercase hex digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    text
}

/// Size and SHA-256 of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut file = std::fs::File::open(path).map_err(|e| PublishError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer).map_err(|e| PublishError::io(path, e))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// A file to publish: where it is on disk and what it will be in the artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The file on disk.
    pub source: PathBuf,
    /// Its entry (path in the artifact, size, sha256).
    pub entry: FileEntry,
}

/// Every regular file below `dir` (recursively, sorted), with its path relative to `dir`. Skips
/// a manifest at the root and qtier's own staging leftovers; refuses symbolic links (what they
/// point to could change between hashing and upload).
pub fn list_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    let mut pending = vec![(String::new(), dir.to_path_buf())];
    while let Some((relative, path)) = pending.pop() {
        let entries = std::fs::read_dir(&path).map_err(|e| PublishError::io(&path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| PublishError::io(&path, e))?;
            let name = entry.file_name();
            let child = entry.path();
            let Some(name) = name.to_str() else {
                return Err(PublishError::BadDocument {
                    what: child.display().to_string(),
                    reason: "file name is not UTF-8".into(),
                });
            };
            if name.contains(".qtier-partial") {
                continue;
            }
            let child_relative = if relative.is_empty() { name.to_owned() } else { format!("{relative}/{name}") };
            if child_relative == MANIFEST_FILE {
                continue;
            }
            let kind = entry.file_type().map_err(|e| PublishError::io(&child, e))?;
            if kind.is_dir() {
                pending.push((child_relative, child));
            } else if kind.is_file() {
                files.push((child_relative, child));
            } else {
                return Err(PublishError::BadDocument {
                    what: child.display().to_string(),
                    reason: "not a regular file or directory (symbolic links are not published)".into(),
                });
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64, fill: char) -> FileEntry {
        FileEntry { path: path.into(), size, sha256: fill.to_string().repeat(64) }
    }

    #[test]
    fn digest_ignores_order_and_sees_every_field() {
        let a = vec![entry("a", 1, 'a'), entry("b/c", 2, 'b')];
        let reversed = vec![a[1].clone(), a[0].clone()];
        assert_eq!(content_digest(&a), content_digest(&reversed));
        for changed in [
            vec![entry("a", 1, 'a'), entry("b/d", 2, 'b')],
            vec![entry("a", 3, 'a'), entry("b/c", 2, 'b')],
            vec![entry("a", 1, 'c'), entry("b/c", 2, 'b')],
        ] {
            assert_ne!(content_digest(&a), content_digest(&changed));
        }
    }

    #[test]
    fn refuses_paths_that_escape() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\\b", MANIFEST_FILE] {
            assert!(check_relative_path(bad).is_err(), "{bad:?}");
        }
        for good in ["model.safetensors", "reports/bench/x86.json", "a..b", ".hidden"] {
            check_relative_path(good).unwrap();
        }
    }

    #[test]
    fn hex_and_file_hash() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let (size, digest) = hash_file(&path).unwrap();
        assert_eq!(size, 3);
        assert_eq!(digest, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn parse_checks_the_digest_and_paths() {
        let files = vec![entry("model.safetensors", 10, 'a')];
        let manifest = Manifest {
            schema_version: MANIFEST_SCHEMA_VERSION,
            model_name: "m".into(),
            version: "v".into(),
            content_sha256: content_digest(&files),
            files,
            quantization_config: None,
            eval: None,
            recommendation: None,
            tiers: vec![],
            tiers_met: vec![],
            bench_reports: vec![],
            forced: None,
            publisher: Publisher {
                qtier_version: "0".into(),
                qtier_git_revision: "r".into(),
                published_by: "u@h".into(),
                published_at: "t".into(),
            },
        };
        assert_eq!(Manifest::parse(&manifest.to_json(), "m").unwrap(), manifest);
        let mut lying = manifest.clone();
        lying.files[0].size = 11;
        assert!(Manifest::parse(&lying.to_json(), "m").unwrap_err().to_string().contains("does not match"));
        let mut escaping = manifest.clone();
        escaping.files[0].path = "../../.bashrc".into();
        escaping.content_sha256 = content_digest(&escaping.files);
        assert!(Manifest::parse(&escaping.to_json(), "m").unwrap_err().to_string().contains("'..'"));
    }
}
