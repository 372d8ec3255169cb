"""Hugging Face-style model folders: bitwise round trip, `ncn export` of a run, its card, refusals."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from ncn.errors import NCNError
from ncn.variants import names as _variant_names
from ncn.model import ModelConfig, Transformer, load_model
from test_train import make_data, run_train, tiny_config

torch.set_num_threads(1)


def trained_like(variant: str) -> Transformer:
    """A random model with every parameter moved off its init (biases and NCN weights included)."""
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, d_model=16, d_ff=32, ncn=variant, ncn_hidden=8)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("variant", _variant_names())
def test_round_trip_gives_bitwise_identical_logits(variant, tmp_path):
    model = trained_like(variant)
    model.save_pretrained(tmp_path / "hf", {"variant": variant, "size": "t", "seed": 0})
    back = Transformer.from_pretrained(tmp_path / "hf")
    assert not back.training and back.cfg == model.cfg
    assert back.lm_head.weight is back.tok_emb.weight  # still tied
    x = torch.randint(0, 50, (3, 8))
    with torch.no_grad():
        assert torch.equal(back(x).logits, model(x).logits)
    sd, sd2 = model.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    # a fresh model of the same config does not match: the test compares something
    with torch.no_grad():
        assert not torch.equal(Transformer(model.cfg).eval()(x).logits, model(x).logits)


def test_folder_files_and_config(tmp_path):
    from safetensors import safe_open

    model = trained_like("causal")
    model.save_pretrained(tmp_path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "ncn" and cfg["architectures"] == ["Transformer"] and cfg["torch_dtype"] == "float32"
    assert {k: cfg[k] for k in ("ncn", "d_model", "n_layer", "block_size", "vocab_size")} == {
        "ncn": "causal", "d_model": 16, "n_layer": 2, "block_size": 8, "vocab_size": 50}
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
    assert "tok_emb.weight" in keys and "lm_head.weight" not in keys  # the tied matrix is stored once


def test_broken_folders_are_refused(tmp_path):
    with pytest.raises(NCNError, match=r"config.json not found: a model folder holds config.json and model.safetensors"):
        Transformer.from_pretrained(tmp_path / "nothing")
    trained_like("causal").save_pretrained(tmp_path / "a", {})
    cfg_path = tmp_path / "a" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "flux_capacitor": 1}))
    with pytest.raises(NCNError, match=r"unknown keys \['flux_capacitor'\]"):
        Transformer.from_pretrained(tmp_path / "a")
    cfg_path.write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(NCNError, match="model_type is 'gpt2', not 'ncn'"):
        Transformer.from_pretrained(tmp_path / "a")
    cfg_path.write_text(json.dumps({**cfg, "d_ff": 48}))
    with pytest.raises(NCNError, match="model.safetensors is damaged or does not fit"):
        Transformer.from_pretrained(tmp_path / "a")
    cfg_path.write_text(json.dumps(cfg))
    weights = tmp_path / "a" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    with pytest.raises(NCNError, match="model.safetensors is damaged or does not fit"):
        Transformer.from_pretrained(tmp_path / "a")


# ---- `ncn export` of a finished run ------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from ncn.evaluate import evaluate
    from ncn.fileio import read_json, write_json

    tmp = tmp_path_factory.mktemp("hub")
    data = make_data(tmp / "data")
    meta = read_json(data / "meta.json")  # the digests `ncn data tokenize` records
    meta["train"]["text_sha256"], meta["valid"]["text_sha256"] = "a" * 64, "b" * 64
    meta["source"] = f"local:{tmp}/corpus"
    write_json(data / "meta.json", meta)
    run_train(tiny_config(tmp), tmp / "run", data)
    return SimpleNamespace(tmp=tmp, dir=tmp / "run", data=data, meta=meta, eval=evaluate(tmp / "run"))


def test_export_writes_a_loadable_folder_with_its_card(run, capsys):
    from ncn.cli import main

    assert main(["export", "--run", str(run.dir)]) == 0
    hf = run.dir / "hf"
    assert sorted(p.name for p in hf.iterdir()) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert (hf / "tokenizer.json").read_bytes() == (run.data / "tokenizer.json").read_bytes()
    model, payload = load_model(run.dir / "model.pt")
    back = Transformer.from_pretrained(hf)
    x = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.block_size))
    with torch.no_grad():
        assert torch.equal(back(x).logits, model(x).logits)
    card = (hf / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: pytorch\n")
    for want in ("# NCN causal-xs-s0", "| variant | `causal` |", "| size | xs: 2 layers, d_model 32", "| seed | 0 |",
                 f"| validation loss | {run.eval['val_loss']:.4f} nats/token", f"`{payload['tokenizer_sha256']}`",
                 "| train text sha256 | `" + "a" * 64, "| valid text sha256 | `" + "b" * 64, "profile `testprof`",
                 "local text files", 'Transformer.from_pretrained("path/to/this/folder")'):
        assert want in card, want
    assert str(run.tmp) not in card, "a machine-local path in the card"
    # reruns are byte-identical
    before = {p.name: p.read_bytes() for p in hf.iterdir()}
    assert main(["export", "--run", str(run.dir)]) == 0
    assert {p.name: p.read_bytes() for p in hf.iterdir()} == before


def test_card_without_evaluation_says_so(run, tmp_path):
    from ncn.hub import export

    bare = tmp_path / "bare"
    shutil.copytree(run.dir, bare, ignore=shutil.ignore_patterns("eval.json", "hf"))
    folder = export(bare, data=str(run.data), out=tmp_path / "out")
    assert "| validation loss | n/a (not evaluated" in (folder / "README.md").read_text()


def test_export_refuses_an_unfinished_run(tmp_path, capsys):
    from ncn.cli import main

    (tmp_path / "half").mkdir()
    assert main(["export", "--run", str(tmp_path / "half")]) == 2
    assert "is not finished" in capsys.readouterr().err


def test_evaluate_export_writes_the_same_folder_as_ncn_export(run, tmp_path):
    """The pipeline's evaluate job writes RUN/hf in the same process (`--export`): the same bytes as
    `ncn export`, with the card quoting the eval.json it has just written."""
    from ncn.cli import main

    assert main(["export", "--run", str(run.dir), "--out", str(tmp_path / "by_export")]) == 0
    assert main(["evaluate", "--run", str(run.dir), "--export", str(tmp_path / "by_evaluate")]) == 0
    a = {p.name: p.read_bytes() for p in (tmp_path / "by_export").iterdir()}
    b = {p.name: p.read_bytes() for p in (tmp_path / "by_evaluate").iterdir()}
    assert sorted(a) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"] and a == b
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(run.dir), "--export", str(tmp_path / "x"), "--kv-bits", "8", "--out",
              str(tmp_path / "e.json")])
