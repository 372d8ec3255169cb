"""Recipe sweep: which (lr, warmup, tokens per step, epochs) gives low held-out loss whose seeds agree.

Trains every recipe of a grid (the product of --lr, --warmup, --tokens-per-step, --epochs) for
every --size, --seed and --variant with `ncn train` + `ncn evaluate` (subprocesses, --jobs at a
time) into a scratch folder, then writes

    results/bench/sweep.csv          one row per run: recipe, size, seed, variant, heldout_loss
                                     (the train excerpt's held-out tail), val_loss (the official
                                     validation file), steps, tokens, wall times
    results/bench/sweep_summary.csv  one row per (recipe, size): mean held-out loss over variants
                                     and seeds, the pooled seed SD (within each variant), each
                                     variant's mean and SD, the paired causal - none difference,
                                     and `pick`: per size, the lowest mean loss among the recipes
                                     whose pooled seed SD is at most --max-sd

Everything else comes from the base --config (default config/default.yaml): the sizes' shapes,
model, data and tokenizer sections, the schedule's min_lr and so on. The recipe overrides
train.lr, warmup_steps, epochs (train.tokens: null) and sets micro_batch = tokens_per_step /
block_size with grad_accum 1, for every swept size (per-size overrides included). MLflow is off
and checkpoints are skipped. A run whose eval.json exists is not run again, so an interrupted
sweep resumes where it stopped; --keep-models keeps model.pt (deleted by default to save disk).

    .venv/bin/python bench/sweep.py --jobs 2                     # the default grid: 16 recipes
        # (lr 1e-3 3e-3 x warmup 10 40 x tokens/step 2048 4096 x epochs 1 2; sizes s l; seeds
        # 0 1 2; none causal: 192 runs, ~24,000 CPU-s, ~3.5 h on 2 idle cores)
    .venv/bin/python bench/sweep.py --lr 3e-3 1e-3 --warmup 20 --tokens-per-step 2048 \\
        --epochs 0.02 --sizes s --seeds 0 1 --eval-max-tokens 4096   # a tiny check
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

from ncn.config import deep_update, load_config
from ncn.errors import NCNError
from ncn.fileio import read_json, write_csv_rows, write_text

RECIPE_KEYS = ("lr", "warmup", "tokens_per_step", "epochs")
RUN_FIELDS = ["recipe", *RECIPE_KEYS, "size", "seed", "variant", "heldout_loss", "val_loss", "heldout_tokens",
              "val_tokens", "steps", "tokens", "train_epochs", "n_params", "train_wall_s", "wall_s"]


def recipe_name(r: dict) -> str:
    return f"lr{r['lr']:g}_wu{r['warmup']}_tps{r['tokens_per_step']}_ep{r['epochs']:g}"


def grid(a: argparse.Namespace) -> list[dict]:
    return [dict(zip(RECIPE_KEYS, values)) for values in itertools.product(a.lr, a.warmup, a.tokens_per_step, a.epochs)]


def recipe_config(base: dict, r: dict, sizes: list[str], variants: list[str], eval_max_tokens: int | None) -> dict:
    """The base config with the recipe applied to `train` and to every swept size's overrides."""
    size_defs = {}
    for s in sizes:
        T = base["size_defs"][s]["block_size"]
        if r["tokens_per_step"] % T:
            raise NCNError(f"--tokens-per-step {r['tokens_per_step']} is not a multiple of size {s}'s block_size {T}")
        size_defs[s] = {"micro_batch": r["tokens_per_step"] // T, "grad_accum": 1, "lr": r["lr"]}
    over = {
        "profile": "sweep", "sizes": sizes, "variants": variants, "size_defs": size_defs,
        "train": {"lr": r["lr"], "warmup_steps": r["warmup"], "tokens": None, "epochs": r["epochs"],
                  "grad_accum": 1, "ckpt_every": 10**9, "keep_checkpoints": 1},
        "mlflow": {"enabled": False},
    }
    if eval_max_tokens is not None:
        over["eval"] = {"max_tokens": eval_max_tokens}
    return deep_update(base, over)


def ncn(args: list[str], log: Path, threads: int) -> float:
    """Run `ncn ARGS` with this interpreter, output to `log`; its wall time in seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(log, "a") as f:
        r = subprocess.run([sys.executable, "-m", "ncn.cli", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode:
        raise NCNError(f"'ncn {' '.join(args)}' failed (exit {r.returncode}); see {log}")
    return time.perf_counter() - t0


def ensure_data(base_config: Path, data: Path, threads: int) -> Path:
    """The tokenized data of the base config: reused when DATA/meta.json exists, else built there."""
    if (data / "meta.json").is_file():
        return data
    data.mkdir(parents=True, exist_ok=True)
    log = data / "build.log"
    ncn(["data", "fetch", "--config", str(base_config), "--out", str(data)], log, threads)
    ncn(["data", "tokenizer", "--config", str(base_config), "--data", str(data), "--out", str(data / "tokenizer.json")],
        log, threads)
    ncn(["data", "tokenize", "--config", str(base_config), "--data", str(data), "--tokenizer",
         str(data / "tokenizer.json"), "--out", str(data)], log, threads)
    return data


def run_one(job: dict, data: Path, threads: int, keep_models: bool) -> dict:
    """Train + evaluate one (recipe, size, seed, variant) unless its eval.json exists; its CSV row."""
    out, r = job["out"], job["recipe"]
    wall = 0.0
    if not (out / "eval.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        log = out / "sweep.log"
        wall += ncn(["train", "--config", str(job["config"]), "--variant", job["variant"], "--size", job["size"],
                     "--seed", str(job["seed"]), "--out", str(out), "--data", str(data), "--threads", str(threads)],
                    log, threads)
        wall += ncn(["evaluate", "--run", str(out), "--data", str(data), "--threads", str(threads)], log, threads)
        (out / "sweep_wall.json").write_text(json.dumps({"wall_s": wall}))
        if not keep_models:
            (out / "model.pt").unlink(missing_ok=True)
            shutil.rmtree(out / "ckpt", ignore_errors=True)
    m, ev = read_json(out / "metrics.json"), read_json(out / "eval.json")
    return {"recipe": recipe_name(r), **r, "size": job["size"], "seed": job["seed"], "variant": job["variant"],
            "heldout_loss": ev["heldout_loss"], "val_loss": ev["val_loss"], "heldout_tokens": ev["heldout_tokens"],
            "val_tokens": ev["val_tokens"], "steps": m["steps"], "tokens": m["tokens"], "train_epochs": m["epochs"],
            "n_params": m["n_params"], "train_wall_s": m["wall_time_s"],
            "wall_s": read_json(out / "sweep_wall.json")["wall_s"]}


def plan(a: argparse.Namespace, base: dict, scratch: Path) -> list[dict]:
    """One job per run, seeds outermost: a sweep stopped early has every recipe for the first seeds."""
    jobs = []
    for r in grid(a):
        cfg_path = scratch / "configs" / f"{recipe_name(r)}.yaml"
        cfg = recipe_config(base, r, a.sizes, a.variants, a.eval_max_tokens)
        write_text(cfg_path, yaml.safe_dump(cfg, sort_keys=True))
        load_config(cfg_path)  # the schema's verdict before any run starts
        for size, seed, variant in itertools.product(a.sizes, a.seeds, a.variants):
            jobs.append({"recipe": r, "size": size, "seed": seed, "variant": variant, "config": cfg_path,
                         "out": scratch / "runs" / recipe_name(r) / variant / size / f"seed{seed}"})
    return sorted(jobs, key=lambda j: (j["seed"], a.sizes.index(j["size"]), recipe_name(j["recipe"]), j["variant"]))


def _sd(x: pd.Series) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else math.nan


def summarize(runs: pd.DataFrame, max_sd: float) -> pd.DataFrame:
    """One row per (recipe, size): mean loss, pooled seed SD, per-variant mean/SD, paired causal - none."""
    rows = []
    for (recipe, size), g in runs.groupby(["recipe", "size"], sort=False):
        row = {"recipe": recipe, **{k: g[k].iloc[0] for k in RECIPE_KEYS}, "size": size,
               "n_seeds": int(g["seed"].nunique()), "heldout_loss_mean": float(g["heldout_loss"].mean()),
               "val_loss_mean": float(g["val_loss"].mean())}
        var = [g[g["variant"] == v]["heldout_loss"].var(ddof=1) for v in sorted(g["variant"].unique())]
        row["seed_sd_pooled"] = math.sqrt(sum(var) / len(var)) if all(v == v for v in var) else math.nan
        for v, gv in g.groupby("variant"):
            row[f"{v}_mean"], row[f"{v}_sd"] = float(gv["heldout_loss"].mean()), _sd(gv["heldout_loss"])
        if {"none", "causal"} <= set(g["variant"]):
            by = g.pivot_table(index="seed", columns="variant", values="heldout_loss").dropna()
            d = by["causal"] - by["none"]
            row["delta_causal_none_mean"], row["delta_causal_none_sd"] = float(d.mean()), _sd(d)
        row["wall_s_total"] = float(g["wall_s"].sum())
        rows.append(row)
    out = pd.DataFrame(rows)
    out["pick"] = False
    for size, g in out.groupby("size"):
        ok = g[g["seed_sd_pooled"] <= max_sd]
        if len(ok):
            out.loc[ok["heldout_loss_mean"].idxmin(), "pick"] = True
    return out.sort_values(["size", "heldout_loss_mean"], kind="stable").reset_index(drop=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Run from the repository root.")
    p.add_argument("--config", default="config/default.yaml", help="base profile (default: %(default)s)")
    p.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-3])
    p.add_argument("--warmup", type=int, nargs="+", default=[10, 40], help="warmup steps")
    p.add_argument("--tokens-per-step", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--epochs", type=float, nargs="+", default=[1.0, 2.0], help="passes over the train split")
    p.add_argument("--sizes", nargs="+", default=["s", "l"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["none", "causal"])
    p.add_argument("--eval-max-tokens", type=int, default=None, help="cap each evaluation set (default: whole)")
    p.add_argument("--max-sd", type=float, default=0.05, help="pooled seed SD (nats) a pick may have")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default: %(default)s)")
    p.add_argument("--data", type=Path, help="tokenized data (default: built from --config in SCRATCH/data)")
    p.add_argument("--scratch", type=Path, default=Path("results/bench/sweep-runs"))
    p.add_argument("--out", type=Path, default=Path("results/bench/sweep.csv"))
    p.add_argument("--keep-models", action="store_true", help="keep each run's model.pt")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    base = load_config(a.config)
    unknown = [s for s in a.sizes if s not in base["size_defs"]]
    if unknown:
        raise NCNError(f"--sizes {unknown} not in {a.config}'s size_defs ({', '.join(base['size_defs'])})")
    jobs = plan(a, base, a.scratch)
    data = a.data or ensure_data(Path(a.config), a.scratch / "data", a.threads)
    print(f"sweep: {len(jobs) // (len(a.sizes) * len(a.seeds) * len(a.variants))} recipes x {len(a.sizes)} sizes x "
          f"{len(a.seeds)} seeds x {len(a.variants)} variants = {len(jobs)} runs, {a.jobs} at a time", file=sys.stderr)
    t0 = time.perf_counter()
    rows = []
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        for i, row in enumerate(pool.map(lambda j: run_one(j, data, a.threads, a.keep_models), jobs), 1):
            rows.append(row)
            print(f"[{i}/{len(jobs)}] {row['recipe']} {row['size']} seed{row['seed']} {row['variant']}: "
                  f"heldout {row['heldout_loss']:.4f}  val {row['val_loss']:.4f}  ({row['wall_s']:.0f} s)",
                  file=sys.stderr)
    runs = pd.DataFrame(rows, columns=RUN_FIELDS)
    write_csv_rows(a.out, RUN_FIELDS, runs.to_dict("records"))
    summary = summarize(runs, a.max_sd)
    summary_path = a.out.with_name(a.out.stem + "_summary.csv")
    write_text(summary_path, summary.to_csv(index=False, float_format="%.6g"))
    with pd.option_context("display.width", 200, "display.max_columns", 12):
        print(summary[["recipe", "size", "heldout_loss_mean", "seed_sd_pooled", "val_loss_mean", "pick"]].to_string(
            index=False))
    print(f"{len(jobs)} runs in {time.perf_counter() - t0:.0f} s wall -> {a.out}, {summary_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except NCNError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        sys.exit(2)
