#!/usr/bin/env python3
"""Multi-adapter serving benchmark: `softprompt serve` against PyTorch + PEFT looping per adapter.

The same work on every side: --requests completions (default 64) spread round-robin over --adapters
prompt-tuning adapters (default 8, 20 virtual tokens each, random init with a different seed each),
on GPT-2 small's shape (124M, random weights), greedy, --max-tokens new tokens each (default 32),
no stop strings (so a request ends at max_tokens unless the model emits EOS), CPU, the same thread
count everywhere. Request i asks adapter i % adapters with prompt i % prompts (bench/serve_load.cpp
assigns them so; the prompts file is shared). Measured:
  serve, batched        `softprompt serve --max-batch 64` (every request can share one decode
                        batch, all adapters mixed), the soft-prompt prefix cache on; the load
                        generator keeps all requests in flight at once (--concurrency = --requests).
  serve, no cache       the same with --no-prefix-cache (each request prefills its soft prompt).
  serve, one at a time  `--max-batch 1` and a single client connection, the prefix cache on:
                        requests run one after another, the latency being one request's service
                        time.
  PyTorch+PEFT          in-process Python: the adapters loaded with PeftModel.from_pretrained /
                        load_adapter; the requests grouped by adapter, each group one batched greedy
                        generation (prompts left-padded, the group's soft prompt in front), one group
                        after another. A request's latency is the time from the start until its
                        group finished, as if all requests arrived at once.
The load generator opens its keep-alive connections before its clock starts, one per request in
flight (a burst of connects overflows the server's listen backlog; connection setup is not what is
measured). requests/s and tokens/s count the completion tokens of successful requests (usage on
the server side, tokens up to and including EOS on the PEFT side) over the wall time of the whole
run; model loading is outside it, and every side runs a short untimed warm-up on the base model
first (so no adapter's prefix is cached before the timed run). Peak RSS is each process's VmHWM.

The PEFT reference calls the base model's generate(inputs_embeds = soft prompt + token embeddings,
attention_mask, use_cache=True), as bench/compare_peft.py does: PeftModel.generate is broken for
prompt tuning with transformers 5.x and PEFT 0.21 (an IndexError in the position embedding, or the
virtual tokens put in again at every cached step). generate derives the position ids from the
attention mask, so the padding between soft prompt and text does not shift the text's positions;
a self-check regenerates the first rows without padding after the timed run. The greedy texts of
every side are compared request by request and the mismatches counted (random weights give close
logits, so rare float-rounding flips of the argmax are possible; more than a few means a bug).

The model directory: GPT2Config() defaults (n_embd 768, 12 layers, 12 heads, vocab 50257) with the
byte-level BPE tokenizer of examples/demo/model, whose vocabulary holds only 1267 tokens
(<|endoftext|> = 1266). To keep GPT-2 small's 50257-way LM head (a third of its decode FLOPs) and
still have a tokenizer that agrees with the model, the tokenizer's vocabulary is padded with
placeholder tokens "<vN>" for ids 1267..50256: no merge produces them, so prompts encode exactly as
with the demo tokenizer, while every id the random model generates decodes to visible text on both
sides (rather than to nothing, which would make the text comparison vacuous). BOS/EOS/pad are 1266.
The model, adapters and prompts are made once under --work-dir and reused while the settings match.

    python3 bench/compare_serve.py [--binary build/cli/softprompt]
        [--load-binary build/bench/softprompt_serve_load] [--threads 2] [--requests 64]
        [--adapters 8] [--max-tokens 32] [--max-batch 64] [--work-dir /tmp/softprompt_compare_serve]

Development tool: needs torch, transformers and peft from PyPI (not needed by the build or tests).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_MODEL = os.path.join(REPO, "examples", "demo", "model")
GPT2_VOCAB = 50257
VIRTUAL_TOKENS = 20
MODEL_NAME = "gpt2-small-random"
TOKENIZER_FILES = ("merges.txt", "special_tokens_map.json")

# Varied lengths and topics; the file written from these is what both sides read.
PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "Translate to French: The weather is nice today.",
    "Summarize: Prompt tuning learns a few virtual token embeddings and keeps the model frozen, "
    "so one base model can serve many tasks at once.",
    "Question: What is the capital of Italy? Answer:",
    "Write a short poem about autumn leaves.",
    "def fibonacci(n):",
    "Review: The film was long but the acting was superb. Sentiment:",
    "List three uses of a paperclip:",
    "In 1969, the first humans landed on the Moon. The mission was called",
    "Classify the topic of this headline: Stocks rally as inflation cools.",
    "Dear team, thank you all for",
]


def peak_rss_mb(pid="self"):
    """Peak resident set (VmHWM) of a process, in MB; None when /proc does not say."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


