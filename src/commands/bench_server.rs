//! `qtier bench server`: load a running server's `/v1/embeddings` over plain HTTP and report its
//! latency and throughput with the statistics of `qtier bench model`.
//!
//! - **Open loop** (`--qps R`): arrivals come from [`qtier_bench::load::run_open_loop`], the same
//!   Poisson process (same seed) as `qtier bench model --qps`, on its own thread. Its `serve`
//!   callback only hands each request to the async client and returns, so a slow response never
//!   delays the next arrival; the run's own samples are then the *dispatch lag* (scheduled
//!   arrival to hand-off), and each request's latency is that lag plus the time from hand-off to
//!   the last byte of the response: measured from the scheduled send time, queueing included.
//!   More than [`MAX_QUEUED`] requests outstanding stop the sending (counted as not sent).
//! - **Closed loop** (`--concurrency N`): N clients each send the next request as soon as the
//!   previous one is answered, for the duration; latency runs from send to response. This
//!   measures the throughput a fixed number of callers gets.
//!
//! Only answered requests with status 200 enter the latency sample; everything else is counted
//! by status (`timeout`, `connection`, and `bad-response` for a 200 whose body is not the
//! expected embeddings).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use qtier_bench::Provenance;
use qtier_bench::load::{MAX_QUEUED, run_open_loop};
use qtier_bench::model_bench::BOOTSTRAP_SEED;
use qtier_bench::stats::{Sample, Summary};
use qtier_models::eval::{DEV_SENTENCES, lines};
use serde::Serialize;

/// Version of [`ServerBenchReport`]'s JSON; renaming a field bumps it.
pub const SERVER_REPORT_SCHEMA_VERSION: u32 = 1;

/// Threads of the client's async runtime: sending and reading small JSON bodies is light, and
/// the server under test usually shares the machine.
const CLIENT_THREADS: usize = 2;

/// The path requests go to when the URL names only the server.
const EMBEDDINGS_PATH: &str = "/v1/embeddings";

/// `qtier bench server`.
#[derive(Debug, clap::Args)]
pub struct BenchServerArgs {
    /// The server, `http://HOST:PORT` (requests go to /v1/embeddings), or the endpoint's full URL.
    pub url: String,
    /// Open loop: offer this many requests per second (Poisson arrivals).
    #[arg(long, value_name = "R", required_unless_present = "concurrency", conflicts_with = "concurrency")]
    pub qps: Option<f64>,
    /// Closed loop: this many clients, each sending its next request when the previous is answered.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<NonZeroUsize>,
    /// Seconds of sending (requests sent by then are still awaited).
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub duration: f64,
    /// A text file with one text per line, sent in turn (default: the built-in development
    /// sentences).
    #[arg(long, value_name = "FILE")]
    pub texts: Option<PathBuf>,
    /// Texts per request.
    #[arg(long, value_name = "N", default_value = "1")]
    pub inputs: NonZeroUsize,
    /// The `model` field of each request (left out by default).
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// The tail percentile reported with its confidence interval.
    #[arg(long, default_value_t = 99.0)]
    pub tail: f64,
    /// Seconds after which a request counts as failed (`timeout`).
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    pub timeout: f64,
    /// Print the report as JSON, with every latency sample.
    #[arg(long)]
    pub json: bool,
}

/// How the load was offered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum OfferedLoad {
    /// Poisson arrivals at a fixed rate.
    OpenLoop {
        /// Requests per second offered.
        qps: f64,
    },
    /// A fixed number of clients sending back to back.
    ClosedLoop {
        /// Clients.
        concurrency: usize,
    },
}

/// The result of `qtier bench server`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerBenchReport {
    /// [`SERVER_REPORT_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Which qtier ran the client, and how.
    pub provenance: Provenance,
    /// The endpoint loaded.
    pub url: String,
    /// The offered load.
    pub load: OfferedLoad,
    /// Seconds of sending.
    pub duration_s: f64,
    /// Texts per request.
    pub inputs_per_request: usize,
    /// Requests sent.
    pub sent: usize,
    /// Requests answered 200 with the expected embeddings.
    pub ok: usize,
    /// Failed requests by HTTP status, or `timeout`, `connection`, `bad-response`.
    pub errors: BTreeMap<String, usize>,
    /// Open loop: arrivals not sent because [`MAX_QUEUED`] requests were outstanding.
    pub not_sent: usize,
    /// Seconds from the first send to the last answer.
    pub elapsed_s: f64,
    /// Successful requests per second of `elapsed_s`.
    pub achieved_qps: f64,
    /// Latency statistics of the successful requests, ns.
    pub stats: Option<Summary>,
    /// Open loop: how late the client handed requests to the network, ns (a busy client machine
    /// shows here, not as server latency).
    pub dispatch_lag: Option<Summary>,
    /// Every successful request's latency, ns, in send order.
    pub samples_ns: Vec<f64>,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What one request needs: client, endpoint, the expected answer size and the time limit.
