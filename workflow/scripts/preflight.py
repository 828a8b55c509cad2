# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
import sys

import torch

from dimat_bench.preflight import check
from dimat_bench.results import provenance, workflow_job, write_json

with workflow_job("preflight", snakemake.log[0]) as console:
    result = check(snakemake.config, torch.cuda.device_count())
    print(result.message, file=sys.stderr, flush=True)  # the log
    print(result.message, file=console, flush=True)  # and Snakemake's output
    if result.ok:
        write_json(snakemake.output[0], {"flops": result.flops, "gpu_hours": result.gpu_hours,
                                         "cpu_hours": result.cpu_hours,
                                         **provenance(snakemake.config, gpus=torch.cuda.device_count())})
if not result.ok:
    sys.exit(1)
