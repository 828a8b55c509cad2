# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
from dimat_bench.bundle import copy_record
from dimat_bench.results import workflow_job

with workflow_job("pretrain_record", snakemake.log[0]):
    copy_record(snakemake.input[0], snakemake.output[0])
