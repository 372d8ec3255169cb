"""Helpers for workflow/rules/analysis.smk, kept here so the rule file holds only rules
(`snakemake --lint` asks for that) and so they can be tested. No torch imports."""

from __future__ import annotations

from ncn.analysis.runs import largest_size, ncn_variants, primary_ncn
from ncn.variants import spec

__all__ = ["trace_seed", "claim_variants", "largest_size", "primary_ncn"]


def trace_seed(config: dict) -> int:
    """analysis.trace_seed when that seed is trained, else the smallest trained seed."""
    seed = config["analysis"]["trace_seed"]
    return seed if seed in config["seeds"] else min(config["seeds"])


def claim_variants(config: dict) -> list[str]:
    """The variants the claims read traces and train logs of: "the NCN" and the one(s) whose
    pool sees the future (asrun)."""
    ncn = ncn_variants(config)
    return list(dict.fromkeys([v for v in [primary_ncn(config)] if v] + [v for v in ncn if spec(v).sees_future]))
