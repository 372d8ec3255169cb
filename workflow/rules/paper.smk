# Paper stage: `ncn paper numbers` turns the analysis outputs into results/paper/numbers.tex (one
# \newcommand per number the prose quotes), the setup table and the config listing; then
# `ncn paper build` runs latexmk on paper/ncn.tex in results/paper/build/ and fails on undefined
# references or citations. The paper declares its own inputs, as showyourwork does: every
# \gentable, \genfigure and \input of a results/ file in paper/**/*.tex is an input of the rule
# (ncn.paper.generated_inputs), so a table the prose starts to use is built first, and a changed
# result or sentence rebuilds the PDF; `--forcerun paper` rebuilds it regardless.
from ncn.provenance import git_commit
from glob import glob

from ncn.paper import generated_inputs

PAPER = f"{RES}/paper"
PAPER_SOURCES = sorted(glob("paper/**/*.tex", recursive=True)) + ["paper/refs.bib"]
PAPER_GENERATED = generated_inputs("paper", results=f"{RES}/")
# TeX and the pinned Python environment (the rule calls `ncn paper build`) under `--sdm conda`.
PAPER_CONDA_ENV = "../../envs/paper.yaml"


# The commit the paper reports: a new commit regenerates numbers.tex (and so the PDF).
PAPER_COMMIT = git_commit()[:12]


rule paper_numbers:
    input:
        claims=rules.analysis_claims.output.json,
        runs=rules.analysis_runs.output.table,
        runs_timing=rules.analysis_runs.output.timing,
        ab=rules.analysis_ab.output.csv,
        leak=rules.analysis_leak.output.csv,
        skip=rules.analysis_skip.output.csv,
        skip_timing=rules.analysis_skip.output.timing,
        manifest=f"{DATA}/manifest.json",
        meta=f"{DATA}/meta.json",
    output:
        numbers=f"{PAPER}/numbers.tex",
        sizes=f"{PAPER}/sizes_table.tex",
        listing=f"{PAPER}/config_listing.tex",
        runs=f"{PAPER}/runs_table.tex",
    params:
        config=CONFIG_JSON,
        # The listing shows the whole resolved config, so any config change regenerates it.
        cfg=trigger("paper.numbers"),
        commit=PAPER_COMMIT,
    log:
        f"{LOGS}/paper/numbers.log",
    benchmark:
        f"{BENCH}/paper/numbers.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn paper numbers --config {params.config} --claims {input.claims} --runs {input.runs}"
        " --runs-timing {input.runs_timing} --ab {input.ab} --leak {input.leak} --skip {input.skip}"
        " --skip-timing {input.skip_timing} --manifest {input.manifest} --meta {input.meta}"
        " --out {output.numbers} --sizes-table {output.sizes} --config-listing {output.listing}"
        " --runs-table {output.runs} > {log} 2>&1"


rule paper:
    input:
        sources=PAPER_SOURCES,
        generated=PAPER_GENERATED,
    output:
        pdf=report_item(f"{PAPER}/ncn.pdf"),
    params:
        # paper/ncn.tex reads results/{paper,tables,figures}/...: latexmk runs in a folder whose
        # results/ is this profile's folder (relative links: a copied folder keeps them valid)
        root=f"{PAPER}/root",
    log:
        f"{LOGS}/paper/latexmk.log",
    benchmark:
        f"{BENCH}/paper/latexmk.tsv"
    threads: 1
    conda:
        PAPER_CONDA_ENV
    shell:
        "mkdir -p {params.root} && ln -sfn ../../../../paper {params.root}/paper && ln -sfn ../.. {params.root}/results"
        " && ncn paper build --root {params.root} --tex paper/ncn.tex --build-dir results/paper/build"
        " --out results/paper/ncn.pdf > {log} 2>&1"


TARGETS.append(rules.paper.output.pdf)
