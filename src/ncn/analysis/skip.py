"""Block skipping: drop a token's FFN in a layer where its gate γ < ε, for an ε grid, on every
seed, against skipping as many FFN evaluations at random.

The model gathers the kept rows and runs the FFN on those only (`Transformer.forward(...,
skip_eps=ε)`), so the saved FFN FLOPs equal the skipped fraction of (layer, token) FFN
evaluations. The HELD-OUT stream (heldout.bin, never trained on, in the training format) is cut
into non-overlapping windows of block_size (the tail shorter than a window is left out), capped
at analysis.skip_max_tokens tokens, and evaluated in eval.batch_size batches.

Random-skip control: for each batch and layer, the gate skips n_l of the B·T tokens; the
control skips n_l tokens of that layer drawn uniformly at random (the same count per layer and
batch, so the same FLOPs; only WHICH tokens differs), through the same gathered-FFN code. Its
loss is the mean over analysis.skip_random_draws seeded draws (a generator seeded by the run's
seed and the ε's index), with their sd. A gate that knows which FFN evaluations matter skips at a
lower loss than chance; one whose closed set is random does not.

skip.csv columns: loss (mean CE, nats/token), ppl, skip_frac (= FFN FLOPs saved),
ffn_flops_saved, delta_loss (loss − the unskipped loss; exactly 0 at ε = 0), loss_random,
loss_random_sd, delta_random (loss_random − the unskipped loss). skip_measure.csv holds the
same measurements under the names the claims read (see MEASURE). Measured wall times (wall_s
and wall_ratio vs ε = 0, the median of `repeats` passes, which must agree on loss and skipped
fraction) differ between reruns, so they go to results/timing/skip_wall.csv, not the tables.
The paper quotes the largest ε whose mean loss increase over seeds is at most
analysis.skip_tolerance_nats (absolute, nats/token).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ncn.analysis import options, plots, tables
from ncn.analysis.macros import fmt_cfg, fmt_fixed, fmt_pct, fmt_sig
from ncn.errors import NCNError

TIMING = ["wall_s", "wall_ratio"]
SKIP = ["variant", "size", "seed", "eps", "tokens", "loss", "ppl", "skip_frac", "ffn_flops_saved", "delta_loss",
        "loss_random", "loss_random_sd", "delta_random"]
# skip_measure.csv: the claims' names for the same numbers (loss_skip = loss, delta_skip = delta_loss).
MEASURE = ["variant", "size", "seed", "eps", "tokens", "loss_dense", "loss_skip", "skip_frac", "loss_random",
           "loss_random_sd", "n_random", "delta_skip", "delta_random", "skip_minus_random", "tolerance_nats",
           "within_tolerance"]
_RANDOM_SEED = 54_321


def windows(tokens: np.ndarray, block_size: int, max_tokens: int | None):
    """(x, y) int64 tensors of every full window within the first max_tokens (+1) tokens."""
    import torch

    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    k = (n - 1) // block_size
    if k < 1:
        raise NCNError(f"the token stream ({len(tokens)} tokens) is shorter than one window of {block_size}")
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


def gate_gammas(model, x, batch_size: int) -> list:
    """γ (B, T, L) of every batch (the signals do not depend on skipping)."""
    import torch

    with torch.no_grad():
        return [model(x[i : i + batch_size], return_signals=True).signals[..., 2] for i in range(0, len(x), batch_size)]


def random_mask(closed, gen):
    """A skip mask (B, T, L) with, per layer, as many skipped tokens as `closed` (B, T, L) has,
    at uniformly random (token) places."""
    import torch

    B, T, L = closed.shape
    mask = torch.zeros(B * T, L, dtype=torch.bool)
    for l, n in enumerate(closed.reshape(B * T, L).sum(dim=0).tolist()):
        mask[torch.randperm(B * T, generator=gen)[: int(n)], l] = True
    return mask.view(B, T, L)


@contextlib.contextmanager
def forced_skips(model, mask):
    """Run the model's gathered FFN skip on `mask` (B, T, L; True = skip) instead of γ < ε; the
    residual update still uses the model's own g·γ."""
    import torch

    from ncn.model import Block

    for l, block in enumerate(model.blocks):
        keep = (~mask[:, :, l]).to(torch.float32).unsqueeze(-1)  # the gather keeps rows with "γ" >= 0.5
        block._ffn = lambda h, gamma, eps, block=block, keep=keep: Block._ffn(block, h, keep, 0.5)
    try:
        yield
    finally:
        for block in model.blocks:
            del block._ffn


