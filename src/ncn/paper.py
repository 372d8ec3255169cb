"""`ncn paper ...`: the generated half of the LaTeX paper, and its build.

The prose in paper/ quotes no number of ours directly: every measured or configured number is
a LaTeX macro written here into results/paper/numbers.tex (one `\\newcommand` per number), so
the PDF always says what the results say. Subcommands:

  numbers  the analysis outputs -> numbers.tex (+ the sizes and runs tables and the config listing)
  build    latexmk paper/ncn.tex in results/paper/build/, check the log, copy the PDF
  check    fail on undefined references/citations (and, optionally, wide overfull boxes)

numbers.tex is the concatenation of SECTIONS, small functions each returning {group comment:
{macro: value}}; an analysis's macros come from its own module's `numbers(table, cfg)` over the
table it wrote, so the prose and the tables cannot disagree. Every input is a path the rule
passes; a missing optional one (a table, the runs table, the data's manifest.json or
meta.json) makes its macros read "n/a"; a missing claims.json is an error, because the paper is
about those verdicts. The files the paper itself inputs are found in its source:
`generated_inputs` lists every \\gentable, \\genfigure and \\input of a results/ file.
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
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath

import pandas as pd

from ncn.analysis.macros import (NA, Macros, Numbers, finite, fmt_bytes, fmt_cfg, fmt_duration, fmt_fixed,
                                 fmt_human, fmt_int, fmt_list, fmt_pct, fmt_sig, macro_name, row, tex_escape,
                                 tex_path)
from ncn.analysis.options import skip_grid
from ncn.errors import NCNError
from ncn.fileio import read_json, write_bytes, write_text
from ncn.variants import PRIMARY, baseline, names

VARIANTS = names()  # the registry's order, for every per-variant macro and table column

PACKAGES = ("torch", "snakemake", "mlflow", "tokenizers", "datasets", "numpy", "pandas", "scipy")
# The original work's own reported scale (its README): an 18M-parameter model trained for one
# epoch of TinyStories (~520M GPT-2 tokens). Used only to state our scale relative to it.
ORIGINAL_PARAMS = 18e6
ORIGINAL_TOKENS = 520e6
LISTING_WIDTH = 96  # characters per line of the \footnotesize config listing on the page
# train.lr_schedule in words (train.lr_at).
LR_SCHEDULE_WORDS = {
    "nanogpt": r"a linear warm-up to the peak ($\mathrm{lr}\cdot(i+1)/(w+1)$ at iteration $i$ of $w$), then a "
               r"cosine that would reach its floor one step after the last",
    "original": r"a linear warm-up from zero ($\mathrm{lr}\cdot i/w$), then a cosine that reaches its floor at "
                r"the last step, as the original",
}
# The original's recipe (its code and README), for the fidelity table's "original" column.
ORIGINAL_RECIPE = {
    "OrigDModel": 256, "OrigLayers": 6, "OrigHeads": 8, "OrigDff": 1024, "OrigContext": 512, "OrigVocab": 50257,
    "OrigDropout": 0.1, "OrigLR": 6e-4, "OrigMinLR": 0.0, "OrigWarmup": 100, "OrigTokensPerStep": 32768,
    "OrigBetaOne": 0.9, "OrigBetaTwo": 0.999, "OrigWeightDecay": 0.1, "OrigEpochs": 1,
    "OrigHeldoutPct": 5,
}
# The model-side fidelity options (config `model.<key>`, ncn.model's docstring), by the macro that
# prints this profile's value in words; the value that restores the original's behaviour says so.
FIDELITY_OPTIONS = {"OptDropoutLayout": "dropout_layout", "OptNcnAfterDropout": "ncn_after_dropout",
                    "OptPoolBias": "pool_bias"}
FIDELITY_WORDS = {
    "dropout_layout": {"single": "embeddings, attention probabilities, attention output once, FFN output",
                       "original": "as the original (\texttt{original})"},
    "ncn_after_dropout": {False: "before embedding dropout", True: "after embedding dropout, as the original"},
    "pool_bias": {False: "none", True: "on value and output projections, zero at init, as the original"},
}


# ------------------------------------------------------------------------------------------------
# the generated files the paper uses, from its own source (as showyourwork does)

_GENERATED_USE = re.compile(r"\\(gentable|genfigure|input)\s*(?:\[[^\]]*\])?\s*\{([^}]*)\}")


def generated_inputs(paper_dir: str | os.PathLike = "paper", prefix: str = "results/",
                     results: str | None = None) -> list[str]:
    """Every file under `prefix` that paper/**/*.tex uses through \\gentable{}, \\genfigure{} or
    \\input{} (comments ignored), sorted: the paper rule's generated inputs. A use without a file
    extension gets TeX's ".tex" (\\input, \\gentable); a figure must name its extension. The tex
    names `results/...` (latexmk runs where results/ is the profile's folder); `results` maps
    that prefix onto the profile's folder, e.g. "results/smoke/"."""
    found = set()
    for tex in sorted(Path(paper_dir).rglob("*.tex")):
        body = re.sub(r"(?<!\\)%.*", "", tex.read_text(encoding="utf-8"))
        for command, arg in _GENERATED_USE.findall(body):
            arg = arg.strip()
            if not arg.startswith(prefix):
                continue
            if not Path(arg).suffix:
                if command == "genfigure":
                    raise NCNError(f"{tex}: \\genfigure{{{arg}}} names no file extension; write {arg}.pdf")
                arg += ".tex"
            found.add(arg if results is None else results + arg[len(prefix):])
    return sorted(found)


# ------------------------------------------------------------------------------------------------
# inputs: each read as its producer writes it (docs/architecture.md)


def _read_json(path) -> dict:
    """A JSON file, or {} when it is not given or does not exist (its macros then read n/a)."""
    if path is None or not Path(path).exists():
        return {}
    try:
        return read_json(path)
    except ValueError as e:
        raise NCNError(f"{path}: not valid JSON ({e})") from None


def load_runs(runs_csv, timing_csv) -> pd.DataFrame:
    """One row per finished, evaluated run: the analysis stage's runs table (`ncn analyze runs`)
    with its measured wall times joined back, so the paper and the tables see the same records."""
    from ncn.analysis.runs import LEAD
    from ncn.analysis.tables import read_table

    columns = [*LEAD, "heldout_loss", "epochs", "device", "batch_order_sha256", "wall_time_s", "tokens_per_s"]
    runs = read_table(runs_csv)
    if runs.empty:  # nothing trained yet: no rows, and the columns read below, so their macros read n/a
        return pd.DataFrame(columns=columns)
    timing = read_table(timing_csv)
    if not timing.empty:
        runs = runs.merge(timing, on=["variant", "size", "seed"], how="left")
    return runs.assign(**{c: math.nan for c in columns if c not in runs})


@dataclass
class Sources:
    """Everything `ncn paper numbers` reads: the config, the checkout, claims.json, the runs and
    the analysis tables by name (an empty frame when missing)."""

    cfg: dict
    repo: Path
    claims: dict
    runs: pd.DataFrame
    manifest: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)

    @cached_property
    def params(self) -> dict:
        return _size_params(self.cfg, self.meta.get("vocab_size"))

    @property
    def big(self) -> pd.DataFrame:
        """The runs at the largest size."""
        from ncn.analysis.runs import largest_size

        return self.runs[self.runs["size"] == largest_size(self.cfg)]

    def table(self, name: str) -> pd.DataFrame:
        return self.tables.get(name, pd.DataFrame())


