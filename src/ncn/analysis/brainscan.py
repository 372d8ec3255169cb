"""Brain scans: heatmaps (layers × tokens) of g, β, γ on the seed's sentence, one row per variant,
each cell the MEAN over the seeds traced (every trace given of that variant; the sentences and
their tokens are the same in every seed's trace, which is checked).

Colour limits are FIXED and shared by every model, never auto-scaled: each signal's natural
range (g = 2·sigmoid ∈ [0, 2], β ∈ [0, beta_max], γ = sigmoid ∈ [0, 1]). A ±3% wiggle therefore
looks like one — the original's figures stretched such wiggles over the whole colour map.
The deviation map shows signal − its initial value (per variant: see `init_values`) on one
symmetric scale shared by all models and signals: analysis.dev_limit, or when null the largest
|deviation| anywhere, rounded up to 1, 2 or 5 × 10^k (stated on the colour bar).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ncn.analysis import options, plots
from ncn.analysis.runs import SIGNALS
from ncn.analysis.trace import read_trace
from ncn.errors import NCNError
from ncn.variants import spec

SIGNAL_TEX = {"g": "gain $g$", "beta": r"precision $\beta$", "gamma": r"gate $\gamma$"}


def init_values(variant: str, model_cfg: dict) -> dict[str, float]:
    """The signals' value at initialisation (see ncn.model): init "zeroed" (asrun) starts from zero biases."""
    if spec(variant).init == "zeroed":
        return {"g": 1.0, "beta": math.log(2.0) + 0.01, "gamma": 0.5}  # 2σ(0), softplus(0)+0.01, σ(0)
    return {"g": 1.0, "beta": 1.0, "gamma": float(model_cfg["gate_init"])}


def natural_limits(model_cfg: dict) -> dict[str, tuple[float, float]]:
    return {"g": (0.0, 2.0), "beta": (0.0, float(model_cfg["beta_max"])), "gamma": (0.0, 1.0)}


def nice_ceil(x: float) -> float:
    """Smallest 1, 2 or 5 × 10^k that is ≥ x (x > 0)."""
    if not (x > 0 and math.isfinite(x)):
        return 1.0
    k = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * 10**k >= x * (1 - 1e-12):
            return float(m * 10**k)
    return float(10 ** (k + 1))


