"""Bad inputs are refused: one clear line naming the culprit, exit code != 0, nothing overwritten.

Every refusal is a case of CASES: the command a user would type (run in-process through
`ncn.cli.main`, in a folder laid out like the pipeline's results/) and a fragment its message must
contain. Each case also checks that no file of the site changed (contents and mtimes) and that
nothing new appeared. The table of inputs and messages in tests/README.md is generated from
what these commands print; `test_readme_table_is_current` keeps it honest. Regenerate it with

    NCN_UPDATE_README=1 .venv/bin/pytest tests/test_bad_inputs.py

The one slow test runs a data error through Snakemake (the DAG's own config errors are tested
in tests/test_workflow.py::test_bad_config_fails_before_any_job_naming_the_key).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from test_train import make_data, run_train, tiny_config

torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"
RUN = "results/runs/causal/xs/seed0"
TRAIN = ["--variant", "causal", "--size", "xs", "--seed", "0", "--out", RUN, "--data", "results/data", "--threads", "1"]
LONG_PROMPT = "Once upon a time, " + " ".join(["Tim saw a big dog and Sue liked a red ball."] * 4)


@dataclass(frozen=True)
class Case:
    id: str
    input: str  # what is wrong, in words
    argv: tuple[str, ...]  # after `ncn`, run in the site folder
    expect: str  # a fragment the message must contain (the culprit)
    refused: bool = True  # False: accepted with a note (exit 0)


CASES = [
    # -- config ------------------------------------------------------------------------------------
    Case("config-missing", "config file that does not exist", ("train", "--config", "nope.yaml", *TRAIN),
         "config file not found: nope.yaml"),
    Case("config-unknown-key", "config: unknown key `train.lrr`", ("train", "--config", "bad_key.yaml", *TRAIN),
         "'lrr' was unexpected"),
    Case("config-wrong-type", "config: wrong type `train.micro_batch: many`",
         ("train", "--config", "bad_type.yaml", *TRAIN), "train.micro_batch"),
    Case("config-unknown-variant", "config: unknown variant in `variants`",
         ("train", "--config", "bad_variant.yaml", *TRAIN), "bogus"),
    Case("config-unknown-size", "config: `sizes` names a size not in `size_defs`",
         ("train", "--config", "bad_size.yaml", *TRAIN), "unknown size 'huge'"),
    Case("cli-unknown-variant", "`--variant` not a variant",
         ("train", "--config", "config.yaml", "--variant", "bogus", "--size", "xs", "--seed", "0",
          "--out", "results/runs/bogus/xs/seed0", "--data", "results/data", "--threads", "1"),
         "unknown variant 'bogus'"),
    Case("cli-unknown-size", "`--size` not in the config's `size_defs`",
         ("train", "--config", "config.yaml", "--variant", "causal", "--size", "huge", "--seed", "0",
          "--out", "results/runs/causal/huge/seed0", "--data", "results/data", "--threads", "1"),
         "unknown size 'huge'"),
    # -- context: the config asks a trained run for another context than its checkpoint's -----------
    Case("context-train", "config asks a finished run for block_size 32 (trained with 16)",
         ("train", "--config", "ctx32.yaml", *TRAIN), "model.block_size 16 in the run, 32 asked"),
    Case("context-evaluate", "config asks a finished run for block_size 32 (trained with 16)",
         ("evaluate", "--run", RUN, "--config", "ctx32.yaml"),
         "context mismatch: size_defs.xs.block_size is 32 in ctx32.yaml but 16 in"),
    Case("context-generate", "config asks a finished run for block_size 32 (trained with 16)",
         ("generate", "--run", RUN, "--config", "ctx32.yaml"),
         "context mismatch: size_defs.xs.block_size is 32 in ctx32.yaml but 16 in"),
    Case("context-long-prompt", "prompt longer than the model's context (accepted)",
         ("generate", "--run", "results/runs/causal/xs/seed0_copy", "--config", "long_prompt.yaml",
          "--out", "long_prompt.json"),
         "longer than the model's context (block_size 16)", refused=False),
    # -- sampling settings -------------------------------------------------------------------------
    Case("generate-temperature", "negative sampling temperature",
         ("generate", "--run", RUN, "--prompt", "Tim", "--temperature", "-1"), "--temperature must be a finite number >= 0"),
    Case("generate-top-k", "top-k below 1", ("generate", "--run", RUN, "--prompt", "Tim", "--top-k", "0"),
         "--top-k must be >= 1"),
    Case("generate-empty-prompt", "empty prompt", ("generate", "--run", RUN, "--prompt", ""), "--prompt is empty"),
    Case("generate-control-syntax", "control value other than 0 or 1", ("generate", "--run", RUN, "--prompt", "Tim", "--control",
                                                             "dialogue=yes"), "--control: dialogue must be 0 or 1"),
    Case("generate-control-plain", "control for a variant without control input",
         ("generate", "--run", RUN, "--prompt", "Tim", "--control", "dialogue=1"), "takes no control input"),
    Case("generate-overwrite", "hand call asks to replace the pipeline's samples.json",
         ("generate", "--run", RUN, "--prompt", "Tim", "--out", f"{RUN}/samples.json"), "is the pipeline's samples file"),
    # -- tokenizer / vocabulary vs checkpoint --------------------------------------------------------
    Case("vocab-evaluate", "data folder with another vocabulary size", ("evaluate", "--run", RUN, "--data", "other_vocab"),
         "vocabulary mismatch"),
    Case("vocab-generate", "data folder with another vocabulary size", ("generate", "--run", RUN, "--data", "other_vocab"),
         "vocabulary mismatch"),
    Case("tokenizer-evaluate", "data folder with another tokenizer of the same vocabulary size",
         ("evaluate", "--run", RUN, "--data", "other_tok"), "tokenizer mismatch"),
    Case("tokenizer-swapped", "tokenizer.json replaced after tokenizing",
         ("generate", "--run", RUN, "--data", "swapped_tok"), "is not the one the tokens in"),
    # -- run folders --------------------------------------------------------------------------------
    Case("run-missing", "run folder that does not exist", ("evaluate", "--run", "results/runs/causal/xs/seed9"),
         "run folder not found"),
    Case("run-missing-generate", "run folder that does not exist", ("generate", "--run", "results/runs/causal/xs/seed9"),
         "run folder not found"),
    Case("run-unfinished", "run killed mid-training (checkpoints, no model.pt / metrics.json)",
         ("evaluate", "--run", "results/runs/causal/xs/seed1"), "is not finished"),
    Case("run-unfinished-generate", "run killed mid-training (checkpoints, no model.pt / metrics.json)",
         ("generate", "--run", "results/runs/causal/xs/seed1"), "is not finished"),
]
BY_ID = {c.id: c for c in CASES}


# ---- the site: a finished run, its data, other data folders and configs -------------------------


def _write_cfg(site: Path, name: str, base: dict, edit) -> None:
    cfg = yaml.safe_load(yaml.safe_dump(base))
    edit(cfg)
    (site / name).write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """results/data, a finished causal run with eval.json and samples.json, an unfinished run, data
    folders that do not fit the run, and one config per mistake."""
    from ncn.evaluate import evaluate
    from ncn.generate import generate

    site = tmp_path_factory.mktemp("site")
    data = make_data(site / "results" / "data")
    cfg_path = tiny_config(site, "config.yaml")
    base = yaml.safe_load(cfg_path.read_text())
    run = site / RUN
    run_train(cfg_path, run, data)
    evaluate(run)
    generate(run, out=run / "samples.json", stdout=io.StringIO())  # as the pipeline's rule does
    # killed mid-training: what a SIGKILL leaves (checkpoints, config, partial log; no outputs)
    half = site / "results/runs/causal/xs/seed1"
    shutil.copytree(run, half, ignore=shutil.ignore_patterns("model.pt", "metrics.json", "train_log.csv",
                                                             "eval.json", "samples.json"))
    (half / "train_log.partial.csv").write_text("step,tokens,loss\n")
    # data that does not fit the run
    make_data(site / "other_vocab", vocab=280)
    other_tok = make_data(site / "other_tok", n_train=120)  # same vocab size, other merges
    swapped = site / "swapped_tok"
    shutil.copytree(data, swapped)
    shutil.copy(other_tok / "tokenizer.json", swapped / "tokenizer.json")
    # configs
    _write_cfg(site, "bad_key.yaml", base, lambda c: c["train"].update(lrr=1.0))
    _write_cfg(site, "bad_type.yaml", base, lambda c: c["train"].update(micro_batch="many"))
    _write_cfg(site, "bad_variant.yaml", base, lambda c: c.update(variants=["causal", "bogus"]))
    _write_cfg(site, "bad_size.yaml", base, lambda c: c.update(sizes=["xs", "huge"]))
    _write_cfg(site, "ctx32.yaml", base, lambda c: c["size_defs"]["xs"].update(block_size=32))
    _write_cfg(site, "long_prompt.yaml", base, lambda c: c.update(generate={"prompts": [LONG_PROMPT], "max_new_tokens": 4}))
    # the accepted long-prompt case: a copy of the run (written to long_prompt.json, not into the run)
    shutil.copytree(run, site / "results/runs/causal/xs/seed0_copy")
    return site


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """path -> (mtime_ns, sha256) of every file under root."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


