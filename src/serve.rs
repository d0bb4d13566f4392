//! The HTTP inference server behind `qtier serve`: an OpenAI-compatible `/v1/embeddings`
//! endpoint over one model, with dynamic batching, health and readiness probes and Prometheus
//! metrics.
//!
//! - **Startup**: the port is bound first; the model loads and is warmed up (a few real encodes)
//!   in the background. `/healthz` answers 200 from the start, `/readyz` 503 until the warm-up is
//!   done (and again once shutdown begins), so a Kubernetes readiness probe routes traffic only to
//!   a warm pod.
//! - **Dynamic batching**: every request becomes a [`Job`] in a bounded queue (`--queue`); a full
//!   queue answers 503 at once instead of letting latency grow without bound. One worker takes the
//!   first job, collects more until the batch holds `--max-batch` texts or `--max-wait-ms` has
//!   passed since the first job arrived, and encodes the batch on a blocking thread (the model is
//!   CPU-bound and must not stall the I/O threads). While the worker encodes, new jobs queue up and
//!   form the next batch, so batches grow with the load.
//! - **Length-aware grouping**: a batch is padded to its longest text, so one long text among short
//!   ones multiplies the work (on the development sentences, one 90-token sentence in a batch of 8
//!   texts of 10 to 20 tokens made the batch 5 times slower). The worker runs a batch as one encode
//!   unless splitting it by length saves more padding than another encode costs
//!   ([`ENCODE_OVERHEAD_TOKENS`]); a single request with more texts than `--max-batch` is split the
//!   same way into encodes of at most `--max-batch` texts.
//! - **Limits**: body bytes (413), texts per request (413); texts longer than the model's maximum
//!   length are truncated by the tokenizer, as `qtier embed` does.
//! - **Metrics** (`/metrics`): request latency and batch-size histograms, requests in flight,
//!   errors by status, and the wall time spent encoding (`qtier_encoder_busy_seconds_total`), whose
//!   rate is the fraction of time the model is busy: the load signal for an autoscaler when the
//!   kernels' workers spin between requests, which makes CPU time no measure of load.
//! - **Shutdown**: on the signal the server stops accepting connections, `/readyz` turns 503, and
//!   requests in flight are answered before [`serve`] returns.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use qtier_models::eval::{DEV_SENTENCES, lines};
use qtier_models::gpu::{ComputeDevice, GpuEncoder};
use qtier_models::{SentenceEncoder, TokenBatch};
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot};

/// What one more encode costs, in padded tokens: a batch is split by length only where that saves
/// more padding than this. Measured on all-MiniLM-L6-v2 int8 on the 2-core development VM
/// (`qtier bench model --batch 1,8 --seq 16`): 8.0 ms for 16 tokens and 24.0 ms for 128, that is
/// 0.14 ms per token plus 5.7 ms per call, the cost of about 40 tokens.
pub const ENCODE_OVERHEAD_TOKENS: usize = 40;

/// Test-only knob: milliseconds to wait before loading the model, so the end-to-end tests can
/// observe `/readyz` answering 503 before 200 however fast the model loads.
pub const LOAD_DELAY_ENV: &str = "QTIER_SERVE_TEST_LOAD_DELAY_MS";

/// Upper bounds (seconds) of the request latency histogram: from a small batch on the int8
/// kernels (about a millisecond) to a long queue of large batches.
const LATENCY_BUCKETS_S: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Upper bounds of the batch size histogram (texts per encode): powers of two up to eight times
/// the default `--max-batch`.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The `Content-Type` of the Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything [`serve`] needs, validated by the command.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The model or int8 artifact directory.
    pub model_dir: PathBuf,
    /// The name responses give as `model`.
    pub model_name: String,
    /// How queued requests are grouped into encodes.
    pub batching: BatchPolicy,
    /// Requests that may wait in the queue; one more is answered 503.
    pub queue: NonZeroUsize,
    /// Per-request limits.
    pub limits: RequestLimits,
    /// Wait before loading the model ([`LOAD_DELAY_ENV`]; zero outside tests).
    pub load_delay: Duration,
    /// Where the model runs (the CPU, or a GPU through [`GpuEncoder`]).
    pub device: ComputeDevice,
}

/// How the batching worker groups queued requests into one encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Texts per encode at most.
    pub max_batch: NonZeroUsize,
    /// How long after the first request of a batch arrived the worker waits for more.
    pub max_wait: Duration,
}

/// Per-request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest request body, bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Most texts in one request's `input` (more: 413).
    pub max_inputs: usize,
}

