//! Hardware identity of the machine a benchmark ran on: CPU model, vendor, cores, the instruction
//! set flags that decide which kernel runs, memory, and the EC2 instance type when there is one.
//!
//! The instance type comes from `--instance-type` when given; otherwise from the EC2 instance
//! metadata service (IMDSv2: `PUT /latest/api/token`, then `GET /latest/meta-data/instance-type`
//! with the token; 1 s timeout, at most one retry), asked only when the machine's DMI data says
//! it is an EC2 instance, so nothing is sent anywhere from a laptop or another cloud. The AWS
//! SDKs' variables apply: `AWS_EC2_METADATA_DISABLED=true` turns the query off, and
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` points it elsewhere (and then skips the DMI check).
//! Every report records how the instance type was found.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The instruction-set flags that matter for qtier's kernels, as /proc/cpuinfo names them.
pub const RELEVANT_FLAGS: [&str; 9] =
    ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16"];
/// The instance metadata service's address.
pub const IMDS_DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Timeout of each IMDS request (connect, and read).
pub const IMDS_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts per IMDS request: the first and one retry.
const IMDS_ATTEMPTS: usize = 2;
/// Where Linux exposes DMI strings.
const DMI_DIR: &str = "/sys/devices/virtual/dmi/id";

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hardware {
    /// CPU model name.
    pub cpu_model: String,
    /// CPU vendor (`GenuineIntel`, `AuthenticAMD`, ...).
    pub cpu_vendor: String,
    /// Logical CPUs this process may use.
    pub logical_cores: usize,
    /// Physical cores (distinct core ids), when known.
    pub physical_cores: Option<usize>,
    /// Which of [`RELEVANT_FLAGS`] the CPU has.
    pub cpu_flags: Vec<String>,
    /// Total memory in bytes, when known.
    pub memory_bytes: Option<u64>,
    /// The int8 kernel variant qtier selected.
    pub kernel: String,
    /// Threads the benchmark used.
    pub threads: usize,
    /// The EC2 instance type, or `unknown`.
    pub instance_type: String,
    /// How `instance_type` was found: `flag`, `imds`, `not-ec2`, `imds-disabled`, or
    /// `imds-failed: <reason>`.
    pub instance_type_source: String,
    /// Operating system and architecture.
    pub os: String,
    /// The GPU the run used (`--device cuda`); absent for CPU runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuHardware>,
}

/// The GPU a `--device cuda` run used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GpuHardware {
    /// The driver's device name (e.g. `NVIDIA A10G`).
    pub name: String,
    /// CUDA compute capability, `major.minor` (e.g. `8.6`).
    pub compute_capability: String,
    /// Total device memory in bytes.
    pub memory_bytes: u64,
    /// The NVIDIA driver's version (from `/proc/driver/nvidia/version`, e.g. `550.54.15`), or
    /// `unknown`.
    pub driver_version: String,
    /// The newest CUDA version the driver supports (`cuDriverGetVersion`, e.g. `12.4`).
    pub driver_cuda_version: String,
    /// The GEMM kernels the model's Linear layers ran (`mma.m16n8k32 64x64`, `mma.m8n8k16
    /// 64x64`, `dp4a`, `fp32 simt 64x64`), distinct, comma-separated.
    pub kernel_variant: String,
}

/// Where Linux's NVIDIA kernel module reports its version.
const NVIDIA_DRIVER_VERSION_FILE: &str = "/proc/driver/nvidia/version";

/// The NVIDIA driver's version, or `unknown` where the kernel module does not say.
pub fn nvidia_driver_version() -> String {
    std::fs::read_to_string(NVIDIA_DRIVER_VERSION_FILE)
        .ok()
        .and_then(|text| parse_nvidia_driver_version(&text))
        .unwrap_or_else(|| "unknown".to_string())
}

