//! The BERT-family sentence encoder on an NVIDIA GPU ([`GpuEncoder`], `--device cuda`): the
//! same checkpoint and the same math as [`crate::BertModel`] and [`crate::SentenceEncoder`], every
//! step of the forward on the device through [`qtier_kernels::cuda`].
//!
//! Per forward: embeddings + LayerNorm; per layer the fused QKV projection, fused masked
//! attention, the output projection with the residual add in its epilogue, LayerNorm, the
//! feed-forward block (GELU fused into the first Linear, the residual add into the second) and
//! LayerNorm (post-norm, as BERT); then mean pooling on the device (CLS and max pooling on the
//! host from the final hidden states) and L2 normalization on the host. Only the pooled
//! embeddings (`batch x hidden`) come back.
//!
//! Linear layers stored int8 (compressed-tensors `int-quantized`) run on the fused int8 GEMM
//! ([`CudaQuantizedLinear`]) with the CPU runtime's outlier decomposition ([`Int8Options`], the
//! same rule: [`outlier_rule`]) unless it is turned off, then as plain per-token W8A8; the
//! LayerNorm before an int8 layer writes its quantized input (and its outliers) in the same
//! pass. Float layers run on the fp32 GEMM ([`CudaLinear`]). Without the `cuda` feature, or
//! without a driver or GPU, [`GpuEncoder::load`] returns [`ModelError::Cuda`] saying why; it
//! never panics.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

use qtier_kernels::Activation;
use qtier_kernels::cuda::encoder::{self, AttentionShape, EmbeddingTables, LayerNormParams};
use qtier_kernels::cuda::launch::ATTENTION_MAX_SEQ;
use qtier_kernels::cuda::{
    CudaDevice, CudaError, CudaLinear, CudaQuantizedLinear, DeviceBuffer, OutlierRule, QuantizedActivations,
};

use crate::config::{BertConfig, Pooling, SentenceConfig, model_type, read_json};
use crate::error::{ModelError, Result};
use crate::linear::{Int8Options, MAX_OUTLIER_CHANNELS, OUTLIER_RATIO, OUTLIER_TRIGGER_RATIO};
use crate::sentence::EMBED_BATCH;
use crate::tokenize::{TextTokenizer, TokenBatch};
use crate::weights::ModelWeights;

/// The CPU runtime's outlier decomposition rule ([`OUTLIER_RATIO`], [`OUTLIER_TRIGGER_RATIO`],
/// [`MAX_OUTLIER_CHANNELS`]) for the GPU's int8 layers.
pub fn outlier_rule() -> OutlierRule {
    OutlierRule { ratio: OUTLIER_RATIO, trigger_ratio: OUTLIER_TRIGGER_RATIO, max_channels: MAX_OUTLIER_CHANNELS }
}

/// Where a model runs: `cpu` or `cuda[:N]` (GPU `N`, default 0), as `--device` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDevice {
    /// The CPU kernels.
    #[default]
    Cpu,
    /// The CUDA kernels on GPU `ordinal`.
    Cuda {
        /// The GPU's CUDA ordinal.
        ordinal: usize,
    },
}

