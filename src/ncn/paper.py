"""`ncn paper ...`: the generated half of the LaTeX paper, and its build.

The prose in paper/ quotes no number of ours directly: every measured or configured number is
a LaTeX macro written here into results/paper/numbers.tex (one `\\newcommand` per number), so
the PDF always says what the results say. Subcommands:

  numbers  results/ -> numbers.tex (+ the sizes and runs tables and the config listing it inputs)
  build    latexmk paper/ncn.tex in results/paper/build/, check the log, copy the PDF
  check    fail on undefined references/citations (and, optionally, wide overfull boxes)

Each input is read as its producer writes it (docs/architecture.md); aggregates come from the
analysis stage's own functions, so the prose and the tables cannot disagree. Missing optional
inputs (skip.csv, a run without metrics.json or eval.json, the data's manifest.json or
meta.json) make their macros read "n/a"; a missing results/claims.json is an error, because the
paper is about those verdicts.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ncn.analysis.tables import escape as tex_escape
from ncn.errors import NCNError
from ncn.fileio import read_json, write_bytes, write_text
from ncn.variants import baseline, names

VARIANTS = names()  # the registry's order, for every per-variant macro and table column

NA = "n/a"
PACKAGES = ("torch", "snakemake", "mlflow", "tokenizers", "datasets", "numpy", "pandas", "scipy")
# The original work's own reported scale (its README): an 18M-parameter model trained for one
# epoch of TinyStories (~520M GPT-2 tokens). Used only to state our scale relative to it.
ORIGINAL_PARAMS = 18e6
ORIGINAL_TOKENS = 520e6
# Block skipping: the largest eps whose validation loss is within this fraction of eps = 0.
SKIP_LOSS_TOLERANCE = 0.01
LISTING_WIDTH = 96  # characters per line of the \footnotesize config listing on the page
DIGIT_WORDS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")


# ------------------------------------------------------------------------------------------------
# formatting


def tex_path(text) -> str:
    """An escaped path or hash that may break after '/', '_', '-' or '.' (long paths in prose)."""
    out = []
    for ch in str(text):
        out.append(tex_escape(ch))
        if ch in "/_-.":
            out.append(r"\allowbreak{}")
    return "".join(out)


def macro_name(*parts) -> str:
    """CamelCase letters-only macro name: ("val loss", "causal", "paper18m") -> ValLossCausalPaperOneEightm.

    LaTeX control words are letters only, so digits are spelled out and other characters split words.
    """
    out = []
    for part in parts:
        for word in re.split(r"[^A-Za-z0-9]+", str(part)):
            if not word:
                continue
            word = word[0].upper() + word[1:]
            out.append("".join(DIGIT_WORDS[int(c)] if c.isdigit() else c for c in word))
    name = "".join(out)
    if not re.fullmatch(r"[A-Za-z]+", name):
        raise NCNError(f"cannot build a LaTeX macro name from {parts!r}")
    return name


def _finite(x) -> bool:
    """A number to print; None (JSON null) and NaN (an empty CSV cell, a missing run) read n/a."""
    return x is not None and math.isfinite(x)


def _minus(s: str) -> str:
    return "$-$" + s[1:] if s.startswith("-") else s


def fmt_fixed(x, decimals: int = 3) -> str:
    """Fixed decimals; a nonzero value too small for them keeps two significant digits."""
    if not _finite(x):
        return NA
    x = float(x)
    if x != 0 and abs(x) < 0.5 * 10.0**-decimals:
        return fmt_sig(x, 2)
    return _minus(f"{x:,.{decimals}f}")


def fmt_sig(x, sig: int = 3) -> str:
    """About `sig` significant digits, no exponent unless tiny: 0.01234, 1.23, 123, 12,346."""
    if not _finite(x):
        return NA
    x = float(x)
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag < -4:
        m, e = f"{x:.{sig - 1}e}".split("e")
        return f"${m}\\times10^{{{int(e)}}}$"
    if mag >= sig - 1:
        return _minus(f"{x:,.0f}")
    return _minus(f"{x:.{sig - 1 - mag}f}")


def fmt_cfg(x) -> str:
    """A configured value as written: 6e-4 -> $6\\times10^{-4}$, 0.95 -> 0.95, 4.0 -> 4, 32768 -> 32,768."""
    if not _finite(x):
        return NA
    x = float(x)
    if x == int(x) and abs(x) < 1e15:
        return fmt_int(x)
    s = f"{x:.6g}"
    if "e" in s:
        m, e = s.split("e")
        return f"${m}\\times10^{{{int(e)}}}$"
    return _minus(s)


def fmt_int(x) -> str:
    """Rounded to an integer, thousands separated: 1310.4 -> 1,310."""
    return _minus(f"{round(float(x)):,}") if _finite(x) else NA


def fmt_human(x) -> str:
    """1234567 -> 1.23M (parameter and token counts in prose)."""
    if not _finite(x):
        return NA
    x = float(x)
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{fmt_sig(x / div, 3)}{unit}"
    return fmt_sig(x, 3)


def fmt_bytes(n) -> str:
    if not _finite(n):
        return NA
    n = float(n)
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{fmt_sig(n / div, 3)}~{unit}"
    return f"{fmt_int(n)}~bytes"


def fmt_duration(seconds) -> str:
    if not _finite(seconds):
        return NA
    s = float(seconds)
    if s >= 2 * 3600:
        return f"{fmt_sig(s / 3600, 3)}~h"
    if s >= 120:
        return f"{fmt_sig(s / 60, 3)}~min"
    return f"{fmt_sig(s, 3)}~s"


def fmt_pct(fraction, decimals: int = 1) -> str:
    if not _finite(fraction):
        return NA
    return f"{fmt_fixed(100 * float(fraction), decimals)}\\%"


def fmt_list(items, fmt=str) -> str:
    items = [fmt(i) for i in items]
    return ", ".join(items) if items else NA


# ------------------------------------------------------------------------------------------------
# numbers.tex


class Numbers:
    """An ordered set of macros (name -> LaTeX text) with a comment per group."""

    def __init__(self):
        self.items: list[tuple[str, str]] = []  # (name, value) or ("%", comment)
        self.names: set[str] = set()

    def group(self, comment: str) -> None:
        self.items.append(("%", comment))

    def add(self, name: str, value: str) -> None:
        if not re.fullmatch(r"[A-Za-z]+", name):
            raise NCNError(f"macro name {name!r} is not letters only")
        if name in self.names:
            raise NCNError(f"macro \\{name} defined twice (a size or variant name collides with another macro)")
        self.names.add(name)
        self.items.append((name, str(value)))

    def render(self, header: str) -> str:
        lines = [f"% {line}" for line in header.splitlines()]
        for name, value in self.items:
            lines.append(f"\n% {value}" if name == "%" else f"\\newcommand{{\\{name}}}{{{value}}}")
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# inputs: each read as its producer writes it (docs/architecture.md)


def _read_json(path: Path) -> dict:
    """A JSON file, or {} when it does not exist (its macros then read n/a)."""
    if not path.exists():
        return {}
    try:
        return read_json(path)
    except ValueError as e:
        raise NCNError(f"{path}: not valid JSON ({e})") from None


def _load_runs(cfg: dict, results: Path) -> pd.DataFrame:
    """One row per configured run that is trained and evaluated: metrics.json + eval.json merged
    by the analysis stage's own collector, so the paper and the tables see the same records."""
    from ncn.analysis.runs import LEAD, collect

    dirs = [results / "runs" / v / s / f"seed{seed}" for v in cfg["variants"] for s in cfg["sizes"]
            for seed in cfg["seeds"]]
    dirs = [d for d in dirs if (d / "metrics.json").exists() and (d / "eval.json").exists()]
    if not dirs:  # nothing trained yet: no rows, and the columns read below, so their macros read n/a
        return pd.DataFrame(columns=[*LEAD, "epochs", "device", "batch_order_sha256", "wall_time_s", "tokens_per_s"])
    return collect(dirs)


