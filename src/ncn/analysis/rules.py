"""Helpers for workflow/rules/analysis.smk, kept here so the rule file holds only rules
(`snakemake --lint` asks for that) and so they can be tested. No torch imports."""

from __future__ import annotations

import json

from ncn.analysis.runs import largest_size, ncn_variants, primary_ncn
from ncn.variants import spec

__all__ = ["params_key", "trace_seed", "claim_variants", "largest_size", "primary_ncn"]


def params_key(config: dict, *analysis_keys: str, top=()) -> str:
    """A stable string of the named analysis.* values and top-level sections: a rule's
    `params: cfg=` rerun trigger, so only a change to what the command reads reruns it."""
    a = config["analysis"]
    return json.dumps({"analysis": {k: a[k] for k in analysis_keys}, **{k: config.get(k) for k in top}},
                      sort_keys=True)


def trace_seed(config: dict) -> int:
    """analysis.trace_seed when every variant is trained on it, else the smallest such seed
    (variant_seeds may give variants different seeds; one seed is traced for all)."""
    from ncn.config import seeds_of
    from ncn.errors import NCNError

    common = set.intersection(*(set(seeds_of(config, v)) for v in config["variants"]))
    if not common:
        raise NCNError("no seed is trained for every variant (seeds, variant_seeds): the traces and the "
                       "block-skipping table need one; give the variants a seed in common")
    seed = config["analysis"]["trace_seed"]
    return seed if seed in common else min(common)


def claim_variants(config: dict) -> list[str]:
    """The variants the claims read traces and train logs of: "the NCN" and the one(s) whose
    pool sees the future (asrun)."""
    ncn = ncn_variants(config)
    return list(dict.fromkeys([v for v in [primary_ncn(config)] if v] + [v for v in ncn if spec(v).sees_future]))
