"""Brain scans: heatmaps (layers × tokens) of g, β, γ on the seed's sentence, one group of stacked
panels per signal and in it one panel per variant, as wide as the paper's text,
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


# Print-size layout (inches): the figure is as wide as the text, so its fonts print at their size.
PANEL_IN_PER_LAYER, PANEL_MIN_IN, GROUP_GAP_IN, TOKENS_IN, TITLE_IN = 0.06, 0.28, 0.1, 0.55, 0.45
CBAR_LEFT, CBAR_WIDTH, AXES_LEFT, AXES_RIGHT = 0.905, 0.014, 0.09, 0.89


def scan_layout(n_variants: int, n_layers: int) -> tuple[float, list[float]]:
    """(figure height, height ratios): one stacked group of n_variants panels per signal, a gap
    between groups, every panel the full text width (so a token gets room for a legible label)."""
    panel = max(PANEL_MIN_IN, PANEL_IN_PER_LAYER * n_layers)
    ratios = []
    for j in range(len(SIGNALS)):
        ratios += [panel] * n_variants + ([GROUP_GAP_IN] if j < len(SIGNALS) - 1 else [])
    return sum(ratios) + TOKENS_IN + TITLE_IN, ratios


def _panel(ax, data, labels, vmin, vmax, cmap, variant: str, bottom: bool):
    im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.grid(False)
    layers = data.shape[0]
    ax.set_yticks(sorted({0, layers - 1}))  # first and last layer: a short panel holds no more
    ax.set_ylabel(f"{variant}\nlayer", rotation=0, ha="right", va="center", labelpad=10)
    ax.set_xticks(range(len(labels)))
    # Every panel shows the same sentence: token labels under the bottom panel only.
    ax.set_xticklabels(labels if bottom else [], rotation=90)
    return im


def _heatmaps(scans: dict, cfg: dict, pdf, png, deviation: bool, note: str = "") -> None:
    import matplotlib.pyplot as plt

    plots.setup()
    variants = list(scans)
    n_layers = max(m["g"].shape[0] for m, _ in scans.values())
    height, ratios = scan_layout(len(variants), n_layers)
    fig = plt.figure(figsize=(plots.TEXT_WIDTH_IN, height))
    grid = fig.add_gridspec(len(ratios), 1, height_ratios=ratios, hspace=0.2, left=AXES_LEFT, right=AXES_RIGHT,
                            top=1 - TITLE_IN / height, bottom=TOKENS_IN / height)
    lim = natural_limits(cfg["model"])
    dlim = dev_limit(scans, cfg) if deviation else None
    for j, s in enumerate(SIGNALS):
        group = []
        for i, variant in enumerate(variants):
            mats, labels = scans[variant]
            if deviation:
                data, (vmin, vmax), cmap = mats[s] - init_values(variant, cfg["model"])[s], (-dlim, dlim), "RdBu_r"
            else:
                data, (vmin, vmax), cmap = mats[s], lim[s], "viridis"
            ax = fig.add_subplot(grid[j * (len(variants) + 1) + i])
            bottom = j == len(SIGNALS) - 1 and i == len(variants) - 1
            im = _panel(ax, data, labels, vmin, vmax, cmap, variant, bottom)
            group.append(ax)
        # One colour bar per signal, beside its group: the limits are shared by every model in it.
        top, low = group[0].get_position(), group[-1].get_position()
        cax = fig.add_axes((CBAR_LEFT, low.y0, CBAR_WIDTH, top.y1 - low.y0), label=f"colour bar {s}")
        cb = fig.colorbar(im, cax=cax)
        cb.set_label(SIGNAL_TEX[s] + (" − init" if deviation else ""))
    title = ("Deviation from the initial value; symmetric limit ±%g shared by all models" % dlim if deviation
             else "Signals per layer and token; fixed colour limits = natural ranges, shared by all models")
    fig.suptitle(f"{title};\n{note}" if note else title, y=1 - 0.04 / height)
    options.save_figure(fig, pdf, png, tight=False)  # the layout is fixed above, in inches


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
