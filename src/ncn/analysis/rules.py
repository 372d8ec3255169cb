"""Helpers for workflow/rules/analysis.smk, kept here so the rule file holds only rules
(`snakemake --lint` asks for that) and so they can be tested. No torch imports."""

from __future__ import annotations

from ncn.analysis.runs import largest_size, ncn_variants, primary_ncn
from ncn.variants import control_names, spec

__all__ = ["claim_variants", "control_runs", "largest_size", "primary_ncn", "trace_files"]


def claim_variants(config: dict) -> list[str]:
    """The variants the claims read traces and train logs of: "the NCN" and the one(s) whose
    pool sees the future (asrun)."""
    ncn = ncn_variants(config)
    return list(dict.fromkeys([v for v in [primary_ncn(config)] if v] + [v for v in ncn if spec(v).sees_future]))


def control_runs(config: dict) -> list[tuple[str, str, int]]:
    """(variant, size, seed) of every run of a variant with control (ncn.variants.control_names) at
    control.sizes (absent or null: every size in `sizes`) on every seed, in that order. Works on a
    raw profile too (defaults not filled)."""
    sizes = (config.get("control") or {}).get("sizes")
    sizes = config["sizes"] if sizes is None else sizes
    return [(v, s, n) for v in control_names() for s in sizes for n in config["seeds"]]


def trace_files(pattern: str, variants, size: str, seeds) -> list[str]:
    """The trace CSVs of `variants` at `size`, every seed, in (variant, seed) order; `pattern`
    holds {variant}, {size} and {seed}. `seeds`: a list, or a function variant -> its seeds
    (variant_seeds may give variants different seeds)."""
    of = seeds if callable(seeds) else (lambda v: seeds)
    return [pattern.format(variant=v, size=size, seed=n) for v in variants for n in of(v)]


def static_variants(config: dict) -> list[str]:
    """The configured context-free variants (learned constants, no controller): their signals
    cannot vary per token, the zero the homeostasis claim judges activity against."""
    return [v for v in config["variants"] if spec(v).static]


CLAIM_MEASURES = ("leak_measure", "skip_measure", "regonly", "kvcache", "knobs")


def claim_measure_options(input) -> str:
    """The claims rule's measurement inputs as `ncn analyze claims` options (--leak-measure CSV,
    --skip-measure CSV, --regonly CSV, --kvcache CSV, --knobs CSV); none for an input that is not
    there (no NCN variant: no skip table)."""
    return " ".join(f"--{k.replace('_', '-')} {getattr(input, k)}" for k in CLAIM_MEASURES
                    if getattr(input, k, None))
