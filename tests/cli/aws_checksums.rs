//! s3s-fs with the SHA-256 checksums AWS S3 reports, for the publish tests of the path qtier takes
//! against S3 itself.
//!
//! s3s-fs echoes a whole object's SHA-256 only for `PutObject`; S3 also reports it for every part
//! (`UploadPart`, `UploadPartCopy`), for `CopyObject` when asked (`x-amz-checksum-algorithm`), and
//! for `CompleteMultipartUpload` as the composite `base64(sha256(part digests))-<parts>`. Against
//! plain s3s-fs qtier therefore reads multipart uploads and copies back to verify them; against S3
//! it trusts the store's checksums and reads nothing back. [`AwsChecksums`] wraps s3s-fs and adds
//! those checksums, computed from the bytes s3s-fs stored, checks the ones the client sends as S3
//! does (a part whose checksum disagrees is refused, and so is a completion naming a part by a
//! checksum it does not have), and can be told to report a wrong one ([`ChecksumLedger::lie`]) so
//! that qtier's handling of a store that disagrees is tested too. It records every `GetObject`
//! (key and range), which shows whether qtier read anything back, and how it downloads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use sha2::{Digest, Sha256};

/// The S3 operations whose responses report a SHA-256 of what was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumReport {
    /// `PutObject`: the object's SHA-256.
    PutObject,
    /// `UploadPart`: the part's SHA-256.
    UploadPart,
    /// `UploadPartCopy`: the copied part's SHA-256.
    UploadPartCopy,
    /// `CopyObject` with a checksum algorithm: the new object's SHA-256.
    CopyObject,
    /// `CompleteMultipartUpload`: the composite checksum of the parts.
    CompleteMultipartUpload,
}

/// What the wrapped server did and is told to do; shared with the test.
#[derive(Debug, Default)]
pub struct ChecksumLedger {
    /// Report a wrong SHA-256 for this operation on keys that end with this suffix once `/` is
    /// put before them.
    lie: Mutex<Option<(ChecksumReport, String)>>,
    /// Wrong SHA-256s reported so far.
    lies_told: AtomicUsize,
    /// `GetObject`s, in order.
    reads: Mutex<Vec<Read>>,
    /// The SHA-256 of each stored part, by upload id and part number.
    parts: Mutex<HashMap<(String, i32), [u8; 32]>>,
}

impl ChecksumLedger {
    /// From now on, report a wrong SHA-256 (the right one's digest rehashed) for `operation` on
    /// every key that is `path` or ends with `/path`; the bytes are stored as sent.
    pub fn lie(&self, operation: ChecksumReport, path: &str) {
        *self.lie.lock().unwrap() = Some((operation, format!("/{path}")));
    }

    /// Wrong SHA-256s reported so far.
    pub fn lies_told(&self) -> usize {
        self.lies_told.load(Ordering::SeqCst)
    }

    /// The `GetObject`s so far, and forgets them.
    pub fn take_reads(&self) -> Vec<Read> {
        std::mem::take(&mut self.reads.lock().unwrap())
    }

    /// `digest` as the store reports it for `operation` on `key`: base64, wrong if told to lie.
    fn report(&self, operation: ChecksumReport, key: &str, digest: [u8; 32]) -> String {
        let lie = self.lie.lock().unwrap();
        let lying = lie.as_ref().is_some_and(|(op, suffix)| *op == operation && format!("/{key}").ends_with(suffix));
        if lying {
            self.lies_told.fetch_add(1, Ordering::SeqCst);
            base64(&Sha256::digest(digest))
        } else {
            base64(&digest)
        }
    }
}

/// One `GetObject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The key (bucket-relative).
    pub key: String,
    /// The bytes asked for, `first..=last`, when the request named a range.
    pub range: Option<(u64, Option<u64>)>,
}

/// s3s-fs reporting SHA-256 checksums as S3 does (see the module documentation).
pub struct AwsChecksums {
    inner: s3s_fs::FileSystem,
    /// s3s-fs's root: buckets as directories, parts as `.upload_id-<id>.part-<n>` files.
    root: PathBuf,
    ledger: Arc<ChecksumLedger>,
}

impl AwsChecksums {
    /// Wraps an s3s-fs server rooted at `root`; returns it and the ledger the test keeps.
    pub fn new(inner: s3s_fs::FileSystem, root: &Path) -> (AwsChecksums, Arc<ChecksumLedger>) {
        let ledger = Arc::new(ChecksumLedger::default());
        (AwsChecksums { inner, root: root.to_path_buf(), ledger: ledger.clone() }, ledger)
    }

    fn part_path(&self, upload_id: &str, part_number: i32) -> PathBuf {
        self.root.join(format!(".upload_id-{upload_id}.part-{part_number}"))
    }