# ------------------------------------------------------------------------------------------------
# provenance, environment, parameter counts


def git_info(cwd: Path) -> tuple[str, str]:
    """(short commit, "clean" | "modified"), or ("unknown", "unknown") outside a git checkout: the
    commit MLflow records too (ncn.provenance), shortened to 12 digits."""
    from ncn.provenance import UNKNOWN, git_commit, git_state

    commit = git_commit(cwd)
    return (commit[:12], git_state(cwd)) if commit != UNKNOWN else (UNKNOWN, UNKNOWN)


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


def public_path(path: str, folder: str | None = None) -> str:
    """A path as the paper prints it, never machine-local: a relative path or a name (a hub file,
    words) stays; an absolute one becomes relative to `folder`, led by that folder's name
    (/x/tinystories/train.txt -> tinystories/train.txt), else its own last two parts."""
    p = PurePosixPath(path)
    if not p.is_absolute():
        return str(path)
    if folder is not None and PurePosixPath(folder).is_absolute() and p.is_relative_to(folder):
        return str(PurePosixPath(PurePosixPath(folder).name) / p.relative_to(folder))
    return str(PurePosixPath(*p.parts[-2:])) if len(p.parts) > 2 else p.name


def local_folder(src: str | None) -> str | None:
    """The folder of a manifest.json "source" of kind local, else None."""
    kind, _, rest = (src or "").partition(":")
    return rest if kind == "local" else None


