//! A store in a local directory (a shared volume, or a stand-in for S3 on a laptop), with S3's
//! guarantees: an object is either absent or complete, and `if_absent` writes are atomic.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{NoProgress, PutOutcome, TransferProgress, Verification};
use crate::error::{PublishError, Result};
use crate::manifest::{FileEntry, hash_file, hex};

/// Copy buffer.
const COPY_BUFFER_BYTES: usize = 1 << 20;

/// A directory used as an object store.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// The store rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> LocalStore {
        LocalStore { root }
    }

    /// The path of `key`.
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// `key`'s path, for messages.
    pub fn describe(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    /// See [`super::Store::read_document`].
    pub async fn read_document(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key);
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(PublishError::io(path, error)),
        })
        .await
    }

    /// See [`super::Store::write_document`]: the bytes go to a temporary file first; `if_absent`
    /// links it into place (which fails when the name exists), otherwise it is renamed over.
    pub async fn write_document(&self, key: &str, bytes: Vec<u8>, if_absent: bool) -> Result<PutOutcome> {
        let path = self.path(key);
        blocking(move || {
            let staging =
                write_staging(&path, |file, staging| file.write_all(&bytes).map_err(|e| PublishError::io(staging, e)))?;
            let outcome = if if_absent {
                match std::fs::hard_link(&staging, &path) {
                    Ok(()) => Ok(PutOutcome::Written),
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
                    Err(error) => Err(PublishError::io(&path, error)),
                }
            } else {
                std::fs::rename(&staging, &path).map(|()| PutOutcome::Written).map_err(|e| PublishError::io(&path, e))
            };
            let _ = std::fs::remove_file(&staging);
            outcome
        })
        .await
    }

    /// See [`super::Store::list`]. Skips qtier's temporary files.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            let mut keys = Vec::new();
            let start = root.join(&prefix);
            let mut pending = vec![(prefix.trim_end_matches('/').to_owned(), start)];
            while let Some((relative, dir)) = pending.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(PublishError::io(&dir, error)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| PublishError::io(&dir, e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.contains(".qtier-partial-") {
                        continue;
                    }
                    let key = if relative.is_empty() { name } else { format!("{relative}/{name}") };
                    if entry.file_type().map_err(|e| PublishError::io(entry.path(), e))?.is_dir() {
                        pending.push((key, entry.path()));
                    } else {
                        keys.push(key);
                    }
                }
            }
            keys.sort();
            Ok(keys)
        })
        .await
    }

    /// See [`super::Store::holds`].
    pub async fn holds(&self, key: &str, entry: &FileEntry) -> Result<bool> {
        let path = self.path(key);
        let entry = entry.clone();
        blocking(move || file_holds(&path, &entry)).await
    }

    /// See [`super::Store::upload_file`]: copies while hashing into a temporary file beside the
    /// target, flushes it, and renames it into place only when size and hash match `entry`.
    pub async fn upload_file(
        &self,
        key: &str,
        source: &Path,
        entry: &FileEntry,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<Verification> {
        let path = self.path(key);
        let source = source.to_path_buf();
        let entry = entry.clone();
        blocking(move || {
            let mut input = File::open(&source).map_err(|e| PublishError::io(&source, e))?;
            let mut found = None;
            let staging = write_staging(&path, |file, staging| {
                found = Some(copy_hashing((&mut input, &source), (file, staging), progress.as_ref())?);
                Ok(())
            })?;
            let (size, sha256) = found.expect("the copy ran");
            if size != entry.size || sha256 != entry.sha256 {
                let _ = std::fs::remove_file(&staging);
                return Err(PublishError::Verification {
                    location: source.display().to_string(),
                    reason: format!(
                        "changed while publishing: hashed {} bytes sha256 {}, copied {size} bytes sha256 {sha256}",
                        entry.size, entry.sha256
                    ),
                });
            }
            std::fs::rename(&staging, &path).map_err(|e| PublishError::io(&path, e))?;
            Ok(Verification::LocalCopy)
        })
        .await
    }

    /// See [`super::Store::copy_within`]: checks `from` as [`Self::holds`] does (hashing it), then
    /// hard-links it into place, so both keys share one file (objects in a store are replaced by
    /// renaming, never changed in place); where the file system cannot link, copies it while
    /// hashing.
    pub async fn copy_within(&self, from: &str, to: &str, entry: &FileEntry) -> Result<bool> {
        let (source, target) = (self.path(from), self.path(to));
        let (expected, linked_source) = (entry.clone(), source.clone());
        let linked = blocking(move || {
            if !file_holds(&linked_source, &expected)? {
                return Ok(Link::NotHeld);
            }
            let staging = staging_path(&target)?;
            if std::fs::hard_link(&linked_source, &staging).is_err() {
                return Ok(Link::Unsupported);
            }
            std::fs::rename(&staging, &target).map_err(|e| {
                let _ = std::fs::remove_file(&staging);
                PublishError::io(&target, e)
            })?;
            Ok(Link::Linked)
        })
        .await?;
        match linked {
            Link::NotHeld => Ok(false),
            Link::Linked => Ok(true),
            Link::Unsupported => self.upload_file(to, &source, entry, Arc::new(NoProgress)).await.map(|_| true),
        }
    }

    /// See [`super::Store::download_file`].
    pub async fn download_file(
        &self,
        key: &str,
        destination: &Path,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<(u64, String)> {
        let path = self.path(key);
        let destination = destination.to_path_buf();
        blocking(move || {
            let mut input = File::open(&path).map_err(|e| PublishError::io(&path, e))?;
            let mut output = File::create(&destination).map_err(|e| PublishError::io(&destination, e))?;
            let copied = copy_hashing((&mut input, &path), (&mut output, &destination), progress.as_ref())?;
            output.sync_all().map_err(|e| PublishError::io(&destination, e))?;
            Ok(copied)
        })
        .await
    }
}

/// Whether `path` is a file of exactly `entry`'s size and SHA-256 (hashing it when the size
/// matches).
fn file_holds(path: &Path, entry: &FileEntry) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() == entry.size => {}
        Ok(_) => return Ok(false),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(PublishError::io(path, error)),
    }
    Ok(hash_file(path)?.1 == entry.sha256)
}

