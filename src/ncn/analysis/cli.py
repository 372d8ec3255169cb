"""`ncn analyze <what>`: tables, figures and claims from finished runs.

Each analysis is one module with `add_arguments(parser)` and `main(args, cfg)` (cfg: the loaded
--config, None for a command without one), registered in ANALYSES below. Output paths are
options that the rule fills from its outputs; no module spells an output name.

Typical order (what workflow/rules/analysis.smk runs):
  ncn analyze runs      --runs RUN... --out results/tables/runs.csv --timing results/timing/runs.csv
  ncn analyze trace     --run RUN --config C --data D --out results/traces/V_S_seedN.csv
  ncn analyze ab        --runs-table T --config C --csv ab.csv --tex ab.tex --pdf F.pdf --png F.png
  ncn analyze scaling   --runs-table T --config C --csv ... --tex ... --pdf ... --png ...
  ncn analyze leakprobe --run RUN... --config C --data D --csv results/tables/leak_measure.csv
  ncn analyze leak      --runs-table T --measure results/tables/leak_measure.csv --config C --csv ... --tex ...
  ncn analyze brainscan --traces CSV... --config C --pdf ... --png ... --dev-pdf ... --dev-png ...
  ncn analyze skip      --run RUN... --config C --data D --csv ... --measure ... --timing ... --tex ... --pdf ... --png ...
  ncn analyze kvcache   --run RUN... --config C --data D --csv ... --summary ... --tex ... --pdf ... --png ...
  ncn analyze knobs     --run RUN... --config C --data D --csv ... --summary ... --tex ... --pdf ... --png ...
  ncn analyze control   --run RUN... --config C --data D --runs-csv ... --csv ... --tex ... --pdf ... --png ...
  ncn analyze rows      skip|kvcache|knobs --run RUN --config C --data D --out RUN/analysis/skip.csv
                        (one run's rows; skip, kvcache and knobs then take --rows CSV... instead of --run)
  ncn analyze regonly   --run RUN... --config C --data D --csv results/tables/regonly.csv
  ncn analyze claims    --runs-table T --traces CSV... [--leak-measure CSV --skip-measure CSV --regonly CSV]
                        --config C --data D [--control CSV] --json ... --tex ... --paragraphs ...
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
    "leakprobe": ("ncn.analysis.leakprobe", "per run: max |dlogit| at positions <= t when the tokens after t "
                  "change (structural leak), loss with the true vs another window's future, prefix-pool mismatch"),
    "leak": ("ncn.analysis.leak", "the leak table per size: structural max |dlogit|, the benefit of the true "
             "future (t-CI over seeds) and the prefix-pool mismatch, named apart"),
    "brainscan": ("ncn.analysis.brainscan", "heatmaps (layers x tokens) of the signals with fixed shared "
                  "colour limits + deviation from init"),
    "skip": ("ncn.analysis.skip", "block skipping: skip a token's FFN where gamma < eps; loss, skipped "
             "fraction, wall time, and skipping as many (token, layer) FFN evaluations at random"),
    "regonly": ("ncn.analysis.regonly", "homeostasis control: the controller trained on the regulariser "
                "alone from the same init; per-token signal variance vs the trained model's"),
    "kvcache": ("ncn.analysis.kvcache", "KV-cache compression: held-out loss of int8/int4/fp16 caches, uniform vs "
                "beta-guided vs oracle vs random bits per layer at equal memory"),
    "knobs": ("ncn.analysis.knobs", "beta scale knobs (global, per layer) vs next-token entropy, held-out loss and "
              "the distinct-2/3 and repetition of samples; the baseline's queries alike"),
    "control": ("ncn.analysis.control", "external control: held-out loss with the true vs flipped story label, "
                "and stories with dialogue sampled under dialogue=1/0/a random label"),
    "rows": ("ncn.analysis.rows", "one run's measurement rows of skip, kvcache or knobs (the workflow's per-run "
             "jobs; the analysis then reads them with --rows)"),
    "claims": ("ncn.analysis.claims", "one measured verdict per claim: claims.json, a LaTeX table and one "
               "paragraph per claim"),
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
    mod = importlib.import_module(ANALYSES[a.what][0])
    cfg = None
    if getattr(a, "config", None):
        from ncn.config import load_config

        # the config slice it reads (ncn.stages.READS): its own, or the one its module names
        stage = mod.stage(a) if hasattr(mod, "stage") else f"analyze.{a.what}"
        cfg = load_config(a.config, stage=stage)
    return int(mod.main(a, cfg) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
