#!/usr/bin/env python
"""`make mutate`: mutation testing of the modules that carry the science -> results/bench/mutation.csv.

The tool is mutmut (pinned in envs/mutate.txt, which `make mutate` installs into the venv; it is
not part of envs/requirements.txt). mutmut 3 copies the sources into `mutants/`, rewrites every
function of the selected modules into a trampoline that dispatches to one mutant at a time, runs
the tests once to record which tests reach which function (its test selection), then runs, for
each mutant, only those tests (`-x`: the first failure kills it).

This script works in a scratch copy of the checkout (results/bench/mutmut/, rebuilt each run) so
that its mutmut configuration ([tool.mutmut], appended to the copy's pyproject.toml) never touches
the real one:

  only_mutate             the files of --modules (MODULES below); a module may be restricted to
                          the functions that compute its numbers (e.g. paper: build_numbers and
                          the formatters, not the LaTeX build)
  do_not_mutate_patterns  EXCLUDE below: lines raising an exception (error-message text) and
                          logging/progress output are not mutated (bench/README.md)
  pytest args             the fast tests: -m "not slow and not source" (source: style tests that read
                          the source text, which mutants break by construction), from --tests

With --sample N, a fixed sample of N mutants per module is drawn with random.Random(--seed) from
the sorted list of its mutants (the same N names for the same sources). Results: one row per
module (mutants, killed, survived, timeouts, no_tests, other, score), and the surviving mutants'
diffs in results/bench/mutation_survivors.txt.

    python bench/mutate.py                                  # every module, every mutant
    python bench/mutate.py --modules stats batches --sample 40 --tests tests/test_analysis_stats.py
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ncn.fileio import write_csv_rows, write_text  # noqa: E402

# module -> (source file, regex of the function names to mutate, or None for all of them)
MODULES = {
    "model": ("src/ncn/model.py", None),
    "train": ("src/ncn/train.py", None),
    "optim": ("src/ncn/optim.py", None),  # the CPU's AdamW update
    "batches": ("src/ncn/batches.py", None),
    "checkpoint": ("src/ncn/checkpoint.py", None),
    "evaluate": ("src/ncn/evaluate.py", None),
    "stats": ("src/ncn/analysis/stats.py", None),
    "claims": ("src/ncn/analysis/claims.py", None),
    "ab": ("src/ncn/analysis/ab.py", r"ab_table|ab_tex|run"),  # not the figure (loss_curves)
    "skip": ("src/ncn/analysis/skip.py", r"windows|evaluate|skip_table|skip_tex|run"),  # not the figure
    "tokenize": ("src/ncn/data/tokenize.py", None),
    "paper": ("src/ncn/paper.py", r"build_numbers|_row|_half_width|_skip_choice|_size_params|_load_runs|_read_json"
                                  r"|macro_name|tex_path|_finite|_minus|fmt_\w+|Numbers\.\w+"),  # `ncn paper numbers`
}
# Lines whose expressions mutmut leaves alone: error-message text and logging/progress output.
EXCLUDE = [
    r"raise \w+",  # the exception raised and its message (the condition above it is mutated)
    r"\bp\.error\(",  # argparse's error: a message, and an exit like a raise
    r"\bprint\(",
    r"\blog\.(debug|info|warning|error|exception)\(",
    r"\blogging\.",
    r"\bwarnings\.warn\(",
    r"\btqdm\(",
    r"^\s*(with\s+)?(progress\.)?bar\(",  # a statement opening ncn.progress.bar (our tqdm); not `for x in bar(xs)`
    # argparse's text for people (--help); the whole line, so an option's type or default written on
    # that line is left alone too (tests/test_cli.py and each stage's tests check the options)
    r"\b(help|description|epilog|metavar|prog)=",
    r'^\s*[rf]?"[^"]*"\s*[,)]*\s*$',  # a line holding only a string: the continuation of a message or help text above
]
# pytest's options for every mutmut run: the fast tests, without the style tests that read the source
# text (mutants break them by construction), and without the tests that copy the checkout with git to
# run Snakemake (mutmut's copy has no .git; they test the workflow's wiring, not the mutated modules).
PYTEST_ARGS = ["-m", "not slow and not source", "-p", "no:cacheprovider", "--ignore=tests/test_workflow.py",
               "--deselect=tests/test_paper.py::test_the_paper_rule_inputs_follow_the_tex"]
# Status names of mutmut 3's exit codes (mutmut.stats.status_by_exit_code) -> our columns.
# "segfault" is mutmut's name for exit -9/-11: a mutant stuck in a loop is SIGKILLed by its runner
# one CPU-second after the SIGXCPU of its time limit (exit -9), so it is a timeout (detected).
COLUMN_OF_STATUS = {"killed": "killed", "survived": "survived", "timeout": "timeouts", "segfault": "timeouts",
                    "no tests": "no_tests"}
COLUMNS = ["module", "mutants", "killed", "survived", "timeouts", "no_tests", "other", "score", "equivalent",
           "score_excl_equivalent"]
EQUIVALENT = ROOT / "bench" / "mutants_equivalent.yaml"  # survivors read and found to change nothing
SKIP_COPY = {".git", ".venv", "results", "mutants", ".snakemake", ".pytest_cache", "__pycache__", "mlruns"}


def mutmut_config(files: list[str], tests: list[str]) -> str:
    def arr(xs):
        return "[" + ", ".join(json.dumps(x) for x in xs) + "]"

    also = sorted(p.name + ("/" if p.is_dir() else "") for p in ROOT.iterdir()
                  if p.name not in SKIP_COPY | {"src", "tests"} and not p.name.endswith(".egg-info"))
    return "\n".join([
        "", "[tool.mutmut]  # written by bench/mutate.py",
        'source_paths = ["src/"]',
        f"only_mutate = {arr(files)}",
        "do_not_mutate_patterns = [" + ", ".join(f"'{p}'" for p in EXCLUDE) + "]",
        f"also_copy = {arr(also)}",
        f"pytest_add_cli_args = {arr(PYTEST_ARGS)}",
        f"pytest_add_cli_args_test_selection = {arr(tests)}",
        'process_isolation = "forkserver"',  # torch is not fork-safe after the stats run
        "use_git_change_detection = false",
        "",
    ])


def prepare(work: Path, files: list[str], tests: list[str]) -> None:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(ROOT, work, ignore=lambda d, names: [n for n in names if n in SKIP_COPY or n.endswith(".egg-info")])
    with open(work / "pyproject.toml", "a") as f:
        f.write(mutmut_config(files, tests))


def env_for(work: Path) -> dict:
    env = dict(os.environ)
    # Tests that start `ncn` in a subprocess import the mutated package too.
    env["PYTHONPATH"] = str(work / "mutants" / "src")
    return env


def function_of(key: str) -> str:
    """'ncn.paper.x_build_numbers__mutmut_3' -> 'build_numbers'; 'ncn.paper.xǁNumbersǁadd__mutmut_1' -> 'Numbers.add'."""
    name = key.rsplit(".", 1)[1].rsplit("__mutmut_", 1)[0]
    if name.startswith("x_"):
        return name[2:]
    _, cls, fn = name.split("ǁ")
    return f"{cls}.{fn}"


def generate(work: Path, jobs: int) -> None:
    """Write mutants/ (every mutant of the selected files) without running a test."""
    code = ("import os; from mutmut.__main__ import copy_src_dir, copy_also_copy_files, create_mutants; "
            f"os.makedirs('mutants', exist_ok=True); copy_src_dir(); copy_also_copy_files(); create_mutants({jobs})")
    subprocess.run([sys.executable, "-c", code], cwd=work, env=env_for(work), check=True, stdout=subprocess.DEVNULL)


def exit_codes(work: Path, path: str) -> dict:
    meta = work / "mutants" / (path + ".meta")
    return json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}


def select(work: Path, modules: list[str], sample: int, seed: int) -> dict[str, list[str]]:
    chosen = {}
    for m in modules:
        path, only = MODULES[m]
        names = sorted(k for k in exit_codes(work, path) if only is None or re.fullmatch(only, function_of(k)))
        if sample and len(names) > sample:
            names = sorted(random.Random(f"{seed}:{m}").sample(names, sample))
        chosen[m] = names
    return chosen


def changed_lines(diff: str) -> tuple[str, str]:
    """(the original line, the mutated line) of a one-line `mutmut show` diff, stripped."""
    minus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    plus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return "\n".join(minus), "\n".join(plus)


def is_equivalent(key: str, diff: str, entries: list[dict]) -> bool:
    """Whether a survivor is one of EQUIVALENT's documented mutants (same function, same two lines)."""
    fn = key.rsplit("__mutmut_", 1)[0]
    before, after = changed_lines(diff)
    return any(e["function"] == fn and e["before"] == before and e["after"] == after for e in entries)