    /// The SHA-256 of a stored file.
    fn digest_of(path: &Path) -> S3Result<[u8; 32]> {
        let bytes = std::fs::read(path).map_err(|e| s3_error!(InternalError, "read {}: {e}", path.display()))?;
        Ok(Sha256::digest(bytes).into())
    }

    /// Records the SHA-256 of a part s3s-fs just stored and returns it as the store reports it.
    fn stored_part(&self, operation: ChecksumReport, key: &str, upload_id: &str, part: i32) -> S3Result<String> {
        let digest = Self::digest_of(&self.part_path(upload_id, part))?;
        self.ledger.parts.lock().unwrap().insert((upload_id.to_owned(), part), digest);
        Ok(self.ledger.report(operation, key, digest))
    }
}

#[async_trait::async_trait]
impl S3 for AwsChecksums {
    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let mut response = self.inner.put_object(req).await?;
        let digest = Self::digest_of(&self.root.join(&bucket).join(&key))?;
        response.output.checksum_sha256 = Some(self.ledger.report(ChecksumReport::PutObject, &key, digest));
        Ok(response)
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let (key, upload_id, part) = (req.input.key.clone(), req.input.upload_id.clone(), req.input.part_number);
        let sent = req.input.checksum_sha256.clone();
        let mut response = self.inner.upload_part(req).await?;
        let digest = Self::digest_of(&self.part_path(&upload_id, part))?;
        if sent.is_some_and(|sent| sent != base64(&digest)) {
            return Err(s3_error!(BadDigest, "the part's SHA-256 does not match the one sent"));
        }
        response.output.checksum_sha256 = Some(self.stored_part(ChecksumReport::UploadPart, &key, &upload_id, part)?);
        Ok(response)
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let (key, upload_id, part) = (req.input.key.clone(), req.input.upload_id.clone(), req.input.part_number);
        let mut response = self.inner.upload_part_copy(req).await?;
        let checksum = self.stored_part(ChecksumReport::UploadPartCopy, &key, &upload_id, part)?;
        response.output.copy_part_result.get_or_insert_default().checksum_sha256 = Some(checksum);
        Ok(response)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let (key, upload_id) = (req.input.key.clone(), req.input.upload_id.clone());
        let listed = req.input.multipart_upload.as_ref().and_then(|m| m.parts.clone()).unwrap_or_default();
        let mut composite = Sha256::new();
        {
            let stored = self.ledger.parts.lock().unwrap();
            for part in &listed {
                let number = part.part_number.ok_or_else(|| s3_error!(InvalidPart, "a part without a number"))?;
                let digest = stored
                    .get(&(upload_id.clone(), number))
                    .ok_or_else(|| s3_error!(InvalidPart, "part {number} has no SHA-256"))?;
                if part.checksum_sha256.as_ref().is_some_and(|sent| *sent != base64(digest)) {
                    return Err(s3_error!(InvalidPart, "part {number}'s SHA-256 is not the one listed"));
                }
                composite.update(digest);
            }
        }
        let mut response = self.inner.complete_multipart_upload(req).await?;
        let digest: [u8; 32] = composite.finalize().into();
        let checksum =
            format!("{}-{}", self.ledger.report(ChecksumReport::CompleteMultipartUpload, &key, digest), listed.len());
        // s3s-fs answers with a future (S3 keeps the connection alive while it assembles the
        // object); the checksum goes into what that future resolves to.
        match response.output.future.take() {
            Some(pending) => {
                response.output.future = Some(Box::pin(async move {
                    let mut output = pending.await?;
                    output.checksum_sha256 = Some(checksum);
                    Ok(output)
                }));
            }
            None => response.output.checksum_sha256 = Some(checksum),
        }
        Ok(response)
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let asked = req.input.checksum_algorithm.as_ref().is_some_and(|a| a.as_str() == ChecksumAlgorithm::SHA256);
        let mut response = self.inner.copy_object(req).await?;
        if asked {
            let digest = Self::digest_of(&self.root.join(&bucket).join(&key))?;
            let checksum = self.ledger.report(ChecksumReport::CopyObject, &key, digest);
            response.output.copy_object_result.get_or_insert_default().checksum_sha256 = Some(checksum);
        }
        Ok(response)
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let range = match req.input.range {
            Some(Range::Int { first, last }) => Some((first, last)),
            Some(Range::Suffix { .. }) => panic!("qtier does not ask for suffix ranges"),
            None => None,
        };
        self.ledger.reads.lock().unwrap().push(Read { key: req.input.key.clone(), range });
        self.inner.get_object(req).await
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.inner.head_object(req).await
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.inner.delete_object(req).await
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.inner.list_objects_v2(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.inner.create_multipart_upload(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.inner.abort_multipart_upload(req).await
    }
}

/// Standard base64 with padding, as S3 writes checksums.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let triple = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for position in 0..4 {
            if position <= chunk.len() {
                text.push(ALPHABET[(triple >> (18 - 6 * position) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[test]
fn base64_matches_the_rfc_examples() {
    for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}