/// An error answered as OpenAI does: `{"error": {"message", "type"}}` with an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The error's `type`.
    pub kind: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into() }
    }

    /// 400: the request is malformed.
    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 413: the request is larger than the server accepts.
    fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", message)
    }

    /// 503: not ready, shutting down, or the queue is full.
    fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_unavailable", message)
    }

    /// 500: the model failed.
    fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The error for a body axum could not read: too large (413) or unreadable (400).
    fn from_body(rejection: &BytesRejection, limits: &RequestLimits) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!("the request body exceeds {} bytes", limits.max_body_bytes))
        } else {
            ApiError::invalid(format!("reading the request body: {}", rejection.body_text()))
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"message": self.message, "type": self.kind}});
        (self.status, axum::Json(body)).into_response()
    }
}

/// A parsed `POST /v1/embeddings` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingsRequest {
    /// The texts to embed, in order (`input` as one string or an array of strings).
    pub texts: Vec<String>,
}

/// Parses and checks an OpenAI embeddings request body: `input` (a string or a non-empty array
/// of strings, at most `limits.max_inputs`), `model` (any string: the server has one model),
/// `encoding_format` (`float` only). Unknown fields are ignored, as OpenAI's `user` is.
pub fn parse_embeddings_request(body: &[u8], limits: &RequestLimits) -> Result<EmbeddingsRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    };
    match fields.get("model") {
        None | Some(Value::String(_)) => {}
        Some(_) => return Err(ApiError::invalid("`model` must be a string")),
    }
    match fields.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(format)) if format == "float" => {}
        Some(Value::String(format)) => {
            return Err(ApiError::invalid(format!(
                "encoding_format `{format}` is not supported; use `float` (or leave it out)"
            )));
        }
        Some(_) => return Err(ApiError::invalid("`encoding_format` must be a string")),
    }
    if fields.get("dimensions").is_some_and(|d| !d.is_null()) {
        return Err(ApiError::invalid("`dimensions` is not supported: the model's full embedding is returned"));
    }
    let texts = match fields.get("input") {
        None | Some(Value::Null) => return Err(ApiError::invalid("`input` is required")),
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(ApiError::invalid("`input` must not be an empty array"));
            }
            if items.len() > limits.max_inputs {
                return Err(ApiError::too_large(format!(
                    "`input` has {} texts; this server takes at most {} per request",
                    items.len(),
                    limits.max_inputs
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(index, item)| match item {
                    Value::String(text) => Ok(text.clone()),
                    Value::Number(_) | Value::Array(_) => {
                        Err(ApiError::invalid("token arrays are not supported as `input`; send text"))
                    }
                    _ => Err(ApiError::invalid(format!("`input[{index}]` must be a string"))),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(_) => return Err(ApiError::invalid("`input` must be a string or an array of strings")),
    };
    Ok(EmbeddingsRequest { texts })
}

/// One text's embedding and the number of tokens it was encoded from (after truncation).
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// The sentence embedding.
    pub embedding: Vec<f32>,
    /// Real (unpadded) tokens, special tokens included.
    pub tokens: usize,
}

/// What the batching worker runs: texts in, one [`Embedded`] per text out, in order.
pub trait TextEncoder: Send + Sync + 'static {
    /// The number of tokens each text will be encoded from (after truncation).
    fn token_counts(&self, texts: &[&str]) -> anyhow::Result<Vec<usize>>;

    /// Encodes `texts` (never empty) as one batch.
    fn encode(&self, texts: &[&str]) -> anyhow::Result<Vec<Embedded>>;
}

/// Real (unpadded) tokens of each text of a tokenized batch.
fn real_tokens(batch: &TokenBatch) -> Vec<usize> {
    batch.attention_mask.chunks(batch.seq.max(1)).map(|mask| mask.iter().filter(|m| **m == 1).count()).collect()
}

/// Pairs each embedding with its text's real token count.
fn embedded(embeddings: Vec<Vec<f32>>, batch: &TokenBatch) -> Vec<Embedded> {
    embeddings.into_iter().zip(real_tokens(batch)).map(|(embedding, tokens)| Embedded { embedding, tokens }).collect()
}

impl TextEncoder for SentenceEncoder {
    fn token_counts(&self, texts: &[&str]) -> anyhow::Result<Vec<usize>> {
        Ok(real_tokens(&self.tokenizer().encode_batch(texts)?))
    }

    fn encode(&self, texts: &[&str]) -> anyhow::Result<Vec<Embedded>> {
        let batch = self.tokenizer().encode_batch(texts)?;
        Ok(embedded(self.embed_tokens(&batch)?, &batch))
    }
}

impl TextEncoder for GpuEncoder {
    fn token_counts(&self, texts: &[&str]) -> anyhow::Result<Vec<usize>> {
        Ok(real_tokens(&self.tokenizer().encode_batch(texts)?))
    }

    fn encode(&self, texts: &[&str]) -> anyhow::Result<Vec<Embedded>> {
        let batch = self.tokenizer().encode_batch(texts)?;
        Ok(embedded(self.embed(&batch)?, &batch))
    }
}

/// One request waiting for the batching worker.
#[derive(Debug)]
pub struct Job {
    texts: Vec<String>,
    queued_at: tokio::time::Instant,
    reply: oneshot::Sender<Result<Vec<Embedded>, String>>,
}

impl Job {
    /// A job for `texts`, queued now, and the receiver of its answer.
    pub fn new(texts: Vec<String>) -> (Job, oneshot::Receiver<Result<Vec<Embedded>, String>>) {
        let (reply, answer) = oneshot::channel();
        (Job { texts, queued_at: tokio::time::Instant::now(), reply }, answer)
    }
}

/// Splits `items` into consecutive groups of the given lengths (which sum to `items.len()`).
fn split_by_lengths<T>(items: Vec<T>, lengths: &[usize]) -> Vec<Vec<T>> {
    let mut items = items.into_iter();
    lengths.iter().map(|&length| items.by_ref().take(length).collect()).collect()
}

/// Splits texts with these token counts into groups of at most `max_batch` texts, one encode
/// each, at the least estimated cost: per group [`ENCODE_OVERHEAD_TOKENS`] plus its padded size
/// (texts times its longest). Some cheapest split consists of runs of the texts sorted by length
/// (moving a shorter text into a group with a longer maximum never lowers the cost), so dynamic
/// programming over the sorted order finds it. Each group lists text indices in input order.
fn plan_groups(tokens: &[usize], max_batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&i| tokens[i]);
    let n = order.len();
    // cost[j]: the cheapest split of the j shortest texts; start[j]: where its last group starts.
    let mut cost = vec![usize::MAX; n + 1];
    let mut start = vec![0; n + 1];
    cost[0] = 0;
    for j in 1..=n {
        let longest = tokens[order[j - 1]];
        for i in j.saturating_sub(max_batch.max(1))..j {
            let candidate = cost[i] + ENCODE_OVERHEAD_TOKENS + (j - i) * longest;
            if candidate < cost[j] {
                cost[j] = candidate;
                start[j] = i;
            }
        }
    }
    let mut groups = Vec::new();
    let mut end = n;
    while end > 0 {
        let mut group = order[start[end]..end].to_vec();
        group.sort_unstable();
        groups.push(group);
        end = start[end];
    }
    groups.reverse();
    groups
}

