"""`ncn data labels`: per-token story labels beside the tokens, for the control variant.

For each split with story boundaries that training or the control analysis reads (LABEL_SPLITS:
train and heldout), {split}.label.bin holds one uint8 per token of {split}.bin: the label bits of
the token's story (ncn.control: bit i = LABELS[i], e.g. bit 0 = "the story contains dialogue").
The stories are read from {split}.txt (the text that was tokenized: its sha256 must be meta.json's
text_sha256) and matched to the token stream by its end-of-text ids, which stand exactly at story
boundaries (ncn.data.tokenize): story k covers the tokens from the EOT that opens it (none for the
first) up to the next EOT. So a training window spanning two stories gets each token's own label.

labels.json (written last) names the labels and their rules, the tokenizer and text it was made
from, and per split the stories, tokens and positive count of each label (the base rate).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ncn.control import LABELS, story_bits
from ncn.data import textfile
from ncn.data.meta import load_meta
from ncn.errors import NCNError
from ncn.fileio import atomic_path, read_json, write_json

LABEL_SPLITS = ("train", "heldout")
LABELS_JSON = "labels.json"
CHUNK = 1 << 22  # tokens per pass: memory stays bounded on the full corpus


def label_file(split: str) -> str:
    return f"{split}.label.bin"


def split_story_bits(text_path: Path) -> tuple[np.ndarray, str]:
    """(label bits of every story of the file, in order; the file's sha256)."""
    import hashlib

    h = hashlib.sha256()
    lines = (line for line, _ in textfile.iter_lines(text_path, hasher=h))
    bits = [story_bits(s) for s in textfile.stories_from_lines(lines, text_path, require_separator=True)]
    return np.asarray(bits, dtype=np.uint8), h.hexdigest()


def token_labels(tokens: np.ndarray, eot_id: int, bits: np.ndarray, out) -> int:
    """Write the label of every token to `out` (a binary file): bits[k] for the tokens of story k,
    the EOT that opens story k included. Returns the number of EOT ids seen."""
    seen = 0
    for start in range(0, len(tokens), CHUNK):
        is_eot = np.asarray(tokens[start : start + CHUNK]) == eot_id
        story = seen + np.cumsum(is_eot)  # EOTs at or before each position = its story's index
        if story.size and story[-1] >= len(bits):
            raise NCNError(f"the token stream has more end-of-text ids than the text has story boundaries "
                           f"({len(bits)} stories); re-run 'ncn data tokenize'")
        out.write(bits[story].tobytes())
        seen += int(is_eot.sum())
    return seen


def write_labels(data_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
    """Write {split}.label.bin for LABEL_SPLITS and labels.json into `out` (default: data_dir)."""
    data_dir = Path(data_dir)
    out = Path(out) if out else data_dir
    meta = load_meta(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / LABELS_JSON).unlink(missing_ok=True)  # never describing half-replaced label files
    doc = {"names": list(LABELS), "rules": {n: rule for n, (_, rule) in LABELS.items()},
           "eot_id": meta["eot_id"], "tokenizer_sha256": meta["tokenizer_sha256"]}
    for split in LABEL_SPLITS:
        doc[split] = _label_split(data_dir, out, meta, split)
    write_json(out / LABELS_JSON, doc)
    return doc


def _label_split(data_dir: Path, out: Path, meta: dict, split: str) -> dict:
    text_path = data_dir / f"{split}.txt"
    if not text_path.is_file():
        raise NCNError(f"{text_path} not found: the labels are computed from the text 'ncn data fetch' wrote "
                       f"beside the tokens")
    bits, sha = split_story_bits(text_path)
    if meta[split].get("text_sha256") not in (None, sha):
        raise NCNError(f"{text_path} is not the text {data_dir}/{meta[split]['file']} was tokenized from "
                       f"(sha256 differs from meta.json's); re-run 'ncn data tokenize'")
    tokens = np.memmap(data_dir / meta[split]["file"], dtype=np.dtype(meta["dtype"]), mode="r")
    with atomic_path(out / label_file(split)) as tmp:
        with open(tmp, "wb") as f:
            n_eot = token_labels(tokens, meta["eot_id"], bits, f)
        if n_eot + 1 != len(bits):
            raise NCNError(f"{data_dir}/{meta[split]['file']} has {n_eot + 1} stories (end-of-text ids + 1) but "
                           f"{text_path} has {len(bits)}; re-run 'ncn data tokenize'")
    positive = {n: int(((bits >> i) & 1).sum()) for i, n in enumerate(LABELS)}
    return {"file": label_file(split), "tokens": int(len(tokens)), "stories": int(len(bits)),
            "text_sha256": sha, "positive": positive,
            "base_rate": {n: positive[n] / len(bits) for n in LABELS}}


def load_labels(data_dir: str | os.PathLike, meta: dict | None = None) -> dict:
    """labels.json of a data folder, checked against meta.json (same tokenizer, same texts, same
    token counts, every label file present with one byte per token)."""
    data_dir = Path(data_dir)
    meta = load_meta(data_dir) if meta is None else meta
    path = data_dir / LABELS_JSON
    again = f"run 'ncn data labels --data {data_dir}'"
    if not path.is_file():
        raise NCNError(f"no story labels in {data_dir} ({LABELS_JSON} is missing): the control variant trains "
                       f"on them; {again}")
    doc = read_json(path)
    if doc.get("names") != list(LABELS):
        raise NCNError(f"{path} has labels {doc.get('names')}, this ncn knows {list(LABELS)}; {again}")
    if doc.get("tokenizer_sha256") != meta["tokenizer_sha256"]:
        raise NCNError(f"{path} was made for other tokens (tokenizer sha256 differs from meta.json's); {again}")
    for split in LABEL_SPLITS:
        d, f = doc[split], data_dir / doc[split]["file"]
        if d["tokens"] != meta[split]["tokens"] or d["text_sha256"] != meta[split].get("text_sha256", d["text_sha256"]):
            raise NCNError(f"{path}: split {split} does not match meta.json (tokens or text changed); {again}")
        if not f.is_file() or f.stat().st_size != d["tokens"]:
            raise NCNError(f"{f} is missing or not one byte per token of {split}; {again}")
    return doc


def open_labels(data_dir: str | os.PathLike, split: str, meta: dict | None = None) -> np.memmap:
    """The per-token label bits of `split` (one of LABEL_SPLITS) as a read-only uint8 memmap."""
    if split not in LABEL_SPLITS:
        raise NCNError(f"no story labels for split {split!r} (labelled: {', '.join(LABEL_SPLITS)})")
    doc = load_labels(data_dir, meta)
    return np.memmap(Path(data_dir) / doc[split]["file"], dtype=np.uint8, mode="r")
