# Evaluation of every finished run, its Hugging Face-style model folder, and text samples.
from ncn.analysis.rules import largest_size


rule evaluate:
    input:
        model=rules.train.output.model,
        metrics=rules.train.output.metrics,
        valid=rules.tokenize.output.valid,
        heldout=rules.tokenize.output.heldout,
        meta=rules.tokenize.output.meta,
        labels=label_inputs,  # a variant with control is evaluated with the true story labels
    output:
        f"{RUN}/eval.json",
    params:
        config=CONFIG_JSON,
        run=run_dir,
        data=data_dir,
        cfg=lambda w: trigger("evaluate", w.size),
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
        cfg=lambda w: trigger("generate", w.size),
    log:
        f"{LOGS}/generate/{{variant}}/{{size}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/generate/{{variant}}/{{size}}/seed{{seed}}.tsv"
    threads: 1
    conda:
        CONDA_ENV
    # --out: only the pipeline writes RUN/samples.json (a hand `ncn generate` streams to stdout, and
    # its --out refuses to replace this file; Snakemake deletes it before the job reruns).
    shell:
        "ncn generate --config {params.config} --run {params.run} --data {params.data} --out {output}"
        " > {log} 2>&1"


# RUN/hf/: model.safetensors + config.json (the ModelConfig) + tokenizer.json + README.md model card,
# loadable with Transformer.from_pretrained(folder). After evaluate: the card quotes eval.json.
# (A folder of its own: RUN/config.json already holds the run's resolved settings.)
rule export:
    input:
        model=rules.train.output.model,
        metrics=rules.train.output.metrics,
        eval=rules.evaluate.output[0],
        tokenizer=rules.train_tokenizer.output[0],
        meta=rules.tokenize.output.meta,
    output:
        multiext(f"{RUN}/hf/", "model.safetensors", "config.json", "tokenizer.json", "README.md"),
    params:
        run=lambda w, input: os.path.dirname(input.model),
        data=data_dir,
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/export/{{variant}}/{{size}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/export/{{variant}}/{{size}}/seed{{seed}}.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn export --run {params.run} --data {params.data} --out {params.out} > {log} 2>&1"


TARGETS.extend(run_dirs(pattern=rules.evaluate.output[0]))
# Samples and exported models are for reading and sharing, not for statistics (and each job costs
# a process start): one per variant, from the largest size's first seed. Any other run: ask for
# its samples.json or hf/model.safetensors (`snakemake results/<profile>/runs/V/S/seedN/hf/...`).
TARGETS.extend(
    f
    for v in VARIANTS
    for out in (rules.generate.output[0], *rules.export.output)
    for f in run_dirs([v], [largest_size(config)], seeds_of(config, v)[:1], out)
)
