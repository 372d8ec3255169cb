"""Each command reads only the config keys its stage declares (ncn.stages.READS), and the rules'
rerun triggers are built from the same lists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ncn import stages
from ncn.analysis.cli import ANALYSES
from ncn.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg():
    return load_config(REPO / "config" / "smoke.yaml")


def test_slice_keeps_only_the_listed_keys(cfg):
    s = stages.config_slice(cfg, "analyze.ab")
    assert set(s) == {"analysis", "variant_seeds", "variants", "sizes", "seeds", "size_defs"}
    assert s["analysis"] == {"confidence": cfg["analysis"]["confidence"]}  # a dotted key: a sub-dict
    assert s.resolved is cfg and s.stage == "analyze.ab"


def test_reading_an_unlisted_key_fails(cfg):
    s = stages.config_slice(cfg, "data.fetch")
    assert s["data"] == cfg["data"]
    with pytest.raises(KeyError, match=r"not in ncn.stages.READS\['data.fetch'\]"):
        s["train"]
    with pytest.raises(KeyError):
        stages.config_slice(cfg, "evaluate")["train"]["lr"]  # only train.device is listed


def test_load_config_with_a_stage_returns_its_slice(tmp_path):
    s = load_config(REPO / "config" / "smoke.yaml", stage="train")
    assert set(s) == set(stages.reads("train"))
    with pytest.raises(Exception, match="no config-key list"):
        load_config(REPO / "config" / "smoke.yaml", stage="no-such-stage")


def test_trigger_changes_only_with_what_the_stage_reads(cfg):
    before = stages.trigger(cfg, "analyze.ab")
    other = json.loads(json.dumps(cfg))
    other["analysis"]["skip_eps"] = [0.1]  # read by skip, not by ab
    assert stages.trigger(other, "analyze.ab") == before
    assert stages.trigger(other, "analyze.skip") != stages.trigger(cfg, "analyze.skip")
    other["analysis"]["confidence"] = 0.9
    assert stages.trigger(other, "analyze.ab") != before


def test_trigger_narrows_size_defs_to_the_job_size(cfg):
    a, b = list(cfg["size_defs"])[:2]
    other = json.loads(json.dumps(cfg))
    other["size_defs"][b]["d_ff"] += 1
    assert stages.trigger(other, "train", size=a) == stages.trigger(cfg, "train", size=a)
    assert stages.trigger(other, "train", size=b) != stages.trigger(cfg, "train", size=b)


@pytest.mark.source
def test_every_command_names_a_declared_stage():
    used = set()
    for p in (REPO / "src" / "ncn").rglob("*.py"):
        used |= set(re.findall(r'load_config\([^)]*stage="([^"{}]+)"', p.read_text()))
    from ncn.analysis.rows import MEASURES

    # `analyze runs` takes no config; `analyze rows X` reads the slice of the analysis X it measures
    used |= {f"analyze.{what}" for what in ANALYSES if what not in ("runs", "rows")}
    used |= {f"analyze.{what}" for what in MEASURES}
    missing = sorted(u for u in used if u not in stages.READS)
    assert not missing, f"stages without a READS entry: {missing}"


def test_rules_build_their_triggers_from_the_stage_lists():
    """No rule spells its own list of config keys: every `params: cfg=` goes through trigger()."""
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for line in smk.read_text().splitlines():
            m = re.match(r"\s+cfg=(.*)", line)
            if m:
                assert "trigger(" in m.group(1), f"{smk.name}: {line.strip()}"


@pytest.mark.parametrize("key, value", [("dropout_layout", "original"), ("ncn_after_dropout", True),
                                        ("pool_bias", True)])
def test_fidelity_options_reach_training_and_its_trigger(cfg, key, value):
    """Each model-side fidelity option is in the train stage's slice and reruns training when it
    changes (and every stage that checks a loaded model's shape), not the data stages."""
    assert stages.config_slice(cfg, "train")["model"][key] == cfg["model"][key]
    other = json.loads(json.dumps(cfg))
    other["model"][key] = value
    for stage in ("train", "evaluate", "analyze.skip"):
        assert stages.trigger(other, stage) != stages.trigger(cfg, stage)
    assert stages.trigger(other, "data.tokenize") == stages.trigger(cfg, "data.tokenize")
