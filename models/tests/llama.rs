//! The Llama decoder against transformers' float32 reference on the tiny-llama fixture
//! (`fixtures/tiny-llama/`, made by `make_tiny_llama.py` beside it), and the int8 artifact
//! `qtier quantize` makes of it against the float model.

use std::path::{Path, PathBuf};

use qtier_models::llama::{LlamaModel, argmax};
use qtier_quantize::{LayerSelection, QuantizeOptions, quantize_checkpoint};
use serde_json::Value;

/// Largest allowed |ours - transformers| of a last-position logit (the bound; the
/// reference rounds logits to 5 decimals).
const LOGIT_TOLERANCE: f32 = 1e-3;
/// Largest allowed |cached - recomputed| of a logit: the same arithmetic in another order.
const CACHE_TOLERANCE: f32 = 1e-4;
/// Smallest acceptable cosine between int8 and float last-position logits. Per-channel int8
/// weights and per-token int8 activations on a random-weight model; measured about 0.999.
const INT8_MIN_LOGIT_COSINE: f64 = 0.99;
/// Smallest acceptable fraction of positions where int8's argmax equals float's when both read
/// the same tokens (the prompt and float's 16 greedy tokens). The random-weight fixture's top
/// logits are close (float's margin between its best two is often below int8's logit error), so
/// free-running greedy sequences drift apart after a few tokens; teacher forcing measures the
/// per-step agreement without that drift.
const INT8_MIN_ARGMAX_AGREEMENT: f64 = 0.7;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
}

struct Reference {
    prompt: Vec<u32>,
    last_logits: Vec<f32>,
    argmax_per_position: Vec<u32>,
    greedy_16: Vec<u32>,
}

