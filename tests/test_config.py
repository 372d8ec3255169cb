from pathlib import Path

import pytest
import yaml

from ncn.config import load_config, model_config
from ncn.errors import NCNError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["smoke", "default", "paper", "cpu-trunk"])
def test_profiles_validate(name):
    path = ROOT / "config" / f"{name}.yaml"
    if not path.exists():
        pytest.skip(f"{path.name} not written yet")
    cfg = load_config(path)
    assert cfg["profile"] == name
    assert cfg["train"]["grad_clip"] == 1.0 or name == "paper"


def test_cpu_trunk_and_paper_profiles_say_what_their_comments_say():
    """cpu-trunk is the original's non-embedding shape on CPU; paper uses the original's optimizer."""
    t = load_config(ROOT / "config" / "cpu-trunk.yaml")
    assert t["variants"] == ["none", "causal", "asrun"] and len(t["seeds"]) == 3 and t["sizes"] == ["trunk"]
    shape = {k: t["size_defs"]["trunk"][k] for k in ("d_model", "n_layer", "n_head", "d_ff", "block_size")}
    assert shape == {"d_model": 256, "n_layer": 6, "n_head": 8, "d_ff": 1024, "block_size": 256}
    assert (t["tokenizer"]["kind"], t["tokenizer"]["vocab_size"], t["model"]["dropout"]) == ("bpe", 4096, 0.1)
    assert t["train"]["tokens"] is None and t["train"]["epochs"] >= 2
    p = load_config(ROOT / "config" / "paper.yaml")
    assert (p["train"]["beta1"], p["train"]["beta2"], p["train"]["min_lr"]) == (0.9, 0.999, 0.0)
    assert p["train"]["decay_all"] is True and p["data"]["heldout_fraction"] == 0.05


def _write(tmp_path, cfg):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _base():
    return yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())


def test_unknown_key_is_named(tmp_path):
    cfg = _base()
    cfg["train"]["lrr"] = 1
    with pytest.raises(NCNError, match="lrr"):
        load_config(_write(tmp_path, cfg))


def test_wrong_type_is_named(tmp_path):
    cfg = _base()
    cfg["train"]["micro_batch"] = "many"
    with pytest.raises(NCNError, match="train.micro_batch"):
        load_config(_write(tmp_path, cfg))


def test_unknown_variant_and_size(tmp_path):
    cfg = _base()
    cfg["variants"] = ["causal", "bogus"]
    with pytest.raises(NCNError, match="bogus"):
        load_config(_write(tmp_path, cfg))
    cfg = _base()
    cfg["sizes"] = ["xs", "huge"]
    with pytest.raises(NCNError, match="huge"):
        load_config(_write(tmp_path, cfg))


def test_defaults_filled(tmp_path):
    cfg = load_config(_write(tmp_path, _base()))
    assert cfg["model"]["reg_lambda"] == 0.01
    assert cfg["mlflow"]["enabled"] is True
    assert cfg["mlflow"]["tracking_uri"] is None  # ncn.tracking.store_uri: results/<profile>/mlflow.db


FIDELITY = {"dropout_layout": "original", "ncn_after_dropout": True, "pool_bias": True}


def test_fidelity_options_default_off_and_paper_turns_them_on():
    """The model-side fidelity options (issue 13 item 7): off in every CPU profile (their models are
    those of before), on in paper.yaml, and they reach every variant's ModelConfig."""
    for name in ("smoke", "default", "cpu-trunk"):
        m = load_config(ROOT / "config" / f"{name}.yaml")["model"]
        assert (m["dropout_layout"], m["ncn_after_dropout"], m["pool_bias"]) == ("single", False, False), name
    p = load_config(ROOT / "config" / "paper.yaml")
    assert {k: p["model"][k] for k in FIDELITY} == FIDELITY
    for variant in p["variants"]:
        mc = model_config(p, variant, "paper18m", vocab_size=50257)
        assert {k: getattr(mc, k) for k in FIDELITY} == FIDELITY


def test_bad_dropout_layout_is_named(tmp_path):
    cfg = _base()
    cfg["model"] = {**cfg.get("model", {}), "dropout_layout": "twice"}
    with pytest.raises(NCNError, match="dropout_layout"):
        load_config(_write(tmp_path, cfg))


