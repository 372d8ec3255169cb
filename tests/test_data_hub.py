"""The hub path of `ncn data fetch`, without the network.

`datasets.load_dataset` accepts a local folder where it takes a hub id, and reads it through
the same streaming code; pointing data.hub_name at a folder the test writes exercises exactly
the code a user with network runs. The offline failure is tested against the real hub id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ncn.cli import main
from ncn.data import load_meta
from test_data import pipeline, stories, text_format, write_config


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("NCN_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def hub_folder(tmp_path):
    """A local stand-in for roneneldan/TinyStories with the V2 file names."""
    folder = tmp_path / "hub"
    folder.mkdir()
    train, valid = stories(20, seed=7), stories(4, seed=8)
    (folder / "TinyStoriesV2-GPT4-train.txt").write_text(text_format(train))
    (folder / "TinyStoriesV2-GPT4-valid.txt").write_text(text_format(valid))
    return folder, train, valid


def test_hub_streaming_with_cap(tmp_path, hub_folder):
    folder, train, valid = hub_folder
    cfg = write_config(tmp_path / "c.yaml", data={"source": "hub", "hub_name": str(folder), "max_train_stories": 6})
    out = pipeline(tmp_path, cfg, tmp_path / "out")
    # the capped excerpt's last story (5% of 6, at least one) is held out
    assert (out / "train.txt").read_text() == text_format(train[:5])
    assert (out / "heldout.txt").read_text() == text_format(train[5:6])
    assert (out / "valid.txt").read_text() == text_format(valid)
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"] == f"hub:{folder}" and m["train"]["from"] == "TinyStoriesV2-GPT4-train.txt"
    assert (m["train"]["stories"], m["heldout"]["stories"], m["valid"]["stories"]) == (5, 1, 4)
    assert m["train_all"]["stories"] == 6
    assert load_meta(out)["train"]["stories"] == 5
    assert not any(p.name.startswith(".fetch.") for p in out.iterdir())  # the scratch copy is gone
    # a byte cap stops at a story boundary too
    cap = len(text_format(train[:3]).encode()) + 1
    cfg = write_config(tmp_path / "c2.yaml", data={"source": "hub", "hub_name": str(folder), "max_train_bytes": cap})
    assert main(["data", "fetch", "--config", str(cfg), "--out", str(out)]) == 0
    assert (out / "train.txt").read_text() + (out / "heldout.txt").read_text() == text_format(train[:3])


def test_auto_falls_back_to_hub_and_reads_records(tmp_path):
    """data.source auto, no NCN_DATA_DIR, an empty data.dir: the hub; parquet records work too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "hub"
    (folder / "data").mkdir(parents=True)
    train, valid = stories(8, seed=1), stories(3, seed=2)
    pq.write_table(pa.table({"text": [s.rstrip("\n") for s in train]}), folder / "data" / "train.parquet")
    pq.write_table(pa.table({"text": [s.rstrip("\n") for s in valid]}), folder / "data" / "valid.parquet")
    (tmp_path / "empty").mkdir()
    cfg = write_config(
        tmp_path / "c.yaml",
        data={
            "dir": str(tmp_path / "empty"),
            "hub_name": str(folder),
            "hub_train_file": "data/train.parquet",
            "hub_valid_file": "data/valid.parquet",
        },
    )
    assert main(["data", "fetch", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert (out / "train.txt").read_text() + (out / "heldout.txt").read_text() == text_format(train)
    assert (tmp_path / "out" / "valid.txt").read_text() == text_format(valid)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["source"] == f"hub:{folder}"


def test_offline_hub_gives_one_clear_error(tmp_path):
    """HF_HUB_OFFLINE=1 with the real hub id: one line naming the three ways, exit 2.
    (A subprocess: the offline switch is read when huggingface_hub is imported.)"""
    cfg = write_config(tmp_path / "c.yaml", data={"source": "hub"})  # hub_name: roneneldan/TinyStories
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("NCN_DATA_DIR", None)
    r = subprocess.run(
        [sys.executable, "-m", "ncn.cli", "data", "fetch", "--config", str(cfg), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("ncn data: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    msg = lines[0]
    assert "roneneldan/TinyStories" in msg and "TinyStoriesV2-GPT4-train.txt" in msg
    assert "NCN_DATA_DIR" in msg and "data.dir" in msg and "network" in msg
    assert not (tmp_path / "out" / "train.txt").exists() and not (tmp_path / "out" / "manifest.json").exists()
