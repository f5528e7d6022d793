#!/usr/bin/env python3
"""Regenerates every golden fixture under tests/fixtures/ from the real Hugging Face libraries.

Development tool only: needs torch, transformers, tokenizers, sentencepiece and peft from PyPI.
Neither the build nor the tests run it; its outputs are committed. Running it twice gives
bit-identical files (fixed seeds, single-threaded torch).

    python3 scripts/make_fixtures.py            # everything
    python3 scripts/make_fixtures.py gpt2 t5    # only some groups (tokconfig needs no torch)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))

GROUPS = ["gpt2", "t5", "tokconfig", "tokjson", "llama"]  # each is scripts/fixtures/<group>_fixtures.py with a main(root) function


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    wanted = argv[1:] or GROUPS
    for group in wanted:
        if group not in GROUPS:
            sys.exit(f"unknown fixture group '{group}': expected one of {', '.join(GROUPS)}")
        module = __import__(f"{group}_fixtures")
        module.main(root)


if __name__ == "__main__":
    main(sys.argv)
