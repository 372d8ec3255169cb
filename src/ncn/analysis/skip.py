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

from ncn.analysis import plots, tables
from ncn.errors import NCNError


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
    import torch

    from ncn.data import load_meta, open_split
    from ncn.model import load_model
    from ncn.progress import bar
    from ncn.runs import check_config_matches, check_data_matches

    torch.set_num_threads(threads)
    model, payload = load_model(Path(run_dir) / "model.pt")
    if model.cfg.ncn == "none":
        raise NCNError(f"{run_dir}: variant 'none' has no gate to skip on; pass an NCN run")
    a = cfg["analysis"]
    meta = load_meta(data_dir)
    check_data_matches(payload, meta, Path(run_dir) / "model.pt", Path(data_dir))
    check_config_matches(cfg, payload, Path(run_dir) / "model.pt", "the config")
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


def tradeoff_figure(df: pd.DataFrame, stem) -> None:
    import matplotlib.pyplot as plt

    plots.setup()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for variant, sub in df.groupby("variant", sort=False):
        c = plots.VARIANT_COLORS.get(variant)
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
    plots.save(fig, stem)


def run(run_dirs, cfg: dict, data_dir, tables_dir, figures_dir, threads: int = 1, repeats: int = 1) -> pd.DataFrame:
    df = pd.concat([skip_table(r, cfg, data_dir, threads, repeats) for r in run_dirs], ignore_index=True)
    # Measured wall times differ between reruns: they go to results/timing/, so every
    # results/tables/*.csv stays byte-identical across reruns.
    timing = ["wall_s", "wall_ratio"]
    tables.write_csv(df.drop(columns=timing), f"{tables_dir}/skip.csv")
    tables.write_csv(df[["variant", "size", "seed", "eps", *timing]], Path(tables_dir).parent / "timing" / "skip_wall.csv")
    tables.write_tex(f"{tables_dir}/skip.tex", skip_tex(df))
    tradeoff_figure(df, f"{figures_dir}/skip_tradeoff")
    return df
