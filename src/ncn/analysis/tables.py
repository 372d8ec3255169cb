"""Deterministic CSV and booktabs LaTeX writers.

CSV: fixed column order, "\\n" line endings, floats with a fixed format, written atomically,
so a rerun on the same inputs is byte-identical. LaTeX: a bare `tabular` (booktabs rules, no
float wrapper) that the paper `\\input`s inside its own table environment.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import pandas as pd

from ncn.fileio import atomic_path, write_text

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def write_csv(df: pd.DataFrame, path: str | os.PathLike, float_format: str | None = "%.10g") -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n", na_rep="")


def read_table(path: str | os.PathLike | None) -> pd.DataFrame:
    """A table CSV as written by write_csv, names (variant, size) kept as text (a size named "1"
    is still a name); an empty frame when the path is not given or not there (its macros read n/a)."""
    if path is None or not os.path.exists(path):
        return pd.DataFrame()
    return pd.read_csv(path, dtype={"variant": str, "size": str})


def escape(text) -> str:
    """Escape LaTeX special characters in plain text."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def is_missing(x) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x)) or (x is pd.NA)


def num(x, digits: int = 3) -> str:
    """A number in math mode with fixed decimals; missing → an en dash."""
    if is_missing(x):
        return "--"
    return f"${float(x):.{digits}f}$"


def pm(mean, low, high, digits: int = 3) -> str:
    """mean ± half-width of the CI [low, high]; the ± part is omitted when the CI is undefined."""
    if is_missing(mean):
        return "--"
    if is_missing(low) or is_missing(high):
        return f"${float(mean):.{digits}f}$"
    half = (float(high) - float(low)) / 2
    return f"${float(mean):.{digits}f} \\pm {half:.{digits}f}$"


def _sig(x: float, digits: int) -> str:
    s = f"{x:.{digits}g}"
    if "e" in s:
        m, e = s.split("e")
        s = f"{m} \\times 10^{{{int(e)}}}"
    return s


def pm_sig(mean, low, high, digits: int = 3) -> str:
    """Like pm, with `digits` significant digits (small differences such as a Δloss; powers of
    ten written out)."""
    if is_missing(mean):
        return "--"
    if is_missing(low) or is_missing(high):
        return f"${_sig(float(mean), digits)}$"
    return f"${_sig(float(mean), digits)} \\pm {_sig((float(high) - float(low)) / 2, max(1, digits - 1))}$"


def ci(low, high, digits: int = 3) -> str:
    if is_missing(low) or is_missing(high):
        return "--"
    return f"$[{float(low):.{digits}f}, {float(high):.{digits}f}]$"


def sci(x, digits: int = 2) -> str:
    """Large counts (parameters, tokens) as e.g. $1.23 \\times 10^{6}$."""
    if is_missing(x):
        return "--"
    x = float(x)
    if x == 0:
        return "$0$"
    exp = int(math.floor(math.log10(abs(x))))
    return f"${x / 10**exp:.{digits}f} \\times 10^{{{exp}}}$"


def booktabs(header: Sequence[str], rows: Sequence[Sequence[str]], align: str,
             midrules_after: Sequence[int] = ()) -> str:
    """A `tabular` body with booktabs rules. Header and cells are already-formatted LaTeX
    (escape plain text with `escape`). `midrules_after` lists row indices followed by a
    \\midrule (groups)."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError("every row needs one cell per header column")
    lines = [f"\\begin{{tabular}}{{{align}}}", "\\toprule",
             " & ".join(header) + " \\\\", "\\midrule"]
    for i, r in enumerate(rows):
        lines.append(" & ".join(r) + " \\\\")
        if i in midrules_after and i != len(rows) - 1:
            lines.append("\\midrule")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def write_tex(path: str | os.PathLike, text: str) -> None:
    write_text(path, text)


def group_breaks(keys: Sequence) -> list[int]:
    """Indices i where keys[i] != keys[i+1] (to put a \\midrule between groups)."""
    return [i for i in range(len(keys) - 1) if keys[i] != keys[i + 1]]

