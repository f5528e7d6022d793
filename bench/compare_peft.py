#!/usr/bin/env python3
"""Side-by-side benchmark: one prompt-tuning train step in PyTorch + PEFT vs `softprompt bench`.

Same work on both sides: GPT-2 small (124M) config (or with --arch llama-3.2-1b, Llama 3.2 1B's shape)
with random weights, batch 8, 128 text tokens,
20 virtual tokens, CPU, the same thread count, the base model in train mode (dropout on, as PEFT
trains), AdamW on the prompt only. Each dtype is measured on both sides:
  fp32  PyTorch eager; `softprompt bench --dtype f32`.
  bf16  PyTorch trains under torch.autocast("cpu", dtype=torch.bfloat16), the soft prompt and AdamW
        staying fp32 as PEFT keeps them, and generates with the weights cast by .to(torch.bfloat16)
        as transformers users do for inference; `softprompt bench --dtype bf16`.
Every measurement is its own process (so each peak RSS is its own), and within each round the
configurations alternate (softprompt fp32, torch fp32, softprompt bf16, torch bf16), so machine
noise hits them alike; medians over the rounds are reported.

Generation is greedy with the KV cache, after the soft prompt, at each --gen-batches size. The
PyTorch reference is the base model's generate(inputs_embeds=soft prompt + token embeddings,
use_cache=True), not PeftModel.generate: with transformers 5.x and PEFT 0.21 that is broken for
prompt tuning (an IndexError in the position embedding, or the virtual tokens put in again at every
cached step). Each torch generation run first checks that reference against a greedy loop that
recomputes the whole sequence without a cache, and stops if the tokens differ.

    python3 bench/compare_peft.py --binary build/cli/softprompt [--rounds 3] [--threads 2]
        [--dtypes f32,bf16] [--gen-batches 1,16] [--gen-tokens 64]

Development tool: needs torch, transformers and peft from PyPI (not needed by the build or tests).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DTYPE_NAMES = {"f32": "fp32", "bf16": "bf16"}
SIDE_NAMES = {"softprompt": "softprompt", "torch": "PyTorch+PEFT"}


def peak_rss_mb():
    """This process's peak resident set (VmHWM), as softprompt bench reports its own."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


ARCHS = {"gpt2-small": "GPT-2 small (124M, random weights)",
         "llama-3.2-1b": "Llama 3.2 1B shape (1.24B, GQA 32/8 heads, tied embeddings, random weights)"}


