//! The CUDA path on the CPU emulator (`--features cuda` with the libcuda shim on `LD_LIBRARY_PATH`,
//! as `scripts/test.sh` runs it: the driver backend, NVRTC's cubins and cuLaunchKernel's parameter
//! passing, with the kernels run by the emulator): the kernels' `.cu` sources, compiled as C++
//! (kernels/cuda/emulator), run through the same host code as on a GPU, checked against the CPU
//! kernels and f64 references. This catches what the NVRTC compile test cannot: wrong indexing,
//! reductions, barriers, argument lists (every launch is checked against the kernel's declared
//! parameters, which the NVRTC test checks against the PTX) and host orchestration, on both
//! emulated architectures (device 0: sm_75, device 1: sm_86), so every GEMM kernel runs. It does
//! not replace the on-device check (`scripts/gpu-check.sh`): blocks run one at a time, and a GPU's
//! float rounding (FMA contraction) differs.
#![cfg(feature = "cuda")]

use qtier_kernels::cuda::encoder::{self, AttentionShape, EmbeddingTables, LayerNormParams};
use qtier_kernels::cuda::{
    CudaDevice, CudaError, CudaLinear, CudaQuantizedLinear, GemmKernel, QuantizedActivations, linear,
};
use qtier_kernels::quant::quantize_row;
use qtier_kernels::{Activation, QuantizedLinear};

#[path = "support/outliers.rs"]
mod outliers;

use outliers::{RULE, decomposed_output, select_outliers, with_planted_outliers};

/// Outputs of the int8 layer against the CPU layer, per unit of `max(1, |cpu|)`: the
/// accumulators are exact, the epilogue's rounding order differs (`fmaf` on the GPU side).
const INT8_TOLERANCE: f32 = 1e-5;

/// Float kernels against f64 references, per unit of `max(1, |reference|)`.
const FLOAT_TOLERANCE: f64 = 1e-5;

/// Emulated device `ordinal`, through the driver backend on the libcuda shim
/// (kernels/cuda/emulator/libcuda.cpp, which `scripts/test.sh` builds and puts on
/// `LD_LIBRARY_PATH`). A real GPU is refused: `scripts/gpu-check.sh` is its check.
fn emulated(ordinal: usize) -> CudaDevice {
    let dev = CudaDevice::new(ordinal).unwrap_or_else(|e| {
        panic!(
            "emulated device {ordinal}: {e} (with --features cuda these tests need the libcuda shim: scripts/test.sh)"
        )
    });
    assert!(dev.name().starts_with("qtier CUDA emulator"), "{} is not the emulator", dev.name());
    dev
}

fn device() -> CudaDevice {
    emulated(0)
}

/// Both emulated devices: sm_75 (mma.m8n8k16) and sm_86 (mma.m16n8k32 with cp.async).
fn devices() -> [CudaDevice; 2] {
    [0, 1].map(emulated)
}

/// Deterministic values in [-1, 1] (xorshift).
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn weights(seed: u64, len: usize) -> Vec<i8> {
    values(seed, len).iter().map(|v| (v * 127.0).round() as i8).collect()
}

fn worst_relative_error(found: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(found.len(), expected.len());
    found
        .iter()
        .zip(expected)
        .map(|(f, e)| (f - e).abs() / e.abs().max(1.0))
        .fold(0.0, |w, e| if e.is_nan() { f32::INFINITY } else { w.max(e) })
}

/// A layer's test data: `m x k` input (with a zero row), `n x k` weights, scales, bias.
struct Case {
    k: usize,
    n: usize,
    x: Vec<f32>,
    w: Vec<i8>,
    scales: Vec<f32>,
    bias: Vec<f32>,
}