/// Encodes `texts` in the groups [`plan_groups`] chooses, recording each group's size; returns
/// the embeddings in input order.
fn encode_batch<E: TextEncoder + ?Sized>(
    encoder: &E,
    texts: &[String],
    max_batch: usize,
    metrics: &Metrics,
) -> anyhow::Result<Vec<Embedded>> {
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens = encoder.token_counts(&texts)?;
    anyhow::ensure!(tokens.len() == texts.len(), "{} token counts for {} texts", tokens.len(), texts.len());
    let mut embedded: Vec<Option<Embedded>> = (0..texts.len()).map(|_| None).collect();
    for group in plan_groups(&tokens, max_batch) {
        metrics.observe_batch(group.len());
        let group_texts: Vec<&str> = group.iter().map(|&i| texts[i]).collect();
        let encoded = encoder.encode(&group_texts)?;
        anyhow::ensure!(
            encoded.len() == group.len(),
            "the encoder returned {} embeddings for {} texts",
            encoded.len(),
            group.len()
        );
        for (index, one) in group.into_iter().zip(encoded) {
            embedded[index] = Some(one);
        }
    }
    embedded.into_iter().collect::<Option<Vec<_>>>().context("a text was left out of every group")
}

/// The batching worker: runs until the queue is closed and empty.
pub async fn run_batcher<E: TextEncoder + ?Sized>(
    encoder: Arc<E>,
    mut queue: mpsc::Receiver<Job>,
    policy: BatchPolicy,
    metrics: Arc<Metrics>,
) {
    let max_batch = policy.max_batch.get();
    // A job that did not fit the previous batch: it opens the next one.
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let deadline = first.queued_at + policy.max_wait;
        let mut texts = first.texts.len();
        let mut jobs = vec![first];
        while texts < max_batch {
            // Past the deadline, `timeout_at` still takes a job that is already queued.
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(job)) if texts + job.texts.len() <= max_batch => {
                    texts += job.texts.len();
                    jobs.push(job);
                }
                Ok(Some(job)) => {
                    held = Some(job);
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        // A client that went away does not need its texts encoded.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let lengths: Vec<usize> = jobs.iter().map(|job| job.texts.len()).collect();
        let texts: Vec<String> = jobs.iter_mut().flat_map(|job| std::mem::take(&mut job.texts)).collect();
        let (encoder, batch_metrics) = (Arc::clone(&encoder), Arc::clone(&metrics));
        let result = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let encoded = encode_batch(encoder.as_ref(), &texts, max_batch, &batch_metrics);
            batch_metrics.observe_encoding(started.elapsed());
            encoded
        })
        .await;
        match result {
            Ok(Ok(embedded)) => {
                for (job, embedded) in jobs.into_iter().zip(split_by_lengths(embedded, &lengths)) {
                    let _ = job.reply.send(Ok(embedded));
                }
            }
            Ok(Err(error)) => reply_all(jobs, &format!("encoding failed: {error:#}")),
            Err(error) => reply_all(jobs, &format!("the encoder panicked: {error}")),
        }
    }
}

