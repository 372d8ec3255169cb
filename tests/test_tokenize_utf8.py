"""The bits-per-byte denominator on non-ASCII text: meta.json `bytes` is the number of UTF-8
bytes of the tokenized story text (len(text.encode())), not its number of characters.

Every story here holds multi-byte characters (é: 2 bytes, “ ” and —: 3, emoji: 4), so a count of
characters differs from the count of bytes in every split and every piece."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from tokenizers import Tokenizer

from ncn.data import load_meta, open_split
from ncn.data.textfile import iter_pieces
from test_data import make_story, pipeline, write_config, write_corpus

ACCENTED = ["Café", "naïve", "“Hello,” she said", "über — jolly", "🐉 dragon", "🔥", "smile 😀", "Zoë’s"]


def utf8_stories(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        story = make_story(rng, rng.randint(1, 3))
        lines = story.splitlines(keepends=True)
        lines[0] = f"{rng.choice(ACCENTED)} {lines[0]}"
        out.append("".join(lines[:-1]) + lines[-1].rstrip("\n") + f" {rng.choice(ACCENTED)}.\n")
    return out


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("NCN_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


def test_meta_bytes_are_utf8_bytes_of_the_story_text(tmp_path, monkeypatch):
    train, valid = utf8_stories(30, 1), utf8_stories(8, 2)
    for sts in (train, valid):  # the corpus really tells bytes from characters
        assert sum(len(s.encode("utf-8")) for s in sts) > sum(len(s) for s in sts)
    folder = write_corpus(tmp_path / "src", train, valid)
    monkeypatch.setenv("NCN_DATA_DIR", str(folder))
    out = pipeline(tmp_path, write_config(tmp_path / "c.yaml"), tmp_path / "out")
    meta = load_meta(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    eot = meta["eot_id"]
    k = meta["heldout"]["stories"]  # the data stage holds out the last k train stories
    assert 1 <= k < len(train)
    for split, sts in (("train", train[:-k]), ("heldout", train[-k:]), ("valid", valid)):
        assert meta[split]["bytes"] == sum(len(s.encode("utf-8")) for s in sts), split
        ids = open_split(out, split, meta).tolist()
        text = tok.decode([i for i in ids if i != eot])
        assert text == "".join(sts) and len(text.encode("utf-8")) == meta[split]["bytes"]


def test_stream_and_pieces_count_utf8_bytes(tmp_path, monkeypatch):
    """A separator-less validation stream, and stories cut into pieces of ~32 bytes: the bytes
    of the pieces add up to the UTF-8 size of the text, whatever the cut."""
    from ncn.data.tokenize import encode_file

    stream = "".join(utf8_stories(40, 3))
    train = utf8_stories(12, 4)
    folder = write_corpus(tmp_path / "src", train, stream)
    monkeypatch.setenv("NCN_DATA_DIR", str(folder))
    out = pipeline(tmp_path, write_config(tmp_path / "c.yaml"), tmp_path / "out")
    meta = load_meta(out)
    assert meta["valid"]["stories"] is None
    assert meta["valid"]["bytes"] == len(stream.encode("utf-8")) > len(stream)

    pieces = list(iter_pieces(out / "valid.txt", chunk_bytes=32))
    assert len(pieces) > 10
    for text, n, _ in pieces:
        assert n == len(text.encode("utf-8"))
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.encode_special_tokens = True
    buf = io.BytesIO()
    counts = encode_file(tok, out / "train.txt", buf, "uint16", meta["eot_id"], True, batch_size=5, chunk_bytes=32)
    kept = train[: len(train) - meta["heldout"]["stories"]]  # the last stories are held out
    assert counts["bytes"] == sum(len(s.encode("utf-8")) for s in kept) == meta["train"]["bytes"]
    assert np.frombuffer(buf.getvalue(), dtype=np.uint16).tolist() == open_split(out, "train", meta).tolist()