fn reference() -> Reference {
    let value: Value = serde_json::from_slice(&std::fs::read(fixture().join("reference.json")).unwrap()).unwrap();
    let ids = |name: &str| value[name].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    Reference {
        prompt: ids("prompt"),
        last_logits: value["last_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
        argmax_per_position: ids("argmax_per_position"),
        greedy_16: ids("greedy_16"),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    // NaN if any difference is (`f32::max` would skip it), so `diff < tolerance` fails.
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| if m.is_nan() || d.is_nan() { f32::NAN } else { m.max(d) })
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn fp32_matches_transformers_logits_argmax_and_greedy_tokens() {
    let reference = reference();
    let model = LlamaModel::load(&fixture()).unwrap();
    assert!(!model.is_int8());
    let vocab = model.config().vocab_size;
    let mut cache = model.new_cache(64).unwrap();
    let all = model.forward_all(&reference.prompt, &mut cache).unwrap();
    let last = &all[(reference.prompt.len() - 1) * vocab..];
    let diff = max_abs_diff(last, &reference.last_logits);
    eprintln!("fp32 last-position logits: max abs diff to transformers {diff:.2e}");
    assert!(diff <= LOGIT_TOLERANCE, "max abs diff {diff}");
    let argmax_per_position: Vec<u32> = all.chunks_exact(vocab).map(argmax).collect();
    assert_eq!(argmax_per_position, reference.argmax_per_position);
    let generation = model.generate(&reference.prompt, 16, &mut cache).unwrap();
    assert_eq!(generation.tokens, reference.greedy_16);
    assert_eq!(generation.token_ns.len(), 15);
}

#[test]
fn kv_cache_decoding_matches_full_recomputation() {
    let reference = reference();
    let model = LlamaModel::load(&fixture()).unwrap();
    let vocab = model.config().vocab_size;
    let mut sequence = reference.prompt.clone();
    sequence.extend_from_slice(&reference.greedy_16);
    let mut full_cache = model.new_cache(sequence.len()).unwrap();
    let full = model.forward_all(&sequence, &mut full_cache).unwrap();
    // Prompt in one call, then one token per call, then the rest in chunks of 3.
    let mut cache = model.new_cache(sequence.len()).unwrap();
    let prompt_len = reference.prompt.len();
    let mut incremental = model.forward_all(&sequence[..prompt_len], &mut cache).unwrap();
    for token in &sequence[prompt_len..prompt_len + 7] {
        incremental.extend(model.forward(std::slice::from_ref(token), &mut cache).unwrap());
    }
    for chunk in sequence[prompt_len + 7..].chunks(3) {
        incremental.extend(model.forward_all(chunk, &mut cache).unwrap());
    }
    assert_eq!(cache.len(), sequence.len());
    assert_eq!(incremental.len(), sequence.len() * vocab);
    let diff = max_abs_diff(&incremental, &full);
    assert!(diff <= CACHE_TOLERANCE, "cached decoding differs from recomputation by {diff}");
    // A full cache refuses more tokens instead of overwriting.
    assert!(model.forward(&[1], &mut cache).is_err());
}

#[test]
fn int8_artifact_tracks_fp32_logits_and_greedy_tokens() {
    let reference = reference();
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("tiny-llama-int8");
    quantize_checkpoint(
        &QuantizeOptions {
            input: fixture(),
            output: artifact.clone(),
            selection: LayerSelection::default(),
            allow_nonfinite: false,
            force: false,
            durable: false,
        },
        &|_| {},
    )
    .unwrap();
    let float = LlamaModel::load(&fixture()).unwrap();
    let int8 = LlamaModel::load(&artifact).unwrap();
    assert!(int8.is_int8());
    // The artifact keeps lm_head as the fixture stores it (BF16) and runs it from those weights.
    assert_eq!(int8.weight_dtype(), "int8 (lm_head bf16)");
    assert_eq!((int8.lm_head_dtype(), float.lm_head_dtype()), ("bf16", "f32"));
    assert!(int8.linears().all(|l| l.name() != "lm_head" && l.is_int8()));
    assert_eq!(float.linears().last().map(|l| l.name()), Some("lm_head"));
    assert!(int8.weight_bytes_per_token() * 2 < float.weight_bytes_per_token());

    let (mut float_cache, mut int8_cache) = (float.new_cache(64).unwrap(), int8.new_cache(64).unwrap());
    let float_logits = float.forward(&reference.prompt, &mut float_cache).unwrap();
    let int8_logits = int8.forward(&reference.prompt, &mut int8_cache).unwrap();
    let logit_cosine = cosine(&float_logits, &int8_logits);
    let float_tokens = float.generate(&reference.prompt, 16, &mut float_cache).unwrap().tokens;
    let int8_tokens = int8.generate(&reference.prompt, 16, &mut int8_cache).unwrap().tokens;
    let prefix = float_tokens.iter().zip(&int8_tokens).take_while(|(a, b)| a == b).count();
    let mut forced = reference.prompt.clone();
    forced.extend_from_slice(&float_tokens);
    let argmaxes = |model: &LlamaModel| -> Vec<u32> {
        let mut cache = model.new_cache(forced.len()).unwrap();
        let logits = model.forward_all(&forced, &mut cache).unwrap();
        logits.chunks_exact(model.config().vocab_size).map(argmax).collect()
    };
    let (float_argmax, int8_argmax) = (argmaxes(&float), argmaxes(&int8));
    let agreeing = float_argmax.iter().zip(&int8_argmax).filter(|(a, b)| a == b).count();
    let agreement = agreeing as f64 / forced.len() as f64;
    eprintln!(
        "int8 vs fp32: last-position logit cosine {logit_cosine:.5}, max abs diff {:.4}; greedy tokens: first \
         {prefix} of 16 equal (fp32 {float_tokens:?}, int8 {int8_tokens:?}); teacher-forced argmax agreement \
         {agreeing}/{}",
        max_abs_diff(&float_logits, &int8_logits),
        forced.len()
    );
    assert!(logit_cosine >= INT8_MIN_LOGIT_COSINE, "cosine {logit_cosine}");
    assert_eq!(int8_tokens[0], float_tokens[0], "the first greedy token differs");
    assert!(agreement >= INT8_MIN_ARGMAX_AGREEMENT, "argmax agreement {agreement}");
}

#[test]
fn bad_inputs_are_errors() {
    let model = LlamaModel::load(&fixture()).unwrap();
    let mut cache = model.new_cache(8).unwrap();
    assert!(model.forward(&[], &mut cache).is_err());
    assert!(model.forward(&[5000], &mut cache).is_err());
    assert!(model.forward(&[1; 9], &mut cache).is_err());
    assert!(model.new_cache(0).is_err());
    assert!(model.new_cache(1 << 20).is_err());
}
