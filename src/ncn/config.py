"""Load and validate a pipeline config; resolve named sizes into model configs.

The schema is `workflow/schemas/config.schema.yaml`, the same file Snakemake validates
against, so `ncn <stage> --config FILE` and `snakemake` accept and reject the same configs.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ncn.errors import NCNError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = Path(os.environ.get("NCN_SCHEMA", REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"))


def yaml_load(stream):
    """yaml.safe_load, on libyaml's parser where PyYAML has it: the same constructor (the same
    values), ~9x faster on the schema (75 -> 8.5 ms). yaml is imported here, not by the module:
    a job whose config is in the validation memo never needs it (~25 ms)."""
    import yaml

    return yaml.load(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_schema() -> dict:
    """The schema file as written (its variant enums document the registry; a test keeps them equal)."""
    if not SCHEMA_PATH.exists():
        raise NCNError(f"config schema not found at {SCHEMA_PATH} (install the package editable: pip install -e .)")
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return yaml_load(f)


def _with_registry_variants(schema: dict) -> dict:
    """The schema with its variant enums taken from ncn.variants, the one source of the names."""
    from ncn.variants import names, ncn_names

    props = schema["properties"]
    props["variants"]["items"]["enum"] = list(names())
    props["ncn_reference"]["enum"] = ncn_names()
    return schema


def _fill_defaults(schema: dict, obj: Any) -> Any:
    """Fill `default`s from the schema, recursively (as Snakemake's validate(set_default=True) does)."""
    if not isinstance(obj, dict) or schema.get("type") != "object":
        return obj
    for key, sub in schema.get("properties", {}).items():
        if key not in obj and "default" in sub:
            obj[key] = copy.deepcopy(sub["default"])
        if key in obj:
            obj[key] = _fill_defaults(sub, obj[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in obj:
            if key not in schema.get("properties", {}):
                obj[key] = _fill_defaults(extra, obj[key])
    return obj


def _where(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "<top level>"


def validate(cfg: dict, source: str = "config") -> dict:
    """Validate `cfg` in place (defaults filled) and check cross-field rules. Returns cfg."""
    import jsonschema

    if not isinstance(cfg, dict):
        raise NCNError(f"{source}: expected a mapping at the top level, got {type(cfg).__name__}")
    schema = _with_registry_variants(load_schema())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise NCNError(f"{source}: invalid value at '{_where(e)}': {e.message}")
    _fill_defaults(schema, cfg)
    for size in cfg["sizes"]:
        if size not in cfg["size_defs"]:
            raise NCNError(
                f"{source}: unknown size '{size}' in 'sizes' (defined in size_defs: {', '.join(cfg['size_defs'])})"
            )
    for name, sd in cfg["size_defs"].items():
        if sd["d_model"] % sd["n_head"]:
            raise NCNError(f"{source}: size_defs.{name}: d_model {sd['d_model']} is not divisible by n_head {sd['n_head']}")
    for size in cfg["control"]["sizes"] or []:
        if size not in cfg["size_defs"]:
            raise NCNError(f"{source}: unknown size '{size}' in 'control.sizes' (defined in size_defs: "
                           f"{', '.join(cfg['size_defs'])})")
    from ncn.variants import names

    for variant in cfg["variant_seeds"]:  # an entry for a variant not trained is unused, a typo an error
        if variant not in names():
            raise NCNError(f"{source}: variant_seeds names unknown variant '{variant}' (one of {', '.join(names())})")
    if cfg["train"]["tokens"] is None and cfg["train"]["epochs"] is None:
        raise NCNError(f"{source}: set train.tokens or train.epochs")
    a = cfg["analysis"]
    for b in a["kv_budgets"]:  # the mixed allocations' levels (ncn.kvquant.levels)
        if not 2 <= b - a["kv_spread"] < b + a["kv_spread"] <= 8:
            raise NCNError(f"{source}: analysis.kv_budgets {b} with kv_spread {a['kv_spread']} needs levels "
                           f"{b - a['kv_spread']} and {b + a['kv_spread']} bits within 2..8")
    return cfg


def load_config(path: str | os.PathLike, overrides: dict | None = None, stage: str | None = None) -> dict:
    """Read a YAML (or JSON) config, apply `overrides` (nested dict), validate and fill defaults.
    With `stage`, return only the keys that stage reads (ncn.stages.READS). A config validated
    before, byte for byte, is read back from the validation memo (`_memo_path`)."""
    path = Path(path)
    if not path.exists():
        raise NCNError(f"config file not found: {path}")
    raw = path.read_bytes()
    memo = _memo_path(raw, overrides)
    cfg = _read_memo(memo)
    if cfg is None:
        import yaml

        try:
            cfg = yaml_load(raw)
        except yaml.YAMLError as e:
            raise NCNError(f"{path}: not valid YAML: {e}") from None
        if overrides:
            cfg = deep_update(cfg or {}, overrides)
        cfg = validate(cfg, source=str(path))
        _write_memo(memo, cfg)
    if stage is None:
        return cfg
    from ncn.stages import config_slice

    return config_slice(cfg, stage)


# ---- the validation memo: every job of a run reads the same config ------------------------------
# Validating costs ~0.1-0.2 s a process, nearly all of it `import jsonschema` (its metaschema
# registry), and a profile run starts hundreds of jobs on one config. The memo maps everything
# validation reads (the config's bytes, the overrides, the schema's bytes, the code of this module
# and the variant registry's names) to the validated, defaults-filled config; any change is a new key.
# Only valid configs are stored. NCN_CACHE_DIR (default $XDG_CACHE_HOME/ncn, else ~/.cache/ncn)
# holds it under configs/; NCN_CACHE_DIR=off, or a folder that cannot be written, turns it off.


def _cache_root() -> Path | None:
    root = os.environ.get("NCN_CACHE_DIR")
    if root == "off":
        return None
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    try:
        return Path(xdg) / "ncn" if xdg else Path.home() / ".cache" / "ncn"
    except RuntimeError:  # no home folder to be found: no memo
        return None


def _memo_path(raw: bytes, overrides: dict | None) -> Path | None:
    root = _cache_root()
    if root is None:
        return None
    from ncn.variants import names, ncn_names

    registry = json.dumps([names(), ncn_names()]).encode()  # as it is now (a test may add a variant)
    try:
        parts = (raw, json.dumps(overrides, sort_keys=True, default=repr).encode(), SCHEMA_PATH.read_bytes(),
                 Path(__file__).read_bytes(), registry)
    except OSError:  # a missing or unreadable schema: validation reports it
        return None
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return root / "configs" / f"{h.hexdigest()}.json"


def _read_memo(memo: Path | None) -> dict | None:
    if memo is None:
        return None
    try:
        with open(memo, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):  # absent, unreadable or torn: validate
        return None
    return cfg if isinstance(cfg, dict) else None


def _write_memo(memo: Path | None, cfg: dict) -> None:
    """Store `cfg` if JSON gives it back unchanged (string keys, no NaN), in its key order (code
    iterates size_defs and other mappings in the order written); never fails the caller."""
    if memo is None:
        return
    from ncn.fileio import write_text

    try:
        text = json.dumps(cfg)
        if json.loads(text) == cfg:
            write_text(memo, text)  # atomic: a concurrent job reads no file or the whole file
    except (OSError, TypeError, ValueError):
        pass


def deep_update(base: dict, upd: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def params_text(values: dict, prefix: str = "") -> str:
    """{'train': {'lr': 0.003, 'seeds': [0, 1]}} -> 'train.lr=0.003, train.seeds=[0, 1]' (keys sorted):
    a Snakemake rule's `params: cfg=` rerun trigger that reads well in the report (no JSON quotes)."""
    def text(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(text(x) for x in v) + "]"
        return v if isinstance(v, str) else json.dumps(v)

    return ", ".join(params_text(v, f"{prefix}{k}.") if isinstance(v, dict) and v else f"{prefix}{k}={text(v)}"
                     for k, v in sorted(values.items()))


def size_def(cfg: dict, size: str) -> dict:
    if size not in cfg["size_defs"]:
        raise NCNError(f"unknown size '{size}' (defined: {', '.join(cfg['size_defs'])})")
    return cfg["size_defs"][size]


@dataclass(frozen=True)
class TrainConfig:
    """The resolved train settings of one size (the schema's `train` section with that size's
    overrides of micro_batch, grad_accum and lr). No defaults here: the schema holds them."""

    tokens: int | None  # token budget; None means `epochs` passes over the train split
    epochs: float | None
    micro_batch: int
    grad_accum: int
    lr: float
    min_lr: float
    warmup_steps: int
    lr_schedule: str  # "nanogpt" or "original" (train.lr_at)
    beta1: float
    beta2: float
    weight_decay: float
    decay_all: bool
    grad_clip: float
    ckpt_every: int
    keep_checkpoints: int
    log_every: int
    signal_every: int
    device: str
    compile: bool
    compile_mode: str = "default"  # torch.compile's mode (reduce-overhead: CUDA graphs)

    def __post_init__(self):
        for name in ("micro_batch", "grad_accum", "ckpt_every", "keep_checkpoints", "log_every", "signal_every"):
            if int(getattr(self, name)) < 1:
                raise NCNError(f"TrainConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.tokens is None and self.epochs is None:
            raise NCNError("TrainConfig: set train.tokens or train.epochs")
        for name in ("tokens", "epochs", "lr"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise NCNError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("min_lr", "warmup_steps", "weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise NCNError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise NCNError(f"TrainConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.lr_schedule not in ("nanogpt", "original"):
            raise NCNError(f"TrainConfig.lr_schedule must be nanogpt or original, got '{self.lr_schedule}'")
        if self.device not in ("auto", "cpu", "cuda"):
            raise NCNError(f"TrainConfig.device must be auto, cpu or cuda, got '{self.device}'")


def train_settings(cfg: dict, size: str) -> TrainConfig:
    """`train` section with the per-size overrides (micro_batch, grad_accum, lr) applied."""
    out = dict(cfg["train"])
    for key in ("micro_batch", "grad_accum", "lr"):
        if key in cfg["size_defs"][size]:
            out[key] = cfg["size_defs"][size][key]
    known = {f.name for f in fields(TrainConfig)}
    if set(out) != known:
        extra, missing = sorted(set(out) - known), sorted(known - set(out))
        raise NCNError(f"train settings: unknown keys {extra} and missing keys {missing}; "
                       "load the config with ncn.config.load_config (it validates and fills the defaults)")
    return TrainConfig(**out)


def model_config(cfg: dict, variant: str, size: str, vocab_size: int):
    """The ModelConfig of (variant, size). Every variant, the baseline included, is matched in total
    parameter count (within 0.5%) to the `ncn_reference` variant at the size's d_ff, by changing
    its d_ff only (model.match_params): the reference keeps size_defs' d_ff; a variant with fewer
    parameters (the baseline, `static`'s 3 constants per layer) gets a wider FFN. A variant with
    control reads one control channel per story label and is not matched: it is compared with
    itself (true vs flipped label), and with a zero control it is exactly the reference."""
    from ncn.model import OFF_BY_DEFAULT, ModelConfig, count_params, match_params
    from ncn.variants import spec

    sp = spec(variant)  # names the registered variants if `variant` is not one
    sd = size_def(cfg, size)
    m = cfg["model"]
    kw = dict(
        vocab_size=vocab_size,
        block_size=sd["block_size"],
        n_layer=sd["n_layer"],
        n_head=sd["n_head"],
        d_model=sd["d_model"],
        d_ff=sd["d_ff"],
        dropout=m["dropout"],
        ncn_hidden=m["ncn_hidden"],
        ncn_heads=m["ncn_heads"],
        reg_lambda=m["reg_lambda"],
        beta_max=m["beta_max"],
        gate_init=m["gate_init"],
        # a config recorded before these options existed (a run's config.json) means them off
        **{k: m.get(k, OFF_BY_DEFAULT[k]) for k in ("dropout_layout", "ncn_after_dropout", "pool_bias")},
    )
    if sp.control:  # one channel per story label the data stage stores (ncn.control)
        from ncn.control import LABELS

        return ModelConfig(ncn=variant, control_dim=len(LABELS), **kw)
    target = count_params(ModelConfig(ncn=cfg["ncn_reference"], **kw))
    return match_params(ModelConfig(ncn=variant, **kw), ncn=variant, target=target)


def seeds_of(cfg: dict, variant: str) -> list[int]:
    """The seeds `variant` is trained on: variant_seeds[variant] when set, else `seeds`."""
    return list(cfg.get("variant_seeds", {}).get(variant, cfg["seeds"]))


def planned_runs(cfg: dict) -> list[tuple[str, str, int]]:
    """Every configured (variant, size, seed), in config order (variants, sizes, that variant's seeds)."""
    return [(v, size, seed) for v in cfg["variants"] for size in cfg["sizes"] for seed in seeds_of(cfg, v)]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="ncn config",
        description="Validate a pipeline config against workflow/schemas/config.schema.yaml and "
        "print it with every default filled in (YAML, or JSON with --json).",
    )
    p.add_argument("--config", required=True, help="config file, e.g. config/default.yaml")
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.add_argument("--out", help="also write the resolved config to this file (JSON)")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    if a.out:
        from ncn.fileio import write_json

        write_json(a.out, cfg)
    if a.json:
        json.dump(cfg, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        import yaml

        yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
    return 0
