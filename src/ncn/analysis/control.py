"""`ncn analyze control`: do external control signals steer generation through neuromodulation alone?

The variant(s) with control (ncn.variants: "control" = causal whose controller also reads a
per-story label, ncn.control) are trained at control.sizes on every seed. The label ("dialogue":
the story contains a double quotation mark) enters the NCN's input only, so whatever it changes
in the text it changes through g, β and γ. For each such run:

  loss      held-out loss (heldout.bin, eval.max_tokens cap) with every token's true story label
            and with the flipped label: gap = loss(flipped) − loss(true), nats/token. A model that
            ignores its control has gap 0 exactly (its logits do not depend on it).
  sampling  control.num_samples stories from the end-of-text token (+ control.prompt) under three
            conditions: dialogue=1, dialogue=0, and a random label (each story's label drawn with
            the train stories' base rate). Every condition uses the same generator seed (paired
            samples). A story is its text up to the first end-of-text token (or up to
            max_new_tokens); it has dialogue by the label's own rule. steer = frac(dialogue=1) −
            frac(dialogue=0). The random label is the same model's reference without steering; the
            base rate is the data's (sampled stories cut at max_new_tokens may fall short of it).

Per size: mean and t-CI over seeds of each quantity and of the paired differences. The claim
(origin "original, promise": the NCN "can receive ... external control signals"): at the largest
control size, supported only if the CIs of both gap and steer lie above zero; not supported if
either lies at or below zero; else inconclusive (fewer than two seeds included).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ncn.analysis import options, tables
from ncn.analysis.runs import size_cost
from ncn.analysis.stats import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, ci_verdict, t_interval
from ncn.control import LABELS
from ncn.errors import NCNError

LABEL = next(iter(LABELS))  # the label steered and measured: "dialogue"
CONDITIONS = ("on", "random", "off")  # dialogue=1, a random label, dialogue=0
CLAIM_ORIGIN = "original, promise"
CLAIM_TEXT = "External control signals steer generation through neuromodulation alone"
RUN_COLUMNS = ["variant", "size", "seed", "run_dir", "tokens", "loss_true", "loss_flipped", "loss_gap",
               "num_samples", "frac_on", "frac_random", "frac_off", "steer", "random_positive", "base_rate"]
# per-size summaries (mean, CI) of these per-run quantities; two are paired differences
SUMMARY = ("loss_true", "loss_flipped", "loss_gap", "frac_on", "frac_random", "frac_off", "steer",
           "on_minus_random", "random_minus_off")


# -- measuring one run ---------------------------------------------------------------------------
def label_losses(model, data_dir, meta: dict, cfg: dict) -> dict:
    """Held-out loss with the true and with the flipped story labels (every label bit inverted)."""
    import torch

    from ncn.data import open_split
    from ncn.data.labels import open_labels
    from ncn.evaluate import stream_ce

    tokens, labels = open_split(data_dir, "heldout", meta), open_labels(data_dir, "heldout", meta)
    flipped = np.bitwise_xor(np.asarray(labels), np.uint8((1 << len(LABELS)) - 1))
    T, bs, cap, cpu = model.cfg.block_size, cfg["eval"]["batch_size"], cfg["eval"]["max_tokens"], torch.device("cpu")
    ce_true, n = stream_ce(model, tokens, T, bs, cpu, cap, desc="heldout, true label", labels=labels)
    ce_flip, _ = stream_ce(model, tokens, T, bs, cpu, cap, desc="heldout, flipped label", labels=flipped)
    return {"tokens": n, "loss_true": ce_true / n, "loss_flipped": ce_flip / n, "loss_gap": (ce_flip - ce_true) / n}


def story_text(ids: list[int], eot: int, tokenizer) -> str:
    """The text of a sampled story: its tokens up to the first end-of-text token."""
    return tokenizer.decode(ids[: ids.index(eot)] if eot in ids else ids)


def sample_labels(model, tokenizer, eot: int, c: dict, labels: list[int]) -> list[bool]:
    """One story per entry of `labels` (the dialogue bit of its control), sampled in one batch with
    a generator seeded by control.seed; whether each has the label, by the label's rule."""
    import torch

    from ncn.control import vector

    prompt = [eot] + (tokenizer.encode(c["prompt"]).ids if c["prompt"] else [])
    room = model.cfg.block_size - len(prompt)
    if room < 1:
        raise NCNError(f"control.prompt is {len(prompt) - 1} tokens: no room to sample in a context of "
                       f"{model.cfg.block_size}; shorten it")
    new = c["max_new_tokens"] or room
    idx = torch.tensor([prompt] * len(labels), dtype=torch.long)
    control = torch.tensor([vector({LABEL: b}) for b in labels])
    out = model.generate(idx, new, temperature=c["temperature"], top_k=c["top_k"],
                         generator=torch.Generator().manual_seed(c["seed"]), control=control)
    rule = LABELS[LABEL][0]
    return [rule(story_text(row, eot, tokenizer)) for row in out[:, len(prompt):].tolist()]