fn reply_all(jobs: Vec<Job>, message: &str) {
    eprintln!("error: {message}");
    for job in jobs {
        let _ = job.reply.send(Err(message.to_string()));
    }
}

/// A fixed-bucket histogram in Prometheus' shape.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than `bounds` for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, value: f64) {
        let bucket = self.bounds.iter().position(|bound| value <= *bound).unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

#[derive(Debug)]
struct MetricsState {
    latency: Histogram,
    batch: Histogram,
    errors: BTreeMap<u16, u64>,
}

/// The server's Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    state: Mutex<MetricsState>,
    in_flight: AtomicI64,
    /// Wall time the model spent encoding batches, nanoseconds.
    encoding_ns: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            state: Mutex::new(MetricsState {
                latency: Histogram::new(&LATENCY_BUCKETS_S),
                batch: Histogram::new(&BATCH_BUCKETS),
                errors: BTreeMap::new(),
            }),
            in_flight: AtomicI64::new(0),
            encoding_ns: AtomicU64::new(0),
        }
    }
}

/// Counts a request in flight until dropped (also when the client goes away mid-request).
struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, MetricsState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    fn observe_request(&self, status: StatusCode, elapsed: Duration) {
        let mut state = self.lock();
        state.latency.observe(elapsed.as_secs_f64());
        if !status.is_success() {
            *state.errors.entry(status.as_u16()).or_default() += 1;
        }
    }

    fn observe_batch(&self, texts: usize) {
        self.lock().batch.observe(texts as f64);
    }

    /// Adds the wall time of one batched encode (its groups together).
    fn observe_encoding(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.encoding_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let state = self.lock();
        state.latency.render(
            "qtier_request_duration_seconds",
            "Time from receiving a /v1/embeddings request to its response, seconds.",
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP qtier_requests_in_flight /v1/embeddings requests being served.\n\
             # TYPE qtier_requests_in_flight gauge\nqtier_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP qtier_request_errors_total /v1/embeddings requests answered with an error, by status.\n\
             # TYPE qtier_request_errors_total counter"
        );
        for (status, count) in &state.errors {
            let _ = writeln!(out, "qtier_request_errors_total{{status=\"{status}\"}} {count}");
        }
        state.batch.render("qtier_batch_size", "Texts per batched encode.", &mut out);
        let _ = writeln!(
            out,
            "# HELP qtier_encoder_busy_seconds_total Wall time the model spent encoding, seconds; its rate is \
             the fraction of time the model is busy.\n\
             # TYPE qtier_encoder_busy_seconds_total counter\nqtier_encoder_busy_seconds_total {}",
            self.encoding_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        out
    }
}

/// State shared by the handlers.
#[derive(Debug)]
struct AppState {
    model_name: String,
    limits: RequestLimits,
    queue: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    loaded: AtomicBool,
    draining: AtomicBool,
}

impl AppState {
    fn ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }
}

#[derive(Serialize)]
struct EmbeddingData {
    object: &'static str,
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize)]
struct EmbeddingsResponse<'a> {
    object: &'static str,
    data: Vec<EmbeddingData>,
    model: &'a str,
    usage: Usage,
}

