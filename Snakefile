# NCN replication pipeline. `snakemake --cores all` reproduces everything (config/default.yaml);
# other profiles: `snakemake --cores all --configfile config/smoke.yaml`.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/default.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/paper.smk"


rule all:
    default_target: True
    input:
        all_targets(),
