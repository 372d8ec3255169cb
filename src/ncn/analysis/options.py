"""Command-line options shared by the analyses, and the writing of the figures they name.

Every analysis module is a command (`ncn analyze <what>`, registered in analysis/cli.py) with
`add_arguments(parser)` and `main(args, cfg)`. Output paths are options the rule fills from its
outputs (`--csv {output.csv} --tex {output.tex} --pdf {output.pdf} --png {output.png}`): no
module spells an output file name.
"""

from __future__ import annotations

import os
from pathlib import Path

from ncn.errors import NCNError


def add_config(p) -> None:
    p.add_argument("--config", required=True, help="the resolved config (results/config.json) or a profile YAML")


def add_runs_table(p) -> None:
    p.add_argument("--runs-table", required=True,
                   help="the table written by 'ncn analyze runs' (results/tables/runs.csv); its run_dir "
                        "column locates each run's train_log.csv")


def add_data(p) -> None:
    p.add_argument("--data", required=True,
                   help="tokenized data folder (results/data): meta.json, valid.bin, tokenizer.json")


def add_table(p, csv: bool = True) -> None:
    """--csv (the deterministic table) and --tex (its booktabs tabular for the paper)."""
    if csv:
        p.add_argument("--csv", required=True, help="output table CSV (byte-identical on rerun)")
    p.add_argument("--tex", required=True, help="output booktabs tabular that the paper \\gentable's")


def add_figure(p, name: str = "", what: str = "the figure") -> None:
    """--[name-]pdf and --[name-]png: the two files of one figure."""
    for ext in ("pdf", "png"):
        p.add_argument(f"--{name}{'-' if name else ''}{ext}", required=True, help=f"{what} as {ext.upper()}")


def save_figure(fig, pdf, png, tight: bool = True) -> None:
    """Write `fig` to the two paths the rule named (plots.save writes a deterministic PDF and
    PNG of one stem; the PNG is moved when the rule names another)."""
    from ncn.analysis import plots

    if Path(pdf).suffix != ".pdf" or Path(png).suffix != ".png":
        raise NCNError(f"figure outputs must end in .pdf and .png (got {pdf}, {png}); fix the rule's output names")
    _, written = plots.save(fig, pdf, tight=tight)
    if Path(png).resolve() != Path(written).resolve():
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        os.replace(written, png)


def skip_grid(a: dict) -> list[float]:
    """The ε grid measured: analysis.skip_eps with 0 (the reference) and max(analysis.gate_eps) (the
    γ-gate claim's functional leg reads that ε) always added, ascending."""
    return sorted({float(e) for e in a["skip_eps"]} | {0.0, float(max(a["gate_eps"]))})
