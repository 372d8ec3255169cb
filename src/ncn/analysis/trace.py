"""Trace one run: g, β, γ per layer per token, the token's surprisal, the FFN branch's size and
the token's train frequency, on fixed sentences.

Sentences (column `kind`), in this order:
  trace    analysis.trace_sentences; the first is "the twist" ("Timmy wanted an apple. ... but
           it was empty.")
  control  analysis.control_sentences, each POSITION-MATCHED to the twist: preceded by neutral
           analysis.control_leadins (none, then one, then ordered pairs, then ordered triples of
           distinct ones; the first combination that works) so that probe_word sits at the same token
           index as in the twist. A control that no combination matches is left out (a warning
           names it); without a probe word in the twist the controls are traced as they are.
  pair     analysis.pair_sentences: minimal pairs of the twist (its prefix with a non-twist
           continuation, e.g. "..., and it was full.")
  valid    analysis.n_valid_sentences sentences of HELD-OUT text (heldout.bin, never trained
           on), one per story in stream order: the first sentence of 8–25 words that is not the
           story's opening (stories are split at EOT ids, or at blank lines without them)

Each sentence is encoded on its own and prefixed with the end-of-text token as a BOS, as a
story starts in the training stream; so the first real token has a context. Position 0 is that
BOS: its signals are traced, its surprisal is NaN. Surprisal at position t ≥ 1 is
−log p(token_t | tokens_<t) in nats. `probe` is 1 on one token per sentence, else 0: for
trace/control/valid the token holding the first letter of the first whole-word occurrence of
probe_word (case-insensitive); for a pair the first token that differs from the twist's (the
defaults differ at the probe word's position).
`branch_ratio` = ‖g·γ·FFN(N(x))‖ / ‖x‖ at (layer, token), x the residual stream entering the
FFN branch (measured with forward hooks): the FFN's contribution relative to the stream it is
added to, free of the γ·W_down rescaling that makes γ alone meaningless as a size.
`log_freq` = ln((count + 1) / (N + V)) of the token in the train split (N tokens, V the vocab):
add-one smoothed, so a token never seen in training is finite.
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ncn.analysis import options, tables
from ncn.errors import NCNError

COLUMNS = ["variant", "size", "seed", "sentence_id", "kind", "pos", "token_id", "token", "layer",
           "g", "beta", "gamma", "surprisal", "probe", "branch_ratio", "log_freq"]
KINDS = ("trace", "control", "pair", "valid")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+")
# How much of the held-out stream to scan for sentences (enough for hundreds of stories).
_VALID_SCAN_TOKENS = 200_000
_FREQ_CHUNK = 1 << 24


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
    """n sentences from the start of a token stream, one per story (see module doc)."""
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
                   f"in the first {len(window)} held-out tokens; lower n_valid_sentences")


def probe_char(text: str, word: str) -> int | None:
    m = re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE)
    return None if m is None else m.start()


@dataclass
class Sentence:
    kind: str
    text: str
    ids: list[int]
    pieces: list[str]
    probe: int | None


def encode(tokenizer, text: str, eot_id: int, block_size: int, word: str, kind: str = "trace",
           warn: bool = True) -> Sentence:
    """The sentence with a BOS, its token strings and probe position (or None). Truncated to block_size."""
    enc = tokenizer.encode(text, add_special_tokens=False)
    ids = [eot_id] + list(enc.ids)
    pieces = [tokenizer.id_to_token(eot_id) or "<eot>"] + [tokenizer.decode([i]) for i in enc.ids]
    probe = None
    c = probe_char(text, word)
    if c is not None:
        probe = next((t + 1 for t, (a, b) in enumerate(enc.offsets) if a <= c < b), None)  # +1: the BOS
    if len(ids) > block_size:
        if warn:
            print(f"ncn analyze trace: warning: {text[:40]!r}... has {len(ids)} tokens; truncated to "
                  f"block_size {block_size}", file=sys.stderr)
        ids, pieces = ids[:block_size], pieces[:block_size]
        probe = probe if probe is not None and probe < block_size else None
    return Sentence(kind, text, ids, pieces, probe)


def leadin_prefixes(leadins: list[str], most: int = 3):
    """"" first, then each lead-in, then each ordered pair, then triple, of distinct lead-ins."""
    for k in range(min(most, len(leadins)) + 1):
        for combo in itertools.permutations(leadins, k):
            yield " ".join(combo)


def matched_control(tokenizer, text: str, target: int, leadins: list[str], eot_id: int, block_size: int,
                    word: str) -> Sentence | None:
    """`text` behind the first lead-in combination that puts probe_word at token index `target`."""
    for lead in leadin_prefixes(leadins):
        s = encode(tokenizer, f"{lead} {text}" if lead else text, eot_id, block_size, word, "control", warn=False)
        if s.probe == target:
            return s
    return None


def first_difference(a: list[int], b: list[int]) -> int | None:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n if len(a) != len(b) else None)


def plan_sentences(cfg: dict, data_dir: str | Path, tokenizer, meta: dict, block_size: int) -> list[Sentence]:
    """Every traced sentence, encoded, in a fixed order (see the module doc)."""
    from ncn.data import open_split

    a, eot = cfg["analysis"], meta["eot_id"]
    word = a["probe_word"]
    out = [encode(tokenizer, s, eot, block_size, word, "trace") for s in a["trace_sentences"]]
    twist = out[0] if out else None
    for text in a["control_sentences"]:
        if twist is None or twist.probe is None:
            out.append(encode(tokenizer, text, eot, block_size, word, "control"))
            continue
        s = matched_control(tokenizer, text, twist.probe, a["control_leadins"], eot, block_size, word)
        if s is None:
            print(f"ncn analyze trace: warning: control {text!r}: no lead-in puts {word!r} at token "
                  f"{twist.probe} (as in the twist); left out", file=sys.stderr)
        else:
            out.append(s)
    for text in a["pair_sentences"]:
        s = encode(tokenizer, text, eot, block_size, word, "pair")
        s.probe = first_difference(twist.ids, s.ids) if twist is not None else None
        out.append(s)
    if a["n_valid_sentences"]:
        held = open_split(data_dir, "heldout", meta)
        out += [encode(tokenizer, s, eot, block_size, word, "valid")
                for s in validation_sentences(held, eot, tokenizer, a["n_valid_sentences"])]
    return out


def unigram_log_freq(data_dir: str | Path, meta: dict) -> np.ndarray:
    """ln((count + 1) / (N + V)) per token id over the train split (see the module doc)."""
    from ncn.data import open_split

    train = open_split(data_dir, "train", meta)
    V = int(meta["vocab_size"])
    counts = np.zeros(V, dtype=np.int64)
    for i in range(0, len(train), _FREQ_CHUNK):
        c = np.bincount(np.asarray(train[i : i + _FREQ_CHUNK], dtype=np.int64), minlength=V)
        counts += c[:V]
    return np.log((counts + 1.0) / (counts.sum() + V))


def _ffn_hooks(model):
    """Forward hooks that keep each block's FFN input stream x (before norm2) and FFN output."""
    store, handles = {}, []
    for l, b in enumerate(model.blocks):
        handles.append(b.norm2.register_forward_pre_hook(lambda m, args, l=l: store.__setitem__(("x", l), args[0])))
        handles.append(b.ffn.register_forward_hook(lambda m, args, out, l=l: store.__setitem__(("f", l), out)))
    return store, handles


