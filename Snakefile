# NCN replication pipeline. `snakemake --cores all` reproduces everything (config/default.yaml);
# other profiles: `snakemake --cores all --configfile config/smoke.yaml` (or config/paper.yaml).
# Each profile writes to its own folder, results/<profile>/.
from snakemake.utils import min_version

from ncn.config import validate as ncn_validate

min_version("9.0")


# A --configfile *replaces* the default profile. (Snakemake would otherwise deep-merge it into
# config/default.yaml, leaking the default sizes and settings into the other profiles.)
if not workflow.overwrite_configfiles:

    configfile: "config/default.yaml"


# A bad key or type fails here, before any job runs, with one line naming the key (e.g. "invalid
# value at 'train': ... ('lrr' was unexpected)") plus the cross-field checks (sizes defined, heads
# divide width, ...). ncn's validator reads the same schema as Snakemake's validate() and fills
# the same defaults, so one pass is enough; `ncn <stage> --config` validates the same way.
ncn_validate(config, source=", ".join(map(str, workflow.overwrite_configfiles)) or "config/default.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/beyond.smk"
include: "workflow/rules/paper.smk"
include: "workflow/rules/timing.smk"


report: "workflow/report/workflow.rst"


# On a cluster these run on the submitting node, not as batch jobs: compute nodes often have no
# network for the hub download. (The MLflow store and the pipeline run are made by the onstart
# hook, on the submitting node too: workflow/rules/common.smk.)
localrules:
    all,
    fetch_data,


rule all:
    default_target: True
    input:
        all_targets(),