impl FromStr for ComputeDevice {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{text}` is not a device: expected cpu, cuda or cuda:N (N = the GPU's ordinal)");
        match text {
            "cpu" => Ok(ComputeDevice::Cpu),
            "cuda" => Ok(ComputeDevice::Cuda { ordinal: 0 }),
            _ => {
                let ordinal = text.strip_prefix("cuda:").ok_or_else(bad)?;
                // Digits only: `usize::from_str` would also take `+1`.
                if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                Ok(ComputeDevice::Cuda { ordinal: ordinal.parse().map_err(|_| bad())? })
            }
        }
    }
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComputeDevice::Cpu => f.write_str("cpu"),
            ComputeDevice::Cuda { ordinal } => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// The name [`GpuEncoder::kernel_variant`] gives the fp32 GEMM of float layers.
pub const FLOAT_GEMM_NAME: &str = "fp32 simt 64x64";

/// The [`ModelError::Cuda`] for GPU `ordinal` that cannot be opened: a build without CUDA
/// says how to rebuild; anything else (no driver, no such GPU) is the driver's reason.
fn open_error(ordinal: usize) -> impl FnOnce(CudaError) -> ModelError {
    move |cause| ModelError::Cuda {
        context: match cause {
            CudaError::NotBuilt => {
                "this qtier was built without CUDA support (rebuild it with `cargo build --release --features cuda`)"
                    .to_string()
            }
            _ => format!("cannot open GPU {ordinal} (without --device cuda, the model runs on the CPU)"),
        },
        cause,
    }
}

/// Checks that GPU `ordinal` can be opened (a quick check before longer work, such as binding a
/// server's port); returns its name.
pub fn check_device(ordinal: usize) -> Result<String> {
    Ok(CudaDevice::new(ordinal).map_err(open_error(ordinal))?.name().to_string())
}

/// Opens GPU `ordinal` with every kernel compiled; the error says why there is no GPU path
/// (not built with CUDA, no driver, no such GPU, no NVRTC).
pub fn open_device(ordinal: usize) -> Result<CudaDevice> {
    let device = CudaDevice::new(ordinal).map_err(open_error(ordinal))?;
    device.preload().map_err(|cause| ModelError::Cuda {
        context: format!("compiling the CUDA kernels for {} ({})", device.name(), device.arch()),
        cause,
    })?;
    Ok(device)
}

/// A Linear layer on the device, int8 or float as the checkpoint stores it.
#[derive(Debug)]
enum GpuLinear {
    Int8(Box<CudaQuantizedLinear>),
    Float(CudaLinear),
}

impl GpuLinear {
    fn is_int8(&self) -> bool {
        matches!(self, GpuLinear::Int8(_))
    }

    /// Queues `out = act(x W^T + b) (+ residual)` for `m` rows. An int8 layer takes `quantized`
    /// (its input already quantized by the LayerNorm before it) when given, else quantizes `x`.
    fn forward(
        &self,
        dev: &CudaDevice,
        x: &DeviceBuffer<f32>,
        quantized: Option<&QuantizedActivations>,
        m: usize,
        residual: Option<&DeviceBuffer<f32>>,
        out: &mut DeviceBuffer<f32>,
    ) -> std::result::Result<(), CudaError> {
        match (self, quantized) {
            (GpuLinear::Int8(layer), Some(q)) => layer.forward_quantized(dev, q, residual, out),
            (GpuLinear::Int8(layer), None) => layer.forward(dev, x, m, residual, out),
            (GpuLinear::Float(layer), _) => layer.forward(dev, x, m, residual, out),
        }
    }

    fn kernel_name(&self, dev: &CudaDevice, m: usize) -> &'static str {
        match self {
            GpuLinear::Int8(layer) => layer.kernel_for(dev, m).name(),
            GpuLinear::Float(_) => FLOAT_GEMM_NAME,
        }
    }
}

#[derive(Debug)]
struct GpuLayer {
    qkv: GpuLinear,
    attention_output: GpuLinear,
    attention_norm: LayerNormParams,
    intermediate: GpuLinear,
    output: GpuLinear,
    output_norm: LayerNormParams,
}

impl GpuLayer {
    fn linears(&self) -> [&GpuLinear; 4] {
        [&self.qkv, &self.attention_output, &self.intermediate, &self.output]
    }
}

/// Element counts of the device buffers of one forward of `batch x seq` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSizes {
    /// Token rows (`batch * seq`).
    pub rows: usize,
    /// `rows x hidden`: hidden states, the attended states and the pre-LayerNorm sums.
    pub hidden: usize,
    /// `rows x 3 hidden`: the fused QKV projection's output.
    pub qkv: usize,
    /// `rows x intermediate`: the feed-forward block's inner activations.
    pub intermediate: usize,
    /// `batch x hidden`: the pooled embeddings.
    pub pooled: usize,
}

impl ForwardSizes {
    /// The sizes for `batch` sequences of `seq` tokens of a model with `config`.
    pub fn new(config: &BertConfig, batch: usize, seq: usize) -> Result<ForwardSizes> {
        let overflow = || ModelError::InvalidInput(format!("a batch of {batch} x {seq} tokens is too large"));
        let mul = |a: usize, b: usize| a.checked_mul(b).ok_or_else(overflow);
        let rows = mul(batch, seq)?;
        Ok(ForwardSizes {
            rows,
            hidden: mul(rows, config.hidden_size)?,
            qkv: mul(rows, mul(3, config.hidden_size)?)?,
            intermediate: mul(rows, config.intermediate_size)?,
            pooled: mul(batch, config.hidden_size)?,
        })
    }
}

/// Device buffers reused across forwards: grown when a batch needs more, never shrunk.
#[derive(Debug)]
struct Workspace {
    capacity: ForwardSizes,
    hidden: DeviceBuffer<f32>,
    attended: DeviceBuffer<f32>,
    sum: DeviceBuffer<f32>,
    qkv: DeviceBuffer<f32>,
    context: DeviceBuffer<f32>,
    intermediate: DeviceBuffer<f32>,
    pooled: DeviceBuffer<f32>,
    /// The int8 input of the layer after a LayerNorm (exactly `rows` rows: the GEMM runs on
    /// every row it holds); only for models with int8 layers.
    quantized: Option<QuantizedActivations>,
}

impl Workspace {
    fn new(dev: &CudaDevice, sizes: &ForwardSizes) -> std::result::Result<Workspace, CudaError> {
        Ok(Workspace {
            capacity: *sizes,
            hidden: dev.zeros(sizes.hidden)?,
            attended: dev.zeros(sizes.hidden)?,
            sum: dev.zeros(sizes.hidden)?,
            qkv: dev.zeros(sizes.qkv)?,
            context: dev.zeros(sizes.hidden)?,
            intermediate: dev.zeros(sizes.intermediate)?,
            pooled: dev.zeros(sizes.pooled)?,
            quantized: None,
        })
    }

    fn holds(&self, sizes: &ForwardSizes) -> bool {
        self.capacity.rows >= sizes.rows && self.capacity.pooled >= sizes.pooled
    }
}

/// Checks a tokenized batch against the model's limits, as the CPU encoder does (the GPU
/// kernels would clamp bad ids instead of failing).
pub fn check_batch(config: &BertConfig, batch: &TokenBatch) -> Result<()> {
    let (b, s) = (batch.batch, batch.seq);
    if b == 0 || s == 0 {
        return Err(ModelError::InvalidInput("empty batch".into()));
    }
    let rows =
        b.checked_mul(s).ok_or_else(|| ModelError::InvalidInput(format!("a batch of {b} x {s} is too large")))?;
    for (what, len) in
        [("ids", batch.ids.len()), ("type_ids", batch.type_ids.len()), ("attention_mask", batch.attention_mask.len())]
    {
        if len != rows {
            return Err(ModelError::InvalidInput(format!("{what} holds {len} values, expected {b} x {s} = {rows}")));
        }
    }
    let max_seq = config.max_position_embeddings.min(ATTENTION_MAX_SEQ);
    if s > max_seq {
        return Err(ModelError::InvalidInput(format!(
            "sequence of {s} tokens is longer than the {max_seq} the model on the GPU takes (positions {}, attention \
             kernel {ATTENTION_MAX_SEQ})",
            config.max_position_embeddings
        )));
    }
    if let Some(bad) = batch.ids.iter().find(|&&id| id as usize >= config.vocab_size) {
        return Err(ModelError::InvalidInput(format!("token id {bad} is outside the vocabulary")));
    }
    if let Some(bad) = batch.type_ids.iter().find(|&&t| t as usize >= config.type_vocab_size) {
        return Err(ModelError::InvalidInput(format!(
            "token type id {bad} is outside the model's {} types",
            config.type_vocab_size
        )));
    }
    Ok(())
}

/// The attention mask as the kernels take it (nonzero = attend).
fn mask_to_i32(mask: &[u32]) -> Vec<i32> {
    mask.iter().map(|&m| i32::from(m != 0)).collect()
}

/// Pooling that runs on the host, from the final hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostPooling {
    Cls,
    Max,
}

/// Pools `hidden` (`batch x seq x width`, row-major) as [`crate::SentenceEncoder::pool`] does:
/// the first token, or the element-wise maximum with padding pushed down by 1e9.
fn pool_on_host(
    hidden: &[f32],
    mask: &[u32],
    batch: usize,
    seq: usize,
    width: usize,
    pooling: HostPooling,
) -> Vec<Vec<f32>> {
    (0..batch)
        .map(|b| {
            let token = |s: usize| &hidden[(b * seq + s) * width..(b * seq + s + 1) * width];
            match pooling {
                HostPooling::Cls => token(0).to_vec(),
                HostPooling::Max => {
                    let mut best = vec![f32::NEG_INFINITY; width];
                    for s in 0..seq {
                        let penalty = (1.0 - mask[b * seq + s] as f32) * -1e9;
                        for (m, v) in best.iter_mut().zip(token(s)) {
                            *m = m.max(v + penalty);
                        }
                    }
                    best
                }
            }
        })
        .collect()
}

/// L2-normalizes each row, with the CPU encoder's floor of 1e-12 on the norm.
fn l2_normalize_rows(rows: &mut [Vec<f32>]) {
    for row in rows {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// Reads the checkpoint's tensors through [`ModelWeights`], as the CPU encoder does.
struct WeightSource {
    weights: ModelWeights,
}

impl WeightSource {
    fn open(dir: &Path) -> Result<WeightSource> {
        Ok(WeightSource { weights: crate::bert::open_weights(dir)? })
    }

    fn float(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.weights.tensor(name, shape)?.flatten_all()?.to_vec1::<f32>()?)
    }

    fn layer_norm(&self, dev: &CudaDevice, prefix: &str, size: usize, eps: f32) -> Result<LayerNormParams> {
        let gamma = self.float(&format!("{prefix}.weight"), &[size])?;
        let beta = self.float(&format!("{prefix}.bias"), &[size])?;
        LayerNormParams::new(dev, &gamma, &beta, eps).map_err(upload_error(prefix))
    }

    /// `modules` (each `out x in`, with bias, one input) as one layer whose output is theirs side
    /// by side; int8 (with the outlier decomposition under `outliers`, when given) when all are
    /// stored int8, float when none is.
    fn linear(
        &self,
        dev: &CudaDevice,
        modules: &[&str],
        (out_features, in_features): (usize, usize),
        activation: Activation,
        outliers: Option<OutlierRule>,
    ) -> Result<GpuLinear> {
        let name = modules.join("+");
        let quantized = modules.iter().filter(|m| self.weights.is_quantized(m)).count();
        let total_out = out_features * modules.len();
        let mut bias = Vec::with_capacity(total_out);
        for module in modules {
            bias.extend(self.float(&format!("{module}.bias"), &[out_features])?);
        }
        if quantized == modules.len() {
            let mut values = Vec::with_capacity(total_out * in_features);
            let mut scales = Vec::with_capacity(total_out);
            for module in modules {
                let weight = self.weights.int8_weight(module, out_features, in_features)?;
                values.extend_from_slice(&weight.values);
                scales.extend_from_slice(&weight.scales);
            }
            let mut layer = CudaQuantizedLinear::new(dev, &values, &scales, Some(&bias), total_out, in_features)
                .map_err(upload_error(&name))?
                .with_activation(activation);
            if let Some(rule) = outliers {
                layer = layer.with_outlier_rule(rule).map_err(upload_error(&name))?;
            }
            Ok(GpuLinear::Int8(Box::new(layer)))
        } else if quantized == 0 {
            let mut weights = Vec::with_capacity(total_out * in_features);
            for module in modules {
                weights.extend(self.float(&format!("{module}.weight"), &[out_features, in_features])?);
            }
            let layer =
                CudaLinear::new(dev, &weights, Some(&bias), total_out, in_features).map_err(upload_error(&name))?;
            Ok(GpuLinear::Float(layer.with_activation(activation)))
        } else {
            Err(self.bad(
                name,
                "some of these modules are stored int8 and some float; the GPU path runs them as one fused layer and \
                 needs them stored alike (quantize all or none of them)"
                    .into(),
            ))
        }
    }

    fn bad(&self, tensor: String, problem: String) -> ModelError {
        ModelError::InvalidWeight { path: self.weights.dir().to_path_buf(), tensor, problem }
    }
}

fn upload_error(what: &str) -> impl FnOnce(CudaError) -> ModelError + '_ {
    move |cause| ModelError::Cuda { context: format!("uploading {what}"), cause }
}

/// A BERT-family sentence encoder whose forward runs on one GPU.
pub struct GpuEncoder {
    dir: PathBuf,
    device: CudaDevice,
    config: BertConfig,
    sentence: SentenceConfig,
    tokenizer: TextTokenizer,
    embeddings: EmbeddingTables,
    layers: Vec<GpuLayer>,
    /// The int8 layers' outlier decomposition (none: plain per-token W8A8).
    outlier_rule: Option<OutlierRule>,
    workspace: Mutex<Option<Workspace>>,
}

impl fmt::Debug for GpuEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuEncoder")
            .field("dir", &self.dir)
            .field("device", &self.device)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GpuEncoder {
    /// Opens GPU `ordinal` and loads the encoder, tokenizer and sentence-transformers
    /// configuration of `dir` onto it, float or int8 as the checkpoint stores each Linear (int8
    /// with the default [`Int8Options`]: the outlier decomposition on).
    /// The device is opened first: without a usable GPU the error says so whatever `dir` holds.
    pub fn load(dir: &Path, ordinal: usize) -> Result<GpuEncoder> {
        GpuEncoder::load_with(dir, ordinal, Int8Options::default())
    }

    /// [`load`](Self::load) with the int8 layers run as `int8` says.
    pub fn load_with(dir: &Path, ordinal: usize, int8: Int8Options) -> Result<GpuEncoder> {
        let device = open_device(ordinal)?;
        let config_path = dir.join("config.json");
        let kind = model_type(&config_path)?;
        if kind != "bert" {
            return Err(ModelError::UnsupportedArchitecture { path: config_path, model_type: kind, supported: "bert" });
        }
        let config: BertConfig = read_json(&config_path)?;
        config.validate(&config_path)?;
        let head_dim = config.head_dim();
        AttentionShape { batch: 1, seq: 1, heads: config.num_attention_heads, head_dim }.validate().map_err(|e| {
            ModelError::InvalidConfig {
                path: config_path.clone(),
                problem: format!(
                    "--device cuda: head dimension {head_dim} is not supported by the attention kernel: {e}"
                ),
            }
        })?;
        let sentence = SentenceConfig::read(dir, config.max_position_embeddings)?;
        let tokenizer = TextTokenizer::from_dir(dir, sentence.max_seq_length)?;

        let source = WeightSource::open(dir)?;
        let dev = &device;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let eps = config.layer_norm_eps as f32;
        let act = config.hidden_act.kernel_activation();
        let outliers = int8.outlier_decomposition.then(outlier_rule);
        let embedding_norm = source.layer_norm(dev, "embeddings.LayerNorm", h, eps)?;
        let embeddings = EmbeddingTables::new(
            dev,
            &source.float("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            &source.float("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?,
            &source.float("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?,
            embedding_norm,
        )
        .map_err(upload_error("the embedding tables"))?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for n in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{n}");
            let [query, key, value] = ["query", "key", "value"].map(|part| format!("{p}.attention.self.{part}"));
            layers.push(GpuLayer {
                qkv: source.linear(dev, &[&query, &key, &value], (h, h), Activation::None, outliers)?,
                attention_output: source.linear(
                    dev,
                    &[&format!("{p}.attention.output.dense")],
                    (h, h),
                    Activation::None,
                    outliers,
                )?,
                attention_norm: source.layer_norm(dev, &format!("{p}.attention.output.LayerNorm"), h, eps)?,
                intermediate: source.linear(dev, &[&format!("{p}.intermediate.dense")], (i, h), act, outliers)?,
                output: source.linear(dev, &[&format!("{p}.output.dense")], (h, i), Activation::None, outliers)?,
                output_norm: source.layer_norm(dev, &format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        device.synchronize().map_err(|cause| ModelError::Cuda { context: "uploading the weights".into(), cause })?;
        Ok(GpuEncoder {
            dir: dir.to_path_buf(),
            device,
            config,
            sentence,
            tokenizer,
            embeddings,
            layers,
            outlier_rule: outliers,
            workspace: Mutex::new(None),
        })
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The GPU the model runs on.
    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// The encoder's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Pooling, normalization and maximum length.
    pub fn sentence_config(&self) -> &SentenceConfig {
        &self.sentence
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// True when any Linear layer runs on the int8 kernels.
    pub fn is_int8(&self) -> bool {
        self.layers.iter().flat_map(GpuLayer::linears).any(GpuLinear::is_int8)
    }

    /// The int8 layers' outlier decomposition rule (none: plain per-token W8A8, or no int8
    /// layers).
    pub fn outlier_rule(&self) -> Option<OutlierRule> {
        self.outlier_rule.filter(|_| self.is_int8())
    }

    /// The GEMM kernels a forward of `rows` token rows runs, distinct, in execution order (e.g.
    /// `mma.m16n8k32 64x64`, or [`FLOAT_GEMM_NAME`] for float layers).
    pub fn kernel_variant(&self, rows: usize) -> String {
        let mut names: Vec<&str> = Vec::new();
        for linear in self.layers.iter().flat_map(GpuLayer::linears) {
            let name = linear.kernel_name(&self.device, rows);
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names.join(", ")
    }

    /// One embedding per text, in order (batches of [`EMBED_BATCH`] texts).
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut embeddings = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(EMBED_BATCH) {
            let batch = self.tokenizer.encode_batch(chunk)?;
            embeddings.extend(self.embed(&batch)?);
        }
        Ok(embeddings)
    }

    /// One embedding per sequence of a tokenized batch: the whole forward on the GPU, then the
    /// pooled `batch x hidden` values copied back (and L2-normalized when the model says so).
    pub fn embed(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        check_batch(&self.config, batch)?;
        let (b, s) = (batch.batch, batch.seq);
        let sizes = ForwardSizes::new(&self.config, b, s)?;
        let failed = |step: &'static str| {
            move |cause: CudaError| ModelError::Cuda { context: format!("{step} (batch of {b} x {s} tokens)"), cause }
        };
        let mut guard = self.workspace.lock().unwrap_or_else(PoisonError::into_inner);
        // A workspace too small for this batch is freed before the larger one is allocated.
        let workspace = match guard.take().filter(|w| w.holds(&sizes)) {
            Some(workspace) => guard.insert(workspace),
            None => guard.insert(Workspace::new(&self.device, &sizes).map_err(failed("allocating GPU memory"))?),
        };
        if self.is_int8() && workspace.quantized.as_ref().is_none_or(|q| q.rows() != sizes.rows) {
            workspace.quantized = None;
            let (rows, hidden) = (sizes.rows, self.config.hidden_size);
            workspace.quantized = Some(
                match self.outlier_rule {
                    Some(rule) => QuantizedActivations::with_outliers(&self.device, rows, hidden, rule),
                    None => QuantizedActivations::new(&self.device, rows, hidden),
                }
                .map_err(failed("allocating GPU memory"))?,
            );
        }
        let hidden = self.forward(batch, workspace).map_err(failed("running the encoder"))?;
        let mut pooled = match hidden {
            Pooled::Device => {
                let values = self.device.download(&workspace.pooled).map_err(failed("copying the embeddings back"))?;
                values[..sizes.pooled].chunks_exact(self.config.hidden_size).map(<[f32]>::to_vec).collect()
            }
            Pooled::Host(pooling) => {
                let values =
                    self.device.download(&workspace.hidden).map_err(failed("copying the hidden states back"))?;
                pool_on_host(&values[..sizes.hidden], &batch.attention_mask, b, s, self.config.hidden_size, pooling)
            }
        };
        if self.sentence.normalize {
            l2_normalize_rows(&mut pooled);
        }
        Ok(pooled)
    }

    /// Queues the forward of `batch` (checked) into `ws`; mean pooling too.
    fn forward(&self, batch: &TokenBatch, ws: &mut Workspace) -> std::result::Result<Pooled, CudaError> {
        let dev = &self.device;
        let (b, s, h) = (batch.batch, batch.seq, self.config.hidden_size);
        let rows = b * s;
        let ids = dev.upload(&batch.ids)?;
        let type_ids = dev.upload(&batch.type_ids)?;
        let mask = dev.upload(&mask_to_i32(&batch.attention_mask))?;
        let Workspace { hidden, attended, sum, qkv, context, intermediate, pooled, quantized, .. } = ws;
        encoder::embedding_layernorm(dev, &self.embeddings, &ids, Some(&type_ids), b, s, hidden)?;
        let shape = AttentionShape {
            batch: b,
            seq: s,
            heads: self.config.num_attention_heads,
            head_dim: self.config.head_dim(),
        };
        // Whether `quantized` holds the int8 form of `hidden` (written by the last LayerNorm).
        let mut hidden_quantized = false;
        for (index, layer) in self.layers.iter().enumerate() {
            let input_q = if hidden_quantized { quantized.as_ref() } else { None };
            layer.qkv.forward(dev, hidden, input_q, rows, None, qkv)?;
            encoder::attention(dev, qkv, Some(&mask), shape, context)?;
            layer.attention_output.forward(dev, context, None, rows, Some(hidden), sum)?;
            let attended_q = if layer.intermediate.is_int8() { quantized.as_mut() } else { None };
            let attended_quantized = attended_q.is_some();
            encoder::layernorm(dev, sum, None, &layer.attention_norm, rows, Some(attended), attended_q)?;
            let input_q = if attended_quantized { quantized.as_ref() } else { None };
            layer.intermediate.forward(dev, attended, input_q, rows, None, intermediate)?;
            layer.output.forward(dev, intermediate, None, rows, Some(attended), sum)?;
            let next_int8 = self.layers.get(index + 1).is_some_and(|next| next.qkv.is_int8());
            let hidden_q = if next_int8 { quantized.as_mut() } else { None };
            hidden_quantized = hidden_q.is_some();
            encoder::layernorm(dev, sum, None, &layer.output_norm, rows, Some(hidden), hidden_q)?;
        }
        Ok(match self.sentence.pooling {
            Pooling::Mean => {
                encoder::mean_pool(dev, hidden, Some(&mask), b, s, h, pooled)?;
                Pooled::Device
            }
            Pooling::Cls => Pooled::Host(HostPooling::Cls),
            Pooling::Max => Pooled::Host(HostPooling::Max),
        })
    }
}

/// Where a forward's pooling happens.
enum Pooled {
    /// In the workspace's `pooled` buffer.
    Device,
    /// On the host, from the workspace's `hidden` buffer.
    Host(HostPooling),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> BertConfig {
        serde_json::from_str(
            r#"{"hidden_size": 384, "num_attention_heads": 12, "num_hidden_layers": 6, "intermediate_size": 1536,
                "max_position_embeddings": 512, "vocab_size": 30522}"#,
        )
        .unwrap()
    }

    #[test]
    fn devices_parse_and_print() {
        assert_eq!("cpu".parse(), Ok(ComputeDevice::Cpu));
        assert_eq!("cuda".parse(), Ok(ComputeDevice::Cuda { ordinal: 0 }));
        assert_eq!("cuda:3".parse(), Ok(ComputeDevice::Cuda { ordinal: 3 }));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:+1", "cuda:-1", "CPU", "cuda:1:2", ""] {
            let error = bad.parse::<ComputeDevice>().unwrap_err();
            assert!(error.contains("expected cpu, cuda or cuda:N"), "{bad}: {error}");
        }
        assert_eq!(ComputeDevice::Cuda { ordinal: 1 }.to_string(), "cuda:1");
        assert_eq!(ComputeDevice::default().to_string(), "cpu");
    }

    #[test]
    fn forward_sizes_of_minilm() {
        let sizes = ForwardSizes::new(&minilm(), 2, 128).unwrap();
        assert_eq!(
            sizes,
            ForwardSizes { rows: 256, hidden: 256 * 384, qkv: 256 * 1152, intermediate: 256 * 1536, pooled: 2 * 384 }
        );
        assert!(matches!(ForwardSizes::new(&minilm(), usize::MAX / 2, 128), Err(ModelError::InvalidInput(_))));
    }

    fn batch(b: usize, s: usize) -> TokenBatch {
        TokenBatch { batch: b, seq: s, ids: vec![101; b * s], type_ids: vec![0; b * s], attention_mask: vec![1; b * s] }
    }

    #[test]
    fn batches_are_checked_like_the_cpu_encoder_does() {
        let config = minilm();
        assert!(check_batch(&config, &batch(2, 16)).is_ok());
        let message = |t: &TokenBatch| check_batch(&config, t).unwrap_err().to_string();
        assert!(message(&batch(0, 16)).contains("empty batch"));
        assert!(message(&batch(1, 513)).contains("longer than the 512"));
        let mut bad = batch(1, 4);
        bad.ids[2] = 30522;
        assert!(message(&bad).contains("token id 30522 is outside the vocabulary"));
        let mut bad = batch(1, 4);
        bad.type_ids[0] = 2;
        assert!(message(&bad).contains("token type id 2"));
        let mut bad = batch(2, 4);
        bad.attention_mask.pop();
        assert!(message(&bad).contains("attention_mask holds 7 values, expected 2 x 4 = 8"));
    }

    #[test]
    fn mask_and_host_pooling_follow_the_padded_layout() {
        // Two sequences of 3 tokens, width 2; the second has one padding token at the end.
        let hidden = [1.0, -1.0, 2.0, 5.0, 3.0, 0.0, /* second */ 4.0, 1.0, -2.0, 2.0, 9.0, 9.0];
        let mask = [1, 1, 1, 1, 1, 0];
        assert_eq!(mask_to_i32(&[1, 0, 7]), [1, 0, 1]);
        assert_eq!(pool_on_host(&hidden, &mask, 2, 3, 2, HostPooling::Cls), [vec![1.0, -1.0], vec![4.0, 1.0]]);
        assert_eq!(pool_on_host(&hidden, &mask, 2, 3, 2, HostPooling::Max), [vec![3.0, 5.0], vec![4.0, 2.0]]);
        let mut rows = vec![vec![3.0, 4.0], vec![0.0, 0.0]];
        l2_normalize_rows(&mut rows);
        assert_eq!(rows, [vec![0.6, 0.8], vec![0.0, 0.0]]);
    }

    #[test]
    fn without_a_gpu_the_device_check_fails_clearly() {
        match check_device(0) {
            Ok(name) => eprintln!("a GPU is present ({name}): nothing to check"),
            Err(error) => assert!(error.to_string().starts_with("--device cuda: "), "{error}"),
        }
    }

    #[test]
    fn without_a_gpu_load_returns_the_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        match GpuEncoder::load(dir.path(), 0) {
            Err(error @ ModelError::Cuda { .. }) => {
                let message = error.to_string();
                assert!(message.starts_with("--device cuda: "), "{message}");
                if cfg!(feature = "cuda") {
                    assert!(message.contains("cannot open GPU 0"), "{message}");
                } else {
                    assert!(message.contains("built without CUDA support"), "{message}");
                    assert!(message.contains("--features cuda"), "{message}");
                }
            }
            // A GPU host: the device opened, and the empty directory is the error.
            Err(ModelError::Io { path, .. }) => {
                eprintln!("a GPU is present: checked the missing-model error instead ({})", path.display())
            }
            other => panic!("expected the --device cuda error, got {other:?}"),
        }
    }
}
