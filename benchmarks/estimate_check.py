"""How close did `python -m dimat_bench estimate` come? Compares its prediction for a pipeline config
with the engine jobs' measured run times (the `.benchmark.tsv` Snakemake writes beside every
pretraining and cell) of a finished run of that config, per group of equal jobs and in total.

    snakemake --cores 2 --configfile config/quick.yaml --config data_dir=../shared/data
    python benchmarks/estimate_check.py config/quick.yaml --wall 700

Calibrate on a quiet machine (timings taken while other jobs run are worthless)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from dimat_bench.estimate import estimate, hms, schedule
from dimat_bench.grid import load_pipeline_config


def job_dir(config, job) -> Path:
    """The directory common.smk gives a job (PRETRAIN_DIR or CELL_DIR)."""
    fields = dict(part.split("=", 1) for part in job.name.split()[1:])
    base = Path(config["results_dir"])
    if job.kind == "pretrain":
        return base / "pretrain" / fields["dataset"] / f"{fields['model']}-w{fields['width']}" / \
            f"n{fields['agents']}" / fields["split"] / f"seed{fields['seed']}"
    return base / "cells" / fields["dataset"] / f"{fields['model']}-w{fields['width']}" / f"n{fields['agents']}" / \
        fields["split"] / f"seed{fields['seed']}" / fields["topology"] / fields["method"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configfile")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="engine jobs the run had at once")
    parser.add_argument("--wall", type=float, help="the run's measured wall time in seconds, to compare too")
    args = parser.parse_args()
    config = load_pipeline_config(args.configfile)
    result = estimate(config)
    groups: dict[str, list[float]] = {}
    measured = {}
    for job in result.jobs:
        tsv = Path(f"{job_dir(config, job)}.benchmark.tsv")
        if not tsv.is_file():
            raise SystemExit(f"error: {tsv} is missing: run the pipeline on {args.configfile} first")
        measured[job.name] = float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
        groups.setdefault(job.label, []).append(measured[job.name])
    print(f"{'jobs':>4}  {'group':<40} {'predicted':>10} {'measured':>10}  ratio")
    for label, times in groups.items():
        job = next(j for j in result.jobs if j.label == label)
        mean = sum(times) / len(times)
        print(f"{len(times):>4}  {label:<40} {result.job_seconds(job):>9.1f}s {mean:>9.1f}s  "
              f"{result.job_seconds(job) / mean:.2f}")
    predicted, actual = sum(result.job_seconds(j) for j in result.jobs), sum(measured.values())
    print(f"engine time, all jobs: predicted {hms(predicted)}, measured {hms(actual)} "
          f"(predicted / measured {predicted / actual:.2f})")
    wall = schedule(result.jobs, result.job_seconds, args.jobs)
    line = f"wall time with {args.jobs} jobs at once: predicted {hms(wall)}"
    if args.wall:
        line += f", measured {hms(args.wall)} for the whole run (predicted / measured {wall / args.wall:.2f})"
    print(line)


if __name__ == "__main__":
    main()