impl Case {
    fn new(m: usize, k: usize, n: usize, seed: u64) -> Case {
        let mut x: Vec<f32> = values(seed, m * k).iter().map(|v| v * 3.0).collect();
        if m > 2 {
            x[k..2 * k].fill(0.0);
        }
        Case {
            k,
            n,
            x,
            w: weights(seed + 1, n * k),
            scales: values(seed + 2, n).iter().map(|v| 0.001 + v.abs() * 0.01).collect(),
            bias: values(seed + 3, n),
        }
    }

    fn cpu_layer(&self, activation: Activation) -> QuantizedLinear {
        QuantizedLinear::new(&self.w, &self.scales, Some(&self.bias), self.n, self.k)
            .unwrap()
            .with_activation(activation)
    }

    fn gpu_layer(&self, dev: &CudaDevice, activation: Activation) -> CudaQuantizedLinear {
        CudaQuantizedLinear::new(dev, &self.w, &self.scales, Some(&self.bias), self.n, self.k)
            .unwrap()
            .with_activation(activation)
    }
}

/// Odd shapes: k not a multiple of 32 or of 4, m past one dp4a block.
const SHAPES: [(usize, usize); 5] = [(3, 77), (9, 100), (1, 5), (17, 64), (4, 384)];

#[test]
fn activation_quantization_matches_the_cpu_bit_for_bit() {
    let dev = device();
    for (i, &(m, k)) in SHAPES.iter().enumerate() {
        let c = Case::new(m, k, 8, 10 + i as u64);
        let mut qa = QuantizedActivations::new(&dev, m, k).unwrap();
        linear::quantize_rows(&dev, &dev.upload(&c.x).unwrap(), &mut qa).unwrap();
        let (q, scales, kp) = (dev.download(qa.values()).unwrap(), dev.download(qa.scales()).unwrap(), qa.k_padded());
        for row in 0..m {
            let mut expected = vec![0i8; k];
            let scale = quantize_row(&c.x[row * k..(row + 1) * k], &mut expected);
            assert_eq!(&q[row * kp..row * kp + k], &expected[..], "{m}x{k} row {row}");
            assert!(q[row * kp + k..(row + 1) * kp].iter().all(|&v| v == 0), "{m}x{k} row {row}: padding");
            assert_eq!(scales[row].to_bits(), scale.to_bits(), "{m}x{k} row {row}");
        }
    }
}

/// Shapes on which the default choice takes every GEMM kernel: m <= 8 takes dp4a, split over k
/// but for 2 x 5200 on sm_75 (82 plain blocks, 2 per multiprocessor); on sm_86 (80
/// multiprocessors) 300 x 4100 takes the 128 x 128 mma.m16n8k32 tile and the rest the 64 x 64
/// one; on sm_75, mma.m8n8k16. Each shape also runs forced onto every kernel the device has.
const GEMM_SHAPES: [(usize, usize, usize); 7] =
    [(3, 77, 129), (9, 100, 33), (1, 5, 8), (2, 40, 5200), (17, 64, 250), (70, 130, 31), (300, 96, 4100)];

