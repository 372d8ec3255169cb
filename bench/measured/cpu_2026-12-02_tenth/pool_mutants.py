"""Twelve hand-written mutants of the cumulative pool (f5aae90; the source text as of the review commit after a460987), each run against tests/test_model.py (-x): a
mutant the tests do not fail would be a gap. Run from the repository root; restores src/ncn/model.py."""
import subprocess
from pathlib import Path
src = Path("src/ncn/model.py"); orig = src.read_text()
mutants = [
 ("cap removed", "torch.exp(rel.clamp_max(POOL_SPREAD))", "torch.exp(rel)"),
 ("cap at 0", "clamp_max(POOL_SPREAD))  # (B, T, H), e_0 = 1", "clamp_max(0.0))  # (B, T, H), e_0 = 1"),
 ("guard per element, not running max", "far = spread.cummax(dim=1).values > POOL_SPREAD", "far = spread > POOL_SPREAD"),
 ("guard never", "if spread.numel() and spread.amax() > POOL_SPREAD:", "if False:"),
 ("guard always, whole window", "out = torch.where(far.unsqueeze(-1), _chunked_prefix_pool(scores, v, C), out)", "out = _chunked_prefix_pool(scores, v, C)"),
 ("guard inverted", "out = torch.where(far.unsqueeze(-1), _chunked_prefix_pool(scores, v, C), out)", "out = torch.where(far.unsqueeze(-1), out, _chunked_prefix_pool(scores, v, C))"),
 ("reference = window max", "rel = scores - scores[:, :1].detach()", "rel = scores - scores.amax(1, keepdim=True).detach()"),
 ("backward: no reverse", "Y = y.flip(1).cumsum(1).flip(1)", "Y = y.cumsum(1)"),
 ("backward: c term dropped", "return e * ((v * Y).sum(-1) - Yc), e.unsqueeze(-1) * Y", "return e * (v * Y).sum(-1), e.unsqueeze(-1) * Y"),
 ("backward: dv without e", "return e * ((v * Y).sum(-1) - Yc), e.unsqueeze(-1) * Y", "return e * ((v * Y).sum(-1) - Yc), Y"),
 ("backward: c without out", "c = (y * out).sum(-1)", "c = y.sum(-1)"),
 ("auto picks chunked", 'impl = "cumulative" if cpu else "chunked"', 'impl = "chunked"'),
]
rows = []
try:
    for name, a, b in mutants:
        assert orig.count(a) == 1, name
        src.write_text(orig.replace(a, b))
        r = subprocess.run([".venv/bin/python", "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_model.py"],
                           capture_output=True, text=True)
        last = [l for l in r.stdout.splitlines() if "passed" in l or "failed" in l or "error" in l][-1:]
        rows.append((name, "killed" if r.returncode else "SURVIVED", last[0] if last else r.stdout[-200:]))
        print(rows[-1], flush=True)
finally:
    src.write_text(orig)
