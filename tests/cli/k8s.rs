//! `qtier k8s`: every manifest it prints passes `kubernetes-validate --strict` (installed by
//! scripts/test.sh, found through `QTIER_KUBERNETES_VALIDATE`), for each tier on a CPU and a GPU
//! instance type, from `--instance-type` and from a real recommendation; bad flags fail naming
//! the problem.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::{arg, qtier, run_err, test_model};

/// The Kubernetes versions the manifests are validated against: the oldest in EKS's standard
/// support when this was written, and the newest kubernetes-validate 1.37.0 bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];
/// The artifact every test deploys.
const ARTIFACT: &str = "s3://qtier-models/minilm-w8a8/4f2a9c";
/// A CPU and a GPU instance type of the built-in catalog.
const CPU_TYPE: &str = "c5.2xlarge";
const GPU_TYPE: &str = "g4dn.xlarge";

/// vCPUs of the instance types these tests place pods on (the catalog's, as EC2 lists them).
fn vcpus(instance_type: &str) -> u32 {
    match instance_type {
        "c5.2xlarge" => 8,
        "g4dn.xlarge" | "g5.xlarge" => 4,
        other => panic!("no vCPU count for {other} in this test"),
    }
}
/// Fake AWS credentials in qtier's environment, which must never reach a manifest.
const FAKE_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const FAKE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// Names and markers of AWS credentials.
const CREDENTIAL_MARKERS: [&str; 6] =
    ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "aws_access_key_id", "AKIA", FAKE_SECRET];

/// The kubernetes-validate executable. Without `QTIER_KUBERNETES_VALIDATE` the test fails: the
/// manifests are never taken as valid unchecked.
fn kubernetes_validate() -> PathBuf {
    match std::env::var_os("QTIER_KUBERNETES_VALIDATE").filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "QTIER_KUBERNETES_VALIDATE is not set: run the tests with `bash scripts/test.sh`, which installs \
             kubernetes-validate into a cache venv and sets it"
        ),
    }
}

