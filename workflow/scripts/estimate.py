# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
import os
import sys

from dimat_bench.estimate import estimate, render, write_rows
from dimat_bench.results import provenance, workflow_job, write_table

with workflow_job("estimate", snakemake.log[0]) as console:
    result = estimate(snakemake.config, device="cpu", threads=1,
                      progress=lambda message: print(message, file=sys.stderr, flush=True))
    text = render(result, "h100", 0.3, os.cpu_count() or 1)
    meta = provenance(snakemake.config, calibrated_on=result.device, threads=result.threads,
                      startup_seconds=result.startup)
    write_table(snakemake.output.markdown, f"```\n{text}\n```\n", meta)
    write_rows(snakemake.output.csv, result, snakemake.config)
    print(text, file=console)