#[test]
fn the_int8_linear_matches_the_cpu_layer_on_every_kernel() {
    let mut chosen = Vec::new();
    for dev in devices() {
        for (i, &(m, k, n)) in GEMM_SHAPES.iter().enumerate() {
            let c = Case::new(m, k, n, 20 + i as u64);
            let cpu = c.cpu_layer(Activation::GeluErf);
            chosen.push(c.gpu_layer(&dev, Activation::GeluErf).kernel_for(&dev, m));
            let xq: Vec<i8> = weights(30 + i as u64, m * k);
            let expected_acc = cpu.accumulate_i32(cpu.kernel(), &xq, m).unwrap();
            let residual = values(40 + i as u64, m * n);
            let mut expected = vec![0.0; m * n];
            cpu.forward_into(&c.x, m, &mut expected, Some(&residual)).unwrap();
            let (x, r) = (dev.upload(&c.x).unwrap(), dev.upload(&residual).unwrap());
            for kernel in GemmKernel::ALL {
                let gpu = c.gpu_layer(&dev, Activation::GeluErf).with_kernel(kernel);
                let what = format!("{} {m}x{k}x{n} {kernel:?}", dev.name());
                let acc = gpu.accumulate_i32(&dev, &xq, m, kernel);
                if !kernel.runs_on(dev.arch()) {
                    assert!(matches!(acc, Err(CudaError::UnsupportedArch { .. })), "{what}: {acc:?}");
                    let mut out = dev.zeros::<f32>(m * n).unwrap();
                    let refused = gpu.forward(&dev, &x, m, Some(&r), &mut out);
                    assert!(matches!(refused, Err(CudaError::UnsupportedArch { .. })), "{what}: {refused:?}");
                    continue;
                }
                // The exact accumulators.
                assert_eq!(acc.unwrap(), expected_acc, "{what}");
                // The fused layer: quantization, GEMM, bias, GELU, residual; f32 and f16 output.
                let mut out = dev.zeros::<f32>(m * n).unwrap();
                gpu.forward(&dev, &x, m, Some(&r), &mut out).unwrap();
                let worst = worst_relative_error(&dev.download(&out).unwrap(), &expected);
                assert!(worst <= INT8_TOLERANCE, "{what}: {worst:e}");
                let mut half = dev.zeros::<u16>(m * n).unwrap();
                gpu.forward_f16(&dev, &x, m, Some(&r), &mut half).unwrap();
                let half: Vec<f32> =
                    dev.download(&half).unwrap().into_iter().map(|h| half::f16::from_bits(h).to_f32()).collect();
                let worst = worst_relative_error(&half, &expected);
                assert!(worst <= 1e-3, "{what} f16: {worst:e}");
            }
        }
    }
    for kernel in GemmKernel::ALL {
        assert!(chosen.contains(&kernel), "the default choice never took {kernel:?}: {chosen:?}");
    }
}

#[test]
fn outliers_are_selected_zeroed_and_added_back_as_on_the_cpu() {
    let dev = device();
    for (i, &(m, k, n)) in [(7, 384, 40), (6, 1536, 24), (4, 1000, 9)].iter().enumerate() {
        let c = Case::new(m, k, n, 60 + i as u64);
        let x = with_planted_outliers(&c.x, m, k);
        let x_dev = dev.upload(&x).unwrap();
        let mut qa = QuantizedActivations::with_outliers(&dev, m, k, RULE).unwrap();
        linear::quantize_rows(&dev, &x_dev, &mut qa).unwrap();
        let lists = qa.download_outliers(&dev).unwrap().expect("outlier lists");
        let (q, scales, kp) = (dev.download(qa.values()).unwrap(), dev.download(qa.scales()).unwrap(), qa.k_padded());
        let mut zeroed = x.clone();
        let mut taken = 0;
        for row in 0..m {
            let (expected, clear) = select_outliers(&x[row * k..(row + 1) * k]);
            assert!(clear, "{m}x{k} row {row}: planted outliers too near a threshold");
            let bits = |l: &[(usize, f32)]| l.iter().map(|(c, v)| (*c, v.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&lists[row]), bits(&expected), "{m}x{k} row {row}");
            for &(channel, _) in &expected {
                zeroed[row * k + channel] = 0.0;
            }
            let mut expected_q = vec![0i8; k];
            let scale = quantize_row(&zeroed[row * k..(row + 1) * k], &mut expected_q);
            assert_eq!(&q[row * kp..row * kp + k], &expected_q[..], "{m}x{k} row {row}");
            assert_eq!(scales[row].to_bits(), scale.to_bits(), "{m}x{k} row {row}");
            taken += expected.len();
        }
        assert!(taken >= 3, "{m}x{k}: the planted outliers were not taken");
        // The layer with the rule, with and without an activation, against the CPU's
        // decomposition; activations quantized beforehand carry their lists and give the same.
        let residual = values(70 + i as u64, m * n);
        let r = dev.upload(&residual).unwrap();
        for activation in [Activation::GeluErf, Activation::None] {
            let expected = decomposed_output(
                &c.cpu_layer(Activation::None),
                &c.w,
                &c.scales,
                &zeroed,
                &lists,
                activation,
                &residual,
            )
            .unwrap();
            let layer = c.gpu_layer(&dev, activation).with_outlier_rule(RULE).unwrap();
            let mut out = dev.zeros::<f32>(m * n).unwrap();
            layer.forward(&dev, &x_dev, m, Some(&r), &mut out).unwrap();
            let worst = worst_relative_error(&dev.download(&out).unwrap(), &expected);
            assert!(worst <= INT8_TOLERANCE, "{m}x{k}x{n} {activation:?}: {worst:e}");
            let mut again = dev.zeros::<f32>(m * n).unwrap();
            c.gpu_layer(&dev, activation).forward_quantized(&dev, &qa, Some(&r), &mut again).unwrap();
            assert_eq!(dev.download(&again).unwrap(), dev.download(&out).unwrap(), "{m}x{k}x{n} {activation:?}");
        }
    }
}