def describe_source(src: str | None) -> str:
    """manifest.json "source" in words: "local:/folder" (printed by the folder's name: the PDF
    holds no machine-local path) or "hub:name" (`ncn data fetch`)."""
    if src is None:
        return NA
    kind, _, rest = src.partition(":")
    if kind == "local":
        return rf"the local folder \texttt{{{tex_path(PurePosixPath(rest).name or rest)}}}"
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
# numbers.tex: SECTIONS, each a small function of the sources -> {group comment: {macro: value}}


def provenance(s: Sources) -> dict:
    from ncn import __version__

    cfg = s.cfg
    commit, state = git_info(s.repo)
    m = {"Profile": tex_escape(cfg["profile"]), "GitCommit": tex_escape(commit), "GitState": state,
         "VersionPython": platform.python_version(), "VersionNcn": __version__}
    m |= {macro_name("version", pkg): tex_escape(_version(pkg)) for pkg in PACKAGES}
    m |= {"HardwareCPU": tex_escape(cpu_model()), "HardwareCores": str(os.cpu_count() or NA),
          "HardwareGPU": gpu_name(), "TrainDevice": fmt_list(sorted(s.runs["device"].unique()), tex_escape)}
    configfile = f"config/{cfg['profile']}.yaml"
    cmd = "snakemake --cores all" + ("" if cfg["profile"] == "default" else f" --configfile {configfile}")
    m |= {"ReproCommand": tex_escape(cmd), "ConfigFile": tex_path(configfile)}
    return {"provenance and environment": m}


def data(s: Sources) -> dict:
    """The text files (manifest.json) and the tokens (meta.json)."""
    manifest, meta = s.manifest, s.meta
    m = {"DataSource": describe_source(manifest.get("source")),
         "DataValSplit": tex_escape(s.cfg["data"]["val_split"]).replace("\\_", " ")}
    for split in ("train", "valid"):
        S = split.capitalize()
        text, tokens = manifest.get(split, {}), meta.get(split, {})
        where = public_path(text["from"], local_folder(manifest.get("source"))) if text else None
        m[f"Data{S}From"] = rf"\texttt{{{tex_path(where)}}}" if text else NA
        m[f"Data{S}Sha"] = text["sha256"][:12] if text else NA
        # meta.json counts the story text that was tokenized (bytes: the denominator of bits-per-byte)
        m[f"Data{S}Bytes"] = fmt_int(tokens.get("bytes"))
        m[f"Data{S}Size"] = fmt_bytes(tokens.get("bytes"))
        m[f"Data{S}Tokens"] = fmt_int(tokens.get("tokens"))
        m[f"Data{S}TokensHuman"] = fmt_human(tokens.get("tokens"))
        m[f"Data{S}Stories"] = fmt_int(tokens.get("stories"))  # null for a separator-less stream: n/a
    held = meta.get("heldout", {})  # the A/B's set: the train excerpt's last stories, never trained on
    m |= {"DataHeldoutTokens": fmt_int(held.get("tokens")), "DataHeldoutStories": fmt_int(held.get("stories")),
          "DataHeldoutBytes": fmt_int(held.get("bytes")),
          "HeldoutFractionPct": fmt_cfg(round(100 * float(s.cfg["data"]["heldout_fraction"]), 6)) + r"\%"}
    m["TokenizerKind"] = {"bpe": "byte-level BPE", "gpt2": "GPT-2 BPE"}[s.cfg["tokenizer"]["kind"]]
    m["VocabSize"] = fmt_int(meta.get("vocab_size"))  # the trained tokenizer's, maybe short of the configured one
    m["TokenizerSha"] = meta["tokenizer_sha256"][:12] if meta else NA
    return {"data and tokenizer": m}