# ---- assets: model directory, adapters, prompts ----

def padded_tokenizer(model_dir):
    """The demo tokenizer with placeholder tokens up to GPT-2's vocabulary size (see the docstring)."""
    with open(os.path.join(DEMO_MODEL, "tokenizer.json")) as f:
        doc = json.load(f)
    vocab = doc["model"]["vocab"]
    if len(vocab) > GPT2_VOCAB:
        sys.exit(f"{DEMO_MODEL}: the tokenizer has {len(vocab)} tokens, more than GPT-2's {GPT2_VOCAB}")
    used = set(vocab.values())
    for token_id in range(GPT2_VOCAB):
        if token_id not in used:
            vocab[f"<v{token_id}>"] = token_id
    with open(os.path.join(model_dir, "tokenizer.json"), "w") as f:
        json.dump(doc, f, ensure_ascii=False)
    with open(os.path.join(model_dir, "vocab.json"), "w") as f:
        json.dump(dict(sorted(vocab.items(), key=lambda item: item[1])), f, ensure_ascii=False)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(DEMO_MODEL, name), model_dir)
    with open(os.path.join(DEMO_MODEL, "tokenizer_config.json")) as f:
        config = json.load(f)
    config["model_max_length"] = 1024  # the demo model's 128 positions; GPT-2 small has 1024
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    eos = vocab["<|endoftext|>"]
    return eos


def make_assets(args):
    """Builds (or reuses) the model directory, the adapters and the prompts file under --work-dir."""
    paths = {"model": os.path.join(args.work_dir, MODEL_NAME),
             "adapters": os.path.join(args.work_dir, "adapters"),
             "prompts": os.path.join(args.work_dir, "prompts.jsonl")}
    stamp = {"version": 1, "adapters": args.adapters, "virtual_tokens": VIRTUAL_TOKENS}
    stamp_path = os.path.join(args.work_dir, "assets.json")
    if os.path.exists(stamp_path):
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                return paths
    import torch
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    for key in ("model", "adapters"):
        shutil.rmtree(paths[key], ignore_errors=True)
    os.makedirs(paths["model"])
    eos = padded_tokenizer(paths["model"])
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=GPT2_VOCAB, bos_token_id=eos, eos_token_id=eos,
                                      pad_token_id=eos))
    base.name_or_path = paths["model"]  # what PEFT records as the adapters' base_model_name_or_path
    base.save_pretrained(paths["model"], safe_serialization=True)
    for index in range(args.adapters):
        torch.manual_seed(1000 + index)
        config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL_TOKENS,
                                    prompt_tuning_init=PromptTuningInit.RANDOM,
                                    base_model_name_or_path=paths["model"])
        get_peft_model(base, config).save_pretrained(os.path.join(paths["adapters"], f"adapter{index}"))
    with open(paths["prompts"], "w") as f:
        for prompt in PROMPTS:
            f.write(json.dumps({"input": prompt}) + "\n")
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    return paths


def adapter_names(args):
    return [f"adapter{i}" for i in range(args.adapters)]


# ---- softprompt serve ----

def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def run_load(args, port_file, adapters, requests, concurrency, max_tokens, prompts, responses=None):
    command = [args.load_binary, "--port-file", port_file, "--adapters", ",".join(adapters),
               "--requests", str(requests), "--concurrency", str(concurrency),
               "--max-tokens", str(max_tokens), "--prompt-file", prompts, "--json"]
    if responses:
        command += ["--responses", responses]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed ({out.returncode}): {' '.join(command)}\n"
                           f"{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def serve_mode(args, paths, mode, extra_args, max_batch, concurrency):
    """Starts softprompt serve, warms it up on the base model, runs the timed load, stops it."""
    port_file = os.path.join(args.work_dir, f"port.{mode}")
    log_path = os.path.join(args.work_dir, f"serve.{mode}.log")
    responses = os.path.join(args.work_dir, f"responses.{mode}.jsonl")
    for path in (port_file, responses):
        if os.path.exists(path):
            os.remove(path)
    command = [args.binary, "serve", "--model", paths["model"], "--adapters-dir", paths["adapters"],
               "--port", "0", "--port-file", port_file, "--threads", str(args.threads),
               "--max-batch", str(max_batch), "--max-queue", str(max(64, args.requests))] + extra_args
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + args.start_timeout
        while not os.path.exists(port_file):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"softprompt serve did not start (exit {server.poll()}): "
                                   f"{' '.join(command)}\n{open(log_path).read()[-3000:]}")
            time.sleep(0.1)
        with open(port_file) as f:
            url = f"http://127.0.0.1:{int(f.read())}"
        run_load(args, port_file, [MODEL_NAME], 2, 1, 2, paths["prompts"])  # warm-up, untimed
        result = run_load(args, port_file, adapter_names(args), args.requests, concurrency,
                          args.max_tokens, paths["prompts"], responses)
        result["health"] = get_json(url + "/health")
        result["peak_rss_mb"] = peak_rss_mb(server.pid)
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
        if code != 0:
            raise RuntimeError(f"softprompt serve exited with {code} after SIGTERM; see {log_path}")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    with open(responses) as f:
        result["texts"] = [json.loads(line)["text"] for line in f]
    return result


