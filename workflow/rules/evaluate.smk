# Evaluation of every finished run, and text samples.
from ncn.analysis.rules import largest_size


rule evaluate:
    input:
        model=rules.train.output.model,
        metrics=rules.train.output.metrics,
        valid=rules.tokenize.output.valid,
        heldout=rules.tokenize.output.heldout,
        meta=rules.tokenize.output.meta,
    output:
        f"{RUN}/eval.json",
    params:
        config=CONFIG_JSON,
        run=run_dir,
        data=data_dir,
        cfg=section("eval"),
    log:
        f"{LOGS}/evaluate/{{variant}}/{{size}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/evaluate/{{variant}}/{{size}}/seed{{seed}}.tsv"
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=lambda w: size_resource(w.size, "mem_mb"),
        gpu=config["resources"]["gpu"],
    conda:
        CONDA_ENV
    shell:
        "ncn evaluate --config {params.config} --run {params.run} --data {params.data}"
        " --threads {threads} > {log} 2>&1"


rule generate:
    input:
        model=rules.train.output.model,
        tokenizer=rules.train_tokenizer.output[0],
        meta=rules.tokenize.output.meta,
    output:
        f"{RUN}/samples.json",
    params:
        config=CONFIG_JSON,
        run=run_dir,
        data=data_dir,
        cfg=section("generate"),
    log:
        f"{LOGS}/generate/{{variant}}/{{size}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/generate/{{variant}}/{{size}}/seed{{seed}}.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn generate --config {params.config} --run {params.run} --data {params.data} > {log} 2>&1"


TARGETS.extend(expand(rules.evaluate.output[0], variant=VARIANTS, size=SIZES, seed=SEEDS))
# Samples are for reading, not for statistics (and each job costs a process start): one per
# variant, from the largest size's first seed. Any other run: ask for its samples.json.
TARGETS.extend(expand(rules.generate.output[0], variant=VARIANTS, size=largest_size(config), seed=SEEDS[:1]))
