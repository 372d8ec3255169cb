"""Block skipping: drop a token's FFN in a layer where its gate γ < ε, for an ε grid.

The model gathers the kept rows and runs the FFN on those only (`Transformer.forward(...,
skip_eps=ε)`), so the saved FFN FLOPs equal the skipped fraction of (layer, token) FFN
evaluations. The validation stream is cut into non-overlapping windows of block_size
(as in training; the tail shorter than a window is left out), capped at
analysis.skip_max_tokens tokens, and evaluated in eval.batch_size batches.

Columns: loss (mean CE, nats/token), ppl, skip_frac (= FFN FLOPs saved), ffn_flops_saved,
delta_loss (loss − the unskipped loss; exactly 0 at ε = 0). Measured wall times (wall_s and
wall_ratio vs ε = 0, the median of `repeats` passes, which must agree on loss and skipped
fraction) differ between reruns, so they go to results/timing/skip_wall.csv, not the table CSV.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ncn.analysis import options, plots, tables
from ncn.analysis.macros import fmt_cfg, fmt_fixed, fmt_pct, fmt_sig
from ncn.errors import NCNError

# The paper quotes the largest eps whose validation loss is within this fraction of eps = 0.
SKIP_LOSS_TOLERANCE = 0.01
TIMING = ["wall_s", "wall_ratio"]


def windows(tokens: np.ndarray, block_size: int, max_tokens: int | None):
    """(x, y) int64 tensors of every full window within the first max_tokens (+1) tokens."""
    import torch

    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    k = (n - 1) // block_size
    if k < 1:
        raise NCNError(f"the validation stream ({len(tokens)} tokens) is shorter than one window of {block_size}")
    w = np.asarray(tokens[: k * block_size + 1], dtype=np.int64)
    x = torch.from_numpy(w[:-1].reshape(k, block_size).copy())
    y = torch.from_numpy(w[1:].reshape(k, block_size).copy())
    return x, y


def evaluate(model, x, y, batch_size: int, skip_eps=None) -> tuple[float, float, float]:
    """(mean CE, skipped fraction, wall seconds) over all windows."""
    import torch

    total, skipped, count = 0.0, 0.0, 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            out = model(xb, targets=yb, skip_eps=skip_eps)
            n = yb.numel()
            total += float(out.ce) * n  # exact: every window is full, so the mean is per token
            skipped += (out.skip_frac or 0.0) * n
            count += n
    wall = time.perf_counter() - t0
    return total / count, skipped / count, wall


def skip_table(run_dir: str | Path, cfg: dict, data_dir: str | Path, threads: int = 1, repeats: int = 1) -> pd.DataFrame:
    from ncn.analysis.trace import load_ncn_run
    from ncn.data import open_split
    from ncn.progress import bar

    model, payload, meta = load_ncn_run(run_dir, cfg, data_dir, threads, "has no gate to skip on; pass an NCN run")
    a = cfg["analysis"]
    x, y = windows(open_split(data_dir, "valid", meta), model.cfg.block_size, a["skip_max_tokens"])
    bs = cfg["eval"]["batch_size"]
    eps_grid = sorted(set(float(e) for e in a["skip_eps"]) | {0.0})
    ref_loss, _, _ = evaluate(model, x, y, bs, None)
    rows = []
    for eps in bar(eps_grid, desc=f"skip {model.cfg.ncn}", leave=False):
        results = [evaluate(model, x, y, bs, eps) for _ in range(max(1, repeats))]
        loss, frac, _ = results[0]
        if any(r[0] != loss or r[1] != frac for r in results):
            raise NCNError(f"{run_dir}: skipping at eps={eps} is not deterministic across passes")
        rows.append({"variant": model.cfg.ncn, "size": payload.get("size", ""), "seed": payload.get("seed", -1),
                     "eps": eps, "tokens": int(y.numel()), "loss": loss, "ppl": math.exp(loss),
                     "skip_frac": frac, "ffn_flops_saved": frac, "delta_loss": loss - ref_loss,
                     "wall_s": float(np.median([r[2] for r in results]))})
    df = pd.DataFrame(rows)
    base = df.loc[df["eps"] == 0.0, "wall_s"].iloc[0]
    df["wall_ratio"] = df["wall_s"] / base
    return df


def skip_tex(df: pd.DataFrame) -> str:
    header = ["Variant", r"$\varepsilon$", "Val loss", r"$\Delta$loss", "PPL", "FFN skipped", "Wall time ratio"]
    rows = [[tables.escape(r.variant), f"${r.eps:.2f}$", tables.num(r.loss, 4), tables.num(r.delta_loss, 4),
             tables.num(r.ppl, 2), f"${100 * r.skip_frac:.1f}\\%$", tables.num(r.wall_ratio, 2)]
            for r in df.itertuples(index=False)]
    return tables.booktabs(header, rows, "lrrrrrr", tables.group_breaks(list(df["variant"])))


def tradeoff_figure(df: pd.DataFrame, pdf, png) -> None:
    import matplotlib.pyplot as plt

    plots.setup()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for variant, sub in df.groupby("variant", sort=False):
        c = plots.variant_colour(variant)
        axes[0].plot(sub["skip_frac"], sub["delta_loss"], "o-", color=c, label=variant)
        axes[1].plot(sub["eps"], sub["wall_ratio"], "o-", color=c, label=variant)
        for r in sub.itertuples(index=False):
            axes[0].annotate(f"{r.eps:g}", (r.skip_frac, r.delta_loss), fontsize=6, xytext=(3, 3),
                             textcoords="offset points")
    axes[0].set_xlabel("FFN evaluations skipped (= FFN FLOPs saved)")
    axes[0].set_ylabel("Δ validation loss vs unskipped (nats)")
    axes[0].set_title("loss vs skipped fraction (labels: ε)")
    axes[1].axhline(1.0, color="0.5", lw=0.8, ls="--")
    axes[1].set_xlabel("ε (skip where γ < ε)")
    axes[1].set_ylabel("wall time / wall time at ε = 0")
    axes[1].set_title("measured wall time")
    axes[0].legend(fontsize=7, frameon=False)
    options.save_figure(fig, pdf, png)


def add_arguments(p) -> None:
    p.add_argument("--run", nargs="+", required=True, metavar="RUN", help="NCN run folder(s) holding model.pt")
    options.add_config(p)
    options.add_data(p)
    options.add_table(p)
    p.add_argument("--timing", required=True, help="output CSV of the measured wall times (results/timing/), "
                   "kept out of --csv so the table is byte-identical across reruns")
    options.add_figure(p, what="the loss / skipped-fraction / wall-time trade-off")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed passes per eps; the wall time is their median (default: %(default)s)")


def main(args, cfg: dict) -> None:
    df = pd.concat([skip_table(r, cfg, args.data, args.threads, args.repeats) for r in args.run], ignore_index=True)
    tables.write_csv(df.drop(columns=TIMING), args.csv)
    tables.write_csv(df[["variant", "size", "seed", "eps", *TIMING]], args.timing)
    tables.write_tex(args.tex, skip_tex(df))
    tradeoff_figure(df, args.pdf, args.png)


def choice(skip: pd.DataFrame, timing: pd.DataFrame, variant: str | None, size: str) -> dict:
    """The row of `variant` at `size` at the largest eps whose loss is within
    SKIP_LOSS_TOLERANCE of the dense loss (eps = 0, always in the grid), averaged over seeds;
    the wall ratio joined from the timing table on (variant, size, seed, eps)."""
    if skip.empty:
        return {}
    if timing.empty:
        df = skip.assign(wall_ratio=math.nan)
    else:
        df = skip.merge(timing, on=["variant", "size", "seed", "eps"], how="left")
    df = df[(df["variant"] == variant) & (df["size"] == size)]
    by_eps = df.groupby("eps")[["loss", "delta_loss", "skip_frac", "ffn_flops_saved", "wall_ratio"]].mean()
    if by_eps.empty:
        return {}
    dense = by_eps.loc[0.0, "loss"]
    within = by_eps[by_eps["delta_loss"] <= SKIP_LOSS_TOLERANCE * dense]
    return {"eps": within.index[-1], "loss_dense": dense, **within.iloc[-1].to_dict()}


def numbers(skip: pd.DataFrame, cfg: dict, timing: pd.DataFrame) -> dict:
    """The prose's macros of the skip table: "the NCN" at the largest size (see `choice`)."""
    from ncn.analysis.runs import largest_size, primary_ncn

    sk = choice(skip, timing, primary_ncn(cfg), largest_size(cfg))
    return {f"block skipping at the largest eps whose loss is within {SKIP_LOSS_TOLERANCE:.0%} of eps = 0": {
        "SkipTolerancePct": fmt_pct(SKIP_LOSS_TOLERANCE, 0),
        "SkipEps": fmt_cfg(sk.get("eps")),
        "SkipLoss": fmt_fixed(sk.get("loss"), 3),
        "SkipLossDense": fmt_fixed(sk.get("loss_dense"), 3),
        "SkipLossDelta": fmt_fixed(sk.get("delta_loss"), 3),
        "SkipFraction": fmt_pct(sk.get("skip_frac")),
        "SkipFlopsSaved": fmt_pct(sk.get("ffn_flops_saved")),
        "SkipWallRatio": fmt_sig(sk.get("wall_ratio")),
    }}
