"""bench/sweep.py: the recipe configs it writes and the summary it picks from (known answers)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from ncn.bench import bench_script
from ncn.config import load_config, train_settings
from ncn.errors import NCNError

ROOT = Path(__file__).resolve().parents[1]
sweep = bench_script("sweep")

RECIPE = {"lr": 1e-3, "warmup": 10, "tokens_per_step": 4096, "epochs": 2.0}


def test_recipe_config_overrides_every_size(tmp_path):
    import yaml

    base = load_config(ROOT / "config" / "default.yaml")
    base["size_defs"]["l"]["lr"] = 5e-4  # a per-size override the recipe must win over
    cfg = sweep.recipe_config(base, RECIPE, ["s", "l"], ["none", "causal"], 4096)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cfg = load_config(path)
    for size in ("s", "l"):
        tc = train_settings(cfg, size)
        assert (tc.lr, tc.warmup_steps, tc.tokens, tc.epochs) == (1e-3, 10, None, 2.0)
        assert tc.micro_batch * tc.grad_accum * cfg["size_defs"][size]["block_size"] == 4096
    assert cfg["mlflow"]["enabled"] is False and cfg["eval"]["max_tokens"] == 4096
    with pytest.raises(NCNError, match="not a multiple of size s's block_size 128"):
        sweep.recipe_config(base, {**RECIPE, "tokens_per_step": 1000}, ["s"], ["none"], None)


def _runs(recipe: str, size: str, losses: dict[str, list[float]]) -> list[dict]:
    return [{"recipe": recipe, **RECIPE, "size": size, "seed": i, "variant": v, "heldout_loss": x, "val_loss": x + 1,
             "wall_s": 10.0} for v, xs in losses.items() for i, x in enumerate(xs)]


def test_summary_known_answers():
    rows = (_runs("noisy", "s", {"none": [3.0, 3.4, 2.6], "causal": [3.1, 3.5, 2.7]})  # lowest mean, SD 0.4
            + _runs("steady", "s", {"none": [3.10, 3.11, 3.12], "causal": [3.05, 3.06, 3.07]})  # SD 0.01
            + _runs("worse", "s", {"none": [3.50, 3.51, 3.52], "causal": [3.50, 3.51, 3.52]}))
    s = sweep.summarize(pd.DataFrame(rows), max_sd=0.05).set_index("recipe")
    assert s.loc["noisy", "seed_sd_pooled"] == pytest.approx(0.4)
    assert s.loc["steady", "seed_sd_pooled"] == pytest.approx(0.01)
    assert s.loc["steady", "heldout_loss_mean"] == pytest.approx(3.085)
    assert s.loc["steady", "val_loss_mean"] == pytest.approx(4.085)
    # paired by seed: causal - none is -0.05 every seed, so its SD is 0
    assert s.loc["steady", "delta_causal_none_mean"] == pytest.approx(-0.05)
    assert s.loc["steady", "delta_causal_none_sd"] == pytest.approx(0.0, abs=1e-12)
    assert s.loc["noisy", "delta_causal_none_mean"] == pytest.approx(0.1)
    # the pick: lowest mean among the recipes whose seeds agree (noisy is lower but spread)
    assert s["pick"].tolist().count(True) == 1 and s.loc["steady", "pick"]
    assert s.loc["steady", "wall_s_total"] == 60.0
    # nothing agrees well enough: no pick; one seed: no SD, so no pick either
    assert not sweep.summarize(pd.DataFrame(rows), max_sd=0.001)["pick"].any()
    one = sweep.summarize(pd.DataFrame(_runs("r", "s", {"none": [3.0], "causal": [3.1]})), max_sd=1.0)
    assert math.isnan(one.loc[0, "seed_sd_pooled"]) and not one.loc[0, "pick"]


def test_summary_picks_per_size():
    rows = (_runs("a", "s", {"none": [3.0, 3.01]}) + _runs("b", "s", {"none": [3.2, 3.21]})
            + _runs("a", "l", {"none": [2.9, 2.91]}) + _runs("b", "l", {"none": [2.5, 2.51]}))
    s = sweep.summarize(pd.DataFrame(rows), max_sd=0.05)
    picks = {(r.recipe, r.size) for r in s.itertuples() if r.pick}
    assert picks == {("a", "s"), ("b", "l")}
    assert "delta_causal_none_mean" not in s  # no causal runs: no paired contrast
