#!/usr/bin/env python3
"""PyTorch peer of qtier's CUDA int8 Linear, timed on the same shapes (scripts/gpu-check.sh).

For each shape m x k x n (hot weights, one CUDA stream, same as kernels/examples/gpu_check.rs):
  * int8: per-token absmax quantization of x (f32 -> int8 + scale), ``torch._int_mm`` (int8 x
    int8 -> int32, cuBLASLt tensor cores), dequantization ``acc * x_scale * w_scale + bias``:
    the same work as qtier's fused Linear, as separate PyTorch ops. ``_int_mm`` needs m > 16 on
    some PyTorch versions, so smaller m is padded to 32 rows (reported as ``m_padded``); the
    TOPS use the real m.
  * int8 GEMM alone (``torch._int_mm`` on already-quantized activations).
  * fp16: ``torch.matmul(x_fp16, w_fp16.t())``.
Times are medians of CUDA-event-timed batches. Prints one JSON object per line (and appends
them to --out).
"""
import argparse
import json
import sys

SHAPES = [
    (1, 384, 1536),
    (32, 384, 1536),
    (128, 768, 3072),
    (1, 4096, 4096),
    (1, 4096, 11008),
    (16, 4096, 11008),
    (128, 4096, 4096),
]
# Rows below which torch._int_mm rejects its input on some versions (it requires m > 16).
INT_MM_MIN_ROWS = 17
# Minimum milliseconds per timed batch (timer resolution and launch jitter under 1%).
BATCH_MS = 20.0


def time_ms(torch, fn, repeats):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    calls = 1
    while True:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        if start.elapsed_time(end) >= BATCH_MS or calls >= 1 << 16:
            break
        calls *= 2
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / calls)
    samples.sort()
    return samples[len(samples) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="append the JSON lines to this file")
    parser.add_argument("--quick", action="store_true", help="fewer timing repeats")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print(json.dumps({"peer": "torch", "skipped": "PyTorch is not installed"}))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"peer": "torch", "skipped": "torch.cuda.is_available() is False"}))
        return 0
    repeats = 5 if args.quick else 11
    out = open(args.out, "a") if args.out else None

    def emit(obj):
        line = json.dumps(obj)
        print(line, flush=True)
        if out:
            out.write(line + "\n")

    emit({"peer": "torch", "version": torch.__version__, "device": torch.cuda.get_device_name(0)})
    torch.manual_seed(0)
    dev = torch.device("cuda")
    for m, k, n in SHAPES:
        rows = max(m, INT_MM_MIN_ROWS)
        rows = (rows + 7) // 8 * 8
        x = torch.randn(rows, k, device=dev, dtype=torch.float32)
        w_q = torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8)
        w_t = w_q.t()  # column-major view: the layout cuBLASLt wants for the second operand
        w_scale = torch.rand(n, device=dev, dtype=torch.float32) * 0.01
        bias = torch.randn(n, device=dev, dtype=torch.float32)

        def fused():
            x_scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
            x_q = torch.round(x / x_scale).clamp_(-127, 127).to(torch.int8)
            acc = torch._int_mm(x_q, w_t)
            return acc.to(torch.float32) * x_scale * w_scale + bias

        x_q0 = torch.round(x / (x.abs().amax(dim=1, keepdim=True) / 127.0)).clamp(-127, 127).to(torch.int8)
        x16 = x.to(torch.float16)
        w16 = w_q.to(torch.float16)
        record = {"bench": f"{m}x{k}x{n}", "m_padded": rows}
        ops = 2.0 * m * n * k
        try:
            t = time_ms(torch, fused, repeats)
            record.update(int8_fused_us=round(t * 1e3, 2), int8_fused_tops=round(ops / (t * 1e-3) / 1e12, 2))
            t = time_ms(torch, lambda: torch._int_mm(x_q0, w_t), repeats)
            record.update(int_mm_us=round(t * 1e3, 2), int_mm_tops=round(ops / (t * 1e-3) / 1e12, 2))
        except RuntimeError as e:  # an unsupported shape on this PyTorch / GPU
            record["int8_error"] = str(e).splitlines()[0]
        t = time_ms(torch, lambda: torch.matmul(x16[:m], w16.t()), repeats)
        record.update(fp16_us=round(t * 1e3, 2), fp16_tflops=round(ops / (t * 1e-3) / 1e12, 2))
        emit(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
