"""Where a result came from: the git commit of the checkout that made it (no torch import).

One function, so the paper and MLflow always report the same commit: MLflow records the full hash
(tag `mlflow.source.git.commit`), the paper prints `git_commit()[:12]`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

UNKNOWN = "unknown"


def _git(repo: str | Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(repo: str | Path = ".") -> str:
    """The full commit hash of the checkout at `repo` (default: the current directory, where
    Snakemake and the `ncn` commands run), or "unknown" outside a git checkout."""
    return _git(repo, "rev-parse", "HEAD") or UNKNOWN


def git_state(repo: str | Path = ".") -> str:
    """"clean", "modified" (tracked files differ from the commit) or "unknown"."""
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return UNKNOWN if status is None else ("modified" if status else "clean")
