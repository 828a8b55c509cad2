"""The pipeline's first job (workflow/rules/preflight.smk): before any engine job, check every cell as
the engine will, say what the grid will cost, and stop a GPU-scale grid on a host without a GPU
unless the config confirms it (`confirm_cost: true`), so that nobody starts a months-long CPU run by
accident (docs/engine.md#cost-estimate).

The cost is counted, not timed (no calibration: the FLOPs of `estimate`, and the GPU-hours they take
at 30 % of an H100's dense bf16 peak). On a CPU the wall time is the FLOPs at CPU_FLOPS per core, what
ResNet-20's phases reached on one core of the 2-core machine of docs/results.md: a rough figure,
good to an order of magnitude, which is all the decision needs. A grid is GPU-scale when that time
exceeds CPU_HOURS_LIMIT on this host's cores."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from . import estimate as cost
from .plan import truthy

CPU_FLOPS = 1.0e11  # FLOP/s per core: config/cpu.yaml, 6.8e14 FLOP, ran in 52 min 26 s on 2 cores (docs/results.md)
CPU_HOURS_LIMIT = 24.0
CPU_CONFIGS = ("make quick (config/quick.yaml, about 11 minutes on 2 cores)",
               "config/cpu.yaml (about an hour on 2 cores): snakemake --cores all --configfile config/cpu.yaml")


@dataclass
class Preflight:
    ok: bool
    message: str
    flops: float
    gpu_hours: float
    cpu_hours: float


def check(config: Mapping[str, Any], gpus: int, cores: int | None = None, gpu: str = "h100",
          utilisation: float = 0.3) -> Preflight:
    """Check every cell (ConfigError when one is wrong) and decide whether the grid may start here:
    `gpus` this host shows the engine, `cores` it has."""
    cores = cores or os.cpu_count() or 1
    result = cost.estimate(config, calibrate_host=False)
    flops, gpu_hours, name = result.total_flops(), result.gpu_hours(gpu, utilisation), cost.GPUS[gpu][0]
    cpu_hours = flops / (CPU_FLOPS * cores) / 3600
    summary = (f"{len(result.jobs)} engine jobs, {flops:.3g} FLOPs: {gpu_hours:,.3g} GPU-hours on an {name} at "
               f"{utilisation:.0%} of its peak; about {duration(cpu_hours)} on this host's {cores} CPU cores")
    if gpus or cpu_hours <= CPU_HOURS_LIMIT:
        where = f"{gpus} GPU(s)" if gpus else "no GPU; a CPU-sized grid"
        return Preflight(True, f"preflight: {summary} ({where})", flops, gpu_hours, cpu_hours)
    if truthy(config.get("confirm_cost", False)):
        return Preflight(True, f"preflight: {summary}; no GPU here, running anyway (confirm_cost: true)", flops,
                         gpu_hours, cpu_hours)
    message = (f"preflight: stopped before any engine job: this is a GPU-scale grid ({summary}) and this host has "
               f"no GPU. CPU-sized grids: {'; '.join(CPU_CONFIGS)}. To run this one here anyway: "
               "--config confirm_cost=true")
    return Preflight(False, message, flops, gpu_hours, cpu_hours)


def duration(hours: float) -> str:
    if hours >= 24 * 365:
        return f"{hours / (24 * 365):,.0f} years"
    if hours >= 48:
        return f"{hours / 24:,.0f} days"
    return f"{hours:.1f} hours" if hours >= 1 else f"{hours * 60:.0f} minutes"