def test_compile_mode_defaults_and_is_checked(tmp_path):
    assert load_config(_write(tmp_path, _base()))["train"]["compile_mode"] == "default"
    cfg = _base()
    cfg["train"]["compile_mode"] = "graphs"
    with pytest.raises(NCNError, match="train.compile_mode"):
        load_config(_write(tmp_path, cfg))


# ---- the YAML loader and the validation memo (ncn.config.load_config) --------------------------


@pytest.mark.parametrize("name", ["smoke", "default", "paper", "cpu-trunk"])
def test_fast_yaml_loader_reads_what_safe_load_reads(name):
    from ncn.config import SCHEMA_PATH, yaml_load

    for path in (ROOT / "config" / f"{name}.yaml", SCHEMA_PATH):
        assert yaml_load(path.read_bytes()) == yaml.safe_load(path.read_text())


def test_memo_gives_what_validation_gives_in_the_same_key_order(tmp_path, monkeypatch):
    import ncn.config as C

    monkeypatch.setenv("NCN_CACHE_DIR", str(tmp_path / "cache"))
    path = ROOT / "config" / "smoke.yaml"
    fresh = load_config(path)  # validated, then stored
    memo = list((tmp_path / "cache" / "configs").glob("*.json"))
    assert len(memo) == 1
    monkeypatch.setattr(C, "validate", lambda *a, **k: pytest.fail("validated again despite the memo"))
    again = load_config(path)
    assert again == fresh and list(again) == list(fresh)
    assert list(again["size_defs"]) == list(fresh["size_defs"])
    from ncn.stages import config_slice

    assert load_config(path, stage="train") == config_slice(fresh, "train")


def test_memo_never_lets_a_changed_config_skip_validation(tmp_path, monkeypatch):
    """Known answers both ways: a valid config is stored; the same file made invalid is rejected,
    the same bytes with other overrides are validated anew, and invalid configs are never stored."""
    import ncn.config as C

    monkeypatch.setenv("NCN_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _base()
    p = _write(tmp_path, cfg)
    assert load_config(p)["train"]["micro_batch"] == cfg["train"]["micro_batch"]
    with pytest.raises(NCNError, match="train.micro_batch"):
        load_config(p, overrides={"train": {"micro_batch": "many"}})
    cfg["train"]["micro_batch"] = "many"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(NCNError, match="train.micro_batch"):
        load_config(p)
    assert len(list((tmp_path / "cache" / "configs").glob("*.json"))) == 1  # only the valid one
    calls = []
    real = C.validate
    monkeypatch.setattr(C, "validate", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg["train"]["micro_batch"] = 2
    p.write_text(yaml.safe_dump(cfg))
    load_config(p)
    load_config(p)
    assert calls == [1]  # a new valid content: validated once, then read back


def test_memo_key_covers_schema_and_registry(tmp_path, monkeypatch):
    import ncn.config as C
    from ncn import variants

    monkeypatch.setenv("NCN_CACHE_DIR", str(tmp_path / "cache"))
    raw = (ROOT / "config" / "smoke.yaml").read_bytes()
    key = C._memo_path(raw, None)
    assert key == C._memo_path(raw, None) and key != C._memo_path(raw, {"seeds": [0]})
    monkeypatch.setitem(variants.REGISTRY, "extra", variants.REGISTRY["causal"])
    assert C._memo_path(raw, None) != key
    monkeypatch.delitem(variants.REGISTRY, "extra")
    schema = tmp_path / "schema.yaml"
    schema.write_bytes(C.SCHEMA_PATH.read_bytes() + b"\n# another schema\n")
    monkeypatch.setattr(C, "SCHEMA_PATH", schema)
    assert C._memo_path(raw, None) != key


def test_memo_off_torn_or_unwritable_falls_back_to_validation(tmp_path, monkeypatch):
    import ncn.config as C

    path = ROOT / "config" / "smoke.yaml"
    monkeypatch.setenv("NCN_CACHE_DIR", "off")
    assert C._memo_path(path.read_bytes(), None) is None and load_config(path)["profile"] == "smoke"
    monkeypatch.setenv("NCN_CACHE_DIR", str(tmp_path / "cache"))
    memo = C._memo_path(path.read_bytes(), None)
    memo.parent.mkdir(parents=True)
    memo.write_text('{"profile": "sm')  # torn
    assert load_config(path)["profile"] == "smoke"
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("NCN_CACHE_DIR", str(blocker))  # a file where the folder should be
    assert load_config(path)["profile"] == "smoke"
