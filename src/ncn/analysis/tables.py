"""Deterministic CSV and booktabs LaTeX writers.

CSV: fixed column order, "\\n" line endings, floats with a fixed format, written atomically,
so a rerun on the same inputs is byte-identical. LaTeX: a bare `tabular` (booktabs rules, no
float wrapper) that the paper `\\input`s inside its own table environment.
"""

from __future__ import annotations

import math
import os
import re
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


# Plain-text notation in the claims' words (claims.json keeps it plain) and its LaTeX: `prose`.
_GREEK = {"alpha": r"\alpha", "beta": r"\beta", "gamma": r"\gamma", "rho": r"\rho", "sigma": r"\sigma",
          "lambda": r"\lambda", "eps": r"\varepsilon", "epsilon": r"\varepsilon"}
_PROSE = re.compile(
    r"(?P<le><=)|(?P<ge>>=)|(?P<cmp>(?<= )[<>](?= ))|(?P<delta>\bd(?=(?:PPL|loss|logit)\b))"
    r"|(?P<sub>\b[A-Z]_[a-z]+\b)|(?P<greek>\b(?:" + "|".join(_GREEK) + r")\b)|(?P<log>\blog10\b)"
    r"|(?P<times>(?<=\d)x\b|(?<= )x(?= ))|(?P<minus>(?<= )-(?= ))|(?P<norm>\|\|)"
    r"|(?P<open1>(?<![\w`])'(?=\S))|(?P<open2>(?<![\w`])\"(?=\S))|(?P<close2>\")")


def _prose_token(m: re.Match) -> str:
    kind, tok = m.lastgroup, m.group(0)
    if kind == "sub":
        base, sub = tok.split("_")
        return rf"${base}_{{\mathrm{{{sub}}}}}$"
    if kind == "greek":
        return f"${_GREEK[tok]}$"
    return {"le": r"$\le$", "ge": r"$\ge$", "cmp": f"${tok}$", "delta": r"$\Delta$", "log": r"$\log_{10}$",
            "times": r"$\times$", "minus": "$-$", "norm": r"$\|$", "open1": "`", "open2": "``",
            "close2": "''"}[kind]


def prose(text) -> str:
    """Plain text with ASCII notation as LaTeX: escaped, with <= and >= as relations, dPPL/dloss/
    dlogit as a Delta, L_reg as a subscript, Greek letter names (beta, rho, eps) as letters,
    "2x" and " x " as a times sign, " - " as a minus, log10, || as a norm bar, and straight quotes
    as TeX's opening and closing quotes (an apostrophe inside a word stays one)."""
    text, out, last = str(text), [], 0
    for m in _PROSE.finditer(text):
        out += [escape(text[last:m.start()]), _prose_token(m)]
        last = m.end()
    return "".join(out) + escape(text[last:])


def ragged(width: str) -> str:
    """A ragged-right column of this width (`X`, or a fraction of the line: "0.15")."""
    col = "X" if width == "X" else rf"p{{{width}\linewidth}}"
    return rf">{{\raggedright\arraybackslash}}{col}"


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
             midrules_after: Sequence[int] = (), full_width: bool = False) -> str:
    """A `tabular` body with booktabs rules. Header and cells are already-formatted LaTeX
    (escape plain text with `escape`, words with notation with `prose`). `midrules_after` lists
    row indices followed by a \\midrule (groups). full_width: a `tabularx` exactly as wide as the
    line, \\small, for tables of words (`align` then holds X columns, see `ragged`)."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError("every row needs one cell per header column")
    begin = (rf"\small\begin{{tabularx}}{{\linewidth}}{{{align}}}" if full_width
             else f"\\begin{{tabular}}{{{align}}}")
    lines = [begin, "\\toprule",
             " & ".join(header) + " \\\\", "\\midrule"]
    for i, r in enumerate(rows):
        lines.append(" & ".join(r) + " \\\\")
        if i in midrules_after and i != len(rows) - 1:
            lines.append("\\midrule")
    lines += ["\\bottomrule", "\\end{tabularx}" if full_width else "\\end{tabular}", ""]
    return "\n".join(lines)


def write_tex(path: str | os.PathLike, text: str) -> None:
    write_text(path, text)


def group_breaks(keys: Sequence) -> list[int]:
    """Indices i where keys[i] != keys[i+1] (to put a \\midrule between groups)."""
    return [i for i in range(len(keys) - 1) if keys[i] != keys[i + 1]]