/// Runs `qtier args...` with fake AWS credentials in its environment; asserts success and returns
/// stdout.
fn k8s_ok(args: &[&str]) -> String {
    let output = qtier()
        .args(args)
        .env("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
        .output()
        .expect("the qtier binary runs");
    assert!(
        output.status.success(),
        "qtier {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("stdout is UTF-8")
}

/// Writes `yaml` to `dir/file`, runs `kubernetes-validate --strict` on it for each of
/// [`KUBERNETES_VERSIONS`], and asserts that it exits 0 having validated exactly `expected`
/// (`kind/name`, as it prints them) against each version. (It exits 0 with only a warning for an
/// apiVersion or kind it has no schema for, so each resource's `passed` line is required.) Returns
/// the documents as PyYAML, the YAML reader kubernetes-validate uses, reads them.
fn validate(dir: &Path, file: &str, yaml: &str, expected: &[String]) -> Vec<Value> {
    for marker in CREDENTIAL_MARKERS {
        assert!(!yaml.contains(marker), "{file}: a manifest holds {marker:?}:\n{yaml}");
    }
    let path = dir.join(file);
    std::fs::write(&path, yaml).unwrap();
    let validator = kubernetes_validate();
    let mut command = Command::new(&validator);
    command.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        command.args(["-k", version]);
    }
    let output = command.arg(&path).output().unwrap_or_else(|e| panic!("running {}: {e}", validator.display()));
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "kubernetes-validate --strict rejected {file}:\n{printed}\n{yaml}");
    assert!(!printed.contains("WARN") && !printed.contains("ERROR"), "{file}:\n{printed}");
    let passed: Vec<&str> = printed.lines().filter(|l| l.contains(" passed for resource ")).collect();
    assert_eq!(passed.len(), expected.len() * KUBERNETES_VERSIONS.len(), "{file}:\n{printed}");
    for resource in expected {
        for version in KUBERNETES_VERSIONS {
            let minor = version.trim_end_matches(".0");
            let line = format!("passed for resource {resource} against version {minor}");
            assert!(printed.contains(&line), "{file}: no `{line}`:\n{printed}");
        }
    }

    let python = validator.with_file_name("python3");
    let script =
        "import json, sys, yaml\njson.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)";
    let output = Command::new(&python).args(["-c", script]).arg(&path).output().unwrap();
    assert!(output.status.success(), "{}: {}", python.display(), String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The four resources `qtier k8s deploy` prints, as kubernetes-validate names them.
fn deploy_resources(name: &str) -> Vec<String> {
    ["deployment", "service", "horizontalpodautoscaler", "poddisruptionbudget"]
        .iter()
        .map(|kind| format!("{kind}/{name}"))
        .collect()
}

/// Asserts what a Deployment's pod must hold on `instance_type` bought as `capacity`, with
/// `gpu` or not; returns the pod spec.
fn assert_deployment_pod<'a>(deployment: &'a Value, instance_type: &str, capacity: &str, gpu: bool) -> &'a Value {
    assert_eq!(deployment["kind"], "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let selector = &pod["nodeSelector"];
    assert_eq!(selector["node.kubernetes.io/instance-type"], instance_type);
    assert_eq!(selector["eks.amazonaws.com/capacityType"], capacity);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let pull = &pod["initContainers"][0];
    assert_eq!(pull["args"], serde_json::json!(["pull", ARTIFACT, "/models/artifact", "--force"]));
    assert_eq!(pull["volumeMounts"][0], serde_json::json!({"name": "models", "mountPath": "/models"}));
    assert!(pod["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "models" && v["emptyDir"].is_object()));
    let serve = &pod["containers"][0];
    let vcpus = vcpus(instance_type);
    // As many threads as the node has vCPUs, and a CPU limit that lets them run.
    assert_eq!(
        serve["args"],
        serde_json::json!(["serve", "/models/artifact", "--port", "8080", "--threads", vcpus.to_string()])
    );
    assert_eq!(serve["ports"][0]["containerPort"], 8080);
    assert_eq!(serve["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(serve["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(serve["readinessProbe"]["initialDelaySeconds"], 60);
    let resources = &serve["resources"];
    assert_eq!(resources["limits"]["cpu"], format!("{}m", vcpus * 1000));
    let requested_cpu = resources["requests"]["cpu"].as_str().unwrap();
    let requested_millicores: u32 = requested_cpu.strip_suffix('m').unwrap().parse().unwrap();
    assert!(requested_millicores < vcpus * 1000, "{requested_cpu}: the node keeps a share");
    assert_eq!(resources["requests"]["memory"], resources["limits"]["memory"]);
    assert!(resources["limits"]["memory"].as_str().unwrap().ends_with("Mi"));
    if gpu {
        assert_eq!(resources["limits"]["nvidia.com/gpu"], 1);
        assert_eq!(
            pod["tolerations"],
            serde_json::json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
        );
    } else {
        assert!(resources["limits"].get("nvidia.com/gpu").is_none(), "{resources}");
        assert!(pod.get("tolerations").is_none());
    }
    assert!(pull["resources"]["limits"].get("nvidia.com/gpu").is_none());
    pod
}

#[test]
fn deploy_manifests_for_each_tier_on_a_cpu_and_a_gpu_type_pass_strict_validation() {
    let dir = tempfile::tempdir().unwrap();
    for tier in ["gold", "silver", "bronze"] {
        for (instance_type, gpu) in [(CPU_TYPE, false), (GPU_TYPE, true)] {
            let yaml =
                k8s_ok(&["k8s", "deploy", "--artifact", ARTIFACT, "--tier", tier, "--instance-type", instance_type]);
            let file = format!("deploy-{tier}-{instance_type}.yaml");
            let name = format!("qtier-{tier}");
            let docs = validate(dir.path(), &file, &yaml, &deploy_resources(&name));
            assert_eq!(yaml.matches("\n---\n").count(), 3, "{file}: four documents");
            // Only bronze allows spot (silver only with --allow-spot); gold is on-demand.
            let capacity = if tier == "bronze" { "SPOT" } else { "ON_DEMAND" };
            assert_eq!(yaml.contains("SPOT"), tier == "bronze", "{file}");
            assert_eq!(yaml.contains("nvidia.com/gpu"), gpu, "{file}");
            let pod = assert_deployment_pod(&docs[0], instance_type, capacity, gpu);
            assert!(pod.get("serviceAccountName").is_none());
            for container in [&pod["initContainers"][0], &pod["containers"][0]] {
                assert_eq!(container["image"], "qtier:latest");
            }
            // Gold (p99 <= 16 ms) keeps the kernel workers spinning between requests.
            let spin = pod["containers"][0]["env"].as_array().unwrap().iter().find(|e| e["name"] == "QTIER_SPIN_MS");
            assert_eq!(spin.map(|e| e["value"].as_str().unwrap()), (tier == "gold").then_some("1000"), "{file}");
            assert_eq!(docs[1]["spec"]["type"], "LoadBalancer");
            assert_eq!(docs[2]["apiVersion"], "autoscaling/v2");
            // Gold's spinning workers take whole cores whatever the load: it scales on the time
            // the model is busy, the others on CPU.
            let metrics: Vec<&str> = docs[2]["spec"]["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["resource"]["name"].as_str().or(m["pods"]["metric"]["name"].as_str()).unwrap())
                .collect();
            let load = if tier == "gold" { "qtier_encoder_busy_ratio" } else { "cpu" };
            assert_eq!(metrics, [load, "memory"], "{file}");
            assert_eq!(docs[2]["spec"]["minReplicas"], 2);
            assert_eq!(docs[3]["apiVersion"], "policy/v1");
        }
    }

    // Every option, on silver with --allow-spot.
    let yaml = k8s_ok(&[
        "k8s",
        "deploy",
        "--artifact",
        ARTIFACT,
        "--tier",
        "silver",
        "--instance-type",
        GPU_TYPE,
        "--allow-spot",
        "--image",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/qtier:0.1.0",
        "--namespace",
        "models",
        "--name",
        "minilm",
        "--replicas",
        "3",
        "--max-replicas",
        "5",
        "--service-account",
        "qtier-reader",
        "--internet-facing",
    ]);
    let docs = validate(dir.path(), "deploy-options.yaml", &yaml, &deploy_resources("minilm"));
    let pod = assert_deployment_pod(&docs[0], GPU_TYPE, "SPOT", true);
    assert_eq!(pod["serviceAccountName"], "qtier-reader");
    for container in [&pod["initContainers"][0], &pod["containers"][0]] {
        assert_eq!(container["image"], "123456789012.dkr.ecr.us-east-1.amazonaws.com/qtier:0.1.0");
    }
    assert!(docs.iter().all(|d| d["metadata"]["namespace"] == "models" && d["metadata"]["name"] == "minilm"));
    assert_eq!(
        docs[1]["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-scheme"],
        "internet-facing"
    );
    assert_eq!((docs[2]["spec"]["minReplicas"].as_u64(), docs[2]["spec"]["maxReplicas"].as_u64()), (Some(3), Some(5)));
}

#[test]
fn deploy_from_a_recommendation_uses_the_tiers_chosen_type_and_purchase() {
    kubernetes_validate();
    let dir = tempfile::tempdir().unwrap();
    // A real report, recorded as measured on c5.2xlarge: the only type a recommendation without
    // --allow-projected can choose. MiniLM at 32 tokens is far inside bronze's 10 s.
    let report = qtier()
        .args(["--threads", "2", "bench", "model", arg(test_model()), "--instance-type", CPU_TYPE])
        .args(["--batch", "1", "--seq", "32", "--min-seconds", "0.2", "--tail", "90", "--json"])
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let report_path = dir.path().join("report.json");
    std::fs::write(&report_path, &report.stdout).unwrap();
    let recommendation = k8s_ok(&["recommend", arg(&report_path), "--json"]);
    let rec_path = dir.path().join("recommendation.json");
    std::fs::write(&rec_path, &recommendation).unwrap();
    let mut json: Value = serde_json::from_str(&recommendation).unwrap();
    let bronze = json["tiers"].as_array().unwrap().iter().position(|t| t["tier"]["name"] == "bronze").unwrap();
    assert_eq!(json["tiers"][bronze]["chosen"], CPU_TYPE, "{}", json["tiers"][bronze]["summary"]);

    let yaml =
        k8s_ok(&["k8s", "deploy", "--artifact", ARTIFACT, "--tier", "bronze", "--recommendation", arg(&rec_path)]);
    let docs = validate(dir.path(), "deploy-recommended.yaml", &yaml, &deploy_resources("qtier-bronze"));
    assert_deployment_pod(&docs[0], CPU_TYPE, "SPOT", false);
    // --instance-type replaces the choice, within the recommendation's tier.
    let yaml = k8s_ok(&[
        "k8s",
        "deploy",
        "--artifact",
        ARTIFACT,
        "--tier",
        "bronze",
        "--recommendation",
        arg(&rec_path),
        "--instance-type",
        GPU_TYPE,
    ]);
    let docs = validate(dir.path(), "deploy-recommended-gpu.yaml", &yaml, &deploy_resources("qtier-bronze"));
    assert_deployment_pod(&docs[0], GPU_TYPE, "SPOT", true);

    // A tier with no chosen instance type.
    json["tiers"][bronze]["chosen"] = Value::Null;
    let unchosen = dir.path().join("unchosen.json");
    std::fs::write(&unchosen, json.to_string()).unwrap();
    let error =
        run_err(&["k8s", "deploy", "--artifact", ARTIFACT, "--tier", "bronze", "--recommendation", arg(&unchosen)]);
    assert!(error.contains("tier `bronze` has no chosen instance type in the recommendation"), "{error}");
    assert!(error.contains("unchosen.json") && error.contains("--instance-type"), "{error}");
    // A tier the recommendation does not have.
    let error =
        run_err(&["k8s", "deploy", "--artifact", ARTIFACT, "--tier", "platinum", "--recommendation", arg(&rec_path)]);
    assert!(error.contains("unknown tier `platinum`") && error.contains("gold, silver, bronze"), "{error}");
    // A file that is not a recommendation.
    let error =
        run_err(&["k8s", "deploy", "--artifact", ARTIFACT, "--tier", "bronze", "--recommendation", arg(&report_path)]);
    assert!(error.contains("report.json: not a `qtier recommend --json` recommendation"), "{error}");
}

#[test]
fn bench_jobs_run_one_job_per_type_and_pass_strict_validation() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = k8s_ok(&[
        "k8s",
        "bench-jobs",
        "--artifact",
        ARTIFACT,
        "--instance-types",
        "g4dn.xlarge,g5.xlarge,c5.2xlarge",
        "--results",
        "s3://qtier-results/minilm/",
        "--service-account",
        "qtier-bench",
    ]);
    let names = ["qtier-bench-g4dn-xlarge", "qtier-bench-g5-xlarge", "qtier-bench-c5-2xlarge"];
    let expected: Vec<String> = names.iter().map(|n| format!("job/{n}")).collect();
    let docs = validate(dir.path(), "bench-jobs.yaml", &yaml, &expected);
    for (doc, (instance_type, gpu)) in
        docs.iter().zip([("g4dn.xlarge", true), ("g5.xlarge", true), ("c5.2xlarge", false)])
    {
        assert_eq!(doc["apiVersion"], "batch/v1");
        let pod = &doc["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["serviceAccountName"], "qtier-bench");
        assert_eq!(pod["nodeSelector"]["node.kubernetes.io/instance-type"], instance_type);
        assert_eq!(
            pod["initContainers"][0]["args"],
            serde_json::json!(["pull", ARTIFACT, "/models/artifact", "--force"])
        );
        let bench = &pod["containers"][0];
        assert_eq!(bench["image"], "qtier:latest");
        let script = bench["args"][0].as_str().unwrap();
        let bench_line = format!(
            "qtier --threads {} bench model /models/artifact --json > /models/bench-report.json",
            vcpus(instance_type)
        );
        assert!(script.contains(&bench_line), "{script}");
        assert!(script.contains("qtier publish-report /models/bench-report.json \"$1\""), "{script}");
        assert_eq!(bench["args"][2], format!("s3://qtier-results/minilm/{instance_type}.json"));
        assert_eq!(bench["resources"]["limits"].get("nvidia.com/gpu").is_some(), gpu);
        assert_eq!(pod.get("tolerations").is_some(), gpu);
    }
}

#[test]
fn bad_k8s_flags_fail_naming_the_problem() {
    let deploy = |extra: &[&str]| {
        let mut args = vec!["k8s", "deploy", "--artifact", ARTIFACT];
        args.extend_from_slice(extra);
        run_err(&args)
    };
    let cases: [(&[&str], &str); 10] = [
        (&["--tier", "platinum", "--instance-type", CPU_TYPE], "unknown tier `platinum`"),
        (&["--tier", "gold", "--instance-type", "m5.large"], "unknown instance type `m5.large`"),
        (&["--tier", "gold"], "no instance type for tier `gold`: pass --recommendation"),
        (&["--tier", "gold", "--instance-type", "ml.g5.2xlarge"], "ml.g5.2xlarge is a SageMaker instance type"),
        (
            &["--tier", "gold", "--recommendation", "missing-recommendation.json"],
            "reading recommendation missing-recommendation.json",
        ),
        (
            &["--tier", "gold", "--instance-type", CPU_TYPE, "--name", "Qtier_Gold"],
            "--name `Qtier_Gold` is not a valid Kubernetes name",
        ),
        (&["--tier", "gold", "--instance-type", CPU_TYPE, "--namespace", "ns."], "--namespace `ns.`"),
        (&["--tier", "gold", "--instance-type", CPU_TYPE, "--image", ""], "image `` is not an image reference"),
        (
            &["--tier", "gold", "--instance-type", CPU_TYPE, "--replicas", "4", "--max-replicas", "2"],
            "--max-replicas 2 is below",
        ),
        (
            &["--tier", "gold", "--instance-type", CPU_TYPE, "--catalog", "missing-catalog.toml"],
            "reading catalog missing-catalog.toml",
        ),
    ];
    for (extra, expected) in cases {
        let error = deploy(extra);
        assert!(error.starts_with("error: ") && error.contains(expected), "{extra:?}: {error}");
    }
    let error =
        run_err(&["k8s", "deploy", "--artifact", "bucket/minilm", "--tier", "gold", "--instance-type", CPU_TYPE]);
    assert!(error.contains("--artifact `bucket/minilm` is not an S3 URI"), "{error}");

    let bench = |types: &str, results: &str| {
        run_err(&["k8s", "bench-jobs", "--artifact", ARTIFACT, "--instance-types", types, "--results", results])
    };
    let error = bench("g4dn.xlarge,m5.large", "s3://r/x");
    assert!(error.contains("unknown instance type `m5.large`"), "{error}");
    let error = bench("g5.xlarge,g5.xlarge", "s3://r/x");
    assert!(error.contains("instance type g5.xlarge is given twice"), "{error}");
    let error = bench("g5.xlarge", "/tmp/results");
    assert!(error.contains("--results `/tmp/results` is not an S3 URI"), "{error}");

    // Usage errors are clap's (status 2): a recommendation decides spot itself.
    let output = crate::common::run(&[
        "k8s",
        "deploy",
        "--artifact",
        ARTIFACT,
        "--tier",
        "gold",
        "--recommendation",
        "r.json",
        "--allow-spot",
    ]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn deploy_says_when_the_autoscaler_needs_the_prometheus_adapter() {
    for (tier, needs_adapter) in [("gold", true), ("silver", false), ("bronze", false)] {
        let output = qtier()
            .args(["k8s", "deploy", "--artifact", ARTIFACT, "--tier", tier, "--instance-type", CPU_TYPE])
            .env("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
            .output()
            .unwrap();
        assert!(output.status.success(), "{tier}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.contains("qtier_encoder_busy_ratio") && stderr.contains("Prometheus adapter"), needs_adapter);
        assert!(!needs_adapter || stderr.contains("keeps 2 replicas"), "{tier}: {stderr}");
    }
}
