#!/usr/bin/env python3
"""Regenerates the embedded demo under examples/demo/ (model, tokenizer, task data, demo config).

Development tool only: needs torch, transformers, tokenizers and safetensors from PyPI. Neither the
build nor the tests run it; its outputs are committed. Nothing is downloaded: all text is produced
here, from word lists written in this file, by a seeded random generator.

    python3 scripts/make_demo_assets.py                  # writes examples/demo/ (about 20 min on 2 threads)
    python3 scripts/make_demo_assets.py --out /tmp/demo  # somewhere else (e.g. to compare sha256 sums)

What it does, step by step (every number is a constant below):

 1. World and text. A small invented world: 40 first names, 16 trades, 20 invented towns, 48 objects
    in 8 kinds (6 each: fruit, animal, tool, vehicle, clothing, instrument, furniture, vegetable), 8
    colors, counts one..nine, 15 verbs. An "event sentence" fills one of 4 templates that all end with
    the object phrase, e.g. "In Kelwick, Mira sold three green plums." / "Bram the smith lost a red axe."
    Pretraining documents (PRETRAIN_DOCS of them, seed CORPUS_SEED) come in three families:
      - stories (15%): event sentences mixed with filler sentences that refer back to them
        ("The plums were heavy.", "Later, Mira walked home to Kelwick.");
      - facts (5%): "A plum is a kind of fruit.", "Plums are kept in the orchard.", ...;
      - tasks (80%): four tasks over an event sentence -- count ("three", "one" for "a/an"), color,
        kind of object, and place where such objects are kept -- always with an explicit
        natural-language cue, in three formats:
          list   (85%): "Count the things in each sentence.\n<sentence> three\n<sentence> one"
                        (a header line naming the task in one of 4 wordings, then 1-4 lines
                        "<sentence> <answer>"; 1 line in 40% of the lists),
          qa     (7.5%): "<sentence>\nQuestion: How many were there?\nAnswer: three",
          record (7.5%): "Sentence: <sentence>\nColor: green\nCount: three" (1-4 fields, any order).
        TASK_WEIGHTS: the demo task, count, is half of the task documents, the other three share the rest.
    Every document ends with <|endoftext|>.
 2. Tokenizer. A GPT-2 style byte-level BPE (tokenizers.BpeTrainer, ByteLevel pre-tokenizer without
    prefix space, all 256 byte symbols as the initial alphabet, min_frequency 2, target TOKENIZER_VOCAB;
    the trainer runs out of pairs earlier) trained on the first TOKENIZER_DOCS documents, with
    <|endoftext|> appended as the last id (as in GPT-2: BOS = EOS = pad = unk). Saved in GPT-2 Hugging
    Face format: vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json.
 3. Model. GPT2LMHeadModel (gelu_new, tied embeddings, no dropout, n_inner 4*n_embd): N_EMBD, N_LAYER,
    N_HEAD, N_POSITIONS below, vocab = the tokenizer's size. Initialised after torch.manual_seed(MODEL_SEED).
 4. Pretraining. Documents are tokenized, shuffled (seed PACK_SEED) and packed whole, back to back, into
    rows of N_POSITIONS tokens (a document never straddles two rows, so position 0 of a row always
    starts a document; the unused tail of a row is padding with label -100). Plain next-token loss
    over all real tokens (each <|endoftext|> included). AdamW(lr PEAK_LR, betas (0.9, 0.98), eps 1e-8,
    weight decay 0.01 on weight matrices except wpe), linear warmup over WARMUP_STEPS, then cosine decay
    to 10% of PEAK_LR, gradient clipping at 1.0, BATCH rows per step, one pass over the packed rows.
    torch.set_num_threads(TORCH_THREADS), float32, eager attention. Every PROBE_EVERY steps the log
    shows, per task, how often the next token after a cue (list header / record field) is the answer.
 5. Demo task data (seed DATA_SEED): fresh event sentences (none occurs in the pretraining documents,
    none repeats), as {"input": sentence, "output": " " + count}; N_TRAIN train and N_EVAL eval rows,
    each split balanced over the nine answers. The input carries NO cue: the frozen model continues it
    as a story (or as a "Question:" document), so it scores 0; a soft prompt has to take the role of
    the "Count the things in each sentence." header. The output starts with a space because a GPT-2
    BPE attaches the space to the following word (" three" is one token that the model knows);
    accuracy compares decoded_generation.strip() with output.strip().
 6. demo_config.json: the prompt-tuning hyper-parameters (DEMO_CONFIG), verified with PEFT by
    scripts/demo_reference_peft.py (the numbers are in examples/demo/README.md).

Determinism: fixed seeds everywhere, no dropout, a fixed data order, a fixed torch thread count and
torch.use_deterministic_algorithms(True); two runs on the same machine with the same library versions
give bit-identical files (compare `sha256sum`; the script prints the sums at the end). Another CPU
(other SIMD kernels) or another torch version may change the last bits of the pretrained weights, and
so model.safetensors; the text files (data, tokenizer, configs) do not depend on the hardware.
"""
import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

