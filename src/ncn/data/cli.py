"""`ncn data fetch|tokenizer|tokenize|labels|check`: the data stage of the pipeline."""

from __future__ import annotations

import argparse
import json
import sys

from ncn.config import load_config

DESCRIPTION = """\
The data stage, in three steps that Snakemake runs in order:

  fetch      find TinyStories and write OUT/train.txt, OUT/heldout.txt, OUT/valid.txt and
             OUT/manifest.json (source, sha256, bytes, stories per split). Looks in NCN_DATA_DIR,
             then data.dir (default resources/tinystories/), then streams it from the Hugging Face
             hub; data.source = local | hub forces one. data.max_train_bytes / max_train_stories
             cap the train data at a story boundary. The last data.heldout_fraction of those
             stories (default 0.05) become heldout.txt, in the train format, and are never trained
             on. valid.txt is the dataset's validation file (data.val_split = official) or the
             held-out tail again (train_tail, the original's split).
  tokenizer  train a byte-level BPE (tokenizer.kind bpe, tokenizer.vocab_size) on train.txt,
             or build GPT-2's (kind gpt2, from tokenizer.gpt2_dir or the hub) -> tokenizer.json
  tokenize   encode the splits -> train.bin, heldout.bin, valid.bin (flat streams,
             <|endoftext|> between stories) and meta.json (dtype, vocab_size, eot_id,
             token/byte/story counts per split, the tokenizer's sha256)

then `labels` (for the control variant): one uint8 per token of train.bin and heldout.bin, the
label bits of its story (ncn.control.LABELS: "dialogue" = the story contains a double quotation
mark) -> train.label.bin, heldout.label.bin, labels.json; and `check`, which verifies a
tokenized folder the way training and evaluation do.
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ncn data", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{fetch,tokenizer,tokenize,labels,check}")

    f = sub.add_parser("fetch", help="find TinyStories; write train.txt, heldout.txt, valid.txt, manifest.json")
    f.add_argument("--config", required=True, help="pipeline config (YAML or the resolved JSON)")
    f.add_argument("--out", required=True, help="output folder, e.g. results/data")

    t = sub.add_parser("tokenizer", help="train the BPE on train.txt, or build GPT-2's tokenizer")
    t.add_argument("--config", required=True, help="pipeline config (section tokenizer)")
    t.add_argument("--data", required=True, help="folder written by 'ncn data fetch'")
    t.add_argument("--out", required=True, help="tokenizer file to write, e.g. results/data/tokenizer.json")

    k = sub.add_parser("tokenize", help="encode the splits into train.bin, heldout.bin, valid.bin, meta.json")
    k.add_argument("--config", required=True, help="pipeline config")
    k.add_argument("--data", required=True, help="folder written by 'ncn data fetch'")
    k.add_argument("--tokenizer", required=True, help="tokenizer.json written by 'ncn data tokenizer'")
    k.add_argument("--out", required=True, help="output folder for train.bin, heldout.bin, valid.bin, meta.json")
    k.add_argument(
        "--dtype",
        choices=["auto", "uint16", "uint32"],
        default="auto",
        help="token dtype; auto: uint16 when the vocab has at most 65536 tokens, else uint32 (default auto)",
    )
    k.add_argument("--batch-size", type=_positive, default=512, help="stories per encode_batch call (default 512)")

    lb = sub.add_parser("labels", help="per-token story labels (the story contains dialogue) beside train.bin "
                        "and heldout.bin, for the control variant")
    lb.add_argument("--data", required=True, help="tokenized folder with the texts (train.txt, heldout.txt) and meta.json")
    lb.add_argument("--out", help="output folder for the .label.bin files and labels.json (default: --data)")

    c = sub.add_parser("check", help="verify meta.json against the .bin files and the tokenizer; print it")
    c.add_argument("--data", required=True, help="tokenized folder (with meta.json)")
    c.add_argument("--tokenizer", help="tokenizer to check (default: DATA/tokenizer.json when it exists)")
    return p


def main(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    if a.command == "fetch":
        from ncn.data.sources import fetch

        m = fetch(load_config(a.config, stage="data.fetch"), a.out)
        for split in ("train", "heldout", "valid"):
            e = m[split]
            stories = e["stories"] if e["stories"] is not None else "unknown (one stream)"
            print(f"{split}: {e['bytes']:,} bytes, stories: {stories}, sha256 {e['sha256']}", file=sys.stderr)
        print(f"source: {m['source']}", file=sys.stderr)
    elif a.command == "tokenizer":
        from ncn.data import tokenizer

        cfg = load_config(a.config, stage="data.tokenizer")
        tok = tokenizer.build(cfg, a.data)
        tokenizer.save(tok, a.out)
        print(f"{cfg['tokenizer']['kind']} tokenizer: {tok.get_vocab_size()} tokens -> {a.out}", file=sys.stderr)
    elif a.command == "tokenize":
        from ncn.data.tokenize import tokenize

        tokenize(load_config(a.config, stage="data.tokenize"), a.data, a.tokenizer, a.out, dtype=a.dtype, batch_size=a.batch_size)
    elif a.command == "labels":
        from ncn.data.labels import write_labels

        doc = write_labels(a.data, a.out)
        for split in ("train", "heldout"):
            rates = ", ".join(f"{n} {r:.3f}" for n, r in doc[split]["base_rate"].items())
            print(f"{split}: {doc[split]['stories']:,} stories, {doc[split]['tokens']:,} tokens; base rate {rates}",
                  file=sys.stderr)
    else:
        from ncn.data.meta import load_meta

        meta = load_meta(a.data, a.tokenizer)
        json.dump(meta, sys.stdout, indent=2, sort_keys=True)
        print()
    return 0
