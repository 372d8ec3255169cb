"""Teacher-forced scoring on the held-out split, and the claims' entries, shared by `kvcache` and `knobs`.

The held-out stream (meta.json "heldout": the last stories of the train excerpt, never trained
on) is cut into non-overlapping full windows of block_size (skip.windows), capped at a number
of tokens, and scored in eval.batch_size batches on the CPU in fp32: mean cross-entropy (nats
per token), mean next-token entropy of the model's predictive distribution (nats), and the
mean precision β of each layer over every scored token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Score:
    loss: float
    entropy: float
    beta_means: tuple[float, ...]  # per layer; empty for the baseline
    tokens: int


def heldout_windows(data_dir: str | Path, meta: dict, block_size: int, max_tokens: int | None):
    from ncn.analysis.skip import windows
    from ncn.data import open_split

    return windows(open_split(data_dir, "heldout", meta), block_size, max_tokens)


def score(model, x, y, batch_size: int) -> Score:
    """Score the windows (x, y) with the model as it is (knobs and fake quantisation included)."""
    import torch
    import torch.nn.functional as F

    ce = ent = 0.0
    beta = None
    n = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            out = model(xb, return_signals=True)
            logp = F.log_softmax(out.logits.double(), dim=-1)
            ce += float(F.nll_loss(logp.reshape(-1, logp.size(-1)), yb.reshape(-1), reduction="sum"))
            ent += float(-(logp.exp() * logp).sum())
            if out.signals is not None and out.signals.size(1) == xb.size(1):
                b = out.signals[..., 1].double().sum(dim=(0, 1))
                beta = b if beta is None else beta + b
            n += yb.numel()
    means = () if beta is None else tuple(float(v) for v in beta / n)
    return Score(ce / n, ent / n, means, n)


def by_registry(df):
    """Rows in the registry's variant order (ncn.variants), then size and seed as given."""
    from ncn.variants import order

    return df.assign(_v=df["variant"].map(order)).sort_values(["_v"], kind="stable").drop(columns="_v") \
        .reset_index(drop=True)


def claim_entry(key: str, text: str, origin: str, variant, size: str, statistic: str, threshold: str,
                res: dict) -> dict:
    """A claim judged by an analysis of its own, in claims.json's entry format (plus `origin`)."""
    return {"key": key, "claim": text, "origin": origin, "variant": variant, "size": size, "statistic": statistic,
            "threshold": threshold, **res}


def claim_tex(entry: dict) -> str:
    """One claim as a booktabs row: claim, statistic, value [CI], threshold, verdict."""
    from ncn.analysis import tables

    val = tables.pm_sig(entry["value"], None, None)
    if not tables.is_missing(entry["ci_low"]):
        val += f" {tables.ci(entry['ci_low'], entry['ci_high'], 4)}"
    row = [tables.prose(entry["claim"]) + f" ({tables.prose(entry['origin'])})", tables.prose(entry["statistic"]),
           val, tables.prose(entry["threshold"]), tables.escape(entry["verdict"])]
    align = "@{}" + tables.ragged("0.22") + tables.ragged("X") + tables.ragged("0.18") + tables.ragged("0.16") + "l@{}"
    return tables.booktabs(["Claim", "Statistic", "Value [CI]", "Threshold", "Verdict"], [row], align,
                           full_width=True)


def write_claim(entry: dict, json_path, tex_path) -> None:
    """The entry as JSON (nan → null) and as its booktabs row."""
    from ncn.analysis import tables
    from ncn.analysis.stats import nan_to_none
    from ncn.fileio import write_json

    write_json(json_path, nan_to_none(entry))
    tables.write_tex(tex_path, claim_tex(entry))


def add_arguments(p, summary: str, figure: str) -> None:
    """The options of `kvcache` and `knobs`: the runs, config, data, and every output the rule names."""
    from ncn.analysis import options, rows

    rows.add_source(p, "run folders holding model.pt (every variant, the baseline too; every seed), measured here")
    options.add_config(p)
    options.add_data(p)
    options.add_table(p)
    p.add_argument("--summary", required=True, help=f"output CSV: {summary}")
    options.add_figure(p, what=figure)
    p.add_argument("--claim-json", required=True, help="output: the claim's verdict (claims.json entry format)")
    p.add_argument("--claim-tex", required=True, help="output: the claim's verdict as a booktabs row")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")


def measure(table, args, cfg: dict, what: str):
    """table(run, cfg, data, threads) of every --run (or the rows of --rows), in the registry's order,
    and the CSV written."""
    from ncn.analysis import rows, tables

    df = by_registry(rows.gather(args, lambda r: table(r, cfg, args.data, args.threads), what))
    tables.write_csv(df, args.csv)
    return df
