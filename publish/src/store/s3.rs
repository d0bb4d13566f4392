//! S3 through aws-sdk-s3: the standard credential chain, multipart uploads with per-part SHA-256
//! checksums, conditional writes, retries with backoff, and verification of what was stored.

use std::future::Future;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
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

/// The largest object one `CopyObject` copies (S3's limit; larger ones take a multipart copy).
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
    /// Files larger than this go up, or are copied within the store, in parts.
    pub multipart_threshold: u64,
    /// Part size (raised when a file would need more than 10,000 parts).
    pub part_size: u64,
    /// Parts in flight at once (uploads and copies).
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
    /// ignores it is caught by the caller, which reads the document back. The document's SHA-256
    /// goes with it; a store that reports another one for what it stored has the object removed,
    /// and the write fails.
    pub async fn write_document(&self, key: &str, bytes: Vec<u8>, if_absent: bool) -> Result<PutOutcome> {
        let sha256 = Sha256::digest(&bytes);
        let checksum = base64(&sha256);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(self.object_key(key))
                .content_length(bytes.len() as i64)
                .checksum_sha256(&checksum)
                .metadata(SHA256_METADATA_KEY, hex(&sha256))
                .body(ByteStream::from(bytes.clone()));
            if if_absent {
                request = request.if_none_match("*");
            }
            match request.send().await {
                Ok(output) => {
                    return match self.check_echo(key, output.checksum_sha256(), &checksum) {
                        StoreCheck::Mismatch(error) => Err(self.remove_bad_object(key, error).await),
                        StoreCheck::Confirmed | StoreCheck::NotReported => Ok(PutOutcome::Written),
                    };
                }
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
        let check = if entry.size > self.options.multipart_threshold {
            self.upload_multipart(key, source, entry, progress).await?
        } else {
            self.upload_single(key, source, entry, progress).await?
        };
        self.settle(key, entry, check).await
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

    /// See [`super::Store::copy_within`]: a server-side copy (no bytes through this machine).
    /// Objects up to the multipart threshold (and S3's 5 GiB single-copy limit) take one
    /// `CopyObject` keeping the source's metadata, its SHA-256 among it, and S3 reports the
    /// copy's SHA-256, which must match. Larger ones are copied in parts (`UploadPartCopy`, in
    /// parallel like an upload's parts), each part's SHA-256 computed from `source`, the local
    /// file `entry` describes, to check the store's. A store that reports no checksum has the
    /// copy read back and hashed.
    pub async fn copy_within(&self, from: &str, to: &str, source: &Path, entry: &FileEntry) -> Result<bool> {
        if !self.holds(from, entry).await? {
            return Ok(false);
        }
        let Some(digest) = digest_from_hex(&entry.sha256) else {
            return Ok(false);
        };
        let check = if entry.size > self.options.multipart_threshold.min(MAX_COPY_OBJECT_BYTES) {
            self.copy_multipart(from, to, source, entry).await?
        } else {
            self.copy_single(from, to, &digest).await?
        };
        self.settle(to, entry, check).await.map(|_| true)
    }

    /// One `CopyObject` of `from` to `to`.
    async fn copy_single(&self, from: &str, to: &str, digest: &[u8; 32]) -> Result<StoreCheck> {
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
        Ok(self.check_echo(to, echoed, &base64(digest)))
    }

    /// A multipart copy of `from` to `to` (`entry`, whose bytes `source` holds here); aborted
    /// on any failure, so that nothing becomes visible at `to`.
    async fn copy_multipart(&self, from: &str, to: &str, source: &Path, entry: &FileEntry) -> Result<StoreCheck> {
        let part_size = part_size_for(entry.size, self.options.part_size);
        let digests = local_part_digests(source, entry, part_size).await?;
        self.in_multipart_upload(to, entry, async |upload_id| {
            self.copy_parts_and_complete(from, to, upload_id, entry, part_size, &digests).await
        })
        .await
    }

    /// Copies every part of `from` (SHA-256s `digests`, `part_size` bytes each but the last),
    /// then completes the upload.
    async fn copy_parts_and_complete(
        &self,
        from: &str,
        to: &str,
        upload_id: &str,
        entry: &FileEntry,
        part_size: u64,
        digests: &[[u8; 32]],
    ) -> Result<StoreCheck> {
        let copy_source = copy_source(&self.bucket, &self.object_key(from));
        let completed = for_each_part(digests.len() as u64, self.options.concurrency, |index| {
            let (store, to, upload_id, copy_source) =
                (self.clone(), to.to_owned(), upload_id.to_owned(), copy_source.clone());
            let digest = digests[index as usize];
            let offset = index * part_size;
            let range = offset..offset + part_size.min(entry.size - offset);
            async move { store.copy_part(&to, &upload_id, index, &copy_source, range, digest).await }
        })
        .await?;
        self.complete_multipart(to, upload_id, completed).await
    }

    /// Copies bytes `range` of `copy_source` as part `index + 1`, expecting SHA-256 `digest`.
    async fn copy_part(
        &self,
        key: &str,
        upload_id: &str,
        index: u64,
        copy_source: &str,
        range: std::ops::Range<u64>,
        digest: [u8; 32],
    ) -> Result<CompletedPartWithDigest> {
        let part_number = part_number(index);
        let output = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .upload_id(upload_id)
            .part_number(part_number)
            .copy_source(copy_source)
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .map_err(|e| self.error("copy part of", key, &e))?;
        let result = output.copy_part_result();
        let echoed = result.and_then(|r| r.checksum_sha256());
        self.completed_part(key, part_number, digest, echoed, result.and_then(|r| r.e_tag()))
    }

    /// Part `part_number` of a multipart upload to `key` as the store reported it (its echoed
    /// SHA-256, if any, and its ETag), checked against `digest`, the SHA-256 of its bytes.
    fn completed_part(
        &self,
        key: &str,
        part_number: i32,
        digest: [u8; 32],
        echoed: Option<&str>,
        e_tag: Option<&str>,
    ) -> Result<CompletedPartWithDigest> {
        let checksum = base64(&digest);
        let confirmed_by_store = self.check_echo(key, echoed, &checksum).into_part_result()?;
        let part = CompletedPart::builder()
            .part_number(part_number)
            .set_e_tag(e_tag.map(str::to_owned))
            .checksum_sha256(checksum)
            .build();
        Ok(CompletedPartWithDigest { part, digest, confirmed_by_store })
    }

    /// What the store's check of a newly written object at `key` leaves to do: nothing when its
    /// echoed SHA-256 matched, a read-back when it echoed none; and on any mismatch the object
    /// is removed, so that an object carrying the right SHA-256 in its metadata but other bytes
    /// is never left to be skipped by a later publish as already in place.
    async fn settle(&self, key: &str, entry: &FileEntry, check: StoreCheck) -> Result<Verification> {
        let verified = match check {
            StoreCheck::Confirmed => Ok(Verification::StoreChecksum),
            StoreCheck::NotReported => self.read_back(key, entry).await.map(|()| Verification::ReadBack),
            StoreCheck::Mismatch(error) => Err(error),
        };
        let Err(error) = verified else { return verified };
        Err(self.remove_bad_object(key, error).await)
    }

    /// Removes the object at `key`, which failed its check with `error`; returns `error`, or,
    /// when the removal fails too, an error that says so.
    async fn remove_bad_object(&self, key: &str, error: PublishError) -> PublishError {
        match self.client.delete_object().bucket(&self.bucket).key(self.object_key(key)).send().await {
            Ok(_) => error,
            Err(removal) => PublishError::Verification {
                location: self.describe(key),
                reason: format!(
                    "{error}; removing the object failed too ({}): delete it by hand",
                    sdk_message(&removal)
                ),
            },
        }
    }

    /// One `PutObject`.
    async fn upload_single(
        &self,
        key: &str,
        source: &Path,
        entry: &FileEntry,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<StoreCheck> {
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
        Ok(self.check_echo(key, output.checksum_sha256(), &expected))
    }

    /// What the store's echoed checksum (if any) says of `expected`.
    fn check_echo(&self, key: &str, echoed: Option<&str>, expected: &str) -> StoreCheck {
        match echoed {
            None => StoreCheck::NotReported,
            Some(found) if found == expected => StoreCheck::Confirmed,
            Some(found) => StoreCheck::Mismatch(PublishError::Verification {
                location: self.describe(key),
                reason: format!("store computed sha256 {found}, qtier sent {expected}"),
            }),
        }
    }

    /// A multipart upload; aborted (so no parts linger, and nothing becomes visible) on any
    /// failure.
    async fn upload_multipart(
        &self,
        key: &str,
        source: &Path,
        entry: &FileEntry,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<StoreCheck> {
        self.in_multipart_upload(key, entry, async |upload_id| {
            self.upload_parts_and_complete(key, upload_id, source, entry, progress).await
        })
        .await
    }

    /// Starts a multipart upload to `key` of the file `entry` describes and runs `parts` with
    /// its id (they send the parts and complete it); aborts the upload when `parts` fails, so
    /// that no parts linger and nothing becomes visible.
    async fn in_multipart_upload(
        &self,
        key: &str,
        entry: &FileEntry,
        parts: impl AsyncFnOnce(&str) -> Result<StoreCheck>,
    ) -> Result<StoreCheck> {
        let upload_id = self.start_multipart(key, entry).await?;
        let result = parts(&upload_id).await;
        if result.is_err() {
            self.abort(key, &upload_id).await;
        }
        result
    }

    /// Starts a multipart upload to `key` of the file `entry` describes (SHA-256 checksums per
    /// part, the file's SHA-256 in the metadata); returns its id.
    async fn start_multipart(&self, key: &str, entry: &FileEntry) -> Result<String> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .metadata(SHA256_METADATA_KEY, &entry.sha256)
            .send()
            .await
            .map_err(|e| self.error("start multipart upload", key, &e))?;
        created.upload_id().map(str::to_owned).ok_or_else(|| PublishError::Store {
            operation: "start multipart upload",
            location: self.describe(key),
            message: "the store returned no upload id".into(),
        })
    }

    /// Uploads every part, then completes the upload.
    async fn upload_parts_and_complete(
        &self,
        key: &str,
        upload_id: &str,
        source: &Path,
        entry: &FileEntry,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<StoreCheck> {
        let part_size = part_size_for(entry.size, self.options.part_size);
        let parts = entry.size.div_ceil(part_size);
        let file = Arc::new(std::fs::File::open(source).map_err(|e| PublishError::io(source, e))?);
        let completed = for_each_part(parts, self.options.concurrency, |index| {
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
            async move {
                let bytes = tokio::task::spawn_blocking(move || {
                    let mut bytes = vec![0u8; length as usize];
                    file.read_exact_at(&mut bytes, offset).map(|()| bytes).map_err(|e| PublishError::io(&source, e))
                })
                .await
                .expect("reading a part does not panic")?;
                let part = store.upload_part(&key, &upload_id, index, bytes).await?;
                progress.advance(length);
                Ok(part)
            }
        })
        .await?;
        let whole_file = tokio::fs::metadata(source).await.map_err(|e| PublishError::io(source, e))?;
        if whole_file.len() != entry.size {
            return Err(source_changed(source, entry));
        }
        self.complete_multipart(key, upload_id, completed).await
    }

    /// Completes a multipart upload of `parts` (every part, in order), checking the store's
    /// composite checksum where it gives one; only whole-object `Confirmed` when the store
    /// confirmed every part and the composite.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPartWithDigest>,
    ) -> Result<StoreCheck> {
        let mut hasher = Sha256::new();
        for part in &parts {
            hasher.update(part.digest);
        }
        let every_part_confirmed = parts.iter().all(|p| p.confirmed_by_store);
        let composite = format!("{}-{}", base64(&hasher.finalize()), parts.len());
        let output = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts.into_iter().map(|p| p.part).collect()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("complete multipart upload", key, &e))?;
        Ok(match self.check_echo(key, output.checksum_sha256(), &composite) {
            StoreCheck::Confirmed if !every_part_confirmed => StoreCheck::NotReported,
            check => check,
        })
    }

    /// Uploads part `index + 1` with its SHA-256.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        index: u64,
        bytes: Vec<u8>,
    ) -> Result<CompletedPartWithDigest> {
        let part_number = part_number(index);
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
        self.completed_part(key, part_number, digest, output.checksum_sha256(), output.e_tag())
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

    /// See [`super::Store::download_file`]: an object of `expected_size` up to the multipart
    /// threshold is streamed in one `GetObject`, a larger one fetched in ranges of the part size,
    /// `concurrency` at once, each written in place and hashed in file order as the ranges arrive
    /// (one connection to S3 typically carries no more than about 100 MB/s; AWS's performance
    /// guidelines advise parallel byte-range requests of 8-16 MB). Retries a body that breaks off
    /// mid-stream.
    pub async fn download_file(
        &self,
        key: &str,
        destination: &Path,
        expected_size: u64,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<(u64, String)> {
        if expected_size > self.options.multipart_threshold {
            self.download_in_ranges(key, destination, expected_size, progress).await
        } else {
            self.stream_object(key, Some(destination), progress).await
        }
    }

    /// Fetches the `size` bytes of `key` into `destination` in ranges of the part size; returns
    /// the size and SHA-256 of what was written. Fails when the object is not `size` bytes long.
    /// The SHA-256 is computed while ranges arrive, in file order (see [`InOrderHash`]).
    async fn download_in_ranges(
        &self,
        key: &str,
        destination: &Path,
        size: u64,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<(u64, String)> {
        let part_size = self.options.part_size.max(1);
        // Read too: ranges that complete out of turn are read back to be hashed.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(destination)
            .map_err(|e| PublishError::io(destination, e))?;
        file.set_len(size).map_err(|e| PublishError::io(destination, e))?;
        let file = Arc::new(file);
        let hash = Arc::new(std::sync::Mutex::new(InOrderHash::new(size, part_size)));
        for_each_part(size.div_ceil(part_size), self.options.concurrency, |index| {
            let (store, key, file, path, progress, hash) =
                (self.clone(), key.to_owned(), file.clone(), destination.to_path_buf(), progress.clone(), hash.clone());
            let range = hash.lock().expect("the hash lock is not poisoned").range(index);
            async move {
                let bytes = store.fetch_range(&key, range.clone(), size).await?;
                tokio::task::spawn_blocking(move || {
                    file.write_all_at(&bytes, range.start)?;
                    hash.lock().expect("the hash lock is not poisoned").written(index, &bytes, &file)
                })
                .await
                .expect("writing a range does not panic")
                .map_err(|e| PublishError::io(&path, e))?;
                progress.advance(range.end - range.start);
                Ok(())
            }
        })
        .await?;
        let path = destination.to_path_buf();
        tokio::task::spawn_blocking(move || file.sync_all().map_err(|e| PublishError::io(&path, e)))
            .await
            .expect("syncing a download does not panic")?;
        let hash = Arc::into_inner(hash).expect("every range is done").into_inner().expect("not poisoned");
        Ok(hash.finish())
    }

    /// Bytes `range` of `key`, an object that must be `object_size` bytes long; retried when the
    /// body breaks off.
    async fn fetch_range(&self, key: &str, range: std::ops::Range<u64>, object_size: u64) -> Result<Vec<u8>> {
        self.retrying_download(key, || self.fetch_range_once(key, range.clone(), object_size)).await
    }

    /// Runs `attempt` up to [`DOWNLOAD_ATTEMPTS`] times while it fails transiently (a body that
    /// broke off: the SDK retries requests, not bodies already streaming), with backoff.
    async fn retrying_download<T, Fut>(&self, key: &str, attempt: impl Fn() -> Fut) -> Result<T>
    where
        Fut: Future<Output = std::result::Result<T, StreamFailure>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match attempt().await {
                Err(StreamFailure::Transient(_)) if attempts < DOWNLOAD_ATTEMPTS => {
                    tokio::time::sleep(backoff(attempts)).await;
                }
                Err(StreamFailure::Transient(message)) => {
                    return Err(self.download_error(key, message));
                }
                Err(StreamFailure::Final(error)) => return Err(error),
                Ok(done) => return Ok(done),
            }
        }
    }

    /// A failed download of `key`, for `message`.
    fn download_error(&self, key: &str, message: String) -> PublishError {
        PublishError::Store { operation: "download", location: self.describe(key), message }
    }

    /// A `GetObject` of `key` that the store refused (the SDK has already retried what is worth
    /// retrying).
    fn download_failure(&self, key: &str, error: &SdkError<GetObjectError>) -> StreamFailure {
        StreamFailure::Final(match error.as_service_error() {
            Some(refusal) if refusal.is_no_such_key() => self.download_error(key, "no such object".into()),
            _ => self.error("download", key, error),
        })
    }

    /// One attempt of [`Self::fetch_range`].
    async fn fetch_range_once(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        object_size: u64,
    ) -> std::result::Result<Vec<u8>, StreamFailure> {
        let wrong_size = |found: &str| {
            StreamFailure::Final(
                self.download_error(key, format!("the object is {found} bytes; the manifest says {object_size}")),
            )
        };
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await;
        let mut output = match response {
            Ok(output) => output,
            Err(error) if http_status(&error) == Some(416) => return Err(wrong_size("fewer")),
            Err(error) => return Err(self.download_failure(key, &error)),
        };
        // `bytes <first>-<last>/<object size>`: the whole object's size, which a range alone
        // would not show to differ from the manifest's.
        let total = output.content_range().and_then(|r| r.rsplit_once('/')).map(|(_, total)| total.to_owned());
        if total.as_deref() != Some(object_size.to_string().as_str()) {
            return Err(wrong_size(total.as_deref().unwrap_or("an unknown number of")));
        }
        let wanted = (range.end - range.start) as usize;
        let mut bytes = Vec::with_capacity(wanted);
        while let Some(chunk) = output.body.next().await {
            bytes.extend_from_slice(&chunk.map_err(|e| StreamFailure::Transient(cause_chain(&e)))?);
            if bytes.len() > wanted {
                let message = format!("the store sent more than the {wanted} bytes of range {range:?}");
                return Err(StreamFailure::Final(self.download_error(key, message)));
            }
        }
        if bytes.len() != wanted {
            return Err(StreamFailure::Transient(format!("body ended after {} of {wanted} bytes", bytes.len())));
        }
        Ok(bytes)
    }

    /// Streams an object, hashing it and writing it to `destination` if given; retried from the
    /// start when the stream breaks.
    async fn stream_object(
        &self,
        key: &str,
        destination: Option<&Path>,
        progress: Arc<dyn TransferProgress>,
    ) -> Result<(u64, String)> {
        self.retrying_download(key, || self.stream_object_once(key, destination, progress.as_ref())).await
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
            Err(error) => return Err(self.download_failure(key, &error)),
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

/// The SHA-256 of a file written in ranges that complete in any order: each range is hashed as
/// soon as every range before it is, from its bytes when it completes in turn, else read back
/// from the file (the page cache) when its turn comes. Hashing overlaps the download instead of
/// following it as a second pass over the whole file, and no more than the ranges in flight are
/// ever held in memory.
struct InOrderHash {
    hasher: Sha256,
    /// The file's size.
    size: u64,
    /// Bytes per range (the last one shorter).
    part_size: u64,
    /// The next range to hash.
    next: u64,
    /// Ranges written but not yet hashed.
    waiting: std::collections::BTreeSet<u64>,
}

impl InOrderHash {
    fn new(size: u64, part_size: u64) -> InOrderHash {
        InOrderHash { hasher: Sha256::new(), size, part_size, next: 0, waiting: Default::default() }
    }

    /// Byte range of range `index`.
    fn range(&self, index: u64) -> std::ops::Range<u64> {
        let start = index * self.part_size;
        start..(start + self.part_size).min(self.size)
    }

    /// Range `index`, `bytes`, is in `file`: hashes it and every waiting range after it that is
    /// now in turn.
    fn written(&mut self, index: u64, bytes: &[u8], file: &std::fs::File) -> std::io::Result<()> {
        if index != self.next {
            self.waiting.insert(index);
            return Ok(());
        }
        self.hasher.update(bytes);
        self.next += 1;
        let mut buffer = Vec::new();
        while self.waiting.remove(&self.next) {
            let range = self.range(self.next);
            buffer.resize((range.end - range.start) as usize, 0);
            file.read_exact_at(&mut buffer, range.start)?;
            self.hasher.update(&buffer);
            self.next += 1;
        }
        Ok(())
    }

    /// The file's size and SHA-256 (hex), once every range is hashed.
    fn finish(self) -> (u64, String) {
        assert!(self.waiting.is_empty() && self.range(self.next).start >= self.size, "every range is hashed");
        (self.size, hex(&self.hasher.finalize()))
    }
}

/// Why a streamed download stopped.
enum StreamFailure {
    /// The connection broke: worth another attempt.
    Transient(String),
    /// Anything else.
    Final(PublishError),
}

/// What a store said of the SHA-256 of bytes it just stored.
enum StoreCheck {
    /// It computed the SHA-256 qtier expected.
    Confirmed,
    /// It reported none: the bytes must be read back to be checked.
    NotReported,
    /// It computed another: it holds other bytes than qtier meant.
    Mismatch(PublishError),
}

impl StoreCheck {
    /// For one part of a multipart upload: whether the store confirmed it, or the error (the
    /// caller aborts the upload, so nothing of it becomes visible).
    fn into_part_result(self) -> Result<bool> {
        match self {
            StoreCheck::Confirmed => Ok(true),
            StoreCheck::NotReported => Ok(false),
            StoreCheck::Mismatch(error) => Err(error),
        }
    }
}

/// S3's part number of the part at `index` (from 0).
fn part_number(index: u64) -> i32 {
    i32::try_from(index + 1).expect("at most 10,000 parts")
}

/// Runs `part(index)` for every part `0..parts`, at most `concurrency` at once; returns the
/// results in part order, or the first failure, on which it stops starting parts and lets those
/// in flight finish first. A part request already sent may still complete on the server after
/// the caller aborts its multipart upload, leaving a part behind (S3 documents that an abort may
/// then have to be repeated); with every request answered before the failure is returned, the
/// caller's one abort removes every part.
async fn for_each_part<T, F, Fut>(parts: u64, concurrency: usize, part: F) -> Result<Vec<T>>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    /// Keeps a finished part's result, or the first failure.
    fn record<T>(done: Result<(u64, T)>, completed: &mut Vec<(u64, T)>, failure: &mut Option<PublishError>) {
        match done {
            Ok(result) => completed.push(result),
            Err(error) => *failure = failure.take().or(Some(error)),
        }
    }
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut completed = Vec::with_capacity(parts as usize);
    let mut failure = None;
    for index in 0..parts {
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        while let Some(done) = tasks.try_join_next() {
            record(done.expect("parts do not panic"), &mut completed, &mut failure);
        }
        if failure.is_some() {
            break;
        }
        let future = part(index);
        tasks.spawn(async move {
            let _permit = permit;
            future.await.map(|value| (index, value))
        });
    }
    while let Some(done) = tasks.join_next().await {
        record(done.expect("parts do not panic"), &mut completed, &mut failure);
    }
    if let Some(error) = failure {
        return Err(error);
    }
    completed.sort_by_key(|(index, _)| *index);
    Ok(completed.into_iter().map(|(_, value)| value).collect())
}

/// The SHA-256 of each `part_size` part of `source` (the last one shorter), read here; errors
/// when the file is no longer the one `entry` describes.
async fn local_part_digests(source: &Path, entry: &FileEntry, part_size: u64) -> Result<Vec<[u8; 32]>> {
    /// Bytes read at a time.
    const BLOCK: usize = 4 << 20;
    let (source, entry) = (source.to_path_buf(), entry.clone());
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&source).map_err(|e| PublishError::io(&source, e))?;
        let (mut whole, mut digests, mut size) = (Sha256::new(), Vec::new(), 0u64);
        let mut block = vec![0u8; BLOCK];
        loop {
            let mut part = Sha256::new();
            let mut part_bytes = 0u64;
            while part_bytes < part_size {
                let want = BLOCK.min((part_size - part_bytes) as usize);
                let read = file.read(&mut block[..want]).map_err(|e| PublishError::io(&source, e))?;
                if read == 0 {
                    break;
                }
                part.update(&block[..read]);
                whole.update(&block[..read]);
                part_bytes += read as u64;
            }
            if part_bytes == 0 {
                break;
            }
            size += part_bytes;
            digests.push(part.finalize().into());
        }
        check_source_unchanged(&source, &entry, size, &whole.finalize().into())?;
        Ok(digests)
    })
    .await
    .expect("hashing a file does not panic")
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
    fn ranges_written_in_any_order_hash_as_the_whole_file() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = hex(&Sha256::digest(&bytes));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // 4 ranges of 3000 bytes, the last 1000; completed out of order, in order, reversed.
        for order in [[2, 0, 3, 1], [0, 1, 2, 3], [3, 2, 1, 0]] {
            let mut hash = InOrderHash::new(bytes.len() as u64, 3000);
            for index in order {
                let range = hash.range(index);
                hash.written(index, &bytes[range.start as usize..range.end as usize], &file).unwrap();
            }
            assert_eq!(hash.finish(), (bytes.len() as u64, whole.clone()), "{order:?}");
        }
    }

    #[test]
    fn part_digests_are_each_parts_sha256_and_refuse_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("weights");
        let part_size = 5u64 << 20;
        let bytes: Vec<u8> = (0..part_size * 2 + 12_345).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&source, &bytes).unwrap();
        let entry =
            FileEntry { path: "weights".into(), size: bytes.len() as u64, sha256: hex(&Sha256::digest(&bytes)) };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let digests = runtime.block_on(local_part_digests(&source, &entry, part_size)).unwrap();
        let expected: Vec<[u8; 32]> =
            bytes.chunks(part_size as usize).map(|part| Sha256::digest(part).into()).collect();
        assert_eq!(digests, expected);

        let exact = &bytes[..(part_size * 2) as usize];
        std::fs::write(&source, exact).unwrap();
        let entry = FileEntry { size: exact.len() as u64, sha256: hex(&Sha256::digest(exact)), ..entry };
        assert_eq!(runtime.block_on(local_part_digests(&source, &entry, part_size)).unwrap().len(), 2, "no empty part");

        std::fs::write(&source, [exact, b"grown"].concat()).unwrap();
        let error = runtime.block_on(local_part_digests(&source, &entry, part_size)).unwrap_err();
        assert!(error.to_string().contains("changed while publishing"), "{error}");
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
