#!/usr/bin/env python3
"""Checks that adapters written by softprompt load in Hugging Face PEFT and give PEFT the same
logits that softprompt computes.

For each case it trains a few steps with `softprompt train` on the tiny fixture models (GPT-2
prompt tuning with TEXT init, the same trained with --dtype bf16, GPT-2 multitask prompt tuning, Llama
(GQA) with TEXT init, Qwen2 trained in bf16, Mistral multitask, T5 seq2seq prompt tuning, T5
multitask with decoder prompts), runs
`softprompt forward --adapter` to dump softprompt's logits, loads the same directory with
`PeftModel.from_pretrained`, and compares. Development tool: needs torch, transformers, peft.

    python3 scripts/check_interop.py --binary build/cli/softprompt
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TOLERANCE = 1e-4  # same bound as the C++ parity tests: fp32 summation-order noise is ~1e-6


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    return out.stdout


def write_data(path, with_tasks):
    rows = [("The opposite of hot is", " cold"), ("The opposite of up is", " down"),
            ("The opposite of big is", " small"), ("The opposite of day is", " night")]
    with open(path, "w") as f:
        for i, (inp, out) in enumerate(rows):
            row = {"input": inp, "output": out}
            if with_tasks:
                row["task"] = i % 2
            f.write(json.dumps(row) + "\n")


def check(binary, work, name, model, train_flags, text, target=None, task=None):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    data = os.path.join(work, name + ".jsonl")
    write_data(data, with_tasks="--multitask" in train_flags)
    adapter = os.path.join(work, name)
    model_dir = os.path.join(FIXTURES, model)
    run([binary, "train", "-q", "--model", model_dir, "--data", data, "--output", adapter,
         "--max-steps", "3", "--batch-size", "2", "--metric", "loss", "--lr", "0.1"] + train_flags)
    dump = os.path.join(work, name + ".safetensors")
    cmd = [binary, "forward", "-q", "--model", model_dir, "--adapter", adapter, "--text", text, "--output", dump]
    if target is not None:
        cmd += ["--target", target]
    if task is not None:
        cmd += ["--task", str(task)]
    run(cmd)
    ours = load_file(dump)

    seq2seq = target is not None
    base = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(
        model_dir, attn_implementation="eager")
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    kwargs = {"input_ids": ours["input_ids"]}
    kwargs["labels"] = ours["labels"] if seq2seq else ours["input_ids"]
    if task is not None:
        kwargs["task_ids"] = torch.tensor([task])
    with torch.no_grad():
        theirs = peft_model(**kwargs)
    diff = (theirs.logits - ours["logits"]).abs().max().item()
    loss_diff = abs(theirs.loss.item() - ours["loss"].item())
    status = "ok" if diff <= TOLERANCE and loss_diff <= TOLERANCE else "MISMATCH"
    print(f"{status:8} {name:28} max |logits diff| {diff:.2e}, |loss diff| {loss_diff:.2e}")
    return status == "ok"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(ROOT, "build", "cli", "softprompt"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        results = [
            check(args.binary, work, "gpt2_prompt_tuning_text", "gpt2_tiny_a",
                  ["--num-virtual-tokens", "5", "--init", "TEXT", "--init-text", "Answer the question:"],
                  "The opposite of up is"),
            # Trained with bf16 weights (the prompt and AdamW stay fp32), read back in fp32.
            check(args.binary, work, "gpt2_trained_in_bf16", "gpt2_tiny_a",
                  ["--num-virtual-tokens", "5", "--dtype", "bf16"], "The opposite of up is"),
            check(args.binary, work, "gpt2_multitask", "gpt2_tiny_a",
                  ["--multitask", "--num-virtual-tokens", "4", "--num-ranks", "2"], "The opposite of hot is", task=1),
            check(args.binary, work, "llama_gqa_prompt_tuning", "llama_tiny_gqa",
                  ["--num-virtual-tokens", "5", "--init", "TEXT", "--init-text", "Answer:"],
                  "The opposite of up is"),
            check(args.binary, work, "qwen2_trained_in_bf16", "qwen2_tiny",
                  ["--num-virtual-tokens", "4", "--dtype", "bf16"], "The opposite of up is"),
            check(args.binary, work, "mistral_multitask", "mistral_tiny",
                  ["--multitask", "--num-virtual-tokens", "4", "--num-ranks", "2"], "The opposite of hot is", task=1),
            check(args.binary, work, "t5_seq2seq_prompt_tuning", "t5_tiny_v10",
                  ["--num-virtual-tokens", "4"], "the final answer", target="cold"),
            check(args.binary, work, "t5_multitask_two_submodules", "t5_tiny_v10",
                  ["--multitask", "--num-virtual-tokens", "3", "--num-ranks", "2"], "the final answer",
                  target="cold", task=1),
        ]
    if not all(results):
        sys.exit("softprompt adapters do not reproduce in PEFT")
    print("all softprompt adapters give PEFT the same logits")


if __name__ == "__main__":
    main()