def random_skip_losses(model, x, y, batch_size: int, gammas: list, eps: float, draws: int, gen) -> list[float]:
    """Mean CE of each random draw at the gate's per-layer skip counts (see random_mask)."""
    import torch

    losses = []
    for _ in range(draws):
        total, count = 0.0, 0
        for k, i in enumerate(range(0, len(x), batch_size)):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            closed = (gammas[k] < eps).expand(xb.size(0), xb.size(1), -1)
            with forced_skips(model, random_mask(closed, gen)), torch.no_grad():
                total += float(model(xb, targets=yb, skip_eps=1.0).ce) * yb.numel()
            count += yb.numel()
        losses.append(total / count)
    return losses


def _eps_row(model, x, y, bs, eps, repeats, gammas, draws, gen) -> dict:
    results = [evaluate(model, x, y, bs, eps) for _ in range(max(1, repeats))]
    loss, frac, _ = results[0]
    if any(r[0] != loss or r[1] != frac for r in results):
        raise NCNError(f"skipping at eps={eps} is not deterministic across passes")
    if frac > 0:
        rand = random_skip_losses(model, x, y, bs, gammas, eps, draws, gen)
        mean, sd = float(np.mean(rand)), float(np.std(rand, ddof=1)) if draws > 1 else math.nan
    else:  # nothing skipped: the control is the dense model itself
        mean, sd = loss, 0.0
    return {"eps": eps, "tokens": int(y.numel()), "loss": loss, "ppl": math.exp(loss), "skip_frac": frac,
            "ffn_flops_saved": frac, "loss_random": mean, "loss_random_sd": sd, "n_random": draws,
            "wall_s": float(np.median([r[2] for r in results]))}


def skip_model(model, x, y, batch_size: int, eps_grid, draws: int, seed: int, repeats: int = 1) -> pd.DataFrame:
    """One row per ε of eps_grid (0 added): the gate's and the random control's losses (see the doc)."""
    import torch

    from ncn.progress import bar

    eps_grid = sorted(set(float(e) for e in eps_grid) | {0.0})
    ref_loss, _, _ = evaluate(model, x, y, batch_size, None)
    gammas = gate_gammas(model, x, batch_size)
    rows = []
    for i, eps in enumerate(bar(eps_grid, desc=f"skip {model.cfg.ncn}/seed{seed}", leave=False)):
        gen = torch.Generator().manual_seed(_RANDOM_SEED + 1000 * seed + i)
        rows.append(_eps_row(model, x, y, batch_size, eps, repeats, gammas, draws, gen))
    df = pd.DataFrame(rows)
    df["loss_dense"] = ref_loss
    df["delta_loss"] = df["loss"] - ref_loss
    df["delta_random"] = df["loss_random"] - ref_loss
    df["wall_ratio"] = df["wall_s"] / df.loc[df["eps"] == 0.0, "wall_s"].iloc[0]
    return df


