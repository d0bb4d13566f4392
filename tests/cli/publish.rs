//! `qtier publish` and `qtier pull` against a real S3-compatible server on loopback (s3s-fs) and
//! against the local store: round trips, broken connections, tampering, racing publishers, gates
//! and secrets.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::aws_checksums::ChecksumReport;
use crate::common::{arg, run_ok, test_model};
use crate::s3_server::{ACCESS_KEY, FaultProxy, S3Server, SECRET_KEY, tree};

/// Part size the tests upload with: S3's minimum, so the 58.7 MB MiniLM weights go up in 12 parts.
const TEST_PART_SIZE: &str = "5MiB";
const TEST_PART_BYTES: u64 = 5 << 20;

/// The MiniLM int8 artifact with real reports, made once per test process.
struct Artifact {
    /// The quantized model directory.
    dir: PathBuf,
    /// `qtier eval --json` of it against the float model.
    eval: PathBuf,
    /// A short `qtier bench model --json` of it on this machine.
    bench: PathBuf,
    /// `qtier recommend --json --allow-projected` from the bench report (this machine is not a
    /// catalog instance, so only projected figures can meet a tier).
    recommendation: PathBuf,
}

impl Artifact {
    /// The `publish` arguments that attach the reports.
    fn report_args(&self) -> Vec<String> {
        vec![
            "--eval".into(),
            arg(&self.eval).into(),
            "--recommendation".into(),
            arg(&self.recommendation).into(),
            "--bench".into(),
            arg(&self.bench).into(),
        ]
    }
}

fn artifact() -> &'static Artifact {
    static ARTIFACT: OnceLock<Artifact> = OnceLock::new();
    ARTIFACT.get_or_init(|| {
        // nextest runs each test in its own process: the fixture is made once per build of the
        // binary and shared through the target directory (made in a temporary directory and renamed
        // into place, so a racing process either wins the rename or uses the winner's).
        let binary = std::fs::metadata(env!("CARGO_BIN_EXE_qtier")).unwrap();
        let stamp = binary.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let shared =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("publish-fixture-{stamp:x}-{:x}", binary.len()));
        let artifact = |root: &Path| Artifact {
            dir: root.join("minilm-w8a8"),
            eval: root.join("eval.json"),
            bench: root.join("bench-this-host.json"),
            recommendation: root.join("recommendation.json"),
        };
        if shared.join("complete").is_file() {
            return artifact(&shared);
        }
        std::fs::create_dir_all(shared.parent().unwrap()).unwrap();
        let building = tempfile::tempdir_in(shared.parent().unwrap()).unwrap();
        let made = artifact(building.path());
        run_ok(&["quantize", arg(test_model()), "-o", arg(&made.dir), "--json"]);
        let write = |path: &Path, args: &[&str]| std::fs::write(path, run_ok(args)).unwrap();
        write(&made.eval, &["eval", arg(test_model()), arg(&made.dir), "--json"]);
        write(
            &made.bench,
            &["bench", "model", arg(&made.dir), "--seq", "32", "--min-seconds", "1", "--tail", "90", "--json"],
        );
        write(&made.recommendation, &["recommend", arg(&made.bench), "--allow-projected", "--json"]);
        std::fs::write(building.path().join("complete"), b"").unwrap();
        // Losing the race is fine: the winner's fixture is as good.
        let built = building.keep();
        if std::fs::rename(&built, &shared).is_err() {
            let _ = std::fs::remove_dir_all(&built);
        }
        artifact(&shared)
    })
}

/// Where a test publishes.
enum Destination {
    S3(S3Server),
    Local(tempfile::TempDir),
}

impl Destination {
    fn both() -> [Destination; 2] {
        [Destination::S3(S3Server::start()), Destination::Local(tempfile::tempdir().unwrap())]
    }

    /// The store URI for `prefix`.
    fn uri(&self, prefix: &str) -> String {
        match self {
            Destination::S3(server) => server.uri(prefix),
            Destination::Local(dir) => format!("file://{}", dir.path().join(prefix).display()),
        }
    }

    /// A qtier command set up for this destination: `args` then the endpoint flags.
    fn qtier(&self, args: &[&str]) -> Command {
        match self {
            Destination::S3(server) => {
                let mut command = server.qtier();
                command.args(args).args(["--endpoint-url", &server.endpoint, "--path-style"]);
                command
            }
            Destination::Local(_) => {
                let mut command = crate::common::qtier();
                command.args(args);
                command
            }
        }
    }

