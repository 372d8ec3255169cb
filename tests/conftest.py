"""Fixtures shared across test modules.

The helpers for temporary copies of the repo (copy_repo, snakemake, write_corpus, load_profile)
live in tests/test_workflow.py; the fixtures here import them when they run.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

# Files whose bytes two smoke runs from scratch must reproduce (tests/test_faults.py).
REPRODUCIBLE_GLOBS = ("results/smoke/tables/*.csv", "results/smoke/claims.json", "results/smoke/tables/claims*.tex")


@pytest.fixture(scope="session", autouse=True)
def _own_config_memo(tmp_path_factory):
    """The suite's own validation memo (ncn.config), inherited by every subprocess: nothing of the
    user's ~/.cache is read or written, and every session starts with none."""
    old = os.environ.get("NCN_CACHE_DIR")
    os.environ["NCN_CACHE_DIR"] = str(tmp_path_factory.mktemp("ncn_cache"))
    yield
    if old is None:
        os.environ.pop("NCN_CACHE_DIR", None)
    else:
        os.environ["NCN_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def smoke_session(tmp_path_factory):
    """The smoke profile, run once per session from scratch on a test-made corpus, in a temporary
    copy of the repo. Every test that needs a whole smoke run shares it, so the suite runs the
    profile at most twice (the second: tests/test_faults.py's byte-identity check).

    Returns {"repo", "env", "out", "wall", "cfg", "reproducible"}; "reproducible" holds the bytes
    of REPRODUCIBLE_GLOBS read right after the run, before any test changes the copy.
    """
    from test_workflow import copy_repo, load_profile, snakemake, write_corpus

    base = tmp_path_factory.mktemp("smoke_session")
    repo = copy_repo(base / "repo")
    env = {"NCN_DATA_DIR": str(write_corpus(base / "corpus"))}
    t0 = time.monotonic()
    r = snakemake(repo, "--cores", "2", "--configfile", "config/smoke.yaml", env=env, timeout=1200)
    wall = time.monotonic() - t0
    print(f"\nsmoke profile (session fixture): {wall:.0f} s wall on 2 cores", file=sys.stderr)
    assert r.returncode == 0, r.stdout[-6000:]
    return {"repo": repo, "env": env, "out": r.stdout, "wall": wall, "cfg": load_profile("smoke"),
            "reproducible": reproducible_files(repo)}


def reproducible_files(repo) -> dict[str, bytes]:
    """relative path -> bytes of every file matching REPRODUCIBLE_GLOBS under repo."""
    return {str(p.relative_to(repo)): p.read_bytes() for g in REPRODUCIBLE_GLOBS for p in sorted(repo.glob(g))}