/// The version in `/proc/driver/nvidia/version`'s first line (`NVRM version: NVIDIA UNIX
/// x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024`, or `... Open Kernel Module
/// for x86_64  570.86.15  Release Build ...`): the first dotted number after `Kernel Module`.
fn parse_nvidia_driver_version(text: &str) -> Option<String> {
    let line = text.lines().next()?;
    let (_, rest) = line.split_once("Kernel Module")?;
    rest.split_whitespace()
        .find(|word| word.contains('.') && word.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(str::to_string)
}

/// Detects the hardware; `instance_type` (from `--instance-type`) wins over detection.
pub fn detect(threads: usize, instance_type: Option<&str>) -> Hardware {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|line| line.split(':').next().is_some_and(|key| key.trim() == name))
            .and_then(|line| line.split_once(':'))
            .map(|(_, value)| value.trim().to_string())
    };
    let flags = field("flags").unwrap_or_default();
    let present: Vec<String> = RELEVANT_FLAGS
        .iter()
        .filter(|flag| flags.split_whitespace().any(|f| f == **flag))
        .map(|flag| flag.to_string())
        .collect();
    let (instance_type, instance_type_source) = match instance_type {
        Some(given) => (given.to_string(), "flag".to_string()),
        None => detect_instance_type(),
    };
    Hardware {
        cpu_model: field("model name").unwrap_or_else(|| "unknown".into()),
        cpu_vendor: field("vendor_id").unwrap_or_else(|| "unknown".into()),
        logical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        physical_cores: physical_cores(&cpuinfo),
        cpu_flags: present,
        memory_bytes: memory_bytes(),
        kernel: qtier_kernels::selected_kernel().map_or_else(|e| format!("unavailable: {e}"), |k| k.name().to_string()),
        threads,
        instance_type,
        instance_type_source,
        os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        gpu: None,
    }
}