EOS = "<|endoftext|>"

# ---- sizes and seeds ------------------------------------------------------------------------------
CORPUS_SEED = 1234
DATA_SEED = 5678
PACK_SEED = 91011
MODEL_SEED = 1213
PRETRAIN_DOCS = 102000
TOKENIZER_DOCS = 30000
TOKENIZER_VOCAB = 2048          # BPE target (the trainer stops earlier if it runs out of pairs)
N_EMBD, N_LAYER, N_HEAD, N_POSITIONS = 128, 4, 4, 128
BATCH = 16
PEAK_LR = 3e-3
WARMUP_STEPS = 100
PROBE_EVERY = 200
TORCH_THREADS = 2
N_TRAIN, N_EVAL = 900, 180
DEMO_TASK = "count"

DEMO_CONFIG = {
    "num_virtual_tokens": 10,
    "prompt_tuning_init": "TEXT",
    "prompt_tuning_init_text": "Read the sentence and answer.",
    "lr": 0.03,
    "warmup_steps": 15,
    "max_steps": 150,
    "batch_size": 8,
    "weight_decay": 0.0,
    "max_new_tokens": 4,
    "seed": 42,
}


def log(msg):
    print(f"[make_demo_assets] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------
# 1. The invented world
# ---------------------------------------------------------------------------------------------------

NAMES = ["Alma", "Bram", "Cora", "Dario", "Edda", "Finn", "Greta", "Hugo", "Ida", "Jonas", "Kira", "Lars",
         "Mira", "Nils", "Olive", "Piet", "Rosa", "Sven", "Tilda", "Ugo", "Vera", "Wim", "Yara", "Zeno",
         "Anke", "Boris", "Clara", "Emil", "Frida", "Gus", "Hanna", "Ivo", "Juno", "Karl", "Lena", "Milo",
         "Nora", "Otto", "Pia", "Rufus"]
JOBS = ["farmer", "baker", "miller", "sailor", "weaver", "smith", "potter", "fisher", "tailor", "teacher",
        "doctor", "painter", "carpenter", "gardener", "shepherd", "merchant"]
TOWNS = ["Brindle", "Corrow", "Dunmere", "Elsby", "Farrow", "Glenmoor", "Hollin", "Ivesdale", "Kelwick",
         "Larkton", "Mossbury", "Northwold", "Orrin", "Pellham", "Quarrow", "Redvale", "Stonmere", "Tarnby",
         "Westhollow", "Yarrowby"]
# kind -> [(singular, plural)]
KINDS = {
    "fruit": [("apple", "apples"), ("pear", "pears"), ("plum", "plums"), ("cherry", "cherries"), ("lemon", "lemons"), ("peach", "peaches")],
    "animal": [("horse", "horses"), ("goat", "goats"), ("sheep", "sheep"), ("rabbit", "rabbits"), ("duck", "ducks"), ("goose", "geese")],
    "tool": [("hammer", "hammers"), ("saw", "saws"), ("axe", "axes"), ("shovel", "shovels"), ("rake", "rakes"), ("chisel", "chisels")],
    "vehicle": [("cart", "carts"), ("wagon", "wagons"), ("boat", "boats"), ("bicycle", "bicycles"), ("sled", "sleds"), ("canoe", "canoes")],
    "clothing": [("coat", "coats"), ("hat", "hats"), ("scarf", "scarves"), ("boot", "boots"), ("glove", "gloves"), ("shirt", "shirts")],
    "instrument": [("drum", "drums"), ("flute", "flutes"), ("fiddle", "fiddles"), ("harp", "harps"), ("horn", "horns"), ("lute", "lutes")],
    "furniture": [("chair", "chairs"), ("table", "tables"), ("bench", "benches"), ("stool", "stools"), ("shelf", "shelves"), ("bed", "beds")],
    "vegetable": [("carrot", "carrots"), ("onion", "onions"), ("turnip", "turnips"), ("potato", "potatoes"), ("cabbage", "cabbages"), ("leek", "leeks")],
}
KIND_PLURAL = {"fruit": "fruits", "animal": "animals", "tool": "tools", "vehicle": "vehicles",
               "clothing": "clothes", "instrument": "instruments", "furniture": "furniture",
               "vegetable": "vegetables"}
COLORS = ["red", "blue", "green", "yellow", "brown", "white", "black", "grey"]
COUNTS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# verb -> past participle (for the passive template)
VERBS = {"bought": "bought", "sold": "sold", "carried": "carried", "found": "found", "painted": "painted",
         "washed": "washed", "lost": "lost", "borrowed": "borrowed", "mended": "mended", "hid": "hidden",
         "counted": "counted", "fetched": "fetched", "traded": "traded", "guarded": "guarded",
         "sketched": "sketched"}
FEELINGS = ["happy", "tired", "proud", "worried", "calm", "hungry", "cheerful", "sleepy", "busy", "glad"]
WEATHER = ["cold", "warm", "windy", "rainy", "sunny", "foggy", "quiet", "bright", "grey", "stormy"]
PLACES_IN_TOWN = ["the market", "the mill", "the harbour", "the old bridge", "the square", "the inn",
                  "the school", "the chapel", "the bakery", "the well", "the orchard", "the river"]

# Where each kind of thing is kept (the "place" task: a second function of the object, like "kind").
KIND_PLACE = {"fruit": "orchard", "animal": "barn", "tool": "shed", "vehicle": "yard", "clothing": "wardrobe",
              "instrument": "hall", "furniture": "house", "vegetable": "garden"}

# The extraction tasks. All of them look at the object phrase that ends every event sentence.
TASKS = ["kind", "place", "color", "count"]
LIST_HEADERS = {
    "kind": ["Name the kind of thing in each sentence.", "For each sentence, say what kind of thing it is about.",
             "What kind of object does each sentence mention?", "Sort each sentence by the kind of thing in it."],
    "place": ["Say where the things in each sentence are kept.", "For each sentence, say where the thing belongs.",
              "Where is the object of each sentence kept?", "Name the place for the thing in each sentence."],
    "color": ["Name the color in each sentence.", "For each sentence, say which color is mentioned.",
              "What color does each sentence mention?", "Find the color in each sentence."],
    "count": ["Count the things in each sentence.", "For each sentence, say how many things there were.",
              "How many objects does each sentence mention?", "Find the number in each sentence."],
}
QA_QUESTIONS = {
    "kind": ["What kind of thing is it about?", "What kind of object is mentioned?"],
    "place": ["Where are they kept?", "Where does it belong?"],
    "color": ["What color is mentioned?", "Which color was it?"],
    "count": ["How many were there?", "How many things are mentioned?"],
}
# The demo task ("count") is half of all task documents; the other three share the rest.
TASK_WEIGHTS = [1, 1, 1, 3]
FIELD_NAMES = {"kind": "Kind", "place": "Place", "color": "Color", "count": "Count"}

ITEM_KIND = {s: k for k, items in KINDS.items() for s, _ in items}


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def event(rng):
    """One event sentence and its attributes."""
    name, job, town = rng.choice(NAMES), rng.choice(JOBS), rng.choice(TOWNS)
    kind = rng.choice(sorted(KINDS))
    sing, plur = rng.choice(KINDS[kind])
    color, verb = rng.choice(COLORS), rng.choice(sorted(VERBS))
    n = rng.randrange(1, 10)
    count = COUNTS[n - 1]
    obj = f"{article(color)} {color} {sing}" if n == 1 else f"{count} {color} {plur}"
    t = rng.randrange(4)  # the object phrase always ends the sentence
    if t == 0:
        s = f"{name} the {job} {verb} {obj}."
    elif t == 1:
        s = f"In {town}, {name} {verb} {obj}."
    elif t == 2:
        s = f"{name} from {town} {verb} {obj}."
    else:
        s = f"At the market, the {job} {name} {verb} {obj}."
    attrs = {"kind": kind, "place": KIND_PLACE[kind], "color": color, "count": count, "town": town,
             "person": name, "trade": job, "item": sing, "plural": plur}
    return s, attrs


def filler(rng, name, town, plur):
    t = rng.randrange(8)
    if t == 0:
        return f"{name} was {rng.choice(FEELINGS)}."
    if t == 1:
        return f"The weather in {town} was {rng.choice(WEATHER)}."
    if t == 2:
        return f"Then {name} went to {rng.choice(PLACES_IN_TOWN)}."
    if t == 3:
        return f"{name} and {rng.choice(NAMES)} talked about the {plur}."
    if t == 4:
        return f"It was a {rng.choice(WEATHER)} day in {town}."
    if t == 5:
        return f"Later, {name} walked home to {town}."
    if t == 6:
        return f"Everyone in {town} liked the {plur}."
    return f"The {plur} were {rng.choice(['old', 'new', 'heavy', 'small', 'large', 'clean', 'cheap'])}."


def story_doc(rng):
    """A few event sentences with filler sentences that refer back to what was mentioned before."""
    parts, seen = [], []
    for _ in range(rng.randrange(3, 7)):
        if not seen or rng.random() < 0.5:
            s, a = event(rng)
            parts.append(s)
            seen.append(a)
        else:
            a = rng.choice(seen)
            parts.append(filler(rng, a["person"], a["town"], a["plural"]))
    return " ".join(parts)


def fact_doc(rng):
    parts = []
    for _ in range(rng.randrange(3, 7)):
        t = rng.randrange(7)
        kind = rng.choice(sorted(KINDS))
        sing, plur = rng.choice(KINDS[kind])
        if t == 0:
            parts.append(f"{article(sing).capitalize()} {sing} is a kind of {kind}.")
        elif t == 1:
            parts.append(f"{plur.capitalize()} are {KIND_PLURAL[kind]}.")
        elif t == 2:
            parts.append(f"{rng.choice(TOWNS)} is a town near {rng.choice(TOWNS)}.")
        elif t == 3:
            parts.append(f"{rng.choice(NAMES)} is a {rng.choice(JOBS)} in {rng.choice(TOWNS)}.")
        elif t == 4:
            a, b = rng.sample(KINDS[kind], 2)
            parts.append(f"The {a[0]} and the {b[0]} are both {KIND_PLURAL[kind]}.")
        elif t == 5:
            parts.append(f"{plur.capitalize()} are kept in the {KIND_PLACE[kind]}.")
        else:
            parts.append(f"The {KIND_PLACE[kind]} is where {KIND_PLURAL[kind]} are kept.")
    return " ".join(parts)


def task_doc(rng):
    fmt = rng.choices(["list", "qa", "record"], weights=[85, 7.5, 7.5])[0]
    if fmt == "list":  # header naming the task, then 1-3 lines "<sentence> <answer>"
        task = rng.choices(TASKS, weights=TASK_WEIGHTS)[0]
        n = rng.choices([1, 2, 3, 4], weights=[4, 2, 2, 2])[0]
        lines = [rng.choice(LIST_HEADERS[task])]
        for _ in range(n):
            s, a = event(rng)
            lines.append(f"{s} {a[task]}")
        return "\n".join(lines)
    s, a = event(rng)
    if fmt == "qa":
        task = rng.choices(TASKS, weights=TASK_WEIGHTS)[0]
        return f"{s}\nQuestion: {rng.choice(QA_QUESTIONS[task])}\nAnswer: {a[task]}"
    tasks = rng.sample(TASKS, rng.randrange(1, len(TASKS) + 1))  # record: some fields, any order
    return "\n".join([f"Sentence: {s}"] + [f"{FIELD_NAMES[t]}: {a[t]}" for t in tasks])


def probe(model, tok, n=32, seed=7):
    """Next-token accuracy of each task's answer in the list and record formats (progress logging)."""
    rng = random.Random(seed)
    res = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for task in TASKS:
            for fmt in ("list", "record"):
                ok = 0
                for _ in range(n):
                    s, a = event(rng)
                    p = f"{LIST_HEADERS[task][0]}\n{s}" if fmt == "list" else f"Sentence: {s}\n{FIELD_NAMES[task]}:"
                    ids = tok.encode(p).ids
                    nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                    ok += nxt == tok.encode(" " + a[task]).ids[0]
                res[f"{task}/{fmt}"] = round(ok / n, 2)
    model.train(was_training)
    return res


def make_corpus():
    rng = random.Random(CORPUS_SEED)
    docs = []
    for _ in range(PRETRAIN_DOCS):
        u = rng.random()
        docs.append(story_doc(rng) if u < 0.15 else fact_doc(rng) if u < 0.2 else task_doc(rng))
    return docs


def make_task_data(forbidden):
    """The demo split: fresh event sentences labelled with the DEMO_TASK answer, each split balanced over
    the answer values; no sentence repeats or occurs in the pretraining documents."""
    rng = random.Random(DATA_SEED)
    values = sorted({event(random.Random(i))[1][DEMO_TASK] for i in range(2000)})
    seen = set(forbidden)
    splits = []
    for n in (N_TRAIN, N_EVAL):
        assert n % len(values) == 0, (n, len(values))
        quota = {v: n // len(values) for v in values}
        rows = []
        while len(rows) < n:
            s, a = event(rng)
            if s in seen or quota[a[DEMO_TASK]] == 0:
                continue
            seen.add(s)
            quota[a[DEMO_TASK]] -= 1
            rows.append({"input": s, "output": " " + a[DEMO_TASK]})
        rng.shuffle(rows)
        splits.append(rows)
    return splits


# ---------------------------------------------------------------------------------------------------
# 2. Tokenizer
# ---------------------------------------------------------------------------------------------------

def train_tokenizer(docs):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok = Tokenizer(models.BPE(dropout=None, unk_token=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB - 1, min_frequency=2, show_progress=False,
                                  special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    trained = json.loads(tok.to_str())
    vocab = dict(trained["model"]["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["model"]["merges"]]
    assert len(vocab) == 256 + len(merges), (len(vocab), len(merges))
    eos_id = len(vocab)
    vocab[EOS] = eos_id

    final = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                                 continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                                 byte_fallback=False, ignore_merges=False))
    final.normalizer = None
    final.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    final.post_processor = processors.ByteLevel(trim_offsets=False)
    final.decoder = decoders.ByteLevel()
    final.add_special_tokens([AddedToken(EOS, single_word=False, lstrip=False, rstrip=False,
                                         normalized=True, special=True)])
    assert final.token_to_id(EOS) == eos_id
    return final, vocab, merges


def save_tokenizer(final_tok, vocab, merges, out_dir):
    from transformers import GPT2Tokenizer

    hf = GPT2Tokenizer(tokenizer_object=final_tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                       pad_token=EOS, add_prefix_space=False, clean_up_tokenization_spaces=False,
                       model_max_length=N_POSITIONS)
    hf.save_pretrained(out_dir)
    # GPT-2's classic files, written by hand like openai-community/gpt2's (compact JSON ordered by id).
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(dict(by_id), ensure_ascii=False, separators=(",", ":")))
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    stm = os.path.join(out_dir, "special_tokens_map.json")
    if not os.path.exists(stm):  # transformers 5 stopped writing it; older loaders still look for it
        with open(stm, "w", encoding="utf-8") as f:
            json.dump({"bos_token": EOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, f, indent=2)
            f.write("\n")
    return hf


# ---------------------------------------------------------------------------------------------------
# 3-4. Model and pretraining
# ---------------------------------------------------------------------------------------------------

def make_config(vocab_size, eos_id):
    from transformers import GPT2Config
    return GPT2Config(vocab_size=vocab_size, n_positions=N_POSITIONS, n_embd=N_EMBD, n_layer=N_LAYER,
                      n_head=N_HEAD, n_inner=None, activation_function="gelu_new", resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, initializer_range=0.02,
                      scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                      reorder_and_upcast_attn=False, use_cache=True, bos_token_id=eos_id, eos_token_id=eos_id,
                      pad_token_id=eos_id, tie_word_embeddings=True, architectures=["GPT2LMHeadModel"])


def pack_rows(token_docs, eos_id):
    """Whole documents back to back (each already ends with EOS) into rows of N_POSITIONS."""
    order = list(range(len(token_docs)))
    random.Random(PACK_SEED).shuffle(order)
    rows, cur = [], []
    for i in order:
        d = token_docs[i][:N_POSITIONS]
        if len(cur) + len(d) > N_POSITIONS:
            rows.append(cur)
            cur = []
        cur = cur + d
    if cur:
        rows.append(cur)
    ids = torch.full((len(rows), N_POSITIONS), eos_id, dtype=torch.int64)
    labels = torch.full((len(rows), N_POSITIONS), -100, dtype=torch.int64)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row)
        labels[r, :len(row)] = torch.tensor(row)
    return ids, labels


def pretrain(model, tok, ids, labels, max_steps=None, save_every=0, save_dir=None):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "wpe" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=PEAK_LR, betas=(0.9, 0.98), eps=1e-8, foreach=False, fused=False)
    steps = ids.shape[0] // BATCH
    if max_steps is not None:
        steps = min(steps, max_steps)

    def lr_at(step):
        if step < WARMUP_STEPS:
            return PEAK_LR * (step + 1) / WARMUP_STEPS
        prog = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
        return PEAK_LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))

    model.train()
    t0 = time.time()
    ema = None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x = ids[step * BATCH:(step + 1) * BATCH]
        y = labels[step * BATCH:(step + 1) * BATCH]
        loss = model(input_ids=x, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step}/{steps} loss {loss.item():.4f} (ema {ema:.4f}) lr {lr_at(step):.2e} "
                f"{time.time() - t0:.0f}s")
        if (step + 1) % PROBE_EVERY == 0 or step == steps - 1:
            log(f"  answer accuracy with the task cue: {probe(model, tok)}")
        if save_every and (step + 1) % save_every == 0:
            model.save_pretrained(os.path.join(save_dir, f"step{step + 1}"))
    model.eval()
    return ema


