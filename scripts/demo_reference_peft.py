#!/usr/bin/env python3
"""Reference run of the embedded demo with Hugging Face PEFT (what `softprompt demo` should reproduce).

Development tool only: needs torch, transformers and peft from PyPI. It loads examples/demo/model,
measures the frozen model's exact-match accuracy on examples/demo/data/eval.jsonl, prompt-tunes it with
PEFT (PromptTuningConfig, CAUSAL_LM) using examples/demo/demo_config.json, and measures it again.

    python3 scripts/demo_reference_peft.py                    # seed from demo_config.json
    python3 scripts/demo_reference_peft.py --seeds 42 43 44   # robustness over data orders
    python3 scripts/demo_reference_peft.py --save-adapter /tmp/demo_adapter
    python3 scripts/demo_reference_peft.py --eval-adapter build/demo-adapter \
        --compare-predictions preds.jsonl   # an adapter softprompt wrote, loaded by PEFT

Recipe (the contract the C++ demo follows):
  * example tokens = tok(input) + tok(output) + [EOS]; labels are -100 on the input part; no BOS.
  * a batch is right-padded with EOS (attention mask 0, label -100); PEFT prepends the virtual tokens
    (labels -100) and the loss is the mean token cross-entropy over the supervised tokens of the batch.
  * data order: each epoch is torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + epoch));
    a step takes the next batch_size examples of the current epoch (the last partial batch of an epoch
    is used as is).
  * AdamW(betas 0.9/0.999, eps 1e-8, weight_decay from the config) on the prompt embedding only;
    learning rate: linear warmup from 0 over warmup_steps, then linear decay to 0 at max_steps
    (transformers.get_linear_schedule_with_warmup); no gradient clipping.
  * evaluation: greedy decoding from [virtual tokens] + tok(input), at most max_new_tokens new tokens,
    stopping at EOS (not included); correct iff decode(generated).strip() == output.strip().
"""
import argparse
import json
import math
import os
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def greedy(model, embed, prompt_embeds, ids, max_new_tokens, eos_id):
    """Plain argmax loop without KV cache; prompt_embeds (P, D) or None is prepended as inputs_embeds."""
    out = []
    cur = list(ids)
    for _ in range(max_new_tokens):
        x = embed(torch.tensor([cur]))
        if prompt_embeds is not None:
            x = torch.cat([prompt_embeds.unsqueeze(0), x], dim=1)
        with torch.no_grad():
            logits = model(inputs_embeds=x).logits[0, -1]
        nxt = int(logits.argmax())
        if nxt == eos_id:
            break
        out.append(nxt)
        cur.append(nxt)
    return out


def evaluate(model, tok, rows, prompt_embeds, max_new_tokens, show=0):
    embed = model.get_input_embeddings()
    eos_id = tok.eos_token_id
    correct = 0
    samples = []
    with torch.no_grad():
        for i, r in enumerate(rows):
            ids = tok(r["input"], add_special_tokens=False)["input_ids"]
            gen = greedy(model, embed, prompt_embeds, ids, max_new_tokens, eos_id)
            text = tok.decode(gen)
            ok = text.strip() == r["output"].strip()
            correct += ok
            if i < show:
                samples.append(f"    {r['input']!r} -> {text!r} (want {r['output']!r})")
    return correct / len(rows), samples


def collate(tok, rows, eos_id):
    seqs, labs = [], []
    for r in rows:
        a = tok(r["input"], add_special_tokens=False)["input_ids"]
        b = tok(r["output"], add_special_tokens=False)["input_ids"] + [eos_id]
        seqs.append(a + b)
        labs.append([-100] * len(a) + b)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), eos_id, dtype=torch.int64)
    labels = torch.full((len(seqs), width), -100, dtype=torch.int64)
    mask = torch.zeros((len(seqs), width), dtype=torch.int64)
    for i, (s, lab) in enumerate(zip(seqs, labs)):
        ids[i, :len(s)] = torch.tensor(s)
        labels[i, :len(s)] = torch.tensor(lab)
        mask[i, :len(s)] = 1
    return ids, mask, labels