_SEEN: dict[str, tuple[str, int]] = {}


def run_case(case: Case, site: Path, capsys) -> tuple[str, int, str]:
    """(the message line, exit code, all of stderr), run in-process in the site folder."""
    from ncn.cli import main

    capsys.readouterr()
    cwd = os.getcwd()
    os.chdir(site)
    try:
        rc = main(list(case.argv))
    except SystemExit as e:  # argparse
        rc = e.code
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    kind = "error" if case.refused else "note"
    lines = [ln for ln in err.splitlines() if re.match(rf"ncn \S+: {kind}: ", ln)]
    message = normalize(lines[0], site) if len(lines) == 1 else f"<{len(lines)} '{kind}' lines>\n{err}"
    _SEEN[case.id] = (message, rc)
    return message, rc, err


def normalize(text: str, site: Path) -> str:
    """The message as a user in the results/ folder sees it: the temporary folder dropped."""
    for root in {str(site.resolve()), str(site)}:
        text = text.replace(root + "/", "")
    return text


@pytest.mark.parametrize("case", [c for c in CASES if c.refused], ids=lambda c: c.id)
def test_refused_with_one_clear_line_and_nothing_overwritten(case, site, capsys):
    before = snapshot(site)
    message, rc, err = run_case(case, site, capsys)
    assert rc == 2, (rc, err)
    assert case.expect in message, err
    assert "Traceback" not in err
    assert snapshot(site) == before, "a refused command changed or created files"