def scan_sentence(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the first trace sentence (kind 'trace', lowest sentence_id)."""
    sub = df[df["kind"] == "trace"]
    if sub.empty:
        sub = df
    return sub[sub["sentence_id"] == sub["sentence_id"].min()]


def seed_mean(sent: pd.DataFrame) -> pd.DataFrame:
    """One row per (pos, layer): the signals' mean over the seeds of a scan sentence's rows."""
    tokens = sent.groupby("pos")["token_id"].nunique()
    if (tokens > 1).any():
        raise NCNError("the traces of one variant hold different tokens for the scan sentence; "
                       "retrace every seed with the same config and tokenizer")
    keys = ["pos", "layer"]
    mean = sent.groupby(keys, sort=True)[list(SIGNALS)].mean()
    first = sent.groupby(keys, sort=True)[["token", "token_id"]].first()
    return mean.join(first).reset_index()


def matrices(sent: pd.DataFrame) -> tuple[dict[str, np.ndarray], list[str]]:
    """{signal: (layers, tokens) array} and the token labels."""
    L = int(sent["layer"].max()) + 1
    T = int(sent["pos"].max()) + 1
    mats = {}
    for s in SIGNALS:
        m = np.full((L, T), np.nan)
        m[sent["layer"].to_numpy(), sent["pos"].to_numpy()] = sent[s].to_numpy(dtype=float)
        mats[s] = m
    labels = sent[sent["layer"] == 0].sort_values("pos")["token"].astype(str).tolist()
    # Leading spaces are invisible on an axis; '$' would start matplotlib mathtext.
    labels = [(t.replace("<|endoftext|>", "<eot>").strip() or "\u2423").replace("$", r"\$") for t in labels]
    return mats, labels


def dev_limit(scans: dict, cfg: dict) -> float:
    fixed = cfg["analysis"].get("dev_limit")
    if fixed:
        return float(fixed)
    worst = 0.0
    for variant, (mats, _) in scans.items():
        init = init_values(variant, cfg["model"])
        for s in SIGNALS:
            d = np.abs(mats[s] - init[s])
            if np.isfinite(d).any():
                worst = max(worst, float(np.nanmax(d)))
    return nice_ceil(worst)


def _heatmaps(scans: dict, cfg: dict, pdf, png, deviation: bool, note: str = "") -> None:
    import matplotlib.pyplot as plt

    plots.setup()
    variants = list(scans)
    n_tok = max(len(labels) for _, labels in scans.values())
    fig_w = 3 * max(3.0, 0.22 * n_tok + 1.2)
    fig, axes = plt.subplots(len(variants), 3, figsize=(fig_w, 1.0 + 1.1 * len(variants) + 0.12 * n_tok / 3),
                             squeeze=False)
    lim = natural_limits(cfg["model"])
    dlim = dev_limit(scans, cfg) if deviation else None
    for j, s in enumerate(SIGNALS):
        for i, variant in enumerate(variants):
            mats, labels = scans[variant]
            init = init_values(variant, cfg["model"])
            ax = axes[i][j]
            if deviation:
                data, vmin, vmax, cmap = mats[s] - init[s], -dlim, dlim, "RdBu_r"
            else:
                (vmin, vmax), data, cmap = lim[s], mats[s], "viridis"
            im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax)
            ax.grid(False)
            ax.set_yticks(range(data.shape[0]))
            if j == 0:
                ax.set_ylabel(f"{variant}\nlayer")
            else:
                ax.set_yticklabels([])
            # Every row shows the same sentence: token labels on the bottom row only.
            ax.set_xticks(range(len(labels)))
            if i == len(variants) - 1:
                ax.set_xticklabels(labels, rotation=90, fontsize=6)
            else:
                ax.set_xticklabels([])
            if i == 0:
                ax.set_title(SIGNAL_TEX[s] + (" − init" if deviation else ""))
        # One colour bar per signal: the limits are shared by every model in the column.
        cb = fig.colorbar(im, ax=list(axes[:, j]), fraction=0.05, pad=0.02)
        cb.ax.tick_params(labelsize=6)
    title = ("Deviation from the initial value; symmetric limit ±%g shared by all models" % dlim if deviation
             else "Signals per layer and token; fixed colour limits = natural ranges, shared by all models")
    fig.suptitle(f"{title}; {note}" if note else title, fontsize=9)
    options.save_figure(fig, pdf, png, tight=False)  # the shared colour bars manage their own space


def add_arguments(p) -> None:
    p.add_argument("--traces", nargs="+", required=True, metavar="CSV",
                   help="trace CSVs to show: every seed of each NCN variant (the pipeline passes the largest "
                        "size); each variant's panel shows the mean over its seeds")
    options.add_config(p)
    options.add_figure(p, what="the signals' heatmaps")
    options.add_figure(p, "dev", what="the signals' deviation from init")


def main(args, cfg: dict) -> None:
    """Brain scans of the given traces (every seed of each NCN variant at the largest size): the
    mean over seeds per variant."""
    by_variant: dict[str, list[pd.DataFrame]] = {}
    for p in args.traces:
        df = read_trace(p)
        by_variant.setdefault(str(df["variant"].iloc[0]), []).append(scan_sentence(df))
    scans = {v: matrices(seed_mean(pd.concat(frames, ignore_index=True))) for v, frames in by_variant.items()}
    seeds = {v: len(frames) for v, frames in by_variant.items()}
    order = [v for v in cfg["variants"] if v in scans] + sorted(v for v in scans if v not in cfg["variants"])
    scans = {v: scans[v] for v in order}
    n = sorted(set(seeds.values()))
    note = f"mean over {n[0]} seed{'s' if n[0] != 1 else ''}" if len(n) == 1 else "mean over each variant's seeds"
    _heatmaps(scans, cfg, args.pdf, args.png, deviation=False, note=note)
    _heatmaps(scans, cfg, args.dev_pdf, args.dev_png, deviation=True, note=note)