def eval_adapter(args, cfg, tok, evalset):
    """Loads a PEFT adapter directory (e.g. one softprompt wrote) with PeftModel.from_pretrained on the
    fp32 demo model, measures its accuracy, and with --compare-predictions checks that every greedy
    generation equals the one in that JSONL file (as `softprompt eval --predictions` writes it)."""
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    base = GPT2LMHeadModel.from_pretrained(args.model, attn_implementation="eager", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, args.eval_adapter)
    model.eval()
    prompt = model.get_prompt_embedding_to_save("default").detach()
    embed = base.get_input_embeddings()
    ours = load_jsonl(args.compare_predictions) if args.compare_predictions else None
    if ours is not None and len(ours) != len(evalset):
        raise SystemExit(f"{args.compare_predictions}: {len(ours)} rows, the eval set has {len(evalset)}")
    correct = differing = 0
    for i, r in enumerate(evalset):
        ids = tok(r["input"], add_special_tokens=False)["input_ids"]
        text = tok.decode(greedy(base, embed, prompt, ids, cfg["max_new_tokens"], tok.eos_token_id))
        correct += text.strip() == r["output"].strip()
        if ours is not None and ours[i]["prediction"] != text:
            differing += 1
            if differing <= 5:
                print(f"  row {i}: PEFT {text!r}, softprompt {ours[i]['prediction']!r}")
    print(f"PEFT with {args.eval_adapter}: accuracy {correct / len(evalset):.4f} ({correct}/{len(evalset)})")
    if ours is not None:
        print(f"predictions differing from {args.compare_predictions}: {differing} of {len(evalset)}")
        if differing:
            raise SystemExit(1)


