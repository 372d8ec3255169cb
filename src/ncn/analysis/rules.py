"""Helpers for workflow/rules/analysis.smk, kept here so the rule file holds only rules
(`snakemake --lint` asks for that) and so they can be tested. No torch imports."""

from __future__ import annotations

import json

from ncn.analysis.runs import largest_size, ncn_variants, primary_ncn
from ncn.variants import spec

__all__ = ["params_key", "claim_variants", "largest_size", "primary_ncn", "trace_files", "TRACE_KEYS"]

# The analysis.* settings that decide which sentences a trace holds (the trace, the
# regulariser-only control and the claims that read them all depend on them).
TRACE_KEYS = ("trace_sentences", "n_valid_sentences", "control_sentences", "control_leadins",
              "pair_sentences", "probe_word")


def params_key(config: dict, *analysis_keys: str, top=()) -> str:
    """A stable string of the named analysis.* values and top-level sections: a rule's
    `params: cfg=` rerun trigger, so only a change to what the command reads reruns it."""
    a = config["analysis"]
    return json.dumps({"analysis": {k: a[k] for k in analysis_keys}, **{k: config.get(k) for k in top}},
                      sort_keys=True)


def claim_variants(config: dict) -> list[str]:
    """The variants the claims read traces and train logs of: "the NCN" and the one(s) whose
    pool sees the future (asrun)."""
    ncn = ncn_variants(config)
    return list(dict.fromkeys([v for v in [primary_ncn(config)] if v] + [v for v in ncn if spec(v).sees_future]))


def trace_files(pattern: str, variants, size: str, seeds) -> list[str]:
    """The trace CSVs of `variants` at `size`, every seed, in (variant, seed) order; `pattern`
    holds {variant}, {size} and {seed}."""
    return [pattern.format(variant=v, size=size, seed=n) for v in variants for n in seeds]