# ---------------------------------------------------------------------------------------------------
# 5. Writing everything
# ---------------------------------------------------------------------------------------------------

def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "examples", "demo"), help="output directory")
    ap.add_argument("--max-steps", type=int, default=None, help="cut pretraining short (experiments only)")
    ap.add_argument("--save-every", type=int, default=0,
                    help="also save the model every N steps under <out>/checkpoints (experiments only)")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                    help="override a constant of this file (experiments only), e.g. N_LAYER=4")
    args = ap.parse_args()
    for kv in args.set:
        k, v = kv.split("=", 1)
        assert k in globals() and k.isupper(), k
        globals()[k] = type(globals()[k])(v)

    torch.set_num_threads(TORCH_THREADS)
    torch.use_deterministic_algorithms(True)
    out = args.out
    model_dir, data_dir = os.path.join(out, "model"), os.path.join(out, "data")
    for d in (model_dir, data_dir):
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)

    log("generating corpus")
    docs = make_corpus()
    train_rows, eval_rows = make_task_data(set(docs))
    write_jsonl(os.path.join(data_dir, "train.jsonl"), train_rows)
    write_jsonl(os.path.join(data_dir, "eval.jsonl"), eval_rows)

    log("training tokenizer")
    tok, vocab, merges = train_tokenizer(docs[:TOKENIZER_DOCS])
    save_tokenizer(tok, vocab, merges, model_dir)
    eos_id = tok.token_to_id(EOS)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    log(f"vocab {vocab_size} (eos {eos_id})")
    for k in sorted(KINDS):
        assert len(tok.encode(" " + k).ids) == 1, k

    token_docs = [e.ids + [eos_id] for e in tok.encode_batch(docs)]
    ids, labels = pack_rows(token_docs, eos_id)
    n_tok = int((labels != -100).sum())
    log(f"{len(docs)} docs, {n_tok} tokens, {ids.shape[0]} rows of {N_POSITIONS} "
        f"({n_tok / ids.numel():.1%} filled)")

    from transformers import GPT2LMHeadModel
    torch.manual_seed(MODEL_SEED)
    config = make_config(vocab_size, eos_id)
    config._attn_implementation = "eager"
    model = GPT2LMHeadModel(config)
    log(f"model: {sum(p.numel() for p in model.parameters())} parameters")
    t0 = time.time()
    final_loss = pretrain(model, tok, ids, labels, args.max_steps, args.save_every,
                          os.path.join(out, "checkpoints"))
    log(f"pretraining done in {time.time() - t0:.0f}s, final loss (ema) {final_loss:.4f}")
    model.generation_config.pad_token_id = eos_id
    model.save_pretrained(model_dir, safe_serialization=True)

    with open(os.path.join(out, "demo_config.json"), "w", encoding="utf-8") as f:
        json.dump(DEMO_CONFIG, f, indent=2)
        f.write("\n")

    for dirpath, _, files in sorted(os.walk(out)):
        for fn in sorted(files):
            p = os.path.join(dirpath, fn)
            if p.endswith(".md"):
                continue
            log(f"{sha256(p)}  {os.path.getsize(p):>9}  {os.path.relpath(p, out)}")


if __name__ == "__main__":
    main()
