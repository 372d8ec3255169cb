"""The block-skipping grid always measures the ε that claim 6's functional leg reads."""

from pathlib import Path

import pytest

from ncn.analysis.options import skip_grid
from ncn.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_grid_adds_zero_and_the_largest_gate_eps_once_ascending():
    assert skip_grid({"skip_eps": [0.9, 0.5], "gate_eps": [0.05, 0.2, 0.1]}) == [0.0, 0.2, 0.5, 0.9]
    assert skip_grid({"skip_eps": [0.2, 0.0], "gate_eps": [0.2]}) == [0.0, 0.2]


@pytest.mark.parametrize("profile", ["smoke", "default", "paper", "cpu-trunk"])
def test_every_profile_measures_the_gate_claims_eps(profile):
    a = load_config(ROOT / "config" / f"{profile}.yaml")["analysis"]
    assert max(a["gate_eps"]) in skip_grid(a)
