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
        # RUN/hf/: model.safetensors + config.json (the ModelConfig) + tokenizer.json + README.md model
        # card (it quotes eval.json), loadable with Transformer.from_pretrained(folder); written by the
        # same process (`--export`, what `ncn export` writes) to save a process start per run.
        hf=multiext(f"{RUN}/hf/", "model.safetensors", "config.json", "tokenizer.json", "README.md"),
    params:
        config=CONFIG_JSON,
        run=run_dir,
        data=data_dir,
        hf=lambda w, output: os.path.dirname(output.hf[0]),
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
        " --threads {threads} --export {params.hf} > {log} 2>&1"


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


TARGETS.extend(f for out in rules.evaluate.output for f in run_dirs(pattern=out))
# Samples are for reading, not for statistics (and each job costs a process start): one per
# variant, from the largest size's first seed. Any other run: ask for its samples.json.
TARGETS.extend(
    f for v in VARIANTS for f in run_dirs([v], [largest_size(config)], seeds_of(config, v)[:1], rules.generate.output[0])
)