# ---- PyTorch + PEFT reference (its own process, so its peak RSS is its own) ----

def requests_of(args, prompts):
    names = adapter_names(args)
    return [(names[i % len(names)], prompts[i % len(prompts)]) for i in range(args.requests)]


def torch_worker(args):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    paths = {"model": os.path.join(args.work_dir, MODEL_NAME),
             "adapters": os.path.join(args.work_dir, "adapters"),
             "prompts": os.path.join(args.work_dir, "prompts.jsonl")}
    with open(paths["prompts"]) as f:
        prompts = [json.loads(line)["input"] for line in f if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    tokenizer.padding_side = "left"
    names = adapter_names(args)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(paths["model"]),
                                      os.path.join(paths["adapters"], names[0]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(os.path.join(paths["adapters"], name), adapter_name=name)
    model.eval()
    base = model.get_base_model()
    eos = tokenizer.eos_token_id
    soft_prompts = {name: model.get_prompt_embedding_to_save(adapter_name=name) for name in names}

    def generate(soft_prompt, texts, max_tokens):
        """Greedy generation of a batch; the new token ids of each row, cut after its EOS."""
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        embeds = base.get_input_embeddings()(batch.input_ids)
        rows = embeds.shape[0]
        if soft_prompt is not None:
            embeds = torch.cat([soft_prompt.to(embeds.dtype).expand(rows, -1, -1), embeds], dim=1)
        mask = torch.cat([torch.ones(rows, embeds.shape[1] - batch.input_ids.shape[1], dtype=torch.long),
                          batch.attention_mask], dim=1)
        out = base.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_tokens,
                            do_sample=False, use_cache=True, pad_token_id=eos, eos_token_id=eos)
        tokens = []
        for row in out.tolist():  # with inputs_embeds only, generate returns just the new tokens
            tokens.append(row[:row.index(eos) + 1] if eos in row else row)
        return tokens

    work = requests_of(args, prompts)
    groups = {}
    for index, (name, prompt) in enumerate(work):
        groups.setdefault(name, []).append(index)
    texts, counts, latencies = [None] * len(work), [0] * len(work), [0.0] * len(work)
    with torch.no_grad():
        generate(None, prompts[:1], 2)  # warm-up on the base model, untimed
        start = time.perf_counter()
        for name, indices in groups.items():
            rows = generate(soft_prompts[name], [work[i][1] for i in indices], args.max_tokens)
            done = time.perf_counter() - start
            for i, tokens in zip(indices, rows):
                texts[i] = tokenizer.decode(tokens, skip_special_tokens=True)
                counts[i], latencies[i] = len(tokens), done
        wall = time.perf_counter() - start
        # Self-check: the first two rows of the first group again, alone and unpadded.
        name, indices = next(iter(groups.items()))
        batched = generate(soft_prompts[name], [work[i][1] for i in indices], args.max_tokens)
        self_check = sum(generate(soft_prompts[name], [work[i][1]], args.max_tokens)[0] != batched[k]
                         for k, i in enumerate(indices[:2]))
    ordered = sorted(latencies)
    print(json.dumps({"requests_per_s": len(work) / wall, "tokens_per_s": sum(counts) / wall,
                      "completion_tokens": sum(counts), "wall_s": wall,
                      "latency_p50_s": percentile(ordered, 50), "latency_p95_s": percentile(ordered, 95),
                      "peak_rss_mb": peak_rss_mb(), "padding_self_check_mismatches": self_check,
                      "texts": texts}))


def percentile(ordered, p):
    """Nearest-rank percentile, as bench/serve_load.cpp computes it."""
    rank = max(1, min(len(ordered), -(-len(ordered) * p // 100)))
    return ordered[int(rank) - 1]


def torch_reference(args):
    command = [sys.executable, __file__, "--worker", "--work-dir", args.work_dir,
               "--threads", str(args.threads), "--requests", str(args.requests),
               "--adapters", str(args.adapters), "--max-tokens", str(args.max_tokens)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"PEFT reference failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- driver ----

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="build/cli/softprompt")
    parser.add_argument("--load-binary", default="build/bench/softprompt_serve_load")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=64,
                        help="--max-batch of the batched serve modes (default 64: all requests at once)")
    parser.add_argument("--work-dir", default="/tmp/softprompt_compare_serve")
    parser.add_argument("--start-timeout", type=float, default=300, help="seconds to wait for serve to listen")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work_dir = os.path.abspath(args.work_dir)
    if args.worker:
        torch_worker(args)
        return
    for path in (args.binary, args.load_binary):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path}: not an executable (build it, or pass --binary / --load-binary)")
    os.makedirs(args.work_dir, exist_ok=True)
    paths = make_assets(args)

    modes = [("batched", f"softprompt serve, continuous batching (max batch {args.max_batch}), prefix cache",
              lambda: serve_mode(args, paths, "batched", ["-q"], args.max_batch, args.requests)),
             ("nocache", f"softprompt serve, continuous batching (max batch {args.max_batch}), no prefix cache",
              lambda: serve_mode(args, paths, "nocache", ["-q", "--no-prefix-cache"], args.max_batch,
                                 args.requests)),
             ("serial", "softprompt serve, one at a time (max batch 1, 1 connection), prefix cache",
              lambda: serve_mode(args, paths, "serial", ["-q"], 1, 1)),
             ("peft", f"PyTorch + PEFT, one batched generate per adapter group ({args.adapters} groups)",
              lambda: torch_reference(args))]
    results = {}
    for key, label, run in modes:
        print(f"running: {label}", file=sys.stderr)
        results[key] = run()
        if key != "peft":
            health = results[key]["health"]
            print(f"  health after the run: completed {health.get('completed')}, failed {health.get('failed')}, "
                  f"prefix cache {health.get('prefix_cache')}", file=sys.stderr)

    print(f"\nGPT-2 small shape (124M, random weights), {args.requests} requests over {args.adapters} "
          f"prompt-tuning adapters ({VIRTUAL_TOKENS} virtual tokens), greedy, max_tokens {args.max_tokens}, "
          f"{len(PROMPTS)} prompts, CPU, {args.threads} threads; one run each\n")
    peft = results["peft"]
    print("| mode | requests/s | tokens/s | vs PEFT | p50 latency (s) | p95 latency (s) | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")

    def cell(value, digits):
        return "n/a" if value is None else f"{value:,.{digits}f}"

    for key, label, _ in modes:
        r = results[key]
        ratio = r["tokens_per_s"] / peft["tokens_per_s"] if peft["tokens_per_s"] else None
        print(f"| {label} | {cell(r['requests_per_s'], 2)} | {cell(r['tokens_per_s'], 1)} | "
              f"{cell(ratio, 2)}x | {cell(r['latency_p50_s'], 3)} | {cell(r['latency_p95_s'], 3)} | "
              f"{cell(r.get('peak_rss_mb'), 0)} |")

    print("\ngreedy text mismatches (requests whose completion differs from the PyTorch + PEFT one):")
    for key, label, _ in modes[:-1]:
        r = results[key]
        mismatched = [i for i, (a, b) in enumerate(zip(r["texts"], peft["texts"])) if a != b]
        tokens_note = ("" if r["completion_tokens"] == peft["completion_tokens"] else
                       f"; completion tokens {r['completion_tokens']} vs PEFT {peft['completion_tokens']}")
        print(f"  {label}: {len(mismatched)}/{args.requests}"
              + (f" (requests {mismatched[:10]}{'...' if len(mismatched) > 10 else ''})" if mismatched else "")
              + tokens_note)
    print(f"  PEFT batched (left-padded) vs unpadded single-row generation, first 2 rows: "
          f"{peft['padding_self_check_mismatches']} mismatches")


if __name__ == "__main__":
    main()
