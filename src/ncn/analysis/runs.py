"""Collect finished runs (metrics.json + eval.json) into one table: results/tables/runs.csv.

Every aggregate (A/B, scaling, leak, claims) reads this table, so adding a run changes it and
reruns them. Kept free of torch so Snakemake can import `largest_size` cheaply.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ncn.errors import NCNError
from ncn.fileio import read_json
from ncn.variants import ncn_names, order, primary

SIGNALS = ("g", "beta", "gamma")
# Leading columns of runs.csv; the remaining metrics/eval fields follow in sorted order.
LEAD = ["variant", "size", "seed", "run_dir", "val_loss", "val_ppl", "val_bpb", "val_loss_prefix_pool",
        "n_params", "n_params_non_embedding", "tokens", "steps", "final_ce", "final_loss", "reg_init", "reg_final"]


def size_cost(cfg: dict, size: str) -> int:
    """A proxy for a size's non-embedding parameter count (attention 4d² + FFN 2·d·d_ff per layer)."""
    sd = cfg["size_defs"][size]
    return sd["n_layer"] * (4 * sd["d_model"] ** 2 + 2 * sd["d_model"] * sd["d_ff"])


def sizes_by_scale(cfg: dict) -> list[str]:
    """The configured sizes from smallest to largest (ties keep config order)."""
    return sorted(cfg["sizes"], key=lambda s: (size_cost(cfg, s), cfg["sizes"].index(s)))


def largest_size(cfg: dict) -> str:
    return sizes_by_scale(cfg)[-1]


def ncn_variants(cfg: dict) -> list[str]:
    """The configured variants with signals (all but the baseline), in config order."""
    return ncn_names(cfg["variants"])


def primary_ncn(cfg_or_variants) -> str | None:
    """'The NCN' of the claims: ncn.variants.PRIMARY when trained, else the first NCN variant."""
    variants = cfg_or_variants["variants"] if isinstance(cfg_or_variants, dict) else list(cfg_or_variants)
    return primary(variants)


def _read(path: Path) -> dict:
    if not path.exists():
        raise NCNError(f"{path} is missing: the run has not finished (train, then evaluate it)")
    try:
        return read_json(path)
    except json.JSONDecodeError as e:
        raise NCNError(f"{path}: not valid JSON ({e})") from None


def run_record(run_dir: str | Path) -> dict:
    """metrics.json and eval.json of one run, merged (metrics win on shared keys)."""
    run_dir = Path(run_dir)
    metrics = _read(run_dir / "metrics.json")
    ev = _read(run_dir / "eval.json")
    for key in ("variant", "size", "seed"):
        if key in ev and key in metrics and ev[key] != metrics[key]:
            raise NCNError(f"{run_dir}: metrics.json and eval.json disagree on {key} ({metrics[key]} vs {ev[key]})")
    rec = {**ev, **metrics, "run_dir": run_dir.as_posix()}
    # Nested values (dicts, lists) would not fit a CSV cell: keep them as compact JSON.
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for k, v in rec.items()}


def collect(run_dirs) -> pd.DataFrame:
    if not run_dirs:
        raise NCNError("no runs given: pass --runs results/runs/V/S/seedN ...")
    recs = [run_record(d) for d in run_dirs]
    df = pd.DataFrame(recs)
    for key in ("variant", "size", "seed"):
        if key not in df:
            raise NCNError(f"metrics.json lacks '{key}' (runs: {', '.join(map(str, run_dirs))})")
    dup = df.duplicated(["variant", "size", "seed"])
    if dup.any():
        r = df[dup].iloc[0]
        raise NCNError(f"run ({r.variant}, {r['size']}, seed {r.seed}) given twice")
    df["_v"] = df["variant"].map(order)  # the registry's order, unknown names last
    # Sizes in order of scale when the parameter count is known, then by name.
    df["_p"] = df["n_params_non_embedding"] if "n_params_non_embedding" in df else 0
    df = df.sort_values(["_v", "_p", "size", "seed"], kind="stable").drop(columns=["_v", "_p"])
    cols = [c for c in LEAD if c in df] + sorted(c for c in df if c not in LEAD)
    return df[cols].reset_index(drop=True)


def load_runs_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise NCNError(f"runs table {path} not found: run 'ncn analyze runs' first")
    df = pd.read_csv(path)
    for col in ("variant", "size", "seed", "val_loss"):
        if col not in df:
            raise NCNError(f"{path}: column '{col}' missing (rebuild it with 'ncn analyze runs')")
    df["size"] = df["size"].astype(str)
    df["variant"] = df["variant"].astype(str)
    return df


def per_seed(df: pd.DataFrame, variant: str, size: str, column: str) -> dict[int, float]:
    """{seed: value} for one (variant, size); missing/empty cells dropped."""
    sub = df[(df["variant"] == variant) & (df["size"] == size)]
    if column not in sub:
        return {}
    out = {}
    for seed, v in zip(sub["seed"], sub[column]):
        v = float(v) if v is not None and v == v else math.nan
        if math.isfinite(v):
            out[int(seed)] = v
    return out


def read_train_log(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / "train_log.csv"
    if not path.exists():
        raise NCNError(f"{path} is missing: train the run first")
    df = pd.read_csv(path)
    for col in ("step", "tokens", "loss", "ce", "reg"):
        if col not in df:
            raise NCNError(f"{path}: column '{col}' missing")
    return df


def final_layer_means(log: pd.DataFrame, signal: str) -> np.ndarray:
    """Per-layer mean of `signal` at the last step whose signal statistics were logged."""
    cols = sorted((c for c in log if c.startswith(f"{signal}_mean_l")), key=lambda c: int(c.rsplit("l", 1)[1]))
    if not cols:
        return np.array([])
    rows = log[cols].dropna(how="any")
    if rows.empty:
        return np.array([])
    return rows.iloc[-1].to_numpy(dtype=float)
