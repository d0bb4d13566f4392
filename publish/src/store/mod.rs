//! Object stores with one interface: a local directory and S3. Keys are `/`-separated and
//! relative to the location's root (the directory, or the bucket's prefix).

mod local;
mod s3;

use std::path::Path;
use std::sync::Arc;

pub use self::local::LocalStore;
pub use self::s3::{S3Options, S3Store};
use crate::error::Result;
use crate::location::Location;
use crate::manifest::FileEntry;

/// Largest small document (manifest, pointer, claim) read into memory: a manifest of ten
/// thousand files is about 1.5 MiB.
pub const MAX_DOCUMENT_BYTES: u64 = 16 << 20;

/// Receives byte counts as transfers progress (a progress bar in the CLI). Called from several
/// tasks at once.
pub trait TransferProgress: Send + Sync {
    /// A transfer of `total_bytes` begins.
    fn start(&self, _total_bytes: u64) {}

    /// `bytes` more were transferred.
    fn advance(&self, bytes: u64);
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl TransferProgress for NoProgress {
    fn advance(&self, _bytes: u64) {}
}

/// What a conditional write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Written,
    /// The object already existed and was left alone.
    AlreadyExists,
}

/// How an uploaded file's bytes were confirmed to be the ones meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The store computed the SHA-256 checksum of what it received and it matched ours.
    StoreChecksum,
    /// The object was read back and hashed.
    ReadBack,
    /// Written locally while hashing, then flushed.
    LocalCopy,
}

/// A store, chosen by the location's scheme (cloning one shares its connections).
#[derive(Debug, Clone)]
pub enum Store {
    /// A local directory.
    Local(LocalStore),
    /// An S3 bucket prefix.
    S3(S3Store),
}

impl Store {
    /// Opens the store of `location` (for S3: loads credentials and region through the standard
    /// chain and checks the endpoint).
    pub async fn open(location: &Location, options: &S3Options) -> Result<Store> {
        Ok(match location {
            Location::Local { root } => Store::Local(LocalStore::new(root.clone())),
            Location::S3 { bucket, prefix } => Store::S3(S3Store::open(bucket, prefix, options).await?),
        })
    }

    /// Whether an `if_absent` write is known to be atomic (a local hard link is; an S3-compatible
    /// server may check and write in two steps).
    pub fn conditional_writes_are_atomic(&self) -> bool {
        matches!(self, Store::Local(_))
    }

    /// Where `key` is, for messages.
    pub fn describe(&self, key: &str) -> String {
        match self {
            Store::Local(store) => store.describe(key),
            Store::S3(store) => store.describe(key),
        }
    }

    /// Reads a small object whole, or `None` when it does not exist.
    pub async fn read_document(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Local(store) => store.read_document(key).await,
            Store::S3(store) => store.read_document(key).await,
        }
    }

    /// Writes a small object; with `if_absent`, only when no object has the key (atomically where
    /// the store supports it).
    pub async fn write_document(&self, key: &str, bytes: Vec<u8>, if_absent: bool) -> Result<PutOutcome> {
        match self {
            Store::Local(store) => store.write_document(key, bytes, if_absent).await,
            Store::S3(store) => store.write_document(key, bytes, if_absent).await,
        }
    }

    /// Every key below `prefix` (a `/`-terminated key prefix, or empty for all), relative to the
    /// store's root, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        match self {
            Store::Local(store) => store.list(prefix).await,
            Store::S3(store) => store.list(prefix).await,
        }
    }

    /// Whether `key` already holds exactly the file `entry` describes.
    pub async fn holds(&self, key: &str, entry: &FileEntry) -> Result<bool> {
        match self {
            Store::Local(store) => store.holds(key, entry).await,
            Store::S3(store) => store.holds(key, entry).await,
        }
    }

    /// Uploads `source` to `key`, checking that the bytes stored are the ones `entry` describes;
    /// an interrupted upload leaves nothing visible at `key`.
    pub async fn upload_file(
        &self,
        key: &str,
        source: &Path,
        entry: &FileEntry,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<Verification> {
        match self {
            Store::Local(store) => store.upload_file(key, source, entry, progress).await,
            Store::S3(store) => store.upload_file(key, source, entry, progress).await,
        }
    }

    /// Makes `to` hold the object at `from` without sending its bytes from this machine (a
    /// server-side copy on S3, a hard link in a local directory), when `from` holds exactly the
    /// file `entry` describes, and checks the result like an upload (`source`, the local file
    /// `entry` describes, gives the SHA-256 of each part of a multipart copy). `false` when
    /// `from` does not hold it: the caller copies from elsewhere or uploads instead.
    pub async fn copy_within(&self, from: &str, to: &str, source: &Path, entry: &FileEntry) -> Result<bool> {
        match self {
            Store::Local(store) => store.copy_within(from, to, entry).await,
            Store::S3(store) => store.copy_within(from, to, source, entry).await,
        }
    }

    /// Downloads `key`, expected to be `expected_size` bytes (its manifest says so), into
    /// `destination` (created), returning its size and SHA-256. On S3 a large object is fetched
    /// in parallel ranges, and one of another size is an error.
    pub async fn download_file(
        &self,
        key: &str,
        destination: &Path,
        expected_size: u64,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<(u64, String)> {
        match self {
            Store::Local(store) => store.download_file(key, destination, progress).await,
            Store::S3(store) => store.download_file(key, destination, expected_size, progress).await,
        }
    }
}
