"""Trace one run: g, β, γ per layer per token and the token's surprisal, on fixed sentences.

Sentences (column `kind`):
  trace    analysis.trace_sentences (the seed's "Timmy wanted an apple. ... but it was empty.")
  valid    analysis.n_valid_sentences sentences taken from the validation stream (one per story,
           in stream order: the first sentence of 8–25 words that is not the story's opening;
           stories are split at EOT ids, or at blank lines in a stream without them)
  control  analysis.control_sentences: neutral contexts of analysis.probe_word (claim 4)

Each sentence is encoded on its own and prefixed with the end-of-text token as a BOS, as a
story starts in the training stream; so the first real token has a context. Position 0 is that
BOS: its signals are traced, its surprisal is NaN. Surprisal at position t ≥ 1 is
−log p(token_t | tokens_<t) in nats. `probe` is 1 on the token holding the first letter of the
first whole-word occurrence of probe_word (case-insensitive), else 0.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ncn.analysis import options, tables
from ncn.errors import NCNError

COLUMNS = ["variant", "size", "seed", "sentence_id", "kind", "pos", "token_id", "token", "layer",
           "g", "beta", "gamma", "surprisal", "probe"]
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+")
# How much of the validation stream to scan for sentences (enough for hundreds of stories).
_VALID_SCAN_TOKENS = 200_000


def load_tokenizer(data_dir: str | Path):
    from ncn.data.tokenizer import load

    return load(Path(data_dir) / "tokenizer.json")


def decode_chunks(ids: np.ndarray, eot_id: int, tokenizer) -> list[str]:
    """Decoded stories of a token window: split at EOT ids, or, in a stream without them
    (a separator-less validation file), at blank lines."""
    ids = np.asarray(ids, dtype=np.int64)
    cuts = np.flatnonzero(ids == eot_id)
    if len(cuts):
        pieces = [p[p != eot_id] for p in np.split(ids, cuts)]
        return [t for t in (tokenizer.decode(p.tolist()) for p in pieces if len(p)) if t.strip()]
    return [t for t in re.split(r"\n\s*\n", tokenizer.decode(ids.tolist())) if t.strip()]


def validation_sentences(tokens: np.ndarray, eot_id: int, tokenizer, n: int) -> list[str]:
    """n sentences from the start of the validation stream, one per story (see module doc)."""
    if n == 0:
        return []
    out = []
    window = tokens[:_VALID_SCAN_TOKENS]
    for story in decode_chunks(window, eot_id, tokenizer):
        sentences = _SENT_SPLIT.split(story.strip())
        for s in sentences[1:]:
            s = " ".join(s.split())
            if 8 <= len(s.split()) <= 25:
                out.append(s)
                break
        if len(out) == n:
            return out
    raise NCNError(f"found only {len(out)} of analysis.n_valid_sentences={n} suitable sentences "
                   f"in the first {len(window)} validation tokens; lower n_valid_sentences")


def probe_char(text: str, word: str) -> int | None:
    m = re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE)
    return None if m is None else m.start()


def encode(tokenizer, text: str, eot_id: int, block_size: int, word: str):
    """(ids with BOS, token strings, probe position or None). Truncates to block_size."""
    enc = tokenizer.encode(text, add_special_tokens=False)
    ids = [eot_id] + list(enc.ids)
    pieces = [tokenizer.id_to_token(eot_id) or "<eot>"] + [tokenizer.decode([i]) for i in enc.ids]
    probe = None
    c = probe_char(text, word)
    if c is not None:
        for t, (a, b) in enumerate(enc.offsets):
            if a <= c < b:
                probe = t + 1  # +1: the BOS
                break
    if len(ids) > block_size:
        print(f"ncn analyze trace: warning: {text[:40]!r}... has {len(ids)} tokens; truncated to "
              f"block_size {block_size}", file=sys.stderr)
        ids, pieces = ids[:block_size], pieces[:block_size]
        probe = probe if probe is not None and probe < block_size else None
    return ids, pieces, probe


def trace_sentence(model, ids: list[int]):
    """signals (T, L, 3) and surprisal (T,) (NaN at position 0) for one encoded sentence."""
    import torch

    idx = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = model(idx, return_signals=True)
    if out.signals is None:
        raise NCNError("this model has no NCN signals (variant 'none'); trace an NCN variant")
    logp = torch.log_softmax(out.logits[0].double(), dim=-1)
    surprisal = np.full(len(ids), np.nan)
    if len(ids) > 1:
        tgt = torch.tensor(ids[1:])
        surprisal[1:] = (-logp[:-1].gather(1, tgt[:, None])[:, 0]).numpy()
    return out.signals[0].double().numpy(), surprisal


def sentences_for(cfg: dict, data_dir: str | Path, tokenizer, meta: dict) -> list[tuple[str, str]]:
    """(kind, text) for every traced sentence, in a fixed order."""
    from ncn.data import open_split

    a = cfg["analysis"]
    out = [("trace", s) for s in a["trace_sentences"]]
    if a["n_valid_sentences"]:
        valid = open_split(data_dir, "valid", meta)
        out += [("valid", s) for s in validation_sentences(valid, meta["eot_id"], tokenizer, a["n_valid_sentences"])]
    out += [("control", s) for s in a["control_sentences"]]
    return out


def load_ncn_run(run_dir: str | Path, cfg: dict, data_dir: str | Path, threads: int, why_ncn: str | None):
    """(model, payload, meta) of an NCN run's model.pt, checked against the data and the config
    with the same refusals as `ncn evaluate`; `why_ncn` completes the error for variant 'none'
    (None: the baseline is accepted too)."""
    import torch

    from ncn.data import load_meta
    from ncn.model import load_model
    from ncn.runs import check_config_matches, check_data_matches

    torch.set_num_threads(threads)
    model, payload = load_model(Path(run_dir) / "model.pt")
    if why_ncn and model.cfg.spec.is_baseline:
        raise NCNError(f"{run_dir}: variant '{model.cfg.ncn}' {why_ncn}")
    meta = load_meta(data_dir)
    check_data_matches(payload, meta, Path(run_dir) / "model.pt", Path(data_dir))
    check_config_matches(cfg, payload, Path(run_dir) / "model.pt", "the config")
    return model, payload, meta


def trace_run(run_dir: str | Path, cfg: dict, data_dir: str | Path, threads: int = 1) -> pd.DataFrame:
    from ncn.progress import bar

    model, payload, meta = load_ncn_run(run_dir, cfg, data_dir, threads,
                                        "has no signals to trace; trace an NCN variant")
    tokenizer = load_tokenizer(data_dir)
    word = cfg["analysis"]["probe_word"]
    frames = []
    sents = sentences_for(cfg, data_dir, tokenizer, meta)
    for sid, (kind, text) in enumerate(bar(sents, desc=f"trace {payload.get('variant')}/{payload.get('size')}",
                                           leave=False)):
        ids, pieces, probe = encode(tokenizer, text, meta["eot_id"], model.cfg.block_size, word)
        sig, surprisal = trace_sentence(model, ids)
        T, L, _ = sig.shape
        pos = np.repeat(np.arange(T), L)
        frames.append(pd.DataFrame({
            "sentence_id": sid, "kind": kind, "pos": pos,
            "token_id": np.repeat(ids, L), "token": np.repeat(np.array(pieces, dtype=object), L),
            "layer": np.tile(np.arange(L), T),
            "g": sig[:, :, 0].reshape(-1), "beta": sig[:, :, 1].reshape(-1), "gamma": sig[:, :, 2].reshape(-1),
            "surprisal": np.repeat(surprisal, L),
            "probe": (pos == probe).astype(int) if probe is not None else 0,
        }))
    df = pd.concat(frames, ignore_index=True)
    df.insert(0, "seed", int(payload.get("seed", -1)))
    df.insert(0, "size", payload.get("size", ""))
    df.insert(0, "variant", model.cfg.ncn)
    return df[COLUMNS]


def write_trace(df: pd.DataFrame, out: str | Path) -> None:
    tables.write_csv(df, out, float_format="%.7g")


def read_trace(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise NCNError(f"trace {path} not found: run 'ncn analyze trace' first")
    df = pd.read_csv(path, keep_default_na=False, na_values={"surprisal": [""], "g": [""], "beta": [""], "gamma": [""]})
    missing = [c for c in COLUMNS if c not in df]
    if missing:
        raise NCNError(f"{path}: columns missing: {', '.join(missing)} (rerun 'ncn analyze trace')")
    df["size"] = df["size"].astype(str)
    return df


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="run folder holding model.pt (an NCN variant)")
    options.add_config(p)
    options.add_data(p)
    p.add_argument("--out", required=True, help="output CSV (results/traces/V_S.csv)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")


def main(args, cfg: dict) -> None:
    df = trace_run(args.run, cfg, args.data, args.threads)
    write_trace(df, args.out)
    print(f"ncn analyze trace: {df['sentence_id'].nunique()} sentences -> {args.out}", file=sys.stderr)
