"""Compressed KV caches (ncn.kvquant, `--kv-bits`) and `ncn analyze kvcache`: the quantiser's
known answers, the real cache equals the teacher-forced fake quantisation, 16 bits is the fp32
loss within rounding, equal-average allocations, refusals, and the claim's verdict both ways."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ncn import kvquant as kq
from ncn.analysis import kvcache as akv
from ncn.analysis.heldout import score
from ncn.errors import NCNError
from ncn.variants import names, spec
from test_generate import tiny_model

torch.set_num_threads(1)


# ---- the quantiser -------------------------------------------------------------------------------


def test_int8_known_answer():
    x = torch.tensor([[1.0, -0.5, 0.25, 0.0]])
    codes, scale = kq.quantize(x, 8)
    assert scale.dtype == torch.float16 and float(scale) == float(torch.tensor(1 / 127).half())
    assert codes.tolist() == [[127, -64, 32, 0]]  # -63.5 rounds to even; 31.75 to 32
    assert torch.allclose(kq.fake_quantize(x, 8), x, atol=float(scale) / 2 + 1e-6)
    codes4, _ = kq.quantize(x, 4)
    assert codes4.tolist() == [[7, -4, 2, 0]]  # 1·7, -0.5·7 = -3.5 → -4, 0.25·7 = 1.75 → 2
    assert kq.quantize(x, 2)[0].tolist() == [[1, 0, 0, 0]]  # ternary: -0.5 rounds to even 0


def test_the_scale_is_per_head_and_token_and_zero_rows_stay_zero():
    x = torch.zeros(1, 2, 3, 4)
    x[0, 1, 2] = torch.tensor([8.0, -8.0, 4.0, 0.0])
    y = kq.fake_quantize(x, 4)
    assert torch.equal(y[0, 0], x[0, 0]) and torch.equal(y[0, 1, :2], x[0, 1, :2])
    assert y[0, 1, 2].tolist() == pytest.approx([8.0, -8.0, 8 / 7 * 4, 0.0], rel=1e-3)  # 4·7/8 = 3.5 → 4


def test_16_and_32_bits():
    x = torch.randn(2, 3, 5, 4)
    assert kq.fake_quantize(x, 32) is x
    assert torch.equal(kq.fake_quantize(x, 16), x.half().float())


def test_int4_packs_two_per_byte_and_round_trips():
    codes = torch.arange(-7, 8, dtype=torch.int8).repeat(2)[:30].view(1, 1, 3, 10)
    packed = kq.pack4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 1, 3, 5)
    assert torch.equal(kq.unpack4(packed), codes)


def test_buffer_bytes_and_refusals():
    b8, b4, b16 = (kq.QuantBuffer((2, 3, 10, 8), b, "cpu", torch.float32) for b in (8, 4, 16))
    assert b8.nbytes == 2 * 3 * 10 * (8 + 2) and b4.nbytes == 2 * 3 * 10 * (4 + 2) and b16.nbytes == 2 * 3 * 10 * 16
    with pytest.raises(TypeError, match="buf"):
        b8[0]
    with pytest.raises(NCNError, match="9 bits is not supported"):
        kq.QuantBuffer((1, 1, 1, 2), 9, "cpu", torch.float32)


# ---- the real cache is the teacher-forced fake quantisation ----------------------------------------


@pytest.mark.parametrize("variant", [v for v in names() if not spec(v).sees_future])
@pytest.mark.parametrize("bits", [[8, 8], [4, 2], [16, 4]])
def test_compressed_cache_generation_equals_the_fake_quantised_forward(variant, bits):
    model = tiny_model(variant)
    prompt = torch.tensor([[3, 1, 4]])
    out, logits = model.generate(prompt, 5, temperature=0.0, return_logits=True,  # stays within block_size 8
                                 cache_factory=kq.QuantKVCache.factory(bits))
    kq.set_fake_quant(model, bits)
    want = model(out[:, :-1]).logits[:, 2:]
    kq.set_fake_quant(model, None)
    assert torch.allclose(logits, want, atol=1e-5, rtol=1e-5)
    plain = model.generate(prompt, 5, temperature=0.0, return_logits=True)[1]
    if bits != [8, 8]:
        assert not torch.allclose(logits, plain, atol=1e-4)  # the compression is really applied


def test_the_cache_survives_the_window_sliding():
    model = tiny_model("causal")
    out = model.generate(torch.tensor([[1, 2]]), 14, temperature=0.0, cache_factory=kq.QuantKVCache.factory([8, 4]))
    assert out.shape == (1, 16)


def test_16_bit_compression_is_the_fp32_loss_within_float_rounding():
    model = tiny_model("causal")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 40, (6, 8), generator=g), torch.randint(0, 40, (6, 8), generator=g)
    ref = score(model, x, y, 4)
    kq.set_fake_quant(model, [16, 16])
    half = score(model, x, y, 4)
    kq.set_fake_quant(model, [4, 4])
    four = score(model, x, y, 4)
    kq.set_fake_quant(model, [32, 32])
    assert score(model, x, y, 4).loss == ref.loss
    assert half.loss == pytest.approx(ref.loss, rel=1e-4, abs=0) and half.loss != ref.loss
    assert abs(four.loss - ref.loss) > 10 * abs(half.loss - ref.loss)


# ---- policies ------------------------------------------------------------------------------------


def test_allocation_known_answers():
    assert kq.allocate([0.5, 2.0, 1.0, 3.0], 6, 2) == [4, 8, 4, 8]
    assert kq.allocate([1.0, 2.0, 3.0], 6, 2) == [4, 6, 8]
    assert kq.allocate([1.0, 1.0], 4, 2) == [6, 2]  # a tie: the earlier layer ranks higher
    rng = np.random.default_rng(0)
    for n in range(1, 9):
        for budget in (4, 5, 6):
            assert np.mean(kq.allocate(list(rng.normal(size=n)), budget, 2)) == budget
    assert kq.bytes_per_token([8, 4], n_head=2, head_dim=8) == 2 * 2 * (8 + 2) + 2 * 2 * (4 + 2)
    assert kq.bytes_per_token([32], 1, 4) == 2 * 16


def test_kv_bits_parsing_and_refusals():
    assert kq.parse_kv_bits(None) is None and kq.parse_kv_bits("8") == 8 and kq.parse_kv_bits("8,4") == [8, 4]
    assert kq.parse_kv_bits("beta:6") == ("beta", 6)
    for bad, why in (("9", "9 bits"), ("abc", "not a bit width"), ("beta:8", "within 2..8"), ("8,,4", "not a bit")):
        with pytest.raises(NCNError, match=why):
            kq.parse_kv_bits(bad)
    with pytest.raises(NCNError, match="3 widths for a model of 2 layers"):
        kq.resolve_kv_bits([8, 4, 4], tiny_model("causal"))
    with pytest.raises(NCNError, match="variant 'none' has none"):
        kq.resolve_kv_bits(("beta", 6), tiny_model("none"), [[1, 2]])
    assert kq.resolve_kv_bits(("beta", 6), tiny_model("causal"), [[1, 2, 3], [4]]) in ([8, 4], [4, 8])


# ---- the claim -----------------------------------------------------------------------------------


def _table(beta_gain: float, seeds, noise=0.0) -> pd.DataFrame:
    """Δloss per seed and budget: uniform 0.02, beta 0.02 − beta_gain, oracle 0.005, random 0.025."""
    rng = np.random.default_rng(1)
    rows = []
    for seed in seeds:
        for budget in (4, 6):
            for policy, d in (("uniform", 0.02), ("beta", 0.02 - beta_gain), ("oracle", 0.005), ("random", 0.025)):
                rows.append({"variant": "causal", "size": "s", "seed": seed, "policy": policy, "budget_bits": budget,
                             "delta_loss": d / budget * 4 + rng.normal(0, noise), "bytes_per_token": 24 * budget})
    return pd.DataFrame(rows)


def test_claim_planted_effect_is_supported():
    res = akv.claim(_table(0.01, [0, 1, 2], noise=0.0005), "causal", "s", 0.95)
    assert res["verdict"] == "supported" and res["ci_high"] < 0
    d = res["details"]
    assert d["oracle_minus_uniform"]["mean"] < res["value"] < 0 < d["random_minus_uniform"]["mean"]
    assert 0 < d["fraction_of_oracle_gain"] < 1


def test_claim_no_effect_is_not_supported():
    assert akv.claim(_table(0.0, [0, 1, 2], noise=0.0005), "causal", "s", 0.95)["verdict"] != "supported"
    assert akv.claim(_table(-0.01, [0, 1, 2], noise=0.0005), "causal", "s", 0.95)["verdict"] == "not supported"


def test_claim_thin_data_is_inconclusive():
    assert akv.claim(_table(0.01, [0]), "causal", "s", 0.95)["verdict"] == "inconclusive"
    assert akv.claim(_table(0.01, [0, 1]), "tonic", "s", 0.95)["verdict"] == "inconclusive"
    assert akv.claim(pd.DataFrame(), "causal", "s", 0.95)["verdict"] == "inconclusive"


def test_a_budget_whose_levels_leave_2_to_8_bits_is_refused_by_the_config():
    from pathlib import Path

    from ncn.config import load_config

    smoke = Path(__file__).resolve().parents[1] / "config" / "smoke.yaml"
    with pytest.raises(NCNError, match="kv_budgets 7 with kv_spread 2 needs levels 5 and 9"):
        load_config(smoke, {"analysis": {"kv_budgets": [4, 7], "kv_spread": 2}})
    assert load_config(smoke, {"analysis": {"kv_budgets": [3, 7], "kv_spread": 1}})["analysis"]["kv_spread"] == 1
