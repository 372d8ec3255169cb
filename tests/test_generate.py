"""`ncn generate`: greedy = argmax, seeds reproduce, the stream is the JSON, UTF-8 pieces, refusals."""

from __future__ import annotations

import hashlib
import io
import json
import math
from types import SimpleNamespace

import pytest
import torch

from ncn.errors import NCNError
from ncn.generate import SEPARATOR, Sampling, TextStream, sample
from ncn.variants import names as _variant_names
from ncn.model import ModelConfig, Transformer
from test_train import make_data, run_train, tiny_config

torch.set_num_threads(1)


def tiny_model(variant: str, seed: int = 0) -> Transformer:
    """A random model with varied greedy continuations: large weights and an untied output head (at
    the init scale, with the head tied to the embedding, it just repeats its last token)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, d_model=16, d_ff=32, ncn=variant, ncn_hidden=8)
    model = Transformer(cfg).eval()
    model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.tok_emb.weight))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def settings(**kw) -> Sampling:
    base = dict(prompts=["x"], num_samples=1, max_new_tokens=12, temperature=1.0, top_k=None, seed=0, source="--prompt")
    return Sampling(**{**base, **kw})


# ---- the sampler on random models (every variant; the window slides past block_size 8) ---------


@pytest.mark.parametrize("variant", _variant_names())
def test_greedy_is_the_argmax_of_the_models_logits(variant):
    model = tiny_model(variant)
    prompt = [3, 1, 4, 1, 5]
    new = sample(model, prompt, settings(temperature=0.0), torch.Generator().manual_seed(0))
    ctx, want = list(prompt), []
    with torch.no_grad():
        for _ in range(12):  # by hand: full forward of the last block_size tokens, argmax of the last row
            logits = model(torch.tensor([ctx[-8:]])).logits[0, -1]
            want.append(int(logits.argmax()))
            ctx.append(want[-1])
    assert new == want
    assert len(set(want)) > 1, "a constant sequence would not tell greedy from a stuck sampler"


@pytest.mark.parametrize("variant", _variant_names())
def test_streamed_tokens_are_model_generate_s(variant):
    model = tiny_model(variant)
    seen = []
    new = sample(model, [7, 2], settings(top_k=5), torch.Generator().manual_seed(11), seen.append)
    ref = model.generate(torch.tensor([[7, 2]]), 12, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(11))
    assert seen == new == ref[0, 2:].tolist()


def test_seed_reproduces_and_another_seed_differs():
    model = tiny_model("causal")
    s = settings(max_new_tokens=20, temperature=1.5)
    a = sample(model, [1, 2, 3], s, torch.Generator().manual_seed(5))
    assert sample(model, [1, 2, 3], s, torch.Generator().manual_seed(5)) == a
    assert sample(model, [1, 2, 3], s, torch.Generator().manual_seed(6)) != a


def test_utf8_characters_split_across_tokens_print_whole(tmp_path):
    """Byte-level tokens split multi-byte characters: no piece carries a replacement character, some
    token yields nothing (its character is not complete yet), and the pieces add up to the decode."""
    from ncn.data.tokenizer import load

    tok = load(make_data(tmp_path / "d", n_train=40, n_valid=4) / "tokenizer.json")
    text = "Tim saw a café, a ☃ and 日本 — ok!"
    ids = tok.encode(text).ids
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces, "the tokenizer split no character: the test would not test holding back"
    # an unfinished character at the end is flushed as the JSON has it (U+FFFD)
    snow = tok.encode("☃").ids
    assert len(snow) > 1
    stream = TextStream(tok)
    assert [stream.push(i) for i in snow[:-1]] == [""] * (len(snow) - 1)
    assert stream.flush() == tok.decode(snow[:-1]) and "\ufffd" in tok.decode(snow[:-1])


# ---- the command on a trained run --------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    data = make_data(tmp / "data")
    cfg = tiny_config(tmp)
    run_train(cfg, tmp / "run", data)
    return SimpleNamespace(tmp=tmp, dir=tmp / "run", data=data)


def snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli(argv, capsys):
    from ncn.cli import main

    capsys.readouterr()
    rc = main(["generate", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_stream_equals_the_json_and_a_hand_call_writes_only_out(run, capsys, tmp_path):
    before = snapshot(run.dir)
    out = tmp_path / "mine.json"
    rc, stdout, err = cli(["--run", str(run.dir), "--prompt", "Once upon a time", "--prompt", "Tim saw",
                           "--num-samples", "2", "--max-new-tokens", "10", "--seed", "4", "--out", str(out)], capsys)
    assert rc == 0, err
    assert snapshot(run.dir) == before, "a hand call changed the run folder"
    res = json.loads(out.read_text())
    texts = [s["text"] for s in res["samples"]]
    assert stdout == f"\n{SEPARATOR}\n".join(texts) + "\n"
    assert [s["prompt"] for s in res["samples"]] == ["Once upon a time"] * 2 + ["Tim saw"] * 2
    assert [s["seed"] for s in res["samples"]] == [4, 5, 6, 7]
    assert all(s["new_tokens"] == 10 and s["text"] == s["prompt"] + s["completion"] for s in res["samples"])
    assert (res["num_samples"], res["max_new_tokens"], res["generate_seed"]) == (2, 10, 4)
    # without --out: the same stream, no file anywhere
    rc, again, _ = cli(["--run", str(run.dir), "--prompt", "Once upon a time", "--prompt", "Tim saw",
                        "--num-samples", "2", "--max-new-tokens", "10", "--seed", "4"], capsys)
    assert rc == 0 and again == stdout
    assert snapshot(run.dir) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine.json"]


def test_same_seed_same_sample_other_seed_other_sample(run, capsys):
    from ncn.generate import generate

    kw = dict(prompts=["Once upon a time"], max_new_tokens=24, temperature=1.5, top_k=None, stdout=io.StringIO())
    a = generate(run.dir, seed=3, **kw)["samples"][0]["text"]
    assert generate(run.dir, seed=3, **kw)["samples"][0]["text"] == a
    assert generate(run.dir, seed=9, **kw)["samples"][0]["text"] != a


def test_greedy_run_continues_with_the_argmax(run, capsys):
    from ncn.data.tokenizer import load
    from ncn.generate import generate
    from ncn.model import load_model

    res = generate(run.dir, prompts=["Tim saw"], max_new_tokens=6, temperature=0.0, stdout=io.StringIO())
    model, _ = load_model(run.dir / "model.pt")
    tok = load(run.data / "tokenizer.json")
    ids = [json.loads((run.data / "meta.json").read_text())["eot_id"]] + tok.encode("Tim saw").ids
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids[-16:]])).logits[0, -1].argmax()))
    assert res["samples"][0]["completion"] == tok.decode(ids[-6:])


def test_pipeline_file_is_written_by_the_rule_and_never_replaced_by_hand(run, capsys):
    own = run.dir / "samples.json"
    assert not own.exists()
    rc, _, err = cli(["--run", str(run.dir), "--out", str(own)], capsys)  # as the Snakemake rule calls it
    assert rc == 0, err
    first = own.read_bytes()
    assert json.loads(first)["samples"][0]["prompt"].startswith("Once upon a time")  # the config's prompt
    rc, _, err = cli(["--run", str(run.dir), "--prompt", "Tim", "--out", str(run.dir / ".." / run.dir.name / "samples.json")],
                     capsys)
    assert rc == 2 and "is the pipeline's samples file" in err
    assert own.read_bytes() == first
    own.unlink()


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "-0.5"], "--temperature must be a finite number >= 0 (0 = greedy), got -0.5"),
    (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
    (["--top-k", "0"], "--top-k must be >= 1 (or 'none' to sample from every token), got 0"),
    (["--num-samples", "0"], "--num-samples must be >= 1, got 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--prompt", ""], "--prompt is empty: give the text to continue"),
    (["--prompt", "a", "--prompt", ""], "--prompt[1] is empty"),
], ids=["neg-temp", "nan-temp", "top-k-0", "samples-0", "tokens-0", "neg-seed", "empty", "empty-second"])
def test_bad_settings_are_refused_with_one_line(run, capsys, argv, message):
    argv = argv if "--prompt" in argv else ["--prompt", "Tim", *argv]
    rc, stdout, err = cli(["--run", str(run.dir), *argv], capsys)
    assert rc == 2 and stdout == ""
    lines = [ln for ln in err.splitlines() if ln.startswith("ncn generate: error: ")]
    assert len(lines) == 1 and message in lines[0], err


def test_top_k_none_and_a_long_prompt_are_accepted(run, capsys):
    long = "Tim saw a big dog. " * 8
    rc, stdout, err = cli(["--run", str(run.dir), "--prompt", long, "--top-k", "none", "--max-new-tokens", "3"], capsys)
    assert rc == 0, err
    assert "ncn generate: note: --prompt is" in err and "longer than the model's context (block_size 16)" in err
    assert stdout.startswith(long)


def test_sampling_settings_default_to_the_config():
    from ncn.generate import sampling

    g = {"prompts": ["p"], "max_new_tokens": 5, "temperature": 0.7, "top_k": 9, "seed": 2}
    s = sampling(g)
    assert (s.prompts, s.num_samples, s.max_new_tokens, s.temperature, s.top_k, s.seed, s.source) == (
        ["p"], 1, 5, 0.7, 9, 2, "generate.prompts")
    assert sampling(g, top_k=None).top_k is None and sampling(g, prompts=["q"]).source == "--prompt"
    with pytest.raises(NCNError, match=r"generate.prompts\[0\] is empty"):
        sampling({**g, "prompts": [""]})


# ---- --kv-bits: the compressed cache is the one generation uses, its memory and speed reported --------


@pytest.mark.parametrize("kv, want", [("8", [8, 8]), ("4", [4, 4]), ("beta:6", None)])
def test_kv_bits_generates_from_the_compressed_cache_and_reports_memory_and_speed(run, capsys, monkeypatch, kv,
                                                                                  want, tmp_path):
    from ncn import kvquant
    from ncn.data.tokenizer import load
    from ncn.model import load_model

    built = []
    real = kvquant.QuantKVCache.__init__

    def spy(self, cfg, batch, device, dtype, bits):
        real(self, cfg, batch, device, dtype, bits)
        if str(device) != "meta":  # the byte count is taken on a meta cache; generation fills a real one
            built.append((list(bits), self))

    monkeypatch.setattr(kvquant.QuantKVCache, "__init__", spy)
    out = tmp_path / "kv.json"
    rc, stdout, err = cli(["--run", str(run.dir), "--prompt", "Once upon a time", "--num-samples", "2",
                           "--max-new-tokens", "6", "--temperature", "0", "--kv-bits", kv, "--out", str(out)], capsys)
    assert rc == 0, err
    rec = json.loads(out.read_text())
    bits = rec["kv_bits"]
    assert bits == want if want else sorted(bits) == [4, 8]  # beta:6 -> 6 -/+ 2 by the layers' mean beta
    # every sample (and the warm-up) filled a compressed cache at those bits, holding the tokens it generated
    assert len(built) == 1 + 2 and all(b == bits for b, _ in built)
    assert all(c.length > 0 for _, c in built)
    model, _ = load_model(run.dir / "model.pt")
    fp32 = 2 * model.cfg.n_layer * model.cfg.block_size * model.cfg.d_model * 4
    assert rec["kv_cache_bytes_uncompressed"] == fp32
    assert rec["kv_cache_bytes"] == built[-1][1].nbytes < fp32 / 2
    assert rec["tokens_per_s"] > 0 and all(s["tokens_per_s"] > 0 for s in rec["samples"])
    assert f"KV cache at {','.join(map(str, bits))} bits per layer: {rec['kv_cache_bytes']} bytes" in err
    assert "tokens/s" in err.splitlines()[-1]
    # greedy decoding from the compressed cache is the fake-quantised model's argmax continuation
    kvquant.set_fake_quant(model, bits)
    tok = load(run.data / "tokenizer.json")
    ids = [json.loads((run.data / "meta.json").read_text())["eot_id"]] + tok.encode("Once upon a time").ids
    x = torch.tensor([ids])
    for _ in range(6):
        x = torch.cat([x, model(x[:, -model.cfg.block_size:]).logits[:, -1:].argmax(-1)], dim=1)
    assert rec["samples"][0]["completion"] == tok.decode(x[0, len(ids):].tolist())


def test_sampling_temperature_divides_the_logits():
    """sample_next draws from softmax(logits / T): two tokens with logits 0 and 1 at T = 0.5 give
    the second with probability sigmoid(2) = 0.881 (at T = 2: sigmoid(0.5) = 0.622)."""
    from ncn.model import sample_next

    logits = torch.tensor([[0.0, 1.0]]).repeat(20000, 1)
    for temp, p in ((0.5, 1 / (1 + math.exp(-2))), (2.0, 1 / (1 + math.exp(-0.5)))):
        draws = sample_next(logits, temperature=temp, generator=torch.Generator().manual_seed(0))
        assert abs(draws.float().mean().item() - p) < 0.01, temp  # 4.6 SE of 20,000 draws
    assert sample_next(logits[:3], temperature=0).tolist() == [[1]] * 3