/// LayerNorm of `x` (+ `residual`) in f64.
fn layernorm_reference(x: &[f32], residual: Option<&[f32]>, gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let h = gamma.len();
    let mut out = Vec::with_capacity(x.len());
    for (row, values) in x.chunks_exact(h).enumerate() {
        let v: Vec<f64> =
            (0..h).map(|i| f64::from(values[i]) + residual.map_or(0.0, |r| f64::from(r[row * h + i]))).collect();
        let mean = v.iter().sum::<f64>() / h as f64;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / h as f64;
        let rstd = 1.0 / (var + f64::from(eps)).sqrt();
        out.extend((0..h).map(|i| ((v[i] - mean) * rstd * f64::from(gamma[i]) + f64::from(beta[i])) as f32));
    }
    out
}

fn assert_close(found: &[f32], expected: &[f32], what: &str) {
    assert_eq!(found.len(), expected.len(), "{what}");
    for (i, (f, e)) in found.iter().zip(expected).enumerate() {
        let error = f64::from((f - e).abs()) / f64::from(e.abs()).max(1.0);
        assert!(error <= FLOAT_TOLERANCE, "{what}[{i}]: {f} vs {e}");
    }
}

#[test]
fn layernorm_and_its_fused_quantization_match_references() {
    let dev = device();
    let (rows, h, eps) = (5, 96, 1e-12);
    let (gamma, beta) = (values(80, h).iter().map(|v| 1.0 + v * 0.5).collect::<Vec<_>>(), values(81, h));
    let mut x: Vec<f32> = values(82, rows * h).iter().map(|v| v * 4.0).collect();
    x[2 * h + 5] = 200.0;
    let residual = values(83, rows * h);
    let norm = LayerNormParams::new(&dev, &gamma, &beta, eps).unwrap();
    let (x_dev, r_dev) = (dev.upload(&x).unwrap(), dev.upload(&residual).unwrap());
    let expected = layernorm_reference(&x, Some(&residual), &gamma, &beta, eps);
    for rule in [None, Some(RULE)] {
        let mut out = dev.zeros::<f32>(rows * h).unwrap();
        let mut qa = match rule {
            Some(rule) => QuantizedActivations::with_outliers(&dev, rows, h, rule).unwrap(),
            None => QuantizedActivations::new(&dev, rows, h).unwrap(),
        };
        encoder::layernorm(&dev, &x_dev, Some(&r_dev), &norm, rows, Some(&mut out), Some(&mut qa)).unwrap();
        let y = dev.download(&out).unwrap();
        assert_close(&y, &expected, "layernorm");
        // The fused quantization is that of the LayerNorm's own output, outliers taken out.
        let (q, scales, kp) = (dev.download(qa.values()).unwrap(), dev.download(qa.scales()).unwrap(), qa.k_padded());
        let lists = qa.download_outliers(&dev).unwrap();
        for row in 0..rows {
            let mut values = y[row * h..(row + 1) * h].to_vec();
            if let Some(lists) = &lists {
                let (expected_list, clear) = select_outliers(&values);
                assert!(clear, "row {row}: too near a threshold");
                assert_eq!(lists[row].len(), expected_list.len(), "row {row}");
                for (&(channel, value), &(expected_channel, _)) in lists[row].iter().zip(&expected_list) {
                    assert_eq!(channel, expected_channel, "row {row}");
                    assert_eq!(value.to_bits(), values[channel].to_bits(), "row {row}");
                    values[channel] = 0.0;
                }
            }
            let mut expected_q = vec![0i8; h];
            let scale = quantize_row(&values, &mut expected_q);
            assert_eq!(&q[row * kp..row * kp + h], &expected_q[..], "row {row}");
            assert_eq!(scales[row].to_bits(), scale.to_bits(), "row {row}");
        }
        if let Some(lists) = lists {
            assert!(!lists[2].is_empty(), "the spiked row has an outlier");
        }
        // The quantization alone (no f32 output) gives the same int8 rows.
        let mut alone = QuantizedActivations::new(&dev, rows, h).unwrap();
        encoder::layernorm(&dev, &x_dev, Some(&r_dev), &norm, rows, None, Some(&mut alone)).unwrap();
        if rule.is_none() {
            assert_eq!(dev.download(alone.values()).unwrap(), q);
        }
    }
}

