//! S3 through aws-sdk-s3: the standard credential chain, multipart uploads with per-part SHA-256
//! checksums, conditional writes, retries with backoff, and verification of what was stored.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, MetadataDirective};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{MAX_DOCUMENT_BYTES, PutOutcome, TransferProgress, Verification};
use crate::error::{PublishError, Result};
use crate::location::{check_endpoint, join_key};
use crate::manifest::{FileEntry, hex};

/// User metadata key holding an object's SHA-256 (hex) as qtier computed it before upload; it
/// lets a re-publish skip objects already in place without downloading them.
const SHA256_METADATA_KEY: &str = "qtier-sha256";

/// S3's smallest part size (except the last part).
const MIN_PART_BYTES: u64 = 5 << 20;

/// S3's largest part count.
const MAX_PARTS: u64 = 10_000;

/// The largest object one `CopyObject` copies (S3's limit; larger ones take a multipart copy,
/// which qtier does not do: such files are uploaded instead).
const MAX_COPY_OBJECT_BYTES: u64 = 5 << 30;

/// Attempts for a download whose body stream broke off (the SDK retries requests, not bodies
/// already streaming).
const DOWNLOAD_ATTEMPTS: u32 = 4;

/// Attempts for a conditional write answered `409 ConditionalRequestConflict` (another
/// conditional write to the key is in flight; S3 asks the client to retry).
const CONFLICT_ATTEMPTS: u32 = 5;

/// First backoff of qtier's own retries (downloads, conflicts); doubled per attempt.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// How to reach S3 and how to upload.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Region (default: the standard chain's, e.g. `AWS_REGION` or the profile).
    pub region: Option<String>,
    /// Endpoint URL for S3-compatible servers (default: `AWS_ENDPOINT_URL_S3`,
    /// `AWS_ENDPOINT_URL`, the profile's, then AWS).
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    pub path_style: bool,
    /// Allow a plain-http endpoint that is not loopback.
    pub allow_http: bool,
    /// Files larger than this go up in parts.
    pub multipart_threshold: u64,
    /// Part size (raised when a file would need more than 10,000 parts).
    pub part_size: u64,
    /// Parts in flight at once.
    pub concurrency: usize,
    /// Attempts per request, the first included (the SDK's standard retry mode: throttling,
    /// 5xx, timeouts and broken connections, with exponential backoff and jitter).
    pub max_attempts: u32,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed without receiving any response bytes.
    pub read_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            region: None,
            endpoint_url: None,
            path_style: false,
            allow_http: false,
            multipart_threshold: 16 << 20,
            part_size: 16 << 20,
            concurrency: 4,
            max_attempts: 5,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// A bucket prefix in S3 (or an S3-compatible server).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    options: S3Options,
}

