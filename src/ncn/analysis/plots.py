"""Figure helpers: headless backend, one style, deterministic PDF/PNG files.

Reruns on the same data give byte-identical files: no creation date in the PDF, a fixed
SVG hash salt, no "Software" stamp that changes with versions inside one environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless (cluster jobs, CI); must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from ncn.fileio import atomic_path  # noqa: E402
from ncn.variants import REGISTRY  # noqa: E402


def variant_colour(variant: str) -> str | None:
    """The variant's colour (ncn.variants), the same in every figure; None (matplotlib's cycle) if unknown."""
    return REGISTRY[variant].colour if variant in REGISTRY else None


def variant_label(variant: str) -> str:
    """The variant's legend label (ncn.variants); the name itself if unknown."""
    return REGISTRY[variant].label if variant in REGISTRY else variant


# The paper's text block (A4, 2.5 cm margins: 16 cm) in inches. A figure made this wide is printed
# at its own size (\\genfigure scales it to \\linewidth), so FONT_PT is the size on paper.
TEXT_WIDTH_IN = 6.3
FONT_PT = 8


def setup() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.0)
    plt.rcParams.update({
        "svg.hashsalt": "ncn",
        "figure.dpi": 100,
        "savefig.dpi": 150,
        "savefig.bbox": "tight",
        "font.size": FONT_PT, "axes.titlesize": FONT_PT, "axes.labelsize": FONT_PT,
        "xtick.labelsize": FONT_PT - 1, "ytick.labelsize": FONT_PT - 1, "legend.fontsize": FONT_PT - 1,
        "figure.titlesize": FONT_PT + 1,
    })


def count_label(x: float, pos=None) -> str:
    """A tick label for a count (tokens, parameters): 0, 500, 2k, 12k, 1.5k, 16.4k, 2M, 1.2B."""
    if x == 0:
        return "0"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def count_axis(axis, nbins: int = 5) -> None:
    """At most about `nbins` short tick labels on a count axis (count_label): "10k" rather than
    "10000", so neighbours never run together. A log axis gets ticks at 1, 2 and 5 x 10^k."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    if axis.get_scale() == "log":
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=nbins + 1))
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_locator(MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(count_label))


def save(fig, stem: str | os.PathLike, tight: bool = True) -> list[Path]:
    """Write `stem`.pdf and `stem`.png (stem may carry either suffix) and close the figure."""
    if tight:
        fig.tight_layout()
    stem = Path(stem)
    if stem.suffix in (".pdf", ".png"):
        stem = stem.with_suffix("")
    out = []
    for ext, meta in ((".pdf", {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}),
                      (".png", {"Software": None})):
        path = stem.with_suffix(ext)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext[1:], metadata=meta)
        out.append(path)
    plt.close(fig)
    return out
