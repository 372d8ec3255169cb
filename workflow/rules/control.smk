# External control signals (ncn.control, `ncn analyze control`): the per-token story labels beside
# the tokens, the control runs (the registry's variants with control, at control.sizes on every
# seed; trained and evaluated by the generic train and evaluate rules, which read the labels
# through `label_inputs`), and their measurement. Included before analysis.smk: the claims rule
# reads the measurement table.
from ncn.analysis.rules import control_runs

CONTROL_RUNS = [RUN.format(variant=v, size=s, seed=n) for v, s, n in control_runs(config)]


rule labels:
    input:
        train=rules.fetch_data.output.train,
        heldout=rules.fetch_data.output.heldout,
        train_bin=rules.tokenize.output.train,
        heldout_bin=rules.tokenize.output.heldout,
        meta=rules.tokenize.output.meta,
    output:
        train=LABEL_FILES[0],
        heldout=LABEL_FILES[1],
        json=LABEL_FILES[2],
    params:
        data=data_dir,
    log:
        f"{LOGS}/data/labels.log",
    benchmark:
        f"{BENCH}/data/labels.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn data labels --data {params.data} > {log} 2>&1"


rule analysis_control:
    input:
        models=[f"{d}/model.pt" for d in CONTROL_RUNS],
        labels=LABEL_FILES if CONTROL_RUNS else [],
        heldout=rules.tokenize.output.heldout,
        meta=rules.tokenize.output.meta,
        tokenizer=rules.train_tokenizer.output[0],
    output:
        runs=f"{RES}/tables/control_runs.csv",
        csv=f"{RES}/tables/control.csv",
        tex=f"{RES}/tables/control.tex",
        pdf=f"{RES}/figures/control.pdf",
        png=report(f"{RES}/figures/control.png", caption="../report/control.rst", category="Figures"),
    params:
        config=CONFIG_JSON,
        runs=lambda w, input: [os.path.dirname(m) for m in input.models],
        data=data_dir,
        cfg=trigger("analyze.control"),
    log:
        f"{LOGS}/analysis/control.log",
    benchmark:
        f"{BENCH}/analysis/control.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze control --run {params.runs} --config {params.config} --data {params.data}"
        " --runs-csv {output.runs} --csv {output.csv} --tex {output.tex} --pdf {output.pdf} --png {output.png}"
        " --threads {threads} > {log} 2>&1"


# the control runs' eval.json (and so their MLflow evaluation records) and the measurement
TARGETS.extend(f"{d}/eval.json" for d in CONTROL_RUNS)
TARGETS.extend(rules.analysis_control.output)