def _row(df: pd.DataFrame, **key) -> dict:
    """The row of a table with these column values, or {} when there is none (its macros read n/a)."""
    if df.empty:
        return {}
    for col, value in key.items():
        df = df[df[col] == value]
    return df.iloc[0].to_dict() if len(df) else {}


def _half_width(row: dict, prefix: str):
    """Half the width of a table row's t-interval ({prefix}ci_low, {prefix}ci_high), or None."""
    low, high = row.get(f"{prefix}ci_low"), row.get(f"{prefix}ci_high")
    return (high - low) / 2 if _finite(low) and _finite(high) else None


def _skip_choice(results: Path, variant: str | None, size: str) -> dict:
    """The block-skipping row of `variant` at `size` at the largest eps whose loss is within
    SKIP_LOSS_TOLERANCE of the dense loss (eps = 0, always in the grid), averaged over seeds.

    tables/skip.csv holds the deterministic columns; the measured wall times are in
    timing/skip_wall.csv (`ncn analyze skip` writes both), joined here on (variant, size, seed, eps).
    """
    skip_csv, wall_csv = results / "tables" / "skip.csv", results / "timing" / "skip_wall.csv"
    if not skip_csv.exists():
        return {}
    names = {"variant": str, "size": str}  # a size named "1" is still a name
    df = pd.read_csv(skip_csv, dtype=names)
    if wall_csv.exists():
        df = df.merge(pd.read_csv(wall_csv, dtype=names), on=["variant", "size", "seed", "eps"], how="left")
    else:
        df["wall_ratio"] = math.nan
    df = df[(df["variant"] == variant) & (df["size"] == size)]
    by_eps = df.groupby("eps")[["loss", "delta_loss", "skip_frac", "ffn_flops_saved", "wall_ratio"]].mean()
    if by_eps.empty:
        return {}
    dense = by_eps.loc[0.0, "loss"]
    within = by_eps[by_eps["delta_loss"] <= SKIP_LOSS_TOLERANCE * dense]
    return {"eps": within.index[-1], "loss_dense": dense, **within.iloc[-1].to_dict()}


