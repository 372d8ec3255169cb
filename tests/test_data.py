"""The data stage on small corpora the tests write: fetch, tokenizer, tokenize, their errors."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from tokenizers import Tokenizer

from ncn.cli import main
from ncn.data import load_meta, open_split
from ncn.data.textfile import EOT, iter_pieces
from ncn.errors import NCNError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

WORDS = (
    "once upon a time there was little girl named Lily she loved to play with her red ball in the park "
    "one day Tom saw big dog and said hello they were happy friends forever the end sun tree bird"
).split()


def make_story(rng: random.Random, n_par: int = 2) -> str:
    """A story in the TinyStories style: paragraphs of sentences, each paragraph one line."""
    pars = []
    for _ in range(n_par):
        sents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + "." for _ in range(3)]
        pars.append(" ".join(sents))
    return "\n".join(pars) + "\n"


def stories(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [make_story(rng, rng.randint(1, 3)) for _ in range(n)]


def text_format(sts: list[str]) -> str:
    return "".join(s + EOT + "\n" for s in sts)


def write_corpus(folder: Path, train: list[str], valid: list[str] | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text(text_format(train), encoding="utf-8")
    (folder / "valid.txt").write_text(valid if isinstance(valid, str) else text_format(valid), encoding="utf-8")
    return folder


def write_config(path: Path, **sections) -> Path:
    cfg = {
        "profile": "test",
        "variants": ["none"],
        "sizes": ["xs"],
        "seeds": [0],
        "size_defs": {"xs": {"d_model": 16, "n_layer": 1, "n_head": 2, "d_ff": 32, "block_size": 16}},
        "data": {"dir": str(path.parent / "no-such-dir")},
        "tokenizer": {"kind": "bpe", "vocab_size": 300},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No NCN_DATA_DIR from the caller (make exports one), relative paths inside tmp_path."""
    monkeypatch.delenv("NCN_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


def run_ok(*argv: str) -> None:
    rc = main(["data", *argv])
    assert rc == 0


def run_err(capsys, *argv: str) -> str:
    capsys.readouterr()
    rc = main(["data", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("ncn data: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def pipeline(tmp_path: Path, cfg: Path, out: Path, *tokenize_args: str) -> Path:
    run_ok("fetch", "--config", str(cfg), "--out", str(out))
    run_ok("tokenizer", "--config", str(cfg), "--data", str(out), "--out", str(out / "tokenizer.json"))
    run_ok(
        "tokenize", "--config", str(cfg), "--data", str(out), "--tokenizer", str(out / "tokenizer.json"),
        "--out", str(out), *tokenize_args,
    )  # fmt: skip
    return out


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """30 train stories, 8 validation stories in a folder given by NCN_DATA_DIR."""
    train, valid = stories(30, seed=1), stories(8, seed=2)
    folder = write_corpus(tmp_path / "src", train, valid)
    monkeypatch.setenv("NCN_DATA_DIR", str(folder))
    return train, valid


# ----------------------------------------------------------------------------- the happy path


def test_pipeline_bins_equal_direct_encoding(tmp_path, corpus):
    train, valid = corpus
    out = pipeline(tmp_path, write_config(tmp_path / "c.yaml"), tmp_path / "out")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    meta = load_meta(out)
    eot = tok.token_to_id(EOT)
    assert meta["eot_id"] == eot == 0 and meta["dtype"] == "uint16" and meta["tokenizer_kind"] == "bpe"
    assert meta["vocab_size"] == tok.get_vocab_size() <= 300
    # 30 train stories, the default heldout_fraction 0.05: round(1.5) = 2 held out
    for split, sts in (("train", train[:28]), ("heldout", train[28:]), ("valid", valid)):
        expected: list[int] = []
        for i, s in enumerate(sts):
            expected += ([eot] if i else []) + tok.encode(s, add_special_tokens=False).ids
        got = open_split(out, split, meta)
        assert got.tolist() == expected
        m = meta[split]
        assert (m["tokens"], m["stories"]) == (len(expected), len(sts))
        # bytes: the story text incl. newlines, without the separator lines; it is what the
        # non-EOT tokens decode to.
        assert m["bytes"] == sum(len(s.encode()) for s in sts)
        text = tok.decode([t for t in got.tolist() if t != eot])
        assert len(text.encode()) == m["bytes"] and text == "".join(sts)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == f"local:{tmp_path / 'src'}" and manifest["heldout_fraction"] == 0.05
    assert (manifest["train"]["stories"], manifest["heldout"]["stories"], manifest["train_all"]["stories"]) == (28, 2, 30)
    # the split is lossless: train.txt then heldout.txt is the source, whose sha256 train_all records
    source = (tmp_path / "src" / "train.txt").read_bytes()
    assert (out / "train.txt").read_bytes() + (out / "heldout.txt").read_bytes() == source
    assert manifest["train_all"]["sha256"] == hashlib.sha256(source).hexdigest()
    assert manifest["train_all"]["bytes"] == len(source)
    assert manifest["valid"]["verbatim"] is True
    assert (out / "valid.txt").stat().st_ino != (tmp_path / "src" / "valid.txt").stat().st_ino  # a copy


def test_big_files_are_hard_linked(tmp_path, corpus, monkeypatch):
    import ncn.data.sources

    monkeypatch.setattr(ncn.data.sources, "LINK_MIN_BYTES", 0)  # every file counts as big
    out = tmp_path / "out"
    run_ok("fetch", "--config", str(write_config(tmp_path / "c.yaml")), "--out", str(out))
    assert (out / "valid.txt").stat().st_ino == (tmp_path / "src" / "valid.txt").stat().st_ino
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["valid"]["sha256"] == hashlib.sha256((tmp_path / "src" / "valid.txt").read_bytes()).hexdigest()
    # train.txt is always rewritten (its tail goes to heldout.txt): never a link to the source
    assert (out / "train.txt").stat().st_ino != (tmp_path / "src" / "train.txt").stat().st_ino


def test_roundtrip_decode_encode(tmp_path, corpus):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml")
    run_ok("fetch", "--config", str(cfg), "--out", str(out))
    run_ok("tokenizer", "--config", str(cfg), "--data", str(out), "--out", str(out / "tok.json"))
    tok = Tokenizer.from_file(str(out / "tok.json"))
    texts = [
        corpus[0][0],
        "Héllo wörld — naïve café, 日本語, emoji 🐉🔥 and Ω≈ç√.",
        "  leading and trailing spaces  \n\n\ttabs\r\nCRLF\n",
        "unseen bytes \x00\x01\x7f and a lone \u2028 line separator",
        "",
    ]
    for t in texts:
        assert tok.decode(tok.encode(t).ids) == t


def test_reruns_are_byte_identical(tmp_path, corpus):
    cfg = write_config(tmp_path / "c.yaml", data={"max_train_stories": 25})
    a = pipeline(tmp_path, cfg, tmp_path / "a")
    b = pipeline(tmp_path, cfg, tmp_path / "b")
    names = ["train.txt", "heldout.txt", "valid.txt", "manifest.json", "tokenizer.json", "train.bin", "heldout.bin",
             "valid.bin", "meta.json"]
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # and a rerun in place changes nothing either
    before = {n: (a / n).read_bytes() for n in names}
    pipeline(tmp_path, cfg, a)
    assert {n: (a / n).read_bytes() for n in names} == before


def test_stream_validation_and_chunking_match_whole_encoding(tmp_path, monkeypatch):
    """A validation file without separators is one stream (stories: null, no EOT); cutting it
    into pieces for encode_batch must not change a single id, whatever the whitespace."""
    rng = random.Random(5)
    lines = []
    for _ in range(300):  # paragraphs with the awkward whitespace real files have
        lines.append(make_story(rng, 1).rstrip("\n") + rng.choice(["\n", " \n", "\n\n", "\r\n", "  \n\n", "\n \n"]))
    stream = "".join(lines)
    folder = write_corpus(tmp_path / "src", stories(20), stream)
    monkeypatch.setenv("NCN_DATA_DIR", str(folder))
    cfg = write_config(tmp_path / "c.yaml")
    out = pipeline(tmp_path, cfg, tmp_path / "out")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    whole = tok.encode(stream, add_special_tokens=False).ids
    meta = load_meta(out)
    assert meta["valid"]["stories"] is None and meta["valid"]["bytes"] == len(stream.encode())
    assert open_split(out, "valid", meta).tolist() == whole
    pieces = list(iter_pieces(out / "valid.txt", chunk_bytes=64))
    assert len(pieces) > 20 and "".join(p for p, _, _ in pieces) == stream
    assert sum(n for _, n, _ in pieces) == len(stream.encode())
    enc = tok.encode_batch([p for p, _, _ in pieces], add_special_tokens=False)
    assert [i for e in enc for i in e.ids] == whole


def test_eot_only_between_stories(tmp_path, monkeypatch):
    """Long stories cut into several pieces, the literal text "<|endoftext|>" inside a story:
    still exactly one EOT id between consecutive stories and the text decodes back."""
    import io

    from ncn.data.tokenize import encode_file

    train = stories(10, seed=11)
    train[3] = "Tom wrote <|endoftext|> on the wall, then laughed.\n" + train[3]
    folder = write_corpus(tmp_path / "src", train, stories(3, 12))
    monkeypatch.setenv("NCN_DATA_DIR", str(folder))
    out = pipeline(tmp_path, write_config(tmp_path / "c.yaml"), tmp_path / "out")
    meta = load_meta(out)
    ids = open_split(out, "train", meta).tolist()
    eot = meta["eot_id"]
    kept = train[:9]  # 10 stories: the last one is held out
    assert ids.count(eot) == len(kept) - 1
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    segments = " ".join(map(str, ids)).split(f" {eot} ")
    assert [tok.decode([int(i) for i in seg.split()]) for seg in segments] == kept
    buf = io.BytesIO()  # pieces of at most ~32 bytes: same stream
    tok.encode_special_tokens = True
    counts = encode_file(tok, out / "train.txt", buf, "uint16", eot, True, batch_size=7, chunk_bytes=32)
    assert np.frombuffer(buf.getvalue(), dtype=np.uint16).tolist() == ids
    assert (counts["stories"], counts["bytes"], counts["tokens"]) == (9, meta["train"]["bytes"], len(ids))


def test_caps_cut_at_story_boundaries(tmp_path, corpus):
    train, _ = corpus
    out = tmp_path / "out"
    cap = len(text_format(train[:7]).encode()) + 5  # room for 7 stories and a bit, not for 8
    run_ok("fetch", "--config", str(write_config(tmp_path / "c.yaml", data={"max_train_bytes": cap})), "--out", str(out))
    # the cap applies to the excerpt; its tail (one story of 7) is then held out
    assert (out / "train.txt").read_text() == text_format(train[:6])
    assert (out / "heldout.txt").read_text() == text_format(train[6:7])
    m = json.loads((out / "manifest.json").read_text())
    assert (m["train"]["stories"], m["train_all"]["stories"]) == (6, 7) and m["train_all"]["bytes"] <= cap
    assert m["train"]["verbatim"] is False
    run_ok("fetch", "--config", str(write_config(tmp_path / "c2.yaml", data={"max_train_stories": 4})), "--out", str(out))
    assert (out / "train.txt").read_text() == text_format(train[:3])
    assert (out / "heldout.txt").read_text() == text_format(train[3:4])


def test_train_tail_split(tmp_path, corpus):
    """val_split train_tail: valid is the held-out tail again, and no validation file is read."""
    train, _ = corpus  # 30 stories
    (tmp_path / "src" / "valid.txt").unlink()
    cfg = write_config(tmp_path / "c.yaml", data={"val_split": "train_tail", "heldout_fraction": 0.1})
    out = pipeline(tmp_path, cfg, tmp_path / "out")
    assert (out / "train.txt").read_text() == text_format(train[:27])
    assert (out / "heldout.txt").read_text() == (out / "valid.txt").read_text() == text_format(train[27:])
    meta = load_meta(out)
    assert meta["val_split"] == "train_tail" and meta["valid"]["stories"] == 3 and meta["train"]["stories"] == 27
    assert meta["heldout"]["text_sha256"] == meta["valid"]["text_sha256"] and meta["heldout_fraction"] == 0.1
    assert (out / "heldout.bin").read_bytes() == (out / "valid.bin").read_bytes()
    # the tokenizer saw only the train part: training again on those 27 stories gives the same file
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "train.txt").write_text(text_format(train[:27]))
    run_ok("tokenizer", "--config", str(cfg), "--data", str(tmp_path / "only"), "--out", str(tmp_path / "t2.json"))
    assert (tmp_path / "t2.json").read_bytes() == (out / "tokenizer.json").read_bytes()


def test_jsonl_and_parquet_sources(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    train, valid = stories(12, seed=3), stories(5, seed=4)
    folder = tmp_path / "src"
    folder.mkdir()
    with open(folder / "train.jsonl", "w") as f:
        for s in train:
            f.write(json.dumps({"text": s.rstrip("\n"), "id": 1}) + "\n")  # records without the final newline
    pq.write_table(pa.table({"text": [s.rstrip("\n") for s in valid]}), folder / "validation.parquet")
    monkeypatch.setenv("NCN_DATA_DIR", str(folder))
    out = pipeline(tmp_path, write_config(tmp_path / "c.yaml"), tmp_path / "out")
    assert (out / "train.txt").read_text() + (out / "heldout.txt").read_text() == text_format(train)
    assert (out / "valid.txt").read_text() == text_format(valid)
    meta = load_meta(out)
    assert (meta["train"]["stories"], meta["heldout"]["stories"], meta["valid"]["stories"]) == (11, 1, 5)


def test_resolution_order(tmp_path, monkeypatch):
    env_dir = write_corpus(tmp_path / "env", stories(6, 1), stories(2, 2))
    cfg_dir = write_corpus(tmp_path / "resources" / "tinystories", stories(5, 3), stories(2, 4))
    cfg = write_config(tmp_path / "c.yaml", data={"dir": "resources/tinystories"})  # relative to the cwd
    out = tmp_path / "out"
    monkeypatch.setenv("NCN_DATA_DIR", str(env_dir))
    run_ok("fetch", "--config", str(cfg), "--out", str(out))
    assert json.loads((out / "manifest.json").read_text())["source"] == f"local:{env_dir}"
    monkeypatch.delenv("NCN_DATA_DIR")
    run_ok("fetch", "--config", str(cfg), "--out", str(out))
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"] == "local:resources/tinystories" and m["train_all"]["stories"] == 5
    assert (out / "train.txt").read_bytes() + (out / "heldout.txt").read_bytes() == (cfg_dir / "train.txt").read_bytes()


# ----------------------------------------------------------------------------- errors


def test_error_missing_folder_names_three_ways(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NCN_DATA_DIR", str(tmp_path / "nowhere"))
    msg = run_err(capsys, "fetch", "--config", str(write_config(tmp_path / "c.yaml")), "--out", str(tmp_path / "o"))
    assert str(tmp_path / "nowhere") in msg and "does not exist" in msg
    assert "NCN_DATA_DIR" in msg and "data.dir" in msg and "resources/tinystories" in msg and "hub" in msg
    # data.source=local with a missing data.dir: the same kind of message
    monkeypatch.delenv("NCN_DATA_DIR")
    cfg = write_config(tmp_path / "c2.yaml", data={"source": "local"})
    msg = run_err(capsys, "fetch", "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert "no-such-dir" in msg and "NCN_DATA_DIR" in msg and "hub" in msg
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_error_missing_file(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "train.txt").write_text(text_format(stories(3)))
    monkeypatch.setenv("NCN_DATA_DIR", str(folder))
    msg = run_err(capsys, "fetch", "--config", str(write_config(tmp_path / "c.yaml")), "--out", str(tmp_path / "o"))
    assert "no valid file" in msg and "valid.txt" in msg and str(folder) in msg and "NCN_DATA_DIR" in msg


BAD_TRAIN_UTF8 = "A stóry.\n".encode() + b"\n<|endoftext|>\nbad \xff byte\n<|endoftext|>\n"
BAD_VALID_UTF8 = b"Fine text.\nmore \xc3\x28 here\n"


@pytest.mark.parametrize(
    "split, content, expected",
    [
        ("train", b"", "is empty"),
        ("valid", b"", "is empty"),
        ("train", BAD_TRAIN_UTF8, "invalid UTF-8 at byte offset %d" % BAD_TRAIN_UTF8.index(b"\xff")),
        ("valid", BAD_VALID_UTF8, "invalid UTF-8 at byte offset %d" % BAD_VALID_UTF8.index(b"\xc3")),
        ("train", b"One story.\nNo separator anywhere.\n", "has no line <|endoftext|>"),
        ("train", b"\n<|endoftext|>\n  \n<|endoftext|>\n", "holds no text"),
    ],
)
def test_error_bad_files_leave_no_output(tmp_path, capsys, monkeypatch, split, content, expected):
    folder = write_corpus(tmp_path / "src", stories(4), stories(2, 9))
    (folder / f"{split}.txt").write_bytes(content)
    monkeypatch.setenv("NCN_DATA_DIR", str(folder))
    out = tmp_path / "o"
    msg = run_err(capsys, "fetch", "--config", str(write_config(tmp_path / "c.yaml")), "--out", str(out))
    assert expected in msg and str(folder / f"{split}.txt") in msg
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


def test_error_text_changed_after_fetch(tmp_path, capsys, corpus):
    """tokenize refuses a train.txt edited after fetch (its sha256 no longer matches)."""
    out = pipeline(tmp_path, write_config(tmp_path / "c.yaml"), tmp_path / "out")
    (out / "train.txt").unlink()  # it may be a hard link to the source: replace, do not edit
    (out / "train.txt").write_text(text_format(stories(3)))
    msg = run_err(capsys, "tokenize", "--config", str(tmp_path / "c.yaml"), "--data", str(out),
                  "--tokenizer", str(out / "tokenizer.json"), "--out", str(tmp_path / "o2"))  # fmt: skip
    assert "changed since" in msg and not (tmp_path / "o2").exists()


def _big_vocab_tokenizer(src: Path, dst: Path, n_extra: int = 66000) -> None:
    """A byte-level BPE with more than 65536 tokens: the trained one plus unused added tokens."""
    tok = Tokenizer.from_file(str(src))
    tok.add_tokens([f"<unused{i}>" for i in range(n_extra)])
    tok.save(str(dst))


def test_error_vocab_exceeds_dtype_and_uint32(tmp_path, capsys, corpus):
    cfg = write_config(tmp_path / "c.yaml")
    out = pipeline(tmp_path, cfg, tmp_path / "out")
    big = tmp_path / "big.json"
    _big_vocab_tokenizer(out / "tokenizer.json", big)
    o2 = tmp_path / "o2"
    msg = run_err(capsys, "tokenize", "--config", str(cfg), "--data", str(out), "--tokenizer", str(big),
                  "--out", str(o2), "--dtype", "uint16")  # fmt: skip
    assert "more than uint16 can hold" in msg and "--dtype uint32" in msg
    assert not o2.exists() or list(o2.iterdir()) == []
    # auto picks uint32, and the ids are the same as with the small tokenizer
    run_ok("tokenize", "--config", str(cfg), "--data", str(out), "--tokenizer", str(big), "--out", str(o2))
    meta = load_meta(o2, big)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] > 65536
    assert open_split(o2, "train", meta).tolist() == open_split(out, "train").tolist()


def test_error_tokenizer_mismatch(tmp_path, capsys, corpus):
    cfg = write_config(tmp_path / "c.yaml")
    out = pipeline(tmp_path, cfg, tmp_path / "out")
    other = tmp_path / "other.json"
    cfg2 = write_config(tmp_path / "c2.yaml", tokenizer={"vocab_size": 280})
    run_ok("tokenizer", "--config", str(cfg2), "--data", str(out), "--out", str(other))
    msg = run_err(capsys, "check", "--data", str(out), "--tokenizer", str(other))
    assert str(other) in msg and "is not the one" in msg and "re-run 'ncn data tokenize'" in msg
    with pytest.raises(NCNError, match="is not the one"):
        load_meta(out, other)
    # the pipeline's own tokenizer passes, and so does the default (DATA/tokenizer.json)
    run_ok("check", "--data", str(out))
    # replacing DATA/tokenizer.json behind meta.json's back is caught by the default check
    (out / "tokenizer.json").write_bytes(other.read_bytes())
    with pytest.raises(NCNError, match="is not the one"):
        load_meta(out)


def test_load_meta_detects_truncated_bin(tmp_path, corpus):
    out = pipeline(tmp_path, write_config(tmp_path / "c.yaml"), tmp_path / "out")
    data = (out / "valid.bin").read_bytes()
    (out / "valid.bin").write_bytes(data[:-2])
    with pytest.raises(NCNError, match="valid.bin has"):
        load_meta(out)
    (out / "meta.json").unlink()
    with pytest.raises(NCNError, match="meta.json is missing"):
        load_meta(out)


def test_error_tokenize_without_fetch(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml")
    msg = run_err(capsys, "tokenizer", "--config", str(cfg), "--data", str(tmp_path / "nothing"), "--out", "t.json")
    assert "train.txt not found" in msg and "ncn data fetch" in msg


# ----------------------------------------------------------------------------- real files


@pytest.mark.skipif(not (SHARED / "gpt2" / "vocab.json").exists(), reason="GPT-2 vocab not in ../shared/data/gpt2")
def test_gpt2_tokenizer_real_files(tmp_path, corpus):
    cfg = write_config(tmp_path / "c.yaml", tokenizer={"kind": "gpt2", "gpt2_dir": str(SHARED / "gpt2")})
    out = pipeline(tmp_path, cfg, tmp_path / "out")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode("Hello world").ids == [15496, 995]
    assert tok.token_to_id(EOT) == 50256 and tok.encode("a" + EOT).ids == [64, 50256]
    t = "Once upon a time, 🐉 said: «héllo»\n\n  ok"
    assert tok.decode(tok.encode(t).ids) == t
    meta = load_meta(out)
    assert (meta["vocab_size"], meta["eot_id"], meta["dtype"], meta["tokenizer_kind"]) == (50257, 50256, "uint16", "gpt2")


def test_gpt2_missing_offline(tmp_path, capsys, corpus, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = write_config(tmp_path / "c.yaml", tokenizer={"kind": "gpt2", "gpt2_dir": str(tmp_path / "none")})
    run_ok("fetch", "--config", str(cfg), "--out", str(tmp_path / "out"))
    msg = run_err(capsys, "tokenizer", "--config", str(cfg), "--data", str(tmp_path / "out"), "--out", "t.json")
    assert "vocab.json + merges.txt" in msg and str(tmp_path / "none") in msg and not Path("t.json").exists()


def _source_md_sha256(text: str, name: str) -> str:
    section = text.split(f"## {name}", 1)[1]
    return re.search(r"sha256: ([0-9a-f]{64})", section).group(1)


@pytest.mark.skipif(
    not (SHARED / "tinystories" / "train.txt").exists(), reason="TinyStories excerpt not in ../shared/data/tinystories"
)
def test_real_tinystories(tmp_path, monkeypatch):
    real = SHARED / "tinystories"
    monkeypatch.setenv("NCN_DATA_DIR", str(real))
    cfg = write_config(tmp_path / "c.yaml", tokenizer={"vocab_size": 512})
    out = pipeline(tmp_path, cfg, tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    source_md = (real / "SOURCE.md").read_text()
    # train + heldout, in order, is the source file byte for byte
    assert manifest["train_all"]["sha256"] == _source_md_sha256(source_md, "train.txt")
    assert manifest["valid"]["sha256"] == _source_md_sha256(source_md, "valid.txt")
    # 5% of 2316 stories, rounded: 116 held out
    assert (manifest["train"]["stories"], manifest["heldout"]["stories"], manifest["valid"]["stories"]) == (2200, 116, None)
    assert (manifest["train_all"]["bytes"], manifest["valid"]["bytes"]) == (2096346, 794375)
    assert manifest["train"]["bytes"] + manifest["heldout"]["bytes"] == 2096346
    meta = load_meta(out)
    # every story's text without its separator line "<|endoftext|>\n" (14 bytes)
    assert meta["train"]["bytes"] + meta["heldout"]["bytes"] == 2096346 - 2316 * 14
    assert meta["valid"]["bytes"] == 794375
    train = open_split(out, "train", meta)
    assert int((train == meta["eot_id"]).sum()) == 2199  # between the 2200 stories
    assert int((open_split(out, "heldout", meta) == meta["eot_id"]).sum()) == 115
    assert 2.0 < meta["train"]["bytes"] / meta["train"]["tokens"] < 2.7  # ~2.3 bytes/token at vocab 512


def test_encoding_adds_no_special_tokens_of_the_tokenizer(tmp_path, monkeypatch):
    """A tokenizer whose post-processor wraps every text in special tokens (a BOS here): the
    stream still holds the stories' own ids and one EOT between stories, nothing else."""
    import io

    from tokenizers.processors import TemplateProcessing

    from ncn.data.tokenize import encode_file

    folder = write_corpus(tmp_path / "src", stories(6, seed=3), stories(2, 4))
    monkeypatch.setenv("NCN_DATA_DIR", str(folder))
    out = pipeline(tmp_path, write_config(tmp_path / "c.yaml"), tmp_path / "out")
    meta = load_meta(out)
    ids = open_split(out, "train", meta).tolist()
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    bos = meta["eot_id"]  # any special token: a BOS made of the EOT token
    tok.post_processor = TemplateProcessing(single=f"<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    assert tok.encode("Once upon a time").ids[0] == bos  # the post-processor is active when asked
    buf = io.BytesIO()
    encode_file(tok, out / "train.txt", buf, "uint16", meta["eot_id"], True, batch_size=3, chunk_bytes=64)
    assert np.frombuffer(buf.getvalue(), dtype=np.uint16).tolist() == ids


def test_tokenize_creates_a_nested_output_folder(tmp_path, corpus):
    """--out may name a folder whose parents do not exist yet: the bins land there, as in --data."""
    out = pipeline(tmp_path, write_config(tmp_path / "c.yaml"), tmp_path / "data")
    nested = tmp_path / "a" / "b" / "tok"
    run_ok("tokenize", "--config", str(tmp_path / "c.yaml"), "--data", str(out), "--tokenizer",
           str(out / "tokenizer.json"), "--out", str(nested))
    assert (nested / "train.bin").read_bytes() == (out / "train.bin").read_bytes()
    assert load_meta(nested)["train"]["tokens"] == load_meta(out)["train"]["tokens"]


def test_tokenize_function_defaults_and_reported_rate(tmp_path, corpus, capsys):
    """tokenize() called as a library (no dtype): the smallest dtype that holds the vocabulary, the
    same bins as the CLI's; the MB/s it reports are bytes per second / 1e6 (a plausible number)."""
    from ncn.config import load_config
    from ncn.data.tokenize import tokenize

    cfg_path = write_config(tmp_path / "c.yaml")
    out = pipeline(tmp_path, cfg_path, tmp_path / "cli")
    capsys.readouterr()
    meta = tokenize(load_config(cfg_path), out, out / "tokenizer.json", tmp_path / "lib")
    assert meta["dtype"] == "uint16" == load_meta(out)["dtype"]
    assert (tmp_path / "lib" / "train.bin").read_bytes() == (out / "train.bin").read_bytes()
    rates = [float(r) for r in re.findall(r"([\d.]+) MB/s", capsys.readouterr().err)]
    assert len(rates) == 3 and all(0 <= r < 1e4 for r in rates), rates
