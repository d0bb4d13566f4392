//! `forward_into_with_activation` and `activation::apply_in_place` compose to the fused layer.

use qtier_kernels::activation::{ACTIVATION_ABS_TOLERANCE, apply_in_place};
use qtier_kernels::{Activation, QuantizedLinear};

#[test]
fn split_activation_equals_the_fused_epilogue() {
    let (m, k, n) = (5, 70, 33);
    let weights: Vec<i8> = (0..n * k).map(|i| ((i * 37 % 255) as i32 - 127) as i8).collect();
    let scales: Vec<f32> = (0..n).map(|j| 0.001 + j as f32 * 1e-4).collect();
    let bias: Vec<f32> = (0..n).map(|j| (j as f32 - 16.0) * 0.05).collect();
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 101) as f32 - 50.0) / 25.0).collect();
    for activation in [Activation::GeluErf, Activation::GeluTanh, Activation::Relu, Activation::Silu] {
        let layer = QuantizedLinear::new(&weights, &scales, Some(&bias), n, k).unwrap().with_activation(activation);
        let fused = layer.forward(&x, m).unwrap();
        let mut split = vec![0.0; m * n];
        layer.forward_into_with_activation(&x, m, &mut split, None, Activation::None).unwrap();
        apply_in_place(activation, &mut split);
        for (a, b) in fused.iter().zip(&split) {
            assert!((a - b).abs() <= ACTIVATION_ABS_TOLERANCE * a.abs().max(1.0), "{activation}: {a} vs {b}");
        }
        assert_eq!(layer.activation(), activation, "the override does not change the layer");
    }
}
