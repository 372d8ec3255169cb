"""Where a result came from: the git commit of the checkout that made it (no torch import).

One function, so the paper and MLflow always report the same commit: MLflow records the full hash
(tag `mlflow.source.git.commit`), the paper prints `git_commit()[:12]`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

UNKNOWN = "unknown"


def _git(repo: str | Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_dir(repo: Path) -> Path | None:
    """The git directory of the checkout holding `repo`: its .git folder, or where a worktree's
    .git file points ("gitdir: ...")."""
    for folder in (repo, *repo.parents):
        dot = folder / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file():
            line = dot.read_text(errors="replace").strip()
            return (folder / line[len("gitdir:"):].strip()) if line.startswith("gitdir:") else None
    return None


def read_head(repo: str | Path = ".") -> str | None:
    """HEAD's commit read from the git files themselves (HEAD, the ref, packed-refs), for when the
    git program cannot say: not installed, or a checkout owned by another user ("dubious
    ownership"). Runs nothing from the repository."""
    try:
        gd = _git_dir(Path(repo).resolve())
        if gd is None:
            return None
        head = (gd / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head if re.fullmatch(r"[0-9a-f]{40}", head) else None
        ref = head[len("ref:"):].strip()
        common = gd / "commondir"  # a worktree's refs live in the main git directory
        roots = [gd] + ([gd / common.read_text().strip()] if common.is_file() else [])
        for root in roots:
            if (root / ref).is_file():
                return (root / ref).read_text().strip()
            packed = root / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    except OSError:
        return None
    return None


def git_commit(repo: str | Path = ".") -> str:
    """The full commit hash of the checkout at `repo` (default: the current directory, where
    Snakemake and the `ncn` commands run), or "unknown" outside a git checkout. When the git
    program fails on a checkout, HEAD is read from its files (read_head)."""
    return _git(repo, "rev-parse", "HEAD") or read_head(repo) or UNKNOWN


def git_state(repo: str | Path = ".") -> str:
    """"clean", "modified" (tracked files differ from the commit) or "unknown"."""
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return UNKNOWN if status is None else ("modified" if status else "clean")
