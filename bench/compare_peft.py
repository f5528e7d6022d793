#!/usr/bin/env python3
"""Side-by-side benchmark: one prompt-tuning train step in PyTorch + PEFT vs `softprompt bench`.

Same work on both sides: GPT-2 small (124M) config with random weights, batch 8, 128 text tokens,
20 virtual tokens, fp32, CPU, the same thread count, the base model in train mode (dropout on, as
PEFT trains), AdamW on the prompt only. Runs alternate (softprompt, torch, softprompt, ...) in
separate processes so that each peak RSS is its own, and the medians are reported. Also compares
generation throughput with a KV cache against transformers' generate().

    python3 bench/compare_peft.py --binary build/cli/softprompt [--rounds 3] [--threads 2]

Development tool: needs torch, transformers and peft from PyPI (not needed by the build or tests).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def torch_worker(args):
    import torch
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())
    model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                     num_virtual_tokens=args.virtual_tokens))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, 50257, (args.batch, args.seq))
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    mean = sum(times) / len(times)
    result = {"ms_per_step": mean * 1e3, "tokens_per_s": args.batch * args.seq / mean}
    if args.gen_tokens > 0:
        model.eval()
        prompt = torch.randint(0, 50257, (1, args.gen_prompt))
        with torch.no_grad():
            start = time.perf_counter()
            model.generate(input_ids=prompt, max_new_tokens=1, do_sample=False)
            prefill = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(input_ids=prompt, max_new_tokens=args.gen_tokens, do_sample=False,
                           min_new_tokens=args.gen_tokens)
            elapsed = time.perf_counter() - start - prefill
        result["generate_tokens_per_s"] = (args.gen_tokens - 1) / elapsed
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps(result))


def run_json(command, env):
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"command failed ({out.returncode}): {' '.join(command)}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="build/cli/softprompt")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--gen-prompt", type=int, default=32)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        torch_worker(args)
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), SOFTPROMPT_NUM_THREADS=str(args.threads))
    ours_cmd = [args.binary, "bench", "--json", "--threads", str(args.threads), "--batch-size", str(args.batch),
                "--seq-len", str(args.seq), "--virtual-tokens", str(args.virtual_tokens), "--steps",
                str(args.steps), "--warmup", str(args.warmup), "--gen-prompt", str(args.gen_prompt),
                "--gen-tokens", str(args.gen_tokens)]
    torch_cmd = [sys.executable, __file__, "--worker", "--threads", str(args.threads), "--batch", str(args.batch),
                 "--seq", str(args.seq), "--virtual-tokens", str(args.virtual_tokens), "--steps", str(args.steps),
                 "--warmup", str(args.warmup), "--gen-prompt", str(args.gen_prompt), "--gen-tokens",
                 str(args.gen_tokens)]
    ours, theirs = [], []
    for round_index in range(args.rounds):
        ours.append(run_json(ours_cmd, env))
        theirs.append(run_json(torch_cmd, env))
        print(f"round {round_index + 1}/{args.rounds}: softprompt {ours[-1]['ms_per_step']:.0f} ms/step, "
              f"PyTorch+PEFT {theirs[-1]['ms_per_step']:.0f} ms/step", file=sys.stderr)

    def median(rows, key):
        return statistics.median(r[key] for r in rows)

    print(f"GPT-2 small (124M, random weights), batch {args.batch} x {args.seq} tokens + {args.virtual_tokens} "
          f"virtual tokens, fp32, CPU, {args.threads} threads, dropout on; medians of {args.rounds} alternating runs\n")
    print(f"| metric | softprompt | PyTorch + PEFT | ratio |")
    print(f"|---|---:|---:|---:|")
    for key, label, higher_better in [("tokens_per_s", "train tokens/s", True), ("ms_per_step", "ms/step", False),
                                      ("peak_rss_mb", "peak RSS (MB)", False),
                                      ("generate_tokens_per_s", "generate tokens/s (KV cache, batch 1)", True)]:
        a, b = median(ours, key), median(theirs, key)
        ratio = a / b if higher_better else b / a
        print(f"| {label} | {a:,.1f} | {b:,.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
