# Paper stage: `ncn paper numbers` turns the results into results/paper/numbers.tex (one
# \newcommand per number the prose quotes), the setup table and the config listing; then
# `ncn paper build` runs latexmk on paper/ncn.tex in results/paper/build/ and fails on undefined
# references or citations. Every tex file under paper/, every table, figure and run is an input,
# so a changed result or sentence rebuilds the PDF; `--forcerun paper` rebuilds it regardless.
import subprocess
from glob import glob

PAPER = f"{RES}/paper"
PAPER_SOURCES = sorted(glob("paper/**/*.tex", recursive=True)) + ["paper/refs.bib"]
PAPER_TABLES = expand(f"{RES}/tables/{{t}}.tex", t=["ab", "scaling", "skip", "leak", "claims"])
PAPER_FIGURES = expand(
    f"{RES}/figures/{{f}}.pdf", f=["loss_curves", "scaling", "brainscan", "brainscan_dev", "skip_tradeoff"]
)
# TeX and the pinned Python environment (the rule calls `ncn paper build`) under `--sdm conda`.
PAPER_CONDA_ENV = "../../envs/paper.yaml"


# The commit the paper reports: a new commit regenerates numbers.tex (and so the PDF).
PAPER_COMMIT = subprocess.run(
    "git rev-parse --short=12 HEAD 2>/dev/null || echo unknown", shell=True, capture_output=True, text=True
).stdout.strip()


rule paper_numbers:
    input:
        claims=f"{RES}/claims.json",
        skip=f"{RES}/tables/skip.csv",
        skip_wall=f"{RES}/timing/skip_wall.csv",
        metrics=[f"{d}/metrics.json" for d in run_dirs()],
        evals=[f"{d}/eval.json" for d in run_dirs()],
        manifest=f"{DATA}/manifest.json",
        meta=f"{DATA}/meta.json",
    output:
        numbers=f"{PAPER}/numbers.tex",
        sizes=f"{PAPER}/sizes_table.tex",
        listing=f"{PAPER}/config_listing.tex",
        runs=f"{PAPER}/runs_table.tex",
    params:
        config=CONFIG_JSON,
        results=lambda w, input: os.path.dirname(input.claims),
        # The listing shows the whole resolved config, so any config change regenerates it.
        cfg=section(*sorted(config)),
        commit=PAPER_COMMIT,
    log:
        f"{LOGS}/paper/numbers.log",
    benchmark:
        f"{BENCH}/paper/numbers.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn paper numbers --config {params.config} --results {params.results} --out {output.numbers}"
        " --sizes-table {output.sizes} --config-listing {output.listing} --runs-table {output.runs}"
        " > {log} 2>&1"


rule paper:
    input:
        sources=PAPER_SOURCES,
        numbers=rules.paper_numbers.output.numbers,
        sizes=rules.paper_numbers.output.sizes,
        listing=rules.paper_numbers.output.listing,
        runs=rules.paper_numbers.output.runs,
        tables=PAPER_TABLES,
        figures=PAPER_FIGURES,
    output:
        pdf=report_item(f"{PAPER}/ncn.pdf"),
    params:
        build=f"{PAPER}/build",
    log:
        f"{LOGS}/paper/latexmk.log",
    benchmark:
        f"{BENCH}/paper/latexmk.tsv"
    threads: 1
    conda:
        PAPER_CONDA_ENV
    shell:
        "ncn paper build --tex paper/ncn.tex --build-dir {params.build} --out {output.pdf} > {log} 2>&1"


TARGETS.append(rules.paper.output.pdf)