#[derive(Clone)]
struct Target {
    client: HttpClient,
    uri: Uri,
    inputs: usize,
    timeout: Duration,
}

/// One request's outcome: when it was answered and whether it succeeded (else the error key).
type Outcome = (Instant, Result<(), String>);

impl Target {
    async fn send(&self, body: Bytes) -> Outcome {
        let request = hyper::Request::post(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body));
        let request = match request {
            Ok(request) => request,
            Err(error) => return (Instant::now(), Err(format!("bad request: {error}"))),
        };
        let exchange = async {
            let response = self.client.request(request).await.map_err(|_| "connection".to_string())?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|_| "connection".to_string())?.to_bytes();
            if status != hyper::StatusCode::OK {
                return Err(status.as_u16().to_string());
            }
            let answered = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|json| json["data"].as_array().map(Vec::len));
            if answered == Some(self.inputs) { Ok(()) } else { Err("bad-response".to_string()) }
        };
        let result = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err("timeout".to_string()),
        };
        (Instant::now(), result)
    }
}

/// The endpoint for `url`: plain http only; a URL without a path gets /v1/embeddings.
fn endpoint(url: &str) -> anyhow::Result<Uri> {
    let uri: Uri = url.parse().with_context(|| format!("`{url}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => bail!("{url}: https is not supported; this client speaks plain http (loopback, in-cluster)"),
        _ => bail!("{url}: expected http://HOST:PORT"),
    }
    let authority = uri.authority().with_context(|| format!("{url}: no host"))?.clone();
    if uri.path() != "/" {
        return Ok(uri);
    }
    Ok(Uri::builder().scheme("http").authority(authority).path_and_query(EMBEDDINGS_PATH).build()?)
}

/// Request bodies: body `i` holds `inputs` consecutive texts starting at text `i`, so the texts
/// are sent in turn.
fn request_bodies(texts: &[&str], inputs: usize, model: Option<&str>) -> Vec<Bytes> {
    (0..texts.len())
        .map(|start| {
            let input: Vec<&str> = texts.iter().cycle().skip(start).take(inputs).copied().collect();
            let body = match model {
                Some(model) => serde_json::json!({"input": input, "model": model}),
                None => serde_json::json!({"input": input}),
            };
            Bytes::from(body.to_string())
        })
        .collect()
}

/// Latencies (ns) of the successful requests in send order, and the failures counted by key.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    samples_ns: Vec<f64>,
    errors: BTreeMap<String, usize>,
    last_answer: Option<Instant>,
}

impl Tally {
    fn record(&mut self, latency: Duration, (answered, result): Outcome) {
        match result {
            Ok(()) => self.samples_ns.push(latency.as_nanos() as f64),
            Err(key) => *self.errors.entry(key).or_default() += 1,
        }
        self.last_answer = Some(self.last_answer.map_or(answered, |last| last.max(answered)));
    }
}

/// Open loop at `qps` for `duration`; returns the tally, the arrivals not sent and the dispatch
/// lag.
fn open_loop(
    runtime: &tokio::runtime::Runtime,
    target: &Target,
    bodies: &[Bytes],
    qps: f64,
    duration: Duration,
    tail: f64,
) -> (Tally, usize, Option<Summary>) {
    let outstanding = Arc::new(AtomicUsize::new(0));
    // Per arrival: when it was handed off and its task, or None when too many were outstanding.
    let mut dispatched = Vec::new();
    let Ok(run) = run_open_loop(qps, duration, tail, BOOTSTRAP_SEED, || -> Result<(), std::convert::Infallible> {
        if outstanding.load(Ordering::Relaxed) >= MAX_QUEUED {
            dispatched.push(None);
            return Ok(());
        }
        outstanding.fetch_add(1, Ordering::Relaxed);
        let (target, outstanding) = (target.clone(), Arc::clone(&outstanding));
        let body = bodies[dispatched.len() % bodies.len()].clone();
        let task = runtime.spawn(async move {
            let outcome = target.send(body).await;
            outstanding.fetch_sub(1, Ordering::Relaxed);
            outcome
        });
        dispatched.push(Some((Instant::now(), task)));
        Ok(())
    });
    let mut tally = Tally::default();
    let mut not_sent = 0;
    runtime.block_on(async {
        for (lag_ns, dispatch) in run.samples_ns.iter().zip(dispatched) {
            let Some((handed_off, task)) = dispatch else {
                not_sent += 1;
                continue;
            };
            let outcome = task.await.unwrap_or_else(|panic| (Instant::now(), Err(format!("client panic: {panic}"))));
            let latency = Duration::from_nanos(*lag_ns as u64) + outcome.0.saturating_duration_since(handed_off);
            tally.record(latency, outcome);
        }
    });
    (tally, not_sent, run.stats)
}

