//! A real S3-compatible server for the publish tests (s3s-fs, the file-system backend of the s3s
//! crate), run inside the test process on 127.0.0.1, optionally reporting checksums as S3 does, and
//! a TCP proxy that cuts connections to it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;

use crate::aws_checksums::{AwsChecksums, ChecksumLedger};

/// The test credentials. Distinctive, so tests can grep every output for them.
pub const ACCESS_KEY: &str = "AKIAQTIERTESTKEY0001";
/// The test secret.
pub const SECRET_KEY: &str = "qtier-test-secret-d3adb33f-never-print-me";
/// The bucket every server starts with.
pub const BUCKET: &str = "models";

/// A running s3s-fs server with one bucket, storing objects under a temporary directory.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The address it listens on.
    pub address: SocketAddr,
    root: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server on an ephemeral loopback port (it runs until the test process exits).
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().expect("a temporary directory");
        let filesystem = bucket_and_filesystem(root.path());
        S3Server::serve(filesystem, root)
    }

    /// [`S3Server::start`], reporting the SHA-256 checksums S3 reports (see
    /// [`crate::aws_checksums`]); the ledger records reads and can make it report wrong ones.
    pub fn start_reporting_checksums() -> (S3Server, Arc<ChecksumLedger>) {
        let root = tempfile::tempdir().expect("a temporary directory");
        let (service, ledger) = AwsChecksums::new(bucket_and_filesystem(root.path()), root.path());
        (S3Server::serve(service, root), ledger)
    }

    /// Serves `s3` on an ephemeral loopback port from a thread of its own.
    fn serve(s3: impl s3s::S3, root: tempfile::TempDir) -> S3Server {
        let mut builder = s3s::service::S3ServiceBuilder::new(s3);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let address = listener.local_addr().expect("the listener's address");
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime for the S3 server");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let http = ConnectionBuilder::new(TokioExecutor::new());
                loop {
                    let Ok((socket, _)) = listener.accept().await else { continue };
                    let connection = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
            });
        });
        S3Server { endpoint: format!("http://{address}"), address, root }
    }

    /// Where an object's bytes are stored.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// Every object key in the bucket, sorted.
    pub fn keys(&self) -> Vec<String> {
        let bucket = self.root.path().join(BUCKET);
        let mut keys = Vec::new();
        let mut pending = vec![bucket.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).expect("list the bucket") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    keys.push(path.strip_prefix(&bucket).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        keys.sort();
        keys
    }

    /// Multipart uploads started and neither completed nor aborted (s3s-fs keeps one
    /// `.upload-<id>.json` per upload, and `.upload_id-<id>.part-<n>` per part, in its root).
    pub fn incomplete_uploads(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .expect("list the server's root")
            .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".upload-") || name.starts_with(".upload_id-"))
            .collect()
    }

    /// The part counts of objects stored by multipart upload (s3s-fs records an ETag ending in
    /// `-<parts>` for them in its internal info files).
    pub fn multipart_part_counts(&self) -> Vec<u32> {
        let mut counts = Vec::new();
        for entry in std::fs::read_dir(self.root.path()).expect("list the server's root") {
            let path = entry.expect("a directory entry").path();
            if !path.to_string_lossy().ends_with(".internal.json") {
                continue;
            }
            let info: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let parts: Option<u32> =
                info["e_tag"].as_str().and_then(|tag| tag.rsplit_once('-')).and_then(|(_, n)| n.parse().ok());
            counts.extend(parts);
        }
        counts
    }

    /// Every file the server stores (objects and its own bookkeeping), for secret scans.
    pub fn all_files(&self) -> std::collections::BTreeMap<String, Vec<u8>> {
        tree(self.root.path())
    }

    /// A `qtier` command with this server's credentials and region in its environment.
    pub fn qtier(&self) -> Command {
        let mut command = crate::common::qtier();
        command
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_S3")
            // No shared config or credentials files of whoever runs the tests.
            .env("AWS_CONFIG_FILE", "/nonexistent/qtier-test-aws-config")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/qtier-test-aws-credentials");
        command
    }

    /// `s3://models/<prefix>`.
    pub fn uri(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }
}

/// A loopback TCP proxy that forwards to `upstream` and cuts connections: the first `cuts`
/// connections that carry more than `cut_after_bytes` from the client are closed abruptly at that
/// point (as a broken network or a load balancer timing out would).
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    cuts_made: Arc<AtomicUsize>,
}

impl FaultProxy {
    /// Starts the proxy.
    pub fn start(upstream: SocketAddr, cut_after_bytes: u64, cuts: usize) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let cuts_made = Arc::new(AtomicUsize::new(0));
        let counter = cuts_made.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                let counter = counter.clone();
                std::thread::spawn(move || relay(client, server, cut_after_bytes, cuts, &counter));
            }
        });
        FaultProxy { endpoint, cuts_made }
    }

    /// Connections cut so far.
    pub fn cuts_made(&self) -> usize {
        self.cuts_made.load(Ordering::SeqCst)
    }
}

/// Copies bytes both ways; cuts the connection once the client has sent `cut_after_bytes`, while
/// cuts remain.
fn relay(client: TcpStream, server: TcpStream, cut_after_bytes: u64, cuts: usize, cuts_made: &AtomicUsize) {
    let (client_reader, server_writer) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (server_reader, client_writer) = (server, client);
    let closer = (client_reader.try_clone().unwrap(), server_writer.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut &server_reader, &mut &client_writer);
        let _ = client_writer.shutdown(Shutdown::Write);
    });
    let mut sent = 0u64;
    let mut buffer = vec![0u8; 64 << 10];
    let (mut reader, mut writer) = (client_reader, server_writer);
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        sent += read as u64;
        if sent > cut_after_bytes
            && cuts_made.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < cuts).then_some(n + 1)).is_ok()
        {
            let _ = closer.0.shutdown(Shutdown::Both);
            let _ = closer.1.shutdown(Shutdown::Both);
            return;
        }
        if writer.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Write);
}

/// Makes the bucket directory under `root` and opens s3s-fs there.
fn bucket_and_filesystem(root: &Path) -> s3s_fs::FileSystem {
    std::fs::create_dir(root.join(BUCKET)).expect("the bucket directory");
    s3s_fs::FileSystem::new(root).expect("s3s-fs opens its root")
}

/// Every file below `dir` with its bytes, keyed by relative path (for byte-for-byte comparison).
pub fn tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("list a directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                files.insert(relative, std::fs::read(&path).expect("read a file"));
            }
        }
    }
    files
}