/// What [`LocalStore::copy_within`] managed.
enum Link {
    /// The source is not the file the entry describes.
    NotHeld,
    /// Linked into place.
    Linked,
    /// The file system refused the link.
    Unsupported,
}

/// Creates `target`'s directory and returns a temporary name beside `target`, unique to this
/// process and call (so concurrent writes of one key never share one); [`LocalStore::list`]
/// skips such names.
fn staging_path(target: &Path) -> Result<PathBuf> {
    let dir = target.parent().expect("store keys have a parent directory");
    std::fs::create_dir_all(dir).map_err(|e| PublishError::io(dir, e))?;
    let name = target.file_name().expect("store keys name a file").to_string_lossy();
    Ok(dir.join(format!(".{name}.qtier-partial-{}-{}", std::process::id(), unique_suffix())))
}

/// Writes a temporary file beside `target` (see [`staging_path`]) with `fill` (given the file and
/// its path), flushes it to disk and returns its path. The file is removed when `fill` fails.
fn write_staging(target: &Path, fill: impl FnOnce(&mut File, &Path) -> Result<()>) -> Result<PathBuf> {
    let staging = staging_path(target)?;
    let mut file = File::create_new(&staging).map_err(|e| PublishError::io(&staging, e))?;
    let written = fill(&mut file, &staging).and_then(|()| file.sync_all().map_err(|e| PublishError::io(&staging, e)));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&staging);
        return Err(error);
    }
    Ok(staging)
}

/// A number unique within this process.
fn unique_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Copies `input` to `output` (each with its path, for errors), returning the size and SHA-256 of
/// the bytes copied.
fn copy_hashing(
    (input, input_path): (&mut impl Read, &Path),
    (output, output_path): (&mut impl Write, &Path),
    progress: &dyn TransferProgress,
) -> Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut size = 0u64;
    loop {
        let read = input.read(&mut buffer).map_err(|e| PublishError::io(input_path, e))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        output.write_all(&buffer[..read]).map_err(|e| PublishError::io(output_path, e))?;
        size += read as u64;
        progress.advance(read as u64);
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Runs blocking file work off the async executor.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.expect("blocking store work does not panic")
}
