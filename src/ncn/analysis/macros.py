"""The numbers the paper's prose quotes: LaTeX macro names, number formats, and `Numbers`, the
ordered macro set that `ncn paper numbers` writes to numbers.tex.

Every analysis module that the prose quotes exposes `numbers(table, cfg) -> {group comment:
{macro name: LaTeX text}}` over its own output table, built with these helpers; a missing value
reads "n/a" (NA), never a made-up number. Macro names are letters only (`macro_name` spells
digits out), CamelCase: <Quantity><Variant><Size or "Largest">[<CILow|CIHigh|PM|N>].
"""

from __future__ import annotations

import math
import re

import pandas as pd

from ncn.analysis.tables import escape as tex_escape
from ncn.errors import NCNError

NA = "n/a"
DIGIT_WORDS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")


def tex_path(text) -> str:
    """An escaped path or hash that may break after '/', '_', '-' or '.' (long paths in prose)."""
    out = []
    for ch in str(text):
        out.append(tex_escape(ch))
        if ch in "/_-.":
            out.append(r"\allowbreak{}")
    return "".join(out)


def macro_name(*parts) -> str:
    """CamelCase letters-only macro name: ("val loss", "causal", "paper18m") -> ValLossCausalPaperOneEightm.

    LaTeX control words are letters only, so digits are spelled out and other characters split words.
    """
    out = []
    for part in parts:
        for word in re.split(r"[^A-Za-z0-9]+", str(part)):
            if not word:
                continue
            word = word[0].upper() + word[1:]
            out.append("".join(DIGIT_WORDS[int(c)] if c.isdigit() else c for c in word))
    name = "".join(out)
    if not re.fullmatch(r"[A-Za-z]+", name):
        raise NCNError(f"cannot build a LaTeX macro name from {parts!r}")
    return name


def finite(x) -> bool:
    """A number to print; None (JSON null) and NaN (an empty CSV cell, a missing run) read n/a."""
    return x is not None and math.isfinite(x)


def _minus(s: str) -> str:
    return "$-$" + s[1:] if s.startswith("-") else s


def fmt_fixed(x, decimals: int = 3) -> str:
    """Fixed decimals; a nonzero value too small for them keeps two significant digits."""
    if not finite(x):
        return NA
    x = float(x)
    if x != 0 and abs(x) < 0.5 * 10.0**-decimals:
        return fmt_sig(x, 2)
    return _minus(f"{x:,.{decimals}f}")


def fmt_sig(x, sig: int = 3) -> str:
    """About `sig` significant digits, no exponent unless tiny: 0.01234, 1.23, 123, 12,346."""
    if not finite(x):
        return NA
    x = float(x)
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag < -4:
        m, e = f"{x:.{sig - 1}e}".split("e")
        return f"${m}\\times10^{{{int(e)}}}$"
    if mag >= sig - 1:
        return _minus(f"{x:,.0f}")
    return _minus(f"{x:.{sig - 1 - mag}f}")


def fmt_cfg(x) -> str:
    """A configured value as written: 6e-4 -> $6\\times10^{-4}$, 0.95 -> 0.95, 4.0 -> 4, 32768 -> 32,768."""
    if not finite(x):
        return NA
    x = float(x)
    if x == int(x) and abs(x) < 1e15:
        return fmt_int(x)
    s = f"{x:.6g}"
    if "e" in s:
        m, e = s.split("e")
        return f"${m}\\times10^{{{int(e)}}}$"
    return _minus(s)


def fmt_int(x) -> str:
    """Rounded to an integer, thousands separated: 1310.4 -> 1,310."""
    return _minus(f"{round(float(x)):,}") if finite(x) else NA


def fmt_human(x) -> str:
    """1234567 -> 1.23M (parameter and token counts in prose)."""
    if not finite(x):
        return NA
    x = float(x)
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{fmt_sig(x / div, 3)}{unit}"
    return fmt_sig(x, 3)


def fmt_bytes(n) -> str:
    if not finite(n):
        return NA
    n = float(n)
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{fmt_sig(n / div, 3)}~{unit}"
    return f"{fmt_int(n)}~bytes"


def fmt_duration(seconds) -> str:
    if not finite(seconds):
        return NA
    s = float(seconds)
    if s >= 2 * 3600:
        return f"{fmt_sig(s / 3600, 3)}~h"
    if s >= 120:
        return f"{fmt_sig(s / 60, 3)}~min"
    return f"{fmt_sig(s, 3)}~s"


def fmt_pct(fraction, decimals: int = 1) -> str:
    if not finite(fraction):
        return NA
    return f"{fmt_fixed(100 * float(fraction), decimals)}\\%"


def fmt_list(items, fmt=str) -> str:
    items = [fmt(i) for i in items]
    return ", ".join(items) if items else NA


class Numbers:
    """An ordered set of macros (name -> LaTeX text) with a comment per group."""

    def __init__(self):
        self.items: list[tuple[str, str]] = []  # (name, value) or ("%", comment)
        self.names: set[str] = set()

    def group(self, comment: str) -> None:
        self.items.append(("%", comment))

    def add(self, name: str, value: str) -> None:
        if not re.fullmatch(r"[A-Za-z]+", name):
            raise NCNError(f"macro name {name!r} is not letters only")
        if name in self.names:
            raise NCNError(f"macro \\{name} defined twice (a size or variant name collides with another macro)")
        self.names.add(name)
        self.items.append((name, str(value)))

    def render(self, header: str) -> str:
        lines = [f"% {line}" for line in header.splitlines()]
        for name, value in self.items:
            lines.append(f"\n% {value}" if name == "%" else f"\\newcommand{{\\{name}}}{{{value}}}")
        return "\n".join(lines) + "\n"

    def extend(self, groups: dict[str, dict[str, str]]) -> None:
        """Add {group comment: {macro name: value}} in order (what every `numbers` function returns)."""
        for comment, macros in groups.items():
            self.group(comment)
            for name, value in macros.items():
                self.add(name, value)


class Macros(dict):
    """{macro name: value} that refuses a name twice: two sizes whose names differ only in
    punctuation (s_1, s1) would otherwise quietly share a macro."""

    def __setitem__(self, name: str, value: str) -> None:
        if name in self:
            raise NCNError(f"macro \\{name} defined twice (a size or variant name collides with another macro)")
        super().__setitem__(name, value)


def row(df: pd.DataFrame, **key) -> dict:
    """The row of a table with these column values, or {} when there is none (its macros read n/a)."""
    if df.empty:
        return {}
    for col, value in key.items():
        df = df[df[col] == value]
    return df.iloc[0].to_dict() if len(df) else {}


def half_width(r: dict, prefix: str):
    """Half the width of a table row's t-interval ({prefix}ci_low, {prefix}ci_high), or None."""
    low, high = r.get(f"{prefix}ci_low"), r.get(f"{prefix}ci_high")
    return (high - low) / 2 if finite(low) and finite(high) else None