def _design_runs(s: Sources) -> dict:
    """The experiment's shape: variants, sizes, seeds, and how many runs finished."""
    from ncn.analysis.runs import largest_size, primary_ncn, sizes_by_scale
    from ncn.config import planned_runs

    cfg, runs = s.cfg, s.runs
    ref = primary_ncn(cfg)
    # Same data order: within a (size, seed) every variant must report the same batch-order hash.
    orders = runs.groupby(["size", "seed"])["batch_order_sha256"].nunique()
    return {
        "NumVariants": str(len(cfg["variants"])),
        "VariantList": ", ".join(rf"\texttt{{{tex_escape(v)}}}" for v in cfg["variants"]),
        "NumSizes": str(len(cfg["sizes"])),
        "SizesList": ", ".join(rf"\texttt{{{tex_escape(x)}}}" for x in sizes_by_scale(cfg)),
        **_seed_macros(cfg),
        "NumRuns": str(len(planned_runs(cfg))),
        "NumRunsFinished": str(len(runs)),  # every run in the table is finished and evaluated
        "BatchOrderIdentical": NA if orders.empty else "identical" if (orders == 1).all() else "not identical",
        "LargestSize": rf"\texttt{{{tex_escape(largest_size(cfg))}}}",
        "RefVariant": rf"\texttt{{{tex_escape(ref)}}}" if ref else NA,
        "BaselineReference": rf"\texttt{{{tex_escape(cfg['ncn_reference'])}}}",
    }


def _seed_range(seeds) -> str:
    """[0, 1, 2] -> "0--2"; [0, 2] -> "0, 2"."""
    seeds = sorted(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}--{seeds[-1]}"
    return fmt_list(seeds)


def _seed_macros(cfg: dict) -> dict:
    """NumSeeds ("3", or "3--5" when variant_seeds differ), SeedList (the default seeds) and
    SeedsByVariant (each variant with its seeds, in words)."""
    from ncn.config import seeds_of

    per = {v: seeds_of(cfg, v) for v in cfg["variants"]}
    counts = sorted({len(x) for x in per.values()})
    groups: dict[str, list[str]] = {}
    for v, seeds in per.items():
        groups.setdefault(_seed_range(seeds), []).append(rf"\texttt{{{tex_escape(v)}}}")
    by_variant = "; ".join(f"{', '.join(vs)}: seeds {rng}" for rng, vs in groups.items())
    return {"NumSeeds": str(counts[0]) if len(counts) == 1 else f"{counts[0]}--{counts[-1]}",
            "SeedList": _seed_range(cfg["seeds"]), "SeedsByVariant": by_variant}


