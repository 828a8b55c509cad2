# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
import sys

import torch

from dimat_bench.preflight import check
from dimat_bench.registry import ConfigError
from dimat_bench.results import provenance, write_json

with open(snakemake.log[0], "w") as log:
    try:
        result = check(snakemake.config, torch.cuda.device_count())
    except ConfigError as error:
        result = None
        message = f"preflight: error: {error}"
    else:
        message = result.message
    for stream in (log, sys.stderr):
        print(message, file=stream, flush=True)
if result is None or not result.ok:
    sys.exit(1)
write_json(snakemake.output[0], {"flops": result.flops, "gpu_hours": result.gpu_hours, "cpu_hours": result.cpu_hours,
                                 **provenance(snakemake.config, gpus=torch.cuda.device_count())})
