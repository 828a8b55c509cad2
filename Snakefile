# dimat-bench: the paper's grid, from data to tables and figures.
#   snakemake --cores all --configfile config/quick.yaml --config data_dir=../shared/data
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/preflight.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/cells.smk"
include: "workflow/rules/restore.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/estimate.smk"


rule all:
    default_target: True
    input:
        rules.aggregate.output,
        rules.communication.output,
        rules.claims.output,
        rules.figures.output,
        pretrain_records(),  # every pretraining's metadata without its weights (what `publish` bundles)
