#!/usr/bin/env python3
"""Roofline lower bound of a train step from `softprompt bench --json` traffic counters.

Every kernel family takes at least max(flops / peak, bytes / bandwidth); the GEMMs the same with
the tensor-core peak; each launch at least --launch-us of the GPU's front end. The sum is what
the step would cost if every kernel ran at its roofline: a floor to compare a measured step with,
not a prediction. Defaults are an H100 SXM's datasheet figures (HBM3 3.35 TB/s, FP32 67 TFLOP/s,
dense TF32 tensor cores 494 TFLOP/s).

    softprompt bench --device cuda-emu --config gpt2-small --json > step.json
    python3 scripts/roofline.py step.json
"""
import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench_json", help="output of softprompt bench --json")
    parser.add_argument("--bandwidth-tbs", type=float, default=3.35, help="memory TB/s")
    parser.add_argument("--fp32-tflops", type=float, default=67.0, help="CUDA-core TFLOP/s")
    parser.add_argument("--gemm-tflops", type=float, default=494.0,
                        help="GEMM TFLOP/s (TF32 or bf16 tensor cores)")
    parser.add_argument("--launch-us", type=float, default=2.0,
                        help="floor per launch, microseconds (no CUDA graphs)")
    args = parser.parse_args()

    with open(args.bench_json) as f:
        text = f.read()
    bench = json.loads(text[text.index("{"):])
    step = bench.get("per_step", {})
    traffic = bench.get("traffic_by_kernel")
    if traffic is None:
        print("error: no traffic_by_kernel in", args.bench_json,
              "(run bench on a CUDA device or cuda-emu with --json)", file=sys.stderr)
        return 1
    bandwidth = args.bandwidth_tbs * 1e12
    rows = []
    for kernel, t in traffic.items():
        compute = t["flops"] / (args.fp32_tflops * 1e12)
        memory = t["bytes"] / bandwidth
        launches = bench.get("launches_by_kernel", {}).get(kernel, 0.0)
        rows.append((kernel, launches, t["flops"], t["bytes"], max(compute, memory),
                     "compute" if compute > memory else "memory"))
    gemm_compute = step.get("gemm_flops", 0.0) / (args.gemm_tflops * 1e12)
    gemm_memory = step.get("gemm_bytes", 0.0) / bandwidth
    rows.append(("GEMMs (cuBLAS)", step.get("gemm_calls", 0.0), step.get("gemm_flops", 0.0),
                 step.get("gemm_bytes", 0.0), max(gemm_compute, gemm_memory),
                 "compute" if gemm_compute > gemm_memory else "memory"))
    rows.sort(key=lambda r: -r[4])

    print(f"{bench.get('model')} batch {bench.get('batch_size')} x "
          f"{bench.get('seq_len')} + {bench.get('virtual_tokens')} virtual tokens, "
          f"dtype {bench.get('dtype')}, dropout {bench.get('dropout')}")
    print(f"{'kernel family':42} {'launches':>8} {'GFLOP':>9} {'MB':>9} {'floor us':>9}  bound")
    total = 0.0
    for kernel, launches, flops, nbytes, seconds, bound in rows:
        total += seconds
        print(f"{kernel:42} {launches:8.0f} {flops / 1e9:9.3f} {nbytes / 1e6:9.2f} "
              f"{seconds * 1e6:9.1f}  {bound}")
    launches = step.get("kernel_launches", 0.0) + step.get("gemm_calls", 0.0)
    launch_floor = launches * args.launch_us * 1e-6
    print(f"roofline floor of the kernels: {total * 1e3:.3f} ms; "
          f"{launches:.0f} launches at {args.launch_us} us: {launch_floor * 1e3:.3f} ms; "
          f"step floor: {max(total, launch_floor) * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