def skip_table(run_dir: str | Path, cfg: dict, data_dir: str | Path, threads: int = 1, repeats: int = 1) -> pd.DataFrame:
    """Every column of SKIP, MEASURE and TIMING for one run, one row per ε (0 always included)."""
    from ncn.analysis.trace import load_ncn_run
    from ncn.data import open_split

    model, payload, meta = load_ncn_run(run_dir, cfg, data_dir, threads, "has no gate to skip on; pass an NCN run")
    a = cfg["analysis"]
    x, y = windows(open_split(data_dir, "heldout", meta), model.cfg.block_size, a["skip_max_tokens"])
    seed = int(payload.get("seed", 0))
    try:
        grid = options.skip_grid(a)
        df = skip_model(model, x, y, cfg["eval"]["batch_size"], grid, a["skip_random_draws"], seed, repeats)
    except NCNError as e:
        raise NCNError(f"{run_dir}: {e}") from None
    df.insert(0, "seed", seed)
    df.insert(0, "size", payload.get("size", ""))
    df.insert(0, "variant", model.cfg.ncn)
    return df


def measure_table(df: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """skip_measure.csv from the skip rows: the claims' column names (MEASURE)."""
    out = df.assign(loss_skip=df["loss"], delta_skip=df["delta_loss"],
                    skip_minus_random=df["loss"] - df["loss_random"], tolerance_nats=tolerance,
                    within_tolerance=(df["delta_loss"] <= tolerance).astype(int))
    return out[MEASURE]


def by_eps(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (variant, size, eps), with the number of seeds; variants in table order."""
    cols = [c for c in ("loss", "ppl", "delta_loss", "delta_random", "skip_frac", "ffn_flops_saved", "wall_ratio")
            if c in df]
    out = df.groupby(["variant", "size", "eps"], sort=False)[cols].mean()
    out["n_seeds"] = df.groupby(["variant", "size", "eps"], sort=False)["seed"].nunique()
    return out.reset_index()


def skip_tex(df: pd.DataFrame) -> str:
    m = by_eps(df)
    header = ["Variant", r"$\varepsilon$", "Seeds", "Loss", r"$\Delta$loss, gate", r"$\Delta$loss, random",
              "FFN skipped", "Wall time ratio"]
    rows = [[tables.escape(r.variant), f"${r.eps:.2f}$", str(int(r.n_seeds)), tables.num(r.loss, 4),
             tables.num(r.delta_loss, 4), tables.num(r.delta_random, 4), f"${100 * r.skip_frac:.1f}\\%$",
             tables.num(r.wall_ratio, 2)]
            for r in m.itertuples(index=False)]
    return tables.booktabs(header, rows, "lrrrrrrr", tables.group_breaks(list(m["variant"])))


def tradeoff_figure(df: pd.DataFrame, pdf, png) -> None:
    import matplotlib.pyplot as plt

    plots.setup()
    m = by_eps(df)
    fig, axes = plt.subplots(1, 2, figsize=(plots.TEXT_WIDTH_IN, 2.8))
    for variant, sub in m.groupby("variant", sort=False):
        c = plots.variant_colour(variant)
        axes[0].plot(sub["skip_frac"], sub["delta_loss"], "o-", color=c, label=f"{variant}: gate")
        axes[0].plot(sub["skip_frac"], sub["delta_random"], "x--", color=c, lw=0.8, label=f"{variant}: random")
        axes[1].plot(sub["eps"], sub["wall_ratio"], "o-", color=c, label=variant)
        for r in sub.itertuples(index=False):
            axes[0].annotate(f"{r.eps:g}", (r.skip_frac, r.delta_loss), fontsize=6, xytext=(3, 3),
                             textcoords="offset points")
    axes[0].set_xlabel("FFN evaluations skipped (= FFN FLOPs saved)")
    axes[0].set_ylabel("Δ held-out loss vs unskipped (nats)")
    axes[0].set_title("gate vs random skipping, mean over seeds (labels: ε)")
    axes[1].axhline(1.0, color="0.5", lw=0.8, ls="--")
    axes[1].set_xlabel("ε (skip where γ < ε)")
    axes[1].set_ylabel("wall time / wall time at ε = 0")
    axes[1].set_title("measured wall time")
    axes[0].legend(fontsize=6, frameon=False)
    options.save_figure(fig, pdf, png)


def add_arguments(p) -> None:
    from ncn.analysis import rows

    rows.add_source(p, "NCN run folder(s) holding model.pt, measured here")
    options.add_config(p)
    options.add_data(p)
    options.add_table(p)
    p.add_argument("--measure-csv", required=True, help="output CSV of the same measurements under the claims' "
                   "column names (results/tables/skip_measure.csv)")
    p.add_argument("--timing", required=True, help="output CSV of the measured wall times (results/timing/), "
                   "kept out of --csv so the table is byte-identical across reruns")
    options.add_figure(p, what="the loss / skipped-fraction / wall-time trade-off")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed passes per eps; the wall time is their median (default: %(default)s)")


def main(args, cfg: dict) -> None:
    from ncn.analysis import rows

    df = rows.gather(args, lambda r: skip_table(r, cfg, args.data, args.threads, args.repeats), "skip")
    tables.write_csv(df[SKIP], args.csv)
    tables.write_csv(measure_table(df, cfg["analysis"]["skip_tolerance_nats"]), args.measure_csv)
    tables.write_csv(df[["variant", "size", "seed", "eps", *TIMING]], args.timing)
    tables.write_tex(args.tex, skip_tex(df))
    tradeoff_figure(df, args.pdf, args.png)


def choice(skip: pd.DataFrame, timing: pd.DataFrame, variant: str | None, size: str, tolerance: float) -> dict:
    """The row of `variant` at `size` at the largest eps whose mean loss increase over seeds is at
    most `tolerance` nats (eps = 0, always in the grid, has none), averaged over seeds; the wall
    ratio joined from the timing table on (variant, size, seed, eps)."""
    if skip.empty:
        return {}
    if timing.empty:
        df = skip.assign(wall_ratio=math.nan)
    else:
        df = skip.merge(timing, on=["variant", "size", "seed", "eps"], how="left")
    df = df[(df["variant"] == variant) & (df["size"] == size)]
    if "delta_random" not in df:
        df = df.assign(delta_random=math.nan)
    cols = ["loss", "delta_loss", "delta_random", "skip_frac", "ffn_flops_saved", "wall_ratio"]
    means = df.groupby("eps")[cols].mean()
    if means.empty:
        return {}
    dense = means.loc[0.0, "loss"]
    within = means[means["delta_loss"] <= tolerance]
    return {"eps": within.index[-1], "loss_dense": dense, "n_seeds": df["seed"].nunique(), **within.iloc[-1].to_dict()}


def numbers(skip: pd.DataFrame, cfg: dict, timing: pd.DataFrame) -> dict:
    """The prose's macros of the skip table: "the NCN" at the largest size (see `choice`)."""
    from ncn.analysis.runs import largest_size, primary_ncn

    tol = cfg["analysis"]["skip_tolerance_nats"]
    sk = choice(skip, timing, primary_ncn(cfg), largest_size(cfg), tol)
    return {"block skipping at the largest eps whose mean loss increase is at most skip_tolerance_nats": {
        "SkipToleranceNats": fmt_sig(tol),
        "SkipEps": fmt_cfg(sk.get("eps")),
        "SkipLoss": fmt_fixed(sk.get("loss"), 3),
        "SkipLossDense": fmt_fixed(sk.get("loss_dense"), 3),
        "SkipLossDelta": fmt_fixed(sk.get("delta_loss"), 3),
        "SkipRandomDelta": fmt_fixed(sk.get("delta_random"), 3),
        "SkipFraction": fmt_pct(sk.get("skip_frac")),
        "SkipFlopsSaved": fmt_pct(sk.get("ffn_flops_saved")),
        "SkipWallRatio": fmt_sig(sk.get("wall_ratio")),
        "SkipSeeds": fmt_sig(sk.get("n_seeds")),
    }}