def tally(work: Path, chosen: dict[str, list[str]], diff_of, entries: list[dict]) -> tuple[list[dict], dict[str, bool]]:
    """Rows per module, and the survivors, each with whether it is a documented equivalent."""
    from mutmut.stats import status_by_exit_code

    rows, survivors = [], {}
    for m, names in chosen.items():
        codes = exit_codes(work, MODULES[m][0])
        row = {c: 0 for c in COLUMNS[2:-3]}
        eq = 0
        for k in names:
            status = status_by_exit_code[codes.get(k)]
            row[COLUMN_OF_STATUS.get(status, "other")] += 1
            if status in ("survived", "no tests"):
                survivors[k] = is_equivalent(k, diff_of(k), entries)
                eq += survivors[k]
        n, detected = len(names), row["killed"] + row["timeouts"]
        rows.append({"module": m, "mutants": n, **row, "score": f"{detected / n:.3f}" if n else "nan",
                     "equivalent": eq, "score_excl_equivalent": f"{detected / (n - eq):.3f}" if n > eq else "nan"})
    return rows, survivors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modules", nargs="+", choices=list(MODULES), default=list(MODULES))
    p.add_argument("--sample", type=int, default=0, help="mutants per module, a seeded sample (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tests", nargs="+", default=["tests/"], help="test files/folders for mutmut (fast tests only)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel mutants (mutmut --max-children)")
    p.add_argument("--work", default=str(ROOT / "results" / "bench" / "mutmut"))
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "mutation.csv"))
    p.add_argument("--tally-only", action="store_true",
                   help="no run: tally the mutants of --work as the last run left them (same --modules/--sample/--seed)")
    a = p.parse_args(argv)

    work = Path(a.work).resolve()
    if work.is_relative_to(ROOT) and not work.is_relative_to(ROOT / "results"):
        p.error(f"--work {work} lies inside the checkout it copies; use a folder under results/ or outside")
    files = [MODULES[m][0] for m in a.modules]
    t0 = time.monotonic()
    mutmut = Path(sys.executable).with_name("mutmut")
    if not a.tally_only:
        prepare(work, files, a.tests)
        generate(work, a.jobs)
    chosen = select(work, a.modules, a.sample, a.seed)
    names = [k for m in a.modules for k in chosen[m]]
    print(f"mutate: {len(names)} mutants in {', '.join(f'{m} {len(chosen[m])}' for m in a.modules)}", file=sys.stderr)
    if not a.tally_only:
        log = Path(a.out).with_name("mutmut.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            r = subprocess.run([str(mutmut), "run", "--max-children", str(a.jobs), *names], cwd=work,
                               env=env_for(work), stdout=f, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            print(f"mutate: mutmut exited with {r.returncode}; see {log}", file=sys.stderr)
            return r.returncode
    entries = yaml.safe_load(EQUIVALENT.read_text()) or []
    diff_of = functools.cache(lambda k: subprocess.run([str(mutmut), "show", k], cwd=work, env=env_for(work),
                                                       capture_output=True, text=True).stdout)
    rows, survivors = tally(work, chosen, diff_of, entries)
    write_csv_rows(a.out, COLUMNS, rows)
    diffs = [("# equivalent (bench/mutants_equivalent.yaml)\n" if eq else "") + diff_of(k) for k, eq in survivors.items()]
    write_text(Path(a.out).with_name("mutation_survivors.txt"), "\n".join(diffs))
    for row in rows:
        print(" ".join(f"{c}={row[c]}" for c in COLUMNS), file=sys.stderr)
    print(f"mutate: {a.out} ({time.monotonic() - t0:.0f} s); survivors' diffs in mutation_survivors.txt",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