def _design_budget(s: Sources) -> dict:
    """The token budget as configured and as trained (largest size), and the optimiser: the
    largest size's settings (train with that size's overrides of micro_batch, grad_accum, lr)."""
    from ncn.analysis.runs import largest_size
    from ncn.config import train_settings

    tr, big, largest = s.cfg["train"], s.big, largest_size(s.cfg)
    tc = train_settings(s.cfg, largest)
    sd = s.cfg["size_defs"][largest]
    return {
        "TokenBudget": fmt_int(tr["tokens"]), "TokenBudgetHuman": fmt_human(tr["tokens"]),
        "EpochBudget": fmt_cfg(tr["epochs"]) if tr["tokens"] is None else NA,
        "TokensTrained": fmt_int(big["tokens"].max()), "TokensTrainedHuman": fmt_human(big["tokens"].max()),
        "EpochsTrained": fmt_sig(big["epochs"].max()), "StepsTrained": fmt_int(big["steps"].max()),
        "TokensVsOriginal": fmt_pct(big["tokens"].max() / ORIGINAL_TOKENS, 2),
        "TokensPerStep": fmt_int(tc.micro_batch * tc.grad_accum * sd["block_size"]),
        "ContextLargest": fmt_int(sd["block_size"]),
        "LearningRate": fmt_cfg(tc.lr), "MinLearningRate": fmt_cfg(tc.min_lr),
        "WarmupSteps": fmt_int(tc.warmup_steps), "WeightDecay": fmt_cfg(tc.weight_decay),
        "MicroBatch": fmt_int(tc.micro_batch), "GradAccum": fmt_int(tc.grad_accum),
        "GradClip": fmt_cfg(tc.grad_clip), "AdamBetaOne": fmt_cfg(tc.beta1),
        "AdamBetaTwo": fmt_cfg(tc.beta2), "LrScheduleText": LR_SCHEDULE_WORDS[tc.lr_schedule],
        "DecayScope": "every parameter" if tc.decay_all else "matrices only (not norms, biases, embeddings, "
                                                               "signal offsets)",
    }


def _design_settings(s: Sources) -> dict:
    """The model's, evaluation's and analysis's configured values the prose quotes."""
    m, ev, an = s.cfg["model"], s.cfg["eval"], s.cfg["analysis"]
    return {
        "Dropout": fmt_cfg(m["dropout"]), "RegLambda": fmt_cfg(m["reg_lambda"]),
        "NcnHidden": fmt_int(m["ncn_hidden"]), "NcnHeads": fmt_int(m["ncn_heads"]),
        "GateInit": fmt_cfg(m["gate_init"]), "BetaMax": fmt_cfg(m["beta_max"]),
        "EvalMaxTokens": fmt_int(ev["max_tokens"]) if ev["max_tokens"] else "all",
        "ConfidencePct": fmt_cfg(round(100 * float(an["confidence"]), 4)) + r"\%",
        "PPLThreshold": fmt_cfg(an["ppl_threshold"]),
        "GainBandLow": fmt_cfg(an["gain_band"][0]), "GainBandHigh": fmt_cfg(an["gain_band"][1]),
        "GateEpsList": fmt_list(an["gate_eps"], fmt_cfg), "SkipEpsList": fmt_list(skip_grid(an), fmt_cfg),
    }


def design(s: Sources) -> dict:
    return {"design": {**_design_runs(s), **_design_budget(s), **_design_settings(s)}}


def parameter_counts(s: Sources) -> dict:
    """Per size and variant, from the config and the vocabulary (the runs' counts must agree): every
    variant is matched to the reference NCN's count by its d_ff (config.model_config)."""
    from ncn.analysis.runs import largest_size, primary_ncn

    params, largest = s.params, largest_size(s.cfg)
    m = Macros()
    for size in s.cfg["sizes"]:
        for variant in VARIANTS:
            p = params.get(size, {}).get(variant)
            m[macro_name("size", size, "params", variant)] = fmt_int(p[0]) if p else NA
    pl = params.get(largest, {})
    for variant in VARIANTS:
        m[macro_name("params", variant, "largest")] = fmt_int(pl[variant][0]) if pl else NA
        m[macro_name("params", variant, "largest", "human")] = fmt_human(pl[variant][0]) if pl else NA
        m[macro_name("dff", variant, "largest")] = fmt_int(pl[variant][1]) if pl else NA
    m["DffBaselineLargest"] = fmt_int(pl[baseline()][1]) if pl else NA
    m["DffLargest"] = fmt_int(s.cfg["size_defs"][largest]["d_ff"])
    m["ParamsVsOriginal"] = fmt_sig(pl[primary_ncn(s.cfg) or PRIMARY][0] / ORIGINAL_PARAMS, 2) if pl else NA
    ref = s.cfg["ncn_reference"]
    dev = [abs(p[0] - by[ref][0]) / by[ref][0] for by in params.values() for p in by.values()]
    m["ParamsMaxDeviation"] = fmt_pct(max(dev), 2) if dev else NA  # over every size and variant
    return {"parameter counts (per size; Largest = the largest size)": m}