def test_long_prompt_is_cropped_with_a_note(site, capsys):
    import json

    case = BY_ID["context-long-prompt"]
    message, rc, err = run_case(case, site, capsys)
    assert rc == 0, err
    assert case.expect in message
    out = json.loads((site / "long_prompt.json").read_text())
    assert out["samples"][0]["prompt"] == LONG_PROMPT and out["samples"][0]["new_tokens"] == 4


def test_finished_run_with_its_own_config_is_still_left_alone(site, capsys):
    """The settings check must not refuse the normal rerun of a finished run."""
    from ncn.cli import main

    before = snapshot(site / RUN)
    cwd = os.getcwd()
    os.chdir(site)
    try:
        assert main(["train", "--config", "config.yaml", *TRAIN]) == 0
        # a setting that does not change the numbers (checkpoint cadence) is not a mismatch either
        _write_cfg(site, "ckpt_every.yaml", yaml.safe_load((site / "config.yaml").read_text()),
                   lambda c: c["train"].update(ckpt_every=3))
        assert main(["train", "--config", "ckpt_every.yaml", *TRAIN]) == 0
        assert main(["evaluate", "--run", RUN, "--config", "config.yaml"]) == 0
    finally:
        os.chdir(cwd)
    assert "already finished" in capsys.readouterr().err
    after = snapshot(site / RUN)
    assert {k: v for k, v in after.items() if k != "eval.json"} == {k: v for k, v in before.items() if k != "eval.json"}


