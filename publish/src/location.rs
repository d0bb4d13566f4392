//! Where artifacts go: `s3://bucket/prefix`, `file:///path` or a plain path, and the rules for S3
//! endpoints.

use std::path::PathBuf;

use crate::error::{PublishError, Result};

/// A store location as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on this machine (`file:///path` or a plain path).
    Local {
        /// The directory.
        root: PathBuf,
    },
    /// A prefix in an S3 bucket.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix, without leading or trailing `/` (empty for the bucket's root).
        prefix: String,
    },
}

impl Location {
    /// Parses `s3://bucket[/prefix]`, `file:///path` or a plain path.
    pub fn parse(uri: &str) -> Result<Location> {
        let bad = |reason: &str| PublishError::BadUri { uri: uri.to_owned(), reason: reason.to_owned() };
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if !is_bucket_name(bucket) {
                return Err(bad("not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|part| part == "." || part == "..") || prefix.contains("//") {
                return Err(bad("the key prefix has an empty, '.' or '..' segment"));
            }
            return Ok(Location::S3 { bucket: bucket.to_owned(), prefix: prefix.to_owned() });
        }
        if let Some(path) = uri.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file:// URI needs an absolute path (file:///dir)"));
            }
            return Ok(Location::Local { root: PathBuf::from(path) });
        }
        if let Some((scheme, _)) = uri.split_once("://") {
            return Err(bad(&format!("unsupported scheme {scheme:?}; use s3://, file:// or a path")));
        }
        if uri.is_empty() {
            return Err(bad("empty location"));
        }
        Ok(Location::Local { root: PathBuf::from(uri) })
    }

    /// This location with `key` appended, for messages.
    pub fn describe(&self, key: &str) -> String {
        match self {
            Location::Local { root } => root.join(key).display().to_string(),
            Location::S3 { bucket, prefix } => {
                let full = join_key(prefix, key);
                format!("s3://{bucket}/{full}")
            }
        }
    }

    /// The location of `key` below this one, as a new location.
    pub fn child(&self, key: &str) -> Location {
        match self {
            Location::Local { root } => Location::Local { root: root.join(key) },
            Location::S3 { bucket, prefix } => Location::S3 { bucket: bucket.clone(), prefix: join_key(prefix, key) },
        }
    }
}

/// `prefix/key`, or `key` for an empty prefix.
pub fn join_key(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}/{key}"),
    }
}

/// S3 bucket naming rules (the subset that matters for a URI: length and characters).
fn is_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// Refuses a plain-http endpoint unless it is on this machine (loopback) or `allow_http` is set:
/// request signatures protect integrity but not the object bytes' confidentiality, and an
/// on-path attacker could replay or withhold them.
pub fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<()> {
    let bad = |reason: &str| PublishError::BadUri { uri: endpoint.to_owned(), reason: reason.to_owned() };
    let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| bad("an endpoint URL needs a scheme"))?;
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" if allow_http || is_loopback_host(host_of(rest)) => Ok(()),
        "http" => Err(bad("plain http to a host other than loopback is refused; use https or pass --allow-http")),
        _ => Err(bad("an endpoint URL must be http:// or https://")),
    }
}

/// The host of `host[:port][/path]` (after the scheme), without brackets for IPv6.
fn host_of(authority_and_path: &str) -> &str {
    let authority = authority_and_path.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}

/// `localhost`, 127.0.0.0/8 or ::1.
fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            Location::parse("s3://models-bucket/team/prod/").unwrap(),
            Location::S3 { bucket: "models-bucket".into(), prefix: "team/prod".into() }
        );
        assert_eq!(
            Location::parse("s3://models-bucket").unwrap(),
            Location::S3 { bucket: "models-bucket".into(), prefix: String::new() }
        );
        assert_eq!(Location::parse("file:///srv/models").unwrap(), Location::Local { root: "/srv/models".into() });
        assert_eq!(Location::parse("artifacts").unwrap(), Location::Local { root: "artifacts".into() });
    }

    #[test]
    fn refuses_bad_uris() {
        for uri in ["s3://", "s3://A_B/x", "s3://bucket/a/../b", "s3://bucket/a//b", "gs://b/x", "file://rel", ""] {
            assert!(Location::parse(uri).is_err(), "{uri} should be refused");
        }
    }

    #[test]
    fn describes_keys() {
        let s3 = Location::parse("s3://bucket/p").unwrap();
        assert_eq!(s3.describe("m/v/model.safetensors"), "s3://bucket/p/m/v/model.safetensors");
        assert_eq!(s3.child("m").describe("latest"), "s3://bucket/p/m/latest");
        let root = Location::parse("s3://bucket").unwrap();
        assert_eq!(root.describe("m/latest"), "s3://bucket/m/latest");
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in ["https://s3.example.com", "http://127.0.0.1:9000", "http://localhost:1/x", "http://[::1]:80"] {
            check_endpoint(ok, false).unwrap();
        }
        for refused in ["http://s3.example.com", "http://10.0.0.1:9000", "http://user@evil.example:80", "ftp://x"] {
            assert!(check_endpoint(refused, false).is_err(), "{refused}");
        }
        check_endpoint("http://10.0.0.1:9000", true).unwrap();
    }
}