fn embeddings_response(model: &str, embedded: Vec<Embedded>) -> EmbeddingsResponse<'_> {
    let tokens = embedded.iter().map(|e| e.tokens).sum();
    EmbeddingsResponse {
        object: "list",
        data: embedded
            .into_iter()
            .enumerate()
            .map(|(index, e)| EmbeddingData { object: "embedding", index, embedding: e.embedding })
            .collect(),
        model,
        usage: Usage { prompt_tokens: tokens, total_tokens: tokens },
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if state.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], state.metrics.render()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; this server offers POST /v1/embeddings")
}

async fn embeddings(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let _in_flight = state.metrics.start_request();
    let response = match embed(&state, request).await {
        Ok(embedded) => axum::Json(embeddings_response(&state.model_name, embedded)).into_response(),
        Err(error) => error.into_response(),
    };
    state.metrics.observe_request(response.status(), started.elapsed());
    response
}

async fn embed(state: &AppState, request: Request) -> Result<Vec<Embedded>, ApiError> {
    if !state.ready() {
        return Err(if state.draining.load(Ordering::Acquire) {
            ApiError::unavailable("the server is shutting down")
        } else {
            ApiError::unavailable("the model is loading; retry when /readyz answers 200")
        });
    }
    // A declared length over the limit is refused before any of the body is read.
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > state.limits.max_body_bytes as u64) {
        return Err(ApiError::too_large(format!("the request body exceeds {} bytes", state.limits.max_body_bytes)));
    }
    let body =
        Bytes::from_request(request, &()).await.map_err(|rejection| ApiError::from_body(&rejection, &state.limits))?;
    let request = parse_embeddings_request(&body, &state.limits)?;
    let (job, answer) = Job::new(request.texts);
    state.queue.try_send(job).map_err(|error| match error {
        mpsc::error::TrySendError::Full(_) => ApiError::unavailable(format!(
            "the server is overloaded: {} requests are already queued; retry later",
            state.queue.max_capacity()
        )),
        mpsc::error::TrySendError::Closed(_) => ApiError::unavailable("the server is shutting down"),
    })?;
    answer.await.map_err(|_| ApiError::internal("the batching worker stopped"))?.map_err(ApiError::internal)
}

