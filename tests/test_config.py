from pathlib import Path

import pytest
import yaml

from ncn.config import load_config, model_config
from ncn.errors import NCNError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["smoke", "default", "paper"])
def test_profiles_validate(name):
    path = ROOT / "config" / f"{name}.yaml"
    if not path.exists():
        pytest.skip(f"{path.name} not written yet")
    cfg = load_config(path)
    assert cfg["profile"] == name
    assert cfg["train"]["grad_clip"] == 1.0 or name == "paper"


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