def generation_fractions(model, tokenizer, eot: int, c: dict, base_rate: float) -> dict:
    """Fraction of sampled stories with the label under dialogue=1, a random label, dialogue=0."""
    import torch

    n = c["num_samples"]
    draws = torch.rand(n, generator=torch.Generator().manual_seed(c["seed"] + 1)) < base_rate
    random_labels = [int(b) for b in draws.tolist()]
    fr = {cond: float(np.mean(sample_labels(model, tokenizer, eot, c, labels)))
          for cond, labels in (("on", [1] * n), ("random", random_labels), ("off", [0] * n))}
    return {"num_samples": n, **{f"frac_{k}": v for k, v in fr.items()}, "steer": fr["on"] - fr["off"],
            "random_positive": sum(random_labels)}


def measure_run(run_dir, cfg: dict, data_dir, threads: int = 1) -> dict:
    """One row of the per-run table (RUN_COLUMNS)."""
    from ncn.analysis.trace import load_ncn_run, load_tokenizer
    from ncn.data.labels import load_labels
    from ncn.variants import control_names

    model, payload, meta = load_ncn_run(run_dir, cfg, data_dir, threads, "has no controller to take a control input")
    if not model.cfg.control_dim:
        raise NCNError(f"{run_dir}: variant '{model.cfg.ncn}' takes no control input; measure a run of a variant "
                       f"with control ({', '.join(control_names())})")
    base = load_labels(data_dir, meta)["train"]["base_rate"][LABEL]
    row = {"variant": payload.get("variant"), "size": payload.get("size"), "seed": payload.get("seed"),
           "run_dir": Path(run_dir).as_posix(), "base_rate": base}
    row |= label_losses(model, data_dir, meta, cfg)
    row |= generation_fractions(model, load_tokenizer(data_dir), meta["eot_id"], cfg["control"], base)
    return row


# -- aggregating --------------------------------------------------------------------------------
def control_sizes(cfg: dict) -> list[str]:
    """control.sizes (null: every configured size), smallest to largest."""
    sizes = cfg["control"]["sizes"]
    sizes = list(cfg["sizes"]) if sizes is None else list(sizes)
    return sorted(sizes, key=lambda s: (size_cost(cfg, s), sizes.index(s)))


def _per_seed(runs: pd.DataFrame, size: str) -> pd.DataFrame:
    sub = runs[runs["size"].astype(str) == size].sort_values("seed")
    return sub.assign(on_minus_random=sub["frac_on"] - sub["frac_random"],
                      random_minus_off=sub["frac_random"] - sub["frac_off"])