    /// Where the bytes of `key` (relative to the bucket or the store root) live on disk.
    fn object_path(&self, key: &str) -> PathBuf {
        match self {
            Destination::S3(server) => server.object_path(key),
            Destination::Local(dir) => dir.path().join(key),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Destination::S3(_) => "s3",
            Destination::Local(_) => "local",
        }
    }
}

fn output(mut command: Command) -> Output {
    command.output().expect("the qtier binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn succeeded(command: Command) -> Output {
    let output = output(command);
    assert!(output.status.success(), "{}", text(&output));
    output
}

fn failed(command: Command) -> String {
    let output = output(command);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Publishes the artifact (with its reports and `extra` arguments) to `prefix`; returns the
/// outcome JSON.
fn publish(destination: &Destination, dir: &Path, prefix: &str, extra: &[&str]) -> serde_json::Value {
    let uri = destination.uri(prefix);
    let mut args = vec!["publish", arg(dir), "--to", &uri, "--part-size", TEST_PART_SIZE];
    args.extend(["--multipart-threshold", TEST_PART_SIZE, "--json"]);
    args.extend(extra);
    let reports = artifact().report_args();
    args.extend(reports.iter().map(String::as_str));
    let out = succeeded(destination.qtier(&args));
    serde_json::from_slice(&out.stdout).expect("publish --json prints JSON")
}

/// The model directory plus the reports as they appear in a published artifact.
fn expected_tree() -> std::collections::BTreeMap<String, Vec<u8>> {
    let artifact = artifact();
    let mut files = tree(&artifact.dir);
    files.insert("reports/eval.json".into(), std::fs::read(&artifact.eval).unwrap());
    files.insert("reports/recommendation.json".into(), std::fs::read(&artifact.recommendation).unwrap());
    files.insert("reports/bench/bench-this-host.json".into(), std::fs::read(&artifact.bench).unwrap());
    files
}

/// Checks a pulled directory against the artifact, byte for byte, and returns its manifest.
fn assert_pulled_exactly(target: &Path) -> serde_json::Value {
    let mut pulled = tree(target);
    let manifest_bytes = pulled.remove("qtier-manifest.json").expect("the pull keeps the manifest");
    let expected = expected_tree();
    assert_eq!(pulled.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (path, bytes) in &expected {
        assert!(pulled[path] == *bytes, "{path} differs after the round trip");
    }
    serde_json::from_slice(&manifest_bytes).unwrap()
}

#[test]
fn publish_then_pull_round_trips_byte_for_byte_on_s3_and_local() {
    for destination in Destination::both() {
        let artifact = artifact();
        let outcome = publish(&destination, &artifact.dir, "team/prod", &[]);
        let version = outcome["version"].as_str().unwrap().to_owned();
        assert_eq!(version.len(), 12, "default version is a short content hash");
        assert_eq!(outcome["already_published"], false);
        // Every file was verified after upload: by the store's SHA-256 or by reading it back.
        let kinds: Vec<&str> = match &destination {
            Destination::S3(_) => vec!["uploaded-verified-by-store", "uploaded-verified-by-read-back"],
            Destination::Local(_) => vec!["copied"],
        };
        for file in outcome["files"].as_array().unwrap() {
            assert!(kinds.contains(&file[1].as_str().unwrap()), "{file}");
        }

        // Pull by version and by model (through the latest pointer).
        let scratch = tempfile::tempdir().unwrap();
        for (uri, target) in [
            (destination.uri(&format!("team/prod/minilm-w8a8/{version}")), scratch.path().join("by-version")),
            (destination.uri("team/prod/minilm-w8a8"), scratch.path().join("by-latest")),
        ] {
            succeeded(destination.qtier(&["pull", &uri, arg(&target)]));
            let manifest = assert_pulled_exactly(&target);
            assert_eq!(manifest["version"], version.as_str());
            assert_eq!(manifest["model_name"], "minilm-w8a8");
            assert_eq!(manifest["quantization_config"]["format"], "int-quantized");
            assert!(manifest["eval"]["cosine_min"].as_f64().unwrap() >= 0.99);
            assert!(!manifest["tiers_met"].as_array().unwrap().is_empty());
            assert_eq!(manifest["bench_reports"][0], "reports/bench/bench-this-host.json");
            assert!(manifest["forced"].is_null());
        }
        let latest = std::fs::read_to_string(destination.object_path("team/prod/minilm-w8a8/latest")).unwrap();
        assert_eq!(latest, format!("{version}\n"));

        // A file above the threshold went up in parts.
        if let Destination::S3(server) = &destination {
            let weights = std::fs::metadata(artifact.dir.join("model.safetensors")).unwrap().len();
            let parts = weights.div_ceil(TEST_PART_BYTES) as u32;
            assert!(parts >= 3);
            assert_eq!(server.multipart_part_counts(), vec![parts], "only model.safetensors is multipart");
            assert!(server.incomplete_uploads().is_empty());
        }

        // Publishing again is idempotent: nothing re-uploaded.
        let again = publish(&destination, &artifact.dir, "team/prod", &[]);
        assert_eq!(again["already_published"], true, "{}", destination.name());
        assert_eq!(again["uploaded_bytes"], 0);

        // The target exists now: pull refuses without --force, replaces with it.
        let target = scratch.path().join("by-version");
        let uri = destination.uri(&format!("team/prod/minilm-w8a8/{version}"));
        let message = failed(destination.qtier(&["pull", &uri, arg(&target)]));
        assert!(message.contains("exists") && message.contains("--force"), "{message}");
        succeeded(destination.qtier(&["pull", &uri, arg(&target), "--force"]));
        assert_pulled_exactly(&target);
    }
}

#[test]
fn an_interrupted_publish_resumes_without_uploading_twice() {
    // A publish that died after the weights went up: the version is claimed, some files are in
    // place, no manifest. Running it again completes it and skips what is already there.
    let destination = Destination::Local(tempfile::tempdir().unwrap());
    let artifact = artifact();
    let first = publish(&destination, &artifact.dir, "p", &[]);
    let version = first["version"].as_str().unwrap();
    let manifest = destination.object_path(&format!("p/minilm-w8a8/{version}/qtier-manifest.json"));
    std::fs::remove_file(&manifest).unwrap();
    std::fs::remove_file(destination.object_path(&format!("p/minilm-w8a8/{version}/vocab.txt"))).unwrap();
    let second = publish(&destination, &artifact.dir, "p", &[]);
    assert_eq!(second["already_published"], false);
    let vocab = std::fs::metadata(artifact.dir.join("vocab.txt")).unwrap().len();
    assert_eq!(second["uploaded_bytes"], vocab, "only the missing file is uploaded again");
    assert!(manifest.is_file());
}

#[test]
fn a_new_version_copies_unchanged_files_within_the_store_but_never_bad_bytes() {
    for destination in Destination::both() {
        let artifact = artifact();
        let name = destination.name();
        let first = publish(&destination, &artifact.dir, "p", &[]);
        let first_version = first["version"].as_str().unwrap();

        // The same bytes as a new version (new reports over the same weights are the usual case):
        // every file is copied within the store from the version `latest` named; nothing is sent.
        // On S3 the weights, over the multipart threshold, take a multipart copy in several
        // parts, and the small files one `CopyObject` each.
        let weights_size = std::fs::metadata(artifact.dir.join("model.safetensors")).unwrap().len();
        assert!(weights_size > 2 * TEST_PART_BYTES);
        let second = publish(&destination, &artifact.dir, "p", &["--version", "second"]);
        assert_eq!(second["reused_from"], serde_json::json!([first_version]), "{name}");
        assert_eq!(second["uploaded_bytes"], 0, "{name}");
        assert_eq!(second["reused_bytes"], second["total_bytes"], "{name}");
        assert!(file_outcomes(&second).values().all(|o| o == "reused"), "{name}: {second}");
        assert_eq!(second["not_reused"], serde_json::json!([]), "{name}");
        let scratch = tempfile::tempdir().unwrap();
        let target = scratch.path().join("second");
        succeeded(destination.qtier(&["pull", &destination.uri("p/minilm-w8a8/second"), arg(&target)]));
        assert_eq!(assert_pulled_exactly(&target)["version"], "second");
        let weights = |version: &str| destination.object_path(&format!("p/minilm-w8a8/{version}/model.safetensors"));
        if let Destination::Local(_) = destination {
            use std::os::unix::fs::MetadataExt;
            let inode = |version: &str| std::fs::metadata(weights(version)).unwrap().ino();
            assert_eq!(inode("second"), inode(first_version), "the local store links, not copies");
        }

        // The weights `latest` holds rot in place (same size, same recorded sha256): they are not
        // copied (the bad copy is removed), and the next earlier version holding them is tried.
        // On S3 the first version's object is intact and is copied; in the local store it is
        // the same inode, rotten too, so the weights are uploaded. Either way the new version
        // is exact.
        let rotten = std::fs::OpenOptions::new().write(true).open(weights("second")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&rotten, b"rot", 4096).unwrap();
        drop(rotten);
        let third = publish(&destination, &artifact.dir, "p", &["--version", "third"]);
        let third_outcomes = file_outcomes(&third);
        assert!(third_outcomes.iter().all(|(path, o)| path == "model.safetensors" || o == "reused"), "{third}");
        let not_reused: Vec<&str> =
            third["not_reused"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        assert!(not_reused.iter().all(|r| r.starts_with("model.safetensors: not copied from ")), "{name}: {third}");
        assert!(not_reused[0].contains("/second/"), "{name}: the version `latest` names is tried first: {third}");
        match destination {
            Destination::S3(_) => {
                assert_eq!(third_outcomes["model.safetensors"], "reused", "{name}: {third}");
                assert_eq!(third["uploaded_bytes"], 0, "{name}");
                assert_eq!(third["reused_from"], serde_json::json!(["second", first_version]), "{name}");
                assert_eq!(not_reused.len(), 1, "{name}: {third}");
            }
            Destination::Local(_) => {
                assert_eq!(third_outcomes["model.safetensors"], "copied", "{name}: {third}");
                assert_eq!(third["uploaded_bytes"], weights_size, "{name}");
                assert_eq!(third["reused_from"], serde_json::json!(["second"]), "{name}");
                assert_eq!(not_reused.len(), 2, "{name}: {third}");
                assert!(not_reused[1].contains(&format!("/{first_version}/")), "{name}: {third}");
            }
        }
        let target = scratch.path().join("third");
        succeeded(destination.qtier(&["pull", &destination.uri("p/minilm-w8a8/third"), arg(&target)]));
        assert_pulled_exactly(&target);

        // A rollback: other weights become `latest`, then the old weights are published again.
        // They are copied from the most recent earlier version that holds them intact, although
        // `latest` does not.
        let other = tempfile::tempdir().unwrap();
        let other_dir = other.path().join("minilm-w8a8");
        for (path, mut bytes) in tree(&artifact.dir) {
            if path == "model.safetensors" {
                *bytes.last_mut().unwrap() ^= 1;
            }
            std::fs::create_dir_all(other_dir.join(&path).parent().unwrap()).unwrap();
            std::fs::write(other_dir.join(&path), bytes).unwrap();
        }
        let other_weights = publish(&destination, &other_dir, "p", &["--version", "other"]);
        assert_eq!(other_weights["uploaded_bytes"], weights_size, "{name}: {other_weights}");
        let rollback = publish(&destination, &artifact.dir, "p", &["--version", "rollback"]);
        assert_eq!(file_outcomes(&rollback)["model.safetensors"], "reused", "{name}: {rollback}");
        assert_eq!(rollback["uploaded_bytes"], 0, "{name}: {rollback}");
        assert_eq!(rollback["reused_from"], serde_json::json!(["other", "third"]), "{name}: {rollback}");
        assert_eq!(rollback["not_reused"], serde_json::json!([]), "{name}: {rollback}");
        let target = scratch.path().join("rollback");
        succeeded(destination.qtier(&["pull", &destination.uri("p/minilm-w8a8/rollback"), arg(&target)]));
        assert_pulled_exactly(&target);

        // The text summary names every version copied from.
        let uri = destination.uri("p");
        let mut args = vec!["publish", arg(&other_dir), "--to", &uri, "--version", "other-again"];
        let reports = artifact.report_args();
        args.extend(reports.iter().map(String::as_str));
        let summary = String::from_utf8(succeeded(destination.qtier(&args)).stdout).unwrap();
        let files = rollback["files"].as_array().unwrap().len();
        let line = format!(" 0 uploaded (0.0 MB), {files} reused from versions rollback, other (");
        assert!(summary.contains(&line), "{name}: {summary}");
        if let Destination::S3(server) = &destination {
            assert!(server.incomplete_uploads().is_empty());
        }
    }
}

/// The outcome of each file of a publish, by path.
fn file_outcomes(outcome: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    let files = outcome["files"].as_array().unwrap().iter();
    files.map(|f| (f[0].as_str().unwrap().to_owned(), f[1].as_str().unwrap().to_owned())).collect()
}

/// Whether `key` is one of the documents publish writes and reads (`latest`, manifests, version
/// claims), not an artifact file.
fn is_document(key: &str) -> bool {
    ["/latest", "/qtier-manifest.json", "/.qtier-publish-claim.json"].iter().any(|name| key.ends_with(name))
}

#[test]
fn a_store_reporting_checksums_as_s3_does_is_trusted_and_nothing_is_read_back() {
    // S3 reports the SHA-256 of every object, part, copy and multipart composite; qtier checks
    // them and reads nothing back (plain s3s-fs reports only PutObject's, so the other tests
    // exercise the read-back). The weights go up in parts, then are copied in parts.
    let (server, ledger) = S3Server::start_reporting_checksums();
    let destination = Destination::S3(server);
    let artifact = artifact();
    let first = publish(&destination, &artifact.dir, "p", &[]);
    let outcomes = file_outcomes(&first);
    assert!(outcomes.values().all(|o| o == "uploaded-verified-by-store"), "{first}");
    let reads = ledger.take_reads();
    assert!(reads.iter().all(|read| is_document(&read.key)), "only documents are read: {reads:?}");

    let second = publish(&destination, &artifact.dir, "p", &["--version", "second"]);
    assert!(file_outcomes(&second).values().all(|o| o == "reused"), "{second}");
    assert_eq!(second["uploaded_bytes"], 0);
    let reads = ledger.take_reads();
    assert!(reads.iter().all(|read| is_document(&read.key)), "copies are not read back: {reads:?}");
    assert_eq!(ledger.lies_told(), 0);
    let Destination::S3(server) = &destination else { unreachable!() };
    assert!(server.incomplete_uploads().is_empty());
    assert!(server.multipart_part_counts().iter().all(|&parts| parts > 2), "{:?}", server.multipart_part_counts());
    // Pull fetches the weights in ranges of the part size that cover them exactly, and the
    // small files whole.
    let target = tempfile::tempdir().unwrap().path().join("second");
    let uri = destination.uri("p/minilm-w8a8/second");
    succeeded(destination.qtier(&["pull", &uri, arg(&target), "--part-size", TEST_PART_SIZE, "--concurrency", "3"]));
    assert_pulled_exactly(&target);
    let weights_size = std::fs::metadata(artifact.dir.join("model.safetensors")).unwrap().len();
    let reads = ledger.take_reads();
    let mut ranges: Vec<(u64, Option<u64>)> =
        reads.iter().filter(|r| r.key.ends_with("/model.safetensors")).map(|r| r.range.unwrap()).collect();
    ranges.sort();
    let expected: Vec<(u64, Option<u64>)> = (0..weights_size.div_ceil(TEST_PART_BYTES))
        .map(|i| (i * TEST_PART_BYTES, Some(((i + 1) * TEST_PART_BYTES).min(weights_size) - 1)))
        .collect();
    assert_eq!(ranges, expected);
    assert!(reads.iter().filter(|r| !r.key.ends_with("/model.safetensors")).all(|r| r.range.is_none()), "{reads:?}");
}

#[test]
fn a_checksum_the_store_reports_wrongly_fails_the_upload_and_leaves_no_object_behind() {
    // Whatever the store says it stored, if its SHA-256 is not the one qtier sent, the object
    // (or, for a part, the whole upload) is gone and the publish fails naming the file; nothing
    // is published.
    for (operation, file) in [
        (ChecksumReport::PutObject, "vocab.txt"),
        (ChecksumReport::UploadPart, "model.safetensors"),
        (ChecksumReport::CompleteMultipartUpload, "model.safetensors"),
        (ChecksumReport::PutObject, "qtier-manifest.json"),
    ] {
        let (server, ledger) = S3Server::start_reporting_checksums();
        ledger.lie(operation, file);
        let destination = Destination::S3(server);
        let artifact = artifact();
        let uri = destination.uri("p");
        let mut args = vec!["publish", arg(&artifact.dir), "--to", &uri, "--part-size", TEST_PART_SIZE];
        args.extend(["--multipart-threshold", TEST_PART_SIZE]);
        let reports = artifact.report_args();
        args.extend(reports.iter().map(String::as_str));
        let message = failed(destination.qtier(&args));
        assert!(ledger.lies_told() >= 1, "{operation:?}");
        assert!(message.contains(file) && message.contains("store computed sha256"), "{operation:?}: {message}");
        let Destination::S3(server) = &destination else { unreachable!() };
        let keys = server.keys();
        // The version stays claimed (a publish of the same content resumes it); nothing else
        // of it is visible.
        let published = |key: &String| {
            [format!("/{file}"), "/qtier-manifest.json".into(), "/latest".into()].iter().any(|end| key.ends_with(end))
        };
        assert!(!keys.iter().any(published), "{operation:?}: {keys:?}");
        assert!(server.incomplete_uploads().is_empty(), "{operation:?}: {:?}", server.incomplete_uploads());
    }
}

#[test]
fn a_copy_the_store_reports_wrongly_is_not_reused_and_the_file_is_uploaded() {
    for (operation, file) in
        [(ChecksumReport::CopyObject, "vocab.txt"), (ChecksumReport::UploadPartCopy, "model.safetensors")]
    {
        let (server, ledger) = S3Server::start_reporting_checksums();
        let destination = Destination::S3(server);
        let artifact = artifact();
        publish(&destination, &artifact.dir, "p", &[]);
        ledger.lie(operation, file);
        let second = publish(&destination, &artifact.dir, "p", &["--version", "second"]);
        assert!(ledger.lies_told() >= 1, "{operation:?}");
        let outcomes = file_outcomes(&second);
        assert_eq!(outcomes[file], "uploaded-verified-by-store", "{operation:?}: {second}");
        assert!(outcomes.iter().all(|(path, o)| path == file || o == "reused"), "{operation:?}: {second}");
        let size = std::fs::metadata(artifact.dir.join(file)).unwrap().len();
        assert_eq!(second["uploaded_bytes"], size, "{operation:?}");
        let not_reused = second["not_reused"].as_array().unwrap();
        assert_eq!(not_reused.len(), 1, "{operation:?}: {second}");
        let reason = not_reused[0].as_str().unwrap();
        assert!(reason.starts_with(&format!("{file}: ")) && reason.contains("store computed sha256"), "{reason}");
        let Destination::S3(server) = &destination else { unreachable!() };
        assert!(server.incomplete_uploads().is_empty(), "{operation:?}: {:?}", server.incomplete_uploads());
        let target = tempfile::tempdir().unwrap().path().join("second");
        succeeded(destination.qtier(&["pull", &destination.uri("p/minilm-w8a8/second"), arg(&target)]));
        assert_pulled_exactly(&target);
    }
}

#[test]
fn broken_connections_are_retried_and_leave_no_partial_upload() {
    let server = S3Server::start();
    // Three connections cut after 1 MiB of request bytes each: inside a 5 MiB part.
    let proxy = FaultProxy::start(server.address, 1 << 20, 3);
    let artifact = artifact();
    let uri = server.uri("flaky");
    let mut command = server.qtier();
    command.args(["publish", arg(&artifact.dir), "--to", &uri, "--endpoint-url", &proxy.endpoint, "--path-style"]);
    command.args(["--part-size", TEST_PART_SIZE, "--multipart-threshold", TEST_PART_SIZE, "--json"]);
    command.args(artifact.report_args());
    let out = succeeded(command);
    assert_eq!(proxy.cuts_made(), 3, "the faults happened");
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(server.incomplete_uploads().is_empty(), "{:?}", server.incomplete_uploads());
    let target = tempfile::tempdir().unwrap().path().join("pulled");
    let version_uri = server.uri(&format!("flaky/minilm-w8a8/{}", outcome["version"].as_str().unwrap()));
    let mut pull = server.qtier();
    pull.args(["pull", &version_uri, arg(&target), "--endpoint-url", &server.endpoint, "--path-style"]);
    succeeded(pull);
    assert_pulled_exactly(&target);
}

#[test]
fn a_publish_that_cannot_get_through_fails_clearly_and_shows_nothing() {
    let server = S3Server::start();
    // Every connection that carries more than 1 MiB is cut: small files get through, no part does.
    let proxy = FaultProxy::start(server.address, 1 << 20, usize::MAX);
    let artifact = artifact();
    let uri = server.uri("down");
    let mut command = server.qtier();
    command.args(["publish", arg(&artifact.dir), "--to", &uri, "--endpoint-url", &proxy.endpoint, "--path-style"]);
    command.args(["--part-size", TEST_PART_SIZE, "--multipart-threshold", TEST_PART_SIZE, "--attempts", "2"]);
    command.args(artifact.report_args());
    let message = failed(command);
    assert!(message.contains("model.safetensors") && message.contains("upload"), "{message}");
    assert!(proxy.cuts_made() >= 2);
    let keys = server.keys();
    assert!(!keys.iter().any(|k| k.ends_with("qtier-manifest.json") || k.ends_with("/latest")), "{keys:?}");
    assert!(!keys.iter().any(|k| k.ends_with("model.safetensors")), "no partial object: {keys:?}");
    assert!(server.incomplete_uploads().is_empty(), "aborted: {:?}", server.incomplete_uploads());
}

#[test]
fn a_tampered_object_fails_the_pull_naming_the_file_and_leaves_nothing() {
    for destination in Destination::both() {
        let outcome = publish(&destination, &artifact().dir, "t", &[]);
        let version = outcome["version"].as_str().unwrap();
        let object = destination.object_path(&format!("t/minilm-w8a8/{version}/tokenizer.json"));
        let mut bytes = std::fs::read(&object).unwrap();
        bytes[100] ^= 0x20;
        std::fs::write(&object, bytes).unwrap();

        let parent = tempfile::tempdir().unwrap();
        let target = parent.path().join("model");
        let uri = destination.uri(&format!("t/minilm-w8a8/{version}"));
        let message = failed(destination.qtier(&["pull", &uri, arg(&target)]));
        assert!(message.contains("tokenizer.json") && message.contains("sha256"), "{message}");
        assert!(std::fs::read_dir(parent.path()).unwrap().next().is_none(), "nothing left beside the target");
        std::fs::write(&object, std::fs::read(artifact().dir.join("tokenizer.json")).unwrap()).unwrap();

        // The weights, fetched from S3 in ranges: a flipped byte fails the whole file's sha256,
        // and an object shorter or longer than the manifest says fails before it is hashed.
        let weights = destination.object_path(&format!("t/minilm-w8a8/{version}/model.safetensors"));
        let original = std::fs::read(&weights).unwrap();
        let mut flipped = original.clone();
        flipped[original.len() / 2] ^= 1;
        let mut longer = original.clone();
        longer.push(0);
        let cases = [(flipped, "sha256"), (original[..original.len() - 1].to_vec(), "bytes"), (longer, "bytes")];
        for (bytes, complaint) in cases {
            std::fs::write(&weights, bytes).unwrap();
            let message = failed(destination.qtier(&["pull", &uri, arg(&target)]));
            assert!(message.contains("model.safetensors") && message.contains(complaint), "{message}");
            assert!(std::fs::read_dir(parent.path()).unwrap().next().is_none(), "nothing left beside the target");
        }
    }
}

#[test]
fn two_concurrent_publishes_of_different_content_to_one_version_one_wins() {
    let artifact = artifact();
    let scratch = tempfile::tempdir().unwrap();
    let variants: Vec<PathBuf> = (0..2)
        .map(|i| {
            let dir = scratch.path().join(format!("variant-{i}"));
            for (path, bytes) in tree(&artifact.dir) {
                let file = dir.join(path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, bytes).unwrap();
            }
            std::fs::write(dir.join("build-notes.txt"), format!("variant {i}\n")).unwrap();
            dir
        })
        .collect();
    for destination in Destination::both() {
        for version in ["v1", "v2"] {
            let uri = destination.uri("race");
            let children: Vec<_> = variants
                .iter()
                .map(|dir| {
                    let mut command = destination.qtier(&["publish", arg(dir), "--to", &uri, "--name", "minilm"]);
                    command.args(["--version", version, "--part-size", TEST_PART_SIZE, "--json"]);
                    command.args(artifact.report_args());
                    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
                    command.spawn().unwrap()
                })
                .collect();
            let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
            let winners: Vec<usize> = (0..2).filter(|&i| outputs[i].status.success()).collect();
            assert_eq!(winners.len(), 1, "{}: {}\n{}", destination.name(), text(&outputs[0]), text(&outputs[1]));
            let loser = 1 - winners[0];
            let message = String::from_utf8_lossy(&outputs[loser].stderr);
            assert!(message.contains(version) && message.contains("different"), "{message}");

            // The version holds exactly the winner's artifact, and it verifies.
            let target = scratch.path().join(format!("pulled-{}-{version}", destination.name()));
            let version_uri = destination.uri(&format!("race/minilm/{version}"));
            succeeded(destination.qtier(&["pull", &version_uri, arg(&target)]));
            let notes = std::fs::read_to_string(target.join("build-notes.txt")).unwrap();
            assert_eq!(notes, format!("variant {}\n", winners[0]));
        }
    }
}

#[test]
fn gates_refuse_a_low_eval_and_force_records_the_reason() {
    for destination in Destination::both() {
        let artifact = artifact();
        let uri = destination.uri("gated");
        let mut args = vec!["publish", arg(&artifact.dir), "--to", &uri, "--min-cosine", "0.99999"];
        let reports = artifact.report_args();
        args.extend(reports.iter().map(String::as_str));
        let message = failed(destination.qtier(&args));
        assert!(message.contains("minimum embedding cosine") && message.contains("0.99999"), "{message}");
        assert!(message.contains("--force"), "{message}");
        assert!(!destination.object_path("gated").exists(), "nothing published");

        // --force alone is a usage error: a reason is required.
        let mut forced = args.clone();
        forced.push("--force");
        let out = output(destination.qtier(&forced));
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));

        forced.extend(["--reason", "accepted by the search team for the canary (ticket 42)", "--json"]);
        let outcome: serde_json::Value = serde_json::from_slice(&succeeded(destination.qtier(&forced)).stdout).unwrap();
        let version = outcome["version"].as_str().unwrap();
        let target = tempfile::tempdir().unwrap().path().join("m");
        succeeded(destination.qtier(&[
            "pull",
            &destination.uri(&format!("gated/minilm-w8a8/{version}")),
            arg(&target),
        ]));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(target.join("qtier-manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["forced"]["reason"], "accepted by the search team for the canary (ticket 42)");
        let overridden = manifest["forced"]["overridden"].as_array().unwrap();
        assert_eq!(overridden.len(), 1, "{overridden:?}");
        assert!(overridden[0].as_str().unwrap().contains("0.99999"));
    }
}

#[test]
fn gates_refuse_an_artifact_without_reports() {
    let destination = Destination::Local(tempfile::tempdir().unwrap());
    let uri = destination.uri("x");
    let message = failed(destination.qtier(&["publish", arg(&artifact().dir), "--to", &uri]));
    assert!(message.contains("no eval report") && message.contains("no recommendation"), "{message}");
}

#[test]
fn credentials_never_appear_in_outputs_manifests_or_objects() {
    let server = S3Server::start();
    let destination = Destination::S3(server);
    let artifact = artifact();
    let uri = destination.uri("secret");
    let mut args = vec!["publish", arg(&artifact.dir), "--to", &uri, "--part-size", TEST_PART_SIZE];
    let reports = artifact.report_args();
    args.extend(reports.iter().map(String::as_str));
    let published = succeeded(destination.qtier(&args));
    // A failing request too: a wrong bucket.
    let failing = output(destination.qtier(&["pull", "s3://no-such-bucket/x", "/tmp/qtier-never-created"]));
    assert!(!failing.status.success());
    let target = tempfile::tempdir().unwrap().path().join("m");
    let pulled = succeeded(destination.qtier(&["pull", &destination.uri("secret/minilm-w8a8"), arg(&target)]));
    let Destination::S3(server) = &destination else { unreachable!() };
    let mut haystacks: Vec<(String, Vec<u8>)> = vec![
        ("publish stdout".into(), published.stdout),
        ("publish stderr".into(), published.stderr),
        ("failing stderr".into(), failing.stderr),
        ("pull stdout".into(), pulled.stdout),
    ];
    haystacks.extend(server.all_files().into_iter().filter(|(name, _)| !name.starts_with(".upload")));
    haystacks.extend(tree(&target));
    for (name, bytes) in haystacks {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(SECRET_KEY), "the secret key leaked into {name}");
        assert!(!text.contains(ACCESS_KEY), "the access key id leaked into {name}");
    }
}

#[test]
fn plain_http_is_refused_except_to_loopback() {
    let server = S3Server::start();
    let mut command = server.qtier();
    command.args(["pull", "s3://models/x", "/tmp/qtier-never-created", "--endpoint-url", "http://192.0.2.1:9000"]);
    let message = failed(command);
    assert!(message.contains("plain http") && message.contains("--allow-http"), "{message}");
    let mut from_env = server.qtier();
    from_env.env("AWS_ENDPOINT_URL", "http://192.0.2.1:9000").args(["pull", "s3://models/x", "/tmp/qtier-x"]);
    assert!(failed(from_env).contains("--allow-http"));
}

#[test]
fn pull_refuses_a_manifest_that_escapes_the_target() {
    let store = tempfile::tempdir().unwrap();
    let version = store.path().join("m/v1");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::write(store.path().join("m/evil"), b"x").unwrap();
    let sha = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"; // sha256("x")
    let files = serde_json::json!([{ "path": "../evil", "size": 1, "sha256": sha }]);
    // A correct content digest, so only the path check can refuse it.
    let digest = {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(format!("../evil\x001\x00{sha}\n"));
        hasher.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let manifest = serde_json::json!({
        "schema_version": 1, "model_name": "m", "version": "v1", "content_sha256": digest, "files": files,
        "quantization_config": null, "eval": null, "recommendation": null, "tiers": [], "tiers_met": [],
        "bench_reports": [], "forced": null,
        "publisher": { "qtier_version": "0", "qtier_git_revision": "x", "published_by": "a@b", "published_at": "t" }
    });
    std::fs::write(version.join("qtier-manifest.json"), manifest.to_string()).unwrap();
    let parent = tempfile::tempdir().unwrap();
    let target = parent.path().join("inner");
    let message = crate::common::run_err(&["pull", arg(&version), arg(&target)]);
    assert!(message.contains("../evil") && message.contains("'..'"), "{message}");
    assert!(std::fs::read_dir(parent.path()).unwrap().next().is_none());
}