# ---- the table in tests/README.md ---------------------------------------------------------------


def table(site: Path, capsys) -> str:
    rows = ["| input | command | message | exit code |", "|---|---|---|---|"]
    for case in CASES:
        if case.id not in _SEEN:
            run_case(case, site, capsys)
        message, rc = _SEEN[case.id]
        rows.append(f"| {case.input} | `ncn {shlex.join(case.argv)}` | {md_cell(message)} | {rc} |")
    return "\n".join(rows)


def md_cell(text: str) -> str:
    return text.replace("|", r"\|")


def test_readme_table_is_current(site, capsys):
    text = README.read_text() if README.exists() else ""
    want = table(site, capsys)
    if os.environ.get("NCN_UPDATE_README"):
        if BEGIN in text:
            head, rest = text.split(BEGIN, 1)
            text = head + BEGIN + "\n" + want + "\n" + END + rest.split(END, 1)[1]
        else:
            text += f"\n{BEGIN}\n{want}\n{END}\n"
        README.write_text(text)
    assert BEGIN in text and END in text, f"{README} lacks the table markers"
    have = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert have == want, "tests/README.md is out of date: NCN_UPDATE_README=1 pytest tests/test_bad_inputs.py"


# ---- slow: a data error through Snakemake -------------------------------------------------------


@pytest.mark.slow
def test_data_error_through_snakemake_fails_with_the_message_in_the_log(tmp_path):
    """NCN_DATA_DIR with a train.txt that has no <|endoftext|>: the fetch job fails, its log holds
    the one-line message, Snakemake points at the log, and no tokenized data is left behind."""
    from test_workflow import copy_repo, snakemake

    repo = copy_repo(tmp_path / "repo")
    bad = tmp_path / "bad_data"
    bad.mkdir()
    (bad / "train.txt").write_text("One story.\nNo separator anywhere.\n" * 50)
    (bad / "valid.txt").write_text("A story.\n<|endoftext|>\nAnother story.\n")
    t0 = time.monotonic()
    r = snakemake(repo, "--cores", "1", "results/smoke/data/meta.json", "--configfile", "config/smoke.yaml",
                  env={"NCN_DATA_DIR": str(bad)})
    print(f"\nsnakemake data error: {time.monotonic() - t0:.1f} s")
    assert r.returncode != 0, r.stdout[-3000:]
    assert "Error in rule fetch_data" in r.stdout, r.stdout[-3000:]
    log = repo / "results" / "smoke" / "logs" / "data" / "fetch.log"
    assert str(log.relative_to(repo)) in r.stdout  # Snakemake points at the log
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("ncn data: error: ")]
    assert len(lines) == 1, log.read_text()
    assert f"{bad}/train.txt has no line <|endoftext|>" in lines[0]
    assert "Traceback" not in log.read_text()
    data = repo / "results" / "smoke" / "data"
    assert not (data / "meta.json").exists() and not (data / "manifest.json").exists()
    assert not list(data.glob("*.bin")) and not (data / "tokenizer.json").exists()
    # the README's Snakemake table quotes this message
    assert md_cell(lines[0].replace(str(bad), "BAD")) in README.read_text()