def fidelity(s: Sources) -> dict:
    """The fidelity table's "original" column (ORIGINAL_RECIPE) and the model-side options of this
    profile (n/a where the option is not in this build's schema)."""
    m = {name: fmt_cfg(v) for name, v in ORIGINAL_RECIPE.items()}
    model = s.cfg["model"]
    for name, key in FIDELITY_OPTIONS.items():
        v = model.get(key)
        m[name] = NA if v is None else FIDELITY_WORDS[key].get(v, tex_escape(str(v).lower()))
    return {"fidelity: the original's recipe and this profile's model-side options": m}


def wall_time(s: Sources) -> dict:
    wall = s.runs["wall_time_s"].sum(min_count=1)  # NaN, not 0, without runs
    big = s.big
    return {"training wall time (sum over runs; differs between reruns)": {
        "WallTimeTotal": fmt_duration(wall), "WallTimeTotalSeconds": fmt_int(wall),
        "TokensPerSecondBaselineLargest": fmt_int(big.loc[big["variant"] == baseline(), "tokens_per_s"].mean()),
    }}


def _analysis_numbers(s: Sources) -> dict:
    """The macros each analysis module writes over its own output (its `numbers(table, cfg)`)."""
    from ncn.analysis import ab, leak

    return {**ab.numbers(s.table("ab"), s.cfg), **leak.numbers(s.table("leak"), s.cfg)}


def _claims_numbers(s: Sources) -> dict:
    from ncn.analysis import claims

    return claims.numbers(s.claims, s.cfg)


def _skip_numbers(s: Sources) -> dict:
    from ncn.analysis import skip

    return skip.numbers(s.table("skip"), s.cfg, s.table("skip_timing"))


# numbers.tex, in this order. A new section: a function here, or an analysis module's `numbers`.
SECTIONS = (provenance, data, design, parameter_counts, fidelity, _analysis_numbers, wall_time, _claims_numbers,
            _skip_numbers)


def build_numbers(s: Sources) -> Numbers:
    """Every macro the paper quotes."""
    n = Numbers()
    for section in SECTIONS:
        n.extend(section(s))
    return n


def sizes_table(cfg: dict, params: dict) -> str:
    """A booktabs tabular of the sizes: shape, then per variant its matched d_ff and total
    parameters (every variant matched to the ncn_reference's count)."""
    from ncn.analysis.runs import sizes_by_scale

    rows = []
    for size in sizes_by_scale(cfg):
        sd = cfg["size_defs"][size]
        p = params.get(size, {})
        cells = [rf"\texttt{{{tex_escape(size)}}}", str(sd["d_model"]), str(sd["n_layer"]), str(sd["n_head"]),
                 str(sd["block_size"])]
        cells += [fmt_int(p[v][1]) if p else NA for v in VARIANTS]
        cells += [fmt_int(p[v][0]) if p else NA for v in VARIANTS]
        rows.append(" & ".join(cells) + r" \\")
    nv = len(VARIANTS)  # 5 shape columns, then d_ff and the parameter count per registered variant
    names_row = " & ".join(rf"\texttt{{{tex_escape(v)}}}" for v in VARIANTS)
    head = rf"size & $d_\mathrm{{model}}$ & layers & heads & context & {names_row} & {names_row} \\"
    return "\n".join([
        "% Generated by `ncn paper numbers` from the resolved config. Parameter counts include embeddings.",
        rf"\begin{{tabular}}{{l{'r' * (4 + 2 * nv)}}}", r"\toprule",
        rf" & \multicolumn{{4}}{{c}}{{shape}} & \multicolumn{{{nv}}}{{c}}{{$d_\mathrm{{ff}}$}}"
        rf" & \multicolumn{{{nv}}}{{c}}{{parameters}} \\",
        rf"\cmidrule(lr){{2-5}}\cmidrule(lr){{6-{5 + nv}}}\cmidrule(lr){{{6 + nv}-{5 + 2 * nv}}}", head,
        r"\midrule", *rows, r"\bottomrule", r"\end{tabular}", ""])


