"""`ncn analyze <what>`: tables, figures and claims from finished runs.

Each analysis is one module with `add_arguments(parser)` and `main(args, cfg)` (cfg: the loaded
--config, None for a command without one), registered in ANALYSES below. Output paths are
options that the rule fills from its outputs; no module spells an output name.

Typical order (what workflow/rules/analysis.smk runs):
  ncn analyze runs      --runs RUN... --out results/tables/runs.csv --timing results/timing/runs.csv
  ncn analyze trace     --run RUN --config C --data D --out results/traces/V_S.csv
  ncn analyze ab        --runs-table T --config C --csv ab.csv --tex ab.tex --pdf F.pdf --png F.png
  ncn analyze scaling   --runs-table T --config C --csv ... --tex ... --pdf ... --png ...
  ncn analyze leak      --runs-table T --config C --csv ... --tex ...
  ncn analyze brainscan --traces CSV... --config C --pdf ... --png ... --dev-pdf ... --dev-png ...
  ncn analyze skip      --run RUN... --config C --data D --csv ... --timing ... --tex ... --pdf ... --png ...
  ncn analyze kvcache   --run RUN... --config C --data D --csv ... --summary ... --tex ... --pdf ... --png ...
  ncn analyze knobs     --run RUN... --config C --data D --csv ... --summary ... --tex ... --pdf ... --png ...
  ncn analyze claims    --runs-table T --traces CSV... --config C --data D --json results/claims.json --tex ...
"""

from __future__ import annotations

import argparse
import importlib
import sys

# what -> (module, one-line help), in pipeline order.
ANALYSES: dict[str, tuple[str, str]] = {
    "runs": ("ncn.analysis.collect", "collect metrics.json + eval.json of runs into one CSV (one row per run)"),
    "trace": ("ncn.analysis.trace",
              "g, beta, gamma per layer per token and token surprisal of one run on fixed sentences"),
    "ab": ("ncn.analysis.ab", "A/B of every variant vs the iso-parameter baseline per size (mean and t-CI "
           "over seeds, paired dPPL) + loss curves"),
    "scaling": ("ncn.analysis.scaling", "validation loss vs parameters per variant, fitted power laws, "
                "NCN-baseline gap"),
    "leak": ("ncn.analysis.leak", "asrun's future-token leak: loss with full vs prefix-only pooling"),
    "brainscan": ("ncn.analysis.brainscan", "heatmaps (layers x tokens) of the signals with fixed shared "
                  "colour limits + deviation from init"),
    "skip": ("ncn.analysis.skip", "block skipping: skip a token's FFN where gamma < eps; loss, skipped "
             "fraction, wall time"),
    "kvcache": ("ncn.analysis.kvcache", "KV-cache compression: held-out loss of int8/int4/fp16 caches, uniform vs "
                "beta-guided vs oracle vs random bits per layer at equal memory"),
    "knobs": ("ncn.analysis.knobs", "beta scale knobs (global, per layer) vs next-token entropy, held-out loss and "
              "the distinct-2/3 and repetition of samples; the baseline's queries alike"),
    "claims": ("ncn.analysis.claims", "one measured verdict per claim: claims.json + a LaTeX table"),
}


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `ncn analyze` parser; with `only`, just that command's module is imported (the others
    keep their help line), so a job does not pay for importing every analysis."""
    p = argparse.ArgumentParser(
        prog="ncn analyze",
        description="Turn finished runs into tables (results/tables/*.csv|tex), figures "
        "(results/figures/*.pdf|png), per-token traces (results/traces/) and claim verdicts "
        "(results/claims.json). Every table CSV and JSON output is byte-identical on rerun "
        "(measured wall times go to results/timing/).",
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="what", required=True, metavar="what")
    for name, (module, help_) in ANALYSES.items():
        q = sub.add_parser(name, help=help_, description=help_)
        if only in (None, name):
            importlib.import_module(module).add_arguments(q)
    return p


def main(argv: list[str]) -> int:
    only = argv[0] if argv and argv[0] in ANALYSES else None
    a = parser(only).parse_args(argv)
    cfg = None
    if getattr(a, "config", None):
        from ncn.config import load_config

        cfg = load_config(a.config, stage=f"analyze.{a.what}")
    return int(importlib.import_module(ANALYSES[a.what][0]).main(a, cfg) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