def summary_table(runs: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """One row per control size: n_seeds, base rate, and mean/CI of every SUMMARY quantity."""
    conf = cfg["analysis"]["confidence"]
    rows = []
    for size in control_sizes(cfg):
        sub = _per_seed(runs, size)
        if sub.empty:
            continue
        r = {"size": size, "n_seeds": len(sub), "base_rate": float(sub["base_rate"].iloc[0])}
        for q in SUMMARY:
            r |= t_interval(sub[q].to_numpy(dtype=float), conf).as_dict(f"{q}_")
        r["loss_gap_per_seed"] = " ".join(f"{x:.6g}" for x in sub["loss_gap"])
        r["steer_per_seed"] = " ".join(f"{x:.6g}" for x in sub["steer"])
        rows.append(r)
    cols = ["size", "n_seeds", "base_rate"] + [f"{q}_{k}" for q in SUMMARY for k in ("mean", "ci_low", "ci_high", "n", "sd")]
    return pd.DataFrame(rows, columns=cols + ["loss_gap_per_seed", "steer_per_seed"])


def control_claim(runs: pd.DataFrame | None, cfg: dict, variant: str | None = None) -> dict:
    """The claim's result (value = steer, its CI; the loss gap in details), in claims.json's form;
    of `variant`'s runs only when given (one variant's seeds are the pairs)."""
    conf = cfg["analysis"]["confidence"]
    sizes = control_sizes(cfg)
    if runs is not None and variant is not None and not runs.empty:
        runs = runs[runs["variant"].astype(str) == variant]
    empty = runs is None or runs.empty
    if not sizes or empty:
        why = "control.sizes is empty: no control runs" if not sizes else "no control measurements"
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "verdict": INCONCLUSIVE,
                "details": {"reason": why, "origin": CLAIM_ORIGIN}}
    size = sizes[-1]
    sub = _per_seed(runs, size)
    gap, steer = (t_interval(sub[q].to_numpy(dtype=float), conf) for q in ("loss_gap", "steer"))
    parts = [ci_verdict(iv.low, iv.high, 0.0, "above") for iv in (gap, steer)]
    verdict = (SUPPORTED if parts == [SUPPORTED, SUPPORTED] else NOT_SUPPORTED if NOT_SUPPORTED in parts
               else INCONCLUSIVE)
    means = {f"frac_{k}_mean": float(sub[f"frac_{k}"].mean()) if len(sub) else math.nan for k in CONDITIONS}
    return {"value": steer.mean, "ci_low": steer.low, "ci_high": steer.high, "verdict": verdict,
            "details": {"origin": CLAIM_ORIGIN, "label": LABEL, "size": size, "n_seeds": len(sub),
                        "seeds": [int(s) for s in sub["seed"]], "steer_per_seed": list(sub["steer"]),
                        "loss_gap_mean": gap.mean, "loss_gap_ci_low": gap.low, "loss_gap_ci_high": gap.high,
                        "loss_gap_per_seed": list(sub["loss_gap"]), "verdict_loss": parts[0],
                        "verdict_generation": parts[1], "base_rate": float(sub["base_rate"].iloc[0]) if len(sub)
                        else math.nan, **means}}


def claim_statistic(cfg: dict) -> str:
    sizes = control_sizes(cfg)
    pct = f"{round(cfg['analysis']['confidence'] * 100)}%"
    return (f"fraction of sampled stories with {LABEL} under {LABEL}=1 minus {LABEL}=0, and held-out loss with "
            f"the flipped minus the true label, paired over seeds (size {sizes[-1] if sizes else 'none'}), {pct} t-CIs")


CLAIM_THRESHOLD = "both CIs entirely above 0"


