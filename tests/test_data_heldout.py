"""The held-out tail of the train excerpt: split by position, and never inside a training window.

The check is by bytes and positions, not by looking for the held-out text in the batches: the
source is exactly train.txt followed by heldout.txt, train.bin is exactly the stories of
train.txt, and every window the trainer feeds (recorded from ncn.train's own get_windows call)
is a slice of train.bin that ends inside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from ncn.data import load_meta, open_split
from ncn.data.sources import n_heldout
from ncn.errors import NCNError
from test_data import _isolated, pipeline, stories, text_format, write_config, write_corpus  # noqa: F401
from test_train import run_train, tiny_config


def split_at_eot(ids: list[int], eot: int) -> list[list[int]]:
    out, cur = [], []
    for i in ids:
        if i == eot:
            out.append(cur)
            cur = []
        else:
            cur.append(i)
    return out + [cur]


@pytest.mark.parametrize("n, fraction, k", [(2, 0.05, 1), (10, 0.05, 1), (30, 0.05, 2), (2316, 0.05, 116),
                                            (40, 0.25, 10), (5, 0.99, 4)])
def test_n_heldout_known_answers(n, fraction, k):
    assert n_heldout(n, fraction) == k


def test_n_heldout_needs_two_stories():
    with pytest.raises(NCNError, match="needs at least 2"):
        n_heldout(1, 0.5, "x.txt")
    with pytest.raises(NCNError, match="x.txt holds no text"):
        n_heldout(0, 0.5, "x.txt")


def test_heldout_never_in_a_training_window(tmp_path, monkeypatch):
    import ncn.train

    train = stories(40, seed=21)
    src = write_corpus(tmp_path / "src", train, stories(5, seed=22))
    monkeypatch.setenv("NCN_DATA_DIR", str(src))
    cfg = write_config(tmp_path / "c.yaml", data={"heldout_fraction": 0.25})
    out = pipeline(tmp_path, cfg, tmp_path / "data")
    kept, held = train[:30], train[30:]  # 40 x 0.25 = 10 held out

    # bytes: the split is at a story boundary and loses nothing
    assert (out / "train.txt").read_bytes() + (out / "heldout.txt").read_bytes() == (src / "train.txt").read_bytes()
    assert (out / "heldout.txt").read_text() == text_format(held)

    # positions: train.bin is exactly the kept stories, heldout.bin exactly the held-out ones
    meta = load_meta(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    eot = meta["eot_id"]
    train_ids = open_split(out, "train", meta)
    for split, expected in (("train", kept), ("heldout", held)):
        segments = split_at_eot(open_split(out, split, meta).tolist(), eot)
        assert [tok.decode(s) for s in segments] == expected, split
    assert meta["train"]["tokens"] == len(train_ids) and meta["train"]["stories"] == 30

    # training: every window ncn.train feeds is a slice of train.bin ending inside it
    fed = []
    real = ncn.train.get_windows

    def spy(tokens, idx, block_size):
        x, y = real(tokens, idx, block_size)
        fed.append((tokens, idx.clone(), x, y))
        return x, y

    monkeypatch.setattr(ncn.train, "get_windows", spy)
    T = 16
    run_cfg = tiny_config(tmp_path, train={"tokens": None, "epochs": 2.5, "micro_batch": 4, "ckpt_every": 1000})
    run_train(run_cfg, tmp_path / "run", out, variant="none")
    assert fed
    seen = set()
    for tokens, idx, x, y in fed:
        assert Path(tokens.filename).name == "train.bin"
        assert len(tokens) == meta["train"]["tokens"]
        for k, xr, yr in zip(idx.tolist(), x.tolist(), y.tolist()):
            assert 0 <= k and k * T + T + 1 <= len(train_ids)  # inside train.bin: never past its end
            assert xr == train_ids[k * T : k * T + T].tolist() and yr == train_ids[k * T + 1 : k * T + T + 1].tolist()
            seen.add(k)
    n_win = (len(train_ids) - 1) // T
    assert seen == set(range(n_win))  # 2.5 epochs: every window, and only those
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == pytest.approx(2.5, rel=0.05)
    assert np.isfinite(metrics["final_loss"])
