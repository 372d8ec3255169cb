"""Leak measurements per run: what a pool that sees the future does, apart from train/test mismatch.

On the first analysis.leak_windows held-out windows of block_size tokens (heldout.bin, never
trained on) and for each cut t = floor(f · (block_size − 1)), f in analysis.leak_cuts, the
tokens AFTER t are replaced and positions ≤ t are looked at; the model runs as it was trained
(asrun: its whole-window pool; the others: their prefix pool or constants).

  max_abs_dlogit_past   structural fact: max |Δlogit| over positions ≤ t, every cut, window and
                        vocabulary entry, when the future is replaced by uniformly random tokens
                        (seeded) or by the next window's tokens. Exactly 0 for a model whose
                        position t cannot see later tokens (prefix pools, static constants, a
                        pool of position embeddings only); > 0 for asrun. A measurement, not a
                        statistical verdict.
  loss_true_future      mean CE (nats/token) at positions ≤ t with the true window: the targets
                        y_≤t = x_1..x_{t+1}, so the pool of asrun also sees the target x_{t+1}.
  loss_replaced_future  the same positions and targets, the tokens after t taken from ANOTHER
                        window (window i gets window i+1's, cyclically), both under the pooling
                        the model was trained with.
  benefit               loss_true_future − loss_replaced_future: < 0 is loss the model owes to
                        seeing the true future (exactly 0 when it cannot see it).
  loss_full_pool, loss_prefix_pool   eval.json heldout_loss and heldout_loss_prefix_pool (asrun
                        only; empty otherwise): the whole held-out set as run vs with the pool
                        restricted to the prefix.
  prefix_pool_mismatch  loss_prefix_pool − loss_full_pool: what evaluating a whole-window model
                        under prefix pooling costs. Train/test mismatch and leak together; named
                        apart so that it is never read as the leak.
The original and the replaced inputs run as separate forward passes of the same shape, so a
position that cannot see the future gets bitwise the same logits.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from ncn.analysis import options, tables
from ncn.errors import NCNError
from ncn.fileio import read_json

COLUMNS = ["variant", "size", "seed", "windows", "cuts", "positions_scored", "max_abs_dlogit_past",
           "loss_true_future", "loss_replaced_future", "benefit", "loss_full_pool", "loss_prefix_pool",
           "prefix_pool_mismatch"]
# The random replacement tokens: a generator seeded by this and the run's seed.
_RANDOM_SEED = 12_345


def cut_positions(block_size: int, fractions) -> list[int]:
    """The cut t of each fraction (0 ≤ t ≤ block_size − 2, so that a future exists), sorted, unique."""
    return sorted({min(max(int(math.floor(f * (block_size - 1))), 0), block_size - 2) for f in fractions})


def _logits(model, x, batch_size: int):
    import torch

    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]).logits for i in range(0, len(x), batch_size)])


def _ce_sum(logits, y) -> float:
    import torch.nn.functional as F

    return float(F.cross_entropy(logits.reshape(-1, logits.size(-1)).double(), y.reshape(-1), reduction="sum"))


def probe_model(model, x, y, cuts: list[int], batch_size: int, seed: int) -> dict:
    """The structural and benefit numbers of one model on windows x (n, T), targets y (see the doc)."""
    import torch

    if len(x) < 2:
        raise NCNError("the leak measurement needs at least 2 held-out windows (another window's future); "
                       "raise analysis.leak_windows or use more held-out data")
    gen = torch.Generator().manual_seed(_RANDOM_SEED + int(seed))
    vocab = model.cfg.vocab_size
    base = _logits(model, x, batch_size)
    other = x.roll(1, dims=0)
    worst, ce_true, ce_repl, count = 0.0, 0.0, 0.0, 0
    for t in cuts:
        rand = x.clone()
        rand[:, t + 1 :] = torch.randint(0, vocab, rand[:, t + 1 :].shape, generator=gen)
        repl = x.clone()
        repl[:, t + 1 :] = other[:, t + 1 :]
        past = base[:, : t + 1]
        lr, lo = _logits(model, rand, batch_size)[:, : t + 1], _logits(model, repl, batch_size)[:, : t + 1]
        worst = max(worst, float((lr - past).abs().max()), float((lo - past).abs().max()))
        ce_true += _ce_sum(past, y[:, : t + 1])
        ce_repl += _ce_sum(lo, y[:, : t + 1])
        count += y[:, : t + 1].numel()
    lt, lrp = ce_true / count, ce_repl / count
    return {"windows": int(len(x)), "cuts": " ".join(map(str, cuts)), "positions_scored": count,
            "max_abs_dlogit_past": worst, "loss_true_future": lt, "loss_replaced_future": lrp, "benefit": lt - lrp}


def eval_losses(run_dir: str | Path) -> dict:
    """loss_full_pool, loss_prefix_pool, prefix_pool_mismatch from the run's eval.json (held-out set)."""
    path = Path(run_dir) / "eval.json"
    if not path.exists():
        raise NCNError(f"{path} is missing: evaluate the run first (ncn evaluate --run {run_dir})")
    ev = read_json(path)
    full, prefix = ev.get("heldout_loss"), ev.get("heldout_loss_prefix_pool")
    full = math.nan if full is None else float(full)
    prefix = math.nan if prefix is None else float(prefix)
    return {"loss_full_pool": full, "loss_prefix_pool": prefix, "prefix_pool_mismatch": prefix - full}


def measure_run(run_dir: str | Path, cfg: dict, data_dir: str | Path, threads: int = 1) -> dict:
    from ncn.analysis.skip import windows
    from ncn.analysis.trace import load_ncn_run
    from ncn.data import open_split

    model, payload, meta = load_ncn_run(run_dir, cfg, data_dir, threads, "has no pool to leak through; pass an NCN run")
    a = cfg["analysis"]
    T = model.cfg.block_size
    x, y = windows(open_split(data_dir, "heldout", meta), T, a["leak_windows"] * T)
    seed = int(payload.get("seed", 0))
    row = probe_model(model, x, y, cut_positions(T, a["leak_cuts"]), cfg["eval"]["batch_size"], seed)
    return {"variant": model.cfg.ncn, "size": payload.get("size", ""), "seed": seed, **row, **eval_losses(run_dir)}


def add_arguments(p) -> None:
    p.add_argument("--run", nargs="*", default=[], metavar="RUN",
                   help="NCN run folders holding model.pt and eval.json (none: an empty table)")
    options.add_config(p)
    options.add_data(p)
    p.add_argument("--csv", required=True, help="output table (results/tables/leak_measure.csv)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")


def main(args, cfg: dict) -> None:
    """One row per run, in the order given (the rule passes config order)."""
    from ncn.progress import bar

    rows = [measure_run(r, cfg, args.data, args.threads) for r in bar(args.run, desc="leak probe", leave=False)]
    df = pd.DataFrame(rows, columns=COLUMNS)
    tables.write_csv(df, args.csv)
    for r in df.itertuples(index=False):
        print(f"  {r.variant}/{r.size}/seed{r.seed}: max|dlogit| past {r.max_abs_dlogit_past:.3g}, "
              f"benefit {r.benefit:.4g}, prefix-pool mismatch {r.prefix_pool_mismatch:.4g}", file=sys.stderr)
