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


def setup() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.0)
    plt.rcParams.update({
        "svg.hashsalt": "ncn",
        "figure.dpi": 100,
        "savefig.dpi": 150,
        "savefig.bbox": "tight",
    })


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
