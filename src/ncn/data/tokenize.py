"""`ncn data tokenize`: {train,heldout,valid}.txt -> {train,heldout,valid}.bin + meta.json.

Each split becomes one flat token stream: the stories' ids with `<|endoftext|>` between
consecutive stories (a separator-less validation stream is encoded as it is, no EOT).
Encoding is batched (`Tokenizer.encode_batch_fast`, parallel in Rust) and streamed, so memory
stays bounded on the full 2 GB corpus.

meta.json `bytes` (the denominator of bits-per-byte) counts the UTF-8 bytes of exactly the
text that was tokenized: every story's text as stored in {split}.txt, its newlines included,
the `<|endoftext|>` separator lines (and whitespace-only segments between them) excluded.
Decoding the stream without its EOT ids gives back exactly those bytes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from ncn import progress
from ncn.data import textfile, tokenizer as tokenizers_
from ncn.data.meta import SPLITS, load_meta
from ncn.data.textfile import EOT
from ncn.errors import NCNError
from ncn.fileio import atomic_path, read_json, sha256_file, write_json

DTYPE_MAX_VOCAB = {"uint16": 1 << 16, "uint32": 1 << 32}


def choose_dtype(vocab_size: int, requested: str = "auto") -> str:
    if requested == "auto":
        return "uint16" if vocab_size <= DTYPE_MAX_VOCAB["uint16"] else "uint32"
    if vocab_size > DTYPE_MAX_VOCAB[requested]:
        raise NCNError(
            f"the tokenizer has {vocab_size} tokens, more than {requested} can hold ({DTYPE_MAX_VOCAB[requested]}); "
            "use --dtype uint32 or --dtype auto"
        )
    return requested


def encode_file(
    tok,
    path: Path,
    out_file,
    dtype: str,
    eot_id: int,
    require_separator: bool,
    batch_size: int = 512,
    chunk_bytes: int = 1 << 12,
    desc: str = "",
) -> dict:
    """Encode the stories of `path` into `out_file` (an open binary file); returns counts."""
    np_dtype = np.dtype(dtype)
    limit = DTYPE_MAX_VOCAB[dtype]
    tokens = nbytes = stories = 0
    batch: list[tuple[str, bool]] = []
    starts_story = True  # the next piece is the first piece of a story

    def flush():
        nonlocal tokens, starts_story, stories
        # encode_batch without the character offsets we do not need (same ids, less work)
        encs = tok.encode_batch_fast([t for t, _ in batch], add_special_tokens=False)
        ids: list[int] = []
        for enc, (_, ends) in zip(encs, batch):
            if starts_story:
                if stories:
                    ids.append(eot_id)  # between stories, not before the first
                stories += 1
            ids.extend(enc.ids)
            starts_story = ends
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and arr.max() >= limit:
            raise NCNError(f"token id {int(arr.max())} does not fit {dtype}; use --dtype uint32")
        out_file.write(arr.astype(np_dtype).tobytes())
        tokens += arr.size
        batch.clear()

    with progress.bar(total=path.stat().st_size, unit="B", unit_scale=True, desc=desc, mininterval=1.0) as bar:
        for text, n, ends in textfile.iter_pieces(path, chunk_bytes=chunk_bytes, require_separator=require_separator):
            batch.append((text, ends))
            nbytes += n
            bar.update(n)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        bar.update(bar.total - bar.n)  # the separator lines, which are not tokenized
    return {"tokens": tokens, "bytes": nbytes, "stories": stories}


def tokenize(
    cfg: dict,
    data_dir: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "auto",
    batch_size: int = 512,
    chunk_bytes: int = 1 << 12,
) -> dict:
    """Run the tokenize stage; returns meta.json's content (plus nothing else on disk)."""
    data_dir, out, tokenizer_path = Path(data_dir), Path(out), Path(tokenizer_path)
    manifest = _read_manifest(data_dir)
    if manifest["val_split"] != cfg["data"]["val_split"]:
        raise NCNError(
            f"{data_dir / 'manifest.json'} has val_split={manifest['val_split']} but the config says "
            f"{cfg['data']['val_split']}; re-run 'ncn data fetch' with this config"
        )
    tok = tokenizers_.load(tokenizer_path)
    eot_id = tok.token_to_id(EOT)
    if eot_id is None:
        raise NCNError(f"tokenizer {tokenizer_path} has no token {EOT}")
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = choose_dtype(vocab_size, dtype)
    # The string "<|endoftext|>" inside a story is text like any other: EOT ids come only from
    # the story boundaries, so counting EOTs counts boundaries and decoding gives the text back.
    tok.encode_special_tokens = True

    out.mkdir(parents=True, exist_ok=True)
    # meta.json goes first and comes back last: it must never describe half-replaced .bin files.
    (out / "meta.json").unlink(missing_ok=True)
    meta = {
        "dtype": dtype,
        "vocab_size": vocab_size,
        "eot_id": eot_id,
        "tokenizer_kind": cfg["tokenizer"]["kind"],
        "tokenizer_sha256": sha256_file(tokenizer_path),
        "val_split": manifest["val_split"],
        "heldout_fraction": manifest["heldout_fraction"],
        "source": manifest["source"],
    }
    rates = _encode_splits(tok, manifest, data_dir, out, meta, batch_size, chunk_bytes)
    write_json(out / "meta.json", meta)
    load_meta(out, tokenizer_path)  # the consumers' check must pass on what we just wrote
    for split in SPLITS:
        m = meta[split]
        print(
            f"{split}: {m['tokens']:,} tokens, {m['bytes']:,} bytes ({m['bytes'] / max(m['tokens'], 1):.2f} bytes/token), "
            f"{m['stories'] if m['stories'] is not None else 'one stream, no'} stories, {rates[split]:.2f} MB/s",
            file=sys.stderr,
        )
    return meta


