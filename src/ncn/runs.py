"""Shared helpers for commands that read a finished training run (evaluate, generate).

No module-level torch import: `ncn analyze runs` reads TIMING_KEYS from here."""

from __future__ import annotations

from pathlib import Path

from ncn.errors import NCNError
from ncn.fileio import read_json
from ncn.variants import REGISTRY

# metrics.json keys that measure time or the history of interruptions, not the result:
# everything else must be identical between runs of one command (and across resumes).
# Here, not in ncn.train, so that readers of metrics.json (`ncn analyze runs`) need no torch.
TIMING_KEYS = ("wall_time_s", "tokens_per_s", "resumed_at_steps")


def require_finished(run_dir: Path) -> dict:
    """metrics.json of a finished run, or an NCNError saying what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NCNError(f"run folder not found: {run_dir} (train it first with 'ncn train ... --out {run_dir}')")
    metrics_path, model_path = run_dir / "metrics.json", run_dir / "model.pt"
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    if not model_path.exists() or not metrics.get("finished"):
        missing = [n for n, ok in (("no model.pt", model_path.exists()),
                                   ("no metrics.json finished flag", metrics.get("finished"))) if not ok]
        raise NCNError(f"run {run_dir} is not finished: {' / '.join(missing)}; rerun its 'ncn train' command to resume it")
    return metrics


def run_config(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "config.json"
    return read_json(path) if path.exists() else None


def config_of(run_dir: Path, cfg: dict | None, config_source: str) -> tuple[dict, str]:
    """(config, where it came from): `cfg` when given, else the run's own config.json."""
    if cfg is not None:
        return cfg, config_source
    rc = run_config(run_dir)
    if rc is None:
        raise NCNError(f"{run_dir}/config.json is missing; pass --config")
    return rc["config"], f"{run_dir}/config.json"


def data_dir_of(run_dir: Path, data: str | None) -> Path:
    """--data if given, else the folder the run was trained on, else results/data."""
    if data:
        return Path(data)
    rc = run_config(run_dir)
    if rc and rc.get("data_dir"):
        return Path(rc["data_dir"])
    return Path("results/data")


def check_data_matches(payload: dict, meta: dict, model_path: Path, data_dir: Path) -> None:
    """Refuse data tokenized with another tokenizer / vocabulary than the checkpoint's."""
    v_model, v_data = payload["model_config"]["vocab_size"], int(meta["vocab_size"])
    if v_model != v_data:
        raise NCNError(f"vocabulary mismatch: {model_path} has vocab_size {v_model} but {data_dir}/meta.json has "
                       f"{v_data}; use the data folder the run was trained on (omit --data, or pass that folder)")
    a, b = payload.get("tokenizer_sha256"), meta.get("tokenizer_sha256")
    if a and b and a != b:
        raise NCNError(f"tokenizer mismatch: {model_path} was trained with tokenizer {a[:12]}… but {data_dir} "
                       f"was tokenized with {b[:12]}…; use the run's own data folder (--data)")


# The fields of a size definition that shape the trained model. d_ff is compared with the d_ff
# config.model_config gives the run's variant: every variant's d_ff is matched to the reference
# NCN's parameter count, so only the reference keeps size_defs' d_ff.
SHAPE_FIELDS = ("block_size", "d_model", "n_layer", "n_head", "d_ff")


def check_config_matches(cfg: dict, payload: dict, model_path: Path, source: str) -> None:
    """Refuse a config that describes the run's size differently from its checkpoint.

    Evaluation and sampling always use the checkpoint's own shape (its context is block_size:
    the position table has no more rows), so a config asking for another context (or width,
    depth, heads) is a mistake: the numbers would silently belong to another model than the
    config says. Only the run's own size is compared; a config that does not define it is fine.
    """
    size = payload.get("size")
    sd = cfg.get("size_defs", {}).get(size) if size is not None else None
    if sd is None:
        return
    have = payload["model_config"]
    want = {f: sd[f] for f in SHAPE_FIELDS if f in sd}
    if "d_ff" in want and have.get("ncn") in REGISTRY and "model" in cfg and "vocab_size" in have:
        from ncn.config import model_config

        want["d_ff"] = model_config(cfg, have["ncn"], size, have["vocab_size"]).d_ff
    diff = [f"size_defs.{size}.{f} is {sd[f]}{'' if want[f] == sd[f] else f' (matched: {want[f]})'} in {source} "
            f"but {have[f]} in {model_path}" for f in want if f in have and want[f] != have[f]]
    if diff:
        what = "context mismatch" if any(".block_size " in d for d in diff) else "model mismatch"
        raise NCNError(f"{what}: {'; '.join(diff)}. The run was trained with its checkpoint's shape: use the "
                       f"run's own config (omit --config) or retrain the run with this config")


def pick_device(pref: str = "auto", index: int | None = None) -> torch.device:
    """The device train.device asks for: "cpu", "cuda" (an error without one) or "auto" (CUDA when
    there is one). `index` picks the GPU (a DDP process's local rank)."""
    import torch

    if pref == "cuda" and not torch.cuda.is_available():
        raise NCNError("train.device is 'cuda' but no CUDA device is available (set train.device: auto or cpu)")
    if pref == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index) if index is not None else torch.device("cuda")
