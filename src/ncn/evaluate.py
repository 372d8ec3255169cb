"""`ncn evaluate --run RUN`: loss, perplexity and bits-per-byte on two sets -> RUN/eval.json.

The two sets (EVAL_SETS; see ncn.data.meta): `val_*` is valid.bin, the dataset's validation
file (kept under this name for continuity; in the excerpt its format differs from the train
file's, which inflates absolute losses), and `heldout_*` is heldout.bin, the last stories of the
train excerpt in the train format, never trained on: the A/B reads `heldout_*`. Each is scored
the same way. A stream (valid.bin, say) of N tokens has N-1 predictable tokens (every token after
the first). It is cut into non-overlapping windows of block_size inputs, the shorter tail
included: window i predicts tokens i*T+1 .. i*T+L from inputs i*T .. i*T+L-1 (L = T, or less
for the tail), so every predictable token is scored exactly once. With eval.max_tokens = M
only the first min(M, N-1) predictable tokens are scored.

    val_loss   = Σ CE (nats) / val_tokens          (mean cross-entropy per token)
    val_ppl    = exp(val_loss)
    val_bytes  = meta.valid.bytes · val_tokens / (N-1)
    val_bpb    = Σ CE / ln 2 / val_bytes            (total bits / UTF-8 bytes of the text)

Without a cap val_bytes is exactly the UTF-8 byte count of the validation text (the bytes of
the unpredicted first token are counted: it is one token of a whole split). With a cap the
evaluated prefix is credited its share of the bytes in proportion to its tokens, the one
approximation made.

For a variant whose pool sees the whole window (spec.sees_future: "asrun") also
`val_loss_prefix_pool` and `heldout_loss_prefix_pool`: the same loss with the
NCN pool restricted to the prefix (forward with causal_pool=True), which measures how much the
future-token leak helps.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ncn.errors import NCNError
from ncn.fileio import write_json


# Logits (elements) one forward pass may produce: eval.batch_size windows are forwarded several
# batches at a time (a large batch) while the loss is still summed per batch of batch_size windows
# in the same order. On the CPU a row's logits do not depend on the batch they are in, so
# eval.json is bitwise what batch_size-window forwards give; on CUDA (bf16) it is equal up to
# float rounding. The CPU budget keeps the logits cache-sized (bigger batches were not faster there).
FORWARD_LOGITS = {"cpu": 1 << 22, "cuda": 1 << 28}


def _forward_groups(batches: list[list[int]], per_forward: int) -> list[list[list[int]]]:
    """Consecutive batches joined while they fit `per_forward` windows (and have equal lengths)."""
    groups: list[list[list[int]]] = []
    for b in batches:
        last = groups[-1] if groups else None
        if last and sum(map(len, last)) + len(b) <= per_forward and (b[0] < 0) == (last[0][0] < 0):
            last.append(b)
        else:
            groups.append([b])
    return groups


def stream_ce(model, tokens: np.ndarray, block_size: int, batch_size: int, device: torch.device,
              max_tokens: int | None = None, causal_pool: bool | None = None, desc: str = "eval",
              labels: np.ndarray | None = None) -> tuple[float, int]:
    """(sum of token cross-entropies in nats, number of tokens scored) over the stream. labels: the
    per-token label bits beside `tokens` (ncn.data.labels), fed as the control vector of each input
    token (a model with control; without labels such a model gets c = 0, no signal)."""
    n_pred = len(tokens) - 1
    if n_pred < 1:
        raise NCNError("the validation stream has fewer than 2 tokens; nothing to evaluate")
    if max_tokens is not None:
        n_pred = min(n_pred, max_tokens)
    T = block_size
    n_full, tail = divmod(n_pred, T)
    batches = [list(range(i, min(i + batch_size, n_full))) for i in range(0, n_full, batch_size)]
    if tail:
        batches.append([-1])  # the shorter last window (index n_full), alone
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    vocab = getattr(getattr(model, "cfg", None), "vocab_size", 1)
    per_forward = max(batch_size, FORWARD_LOGITS["cuda" if cuda else "cpu"] // (T * vocab))
    total, count = 0.0, 0
    from ncn.progress import bar

    with torch.inference_mode(), autocast:
        for group in bar(_forward_groups(batches, per_forward), desc=desc, unit="forward"):
            L = tail if group[0][0] < 0 else T
            windows = [n_full if w < 0 else w for b in group for w in b]
            rows = np.stack([np.asarray(tokens[w * T : w * T + L + 1], dtype=np.int64) for w in windows])
            xy = torch.from_numpy(rows).to(device)
            kw = {"causal_pool": True} if causal_pool else {}
            if labels is not None:
                from ncn.control import bits_to_vector

                bits = np.stack([np.asarray(labels[w * T : w * T + L], dtype=np.int64) for w in windows])
                kw["control"] = bits_to_vector(torch.from_numpy(bits), model.cfg.control_dim).to(device)
            logits = model(xy[:, :-1], **kw).logits.float()
            y, start = xy[:, 1:], 0
            for b in group:  # the loss per batch of batch_size windows, as one forward per batch gave it
                lg, yb = logits[start : start + len(b)], y[start : start + len(b)]
                total += F.cross_entropy(lg.reshape(-1, lg.size(-1)), yb.reshape(-1), reduction="sum").double().item()
                count += yb.numel()
                start += len(b)
    assert count == n_pred
    return total, count


def bits_per_byte(ce_sum_nats: float, n_scored: int, n_predictable: int, total_bytes: int) -> tuple[float, float]:
    """(bpb, bytes credited): bytes scaled by the fraction of predictable tokens scored."""
    nbytes = total_bytes if n_scored == n_predictable else total_bytes * n_scored / n_predictable
    return ce_sum_nats / math.log(2) / nbytes, nbytes


# (split in meta.json, prefix of its fields in eval.json)
EVAL_SETS = (("valid", "val"), ("heldout", "heldout"))


def score_split(model, data_dir, meta: dict, split: str, cfg: dict, device: torch.device) -> dict:
    """loss, ppl, bpb, tokens, bytes, ce_sum_nats, loss_prefix_pool (asrun; else None) on one split.
    A model with control reads the split's true story labels where the data stage stored them
    (ncn.data.labels.LABEL_SPLITS), else c = 0; `control` says which."""
    from ncn.data import open_split
    from ncn.data.labels import LABEL_SPLITS, open_labels

    tokens = open_split(data_dir, split, meta)
    bs, T, cap = cfg["eval"]["batch_size"], model.cfg.block_size, cfg["eval"]["max_tokens"]
    labels = open_labels(data_dir, split, meta) if model.cfg.control_dim and split in LABEL_SPLITS else None
    ce, n = stream_ce(model, tokens, T, bs, device, cap, desc=f"eval {split}", labels=labels)
    bpb, nbytes = bits_per_byte(ce, n, len(tokens) - 1, int(meta[split]["bytes"]))
    prefix = None
    if model.cfg.spec.sees_future:
        ce_p, _ = stream_ce(model, tokens, T, bs, device, cap, causal_pool=True, desc=f"eval {split} prefix pool")
        prefix = ce_p / n
    out = {"loss": ce / n, "ppl": math.exp(ce / n), "bpb": bpb, "tokens": n, "bytes": nbytes,
           "ce_sum_nats": ce, "loss_prefix_pool": prefix}
    if model.cfg.control_dim:
        out["control"] = "true story labels" if labels is not None else "none (c = 0: no story labels)"
    return out


def evaluate(run_dir: Path, data: str | None = None, cfg: dict | None = None, threads: int = 1,
             config_source: str = "--config", modulate: list[str] | None = None, kv_bits: str | None = None,
             out_path: str | Path | None = None) -> dict:
    """RUN/eval.json (logged to MLflow); with knobs (--modulate, --kv-bits: ncn.knobs,
    ncn.kvquant; the cache fake-quantised) the same record goes to `out_path` only."""
    from ncn import knobs
    from ncn.kvquant import parse_kv_bits, resolve_kv_bits, set_fake_quant

    from ncn.data import load_meta
    from ncn.model import load_model
    from ncn.runs import (check_config_matches, check_data_matches, config_of, data_dir_of, pick_device,
                          require_finished)

    run_dir = Path(run_dir)
    mods, kv_spec = knobs.parse(modulate), parse_kv_bits(kv_bits)
    if (mods or kv_spec is not None) and (out_path is None or Path(out_path).resolve() == (run_dir / "eval.json").resolve()):
        raise NCNError("--modulate/--kv-bits evaluate a changed model: write it elsewhere with --out FILE "
                       "(RUN/eval.json holds the unmodified model's scores)")
    if kv_spec is not None and not isinstance(kv_spec, (int, list)):
        raise NCNError("ncn evaluate --kv-bits takes a width (8, 4, 16) or a per-layer list; beta:B is for ncn generate "
                       "(ncn analyze kvcache compares the allocation policies)")
    metrics = require_finished(run_dir)
    cfg, config_source = config_of(run_dir, cfg, config_source)
    torch.set_num_threads(threads)
    data_dir = data_dir_of(run_dir, data)
    meta = load_meta(data_dir)
    device = pick_device(cfg["train"]["device"])
    model, payload = load_model(run_dir / "model.pt", map_location=device)
    check_data_matches(payload, meta, run_dir / "model.pt", data_dir)
    check_config_matches(cfg, payload, run_dir / "model.pt", config_source)
    model.to(device).eval()
    knobs.attach(model, mods)
    set_fake_quant(model, resolve_kv_bits(kv_spec, model))

    out = {
        "variant": payload.get("variant", metrics.get("variant")), "size": payload.get("size", metrics.get("size")),
        "seed": payload.get("seed", metrics.get("seed")),
        "n_params": model.num_params(), "n_params_non_embedding": model.num_params(non_embedding=True),
        "max_tokens": cfg["eval"]["max_tokens"], "device": device.type,
    }
    from ncn.data.labels import LABEL_SPLITS

    scored: dict[tuple, dict] = {}  # by text hash: with val_split train_tail both sets are one text
    for split, prefix in EVAL_SETS:  # (scored apart when a model with control reads labels on one only)
        key = (meta[split].get("text_sha256") or split, bool(model.cfg.control_dim) and split in LABEL_SPLITS)
        if key not in scored:
            scored[key] = score_split(model, data_dir, meta, split, cfg, device)
        out.update({f"{prefix}_{k}": v for k, v in scored[key].items()})
    if out_path is not None:
        out.update(modulate=knobs.describe(mods), kv_bits=resolve_kv_bits(kv_spec, model))
        write_json(out_path, out)
        return out
    write_json(run_dir / "eval.json", out)
    from ncn.tracking import log_eval

    log_eval(run_dir, {k: v for k, v in out.items() if k.startswith(tuple(f"{p}_" for _, p in EVAL_SETS))})
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="ncn evaluate",
        description="Evaluate a finished run on two whole streams, the validation file (val_*) and the "
        "held-out tail of the train excerpt (heldout_*) (non-overlapping windows of "
        "the context length, the tail included; eval.max_tokens caps each): mean cross-entropy, "
        "perplexity and bits-per-byte (total CE in bits / UTF-8 bytes of the text). For a variant whose pool sees the future ('asrun') also "
        "the loss with the NCN pool restricted to the prefix. Writes RUN/eval.json.",
    )
    p.add_argument("--run", required=True, help="a finished run folder (with model.pt and metrics.json)")
    p.add_argument("--data", help="tokenized data folder (default: the one the run was trained on)")
    p.add_argument("--config", help="config for the eval section (default: the run's own config.json)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--modulate", action="append", metavar="SPEC",
                   help="evaluate with knobs on the signals (as ncn generate --modulate); needs --out")
    p.add_argument("--kv-bits", metavar="BITS", help="fake-quantise the keys and values: 8, 4, 16 or a per-layer "
                   "list like 8,4,4,8; needs --out")
    p.add_argument("--out", help="write the record here instead of RUN/eval.json (required with --modulate/--kv-bits)")
    p.add_argument("--export", metavar="DIR", help="then also write the run's Hugging Face-style model folder "
                   "there, as `ncn export --out DIR` does (its card quotes the eval.json just written)")
    a = p.parse_args(argv)
    if a.export and (a.modulate or a.kv_bits):
        p.error("--export writes the plain model's folder; it does not go with --modulate or --kv-bits")
    from ncn.config import load_config

    cfg = load_config(a.config, stage="evaluate") if a.config else None
    out = evaluate(Path(a.run), a.data, cfg, a.threads, config_source=a.config or "--config",
                   modulate=a.modulate, kv_bits=a.kv_bits, out_path=a.out)
    for split, p in EVAL_SETS:
        print(f"{a.run}: {split:8s} loss {out[f'{p}_loss']:.4f}  ppl {out[f'{p}_ppl']:.2f}  "
              f"bpb {out[f'{p}_bpb']:.4f}  ({out[f'{p}_tokens']} tokens)")
    if a.export:
        from ncn.hub import export

        print(f"{a.run}: wrote {export(Path(a.run), a.data, a.export)}/")
    return 0