def _encode_splits(tok, manifest: dict, data_dir: Path, out: Path, meta: dict, batch_size: int,
                   chunk_bytes: int) -> dict[str, float]:
    """Encode every split into out/{split}.bin, filling meta[split]; MB/s per split."""
    rates = {}
    with contextlib.ExitStack() as stack:  # the .bin files get their names only if all succeed
        for split in SPLITS:
            entry = manifest[split]
            text_path = data_dir / entry["file"]
            tmp = stack.enter_context(atomic_path(out / f"{split}.bin"))
            t0 = time.perf_counter()
            with open(tmp, "wb") as f:
                counts = encode_file(
                    tok, text_path, f, meta["dtype"], meta["eot_id"], require_separator=split != "valid",
                    batch_size=batch_size, chunk_bytes=chunk_bytes, desc=f"tokenize {split}",
                )  # fmt: skip
            if entry["stories"] is not None and counts["stories"] != entry["stories"]:
                raise NCNError(f"{text_path}: {counts['stories']} stories, but the manifest says {entry['stories']}")
            rates[split] = counts["bytes"] / max(time.perf_counter() - t0, 1e-9) / 1e6
            meta[split] = {
                "file": f"{split}.bin",
                "tokens": counts["tokens"],
                "bytes": counts["bytes"],
                "stories": entry["stories"],  # None for a separator-less stream
                "text_sha256": entry["sha256"],
            }
    return rates


def _read_manifest(data_dir: Path) -> dict:
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise NCNError(f"{path} not found: run 'ncn data fetch --out {data_dir}' first")
    manifest = read_json(path)
    if any(split not in manifest for split in SPLITS):
        raise NCNError(f"{path} predates the held-out split (no heldout.txt); run 'ncn data fetch' again")
    for split in SPLITS:
        text_path = data_dir / manifest[split]["file"]
        if not text_path.is_file():
            raise NCNError(f"{text_path} not found: run 'ncn data fetch --out {data_dir}' again")
        textfile.check_nonempty(text_path)
        if sha256_file(text_path) != manifest[split]["sha256"]:
            raise NCNError(f"{text_path} changed since {path} was written; run 'ncn data fetch' again")
    return manifest