def runs_table(cfg: dict, runs: pd.DataFrame) -> str:
    """A booktabs tabular of every configured run (missing ones say n/a): size, seed, its exact
    parameter count, metrics on both evaluation sets."""
    from ncn.analysis.runs import sizes_by_scale
    from ncn.config import seeds_of

    rows = []
    for v in cfg["variants"]:
        for size in sizes_by_scale(cfg):
            for seed in seeds_of(cfg, v):
                r = row(runs, variant=v, size=size, seed=seed)
                rows.append(" & ".join([
                    rf"\texttt{{{tex_escape(v)}}}", rf"\texttt{{{tex_escape(size)}}}", str(seed),
                    fmt_int(r.get("n_params")), fmt_int(r.get("tokens")), fmt_int(r.get("steps")),
                    fmt_fixed(r.get("final_ce"), 3), fmt_fixed(r.get("heldout_loss"), 3),
                    fmt_fixed(r.get("val_loss"), 3), fmt_fixed(r.get("val_ppl"), 2),
                    fmt_fixed(r.get("val_bpb"), 3), fmt_duration(r.get("wall_time_s"))]) + r" \\")
        rows.append(r"\midrule")
    rows.pop()  # no rule after the last variant
    head = (r"variant & size & seed & parameters & tokens & steps & train CE & held-out loss & val loss & "
            r"val PPL & val bpb & wall time \\")
    # a longtable: a profile has dozens of runs, more than a page holds (the caption lives here)
    return "\n".join([
        "% Generated by `ncn paper numbers` from results/runs/*/*/seed*/{metrics,eval}.json.",
        r"\begin{longtable}{lllrrrrrrrrr}", RUNS_CAPTION + r"\label{tab:runs}\\", r"\toprule", head, r"\midrule",
        r"\endfirsthead", r"\toprule", head, r"\midrule", r"\endhead", r"\bottomrule", r"\endlastfoot", *rows,
        r"\end{longtable}", ""])


RUNS_CAPTION = (r"\caption{Every run: parameters, tokens and optimiser steps, the final training cross-entropy, the "
                r"held-out and validation loss, the validation perplexity and bits per byte, and the training wall time.}")


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
    from ncn.analysis.tables import read_table
    from ncn.config import load_config

    if not Path(a.claims).exists():
        raise NCNError(f"{a.claims} not found: the paper reports the claims' verdicts; run 'ncn analyze claims' "
                       "(or 'snakemake --cores all') first")
    cfg = load_config(a.config, stage="paper.numbers")
    tables = {name: read_table(getattr(a, name)) for name in ("ab", "leak", "skip", "skip_timing")}
    s = Sources(cfg, Path(a.repo), _read_json(a.claims), load_runs(a.runs, a.runs_timing),
                _read_json(a.manifest), _read_json(a.meta), tables)
    numbers = build_numbers(s)
    header = ("Generated by `ncn paper numbers` from results/ -- do not edit; rebuild with\n"
              "snakemake --cores all --forcerun paper_numbers. Values the text quotes: each macro is one number.")
    write_text(a.out, numbers.render(header))
    write_text(a.sizes_table, sizes_table(cfg, s.params))
    write_text(a.config_listing, config_listing(Path(a.config)))
    write_text(a.runs_table, runs_table(cfg, s.runs))
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
CLAIMS_TABLE_HEADING = "Claims tested, each with its origin and a measured verdict"


def pdf_numbers(text: str) -> list[float]:
    """Every number in a PDF's text, those printed as m x 10^e (the claims table's tiny and huge
    values, "1.23 × 10−5" in pdftotext's words) also as their value."""
    numbers = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]
    sci = re.findall(r"(-?\d+(?:\.\d+)?)\s*\u00d7\s*10\s*(-?\d+)", text)
    return numbers + [float(m) * 10.0 ** int(e) for m, e in sci]