#[test]
fn embeddings_attention_and_pooling_match_references() {
    let dev = device();
    let (batch, seq, heads, head_dim) = (2, 11, 2, 8);
    let hidden = heads * head_dim;
    let (vocab, positions, types) = (30, 16, 2);
    let (word, position, token_type) =
        (values(90, vocab * hidden), values(91, positions * hidden), values(92, types * hidden));
    let (gamma, beta) = (values(93, hidden), values(94, hidden));
    let norm = LayerNormParams::new(&dev, &gamma, &beta, 1e-12).unwrap();
    let tables = EmbeddingTables::new(&dev, &word, &position, &token_type, norm).unwrap();
    let rows = batch * seq;
    let ids: Vec<u32> = (0..rows as u32).map(|r| (r * 7 + 3) % vocab as u32).collect();
    let type_ids: Vec<u32> = (0..rows as u32).map(|r| u32::from(r % seq as u32 > 5)).collect();
    let mut out = dev.zeros::<f32>(rows * hidden).unwrap();
    let (ids_dev, types_dev) = (dev.upload(&ids).unwrap(), dev.upload(&type_ids).unwrap());
    encoder::embedding_layernorm(&dev, &tables, &ids_dev, Some(&types_dev), batch, seq, &mut out).unwrap();
    let summed: Vec<f32> = (0..rows)
        .flat_map(|r| {
            let (id, ty, pos) = (ids[r] as usize, type_ids[r] as usize, r % seq);
            (0..hidden)
                .map(|i| word[id * hidden + i] + position[pos * hidden + i] + token_type[ty * hidden + i])
                .collect::<Vec<_>>()
        })
        .collect();
    assert_close(&dev.download(&out).unwrap(), &layernorm_reference(&summed, None, &gamma, &beta, 1e-12), "embeddings");

    // Attention with the second sequence's last 4 tokens masked.
    let qkv: Vec<f32> = values(95, rows * 3 * hidden).iter().map(|v| v * 2.0).collect();
    let mask: Vec<i32> = (0..rows).map(|r| i32::from(!(r >= seq && r % seq >= seq - 4))).collect();
    let mut attended = dev.zeros::<f32>(rows * hidden).unwrap();
    let shape = AttentionShape { batch, seq, heads, head_dim };
    let mask_dev = dev.upload(&mask).unwrap();
    encoder::attention(&dev, &dev.upload(&qkv).unwrap(), Some(&mask_dev), shape, &mut attended).unwrap();
    let mut expected = vec![0f32; rows * hidden];
    let scale = 1.0 / (head_dim as f64).sqrt();
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..seq {
                let at = |t: usize, part: usize, c: usize| {
                    f64::from(qkv[(b * seq + t) * 3 * hidden + part * hidden + h * head_dim + c])
                };
                let scores: Vec<Option<f64>> = (0..seq)
                    .map(|j| {
                        (mask[b * seq + j] != 0)
                            .then(|| (0..head_dim).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>() * scale)
                    })
                    .collect();
                let top = scores.iter().flatten().fold(f64::NEG_INFINITY, |m, s| m.max(*s));
                let weights: Vec<f64> = scores.iter().map(|s| s.map_or(0.0, |s| (s - top).exp())).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..head_dim {
                    let v: f64 = (0..seq).map(|j| weights[j] * at(j, 2, c)).sum::<f64>() / total;
                    expected[(b * seq + i) * hidden + h * head_dim + c] = v as f32;
                }
            }
        }
    }
    let attended_host = dev.download(&attended).unwrap();
    assert_close(&attended_host, &expected, "attention");

    // Mean pooling over the unmasked tokens.
    let mut pooled = dev.zeros::<f32>(batch * hidden).unwrap();
    encoder::mean_pool(&dev, &attended, Some(&mask_dev), batch, seq, hidden, &mut pooled).unwrap();
    let expected: Vec<f32> = (0..batch)
        .flat_map(|b| {
            let kept: Vec<usize> = (0..seq).filter(|&s| mask[b * seq + s] != 0).collect();
            let attended_host = &attended_host;
            (0..hidden)
                .map(move |c| {
                    kept.iter().map(|&s| attended_host[(b * seq + s) * hidden + c]).sum::<f32>() / kept.len() as f32
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_close(&dev.download(&pooled).unwrap(), &expected, "mean pooling");

    // GELU and the residual add, in place.
    let x = values(96, 1000);
    let r = values(97, 1000);
    let mut x_dev = dev.upload(&x).unwrap();
    encoder::gelu_erf_in_place(&dev, &mut x_dev, 1000).unwrap();
    encoder::residual_add_in_place(&dev, &mut x_dev, &dev.upload(&r).unwrap(), 1000).unwrap();
    let expected: Vec<f32> = x.iter().zip(&r).map(|(v, r)| Activation::GeluErf.apply(*v) + r).collect();
    let found = dev.download(&x_dev).unwrap();
    let worst = worst_relative_error(&found, &expected);
    assert!(worst <= qtier_kernels::activation::ACTIVATION_ABS_TOLERANCE * 2.0, "gelu + residual: {worst:e}");
}

#[test]
fn the_float_linear_matches_an_f64_reference() {
    let dev = device();
    for (i, &(m, k, n)) in [(3, 77, 129), (70, 33, 65), (1, 16, 8)].iter().enumerate() {
        let x = values(100 + i as u64, m * k);
        let w = values(110 + i as u64, n * k);
        let bias = values(120 + i as u64, n);
        let residual = values(130 + i as u64, m * n);
        let layer = CudaLinear::new(&dev, &w, Some(&bias), n, k).unwrap().with_activation(Activation::Relu);
        let mut out = dev.zeros::<f32>(m * n).unwrap();
        layer.forward(&dev, &dev.upload(&x).unwrap(), m, Some(&dev.upload(&residual).unwrap()), &mut out).unwrap();
        let expected: Vec<f32> = (0..m * n)
            .map(|idx| {
                let (row, col) = (idx / n, idx % n);
                let dot: f64 = (0..k).map(|j| f64::from(x[row * k + j]) * f64::from(w[col * k + j])).sum();
                ((dot + f64::from(bias[col])).max(0.0) + f64::from(residual[idx])) as f32
            })
            .collect();
        assert_close(&dev.download(&out).unwrap(), &expected, &format!("{m}x{k}x{n}"));
    }
}
