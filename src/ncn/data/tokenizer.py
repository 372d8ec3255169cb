"""`ncn data tokenizer`: a byte-level BPE trained on the train split, or GPT-2's tokenizer.

Both are byte-level: every string maps to ids and back unchanged (decode(encode(t)) == t),
with no normalizer and no prefix space, and `<|endoftext|>` is the one special token
(id 0 for the trained BPE, 50256 for GPT-2). The file is the `tokenizers` JSON format.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ncn import progress
from ncn.data import textfile
from ncn.data.textfile import EOT
from ncn.errors import NCNError
from ncn.fileio import write_text

GPT2_HUB_REPO = "openai-community/gpt2"
GPT2_HELLO_WORLD = [15496, 995]  # "Hello world" with GPT-2's tokenizer: the check that the files are right


def _byte_level(tok: Tokenizer) -> Tokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(train_path: str | os.PathLike, vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on the stories of `train_path` (and nothing else: no leak from
    validation). Deterministic: the same file gives a byte-identical tokenizer.json."""
    tok = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],  # first, so its id is 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no unknown input
        show_progress=False,
    )
    size = os.path.getsize(train_path)
    with progress.bar(total=size, unit="B", unit_scale=True, desc="bpe: count words", mininterval=1.0) as bar:

        def stories():
            for piece, nbytes, _ in textfile.iter_pieces(train_path, require_separator=True):
                bar.update(nbytes)
                yield piece

        tok.train_from_iterator(stories(), trainer)
    return tok


def _gpt2_files(gpt2_dir: str | None) -> tuple[str, str, str]:
    """(vocab.json, merges.txt, where): from tokenizer.gpt2_dir, else downloaded from the hub."""
    if gpt2_dir:
        d = Path(gpt2_dir).expanduser()
        # OpenAI's original names (encoder.json, vocab.bpe) hold the same content.
        for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
            if (d / vocab).is_file() and (d / merges).is_file():
                return str(d / vocab), str(d / merges), str(d)
    try:
        from huggingface_hub import hf_hub_download

        vocab = hf_hub_download(GPT2_HUB_REPO, "vocab.json")
        merges = hf_hub_download(GPT2_HUB_REPO, "merges.txt")
    except Exception as e:  # offline, no network, ...
        where = f"not in tokenizer.gpt2_dir '{gpt2_dir}'" if gpt2_dir else "tokenizer.gpt2_dir is not set"
        raise NCNError(
            f"GPT-2 tokenizer files (vocab.json + merges.txt) {where}, and the hub could not provide them "
            f"({type(e).__name__}). Put the two files in tokenizer.gpt2_dir, or run with network access."
        ) from None
    return vocab, merges, f"hub:{GPT2_HUB_REPO}"


def gpt2(gpt2_dir: str | None) -> Tokenizer:
    """GPT-2's byte-level BPE built from its vocab.json + merges.txt."""
    vocab_path, merges_path, where = _gpt2_files(gpt2_dir)
    try:
        vocab, merges = models.BPE.read_file(vocab_path, merges_path)
    except Exception as e:
        raise NCNError(f"GPT-2 tokenizer files in {where} cannot be read ({e})") from None
    tok = _byte_level(Tokenizer(models.BPE(vocab, merges)))
    tok.add_special_tokens([EOT])  # already in the vocab (50256); this makes it special
    if tok.encode("Hello world").ids != GPT2_HELLO_WORLD or tok.token_to_id(EOT) != 50256:
        raise NCNError(f"the files in {where} are not GPT-2's tokenizer ('Hello world' must encode to [15496, 995])")
    return tok


def build(cfg: dict, data_dir: str | os.PathLike) -> Tokenizer:
    t = cfg["tokenizer"]
    if t["kind"] == "gpt2":
        return gpt2(t["gpt2_dir"])
    train = Path(data_dir) / "train.txt"
    if not train.is_file():
        raise NCNError(f"{train} not found: run 'ncn data fetch --out {data_dir}' first")
    textfile.check_nonempty(train)
    return train_bpe(train, t["vocab_size"])


def save(tok: Tokenizer, path: str | os.PathLike) -> None:
    write_text(path, tok.to_str(pretty=True))


def load(path: str | os.PathLike) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise NCNError(f"tokenizer {path} not found: run 'ncn data tokenizer' first")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise NCNError(f"{path} is not a tokenizer.json of the `tokenizers` library ({e})") from None