/// The routes, with the body limit.
fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/embeddings", post(embeddings))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Loads the model onto its device and warms it up with real encodes: one text (the
/// single-request path), a full batch (sizes the kernels' scratch buffers and the allocator for
/// the largest batch), and one text again.
fn load_and_warm_up(config: &ServeConfig) -> anyhow::Result<Arc<dyn TextEncoder>> {
    let started = Instant::now();
    let loading = || format!("loading {}", config.model_dir.display());
    let precision = |int8: bool| if int8 { "int8" } else { "float" };
    let (encoder, description): (Arc<dyn TextEncoder>, String) = match config.device {
        ComputeDevice::Cpu => {
            let encoder = SentenceEncoder::load(&config.model_dir).with_context(loading)?;
            let description = precision(encoder.is_int8()).to_string();
            (Arc::new(encoder), description)
        }
        ComputeDevice::Cuda { ordinal } => {
            let encoder = GpuEncoder::load(&config.model_dir, ordinal).with_context(loading)?;
            let description = format!("{} on GPU {ordinal}, {}", precision(encoder.is_int8()), encoder.device().name());
            (Arc::new(encoder), description)
        }
    };
    let max_batch = config.batching.max_batch.get();
    let full: Vec<String> = lines(DEV_SENTENCES).iter().cycle().take(max_batch).map(|s| (*s).to_string()).collect();
    for size in [1, max_batch, 1] {
        encode_batch(encoder.as_ref(), &full[..size], max_batch, &Metrics::default())
            .context("warming up the model")?;
    }
    eprintln!(
        "ready: {} ({description}) loaded and warmed up in {:.2} s",
        config.model_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(encoder)
}

/// Serves on `listener` until `shutdown` completes, then stops accepting connections, answers
/// the requests in flight and returns. Fails (after shutting down the same way) when the model
/// cannot be loaded.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (queue, receiver) = mpsc::channel(config.queue.get());
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState {
        model_name: config.model_name.clone(),
        limits: config.limits,
        queue,
        metrics: Arc::clone(&metrics),
        loaded: AtomicBool::new(false),
        draining: AtomicBool::new(false),
    });
    let load_failed = Arc::new(Notify::new());
    let loader = tokio::spawn({
        let (state, load_failed) = (Arc::clone(&state), Arc::clone(&load_failed));
        async move {
            tokio::time::sleep(config.load_delay).await;
            let policy = config.batching;
            let loaded = tokio::task::spawn_blocking(move || load_and_warm_up(&config)).await;
            let encoder = match loaded {
                Ok(Ok(encoder)) => encoder,
                Ok(Err(error)) => {
                    load_failed.notify_one();
                    return Err(error);
                }
                Err(panic) => {
                    load_failed.notify_one();
                    anyhow::bail!("loading the model panicked: {panic}");
                }
            };
            tokio::spawn(run_batcher(encoder, receiver, policy, metrics));
            state.loaded.store(true, Ordering::Release);
            Ok(())
        }
    });
    let stop = {
        let state = Arc::clone(&state);
        async move {
            tokio::select! {
                () = shutdown => eprintln!("shutting down: draining requests in flight"),
                () = load_failed.notified() => {}
            }
            state.draining.store(true, Ordering::Release);
        }
    };
    axum::serve(listener, router(state)).with_graceful_shutdown(stop).await.context("serving HTTP")?;
    if loader.is_finished() {
        loader.await.context("the model loader stopped")??;
    } else {
        loader.abort();
    }
    Ok(())
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM (what Kubernetes sends to stop a pod).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            eprintln!("warning: cannot listen for Ctrl-C: {error}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                eprintln!("warning: cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits { max_body_bytes: 1 << 20, max_inputs: 4 };

    fn parse(body: &str) -> Result<EmbeddingsRequest, ApiError> {
        parse_embeddings_request(body.as_bytes(), &LIMITS)
    }

    #[test]
    fn input_may_be_one_string_or_an_array_of_strings() {
        assert_eq!(parse(r#"{"input": "a b", "model": "m"}"#).unwrap().texts, ["a b"]);
        assert_eq!(
            parse(r#"{"input": ["x", "", "z"], "encoding_format": "float", "user": "u"}"#).unwrap().texts,
            ["x", "", "z"]
        );
    }

    #[test]
    fn malformed_requests_are_400_with_a_message_naming_the_problem() {
        for (body, needle) in [
            ("not json", "invalid JSON"),
            ("[1]", "JSON object"),
            ("{}", "`input` is required"),
            (r#"{"input": []}"#, "empty array"),
            (r#"{"input": [1, 2]}"#, "token arrays"),
            (r#"{"input": ["a", null]}"#, "`input[1]`"),
            (r#"{"input": 7}"#, "string or an array"),
            (r#"{"input": "a", "model": 3}"#, "`model`"),
            (r#"{"input": "a", "encoding_format": "base64"}"#, "`base64` is not supported"),
            (r#"{"input": "a", "dimensions": 64}"#, "`dimensions`"),
        ] {
            let error = parse(body).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(error.kind, "invalid_request_error");
            assert!(error.message.contains(needle), "{body}: {}", error.message);
        }
    }

    #[test]
    fn more_inputs_than_the_limit_is_413() {
        let error = parse(r#"{"input": ["a", "b", "c", "d", "e"]}"#).unwrap_err();
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(error.message.contains("at most 4"), "{}", error.message);
        assert!(parse(r#"{"input": ["a", "b", "c", "d"]}"#).is_ok());
    }

    #[test]
    fn split_by_lengths_returns_each_requests_share_in_order() {
        assert_eq!(split_by_lengths(vec![1, 2, 3, 4, 5, 6], &[1, 3, 2]), vec![vec![1], vec![2, 3, 4], vec![5, 6]]);
    }

    #[test]
    fn histogram_renders_cumulative_buckets_sum_and_count() {
        let mut histogram = Histogram::new(&[1.0, 2.0]);
        for value in [0.5, 1.0, 1.5, 7.0] {
            histogram.observe(value);
        }
        let mut out = String::new();
        histogram.render("x", "An example.", &mut out);
        assert_eq!(
            out,
            "# HELP x An example.\n# TYPE x histogram\nx_bucket{le=\"1\"} 2\nx_bucket{le=\"2\"} 3\n\
             x_bucket{le=\"+Inf\"} 4\nx_sum 10\nx_count 4\n"
        );
    }

    #[test]
    fn metrics_count_errors_by_status_and_requests_in_flight() {
        let metrics = Metrics::default();
        let guard = metrics.start_request();
        metrics.observe_request(StatusCode::OK, Duration::from_millis(3));
        metrics.observe_request(StatusCode::SERVICE_UNAVAILABLE, Duration::from_millis(1));
        metrics.observe_request(StatusCode::SERVICE_UNAVAILABLE, Duration::from_millis(1));
        metrics.observe_batch(3);
        metrics.observe_encoding(Duration::from_millis(1500));
        metrics.observe_encoding(Duration::from_micros(250));
        let text = metrics.render();
        assert!(text.contains("qtier_encoder_busy_seconds_total 1.50025\n"), "{text}");
        assert!(text.contains("qtier_requests_in_flight 1\n"), "{text}");
        assert!(text.contains("qtier_request_errors_total{status=\"503\"} 2\n"), "{text}");
        assert!(!text.contains("status=\"200\""), "{text}");
        assert!(text.contains("qtier_request_duration_seconds_count 3\n"), "{text}");
        assert!(text.contains("qtier_batch_size_bucket{le=\"2\"} 0\nqtier_batch_size_bucket{le=\"4\"} 1\n"), "{text}");
        drop(guard);
        assert!(metrics.render().contains("qtier_requests_in_flight 0\n"));
    }

    /// Embeds a text as `[its length]` and records the size of every batch.
    #[derive(Default)]
    struct RecordingEncoder {
        batches: Mutex<Vec<usize>>,
    }

    impl TextEncoder for RecordingEncoder {
        fn token_counts(&self, texts: &[&str]) -> anyhow::Result<Vec<usize>> {
            Ok(texts.iter().map(|t| t.len()).collect())
        }

        fn encode(&self, texts: &[&str]) -> anyhow::Result<Vec<Embedded>> {
            self.batches.lock().unwrap().push(texts.len());
            Ok(texts.iter().map(|t| Embedded { embedding: vec![t.len() as f32], tokens: t.len() }).collect())
        }
    }

    fn job(texts: &[&str]) -> (Job, oneshot::Receiver<Result<Vec<Embedded>, String>>) {
        Job::new(texts.iter().map(|t| (*t).to_string()).collect())
    }

    fn lengths(answer: Result<Vec<Embedded>, String>) -> Vec<f32> {
        answer.unwrap().into_iter().map(|e| e.embedding[0]).collect()
    }

    fn policy(max_batch: usize, max_wait: Duration) -> BatchPolicy {
        BatchPolicy { max_batch: NonZeroUsize::new(max_batch).unwrap(), max_wait }
    }

    #[tokio::test]
    async fn queued_requests_share_batches_up_to_max_batch_and_get_their_own_answers() {
        let encoder = Arc::new(RecordingEncoder::default());
        let (sender, receiver) = mpsc::channel(16);
        let mut answers = Vec::new();
        for texts in [&["a"][..], &["bb", "ccc"], &["dddd", "eeeee"], &["ffffff"]] {
            let (job, answer) = job(texts);
            sender.try_send(job).unwrap();
            answers.push(answer);
        }
        drop(sender);
        run_batcher(Arc::clone(&encoder), receiver, policy(4, Duration::from_secs(5)), Arc::default()).await;
        // 1 + 2 texts fit; the next request (2 texts) would pass 4, so it opens the next batch.
        assert_eq!(*encoder.batches.lock().unwrap(), [3, 3]);
        let mut results = Vec::new();
        for answer in answers {
            results.push(lengths(answer.await.unwrap()));
        }
        assert_eq!(results, [vec![1.0], vec![2.0, 3.0], vec![4.0, 5.0], vec![6.0]]);
    }

    #[tokio::test]
    async fn a_request_larger_than_max_batch_is_split_into_encodes_of_at_most_max_batch() {
        let encoder = Arc::new(RecordingEncoder::default());
        let (sender, receiver) = mpsc::channel(4);
        let (job, answer) = job(&["a", "b", "c", "d", "e"]);
        sender.try_send(job).unwrap();
        drop(sender);
        run_batcher(Arc::clone(&encoder), receiver, policy(2, Duration::ZERO), Arc::default()).await;
        assert_eq!(*encoder.batches.lock().unwrap(), [1, 2, 2]);
        assert_eq!(answer.await.unwrap().unwrap().len(), 5);
    }

    #[test]
    fn texts_of_similar_length_stay_in_one_group() {
        assert_eq!(plan_groups(&[12, 9, 15, 11, 20, 14], 32), vec![vec![0, 1, 2, 3, 4, 5]]);
        assert_eq!(plan_groups(&[7], 32), vec![vec![0]]);
        assert!(plan_groups(&[], 32).is_empty());
    }

    #[test]
    fn a_long_text_among_short_ones_gets_its_own_group() {
        // One group: 40 + 8 * 90 = 760 padded tokens' worth; split: 40 + 7 * 22 + 40 + 90 = 324.
        assert_eq!(plan_groups(&[12, 90, 14, 15, 16, 18, 20, 22], 32), vec![vec![0, 2, 3, 4, 5, 6, 7], vec![1]]);
    }

    #[test]
    fn groups_hold_at_most_max_batch_texts_and_every_text_once() {
        let tokens: Vec<usize> = (0..100).map(|i| 5 + (i * 37) % 120).collect();
        for max_batch in [1, 3, 8, 32, 200] {
            let groups = plan_groups(&tokens, max_batch);
            assert!(groups.iter().all(|g| !g.is_empty() && g.len() <= max_batch), "{max_batch}: {groups:?}");
            let mut all: Vec<usize> = groups.concat();
            all.sort_unstable();
            assert_eq!(all, (0..100).collect::<Vec<_>>());
        }
        assert_eq!(plan_groups(&[4; 5], 2).iter().map(Vec::len).collect::<Vec<_>>(), [1, 2, 2]);
    }

    #[tokio::test]
    async fn a_batch_with_one_long_text_is_encoded_in_two_groups_and_answered_in_order() {
        let encoder = Arc::new(RecordingEncoder::default());
        let (sender, receiver) = mpsc::channel(4);
        let long = "x".repeat(300);
        let (job, answer) = job(&["ab", &long, "abc", "a"]);
        sender.try_send(job).unwrap();
        drop(sender);
        run_batcher(Arc::clone(&encoder), receiver, policy(8, Duration::ZERO), Arc::default()).await;
        assert_eq!(*encoder.batches.lock().unwrap(), [3, 1]);
        assert_eq!(lengths(answer.await.unwrap()), [2.0, 300.0, 3.0, 1.0]);
    }

    #[tokio::test]
    async fn the_worker_waits_for_more_requests_within_max_wait() {
        let encoder = Arc::new(RecordingEncoder::default());
        let (sender, receiver) = mpsc::channel(4);
        let worker = tokio::spawn(run_batcher(
            Arc::clone(&encoder),
            receiver,
            policy(8, Duration::from_secs(30)),
            Arc::default(),
        ));
        let (first, first_answer) = job(&["a"]);
        sender.try_send(first).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (second, second_answer) = job(&["b"]);
        sender.try_send(second).unwrap();
        drop(sender);
        assert_eq!(first_answer.await.unwrap().unwrap().len(), 1);
        assert_eq!(second_answer.await.unwrap().unwrap().len(), 1);
        worker.await.unwrap();
        assert_eq!(*encoder.batches.lock().unwrap(), [2], "both requests in one encode");
    }

    #[tokio::test]
    async fn a_lone_request_is_answered_after_max_wait() {
        let encoder = Arc::new(RecordingEncoder::default());
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(run_batcher(Arc::clone(&encoder), receiver, policy(8, Duration::from_millis(5)), Arc::default()));
        let (job, answer) = job(&["abc"]);
        sender.try_send(job).unwrap();
        let answer =
            tokio::time::timeout(Duration::from_secs(60), answer).await.expect("answered without more requests");
        assert_eq!(lengths(answer.unwrap()), [3.0]);
        drop(sender);
    }

    #[tokio::test]
    async fn requests_whose_client_left_are_not_encoded() {
        let encoder = Arc::new(RecordingEncoder::default());
        let (sender, receiver) = mpsc::channel(4);
        let (gone, gone_answer) = job(&["a", "b"]);
        let (kept, kept_answer) = job(&["c"]);
        sender.try_send(gone).unwrap();
        sender.try_send(kept).unwrap();
        drop(gone_answer);
        drop(sender);
        run_batcher(Arc::clone(&encoder), receiver, policy(8, Duration::ZERO), Arc::default()).await;
        assert_eq!(*encoder.batches.lock().unwrap(), [1]);
        assert_eq!(kept_answer.await.unwrap().unwrap().len(), 1);
    }

    #[test]
    fn response_has_openai_shape_and_sums_tokens() {
        let embedded = vec![Embedded { embedding: vec![0.5], tokens: 3 }, Embedded { embedding: vec![1.0], tokens: 4 }];
        let json = serde_json::to_value(embeddings_response("m", embedded)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "object": "list",
                "data": [
                    {"object": "embedding", "index": 0, "embedding": [0.5]},
                    {"object": "embedding", "index": 1, "embedding": [1.0]},
                ],
                "model": "m",
                "usage": {"prompt_tokens": 7, "total_tokens": 7},
            })
        );
    }
}
