"""Hugging Face-style model folders: `ncn export --run RUN` -> RUN/hf/.

    RUN/hf/model.safetensors   the weights (safetensors; the tied output head is stored once)
    RUN/hf/config.json         the ModelConfig, plus "model_type" and "architectures"
    RUN/hf/tokenizer.json      the run's tokenizer (when its data folder has one)
    RUN/hf/README.md           a model card: variant, size, seed, data digests, validation loss

The folder is RUN/hf/, not RUN/ itself, because RUN/config.json already holds the run's resolved
settings. `Transformer.from_pretrained(folder)` (= `load_pretrained`) loads it back in one call;
the logits of the loaded model are bitwise identical to the saved one's. The pipeline's `export`
rule runs `ncn export` after `ncn evaluate`, so the card carries the validation loss.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import fields
from pathlib import Path

from ncn.errors import NCNError
from ncn.fileio import atomic_path, read_json, write_text

WEIGHTS, CONFIG, CARD, TOKENIZER = "model.safetensors", "config.json", "README.md", "tokenizer.json"
MODEL_TYPE = "ncn"
# config.json keys that describe the file, not the ModelConfig
FILE_KEYS = ("model_type", "architectures", "torch_dtype", "ncn_version")


def save_pretrained(model, folder: str | Path, card: dict, tokenizer: str | Path | None = None) -> Path:
    """Write model.safetensors, config.json, README.md (from `card`, see render_card) and a copy of
    `tokenizer` (a tokenizer.json) into `folder`; each file atomically. Returns the folder."""
    from safetensors.torch import save_file

    import ncn

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tied = tied_names(model)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    config = {"model_type": MODEL_TYPE, "architectures": [type(model).__name__], "torch_dtype": dtype,
              "ncn_version": ncn.__version__, **model.cfg.as_dict()}
    write_text(folder / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        with atomic_path(folder / TOKENIZER) as tmp:
            shutil.copyfile(tokenizer, tmp)
    write_text(folder / CARD, render_card(card, model.cfg.as_dict(), has_tokenizer=tokenizer is not None))
    return folder


def tied_names(model) -> set[str]:
    """State-dict names whose tensor is an earlier name's (the output head tied to the embedding):
    stored once, under the first name, as Hugging Face does (and so the file is byte-reproducible)."""
    seen, tied = set(), set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            tied.add(name)
        seen.add(id(t))
    return tied


def load_pretrained(folder: str | Path, cls=None, map_location="cpu"):
    """The model saved by save_pretrained, in eval mode (cls: the model class, default Transformer)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ncn.model import ModelConfig, Transformer

    cls = cls or Transformer
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise NCNError(f"{folder}/{name} not found: a model folder holds {CONFIG} and {WEIGHTS} "
                           f"(write one with 'ncn export --run RUN')")
    try:
        config = read_json(folder / CONFIG)
    except ValueError as e:
        raise NCNError(f"{folder}/{CONFIG} is not valid JSON ({e})") from None
    if config.get("model_type") != MODEL_TYPE:
        raise NCNError(f"{folder}/{CONFIG}: model_type is {config.get('model_type')!r}, not '{MODEL_TYPE}'; "
                       "this folder was not written by ncn")
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(config) - known - set(FILE_KEYS)
    if unknown:
        raise NCNError(f"{folder}/{CONFIG}: unknown keys {sorted(unknown)} (written by a newer ncn?)")
    model = cls(ModelConfig(**{k: v for k, v in config.items() if k in known})).to(map_location)
    want = set(model.state_dict()) - tied_names(model)
    try:
        tensors = load_file(folder / WEIGHTS, device=str(map_location))
        if set(tensors) != want:
            missing, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
            raise ValueError(f"missing tensors {missing[:3]}, unexpected {extra[:3]}")
        model.load_state_dict(tensors, strict=False)  # the tied names share the loaded tensor
    except (SafetensorError, RuntimeError, OSError, ValueError) as e:  # a damaged file, or a shape mismatch
        raise NCNError(f"{folder}/{WEIGHTS} is damaged or does not fit {folder}/{CONFIG}: {str(e).splitlines()[0]}") from None
    return model.eval()