def make_base_model(arch):
    """The random-weight base model, shaped as `softprompt bench --config <arch>` builds it."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    if arch == "gpt2-small":
        return GPT2LMHeadModel(GPT2Config())
    config = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192},
                         bos_token_id=128000, eos_token_id=128001)
    return LlamaForCausalLM(config)


def torch_worker(args):
    import torch
    from peft import PromptTuningConfig, TaskType, get_peft_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = make_base_model(args.arch)
    vocab = model.config.vocab_size
    model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                     num_virtual_tokens=args.virtual_tokens))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, vocab, (args.batch, args.seq))
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    mean = sum(times) / len(times)
    result = {"ms_per_step": mean * 1e3, "tokens_per_s": args.batch * args.seq / mean}
    if args.gen_tokens > 0:
        result["generate_tokens_per_s"] = torch_generate(model, args)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def torch_generate(model, args):
    """Greedy KV-cache generation tokens/s after the soft prompt, timed as softprompt bench times it:
    (gen_tokens - 1) new tokens per row over the time of a gen_tokens run less a one-token run."""
    import torch

    base = model.get_base_model().eval()
    prompt = model.get_prompt_embedding_to_save(adapter_name="default")
    ids = torch.randint(0, base.config.vocab_size, (args.gen_batch, args.gen_prompt))

    def generate(rows, new_tokens):
        embeds = base.get_input_embeddings()(ids[:rows])
        embeds = torch.cat([prompt.to(embeds.dtype).expand(rows, -1, -1), embeds], dim=1)
        out = base.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                            use_cache=True, pad_token_id=base.config.eos_token_id)
        return out[:, -new_tokens:]  # with inputs_embeds only, generate returns just the new tokens

    with torch.no_grad():
        rows, check_tokens = min(2, args.gen_batch), min(3, args.gen_tokens)
        expected = ids[:rows]
        for _ in range(check_tokens):  # the reference without a cache: recompute the whole sequence
            embeds = torch.cat([prompt.expand(rows, -1, -1), base.get_input_embeddings()(expected)], dim=1)
            expected = torch.cat([expected, base(inputs_embeds=embeds).logits[:, -1:].argmax(-1)], dim=1)
        if not torch.equal(generate(rows, check_tokens), expected[:, args.gen_prompt:]):
            sys.exit("generate(inputs_embeds=...) does not match greedy decoding without a cache")
        if args.dtype == "bf16":
            base.to(torch.bfloat16)
        generate(rows, 2)  # warm-up, untimed (the first bf16 calls set up their kernels)
        start = time.perf_counter()
        generate(args.gen_batch, 1)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        generate(args.gen_batch, args.gen_tokens)
        elapsed = time.perf_counter() - start - prefill
    return args.gen_batch * (args.gen_tokens - 1) / elapsed if args.gen_tokens > 1 and elapsed > 0 else None


def run_json(command, env):
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"command failed ({out.returncode}): {' '.join(command)}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def command(args, side, dtype, batch, seq, steps, warmup, gen_batch, gen_tokens):
    if side == "softprompt":
        return [args.binary, "bench", "--json", "--config", args.arch, "--dtype", dtype,
                "--threads", str(args.threads),
                "--batch-size", str(batch), "--seq-len", str(seq), "--virtual-tokens", str(args.virtual_tokens),
                "--steps", str(steps), "--warmup", str(warmup), "--gen-batch", str(gen_batch),
                "--gen-prompt", str(args.gen_prompt), "--gen-tokens", str(gen_tokens)]
    return [sys.executable, __file__, "--worker", "--arch", args.arch, "--dtype", dtype,
            "--threads", str(args.threads),
            "--batch", str(batch), "--seq", str(seq), "--virtual-tokens", str(args.virtual_tokens),
            "--steps", str(steps), "--warmup", str(warmup), "--gen-batch", str(gen_batch),
            "--gen-prompt", str(args.gen_prompt), "--gen-tokens", str(gen_tokens)]


def csv(kind, choices=None):
    def parse(text):
        values = [kind(v) for v in text.split(",") if v]
        if not values or (choices and any(v not in choices for v in values)):
            raise argparse.ArgumentTypeError("expected a comma-separated list" +
                                             (" of " + ", ".join(choices) if choices else ""))
        return values
    return parse


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="build/cli/softprompt")
    parser.add_argument("--arch", default="gpt2-small", choices=sorted(ARCHS),
                        help="the random-weight base model (default gpt2-small)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--gen-prompt", type=int, default=32)
    parser.add_argument("--gen-tokens", type=int, default=64, help="new tokens per row (0 = no generation timing)")
    parser.add_argument("--gen-batches", type=csv(int), default=[1, 16], help="generation batch sizes (default 1,16)")
    parser.add_argument("--dtypes", type=csv(str, DTYPE_NAMES), default=list(DTYPE_NAMES),
                        help="f32, bf16 or both (default f32,bf16)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="f32", choices=DTYPE_NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--gen-batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        torch_worker(args)
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), SOFTPROMPT_NUM_THREADS=str(args.threads))
    configs = [(side, dtype) for dtype in args.dtypes for side in SIDE_NAMES]
    # One process for the train step, then one per generation batch size (after a 1-token train step).
    jobs = [("train", (args.batch, args.seq, args.steps, args.warmup, 1, 0))]
    if args.gen_tokens > 0:
        jobs += [(f"gen{b}", (1, 1, 1, 0, b, args.gen_tokens)) for b in args.gen_batches]
    runs = {config: {job: [] for job, _ in jobs} for config in configs}
    for round_index in range(args.rounds):
        for job, sizes in jobs:
            for side, dtype in configs:
                runs[side, dtype][job].append(run_json(command(args, side, dtype, *sizes), env))
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{SIDE_NAMES[s]} {DTYPE_NAMES[d]} {runs[s, d]['train'][-1]['ms_per_step']:.0f} ms/step"
            for s, d in configs), file=sys.stderr)

    def median(config, job, key):
        values = [r[key] for r in runs[config].get(job, []) if r.get(key)]  # softprompt reports 0 for none
        return statistics.median(values) if values else None

    rows = [("train", "tokens_per_s", "train tokens/s"), ("train", "ms_per_step", "train ms/step"),
            ("train", "peak_rss_mb", "train peak RSS (MB)")]
    rows += [(f"gen{b}", "generate_tokens_per_s", f"generate tokens/s (KV cache, batch {b})")
             for b in args.gen_batches]
    print(f"{ARCHS[args.arch]}, train batch {args.batch} x {args.seq} tokens + "
          f"{args.virtual_tokens} virtual tokens, dropout on, CPU, {args.threads} threads; medians of "
          f"{args.rounds} rounds, the configurations alternating within each round")
    if "bf16" in args.dtypes:
        print("bf16: PyTorch trains under torch.autocast('cpu', bfloat16) with the soft prompt and AdamW in fp32, "
              "and generates with the weights cast by .to(torch.bfloat16); softprompt runs bench --dtype bf16")
    if args.gen_tokens > 0:
        print(f"generation: {args.gen_prompt} prompt tokens, {args.gen_tokens} new tokens per row, greedy; the "
              "PyTorch reference is the base model's generate(inputs_embeds=soft prompt + token embeddings, "
              "use_cache=True), checked against uncached greedy decoding (PeftModel.generate is broken for "
              "prompt tuning in transformers 5.x + PEFT 0.21)")
    else:
        print("generation: not timed (--gen-tokens 0)")

    def cell(value, digits=1):
        return "n/a" if value is None else f"{value:,.{digits}f}"

    print("\n| metric | " + " | ".join(f"{SIDE_NAMES[s]} {DTYPE_NAMES[d]}" for s, d in configs) + " |")
    print("|---|" + "---:|" * len(configs))
    for job, key, label in rows:
        print(f"| {label} | " + " | ".join(cell(median(c, job, key)) for c in configs) + " |")

    pairs = [(f"{DTYPE_NAMES[d]}", ("softprompt", d), ("torch", d)) for d in args.dtypes]
    if len(args.dtypes) == 2:
        pairs.append(("softprompt bf16 / PyTorch fp32", ("softprompt", "bf16"), ("torch", "f32")))
    print("\nratios softprompt / PyTorch+PEFT (tokens/s: above 1 = softprompt faster; ms and MB: below 1 = "
          "softprompt better)\n")
    print("| metric | " + " | ".join(name for name, _, _ in pairs) + " |")
    print("|---|" + "---:|" * len(pairs))
    for job, key, label in rows:
        ratios = []
        for _, ours, theirs in pairs:
            a, b = median(ours, job, key), median(theirs, job, key)
            ratios.append(a / b if a is not None and b else None)
        print(f"| {label} | " + " | ".join(cell(r, 2) + ("x" if r is not None else "") for r in ratios) + " |")


if __name__ == "__main__":
    main()