def verify_pdf(pdf: str | os.PathLike, claims_path: str | os.PathLike) -> list[str]:
    """Problems with a built PDF: the claims table heading must be in its text, and so must the
    value of every claim that has one (to the 3 significant digits the paper prints)."""
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    text = re.sub(r"\s+", " ", text).replace("\u2212", "-")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # thousands separators
    problems = [] if CLAIMS_TABLE_HEADING in text else [f"'{CLAIMS_TABLE_HEADING}' not in {pdf}"]
    numbers = pdf_numbers(text)
    for c in read_json(claims_path)["claims"]:
        v = c.get("value")
        if not finite(v) or float(v) == 0:
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


def _add_numbers(sub) -> None:
    q = sub.add_parser("numbers", help="analysis outputs -> numbers.tex (+ sizes_table, runs_table, config_listing)",
                       description="Write one \\newcommand per number the paper quotes. Missing optional "
                       "inputs give 'n/a'; a missing claims JSON is an error.")
    q.add_argument("--config", required=True, help="the resolved config (results/config.json) or a YAML profile")
    q.add_argument("--claims", required=True, help="results/claims.json ('ncn analyze claims')")
    inputs = {"runs": "the runs table ('ncn analyze runs')", "runs-timing": "its measured wall times",
              "ab": "the A/B table CSV ('ncn analyze ab')", "leak": "the leak table CSV ('ncn analyze leak')",
              "skip": "the block-skipping table CSV ('ncn analyze skip')",
              "skip-timing": "its measured wall times", "manifest": "the data's manifest.json ('ncn data fetch')",
              "meta": "the tokenized data's meta.json ('ncn data tokenize')"}
    for name, what in inputs.items():
        q.add_argument(f"--{name}", help=f"{what}; missing: its macros read n/a")
    q.add_argument("--out", required=True, help="numbers.tex to write, e.g. results/paper/numbers.tex")
    q.add_argument("--sizes-table", required=True, help="the sizes table to write (a booktabs tabular)")
    q.add_argument("--config-listing", required=True, help="the verbatim config listing to write")
    q.add_argument("--runs-table", required=True, help="the table of every run to write (a booktabs tabular)")
    q.add_argument("--repo", default=".", help="git checkout whose commit the paper reports (default: .)")


def _add_build(sub) -> None:
    q = sub.add_parser("build", help="latexmk paper/ncn.tex into results/paper/build and copy the PDF",
                       description="Run latexmk (pdflatex + bibtex) from --root, fail on undefined "
                       "references or citations, and copy the PDF to --out.")
    q.add_argument("--root", default=".", help="folder holding paper/ and results/ (default: .)")
    q.add_argument("--tex", default="paper/ncn.tex", help="main file, relative to --root")
    q.add_argument("--build-dir", default="results/paper/build", help="latexmk -outdir, relative to --root")
    q.add_argument("--out", default="results/paper/ncn.pdf", help="the PDF, relative to --root")
    q.add_argument("--max-overfull-pt", type=float, default=None,
                   help="also fail on an overfull box wider than this (default: only warn)")


def _add_check(sub) -> None:
    q = sub.add_parser("check", help="fail if a LaTeX log has undefined references or citations")
    q.add_argument("--log", required=True, help="the .log file of a LaTeX run")
    q.add_argument("--max-overfull-pt", type=float, default=None, help="also fail on wider overfull boxes")


# subcommand -> (add its arguments, run it)
SUBCOMMANDS = {"numbers": (_add_numbers, cmd_numbers), "build": (_add_build, cmd_build),
               "check": (_add_check, cmd_check)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="ncn paper",
        description="The generated half of the LaTeX paper (paper/ncn.tex): numbers.tex with one \\newcommand "
        "per number the prose quotes, the setup table, the config listing; and the PDF build.",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for add, _ in SUBCOMMANDS.values():
        add(sub)
    a = p.parse_args(argv)
    return SUBCOMMANDS[a.cmd][1](a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
