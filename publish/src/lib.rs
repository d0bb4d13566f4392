//! Publishing verified qtier artifacts, and pulling them back verified.
//!
//! An artifact is a quantized model directory plus its reports (eval, bench, recommendation),
//! described by `qtier-manifest.json`: every file's path, size and sha256, what the artifact is
//! and who published it. [`publish::prepare`] hashes the files and applies the gates (accuracy
//! and service tier; `--force` overrides them and records why); [`publish::publish`] uploads to a
//! [`Store`] (a local directory or S3) under `<prefix>/<model>/<version>/`, the manifest last and
//! the `<model>/latest` pointer after it, so a manifest's presence means the artifact is complete.
//! [`pull::pull`] downloads a version (or the latest), checks every file against the manifest and
//! renames the result into place only when all of it verified.
//!
//! S3 goes through aws-sdk-s3 with the standard credential chain; uploads send SHA-256 checksums
//! (per part for multipart uploads), retry transient failures, abort failed multipart uploads, and
//! confirm what was stored either from the store's own checksum or by reading it back.

#![warn(missing_docs)]

mod error;
pub mod gates;
pub mod location;
pub mod manifest;
pub mod publish;
pub mod pull;
pub mod store;

pub use error::{PublishError, Result};
pub use gates::GatePolicy;
pub use location::Location;
pub use manifest::Manifest;
pub use publish::{PreparedArtifact, PublishOutcome, PublishRequest};
pub use pull::PullOutcome;
pub use store::{S3Options, Store, TransferProgress};
