"""The LaTeX paper: numbers.tex from a results tree, the macro contract, the hard-coded-number
lint, and (slow) a full latexmk build from a FAKE results tree written here, so these tests do
not wait for the training or analysis stages."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest

from ncn import paper
from ncn.analysis import ab, scaling, skip, tables
from ncn.analysis import claims as claims_stage
from ncn.analysis import cli as analysis_cli
from ncn.config import load_config
from ncn.errors import NCNError
from ncn.fileio import write_json, write_text

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "paper"
TEX_FILES = sorted(PAPER.rglob("*.tex"))
HAVE_TEX = all(shutil.which(t) for t in ("latexmk", "pdflatex", "bibtex", "pdftotext", "pdfinfo", "pdftoppm"))

FIGURES = ("loss_curves", "scaling", "brainscan", "brainscan_dev", "skip_tradeoff")
SKIP_EPS = (0.0, 0.05, 0.1, 0.3, 0.5)


# ------------------------------------------------------------------------------------------------
# a fake results tree: every file in its producer's format (docs/architecture.md), made-up values


def fake_skip_table(run, *_):
    """Stands in for skip.skip_table (which needs a model): the same columns, made-up values.
    `run` is "variant:seed"."""
    variant, seed = run.split(":")[0], int(run.split(":")[1])
    loss = np.array([2.5 + e * e + 0.001 * seed for e in SKIP_EPS])
    return pd.DataFrame({"variant": variant, "size": "s", "seed": seed, "eps": SKIP_EPS, "tokens": 576,
                         "loss": loss, "ppl": np.exp(loss), "skip_frac": np.array(SKIP_EPS) / 2,
                         "ffn_flops_saved": np.array(SKIP_EPS) / 2, "delta_loss": loss - loss[0],
                         "loss_random": loss + 0.5 * np.array(SKIP_EPS), "loss_random_sd": 0.01,
                         "delta_random": loss - loss[0] + 0.5 * np.array(SKIP_EPS), "loss_dense": loss[0], "n_random": 2,
                         "wall_s": [0.01 * (1 - e / 3) for e in SKIP_EPS], "wall_ratio": [1 - e / 3 for e in SKIP_EPS]})


def fake_claims(claims_value: float, cfg: dict) -> dict:
    """claims.compute's document with made-up values and the registry's own words (its notation:
    dPPL, L_reg, <=, 'but'); claim 1's text holds LaTeX specials instead. Claims 3, 5 and 6 have no
    interval, claim 2 is not applicable (no value), as can happen there; claim 9's numbers are
    long (powers of ten), as a smoke run's are."""
    verdicts = ["supported", "not applicable", "inconclusive", "supported", "not supported", "inconclusive",
                "supported", "not supported", "inconclusive", "supported", "not supported"]
    setting = claims_stage.Setting(pd.DataFrame(), {}, cfg, {}, "s")
    claims = []
    for i, c in enumerate(claims_stage.CLAIMS, start=1):
        no_ci = i in (2, 3, 5, 6)
        value, low, high = {1: (claims_value, -0.5, -0.1), 2: (math.nan,) * 3,
                            9: (-1.32e-5, -0.00141, 0.00115)}.get(i, (0.1 * i, -0.5, 0.25))
        claims.append({
            "id": i, "key": c.key, "claim": f"claim {c.key} (with 50% of a_b & c)" if i == 1 else c.text,
            "origin": c.origin, "variant": "causal", "size": "s", "value_label": c.value_label,
            "statistic": c.statistic(setting, "causal"), "null": c.null(setting), "control": c.control(setting),
            "threshold": c.threshold(setting), "value": value, "ci_low": math.nan if no_ci else low,
            "ci_high": math.nan if no_ci else high, "verdict": verdicts[i - 1],
            "reason": f"the reason of {c.key}", "details": {}})
    return {"profile": "smoke", "size": "s", "ncn_variant": "causal", "confidence": 0.95, "tokenizer_kind": "bpe",
            "claims": claims}


