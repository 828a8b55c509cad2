# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
from dimat_bench.bundle import restore
from dimat_bench.results import workflow_job

with workflow_job("restore", snakemake.log[0]):
    restore(snakemake.params.bundle, snakemake.params.path, snakemake.output[0])
