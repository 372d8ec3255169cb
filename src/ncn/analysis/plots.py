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

# One colour per variant, the same in every figure.
VARIANT_COLORS = {
    "none": "#4d4d4d",
    "asrun": "#d95f02",
    "causal": "#1b9e77",
    "tonic": "#7570b3",
    "static": "#e7298a",
}
VARIANT_LABELS = {
    "none": "baseline (none)",
    "asrun": "asrun",
    "causal": "causal",
    "tonic": "tonic",
    "static": "static",
}


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