def make_fake_results(root: Path, claims_value: float = -0.3127, edit_eval=None) -> dict:
    """Write results/ under `root` as the pipeline would for the smoke profile; return the claims.
    edit_eval(eval_dict) may change each run's eval.json before the analysis commands read it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = root / "results"
    cfg = load_config(REPO / "config" / "smoke.yaml")
    write_json(res / "config.json", cfg)
    # manifest.json as `ncn data fetch` writes it (bytes: the text file), meta.json as `ncn data
    # tokenize` does (bytes: the story text without separator lines, so fewer).
    # The data folder is machine-local (an absolute path under the test's tmp folder): the PDF
    # must print it by name only.
    folder = f"{root.resolve()}/tiny_stories"
    write_json(res / "data" / "manifest.json", {
        "source": f"local:{folder}", "val_split": "official", "val_tail_fraction": None,
        "max_train_bytes": 200_000, "max_train_stories": None,
        "train": {"file": "train.txt", "from": f"{folder}/train.txt", "verbatim": False,
                  "sha256": "ab" * 32, "bytes": 199_980, "stories": 221},
        "valid": {"file": "valid.txt", "from": f"{folder}/valid.txt", "verbatim": True,
                  "sha256": "cd" * 32, "bytes": 794_375, "stories": None}})
    write_json(res / "data" / "meta.json", {
        "dtype": "uint16", "vocab_size": 512, "eot_id": 0, "tokenizer_kind": "bpe", "tokenizer_sha256": "ef" * 32,
        "val_split": "official", "source": f"local:{folder}",
        "train": {"file": "train.bin", "tokens": 61_234, "bytes": 196_442, "stories": 221, "text_sha256": "ab" * 32},
        "valid": {"file": "valid.bin", "tokens": 240_100, "bytes": 794_375, "stories": None,
                  "text_sha256": "cd" * 32}})
    base = {"none": 3.10, "asrun": 2.90, "causal": 3.00, "tonic": 3.05, "static": 3.08}
    run_dirs = []
    for v in cfg["variants"]:
        for si, s in enumerate(cfg["sizes"]):
            for seed in cfg["seeds"]:  # the default seeds only: variant_seeds' extra runs read n/a
                loss = base[v] - 0.2 * si + 0.01 * seed + 0.003 * len(v)
                d = res / "runs" / v / s / f"seed{seed}"
                run_dirs.append(str(d))
                write_json(d / "metrics.json", {
                    "variant": v, "size": s, "seed": seed, "profile": "smoke", "steps": 64, "tokens": 16384,
                    "epochs": 0.27, "tokens_per_step": 256, "final_loss": loss + 0.1, "final_ce": loss + 0.1,
                    "final_reg": 0.001, "reg_init": 0.002, "reg_final": 0.001, "n_params": 40_000 + 1000 * si,
                    "n_params_non_embedding": 20_000 + 1000 * si, "batch_order_sha256": f"hash-{s}-{seed}",
                    "device": "cpu", "dtype": "float32", "wall_time_s": 12.5, "tokens_per_s": 1310.7,
                    "resumed_at_steps": [], "finished": True})
                scores = {"loss": loss, "ppl": math.exp(loss), "bpb": loss * 240_100 / (794_375 * math.log(2)),
                          "tokens": 8192, "bytes": 27_000, "ce_sum_nats": loss * 8192,
                          "loss_prefix_pool": loss + 0.25 if v == "asrun" else None}
                write_json(d / "eval.json", {
                    "variant": v, "size": s, "seed": seed, "n_params": 40_000 + 1000 * si,
                    "n_params_non_embedding": 20_000 + 1000 * si, "max_tokens": 8192, "device": "cpu",
                    **{f"{split}_{k}": x for split in ("val", "heldout") for k, x in scores.items()}})
                if edit_eval is not None:
                    write_json(d / "eval.json", edit_eval(json.loads((d / "eval.json").read_text())))
    # tables/, timing/ and claims.json from the analysis commands themselves; stubbed are only
    # the parts that need models, traces or train logs (skip_table, claims.compute, the figures).
    tdir, fdir, c = res / "tables", res / "figures", str(res / "config.json")

    def analyze(what, *argv, outputs=("csv", "tex")):
        folder = {"csv": tdir, "tex": tdir, "pdf": fdir, "png": fdir}
        paths = [a for ext in outputs for a in (f"--{ext}", str(folder[ext] / f"{what}.{ext}"))]
        assert analysis_cli.main([what, *argv, "--config", c, *paths]) == 0

    analysis_cli.main(["runs", "--runs", *run_dirs, "--out", str(tdir / "runs.csv"),
                       "--timing", str(res / "timing" / "runs.csv")])
    table = ("--runs-table", str(tdir / "runs.csv"))
    with (mock.patch.object(ab, "loss_curves"), mock.patch.object(scaling, "scaling_figure"),
          mock.patch.object(skip, "skip_table", fake_skip_table), mock.patch.object(skip, "tradeoff_figure"),
          mock.patch.object(claims_stage, "compute", return_value=fake_claims(claims_value, cfg)),
          mock.patch("ncn.data.load_meta", return_value={})):
        analyze("ab", *table, outputs=("csv", "tex", "pdf", "png"))
        analyze("scaling", *table, outputs=("csv", "tex", "pdf", "png"))
        analyze("leak", *table)
        # two seeds per variant (the pipeline skips one): the paper averages over seeds
        analyze("skip", "--run", *[f"{v}:{seed}" for v in ("causal", "asrun") for seed in (0, 1)], "--data", "-",
                "--timing", str(res / "timing" / "skip_wall.csv"), "--measure-csv", str(tdir / "skip_measure.csv"),
                outputs=("csv", "tex", "pdf", "png"))
        analyze("claims", *table, "--data", "-", "--json", str(res / "claims.json"), "--paragraphs",
                str(tdir / "claims_text.tex"), outputs=("tex",))
        # no control runs: the control analysis still writes its (empty) tables and figure
        analyze("control", "--runs-csv", str(tdir / "control_runs.csv"), outputs=("csv", "tex", "pdf", "png"))
    claims = json.loads((res / "claims.json").read_text())
    # A table far wider than the text: \gentable must scale it down (no overfull box).
    wide = tables.booktabs([f"column{i}" for i in range(24)], [[f"{i * 1.2345:.4f}" for i in range(24)]], "r" * 24)
    write_text(tdir / "scaling.tex", wide)
    for f in FIGURES:
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1, 2], [3, 2, 1.5])
        ax.set_title(f)
        fdir.mkdir(parents=True, exist_ok=True)
        fig.savefig(fdir / f"{f}.pdf")
        plt.close(fig)
    # The analyses this fake tree does not run (kvcache, knobs, control, ...): a placeholder for
    # every other generated file the tex uses, so the build sees each \\gentable and \\genfigure.
    for used in paper.generated_inputs(PAPER, results=f"{res}/"):
        path = Path(used)
        if path.exists() or path.parent.name == "paper":
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pdf":
            fig, ax = plt.subplots(figsize=(3, 2))
            ax.plot([0, 1], [1, 0])
            ax.set_title(path.stem)
            fig.savefig(path)
            plt.close(fig)
        else:
            write_text(path, tables.booktabs(["placeholder"], [[path.stem.replace("_", " ")]], "l"))
    return claims


def run_numbers(root: Path, repo: Path | None = None) -> Path:
    """`ncn paper numbers` on the tree as the paper_numbers rule calls it (a missing input: n/a);
    the commit is `repo`'s (default: the tree's, no git checkout)."""
    res = root / "results"
    out = res / "paper" / "numbers.tex"
    inputs = {"claims": "claims.json", "runs": "tables/runs.csv", "runs-timing": "timing/runs.csv",
              "ab": "tables/ab.csv", "leak": "tables/leak.csv", "skip": "tables/skip.csv",
              "skip-timing": "timing/skip_wall.csv", "manifest": "data/manifest.json", "meta": "data/meta.json"}
    outputs = {"out": "numbers.tex", "sizes-table": "sizes_table.tex", "config-listing": "config_listing.tex",
               "runs-table": "runs_table.tex"}
    argv = ["numbers", "--config", str(res / "config.json"), "--repo", str(repo or root)]
    argv += [a for k, v in inputs.items() for a in (f"--{k}", str(res / v))]
    argv += [a for k, v in outputs.items() for a in (f"--{k}", str(res / "paper" / v))]
    assert paper.main(argv) == 0
    return out


def defined_macros(numbers_tex: str) -> set[str]:
    return set(re.findall(r"\\newcommand\{\\([A-Za-z]+)\}", numbers_tex))


def macro_values(numbers_tex: Path) -> dict[str, str]:
    return dict(re.findall(r"\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}$", numbers_tex.read_text(), flags=re.M))


# ------------------------------------------------------------------------------------------------
# fast tests: formatting, numbers.tex, the macro contract, the lint


def test_macro_names_are_letters_only():
    assert paper.macro_name("val loss", "causal", "paper18m") == "ValLossCausalPaperOneEightm"
    assert paper.macro_name("size", "xs", "params", "none") == "SizeXsParamsNone"
    with pytest.raises(NCNError):
        paper.macro_name("!!")


def test_formatting():
    assert paper.tex_escape("a_b & 50% #1 $x$ {y} ~^\\") == (
        r"a\_b \& 50\% \#1 \$x\$ \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{}")
    assert paper.fmt_fixed(-0.31274, 2) == "$-$0.31"
    assert paper.fmt_fixed(0.0004, 2) == "0.00040"  # too small for the decimals: two significant digits
    assert paper.fmt_fixed(float("nan")) == "n/a" and paper.fmt_fixed(None) == "n/a"
    assert paper.fmt_sig(1234567) == "1,234,567" and paper.fmt_sig(0.012345) == "0.0123"
    assert paper.fmt_sig(1.5e-7) == r"$1.50\times10^{-7}$"
    assert paper.fmt_human(18_300_000) == "18.3M" and paper.fmt_int(520_000_000) == "520,000,000"
    assert paper.fmt_duration(7300) == "2.03~h" and paper.fmt_duration(90) == "90.0~s"


def test_prose_writes_the_claims_notation_as_latex():
    """claims.json keeps plain words; the tables and paragraphs print real math and quotes."""
    prose = tables.prose
    assert prose("mean paired dPPL = PPL(causal) - PPL(none), 95% t-CI") == (
        r"mean paired $\Delta$PPL = PPL(causal) $-$ PPL(none), 95\% t-CI")
    assert prose("L_reg / reg_lambda <= 0.5 and >= 0.1") == (
        r"$L_{\mathrm{reg}}$ / reg\_lambda $\le$ 0.5 and $\ge$ 0.1")
    assert prose("rho > 0 at 'but', the NCN's") == r"$\rho$ $>$ 0 at `but', the NCN's"
    assert prose('say "hi" now') == "say ``hi'' now"
    assert prose("layer x seed within 2x of 520M") == r"layer $\times$ seed within 2$\times$ of 520M"
    assert prose("gamma < max(gate_eps), the eps skipping") == (
        r"$\gamma$ $<$ max(gate\_eps), the $\varepsilon$ skipping")
    assert prose("||W_down x|| and log10 ratio") == r"$\|$$W_{\mathrm{down}}$ x$\|$ and $\log_{10}$ ratio"
    # ...and words without notation are only escaped: a config key, a hyphen, an apostrophe
    assert prose("a_b & c, t-CI, x-axis, the original's") == r"a\_b \& c, t-CI, x-axis, the original's"


def test_claims_table_fits_the_line_with_real_math(tmp_path):
    doc = fake_claims(-0.3127, load_config(REPO / "config" / "smoke.yaml"))
    tex = claims_stage.claims_tex(doc)
    assert tex.startswith(r"\small\begin{tabularx}{\linewidth}") and tex.rstrip().endswith(r"\end{tabularx}")
    rows = [ln for ln in tex.splitlines() if re.match(r"\d+ & ", ln)]
    assert len(rows) == len(claims_stage.CLAIMS) and all(ln.count(" & ") == 5 for ln in rows)
    for plain in ("dPPL", "L\\_reg", "<=", " 'but'", "dloss"):
        assert plain not in tex, plain
    assert r"$\Delta$PPL" in tex and r"`but'" in tex and r"$\Delta$loss" in tex
    paragraphs = claims_stage.claims_paragraphs(doc)
    assert r"$L_{\mathrm{reg}}$" in paragraphs and "<=" not in paragraphs and "L\\_reg" not in paragraphs


def test_public_path_prints_no_machine_local_path():
    assert paper.public_path("/work/shared/data/tinystories/train.txt", "/work/shared/data/tinystories") == (
        "tinystories/train.txt")
    assert paper.public_path("/elsewhere/x/train.txt", "/work/shared/data/tinystories") == "x/train.txt"
    assert paper.public_path("/train.txt") == "train.txt"
    for kept in ("data/train.txt", "the last 0.05 of the train stories", "TinyStories-train.txt"):
        assert paper.public_path(kept, "/work/shared") == kept
    assert paper.describe_source("local:/work/shared/data/tiny_stories").replace(r"\allowbreak{}", "") == (
        r"the local folder \texttt{tiny\_stories}")


def test_commit_is_read_from_the_git_files_when_git_cannot_say(tmp_path):
    """A checkout git refuses (another user's: "dubious ownership") still reports its commit."""
    from ncn import provenance

    a, b = "a" * 40, "b" * 40
    main = tmp_path / "main"
    (main / ".git" / "refs" / "heads").mkdir(parents=True)
    (main / ".git" / "HEAD").write_text("ref: refs/heads/master\n")
    (main / ".git" / "packed-refs").write_text(f"# pack-refs with: peeled\n{a} refs/heads/master\n")
    (main / "src").mkdir()
    with mock.patch.object(provenance, "_git", return_value=None):
        assert provenance.git_commit(main / "src") == a  # packed
        (main / ".git" / "refs" / "heads" / "master").write_text(b + "\n")
        assert provenance.git_commit(main) == b  # a loose ref wins
        wt = main / ".git" / "worktrees" / "paper"  # a worktree: .git is a file, refs in the main folder
        wt.mkdir(parents=True)
        (wt / "HEAD").write_text("ref: refs/heads/master\n")
        (wt / "commondir").write_text("../..\n")
        (tmp_path / "paper").mkdir()
        (tmp_path / "paper" / ".git").write_text(f"gitdir: {wt}\n")
        assert provenance.git_commit(tmp_path / "paper") == b
        (wt / "HEAD").write_text(a + "\n")  # detached
        assert provenance.git_commit(tmp_path / "paper") == a
        assert provenance.git_commit(tmp_path) == provenance.UNKNOWN  # no checkout: unknown, never made up


def test_count_tick_labels():
    from ncn.analysis.plots import count_label

    got = [count_label(x) for x in (0, 500, 2000, 12000, 1500, 16384, 2e6, 1.2e9, -3000, 0.25)]
    assert got == ["0", "500", "2k", "12k", "1.5k", "16.4k", "2M", "1.2B", "-3k", "0.25"]


@pytest.mark.parametrize("scale", ["linear", "log"])
def test_count_axis_ticks_do_not_collide(scale):
    """Figure 1's x axis (training tokens up to 16,384, half the text width): short labels, none
    overlapping its neighbour (they printed as "1000012000140001600")."""
    import matplotlib.pyplot as plt

    from ncn.analysis import plots

    plots.setup()
    fig, ax = plt.subplots(figsize=(plots.TEXT_WIDTH_IN / 2, 2.5))
    x = [256, 4096, 8192, 16384] if scale == "linear" else [2e4, 4e4, 9e4, 3e5]
    ax.plot(x, [3, 2, 1.5, 1.4])
    ax.set_xscale(scale)
    plots.count_axis(ax.xaxis)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    shown = [t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    boxes = sorted((t.get_window_extent().x0, t.get_window_extent().x1) for t in shown)
    plt.close(fig)
    assert 3 <= len(shown) <= 7
    assert all(len(t.get_text()) <= 4 for t in shown), [t.get_text() for t in shown]
    assert all(b[0] > a[1] for a, b in zip(boxes, boxes[1:])), "tick labels overlap"
    if scale == "linear":
        assert [t.get_text() for t in shown] == ["0", "5k", "10k", "15k"]


def test_brain_scan_is_as_wide_as_the_text_and_labels_every_token(tmp_path):
    """At print size (the figure is the text's width) a token label is at least 6 pt and has
    room: one panel per (signal, variant) across the whole width, labels under the last only."""
    import matplotlib.pyplot as plt

    from ncn.analysis import brainscan, plots

    tokens = [f"tok{i}" for i in range(26)]
    rows = [{"pos": p, "layer": layer, "token": t, "token_id": p, "g": 1.0, "beta": 1.0, "gamma": 0.9}
            for p, t in enumerate(tokens) for layer in range(6)]
    scans = {v: brainscan.matrices(pd.DataFrame(rows)) for v in ("causal", "asrun", "tonic", "static")}
    cfg = load_config(REPO / "config" / "smoke.yaml")
    figs = []
    with mock.patch.object(brainscan.options, "save_figure", lambda fig, *a, **k: figs.append(fig)):
        brainscan._heatmaps(scans, cfg, tmp_path / "b.pdf", tmp_path / "b.png", deviation=False)
    fig = figs[0]
    width, height = fig.get_size_inches()
    assert width == plots.TEXT_WIDTH_IN and height < 0.65 * 9.7  # fits \genfigure[0.65] unscaled (A4 text)
    labelled = [ax for ax in fig.axes if any(t.get_text() for t in ax.get_xticklabels())]
    assert len(labelled) == 1 and [t.get_text() for t in labelled[0].get_xticklabels()] == tokens
    assert min(t.get_fontsize() for t in labelled[0].get_xticklabels()) >= 6
    panel_width_in = labelled[0].get_position().width * width
    assert panel_width_in / len(tokens) >= 0.15  # inches per token: a rotated 7 pt label is 0.1 in
    colour_bars = [ax for ax in fig.axes if ax.get_label().startswith("colour bar")]
    assert len(colour_bars) == 3 and all(cb.yaxis.label.get_fontsize() >= 7 for cb in colour_bars)
    plt.close(fig)


def test_numbers_from_fake_results(tmp_path):
    claims = make_fake_results(tmp_path)
    out = run_numbers(tmp_path)
    text = out.read_text()
    macros = defined_macros(text)
    # One definition per name, every name letters only, every value on one line.
    assert len(re.findall(r"\\newcommand", text)) == len(macros)
    m = macro_values(out)
    assert m["Profile"] == "smoke" and m["GitCommit"] == "unknown"  # tmp_path is no git checkout
    assert m["ClaimsTotal"] == "11" and m["ClaimsSupported"] == "4" and m["ClaimsInconclusive"] == "3"
    assert m["ClaimsNotApplicable"] == "1" and m["ClaimsNotSupported"] == "3"
    # the original's six claims apart from its future work (8, 10, 11), its promise (9) and our finding (7)
    assert (m["ClaimsOriginalTotal"], m["ClaimsOriginalSupported"], m["ClaimsOriginalNotApplicable"]) == ("6", "2", "1")
    assert (m["ClaimsReplicationTotal"], m["ClaimsReplicationSupported"]) == ("1", "1")
    assert (m["ClaimsPromiseTotal"], m["ClaimsPromiseInconclusive"]) == ("1", "1")
    future = ("ClaimsFutureWorkTotal", "ClaimsFutureWorkNotSupported", "ClaimsFutureWorkSupported")
    assert tuple(m[k] for k in future) == ("3", "2", "1")
    assert m["ClaimOneZeroVerdict"] == "supported" and m["ClaimOneOneOrigin"] == "original, future work"
    assert m["ClaimOneValue"] == "$-$0.313" and m["ClaimOneVerdict"] == "supported"
    assert m["ClaimTwoVerdict"] == "not applicable" and m["ClaimTwoValue"] == "n/a"
    assert m["ClaimSevenOrigin"] == "replication" and m["ClaimTwoReason"] == r"the reason of baseline\_ppl"
    assert m["ClaimOneText"] == r"claim ab\_beats\_baseline (with 50\% of a\_b \& c)"
    # Largest size is "s"; causal - none = -0.1 + 0.003 per seed pair: paired CI has zero width.
    loss = {v: [b - 0.2 + 0.01 * s + 0.003 * len(v) for s in (0, 1)] for v, b in (("none", 3.10), ("causal", 3.00))}
    expect = sum(math.exp(c) - math.exp(b) for c, b in zip(loss["causal"], loss["none"])) / 2
    assert m["DeltaPPLCausalLargest"] == paper.fmt_fixed(expect, 2)
    assert m["ValLossNoneLargest"] == paper.fmt_fixed((2.912 + 2.922) / 2, 3)
    assert m["LeakGap"] == "$-$0.250" and m["ConfidencePct"] == r"95\%" and m["LearningRate"] == "0.003"
    assert m["VocabSize"] == "512" and m["DataTrainTokens"] == "61,234" and m["DataTrainSha"] == "ab" * 6
    # Bytes: the tokenized story text (meta.json, the bits-per-byte denominator), not the file's.
    assert m["DataTrainBytes"] == "196,442" and m["DataTrainStories"] == "221" and m["DataValidStories"] == "n/a"
    # the data folder by name, never its machine-local absolute path
    assert m["DataSource"].replace(r"\allowbreak{}", "") == r"the local folder \texttt{tiny\_stories}"
    assert m["DataTrainFrom"].replace(r"\allowbreak{}", "") == r"\texttt{tiny\_stories/train.txt}"
    assert m["BatchOrderIdentical"] == "identical"
    assert m["WallTimeTotal"] == "4.17~min"  # 20 runs x 12.5 s
    assert m["TokensPerSecondBaselineLargest"] == "1,311"  # 1310.7, rounded
    assert m["ClaimThreeCI"] == "no interval" and m["ClaimOneCI"].endswith("[$-$0.500, $-$0.100]")
    assert m["NumRunsFinished"] == "20"
    # Skip: largest eps whose mean loss increase is at most skip_tolerance_nats = 0.01: 0.1 (+0.01), not 0.3 (+0.09).
    assert m["SkipEps"] == "0.1" and m["SkipFraction"] == r"5.0\%" and m["SkipFlopsSaved"] == r"5.0\%"
    assert m["SkipWallRatio"] == paper.fmt_sig(1 - 0.1 / 3)  # joined from timing/skip_wall.csv
    # Parameter counts from the config (meta device): the baseline is matched to causal within 0.5%.
    pn, pc = (int(m[f"SizeSParams{v}"].replace(",", "")) for v in ("None", "Causal"))
    assert abs(pn - pc) <= 0.005 * pc
    assert (tmp_path / "results" / "paper" / "sizes_table.tex").read_text().count(r"\texttt{") >= 2
    runs_tex = (tmp_path / "results" / "paper" / "runs_table.tex").read_text()
    # header + one row per planned run: 20 written, 4 more planned by variant_seeds (none, causal seed 2) read n/a
    # caption + the header twice (first page, continued pages) + a row per run
    assert runs_tex.count(r"\\") == 3 + 24 and "2.922" in runs_tex and runs_tex.count("n/a") >= 4
    assert r"\begin{longtable}" in runs_tex and r"\endhead" in runs_tex  # breaks across pages
    listing = (tmp_path / "results" / "paper" / "config_listing.tex").read_text()
    assert listing.startswith(r"\begin{Verbatim}") and "profile: smoke" in listing
    assert claims["claims"][0]["value"] == -0.3127


def test_missing_optional_inputs_say_na_but_missing_claims_fail(tmp_path):
    make_fake_results(tmp_path)
    res = tmp_path / "results"
    for f in ("tables/runs.csv", "timing/runs.csv", "tables/ab.csv", "data/manifest.json", "data/meta.json",
              "timing/skip_wall.csv"):
        (res / f).unlink()
    m = macro_values(run_numbers(tmp_path))
    assert m["ValPPLCausalLargest"] == "n/a" and m["DataSource"] == "n/a" and m["DataTrainTokens"] == "n/a"
    assert m["VocabSize"] == "n/a" and m["SizeSParamsNone"] == "n/a"  # the counts need the vocabulary
    assert m["WallTimeTotal"] == "n/a" and m["NumRunsFinished"] == "0" and m["ClaimOneVerdict"] == "supported"
    assert m["SkipEps"] == "0.1" and m["SkipWallRatio"] == "n/a"  # only the measured times are missing
    (res / "tables" / "skip.csv").unlink()
    assert macro_values(run_numbers(tmp_path))["SkipEps"] == "n/a"
    assert macro_values(run_numbers(tmp_path))["LeakGap"] == "$-$0.250"  # leak.csv is still there
    (res / "tables" / "leak.csv").unlink()
    assert macro_values(run_numbers(tmp_path))["LeakGap"] == "n/a"
    (res / "claims.json").unlink()
    with pytest.raises(NCNError, match="claims.json"):
        run_numbers(tmp_path)


def _used_macros() -> dict[str, list[str]]:
    """Commands starting with an uppercase letter that paper/*.tex uses: ours, from numbers.tex."""
    latex = {"LaTeX", "TeX", "Large", "LARGE", "Huge", "Delta", "Sigma", "Gamma", "Pr", "Rightarrow",
             "Leftarrow", "L"}
    used: dict[str, list[str]] = {}
    for f in TEX_FILES:
        body = re.sub(r"(?<!\\)%.*", "", f.read_text())
        for name in re.findall(r"\\([A-Z][A-Za-z]*)", body):
            if name not in latex:
                used.setdefault(name, []).append(f.name)
    return used


def test_every_macro_the_paper_uses_is_generated(tmp_path):
    make_fake_results(tmp_path)
    defined = defined_macros(run_numbers(tmp_path).read_text())
    used = _used_macros()
    assert len(used) > 50  # the scan works: the prose quotes many numbers
    missing = {k: v for k, v in used.items() if k not in defined}
    assert not missing, f"macros used in paper/ but not written by `ncn paper numbers`: {missing}"


def test_a_size_name_colliding_with_another_is_refused(tmp_path):
    from ncn.analysis.macros import Macros

    m = Macros()
    m[paper.macro_name("size", "s_1", "val loss")] = "1"
    with pytest.raises(NCNError, match="defined twice"):
        m[paper.macro_name("size", "s1", "val loss")] = "2"


# ------------------------------------------------------------------------------------------------
# the paper declares its inputs: the generated files its tex uses


def test_generated_inputs_are_read_from_the_tex(tmp_path):
    (tmp_path / "sections").mkdir()
    (tmp_path / "main.tex").write_text("\\input{results/paper/numbers}\n\\input{paper/sections/intro}\n"
                                       "% \\gentable{results/tables/commented_out.tex}\n")
    (tmp_path / "sections" / "intro.tex").write_text(
        "\\gentable{results/tables/ab.tex} and \\genfigure[0.35]{results/figures/scaling.pdf}\n"
        "\\newcommand{\\gentable}[1]{\\input{#1}} 50\\% \\gentable{results/tables/ab.tex}\n")
    assert paper.generated_inputs(tmp_path) == ["results/figures/scaling.pdf", "results/paper/numbers.tex",
                                                "results/tables/ab.tex"]
    (tmp_path / "sections" / "fig.tex").write_text("\\genfigure{results/figures/scaling}\n")
    with pytest.raises(NCNError, match="no file extension"):
        paper.generated_inputs(tmp_path)


def test_the_real_paper_uses_every_analysis_output_it_shows():
    used = paper.generated_inputs(PAPER)
    assert {"results/paper/numbers.tex", "results/tables/claims.tex", "results/figures/brainscan.pdf",
            "results/paper/sizes_table.tex"} <= set(used)
    assert all(Path(u).suffix in (".tex", ".pdf") for u in used)


def test_the_paper_rule_inputs_follow_the_tex(tmp_path):
    """Every generated file the tex uses is an output of some rule (a dry run plans each one), and a
    \\gentable of a table no rule makes becomes a missing input of the paper rule."""
    from test_workflow import copy_repo, snakemake

    repo = copy_repo(tmp_path / "repo")
    smoke = ("-n", "--cores", "1", "--configfile", "config/smoke.yaml")
    # the tex names results/...; the smoke profile's files live in results/smoke/
    r = snakemake(repo, *paper.generated_inputs(PAPER, results="results/smoke/"), *smoke)  # targets first
    assert r.returncode == 0, r.stdout[-3000:]
    results_tex = repo / "paper" / "sections" / "results.tex"
    results_tex.write_text(results_tex.read_text() + "\n\\gentable{results/tables/new_analysis.tex}\n")
    r = snakemake(repo, "results/smoke/paper/ncn.pdf", *smoke)
    assert r.returncode != 0 and "MissingInputException" in r.stdout and "results/smoke/tables/new_analysis.tex" in r.stdout


# The hard-coded-number lint. Digits are allowed only where they are not numbers of ours:
ORIGINAL_NUMBERS = {  # the original work's reported numbers and its init values (facts about it)
    "1.5082", "4.5", "18M", "520M", "5.5", "0.70", "0.5",
}
NAMES_WITH_DIGITS = {"GPT-2", "SHA-256"}
MATH_CONSTANTS = {"0", "1", "2", "0.01"}  # in formulas: (s-1)^2, 2 sigmoid, softplus + 0.01, ln 2
SKIP_ARGS = r"(?:cite[pt]?|label|ref|eqref|autoref|input|include|includegraphics|usepackage|documentclass|" \
            r"graphicspath|bibliography|bibliographystyle|genfigure|gentable|cmidrule|hypersetup|newsavebox|" \
            r"setlength|vspace|hspace|resizebox|sbox|begin|end|(?:re)?newcommand|(?:re)?newenvironment)(?![A-Za-z])"


def hardcoded_numbers(text: str) -> list[str]:
    """Digit tokens in LaTeX source that are neither allowed constants nor in skipped contexts."""
    t = re.sub(r"(?<!\\)%.*", "", text)  # comments
    # Display math becomes inline math first (its \begin/\end are stripped below).
    t = re.sub(r"\\begin\{(equation|align)\*?\}(.*?)\\end\{\1\*?\}", lambda mt: "$" + mt.group(2) + "$", t, flags=re.S)
    t = re.sub(r"#\d", " ", t)  # macro parameters
    t = re.sub(r"\\" + SKIP_ARGS + r"\*?(\[[^\]]*\]|\{[^{}]*\})*", " ", t)
    t = re.sub(r"\[[^\]\n]*\]", lambda mt: mt.group(0) if re.search(r"\\[A-Z]", mt.group(0)) else " ", t)
    t = re.sub(r"-?\d*\.?\d+\s*\\(?:linewidth|textwidth|textheight|columnwidth)", " ", t)
    t = re.sub(r"\b\d*\.?\d+(?:pt|em|ex|cm|mm|in)\b", " ", t)
    spans = [m.span() for m in re.finditer(r"\$[^$]*\$", t)]
    bad = []
    for m in re.finditer(r"[A-Za-z-]*\d[\d.,]*[A-Za-z%]*", t):
        tok = m.group(0).rstrip(".,")
        if tok in ORIGINAL_NUMBERS or tok in NAMES_WITH_DIGITS:
            continue
        if any(a <= m.start() < b for a, b in spans) and re.sub(r"[^\d.]", "", tok) in MATH_CONSTANTS:
            continue
        bad.append(tok)
    return bad


def test_no_hardcoded_numbers_in_the_prose():
    found = {f.relative_to(PAPER).as_posix(): hardcoded_numbers(f.read_text()) for f in TEX_FILES}
    found = {k: v for k, v in found.items() if v}
    assert not found, f"numbers in paper/ that should be macros from numbers.tex: {found}"


def test_no_macro_swallows_the_space_after_it():
    """TeX drops the space after a control word: "\\ValLoss nats" prints "2.9nats". Write "\\ValLoss{} nats"."""
    bad = []
    for f in TEX_FILES:
        body = re.sub(r"(?<!\\)%.*", "", f.read_text())
        gobbled = re.finditer(r"\\[A-Z][A-Za-z]*(?:[ \t]*\n[ \t]*|[ \t]+)(?=[A-Za-z0-9(\\$\[])", body)
        bad += [f"{f.name}: {m.group(0).strip()}" for m in gobbled]
    assert not bad, bad


def test_the_lint_catches_a_number():
    assert hardcoded_numbers(r"The loss was 3.21 after 5 epochs \cite{x2020}.") == ["3.21", "5"]
    assert hardcoded_numbers(r"as reported, 1.5082 \citep{ncn} at [width=0.5\linewidth] % 42") == []
    assert hardcoded_numbers(r"$g = 2\sigma(z)$ and $\beta = 0.7$") == ["0.7"]
    assert hardcoded_numbers("\\begin{equation} x^2 + 3 \\end{equation} \\citep[p.~4]{a1}") == ["3"]


def test_pdf_numbers_read_scientific_notation():
    """The claims table prints 1.23e-05 as $1.23 \\times 10^{-5}$: pdftotext gives "1.23 × 10−5"."""
    text = "a 1.23 \u00d7 10-5 [-4.5 \u00d7 10-6, 2 \u00d7 103] b 0.5"
    got = paper.pdf_numbers(text)
    assert any(abs(x - 1.23e-5) < 1e-12 for x in got) and any(abs(x + 4.5e-6) < 1e-12 for x in got)
    assert 2000.0 in got and 0.5 in got


def test_check_log():
    log = ("LaTeX Warning: Reference `fig:x' on page 3 undefined on input line 12.\n"
           "Package natbib Warning: Citation `foo' on page 1 undefined on input line 4.\n"
           "Overfull \\hbox (3.5pt too wide) in paragraph at lines 10--12\n"
           "Overfull \\hbox (45.0pt too wide) in paragraph at lines 20--22\n")
    errors, warnings = paper.check_log(log)
    assert errors == ["undefined citation 'foo'", "undefined reference 'fig:x'"] and len(warnings) == 2
    errors, _ = paper.check_log(log.split("\n", 2)[2], max_overfull_pt=20)
    assert len(errors) == 1 and "45.0pt at lines 20--22" in errors[0]
    assert paper.check_log("LaTeX Warning: There were undefined references.\n")[0]
    assert paper.check_log("Output written on ncn.pdf (9 pages).\n") == ([], [])


def test_check_command(tmp_path, capsys):
    log = tmp_path / "ncn.log"
    log.write_text("LaTeX Warning: Citation `nobody2020' on page 2 undefined on input line 7.\n")
    with pytest.raises(NCNError, match="undefined citation 'nobody2020'"):
        paper.main(["check", "--log", str(log)])
    log.write_text("Overfull \\hbox (12.0pt too wide) in paragraph at lines 1--2\n")
    assert paper.main(["check", "--log", str(log)]) == 0
    assert "overfull" in capsys.readouterr().err
    with pytest.raises(NCNError, match="more than 5"):
        paper.main(["check", "--log", str(log), "--max-overfull-pt", "5"])
    with pytest.raises(NCNError, match="not found"):
        paper.main(["check", "--log", str(tmp_path / "missing.log")])


# ------------------------------------------------------------------------------------------------
# the build (slow): one latexmk run from the fake tree, shared by the assertions


MAX_OVERFULL_PT = 1.0  # an overfull box wider than this is visible on the page


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not HAVE_TEX:
        pytest.skip("latexmk/pdflatex/bibtex/pdftotext not installed (make setup installs them)")
    root = tmp_path_factory.mktemp("paper")
    (root / "paper").symlink_to(PAPER, target_is_directory=True)
    claims = make_fake_results(root)
    run_numbers(root, repo=REPO)  # this checkout's commit, as the pipeline reports it
    rc = paper.main(["build", "--root", str(root)])
    assert rc == 0
    pdf = root / "results" / "paper" / "ncn.pdf"
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    log = (root / "results" / "paper" / "build" / "ncn.log").read_text(errors="replace")
    return {"root": root, "pdf": pdf, "text": text, "log": log, "claims": claims}


@pytest.mark.slow
def test_build_log_is_clean(built):
    errors, warnings = paper.check_log(built["log"], max_overfull_pt=MAX_OVERFULL_PT)
    assert not errors, errors
    assert "LaTeX Error" not in built["log"]


@pytest.mark.slow
def test_pdf_has_claims_table_and_the_claims_numbers(built):
    text = re.sub(r"\s+", " ", built["text"]).replace("\u2212", "-")
    assert paper.CLAIMS_TABLE_HEADING in text
    assert paper.CLAIMS_TABLE_HEADING in (PAPER / "sections" / "results.tex").read_text()
    value = built["claims"]["claims"][0]["value"]
    found = [float(x) for x in re.findall(r"-?\d+\.\d+", text)]
    assert any(abs(x - value) <= 0.0005 + 1e-12 for x in found), f"{value} not in the PDF"
    claims_path = built["root"] / "results" / "claims.json"
    assert paper.verify_pdf(built["pdf"], claims_path) == []
    # ...and the check can fail: a value the PDF does not show.
    doc = json.loads(claims_path.read_text())
    doc["claims"][0]["value"] = 987.654
    bad = built["root"] / "bad_claims.json"
    bad.write_text(json.dumps(doc))
    assert paper.verify_pdf(built["pdf"], bad) == [f"claim 1: value 987.654 not found in {built['pdf']}"]
    for verdict in ("supported", "not supported", "inconclusive"):
        assert verdict in text


@pytest.mark.slow
def test_pdf_has_every_section_and_reference(built):
    text = built["text"]
    for heading in ("Abstract", "Background", "Methods", "Experimental setup", "Results", "Limitations",
                    "Conclusions", "References", "Reproducibility"):
        assert heading in text
    assert "Perez" in text and "Raposo" in text and "Schuster" in text  # the bibliography was built
    assert "profile: smoke" in text  # the config listing
    assert "??" not in text  # no unresolved \ref


# A machine-local absolute path as pdftotext prints it (a line break may split it anywhere after).
ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:work|tmp|home|root|Users|mnt|data|scratch|var|opt|srv|private)/")


def test_absolute_path_pattern():
    for bad in ("from /work/shared/data/x", "(/tmp/pytest-1/tiny_stories)", "at /home/me/data", "/data/ts"):
        assert ABSOLUTE_PATH.search(bad), bad
    for fine in ("tiny_stories/train.txt", "../shared/data/gpt2", "nats/token", "min/max/mean", "PPL/seed"):
        assert not ABSOLUTE_PATH.search(fine), fine


@pytest.mark.slow
def test_build_has_no_overfull_box_over_1pt(built):
    """The tables fit the text width: no overfull box wider than 1 pt anywhere (the claims table
    overflowed by 86 pt into its Verdict column before it became a tabularx)."""
    boxes = [(float(pt), where) for pt, where in re.findall(r"Overfull \\[hv]box \(([\d.]+)pt too \w+\)([^\n]*)",
                                                           built["log"])]
    assert not [b for b in boxes if b[0] > MAX_OVERFULL_PT], boxes


@pytest.mark.slow
def test_pdf_prints_no_absolute_path(built):
    """The data folder (an absolute path under the test's tmp folder) is printed by name only."""
    text = built["text"]
    assert not ABSOLUTE_PATH.findall(text), [text[max(0, m.start() - 60):m.end() + 60]
                                             for m in ABSOLUTE_PATH.finditer(text)]
    flat = re.sub(r"\s+", "", text)
    assert str(built["root"].resolve()) not in flat and "tiny_stories" in flat


@pytest.mark.slow
def test_pdf_metadata_and_commit(built):
    """pdfinfo shows a Title and an Author; the title page, footnote and appendix show this
    checkout's commit (the one MLflow records, ncn.provenance.git_commit), never "unknown"."""
    from ncn.provenance import UNKNOWN, git_commit

    info = subprocess.run(["pdfinfo", str(built["pdf"])], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"^(\w+):[ \t]*(.*)$", info, flags=re.M))
    assert fields.get("Title", "").startswith("Neuromodulatory Control Networks, Replicated"), info
    assert fields.get("Author", "").strip() == "The NCN replication pipeline", info
    commit = git_commit(REPO)
    if commit == UNKNOWN:
        pytest.skip("this checkout is no git repository")
    assert commit[:12] in fields.get("Subject", ""), info
    text = re.sub(r"\s+", " ", built["text"])
    assert text.count(commit[:12]) >= 3, "title date, footnote and appendix each show the commit"
    assert "commit unknown" not in text


@pytest.mark.slow
def test_every_page_renders_and_is_not_blank(built, tmp_path):
    from PIL import Image

    info = subprocess.run(["pdfinfo", str(built["pdf"])], capture_output=True, text=True, check=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, flags=re.M).group(1))
    subprocess.run(["pdftoppm", "-r", "30", "-gray", str(built["pdf"]), str(tmp_path / "page")], check=True,
                   capture_output=True, timeout=300)
    images = sorted(tmp_path.glob("page*.pgm"))
    assert pages > 5 and len(images) == pages
    for image in images:
        darkest, _ = Image.open(image).getextrema()
        assert darkest < 128, f"{image.name} is blank"


@pytest.mark.slow
def test_undefined_reference_fails_the_build(tmp_path):
    if not HAVE_TEX:
        pytest.skip("TeX not installed")
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "ncn.tex").write_text(
        "\\documentclass{article}\\begin{document}See~\\ref{nowhere}.\\end{document}\n")
    with pytest.raises(NCNError, match="undefined reference 'nowhere'"):
        paper.main(["build", "--root", str(tmp_path)])
    assert not (tmp_path / "results" / "paper" / "ncn.pdf").exists()