def trace_sentence(model, ids: list[int]):
    """signals (T, L, 3), surprisal (T,) (NaN at position 0) and branch_ratio (T, L) of one
    encoded sentence."""
    import torch

    idx = torch.tensor([ids], dtype=torch.long)
    store, handles = _ffn_hooks(model)
    try:
        with torch.no_grad():
            out = model(idx, return_signals=True)
    finally:
        for h in handles:
            h.remove()
    if out.signals is None:
        raise NCNError("this model has no NCN signals (variant 'none'); trace an NCN variant")
    sig = out.signals[0]
    ratio = torch.stack([(sig[:, l, 0:1] * sig[:, l, 2:3] * store[("f", l)][0]).norm(dim=-1)
                         / store[("x", l)][0].norm(dim=-1) for l in range(sig.size(1))], dim=1)
    logp = torch.log_softmax(out.logits[0].double(), dim=-1)
    surprisal = np.full(len(ids), np.nan)
    if len(ids) > 1:
        tgt = torch.tensor(ids[1:])
        surprisal[1:] = (-logp[:-1].gather(1, tgt[:, None])[:, 0]).numpy()
    return sig.double().numpy(), surprisal, ratio.double().numpy()


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


def sentence_frame(model, sid: int, s: Sentence, log_freq: np.ndarray) -> pd.DataFrame:
    sig, surprisal, ratio = trace_sentence(model, s.ids)
    T, L, _ = sig.shape
    pos = np.repeat(np.arange(T), L)
    return pd.DataFrame({
        "sentence_id": sid, "kind": s.kind, "pos": pos,
        "token_id": np.repeat(s.ids, L), "token": np.repeat(np.array(s.pieces, dtype=object), L),
        "layer": np.tile(np.arange(L), T),
        "g": sig[:, :, 0].reshape(-1), "beta": sig[:, :, 1].reshape(-1), "gamma": sig[:, :, 2].reshape(-1),
        "surprisal": np.repeat(surprisal, L),
        "probe": (pos == s.probe).astype(int) if s.probe is not None else 0,
        "branch_ratio": ratio.reshape(-1), "log_freq": np.repeat(log_freq[s.ids], L),
    })