def _num(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def card_rows(c: dict, m: dict) -> list[tuple[str, str]]:
    """The model card's table: (field, value) from the card dict `c` and the model config `m`."""
    if c.get("val_loss") is None:
        val = "n/a (not evaluated: run 'ncn evaluate', then 'ncn export')"
    else:
        val = (f"{c['val_loss']:.4f} nats/token (perplexity {_num(c.get('val_ppl'), '.2f')}, "
               f"{_num(c.get('val_bpb'), '.4f')} bits/byte, {_num(c.get('val_tokens'), ',')} tokens)")
    return [
        ("variant", f"`{c.get('variant', m.get('ncn'))}`"),
        ("size", f"{c.get('size') or 'n/a'}: {m['n_layer']} layers, d_model {m['d_model']}, {m['n_head']} heads, "
                 f"d_ff {m['d_ff']}, context {m['block_size']} tokens, vocabulary {m['vocab_size']}"),
        ("seed", _num(c.get("seed"), "")),
        ("parameters", _num(c.get("n_params"), ",")),
        ("training", f"{_num(c.get('steps'), ',')} steps, {_num(c.get('tokens'), ',')} tokens"
                     + (f" (profile `{c['profile']}`)" if c.get("profile") else "")),
        ("validation loss", val),
        ("tokenizer sha256", f"`{c.get('tokenizer_sha256') or 'n/a'}`"),
        ("train text sha256", f"`{c.get('train_text_sha256') or 'n/a'}`"),
        ("valid text sha256", f"`{c.get('valid_text_sha256') or 'n/a'}`"),
        ("data source", c.get("data_source") or "n/a"),
    ]


def render_card(card: dict, model_config: dict, has_tokenizer: bool = False) -> str:
    """A short Hugging Face model card (README.md with YAML front matter) from the card dict:
    name, variant, size, seed, profile, n_params, steps, tokens, val_loss, val_ppl, val_bpb, val_tokens,
    tokenizer_sha256, train_text_sha256, valid_text_sha256, data_source (missing keys read "n/a")."""
    c, m = card, model_config
    parts = (c.get("variant", m.get("ncn")), c.get("size"), None if c.get("seed") is None else f"s{c['seed']}")
    name = c.get("name") or "-".join(str(x) for x in parts if x is not None)
    table = "\n".join(f"| {k} | {v} |" for k, v in card_rows(c, m))
    tok_line = f"- `{TOKENIZER}`: the run's tokenizer (`tokenizers` library)\n" if has_tokenizer else ""
    return f"""---
library_name: pytorch
license: mit
pipeline_tag: text-generation
tags:
- ncn
- neuromodulatory-control-networks
- tinystories
---

# NCN {name}

A decoder-only Transformer language model with Neuromodulatory Control Networks, variant
`{c.get('variant', m.get('ncn'))}`, trained by the NCN replication pipeline.

| | |
|---|---|
{table}

## Files

- `{WEIGHTS}`: the weights (the output head is tied to the token embedding and stored once)
- `{CONFIG}`: the `ncn.model.ModelConfig`, plus `model_type`
{tok_line}
## Load

```python
from ncn.model import Transformer

model = Transformer.from_pretrained("path/to/this/folder")  # eval mode, on the CPU
```

Sample from the run it came from: `ncn generate --run RUN --prompt "Once upon a time"`.
"""


def card_for_run(run_dir: Path, payload: dict, meta: dict | None) -> dict:
    """The card dict of a finished run: model.pt's identity, metrics.json, eval.json (when present) and
    the data folder's meta.json (when present). No machine-local path goes into it."""
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    ev = read_json(run_dir / "eval.json") if (run_dir / "eval.json").exists() else {}
    meta = meta or {}
    source = meta.get("source")
    if source and source.startswith("local:"):
        source = "local text files (identified by the digests above)"
    card = {k: payload.get(k, metrics.get(k)) for k in ("variant", "size", "seed")}
    card |= {k: metrics.get(k) for k in ("profile", "n_params", "steps", "tokens")}
    card |= {k: ev.get(k) for k in ("val_loss", "val_ppl", "val_bpb", "val_tokens")}
    card |= {"tokenizer_sha256": payload.get("tokenizer_sha256") or meta.get("tokenizer_sha256"),
             "train_text_sha256": meta.get("train", {}).get("text_sha256"),
             "valid_text_sha256": meta.get("valid", {}).get("text_sha256"), "data_source": source}
    return card


def export(run_dir: Path, data: str | None = None, out: str | Path | None = None) -> Path:
    """Write the model folder of a finished run (default RUN/hf); returns its path."""
    from ncn.data import load_meta
    from ncn.model import load_model
    from ncn.runs import check_data_matches, data_dir_of, require_finished

    run_dir = Path(run_dir)
    require_finished(run_dir)
    model, payload = load_model(run_dir / "model.pt")
    data_dir = data_dir_of(run_dir, data)
    meta = None
    if (data_dir / "meta.json").exists():
        meta = load_meta(data_dir)
        check_data_matches(payload, meta, run_dir / "model.pt", data_dir)
    tokenizer = data_dir / TOKENIZER
    return save_pretrained(model, Path(out) if out else run_dir / "hf", card_for_run(run_dir, payload, meta),
                           tokenizer if tokenizer.is_file() else None)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="ncn export",
        description="Write a finished run as a Hugging Face-style model folder (default RUN/hf): "
        "model.safetensors, config.json (the ModelConfig), tokenizer.json and a README.md model card "
        "(variant, size, data digests, validation loss from RUN/eval.json when present). Load it with "
        "Transformer.from_pretrained(folder).",
    )
    p.add_argument("--run", required=True, help="a finished run folder")
    p.add_argument("--data", help="tokenized data folder, for the tokenizer and digests (default: the run's)")
    p.add_argument("--out", help="the model folder to write (default: RUN/hf)")
    a = p.parse_args(argv)
    folder = export(Path(a.run), a.data, a.out)
    print(f"{a.run}: wrote {folder}/ ({WEIGHTS}, {CONFIG}, {CARD})")
    return 0