/// Distinct (physical id, core id) pairs of /proc/cpuinfo.
fn physical_cores(cpuinfo: &str) -> Option<usize> {
    let mut cores = std::collections::BTreeSet::new();
    let mut package = None;
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        match key.trim() {
            "physical id" => package = Some(value.trim().to_string()),
            "core id" => {
                cores.insert((package.clone(), value.trim().to_string()));
            }
            _ => {}
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

fn memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// True when DMI says this is an EC2 instance (Nitro: `Amazon EC2` vendor; Xen: `amazon` in the
/// BIOS version).
fn dmi_says_ec2() -> bool {
    let read = |name: &str| std::fs::read_to_string(format!("{DMI_DIR}/{name}")).unwrap_or_default().to_lowercase();
    read("sys_vendor").contains("amazon ec2")
        || read("board_vendor").contains("amazon ec2")
        || read("bios_version").contains("amazon")
}

fn detect_instance_type() -> (String, String) {
    let unknown = |source: String| ("unknown".to_string(), source);
    if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return unknown("imds-disabled".into());
    }
    let endpoint = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT").ok();
    if endpoint.is_none() && !dmi_says_ec2() {
        return unknown("not-ec2".into());
    }
    match query_instance_type(endpoint.as_deref().unwrap_or(IMDS_DEFAULT_ENDPOINT)) {
        Ok(instance_type) => (instance_type, "imds".into()),
        Err(reason) => unknown(format!("imds-failed: {reason}")),
    }
}

/// Asks the IMDSv2 endpoint (`http://host[:port]`) for the instance type.
pub fn query_instance_type(endpoint: &str) -> Result<String, String> {
    let host = endpoint.trim_end_matches('/').strip_prefix("http://").ok_or("only http:// endpoints are supported")?;
    let token = with_retry(|| {
        http_request(host, "PUT", "/latest/api/token", &[("X-aws-ec2-metadata-token-ttl-seconds", "60")])
    })?;
    let instance_type = with_retry(|| {
        http_request(host, "GET", "/latest/meta-data/instance-type", &[("X-aws-ec2-metadata-token", token.trim())])
    })?;
    let instance_type = instance_type.trim().to_string();
    let valid = !instance_type.is_empty()
        && instance_type.len() < 64
        && instance_type.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if valid { Ok(instance_type) } else { Err(format!("unexpected instance type `{instance_type}`")) }
}

fn with_retry(mut request: impl FnMut() -> Result<String, String>) -> Result<String, String> {
    let mut last = Err("no attempt".to_string());
    for _ in 0..IMDS_ATTEMPTS {
        last = request();
        if last.is_ok() {
            break;
        }
    }
    last
}

/// A minimal HTTP/1.1 request with `Connection: close`; returns the body of a 200 response.
fn http_request(host: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<String, String> {
    let address = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, IMDS_TIMEOUT).map_err(|e| format!("connect {host}: {e}"))?;
    stream.set_read_timeout(Some(IMDS_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(IMDS_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response).map_err(|e| format!("receive: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").ok_or("malformed HTTP response")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1).is_none_or(|code| code != "200") {
        return Err(format!("{method} {path}: {status}"));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves `responses` in order on a loopback port, one connection each; returns the endpoint
    /// and the requests received.
    fn fake_imds(responses: Vec<&'static str>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for response in responses {
                let (mut stream, _) = listener.accept().unwrap();
                let mut buffer = [0u8; 4096];
                let read = stream.read(&mut buffer).unwrap();
                requests.push(String::from_utf8_lossy(&buffer[..read]).into_owned());
                stream.write_all(response.as_bytes()).unwrap();
            }
            requests
        });
        (endpoint, handle)
    }

    #[test]
    fn imdsv2_token_then_instance_type() {
        let (endpoint, server) = fake_imds(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ntoken",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nc5.xlarge\n",
        ]);
        assert_eq!(query_instance_type(&endpoint).unwrap(), "c5.xlarge");
        let requests = server.join().unwrap();
        assert!(requests[0].starts_with("PUT /latest/api/token HTTP/1.1"));
        assert!(requests[0].contains("X-aws-ec2-metadata-token-ttl-seconds: 60"));
        assert!(requests[1].starts_with("GET /latest/meta-data/instance-type HTTP/1.1"));
        assert!(requests[1].contains("X-aws-ec2-metadata-token: token"));
    }

    #[test]
    fn a_failed_request_is_retried_once_then_reported() {
        let (endpoint, server) = fake_imds(vec![
            "HTTP/1.1 500 Internal Server Error\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\ntoken",
            "HTTP/1.1 404 Not Found\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\n\r\n",
        ]);
        let error = query_instance_type(&endpoint).unwrap_err();
        assert!(error.contains("404"), "{error}");
        assert_eq!(server.join().unwrap().len(), 4);
    }

    #[test]
    fn nvidia_driver_version_is_read_from_the_kernel_module_line() {
        let proprietary = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n\
                           GCC version:  gcc version 12.2.0";
        assert_eq!(parse_nvidia_driver_version(proprietary).as_deref(), Some("550.54.15"));
        let open =
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16)";
        assert_eq!(parse_nvidia_driver_version(open).as_deref(), Some("570.86.15"));
        assert_eq!(parse_nvidia_driver_version(""), None);
        assert_eq!(parse_nvidia_driver_version("something else"), None);
    }

    #[test]
    fn reports_without_a_gpu_have_no_gpu_field_and_old_reports_still_parse() {
        let hardware = detect(2, Some("c6i.large"));
        assert_eq!(hardware.gpu, None);
        let json = serde_json::to_value(&hardware).unwrap();
        assert!(json.get("gpu").is_none(), "CPU reports are unchanged");
        let parsed: Hardware = serde_json::from_value(json).unwrap();
        assert_eq!(parsed, hardware);
        let gpu = GpuHardware {
            name: "NVIDIA A10G".into(),
            compute_capability: "8.6".into(),
            memory_bytes: 24 << 30,
            driver_version: "550.54.15".into(),
            driver_cuda_version: "12.4".into(),
            kernel_variant: "mma.m16n8k32 64x64".into(),
        };
        let with_gpu = Hardware { gpu: Some(gpu), ..hardware };
        let json = serde_json::to_value(&with_gpu).unwrap();
        assert_eq!(json["gpu"]["compute_capability"], "8.6");
        assert_eq!(serde_json::from_value::<Hardware>(json).unwrap(), with_gpu);
    }

    #[test]
    fn detection_names_the_flags_and_cores() {
        let hardware = detect(2, Some("c6i.large"));
        assert_eq!((hardware.instance_type.as_str(), hardware.instance_type_source.as_str()), ("c6i.large", "flag"));
        assert!(hardware.logical_cores >= 1);
        assert!(hardware.cpu_flags.iter().all(|f| RELEVANT_FLAGS.contains(&f.as_str())));
        if cfg!(target_arch = "x86_64") && std::is_x86_feature_detected!("avx2") {
            assert!(hardware.cpu_flags.contains(&"avx2".to_string()));
        }
    }
}