def trace_run(run_dir: str | Path, cfg: dict, data_dir: str | Path, threads: int = 1) -> pd.DataFrame:
    from ncn.progress import bar

    model, payload, meta = load_ncn_run(run_dir, cfg, data_dir, threads,
                                        "has no signals to trace; trace an NCN variant")
    tokenizer = load_tokenizer(data_dir)
    sents = plan_sentences(cfg, data_dir, tokenizer, meta, model.cfg.block_size)
    log_freq = unigram_log_freq(data_dir, meta)
    desc = f"trace {payload.get('variant')}/{payload.get('size')}/seed{payload.get('seed')}"
    frames = [sentence_frame(model, sid, s, log_freq) for sid, s in enumerate(bar(sents, desc=desc, leave=False))]
    df = pd.concat(frames, ignore_index=True)
    df.insert(0, "seed", int(payload.get("seed", -1)))
    df.insert(0, "size", payload.get("size", ""))
    df.insert(0, "variant", model.cfg.ncn)
    return df[COLUMNS]


def write_trace(df: pd.DataFrame, out: str | Path) -> None:
    tables.write_csv(df, out, float_format="%.7g")


_NUMERIC = ("g", "beta", "gamma", "surprisal", "branch_ratio", "log_freq")


def read_trace(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise NCNError(f"trace {path} not found: run 'ncn analyze trace' first")
    df = pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in _NUMERIC})
    missing = [c for c in COLUMNS if c not in df]
    if missing:
        raise NCNError(f"{path}: columns missing: {', '.join(missing)} (rerun 'ncn analyze trace')")
    df["size"] = df["size"].astype(str)
    return df


def read_traces(paths) -> pd.DataFrame:
    """Several trace CSVs (e.g. every seed of a variant) as one frame."""
    return pd.concat([read_trace(p) for p in paths], ignore_index=True)


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="run folder holding model.pt (an NCN variant)")
    options.add_config(p)
    options.add_data(p)
    p.add_argument("--out", required=True, help="output CSV (results/traces/V_S_seedN.csv)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")


def main(args, cfg: dict) -> None:
    df = trace_run(args.run, cfg, args.data, args.threads)
    write_trace(df, args.out)
    kinds = df.groupby("kind", sort=False)["sentence_id"].nunique().to_dict()
    print(f"ncn analyze trace: {df['sentence_id'].nunique()} sentences {kinds} -> {args.out}", file=sys.stderr)