def run(args, cfg, seed, tok, train, evalset):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
    from transformers import GPT2LMHeadModel, get_linear_schedule_with_warmup

    model = GPT2LMHeadModel.from_pretrained(args.model, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    res = {"seed": seed}
    if not args.skip_untuned:
        acc, samples = evaluate(model, tok, evalset, None, cfg["max_new_tokens"], show=args.show)
        res["untuned"] = acc
        print(f"[seed {seed}] untuned eval accuracy {acc:.3f}", flush=True)
        for s in samples:
            print(s)

    torch.manual_seed(seed)  # only matters for RANDOM init
    init = cfg["prompt_tuning_init"].upper()
    pt = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg["num_virtual_tokens"],
                            prompt_tuning_init=PromptTuningInit[init],
                            prompt_tuning_init_text=cfg.get("prompt_tuning_init_text") if init == "TEXT" else None,
                            tokenizer_name_or_path=args.model if init == "TEXT" else None)
    peft_model = get_peft_model(model, pt)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == cfg["num_virtual_tokens"] * model.config.n_embd

    def prompt():
        return peft_model.get_prompt_embedding_to_save("default").detach()

    if args.eval_init:
        acc, _ = evaluate(model, tok, evalset, prompt(), cfg["max_new_tokens"])
        res["init"] = acc
        print(f"[seed {seed}] accuracy with the initial prompt {acc:.3f}", flush=True)

    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=cfg["weight_decay"], foreach=False)
    sched = get_linear_schedule_with_warmup(opt, cfg["warmup_steps"], cfg["max_steps"])
    bs = cfg["batch_size"]
    eos_id = tok.eos_token_id
    epoch, pos, perm = 0, 0, None
    peft_model.train()
    t0 = time.time()
    losses = []
    for step in range(cfg["max_steps"]):
        if perm is None or pos >= len(perm):
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
            epoch += 1
            pos = 0
        batch = [train[i] for i in perm[pos:pos + bs]]
        pos += bs
        ids, mask, labels = collate(tok, batch, eos_id)
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % args.log_every == 0 or step == cfg["max_steps"] - 1:
            print(f"[seed {seed}] step {step + 1} loss {sum(losses[-args.log_every:]) / len(losses[-args.log_every:]):.4f} "
                  f"lr {sched.get_last_lr()[0]:.2e}", flush=True)
            if args.eval_every and (step + 1) % args.eval_every == 0:
                peft_model.eval()
                acc, _ = evaluate(model, tok, evalset, prompt(), cfg["max_new_tokens"])
                peft_model.train()
                print(f"[seed {seed}]   eval accuracy {acc:.3f}", flush=True)
    train_s = time.time() - t0
    peft_model.eval()
    res["s_per_step"] = train_s / cfg["max_steps"]
    res["final_loss"] = sum(losses[-20:]) / len(losses[-20:])
    t1 = time.time()
    acc, samples = evaluate(model, tok, evalset, prompt(), cfg["max_new_tokens"], show=args.show)
    res["eval_s"] = time.time() - t1
    res["tuned"] = acc
    print(f"[seed {seed}] tuned eval accuracy {acc:.3f} ({train_s:.1f}s training, {res['s_per_step']:.3f} s/step, "
          f"eval {res['eval_s']:.1f}s)", flush=True)
    for s in samples:
        print(s)

    # Cross-check the hand-written greedy loop against PEFT's own generate() on a few examples.
    for r in evalset[:args.check_generate]:
        enc = tok(r["input"], add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            g = peft_model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                    max_new_tokens=cfg["max_new_tokens"], do_sample=False,
                                    eos_token_id=eos_id, pad_token_id=eos_id)
        g = g[0, enc["input_ids"].shape[1]:].tolist()
        if eos_id in g:
            g = g[:g.index(eos_id)]
        mine = greedy(model, model.get_input_embeddings(), prompt(), enc["input_ids"][0].tolist(),
                      cfg["max_new_tokens"], eos_id)
        assert g == mine, (r, g, mine)
    if args.save_adapter:
        out = args.save_adapter if len(args.seeds) == 1 else f"{args.save_adapter}_seed{seed}"
        peft_model.save_pretrained(out)
        print(f"[seed {seed}] adapter written to {out}")
    return res


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    demo = os.path.join(root, "examples", "demo")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(demo, "model"))
    ap.add_argument("--data", default=os.path.join(demo, "data"))
    ap.add_argument("--config", default=os.path.join(demo, "demo_config.json"))
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="default: the config's seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override config entries (experiments), e.g. lr=0.1 prompt_tuning_init=RANDOM")
    ap.add_argument("--eval-init", action="store_true", help="also evaluate the initial prompt")
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--show", type=int, default=3, help="print this many eval generations")
    ap.add_argument("--check-generate", type=int, default=5, help="compare greedy loop with generate() on N")
    ap.add_argument("--skip-untuned", action="store_true")
    ap.add_argument("--save-adapter", default=None)
    ap.add_argument("--eval-adapter", default=None, help="only evaluate this PEFT adapter directory")
    ap.add_argument("--compare-predictions", default=None,
                    help="with --eval-adapter: JSONL of softprompt's predictions that must be equal")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with open(args.config, encoding="utf-8") as f:
        cfg = json.load(f)
    for kv in args.set:
        k, v = kv.split("=", 1)
        try:
            cfg[k] = json.loads(v)
        except json.JSONDecodeError:
            cfg[k] = v
    if args.seeds is None:
        args.seeds = [cfg["seed"]]
    print("config:", json.dumps(cfg), flush=True)

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.model)
    train = load_jsonl(os.path.join(args.data, "train.jsonl"))
    evalset = load_jsonl(os.path.join(args.data, "eval.jsonl"))
    print(f"{len(train)} train / {len(evalset)} eval examples", flush=True)

    if args.eval_adapter:
        eval_adapter(args, cfg, tok, evalset)
        return
    results = [run(args, cfg, s, tok, train, evalset) for s in args.seeds]
    print("summary:")
    for r in results:
        print("  " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))


if __name__ == "__main__":
    main()