# -- outputs ------------------------------------------------------------------------------------
def control_tex(df: pd.DataFrame, claim: dict) -> str:
    header = ["Size", "Seeds", "Loss, true label", "Loss, flipped", "Gap (flipped $-$ true)",
              f"{LABEL}=1", "random label", f"{LABEL}=0", f"Steer ({LABEL}=1 $-$ {LABEL}=0)"]
    rows = []
    for r in df.itertuples(index=False):
        rows.append([tables.escape(r.size), str(int(r.n_seeds)),
                     *(tables.pm(getattr(r, f"{q}_mean"), getattr(r, f"{q}_ci_low"), getattr(r, f"{q}_ci_high"), 4)
                       for q in ("loss_true", "loss_flipped", "loss_gap")),
                     *(tables.pm(getattr(r, f"frac_{k}_mean"), getattr(r, f"frac_{k}_ci_low"),
                                 getattr(r, f"frac_{k}_ci_high"), 2) for k in CONDITIONS),
                     tables.pm(r.steer_mean, r.steer_ci_low, r.steer_ci_high, 2)])
    if not rows:
        rows = [["--", "0"] + ["--"] * 6 + ["no control runs"]]
    base = df["base_rate"].iloc[0] if len(df) else math.nan
    note = (rf"\multicolumn{{{len(header)}}}{{l}}{{base rate of {LABEL} in the train stories: {tables.num(base, 2)}; "
            rf"claim verdict (largest size): {tables.escape(claim['verdict'])}}} \\")
    text = tables.booktabs(header, rows, "lrrrrrrrr")
    return text.replace("\\bottomrule", "\\midrule\n" + note + "\n\\bottomrule")


def plot_control(df: pd.DataFrame, pdf, png) -> None:
    """Fraction of sampled stories with the label per size and condition (mean, CI), base rate dashed."""
    import matplotlib.pyplot as plt

    from ncn.analysis import plots
    from ncn.variants import REGISTRY, control_names

    plots.setup()
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    x = np.arange(len(df))
    colour = REGISTRY[control_names()[0]].colour if control_names() else None
    styles = {"on": (colour, "o", f"{LABEL}=1"), "random": ("#7f7f7f", "s", "random label"),
              "off": (colour, "v", f"{LABEL}=0")}
    for i, (k, (c, marker, label)) in enumerate(styles.items()):
        m, lo, hi = (df[f"frac_{k}_{s}"].to_numpy(dtype=float) for s in ("mean", "ci_low", "ci_high"))
        err = np.where(np.isfinite(lo), np.vstack([m - lo, hi - m]), 0.0)
        ax.errorbar(x + (i - 1) * 0.12, m, yerr=err, fmt=marker, color=c, capsize=3, label=label,
                    mfc="white" if k == "off" else c)
    if len(df):
        ax.axhline(float(df["base_rate"].iloc[0]), ls="--", color="black", lw=0.8, label="base rate (train)")
    ax.set_xticks(x, list(df["size"]))
    ax.set_xlabel("size")
    ax.set_ylabel(f"stories with {LABEL}")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="best")
    options.save_figure(fig, pdf, png)


def add_arguments(p) -> None:
    p.add_argument("--run", nargs="*", default=[], metavar="RUN",
                   help="finished runs of a variant with control (results/runs/control/S/seedN); none: empty tables")
    options.add_config(p)
    p.add_argument("--data", help="tokenized data folder with the story labels (results/data); needed with --run")
    p.add_argument("--runs-csv", required=True, help="output: one row per run (the claim reads it)")
    options.add_table(p)
    options.add_figure(p)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")


def read_runs(path) -> pd.DataFrame:
    """The per-run table, names kept as text; empty with the columns when there is none."""
    df = tables.read_table(path)
    return pd.DataFrame(columns=RUN_COLUMNS) if df.empty else df


def main(args, cfg: dict) -> None:
    if args.run and not args.data:
        raise NCNError("--data is needed to measure runs (the tokenized folder with the story labels)")
    rows = [measure_run(r, cfg, args.data, args.threads) for r in args.run]
    order = {size: i for i, size in enumerate(control_sizes(cfg))}
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    runs = runs.iloc[sorted(range(len(runs)), key=lambda i: (order.get(runs["size"][i], len(order)),
                                                             str(runs["size"][i]), runs["seed"][i]))]
    tables.write_csv(runs, args.runs_csv)
    runs = read_runs(args.runs_csv)  # what the claim reads, as it reads it
    df = summary_table(runs, cfg)
    claim = control_claim(runs, cfg)
    tables.write_csv(df, args.csv)
    tables.write_tex(args.tex, control_tex(df, claim))
    plot_control(df, args.pdf, args.png)
    print(f"ncn analyze control: {len(rows)} runs; claim {claim['verdict']}", file=sys.stderr)