impl S3Store {
    /// Loads configuration through the standard chain (environment, profiles, SSO, container and
    /// instance roles) and checks the endpoint. Sends no request.
    pub async fn open(bucket: &str, prefix: &str, options: &S3Options) -> Result<S3Store> {
        if options.part_size < MIN_PART_BYTES {
            return Err(PublishError::BadUri {
                uri: format!("s3://{bucket}/{prefix}"),
                reason: format!("part size {} is below S3's minimum of {MIN_PART_BYTES} bytes", options.part_size),
            });
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &options.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &options.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        if let Some(endpoint) = shared.endpoint_url() {
            check_endpoint(endpoint, options.allow_http)?;
        }
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(options.path_style)
            // Downloads are checked against the manifest's sha256 by the caller, which names the
            // file and both digests; the SDK's own response check would only retry and then fail
            // with a less useful message.
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(options.max_attempts.max(1)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(options.connect_timeout)
                    .read_timeout(options.read_timeout)
                    .build(),
            )
            .build();
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            options: options.clone(),
        })
    }

    /// The object key of `key`.
    fn object_key(&self, key: &str) -> String {
        join_key(&self.prefix, key)
    }

    /// `s3://bucket/prefix/key`.
    pub fn describe(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.object_key(key))
    }

    /// A store error for `key`.
    fn error<E>(&self, operation: &'static str, key: &str, error: &SdkError<E>) -> PublishError
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
    {
        PublishError::Store { operation, location: self.describe(key), message: sdk_message(error) }
    }

    /// See [`super::Store::read_document`].
    pub async fn read_document(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let response = self.client.get_object().bucket(&self.bucket).key(self.object_key(key)).send().await;
        let output = match response {
            Ok(output) => output,
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(error) => return Err(self.error("read", key, &error)),
        };
        if output.content_length().is_some_and(|n| n as u64 > MAX_DOCUMENT_BYTES) {
            return Err(PublishError::BadDocument {
                what: self.describe(key),
                reason: format!("larger than {MAX_DOCUMENT_BYTES} bytes; not a qtier document"),
            });
        }
        let bytes = output.body.collect().await.map_err(|e| PublishError::Store {
            operation: "read",
            location: self.describe(key),
            message: cause_chain(&e),
        })?;
        Ok(Some(bytes.into_bytes().to_vec()))
    }

    /// See [`super::Store::write_document`]: `if_absent` sends `If-None-Match: *`; a server that
    /// ignores it is caught by the caller, which reads the document back.
    pub async fn write_document(&self, key: &str, bytes: Vec<u8>, if_absent: bool) -> Result<PutOutcome> {
        let sha256 = Sha256::digest(&bytes);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(self.object_key(key))
                .content_length(bytes.len() as i64)
                .checksum_sha256(base64(&sha256))
                .metadata(SHA256_METADATA_KEY, hex(&sha256))
                .body(ByteStream::from(bytes.clone()));
            if if_absent {
                request = request.if_none_match("*");
            }
            match request.send().await {
                Ok(_) => return Ok(PutOutcome::Written),
                Err(error) if if_absent && http_status(&error) == Some(412) => return Ok(PutOutcome::AlreadyExists),
                Err(error) if http_status(&error) == Some(409) && attempt < CONFLICT_ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(error) => return Err(self.error("write", key, &error)),
            }
        }
    }

    /// See [`super::Store::list`]: `ListObjectsV2`, page by page.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let full_prefix = if self.prefix.is_empty() { prefix.to_owned() } else { format!("{}/{prefix}", self.prefix) };
        let mut keys = Vec::new();
        let mut continuation = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(continuation.take())
                .send()
                .await
                .map_err(|e| self.error("list", prefix, &e))?;
            let strip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
            keys.extend(
                page.contents().iter().filter_map(|o| o.key()).filter_map(|k| k.get(strip..)).map(str::to_owned),
            );
            match page.next_continuation_token() {
                Some(token) if page.is_truncated() == Some(true) => continuation = Some(token.to_owned()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// See [`super::Store::holds`]: same size and the same SHA-256 recorded at upload.
    pub async fn holds(&self, key: &str, entry: &FileEntry) -> Result<bool> {
        let response = self.client.head_object().bucket(&self.bucket).key(self.object_key(key)).send().await;
        let output = match response {
            Ok(output) => output,
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => return Ok(false),
            Err(error) => return Err(self.error("inspect", key, &error)),
        };
        let same_size = output.content_length().is_some_and(|n| n as u64 == entry.size);
        let recorded = output.metadata().and_then(|m| m.get(SHA256_METADATA_KEY));
        Ok(same_size && recorded.is_some_and(|sha| *sha == entry.sha256))
    }

    /// See [`super::Store::upload_file`]: one `PutObject` up to the multipart threshold, parts in
    /// parallel above it. SHA-256 checksums go with every request; when the store echoes its own
    /// checksum it must match, otherwise the object is read back and hashed.
    pub async fn upload_file(
        &self,
        key: &str,
        source: &Path,
        entry: &FileEntry,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<Verification> {
        let verified_by_store = if entry.size > self.options.multipart_threshold {
            self.upload_multipart(key, source, entry, progress).await?
        } else {
            self.upload_single(key, source, entry, progress).await?
        };
        if verified_by_store {
            return Ok(Verification::StoreChecksum);
        }
        let verified = self.read_back(key, entry).await.map(|()| Verification::ReadBack);
        self.remove_unless_verified(key, verified).await
    }

    /// Reads `key` back and checks it is the file `entry` describes.
    async fn read_back(&self, key: &str, entry: &FileEntry) -> Result<()> {
        let (size, sha256) = self.stream_object(key, None, Arc::new(super::NoProgress)).await?;
        if size != entry.size || sha256 != entry.sha256 {
            return Err(PublishError::Verification {
                location: self.describe(key),
                reason: format!(
                    "read back {size} bytes sha256 {sha256}, expected {} bytes sha256 {}",
                    entry.size, entry.sha256
                ),
            });
        }
        Ok(())
    }

    /// See [`super::Store::copy_within`]: a server-side `CopyObject` (no bytes through this
    /// machine) keeping the source's metadata, its SHA-256 among it. S3 computes the copy's
    /// SHA-256, which must match; a store that does not report one has the copy read back and
    /// hashed.
    pub async fn copy_within(&self, from: &str, to: &str, entry: &FileEntry) -> Result<bool> {
        if entry.size > MAX_COPY_OBJECT_BYTES || !self.holds(from, entry).await? {
            return Ok(false);
        }
        let Some(digest) = digest_from_hex(&entry.sha256) else {
            return Ok(false);
        };
        let output = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(self.object_key(to))
            .copy_source(copy_source(&self.bucket, &self.object_key(from)))
            .metadata_directive(MetadataDirective::Copy)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| self.error("copy", to, &e))?;
        // A checksum of parts (`<base64>-<count>`) says nothing about the whole object's SHA-256.
        let echoed = output.copy_object_result().and_then(|r| r.checksum_sha256()).filter(|c| !c.contains('-'));
        let verified = match self.confirm_checksum(to, echoed, &base64(&digest)) {
            Ok(true) => Ok(Verification::StoreChecksum),
            Ok(false) => self.read_back(to, entry).await.map(|()| Verification::ReadBack),
            Err(error) => Err(error),
        };
        self.remove_unless_verified(to, verified).await.map(|_| true)
    }

    /// Passes `verified` through; on a failed check removes `key` first, so that an object
    /// carrying the right SHA-256 in its metadata but other bytes is never left to be skipped by
    /// a later publish as already in place.
    async fn remove_unless_verified(&self, key: &str, verified: Result<Verification>) -> Result<Verification> {
        let Err(error) = verified else { return verified };
        if let Err(removal) = self.client.delete_object().bucket(&self.bucket).key(self.object_key(key)).send().await {
            return Err(PublishError::Verification {
                location: self.describe(key),
                reason: format!(
                    "{error}; removing the object failed too ({}): delete it by hand",
                    sdk_message(&removal)
                ),
            });
        }
        Err(error)
    }

    /// One `PutObject`; returns whether the store confirmed the SHA-256.
    async fn upload_single(
        &self,
        key: &str,
        source: &Path,
        entry: &FileEntry,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<bool> {
        let bytes = tokio::fs::read(source).await.map_err(|e| PublishError::io(source, e))?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        check_source_unchanged(source, entry, bytes.len() as u64, &digest)?;
        let expected = base64(&digest);
        let output = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .content_length(bytes.len() as i64)
            .checksum_sha256(&expected)
            .metadata(SHA256_METADATA_KEY, &entry.sha256)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.error("upload", key, &e))?;
        progress.advance(entry.size);
        self.confirm_checksum(key, output.checksum_sha256(), &expected)
    }

    /// Whether the store's echoed checksum (if any) confirms `expected`; a different one is an
    /// error.
    fn confirm_checksum(&self, key: &str, echoed: Option<&str>, expected: &str) -> Result<bool> {
        match echoed {
            None => Ok(false),
            Some(found) if found == expected => Ok(true),
            Some(found) => Err(PublishError::Verification {
                location: self.describe(key),
                reason: format!("store computed sha256 {found}, qtier sent {expected}"),
            }),
        }
    }

    /// A multipart upload; aborted (so no parts linger, and nothing becomes visible) on any
    /// failure. Returns whether the store confirmed every checksum.
    async fn upload_multipart(
        &self,
        key: &str,
        source: &Path,
        entry: &FileEntry,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<bool> {
        let object_key = self.object_key(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&object_key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .metadata(SHA256_METADATA_KEY, &entry.sha256)
            .send()
            .await
            .map_err(|e| self.error("start multipart upload", key, &e))?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(PublishError::Store {
                operation: "start multipart upload",
                location: self.describe(key),
                message: "the store returned no upload id".into(),
            });
        };
        let result = self.upload_parts_and_complete(key, &upload_id, source, entry, progress).await;
        if result.is_err() {
            self.abort(key, &upload_id).await;
        }
        result
    }

    /// Uploads every part, then completes the upload.
    async fn upload_parts_and_complete(
        &self,
        key: &str,
        upload_id: &str,
        source: &Path,
        entry: &FileEntry,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<bool> {
        let part_size = part_size_for(entry.size, self.options.part_size);
        let parts = entry.size.div_ceil(part_size);
        let file = Arc::new(std::fs::File::open(source).map_err(|e| PublishError::io(source, e))?);
        let permits = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut completed = Vec::with_capacity(parts as usize);
        for index in 0..parts {
            let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
            // Fail fast: once a part has failed, stop reading and sending (dropping the set
            // cancels the parts in flight).
            while let Some(done) = tasks.try_join_next() {
                completed.push(done.expect("part uploads do not panic")?);
            }
            let offset = index * part_size;
            let length = part_size.min(entry.size - offset);
            let (store, key, upload_id, file, source, progress) = (
                self.clone(),
                key.to_owned(),
                upload_id.to_owned(),
                file.clone(),
                source.to_path_buf(),
                progress.clone(),
            );
            tasks.spawn(async move {
                let _permit = permit;
                let part_number = i32::try_from(index + 1).expect("at most 10,000 parts");
                let bytes = tokio::task::spawn_blocking(move || {
                    let mut bytes = vec![0u8; length as usize];
                    file.read_exact_at(&mut bytes, offset).map(|()| bytes).map_err(|e| PublishError::io(&source, e))
                })
                .await
                .expect("reading a part does not panic")?;
                let part = store.upload_part(&key, &upload_id, part_number, bytes).await?;
                progress.advance(length);
                Ok::<_, PublishError>(part)
            });
        }
        while let Some(done) = tasks.join_next().await {
            completed.push(done.expect("part uploads do not panic")?);
        }
        completed.sort_by_key(|p| p.part.part_number());
        let whole_file = tokio::fs::metadata(source).await.map_err(|e| PublishError::io(source, e))?;
        let mut hasher = Sha256::new();
        for part in &completed {
            hasher.update(part.digest);
        }
        if whole_file.len() != entry.size || completed.len() as u64 != parts {
            return Err(source_changed(source, entry));
        }
        let every_part_confirmed = completed.iter().all(|p| p.confirmed_by_store);
        let composite = format!("{}-{}", base64(&hasher.finalize()), completed.len());
        let output = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed.into_iter().map(|p| p.part).collect()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("complete multipart upload", key, &e))?;
        let whole_confirmed = self.confirm_checksum(key, output.checksum_sha256(), &composite)?;
        Ok(every_part_confirmed && whole_confirmed)
    }

    /// Uploads one part with its SHA-256.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        bytes: Vec<u8>,
    ) -> Result<CompletedPartWithDigest> {
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let checksum = base64(&digest);
        let output = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(bytes.len() as i64)
            .checksum_sha256(&checksum)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.error("upload part of", key, &e))?;
        let confirmed_by_store = self.confirm_checksum(key, output.checksum_sha256(), &checksum)?;
        let part = CompletedPart::builder()
            .part_number(part_number)
            .set_e_tag(output.e_tag().map(str::to_owned))
            .checksum_sha256(checksum)
            .build();
        Ok(CompletedPartWithDigest { part, digest, confirmed_by_store })
    }

    /// Aborts a multipart upload, retrying a few times: a lingering upload costs storage and
    /// shows up in `ListMultipartUploads`.
    async fn abort(&self, key: &str, upload_id: &str) {
        for attempt in 1..=CONFLICT_ATTEMPTS {
            let response = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(self.object_key(key))
                .upload_id(upload_id)
                .send()
                .await;
            if response.is_ok() {
                return;
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// See [`super::Store::download_file`]: retries a body that breaks off mid-stream.
    pub async fn download_file(
        &self,
        key: &str,
        destination: &Path,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<(u64, String)> {
        self.stream_object(key, Some(destination), progress).await
    }

    /// Streams an object, hashing it and writing it to `destination` if given; retried from the
    /// start when the stream breaks.
    async fn stream_object(
        &self,
        key: &str,
        destination: Option<&Path>,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<(u64, String)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.stream_object_once(key, destination, progress.as_ref()).await {
                Err(StreamFailure::Transient(_)) if attempt < DOWNLOAD_ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(StreamFailure::Transient(message)) => {
                    return Err(PublishError::Store { operation: "download", location: self.describe(key), message });
                }
                Err(StreamFailure::Final(error)) => return Err(error),
                Ok(done) => return Ok(done),
            }
        }
    }

    /// One attempt of [`Self::stream_object`].
    async fn stream_object_once(
        &self,
        key: &str,
        destination: Option<&Path>,
        progress: &dyn TransferProgress,
    ) -> std::result::Result<(u64, String), StreamFailure> {
        let response = self.client.get_object().bucket(&self.bucket).key(self.object_key(key)).send().await;
        let mut output = match response {
            Ok(output) => output,
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Err(StreamFailure::Final(PublishError::Store {
                    operation: "download",
                    location: self.describe(key),
                    message: "no such object".into(),
                }));
            }
            Err(error) => return Err(StreamFailure::Final(self.error("download", key, &error))),
        };
        let mut file = match destination {
            Some(path) => {
                Some(tokio::fs::File::create(path).await.map_err(|e| StreamFailure::Final(PublishError::io(path, e)))?)
            }
            None => None,
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = output.body.next().await {
            let chunk = chunk.map_err(|e| StreamFailure::Transient(cause_chain(&e)))?;
            hasher.update(&chunk);
            if let (Some(file), Some(path)) = (file.as_mut(), destination) {
                file.write_all(&chunk).await.map_err(|e| StreamFailure::Final(PublishError::io(path, e)))?;
            }
            size += chunk.len() as u64;
            progress.advance(chunk.len() as u64);
        }
        if let Some(expected) = output.content_length()
            && expected as u64 != size
        {
            return Err(StreamFailure::Transient(format!("body ended after {size} of {expected} bytes")));
        }
        if let (Some(mut file), Some(path)) = (file, destination) {
            file.flush().await.map_err(|e| StreamFailure::Final(PublishError::io(path, e)))?;
            file.sync_all().await.map_err(|e| StreamFailure::Final(PublishError::io(path, e)))?;
        }
        Ok((size, hex(&hasher.finalize())))
    }
}

/// Why a streamed download stopped.
enum StreamFailure {
    /// The connection broke: worth another attempt.
    Transient(String),
    /// Anything else.
    Final(PublishError),
}

/// A completed part with the raw SHA-256 of its bytes (for the composite checksum).
struct CompletedPartWithDigest {
    part: CompletedPart,
    digest: [u8; 32],
    confirmed_by_store: bool,
}

/// The part size for a file: the configured one, raised (to a MiB multiple) when the file would
/// need more than S3's 10,000 parts.
fn part_size_for(file_size: u64, configured: u64) -> u64 {
    let smallest = file_size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    configured.max(smallest)
}

/// Errors when the file read for upload is not the file hashed for the manifest.
fn check_source_unchanged(source: &Path, entry: &FileEntry, size: u64, digest: &[u8; 32]) -> Result<()> {
    if size != entry.size || hex(digest) != entry.sha256 {
        return Err(source_changed(source, entry));
    }
    Ok(())
}

/// The error for a source file that changed between hashing and upload.
fn source_changed(source: &Path, entry: &FileEntry) -> PublishError {
    PublishError::Verification {
        location: source.display().to_string(),
        reason: format!("changed while publishing (hashed {} bytes, sha256 {})", entry.size, entry.sha256),
    }
}

/// The HTTP status of a failed request, when a response arrived.
fn http_status<E>(error: &SdkError<E>) -> Option<u16> {
    error.raw_response().map(|response| response.status().as_u16())
}

/// An SDK error in one line: the service's code and message when it answered, the transport's
/// cause chain otherwise. Never includes request headers (and so never credentials).
fn sdk_message<E>(error: &SdkError<E>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    if let Some(service) = error.as_service_error() {
        let status = http_status(error).map(|s| format!("HTTP {s} ")).unwrap_or_default();
        return format!(
            "{status}{}: {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or("(no message)")
        );
    }
    cause_chain(error)
}

/// An error and its sources, `outer: inner: ...`, skipping a source whose text its parent already
/// includes.
fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `CopyObject`'s source, `bucket/key`, with every byte of the key percent-encoded except
/// unreserved characters and `/` (the header is URL-encoded).
fn copy_source(bucket: &str, object_key: &str) -> String {
    let mut source = format!("{bucket}/");
    for byte in object_key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/') {
            source.push(char::from(byte));
        } else {
            source.push_str(&format!("%{byte:02X}"));
        }
    }
    source
}

/// The 32 bytes of a SHA-256 in hex, or `None` when `text` is not one.
fn digest_from_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

/// Standard base64 (S3's checksum headers).
fn base64(bytes: &[u8]) -> String {
    aws_smithy_types::base64::encode(bytes)
}

/// Exponential backoff for qtier's own retries.
fn backoff(attempt: u32) -> Duration {
    RETRY_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_only_past_the_part_limit() {
        assert_eq!(part_size_for(100 << 20, 16 << 20), 16 << 20);
        let huge = 10_000 * (16u64 << 20) + 1;
        let size = part_size_for(huge, 16 << 20);
        assert!(huge.div_ceil(size) <= MAX_PARTS);
        assert_eq!(size % (1 << 20), 0);
    }

    #[test]
    fn copy_sources_are_url_encoded_except_slashes() {
        assert_eq!(copy_source("models", "p/m/v1/model.safetensors"), "models/p/m/v1/model.safetensors");
        assert_eq!(copy_source("b", "a b/é+%.json"), "b/a%20b/%C3%A9%2B%25.json");
    }

    #[test]
    fn hex_digests_round_trip_and_reject_what_is_not_one() {
        let digest: [u8; 32] = Sha256::digest(b"qtier").into();
        assert_eq!(digest_from_hex(&hex(&digest)), Some(digest));
        assert_eq!(digest_from_hex(&hex(&digest)[..62]), None);
        assert_eq!(digest_from_hex(&"g".repeat(64)), None);
        assert_eq!(digest_from_hex(&"+f".repeat(32)), None, "from_str_radix alone takes a sign");
        assert_eq!(digest_from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn base64_of_sha256_matches_s3_examples() {
        // sha256("") in base64, as S3 documents for an empty object.
        assert_eq!(base64(&Sha256::digest(b"")), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    }
}