/// Closed loop: `concurrency` clients sending back to back for `duration`.
fn closed_loop(
    runtime: &tokio::runtime::Runtime,
    target: &Target,
    bodies: &[Bytes],
    concurrency: usize,
    duration: Duration,
) -> Tally {
    let bodies: Arc<[Bytes]> = bodies.into();
    runtime.block_on(async {
        let deadline = Instant::now() + duration;
        let clients: Vec<_> = (0..concurrency)
            .map(|client| {
                let (target, bodies) = (target.clone(), Arc::clone(&bodies));
                tokio::spawn(async move {
                    let mut results = Vec::new();
                    let mut next = client;
                    while Instant::now() < deadline {
                        let sent = Instant::now();
                        let outcome = target.send(bodies[next % bodies.len()].clone()).await;
                        results.push((outcome.0.saturating_duration_since(sent), outcome));
                        next += concurrency;
                    }
                    results
                })
            })
            .collect();
        let mut tally = Tally::default();
        for client in clients {
            for (latency, outcome) in client.await.unwrap_or_default() {
                tally.record(latency, outcome);
            }
        }
        tally
    })
}

/// Runs `qtier bench server`.
pub fn run(args: BenchServerArgs) -> anyhow::Result<()> {
    let uri = endpoint(&args.url)?;
    for (flag, value) in [("--duration", args.duration), ("--timeout", args.timeout)] {
        if !(value.is_finite() && value > 0.0) {
            bail!("{flag} must be a positive number of seconds, got {value}");
        }
    }
    if !(args.tail > 0.0 && args.tail < 100.0) {
        bail!("--tail must lie strictly between 0 and 100, got {}", args.tail);
    }
    let load = match (args.qps, args.concurrency) {
        (Some(qps), _) if qps.is_finite() && qps > 0.0 => OfferedLoad::OpenLoop { qps },
        (Some(qps), _) => bail!("--qps must be a positive rate, got {qps}"),
        (None, Some(concurrency)) => OfferedLoad::ClosedLoop { concurrency: concurrency.get() },
        (None, None) => bail!("give --qps R (open loop) or --concurrency N (closed loop)"),
    };
    let file_text = match &args.texts {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let texts = lines(file_text.as_deref().unwrap_or(DEV_SENTENCES));
    if texts.is_empty() {
        bail!("{}: no texts (one per line expected)", args.texts.unwrap_or_default().display());
    }
    let bodies = request_bodies(&texts, args.inputs.get(), args.model.as_deref());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_THREADS)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let target = Target {
        client: Client::builder(TokioExecutor::new()).build(connector),
        uri: uri.clone(),
        inputs: args.inputs.get(),
        timeout: Duration::from_secs_f64(args.timeout),
    };
    let duration = Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let (tally, not_sent, dispatch_lag) = match load {
        OfferedLoad::OpenLoop { qps } => open_loop(&runtime, &target, &bodies, qps, duration, args.tail),
        OfferedLoad::ClosedLoop { concurrency } => {
            (closed_loop(&runtime, &target, &bodies, concurrency, duration), 0, None)
        }
    };
    runtime.shutdown_background();
    let elapsed_s = tally.last_answer.map_or(0.0, |last| last.saturating_duration_since(started).as_secs_f64());
    let ok = tally.samples_ns.len();
    let stats =
        Sample::new(tally.samples_ns.clone()).ok().and_then(|s| Summary::compute(&s, args.tail, BOOTSTRAP_SEED).ok());
    let report = ServerBenchReport {
        schema_version: SERVER_REPORT_SCHEMA_VERSION,
        provenance: crate::commands::bench::provenance(),
        url: uri.to_string(),
        load,
        duration_s: args.duration,
        inputs_per_request: args.inputs.get(),
        sent: ok + tally.errors.values().sum::<usize>(),
        ok,
        errors: tally.errors,
        not_sent,
        elapsed_s,
        achieved_qps: if elapsed_s > 0.0 { ok as f64 / elapsed_s } else { 0.0 },
        stats,
        dispatch_lag,
        samples_ns: tally.samples_ns,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if report.ok == 0 {
        bail!("no request succeeded ({} sent)", report.sent);
    }
    Ok(())
}

fn print_report(report: &ServerBenchReport) {
    let load = match report.load {
        OfferedLoad::OpenLoop { qps } => format!("open loop, {qps:.1} requests/s offered (Poisson)"),
        OfferedLoad::ClosedLoop { concurrency } => format!("closed loop, {concurrency} concurrent clients"),
    };
    outln!(
        "{}: {load} for {:.1} s, {} text{} per request",
        report.url,
        report.duration_s,
        report.inputs_per_request,
        if report.inputs_per_request == 1 { "" } else { "s" }
    );
    let errors = if report.errors.is_empty() {
        "none".to_string()
    } else {
        report.errors.iter().map(|(key, count)| format!("{key}: {count}")).collect::<Vec<_>>().join(", ")
    };
    outln!("requests: {} sent, {} ok; errors: {errors}", report.sent, report.ok);
    if report.not_sent > 0 {
        outln!("not sent: {} (more than {MAX_QUEUED} requests were outstanding: far over capacity)", report.not_sent);
    }
    outln!("achieved: {:.1} requests/s over {:.2} s", report.achieved_qps, report.elapsed_s);
    if let Some(s) = &report.stats {
        outln!(
            "latency ms: p50 {:.3} (95% CI {:.3} - {:.3}), p90 {:.3}, p95 {:.3}, p99 {:.3}, max {:.3}",
            s.p50 / 1e6,
            s.median_ci95.low / 1e6,
            s.median_ci95.high / 1e6,
            s.p90 / 1e6,
            s.p95 / 1e6,
            s.p99 / 1e6,
            s.max / 1e6
        );
        outln!(
            "p{} 95% CI {:.3} - {:.3} ms; upper bound (99% confidence): {}",
            s.tail_percentile,
            s.tail_ci95.low / 1e6,
            s.tail_ci95.high / 1e6,
            s.tail_upper_bound.map_or_else(|| "too few samples".to_string(), |b| format!("{:.3} ms", b / 1e6))
        );
    }
    if let Some(lag) = &report.dispatch_lag {
        outln!("client dispatch lag ms: p50 {:.3}, p99 {:.3}, max {:.3}", lag.p50 / 1e6, lag.p99 / 1e6, lag.max / 1e6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_server_url_gets_the_embeddings_path() {
        assert_eq!(endpoint("http://127.0.0.1:8080").unwrap().to_string(), "http://127.0.0.1:8080/v1/embeddings");
        assert_eq!(endpoint("http://h:1/").unwrap().to_string(), "http://h:1/v1/embeddings");
        assert_eq!(endpoint("http://h:1/custom/embed").unwrap().to_string(), "http://h:1/custom/embed");
    }

    #[test]
    fn https_and_non_urls_are_refused_clearly() {
        assert!(endpoint("https://h:1").unwrap_err().to_string().contains("plain http"));
        assert!(endpoint("h:1").is_err());
        assert!(endpoint("not a url").is_err());
    }

    #[test]
    fn bodies_send_the_texts_in_turn() {
        let bodies = request_bodies(&["a", "b", "c"], 2, Some("m"));
        let json: Vec<serde_json::Value> = bodies.iter().map(|b| serde_json::from_slice(b).unwrap()).collect();
        assert_eq!(json[0], serde_json::json!({"input": ["a", "b"], "model": "m"}));
        assert_eq!(json[2], serde_json::json!({"input": ["c", "a"], "model": "m"}));
        let plain: serde_json::Value = serde_json::from_slice(&request_bodies(&["x"], 1, None)[0]).unwrap();
        assert_eq!(plain, serde_json::json!({"input": ["x"]}));
    }

    #[test]
    fn tally_keeps_successes_as_samples_and_counts_failures_by_key() {
        let now = Instant::now();
        let later = now + Duration::from_millis(5);
        let mut tally = Tally::default();
        tally.record(Duration::from_micros(3), (now, Ok(())));
        tally.record(Duration::from_micros(9), (later, Err("503".into())));
        tally.record(Duration::from_micros(4), (now, Err("503".into())));
        assert_eq!(tally.samples_ns, [3000.0]);
        assert_eq!(tally.errors, BTreeMap::from([("503".to_string(), 2)]));
        assert_eq!(tally.last_answer, Some(later));
    }
}
