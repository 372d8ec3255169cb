"""Training checkpoints: atomic, checksummed, newest-good-first on resume.

A checkpoint is `ckpt/step_{step:06d}.pt` (a torch.save payload) and beside it
`step_{step:06d}.pt.sha256` (hex digest of the .pt bytes). Both are written atomically
(temp file + rename), the digest last, so a checkpoint without a matching digest was
interrupted or damaged: `load_latest` skips it, says so in the log, and falls back to the
previous good one. Only the newest `keep` checkpoints are kept.
"""

from __future__ import annotations

import io
import logging
import random
import re
from pathlib import Path

import numpy as np
import torch

from ncn.fileio import sha256_bytes, sha256_file, write_bytes, write_text

log = logging.getLogger("ncn.train")

_NAME = re.compile(r"^step_(\d+)\.pt$")


def ckpt_path(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:06d}.pt"


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file, newest first (verified or not)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))]
    return sorted(out, reverse=True)


def save_checkpoint(ckpt_dir: Path, step: int, payload: dict, keep: int) -> Path:
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    path = ckpt_path(ckpt_dir, step)
    write_bytes(path, data)
    write_text(path.with_name(path.name + ".sha256"), sha256_bytes(data) + "\n")
    for _, old in list_checkpoints(ckpt_dir)[keep:]:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def verify(path: Path) -> str | None:
    """None if `path` matches its digest, else why not."""
    digest = path.with_name(path.name + ".sha256")
    if not digest.exists():
        return "no .sha256 beside it (interrupted while saving?)"
    want = digest.read_text().strip()
    got = sha256_file(path)
    if got != want:
        return f"sha256 mismatch (file {got[:12]}…, recorded {want[:12]}…): truncated or corrupt"
    return None


def load_latest(ckpt_dir: Path, map_location="cpu") -> tuple[dict | None, Path | None]:
    """The newest checkpoint that verifies and loads; logs every one skipped."""
    for _, path in list_checkpoints(ckpt_dir):
        problem = verify(path)
        if problem is None:
            try:
                return torch.load(path, map_location=map_location, weights_only=True), path
            except Exception as e:  # verified bytes that still fail to load: also skip
                problem = f"failed to load: {type(e).__name__}: {e}"
        log.warning("checkpoint %s is unusable (%s); falling back to the previous one", path, problem)
    return None, None


# ---- RNG states, in a form torch.load(weights_only=True) accepts ---------------------------


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