# ------------------------------------------------------------------------------------------------
# provenance, environment, parameter counts


def git_info(cwd: Path) -> tuple[str, str]:
    """(short commit, "clean" | "modified"), or ("unknown", "unknown") outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=20)
        if commit.returncode != 0:
            return "unknown", "unknown"
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=20)
        state = "unknown" if status.returncode else ("modified" if status.stdout.strip() else "clean")
        return commit.stdout.strip(), state
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return re.sub(r"\s+", " ", line.split(":", 1)[1]).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none"
    n, name = torch.cuda.device_count(), tex_escape(torch.cuda.get_device_name(0))
    return f"{n}$\\times$ {name}" if n > 1 else name


def describe_source(src: str | None) -> str:
    """manifest.json "source" in words: "local:/folder" or "hub:name" (`ncn data fetch`)."""
    if src is None:
        return NA
    kind, _, rest = src.partition(":")
    if kind == "local":
        return rf"the local folder \texttt{{{tex_path(rest)}}}"
    return rf"the Hugging Face hub (\texttt{{{tex_path(rest)}}})"


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return NA


def _size_params(cfg: dict, vocab_size: int | None) -> dict:
    """size -> {variant: (n_params, d_ff)} from the config and the tokenizer's vocabulary
    (counted on the meta device, so even the paper profile's large sizes cost nothing)."""
    if vocab_size is None:
        return {}
    from ncn.config import model_config
    from ncn.model import count_params

    out = {}
    for size in cfg["sizes"]:
        out[size] = {}
        for variant in VARIANTS:
            mc = model_config(cfg, variant, size, vocab_size)
            out[size][variant] = (count_params(mc), mc.d_ff)
    return out


# ------------------------------------------------------------------------------------------------
# every macro


def build_numbers(cfg: dict, results: Path, repo: Path) -> tuple[Numbers, dict]:
    """Every macro the paper quotes. Returns (numbers, context for the side tables)."""
    from ncn import __version__
    from ncn.analysis.ab import ab_table
    from ncn.analysis.leak import leak_table
    from ncn.analysis.runs import largest_size, primary_ncn, sizes_by_scale
    from ncn.analysis.stats import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED

    claims_path = results / "claims.json"
    if not claims_path.exists():
        raise NCNError(f"{claims_path} not found: the paper reports the claims' verdicts; run 'ncn analyze claims' "
                       "(or 'snakemake --cores all') first")
    claims = _read_json(claims_path)["claims"]
    manifest = _read_json(results / "data" / "manifest.json")
    meta = _read_json(results / "data" / "meta.json")
    runs = _load_runs(cfg, results)

    n = Numbers()
    conf = float(cfg["analysis"]["confidence"])
    largest = largest_size(cfg)
    ref = primary_ncn(cfg)

    # -- provenance ---------------------------------------------------------------------------
    n.group("provenance and environment")
    n.add("Profile", tex_escape(cfg["profile"]))
    commit, state = git_info(repo)
    n.add("GitCommit", tex_escape(commit))
    n.add("GitState", state)
    n.add("VersionPython", platform.python_version())
    n.add("VersionNcn", __version__)
    for pkg in PACKAGES:
        n.add(macro_name("version", pkg), tex_escape(_version(pkg)))
    n.add("HardwareCPU", tex_escape(cpu_model()))
    n.add("HardwareCores", str(os.cpu_count() or NA))
    n.add("HardwareGPU", gpu_name())
    n.add("TrainDevice", fmt_list(sorted(runs["device"].unique()), tex_escape))
    configfile = f"config/{cfg['profile']}.yaml"
    cmd = "snakemake --cores all" + ("" if cfg["profile"] == "default" else f" --configfile {configfile}")
    n.add("ReproCommand", tex_escape(cmd))
    n.add("ConfigFile", tex_path(configfile))

    # -- data and tokenizer: the text files (manifest.json), the tokens (meta.json) -------------
    n.group("data and tokenizer")
    n.add("DataSource", describe_source(manifest.get("source")))
    n.add("DataValSplit", tex_escape(cfg["data"]["val_split"]).replace("\\_", " "))
    for split in ("train", "valid"):
        S = split.capitalize()
        text, tokens = manifest.get(split, {}), meta.get(split, {})
        n.add(f"Data{S}From", rf"\texttt{{{tex_path(text['from'])}}}" if text else NA)
        n.add(f"Data{S}Sha", text["sha256"][:12] if text else NA)
        # meta.json counts the story text that was tokenized (bytes: the denominator of bits-per-byte)
        n.add(f"Data{S}Bytes", fmt_int(tokens.get("bytes")))
        n.add(f"Data{S}Size", fmt_bytes(tokens.get("bytes")))
        n.add(f"Data{S}Tokens", fmt_int(tokens.get("tokens")))
        n.add(f"Data{S}TokensHuman", fmt_human(tokens.get("tokens")))
        n.add(f"Data{S}Stories", fmt_int(tokens.get("stories")))  # null for a separator-less stream: n/a
    kind = cfg["tokenizer"]["kind"]
    n.add("TokenizerKind", {"bpe": "byte-level BPE", "gpt2": "GPT-2 BPE"}[kind])
    vocab = meta.get("vocab_size")  # the trained tokenizer's, which may fall short of the configured one
    n.add("VocabSize", fmt_int(vocab))
    n.add("TokenizerSha", meta["tokenizer_sha256"][:12] if meta else NA)

    # -- design: sizes, seeds, budget -----------------------------------------------------------
    n.group("design")
    n.add("NumVariants", str(len(cfg["variants"])))
    n.add("VariantList", ", ".join(rf"\texttt{{{tex_escape(v)}}}" for v in cfg["variants"]))
    n.add("NumSizes", str(len(cfg["sizes"])))
    n.add("SizesList", ", ".join(rf"\texttt{{{tex_escape(s)}}}" for s in sizes_by_scale(cfg)))
    n.add("NumSeeds", str(len(cfg["seeds"])))
    n.add("SeedList", fmt_list(cfg["seeds"]))
    n.add("NumRuns", str(len(cfg["variants"]) * len(cfg["sizes"]) * len(cfg["seeds"])))
    # Every loaded run is finished (train writes metrics.json last) and evaluated.
    n.add("NumRunsFinished", str(len(runs)))
    # Same data order: within a (size, seed) every variant must report the same batch-order hash.
    orders = runs.groupby(["size", "seed"])["batch_order_sha256"].nunique()
    n.add("BatchOrderIdentical", NA if orders.empty else "identical" if (orders == 1).all() else "not identical")
    n.add("LargestSize", rf"\texttt{{{tex_escape(largest)}}}")
    n.add("RefVariant", rf"\texttt{{{tex_escape(ref)}}}" if ref else NA)
    n.add("BaselineReference", rf"\texttt{{{tex_escape(cfg['ncn_reference'])}}}")
    tr, m = cfg["train"], cfg["model"]
    n.add("TokenBudget", fmt_int(tr["tokens"]))
    n.add("TokenBudgetHuman", fmt_human(tr["tokens"]))
    n.add("EpochBudget", fmt_cfg(tr["epochs"]) if tr["tokens"] is None else NA)
    big = runs[runs["size"] == largest]
    n.add("TokensTrained", fmt_int(big["tokens"].max()))
    n.add("TokensTrainedHuman", fmt_human(big["tokens"].max()))
    n.add("EpochsTrained", fmt_sig(big["epochs"].max()))
    n.add("StepsTrained", fmt_int(big["steps"].max()))
    n.add("TokensVsOriginal", fmt_pct(big["tokens"].max() / ORIGINAL_TOKENS, 2))
    sd = cfg["size_defs"][largest]
    n.add("TokensPerStep", fmt_int(tr["micro_batch"] * tr["grad_accum"] * sd["block_size"]))
    n.add("LearningRate", fmt_cfg(tr["lr"]))
    n.add("MinLearningRate", fmt_cfg(tr["min_lr"]))
    n.add("WarmupSteps", fmt_int(tr["warmup_steps"]))
    n.add("WeightDecay", fmt_cfg(tr["weight_decay"]))
    n.add("MicroBatch", fmt_int(tr["micro_batch"]))
    n.add("GradAccum", fmt_int(tr["grad_accum"]))
    n.add("GradClip", fmt_cfg(tr["grad_clip"]))
    n.add("AdamBetaOne", fmt_cfg(tr["beta1"]))
    n.add("AdamBetaTwo", fmt_cfg(tr["beta2"]))
    n.add("Dropout", fmt_cfg(m["dropout"]))
    n.add("RegLambda", fmt_cfg(m["reg_lambda"]))
    n.add("NcnHidden", fmt_int(m["ncn_hidden"]))
    n.add("NcnHeads", fmt_int(m["ncn_heads"]))
    n.add("GateInit", fmt_cfg(m["gate_init"]))
    n.add("BetaMax", fmt_cfg(m["beta_max"]))
    ev = cfg["eval"]
    n.add("EvalMaxTokens", fmt_int(ev["max_tokens"]) if ev["max_tokens"] else "all")
    an = cfg["analysis"]
    n.add("ConfidencePct", fmt_cfg(round(100 * conf, 4)) + r"\%")
    n.add("PPLThreshold", fmt_cfg(an["ppl_threshold"]))
    n.add("GainBandLow", fmt_cfg(an["gain_band"][0]))
    n.add("GainBandHigh", fmt_cfg(an["gain_band"][1]))
    n.add("GateEpsList", fmt_list(an["gate_eps"], fmt_cfg))
    n.add("SkipEpsList", fmt_list(an["skip_eps"], fmt_cfg))

    # -- parameter counts per size (from the config; the runs' counts must agree) --------------
    n.group("parameter counts (per size; Largest = the largest size)")
    params = _size_params(cfg, vocab)
    for size in cfg["sizes"]:
        for variant in VARIANTS:
            p = params.get(size, {}).get(variant)
            n.add(macro_name("size", size, "params", variant), fmt_int(p[0]) if p else NA)
    pl = params.get(largest, {})
    for variant in VARIANTS:
        n.add(macro_name("params", variant, "largest"), fmt_int(pl[variant][0]) if pl else NA)
        n.add(macro_name("params", variant, "largest", "human"), fmt_human(pl[variant][0]) if pl else NA)
    n.add("DffBaselineLargest", fmt_int(pl["none"][1]) if pl else NA)
    n.add("DffLargest", fmt_int(sd["d_ff"]))
    n.add("ParamsVsOriginal", fmt_sig(pl[ref or "causal"][0] / ORIGINAL_PARAMS, 2) if pl else NA)

    # -- validation metrics and the A/B, from the analysis stage's own A/B table ----------------
    ab = ab_table(runs, cfg)
    metrics = (("loss", "ValLoss", 3), ("ppl", "ValPPL", 2), ("bpb", "ValBPB", 3))
    n.group(f"validation metrics, mean over seeds (PM = half-width of the {fmt_sig(100 * conf)}% t-interval)")
    for size in cfg["sizes"]:
        for variant in VARIANTS:
            row = _row(ab, size=size, variant=variant)
            for short, stem, dec in metrics:
                n.add(macro_name("size", size, stem, variant), fmt_fixed(row.get(f"{short}_mean"), dec))
    for variant in VARIANTS:
        row = _row(ab, size=largest, variant=variant)
        for short, stem, dec in metrics:
            n.add(macro_name(stem, variant, "largest"), fmt_fixed(row.get(f"{short}_mean"), dec))
            n.add(macro_name(stem, variant, "largest", "PM"), fmt_fixed(_half_width(row, f"{short}_"), dec))

    n.group("variant - baseline, paired by seed, largest size (negative: the variant is better)")
    for variant in VARIANTS[1:]:
        row = _row(ab, size=largest, variant=variant)
        for short, stem, dec in (("ppl", "DeltaPPL", 2), ("loss", "DeltaLoss", 3), ("bpb", "DeltaBPB", 3)):
            n.add(macro_name(stem, variant, "largest"), fmt_fixed(row.get(f"d{short}_mean"), dec))
            n.add(macro_name(stem, variant, "largest", "CILow"), fmt_fixed(row.get(f"d{short}_ci_low"), dec))
            n.add(macro_name(stem, variant, "largest", "CIHigh"), fmt_fixed(row.get(f"d{short}_ci_high"), dec))
            n.add(macro_name(stem, variant, "largest", "N"), fmt_int(row.get("n_pairs", 0)))

    # -- the asrun leak, from the analysis stage's own leak table --------------------------------
    n.group("the future-token leak of asrun, largest size: val loss full - prefix-only pooling (negative: it leaks)")
    leak = _row(leak_table(runs, cfg), size=largest)
    n.add("LeakLossFull", fmt_fixed(leak.get("loss_full_mean"), 3))
    n.add("LeakLossPrefix", fmt_fixed(leak.get("loss_prefix_mean"), 3))
    n.add("LeakGap", fmt_fixed(leak.get("leak_mean"), 3))
    n.add("LeakGapCILow", fmt_fixed(leak.get("leak_ci_low"), 3))
    n.add("LeakGapCIHigh", fmt_fixed(leak.get("leak_ci_high"), 3))

    # -- wall time (metrics.json) -----------------------------------------------------------------
    n.group("training wall time (sum over runs; differs between reruns)")
    wall = runs["wall_time_s"].sum(min_count=1)  # NaN, not 0, without runs
    n.add("WallTimeTotal", fmt_duration(wall))
    n.add("WallTimeTotalSeconds", fmt_int(wall))
    n.add("TokensPerSecondBaselineLargest", fmt_int(big.loc[big["variant"] == "none", "tokens_per_s"].mean()))

    # -- claims -------------------------------------------------------------------------------
    n.group("claims (results/claims.json)")
    verdicts = [c["verdict"] for c in claims]
    n.add("ClaimsTotal", str(len(claims)))
    n.add("ClaimsSupported", str(verdicts.count(SUPPORTED)))
    n.add("ClaimsNotSupported", str(verdicts.count(NOT_SUPPORTED)))
    n.add("ClaimsInconclusive", str(verdicts.count(INCONCLUSIVE)))
    for c in claims:
        stem = macro_name("claim", c["id"])
        n.add(stem + "Verdict", c["verdict"])
        n.add(stem + "Value", fmt_sig(c["value"]))
        n.add(stem + "CILow", fmt_sig(c["ci_low"]))
        n.add(stem + "CIHigh", fmt_sig(c["ci_high"]))
        # Claims judged by a fraction or a test statistic have no interval (null bounds).
        n.add(stem + "CI", rf"\ConfidencePct{{}} interval [{fmt_sig(c['ci_low'])}, {fmt_sig(c['ci_high'])}]"
              if _finite(c["ci_low"]) and _finite(c["ci_high"]) else "no interval")
        n.add(stem + "Statistic", tex_escape(c["statistic"]))
        n.add(stem + "Threshold", tex_escape(c["threshold"]))
        n.add(stem + "Text", tex_escape(c["claim"]))

    # -- block skipping -------------------------------------------------------------------------
    n.group(f"block skipping at the largest eps whose loss is within {SKIP_LOSS_TOLERANCE:.0%} of eps = 0")
    sk = _skip_choice(results, ref, largest)
    n.add("SkipTolerancePct", fmt_pct(SKIP_LOSS_TOLERANCE, 0))
    n.add("SkipEps", fmt_cfg(sk.get("eps")))
    n.add("SkipLoss", fmt_fixed(sk.get("loss"), 3))
    n.add("SkipLossDense", fmt_fixed(sk.get("loss_dense"), 3))
    n.add("SkipLossDelta", fmt_fixed(sk.get("delta_loss"), 3))
    n.add("SkipFraction", fmt_pct(sk.get("skip_frac")))
    n.add("SkipFlopsSaved", fmt_pct(sk.get("ffn_flops_saved")))
    n.add("SkipWallRatio", fmt_sig(sk.get("wall_ratio")))

    return n, {"params": params, "runs": runs}


def sizes_table(cfg: dict, params: dict) -> str:
    """A booktabs tabular of the sizes: shape, matched baseline d_ff and parameter counts."""
    from ncn.analysis.runs import sizes_by_scale

    rows, base = [], baseline()
    for size in sizes_by_scale(cfg):
        sd = cfg["size_defs"][size]
        p = params.get(size, {})
        cells = [rf"\texttt{{{tex_escape(size)}}}", str(sd["d_model"]), str(sd["n_layer"]), str(sd["n_head"]),
                 str(sd["block_size"]), str(sd["d_ff"]), fmt_int(p[base][1]) if p else NA]
        cells += [fmt_int(p[v][0]) if p else NA for v in VARIANTS]
        rows.append(" & ".join(cells) + r" \\")
    nv = len(VARIANTS)  # 7 shape columns, then one parameter count per registered variant
    head = (r"size & $d_\mathrm{model}$ & layers & heads & context & $d_\mathrm{ff}$ & $d_\mathrm{ff}$ (base) & "
            + " & ".join(rf"\texttt{{{tex_escape(v)}}}" for v in VARIANTS) + r" \\")
    return "\n".join([
        "% Generated by `ncn paper numbers` from the resolved config. Parameter counts include embeddings.",
        rf"\begin{{tabular}}{{l{'r' * (6 + nv)}}}", r"\toprule",
        rf" & \multicolumn{{6}}{{c}}{{shape}} & \multicolumn{{{nv}}}{{c}}{{parameters}} \\",
        rf"\cmidrule(lr){{2-7}}\cmidrule(lr){{8-{7 + nv}}}", head, r"\midrule", *rows, r"\bottomrule",
        r"\end{tabular}", ""])


def runs_table(cfg: dict, runs: pd.DataFrame) -> str:
    """A booktabs tabular of every configured run (missing ones say n/a): size, seed, metrics."""
    from ncn.analysis.runs import sizes_by_scale

    rows = []
    for v in cfg["variants"]:
        for size in sizes_by_scale(cfg):
            for seed in cfg["seeds"]:
                r = _row(runs, variant=v, size=size, seed=seed)
                rows.append(" & ".join([
                    rf"\texttt{{{tex_escape(v)}}}", rf"\texttt{{{tex_escape(size)}}}", str(seed),
                    fmt_int(r.get("n_params")), fmt_int(r.get("tokens")), fmt_int(r.get("steps")),
                    fmt_fixed(r.get("final_ce"), 3), fmt_fixed(r.get("val_loss"), 3), fmt_fixed(r.get("val_ppl"), 2),
                    fmt_fixed(r.get("val_bpb"), 3), fmt_duration(r.get("wall_time_s"))]) + r" \\")
        rows.append(r"\midrule")
    rows.pop()  # no rule after the last variant
    head = (r"variant & size & seed & parameters & tokens & steps & train CE & val loss & val PPL & "
            r"val bpb & wall time \\")
    return "\n".join([
        "% Generated by `ncn paper numbers` from results/runs/*/*/seed*/{metrics,eval}.json.",
        r"\begin{tabular}{lllrrrrrrrr}", r"\toprule", head, r"\midrule", *rows, r"\bottomrule", r"\end{tabular}", ""])


def config_listing(config_path: Path) -> str:
    """The resolved config as a verbatim listing (YAML; lists inline, long lines wrapped)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_list(dumper, data):  # short lists of scalars inline, everything else as blocks
        flow = all(not isinstance(x, (dict, list)) for x in data) and len(str(data)) <= 60
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    Dumper.add_representer(list, represent_list)
    cfg = read_json(config_path) if config_path.suffix == ".json" else yaml.safe_load(config_path.read_text())
    body = yaml.dump(cfg, Dumper=Dumper, sort_keys=True, default_flow_style=False, width=90, allow_unicode=True)
    # Verbatim cannot break lines: hard-wrap the rare long scalar (a path) so it stays on the page.
    lines = []
    for line in body.splitlines():
        while len(line) > LISTING_WIDTH:
            lines.append(line[:LISTING_WIDTH] + "\\")
            line = "    " + line[LISTING_WIDTH:]
        lines.append(line)
    body = "\n".join(lines) + "\n"
    if r"\end{Verbatim}" in body:
        raise NCNError(f"{config_path}: a value contains \\end{{Verbatim}}; it cannot be listed verbatim")
    return "\\begin{Verbatim}[fontsize=\\footnotesize]\n" + body + "\\end{Verbatim}\n"


def cmd_numbers(a) -> int:
    from ncn.config import load_config

    cfg = load_config(a.config)
    results = Path(a.results)
    numbers, ctx = build_numbers(cfg, results, Path(a.repo))
    header = ("Generated by `ncn paper numbers` from results/ -- do not edit; rebuild with\n"
              "snakemake --cores all --forcerun paper_numbers. Values the text quotes: each macro is one number.")
    write_text(a.out, numbers.render(header))
    out_dir = Path(a.out).parent
    write_text(a.sizes_table or out_dir / "sizes_table.tex", sizes_table(cfg, ctx["params"]))
    write_text(a.config_listing or out_dir / "config_listing.tex", config_listing(Path(a.config)))
    write_text(a.runs_table or out_dir / "runs_table.tex", runs_table(cfg, ctx["runs"]))
    print(f"ncn paper numbers: {len(numbers.names)} macros -> {a.out}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------
# build and log check

_UNDEF = re.compile(r"(?:LaTeX|Package natbib) Warning: (Reference|Citation) `([^']*)' on page \S+ undefined")
_UNDEF_SUMMARY = re.compile(r"There were undefined (references|citations)")
_OVERFULL = re.compile(r"Overfull \\([hv])box \(([\d.]+)pt too (?:wide|high)\)([^\n]*)")


def check_log(text: str, max_overfull_pt: float | None = None) -> tuple[list[str], list[str]]:
    """(errors, warnings) found in a LaTeX log."""
    errors = sorted({f"undefined {kind.lower()} '{key}'" for kind, key in _UNDEF.findall(text)})
    if not errors:
        errors += [f"LaTeX reports undefined {m}" for m in sorted(set(_UNDEF_SUMMARY.findall(text)))]
    warnings = []
    for box, pt, rest in _OVERFULL.findall(text):
        where = re.search(r"lines? [\d-]+", rest)
        msg = f"overfull \\{box}box {pt}pt" + (f" at {where.group(0)}" if where else "")
        if max_overfull_pt is not None and float(pt) > max_overfull_pt:
            errors.append(msg + f" (more than {max_overfull_pt}pt)")
        else:
            warnings.append(msg)
    return errors, warnings


def check_log_file(log: Path, max_overfull_pt: float | None = None) -> list[str]:
    if not log.exists():
        raise NCNError(f"LaTeX log {log} not found: did latexmk run?")
    errors, warnings = check_log(log.read_text(encoding="utf-8", errors="replace"), max_overfull_pt)
    for w in warnings:
        print(f"ncn paper: warning: {log}: {w}", file=sys.stderr)
    if errors:
        raise NCNError(f"{log}: " + "; ".join(errors))
    return warnings


# The caption of the claims table in paper/sections/results.tex (what a reader, and the smoke
# check below, looks for in the PDF).
CLAIMS_TABLE_HEADING = "Claims of the original work, each with a measured verdict"


def verify_pdf(pdf: str | os.PathLike, claims_path: str | os.PathLike) -> list[str]:
    """Problems with a built PDF: the claims table heading must be in its text, and so must the
    value of every claim that has one (to the 3 significant digits the paper prints)."""
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    text = re.sub(r"\s+", " ", text).replace("\u2212", "-")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # thousands separators
    problems = [] if CLAIMS_TABLE_HEADING in text else [f"'{CLAIMS_TABLE_HEADING}' not in {pdf}"]
    numbers = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]
    for c in read_json(claims_path)["claims"]:
        v = c.get("value")
        if not _finite(v) or float(v) == 0:
            continue
        tol = 0.5 * 10.0 ** (math.floor(math.log10(abs(float(v)))) - 2) * 1.001  # half a unit in the 3rd digit
        if not any(abs(x - float(v)) <= tol for x in numbers):
            problems.append(f"claim {c.get('id')}: value {v} not found in {pdf}")
    return problems


def latexmk_command(tex: str, build_dir: str) -> list[str]:
    # -g: always rebuild (snakemake --forcerun paper must rebuild); -norc: no personal latexmkrc.
    return ["latexmk", "-norc", "-g", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error",
            f"-outdir={build_dir}", tex]


def cmd_build(a) -> int:
    root = Path(a.root).resolve()
    if shutil.which("latexmk") is None:
        raise NCNError("latexmk not found: install TeX (make setup, or apt-get install latexmk "
                       "texlive-latex-recommended texlive-fonts-recommended lmodern; conda: envs/paper.yaml)")
    if not (root / a.tex).exists():
        raise NCNError(f"{root / a.tex} not found")
    (root / a.build_dir).mkdir(parents=True, exist_ok=True)
    cmd = latexmk_command(a.tex, a.build_dir)
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    env = dict(os.environ, max_print_line="10000", error_line="254", half_error_line="238")
    r = subprocess.run(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL)
    stem = Path(a.tex).stem
    log = root / a.build_dir / f"{stem}.log"
    if r.returncode != 0:
        tail = ""
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()
            errs = [ln for ln in lines if ln.startswith("!") or re.match(r"^\S+:\d+: ", ln)]
            tail = " | ".join(errs[:3])
        raise NCNError(f"latexmk failed (exit {r.returncode}) on {a.tex}; see {log}" + (f": {tail}" if tail else ""))
    check_log_file(log, a.max_overfull_pt)
    pdf = root / a.build_dir / f"{stem}.pdf"
    out = root / a.out
    write_bytes(out, pdf.read_bytes())
    print(f"ncn paper build: {out}", file=sys.stderr)
    return 0


def cmd_check(a) -> int:
    warnings = check_log_file(Path(a.log), a.max_overfull_pt)
    print(f"ncn paper check: {a.log}: no undefined references or citations ({len(warnings)} overfull boxes)",
          file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="ncn paper",
        description="The generated half of the LaTeX paper (paper/ncn.tex): numbers.tex with one \\newcommand "
        "per number the prose quotes, the setup table, the config listing; and the PDF build.",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{numbers,build,check}")
    q = sub.add_parser("numbers", help="results/ -> numbers.tex (+ sizes_table, runs_table, config_listing)",
                       description="Write one \\newcommand per number the paper quotes. Missing optional "
                       "inputs give 'n/a'; a missing results/claims.json is an error.")
    q.add_argument("--config", required=True, help="the resolved config (results/config.json) or a YAML profile")
    q.add_argument("--results", default="results", help="the results folder (default: results)")
    q.add_argument("--out", required=True, help="numbers.tex to write, e.g. results/paper/numbers.tex")
    q.add_argument("--sizes-table", help="sizes table (default: sizes_table.tex beside --out)")
    q.add_argument("--config-listing", help="verbatim config listing (default: config_listing.tex beside --out)")
    q.add_argument("--runs-table", help="table of every run (default: runs_table.tex beside --out)")
    q.add_argument("--repo", default=".", help="git checkout whose commit the paper reports (default: .)")
    q = sub.add_parser("build", help="latexmk paper/ncn.tex into results/paper/build and copy the PDF",
                       description="Run latexmk (pdflatex + bibtex) from --root, fail on undefined "
                       "references or citations, and copy the PDF to --out.")
    q.add_argument("--root", default=".", help="folder holding paper/ and results/ (default: .)")
    q.add_argument("--tex", default="paper/ncn.tex", help="main file, relative to --root")
    q.add_argument("--build-dir", default="results/paper/build", help="latexmk -outdir, relative to --root")
    q.add_argument("--out", default="results/paper/ncn.pdf", help="the PDF, relative to --root")
    q.add_argument("--max-overfull-pt", type=float, default=None,
                   help="also fail on an overfull box wider than this (default: only warn)")
    q = sub.add_parser("check", help="fail if a LaTeX log has undefined references or citations")
    q.add_argument("--log", required=True, help="the .log file of a LaTeX run")
    q.add_argument("--max-overfull-pt", type=float, default=None, help="also fail on wider overfull boxes")
    a = p.parse_args(argv)
    return {"numbers": cmd_numbers, "build": cmd_build, "check": cmd_check}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
