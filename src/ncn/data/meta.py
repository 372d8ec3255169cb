"""Read tokenized data safely: `load_meta` checks meta.json against the files it describes.

Training, evaluation and generation call `load_meta(data_dir, tokenizer_path)` before they
read a token: a .bin whose size does not match its token count (an interrupted or foreign
write), or a tokenizer that is not the one the tokens were made with, is an NCNError instead
of a silently wrong result.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ncn.errors import NCNError
from ncn.fileio import read_json, sha256_file

# train: the training stream; heldout: the last stories of the train excerpt, never trained on;
# valid: the dataset's validation file (val_split official) or the held-out tail again (train_tail).
SPLITS = ("train", "heldout", "valid")
META_KEYS = ("dtype", "vocab_size", "eot_id", "tokenizer_kind", "tokenizer_sha256", "val_split", *SPLITS)
SPLIT_KEYS = ("file", "tokens", "bytes", "stories")


def load_meta(data_dir: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None) -> dict:
    """meta.json of a tokenized data folder, verified.

    Checks: meta.json exists and has every contract key; each split's .bin exists and holds
    exactly `tokens` values of `dtype`; the tokenizer's sha256 equals `tokenizer_sha256`.
    The tokenizer checked is `tokenizer_path`, or `data_dir/tokenizer.json` when that exists
    (the pipeline's layout); with neither, the hash is not checked.
    """
    data_dir = Path(data_dir)
    path = data_dir / "meta.json"
    if not path.is_file():
        raise NCNError(f"no tokenized data: {path} is missing (run 'ncn data tokenize' or pass --data DIR)")
    try:
        meta = read_json(path)
    except ValueError as e:
        raise NCNError(f"{path} is not valid JSON ({e}); re-run 'ncn data tokenize'") from None
    missing = [k for k in META_KEYS if k not in meta] + [
        f"{s}.{k}" for s in SPLITS if isinstance(meta.get(s), dict) for k in SPLIT_KEYS if k not in meta[s]
    ]
    if missing:
        raise NCNError(f"{path} lacks {', '.join(missing)}; re-run 'ncn data tokenize'")
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        f = data_dir / meta[split]["file"]
        if not f.is_file():
            raise NCNError(f"token file {f} (listed in {path}) is missing; re-run 'ncn data tokenize'")
        expected = meta[split]["tokens"] * itemsize
        if f.stat().st_size != expected:
            raise NCNError(
                f"{f} has {f.stat().st_size} bytes but {path} says {meta[split]['tokens']} tokens of "
                f"{meta['dtype']} ({expected} bytes); re-run 'ncn data tokenize'"
            )
    if tokenizer_path is None and (data_dir / "tokenizer.json").is_file():
        tokenizer_path = data_dir / "tokenizer.json"
    if tokenizer_path is not None:
        check_tokenizer(meta, tokenizer_path, path)
    return meta


def check_tokenizer(meta: dict, tokenizer_path: str | os.PathLike, meta_path) -> None:
    tokenizer_path = Path(tokenizer_path)
    if not tokenizer_path.is_file():
        raise NCNError(f"tokenizer {tokenizer_path} not found")
    sha = sha256_file(tokenizer_path)
    if sha != meta["tokenizer_sha256"]:
        raise NCNError(
            f"tokenizer {tokenizer_path} (sha256 {sha[:12]}...) is not the one the tokens in {meta_path} were made "
            f"with (sha256 {meta['tokenizer_sha256'][:12]}...); re-run 'ncn data tokenize' with this tokenizer"
        )


def open_split(data_dir: str | os.PathLike, split: str, meta: dict | None = None) -> np.memmap:
    """The token stream of `split` (one of SPLITS) as a read-only memmap."""
    meta = load_meta(data_dir) if meta is None else meta
    return np.memmap(Path(data_dir) / meta[split]["file"], dtype=np.dtype(meta["dtype"]), mode="r")
