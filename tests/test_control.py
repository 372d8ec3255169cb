"""External control signals (issue 16 part 3): the label rule, the per-token labels beside the
tokens, the control input of the NCN (a zeroed control is the plain variant, bitwise; it reaches the
text only through the signals), the true-vs-flipped loss, the --control syntax, the claim's verdict
both ways, and a tiny control run measured end to end by `ncn analyze control`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ncn.control import bits_to_vector, has_dialogue, parse_control, story_bits, vector
from ncn.errors import NCNError
from ncn.model import ModelConfig, Transformer, load_model, model_payload

torch.set_num_threads(1)

SHAPE = dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, d_model=32, d_ff=64, ncn_hidden=16)

# hand-made stories and their labels ("the story contains dialogue": a double quotation mark)
STORIES = [
    ('Tom saw a dog. "Hello!" said Tom.\nThe dog ran away.\n', 1),
    ("Sue had a red ball. It was Sue's ball and she liked it.\n", 0),  # an apostrophe is no dialogue
    ("\u201cCan I play?\u201d asked Ben. Mia said yes.\n", 1),  # curly quotes
    ("The sun was hot. They played all day.\n", 0),
    ("Max found a box. Inside was a note: \u201dsurprise.\n", 1),  # a closing curly quote alone
    ("Lily ate an apple. Then she went home to sleep.\n", 0),
]


# -- the label rule and the --control syntax -----------------------------------------------------------
@pytest.mark.parametrize("text, label", STORIES)
def test_label_rule_on_hand_made_stories(text, label):
    assert has_dialogue(text) == bool(label) and story_bits(text) == label


@pytest.mark.parametrize("text, message", [
    ("dialogue", "expected NAME=VALUE"),
    ("=1", "expected NAME=VALUE"),
    ("mood=1", "unknown control 'mood' .known: dialogue"),
    ("dialogue=2", "dialogue must be 0 or 1, got '2'"),
    ("dialogue=yes", "dialogue must be 0 or 1, got 'yes'"),
    ("dialogue=1,dialogue=0", "dialogue is given twice"),
    ("", "expected NAME=VALUE"),
])
def test_bad_control_syntax_is_refused_naming_the_culprit(text, message):
    with pytest.raises(NCNError, match=message):
        parse_control(text)


def test_control_values_and_vectors():
    assert parse_control("dialogue=1") == {"dialogue": 1} and parse_control(" dialogue = 0 ") == {"dialogue": 0}
    assert vector({"dialogue": 1}) == [1.0] and vector({"dialogue": 0}) == [-1.0] and vector({}) == [0.0]
    bits = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.uint8)
    assert bits_to_vector(bits).tolist() == [[[-1.0], [1.0], [1.0]], [[1.0], [-1.0], [-1.0]]]


# -- the model's control input ---------------------------------------------------------------------------
def _pair(seed=0):
    """(causal, control) models built from the same seed."""
    torch.manual_seed(seed)
    plain = Transformer(ModelConfig(ncn="causal", **SHAPE)).eval()
    torch.manual_seed(seed)
    ctl = Transformer(ModelConfig(ncn="control", control_dim=1, **SHAPE)).eval()
    return plain, ctl


def test_a_fresh_control_model_is_the_plain_variant_bitwise():
    plain, ctl = _pair()
    sd_plain, sd_ctl = plain.state_dict(), ctl.state_dict()
    assert set(sd_ctl) - set(sd_plain) == {"controller.control"}  # the one new parameter, the rest equal
    assert all(torch.equal(sd_plain[k], sd_ctl[k]) for k in sd_plain)
    assert not ctl.controller.control.any()  # zero-initialised: training starts from the plain variant
    idx = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(1))
    ref = plain(idx).logits
    c = torch.randn(3, 16, 1)
    for control in (None, torch.zeros(3, 16, 1), c):  # a zero matrix ignores any control
        assert torch.equal(ctl(idx, control=control).logits, ref)


def test_a_zeroed_control_input_is_the_plain_variant_bitwise_after_training():
    plain, ctl = _pair()
    with torch.no_grad():
        ctl.controller.control.normal_(std=3.0)  # as if trained: the model reads its control
    ctl_sd = {k: v for k, v in ctl.state_dict().items() if k != "controller.control"}
    plain.load_state_dict(ctl_sd)
    idx = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(2))
    for control in (None, torch.zeros(2, 16, 1), torch.zeros(2, 1)):
        assert torch.equal(ctl(idx, control=control).logits, plain(idx).logits)
    # ...and generation with the KV cache: c = 0 samples what the plain model samples
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    out_plain = plain.generate(idx[:, :3], 10, generator=g())
    assert torch.equal(ctl.generate(idx[:, :3], 10, generator=g(), control=torch.zeros(2, 1)), out_plain)
    # a nonzero control does change the output
    assert not torch.equal(ctl(idx, control=torch.ones(2, 1)).logits, plain(idx).logits)


def test_the_control_reaches_the_text_only_through_the_signals():
    _, ctl = _pair()
    with torch.no_grad():
        ctl.controller.control.normal_(std=3.0)
    seen = []
    hook = ctl.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    idx = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(3))
    on = ctl(idx, control=torch.ones(2, 1), return_signals=True)
    off = ctl(idx, control=-torch.ones(2, 1), return_signals=True)
    hook.remove()
    assert torch.equal(seen[0], seen[1])  # the trunk's input tokens never see the control
    assert (on.signals - off.signals).abs().max() > 1e-3  # the signals do
    assert (on.logits - off.logits).abs().max() > 1e-4  # and through them, the text


def test_cached_generation_with_control_equals_recompute():
    _, ctl = _pair()
    with torch.no_grad():
        ctl.controller.control.normal_(std=3.0)
    idx = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(4))
    c = torch.tensor([[1.0], [-1.0]])
    a, la = ctl.generate(idx, 8, generator=torch.Generator().manual_seed(0), control=c, use_cache=True,
                         return_logits=True)
    b, lb = ctl.generate(idx, 8, generator=torch.Generator().manual_seed(0), control=c, use_cache=False,
                         return_logits=True)
    assert torch.equal(a, b)
    assert (la - lb).abs().max() < 1e-4  # the cached path reads the control as the full forward does
    _, lc = ctl.generate(idx, 8, generator=torch.Generator().manual_seed(0), control=-c, use_cache=True,
                         return_logits=True)
    assert (lc[:, 0] - la[:, 0]).abs().max() > 1e-4  # and the control changes them


def test_control_errors_name_the_culprit():
    plain, ctl = _pair()
    idx = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(NCNError, match="takes no control input"):
        plain(idx, control=torch.zeros(1, 1))
    with pytest.raises(NCNError, match=r"control must be \(B, T, 1\)"):
        ctl(idx, control=torch.zeros(1, 4, 3))
    with pytest.raises(NCNError, match="no NCN controller"):
        Transformer(ModelConfig(ncn="none", **SHAPE))(idx, control=torch.zeros(1, 1))
    for variant in ("none", "static"):
        with pytest.raises(NCNError, match="control_dim"):
            ModelConfig(ncn=variant, control_dim=1, **SHAPE)


def test_payload_of_a_plain_variant_is_unchanged(tmp_path):
    plain, ctl = _pair()
    assert "control_dim" not in plain.cfg.as_dict() and "control_dim" not in model_payload(plain)["model_config"]
    assert ctl.cfg.as_dict()["control_dim"] == 1
    for m in (plain, ctl):
        torch.save(model_payload(m), tmp_path / "m.pt")
        back, _ = load_model(tmp_path / "m.pt")
        assert back.cfg == m.cfg and torch.equal(back.controller.pool.query, m.controller.pool.query)


def test_the_config_gives_the_control_variant_one_channel_per_label(tmp_path):
    from test_train import tiny_config

    from ncn.config import load_config, model_config

    cfg = load_config(tiny_config(tmp_path))
    assert model_config(cfg, "control", "xs", 40).control_dim == 1
    assert model_config(cfg, "causal", "xs", 40).control_dim == 0
    cfg["control"]["sizes"] = ["huge"]
    with pytest.raises(NCNError, match="unknown size 'huge' in 'control.sizes'"):
        from ncn.config import validate

        validate(cfg)


# -- the flipped label changes the loss only when the model uses it ----------------------------------
@pytest.mark.parametrize("reads, changes", [(True, True), (False, False)])
def test_flipped_label_changes_loss_only_when_the_model_reads_it(reads, changes):
    """Every token labelled 1, so the flip turns c = +1 into c = -1 everywhere. A planted model whose
    controller reads its control (and whose signals matter) changes its loss; one whose control
    matrix is zero has exactly the same loss."""
    from ncn.evaluate import stream_ce

    _, ctl = _pair()
    with torch.no_grad():  # signals that matter: a lively controller and a trunk whose branches count
        ctl.controller.fc1.weight.mul_(20)
        ctl.controller.fc2.weight.mul_(20)
        ctl.tok_emb.weight.mul_(10)
        for b in ctl.blocks:
            b.ffn.down.weight.mul_(100)
            b.ffn.up.weight.mul_(5)
        if reads:  # the planted model: its controller reads the control strongly
            ctl.controller.control.normal_(std=5.0)
    tokens = np.random.default_rng(0).integers(0, 40, 200).astype(np.uint16)
    labels = np.ones(200, dtype=np.uint8)
    cpu = torch.device("cpu")
    true, n = stream_ce(ctl, tokens, 16, 4, cpu, labels=labels)
    flipped, _ = stream_ce(ctl, tokens, 16, 4, cpu, labels=labels ^ 1)
    assert n == 199
    assert (abs(flipped - true) / n > 0.01) if changes else flipped == true


# -- per-token labels beside the tokens ------------------------------------------------------------------
@pytest.fixture
def labelled(tmp_path, monkeypatch):
    """The data stage on hand-made stories (train: STORIES x 5, heldout: the last 25%), plus labels."""
    from test_data import pipeline, write_config, write_corpus

    from ncn.data.labels import write_labels

    monkeypatch.delenv("NCN_DATA_DIR", raising=False)
    train = [s for s, _ in STORIES] * 5
    src = write_corpus(tmp_path / "src", train, [s for s, _ in STORIES])
    monkeypatch.setenv("NCN_DATA_DIR", str(src))
    cfg = write_config(tmp_path / "c.yaml", data={"heldout_fraction": 0.2})
    out = pipeline(tmp_path, cfg, tmp_path / "data")
    return out, write_labels(out)


def test_every_token_carries_its_own_storys_label(labelled):
    from ncn.data import load_meta, open_split
    from ncn.data.labels import open_labels

    out, doc = labelled
    meta = load_meta(out)
    expected = [label for _, label in STORIES] * 5
    n_held = doc["heldout"]["stories"]
    assert doc["train"]["stories"] + n_held == len(expected) and n_held == 6
    for split, want in (("train", expected[:-n_held]), ("heldout", expected[-n_held:])):
        ids, lab = open_split(out, split, meta), open_labels(out, split, meta)
        assert len(lab) == len(ids)
        story = np.cumsum(np.asarray(ids) == meta["eot_id"])  # the EOT opening a story belongs to it
        assert lab.tolist() == [want[k] for k in story]
        assert doc[split]["positive"]["dialogue"] == sum(want)
        assert doc[split]["base_rate"]["dialogue"] == pytest.approx(sum(want) / len(want))


def test_labels_refused_when_missing_or_stale(labelled):
    from ncn.data.labels import load_labels, write_labels

    out, _ = labelled
    (out / "heldout.label.bin").write_bytes(b"\x00")
    with pytest.raises(NCNError, match="heldout.label.bin is missing or not one byte per token"):
        load_labels(out)
    (out / "labels.json").unlink()
    with pytest.raises(NCNError, match="labels.json is missing.*ncn data labels"):
        load_labels(out)
    (out / "train.txt").write_text((out / "train.txt").read_text() + "A new story.\n<|endoftext|>\n")
    with pytest.raises(NCNError, match="sha256 differs"):
        write_labels(out)


# -- the claim: known answers both ways ------------------------------------------------------------------
def _runs(gaps, steers, size="s"):
    n = len(gaps)
    return pd.DataFrame({"variant": "control", "size": size, "seed": list(range(n)), "run_dir": "r", "tokens": 100,
                         "loss_true": 2.0, "loss_flipped": [2.0 + g for g in gaps], "loss_gap": gaps,
                         "num_samples": 64, "frac_on": [0.5 + s / 2 for s in steers], "frac_random": 0.5,
                         "frac_off": [0.5 - s / 2 for s in steers], "steer": steers, "random_positive": 30,
                         "base_rate": 0.56})


def _cfg(**control):
    return {"sizes": ["xs", "s"], "size_defs": {"xs": {"d_model": 16, "n_layer": 1, "d_ff": 32},
                                                "s": {"d_model": 32, "n_layer": 2, "d_ff": 64}},
            "control": {"sizes": None, **control}, "analysis": {"confidence": 0.95}}


@pytest.mark.parametrize("gaps, steers, verdict", [
    ([0.05, 0.06, 0.055], [0.30, 0.35, 0.32], "supported"),  # planted: both effects in every seed
    ([0.05, 0.06, 0.055], [0.01, -0.02, 0.0], "inconclusive"),  # uses the label, does not steer
    ([0.0, 0.0, 0.0], [0.30, 0.35, 0.32], "not supported"),  # an ignored label: gap exactly 0
    ([0.05, 0.06, 0.055], [-0.3, -0.35, -0.32], "not supported"),  # steers the wrong way
    ([0.05], [0.3], "inconclusive"),  # one seed: no interval
])
def test_control_claim_known_answers(gaps, steers, verdict):
    from ncn.analysis.control import control_claim

    runs = pd.concat([_runs(gaps, steers), _runs([9.0] * 3, [-9.0] * 3, size="xs")])  # the smaller size is ignored
    res = control_claim(runs, _cfg())
    assert res["verdict"] == verdict and res["details"]["size"] == "s"
    assert res["value"] == pytest.approx(np.mean(steers)) and res["details"]["origin"] == "original, promise"


def test_control_claim_without_runs_is_inconclusive_and_registered_ninth():
    from ncn.analysis import claims
    from ncn.analysis.control import control_claim

    assert control_claim(None, _cfg())["verdict"] == "inconclusive"
    assert control_claim(_runs([0.1] * 3, [0.3] * 3), _cfg(sizes=[]))["details"]["reason"].startswith("control.sizes")
    ninth = claims.CLAIMS[8]  # the paper names it ClaimNineVerdict
    assert ninth.key == "control_steers" and ninth.subject == "control"


# -- a tiny control run, end to end ----------------------------------------------------------------------
def test_a_control_run_trains_on_its_labels_and_is_measured(labelled, tmp_path, monkeypatch, capsys):
    import ncn.train
    from test_train import run_train, tiny_config

    from ncn.analysis.cli import main as analyze
    from ncn.cli import main as cli

    out, _ = labelled
    fed = []
    real = ncn.train.draw_control

    def spy(run, order, step, m):
        c = real(run, order, step, m)
        if c is not None:
            idx = ncn.train.window_indices(run, order, step, m)
            fed.append((c, np.stack([np.asarray(run.labels[k * 16: k * 16 + 16]) for k in idx.tolist()])))
        return c

    monkeypatch.setattr(ncn.train, "draw_control", spy)
    cfg = tiny_config(tmp_path, control={"num_samples": 4, "max_new_tokens": 6},
                      train={"tokens": 6 * 4 * 16, "ckpt_every": 100})
    run = tmp_path / "runs" / "control" / "xs" / "seed0"
    run_train(cfg, run, out, variant="control")
    assert fed and all(torch.equal(c, torch.from_numpy(lab).long().unsqueeze(-1) * 2.0 - 1) for c, lab in fed)
    assert json.loads((run / "config.json").read_text())["model_config"]["control_dim"] == 1
    import ncn.evaluate
    from ncn.data import load_meta
    from ncn.data.labels import open_labels

    passed = []
    real_ce = ncn.evaluate.stream_ce
    monkeypatch.setattr(ncn.evaluate, "stream_ce", lambda *a, **k: passed.append(k.get("labels")) or real_ce(*a, **k))
    assert cli(["evaluate", "--run", str(run)]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["heldout_control"] == "true story labels" and ev["val_control"].startswith("none")
    # the held-out pass reads the stored labels of that split; the validation pass has none
    with_labels = [x for x in passed if x is not None]
    assert len(passed) == 2 and len(with_labels) == 1
    assert np.array_equal(np.asarray(with_labels[0]), np.asarray(open_labels(out, "heldout", load_meta(out))))

    t = tmp_path / "t"
    rc = analyze(["control", "--run", str(run), "--config", str(cfg), "--data", str(out),
                  "--runs-csv", str(t / "runs.csv"), "--csv", str(t / "c.csv"), "--tex", str(t / "c.tex"),
                  "--pdf", str(t / "c.pdf"), "--png", str(t / "c.png")])
    assert rc == 0
    row = pd.read_csv(t / "runs.csv").iloc[0]
    assert row["size"] == "xs" and row["num_samples"] == 4 and math.isfinite(row["loss_gap"])
    assert row["loss_gap"] == pytest.approx(row["loss_flipped"] - row["loss_true"], abs=1e-8)
    assert all(0 <= row[f"frac_{k}"] <= 1 for k in ("on", "random", "off"))
    assert row["loss_true"] == pytest.approx(ev["heldout_loss"], abs=1e-6)  # the same scoring as evaluate
    assert "claim verdict" in (t / "c.tex").read_text() and (t / "c.pdf").exists()

    # ncn generate --control: works on the control run, refused on a run without control or bad syntax
    capsys.readouterr()
    assert cli(["generate", "--run", str(run), "--prompt", "Tom", "--control", "dialogue=1",
                "--max-new-tokens", "4", "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["control"] == {"dialogue": 1}
    assert cli(["generate", "--run", str(run), "--prompt", "Tom", "--control", "dialogue=maybe"]) == 2
    assert "ncn generate: error: --control: dialogue must be 0 or 1, got 'maybe'" in capsys.readouterr().err
    causal = tmp_path / "runs" / "causal" / "xs" / "seed0"
    run_train(cfg, causal, out, variant="causal")
    assert cli(["generate", "--run", str(causal), "--prompt", "Tom", "--control", "dialogue=1"]) == 2
    assert "takes no control input" in capsys.readouterr().err
