# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
import json
import sys
from pathlib import Path

import pandas as pd

from dimat_bench.aggregate import collect_cells
from dimat_bench.claims import load_claims
from dimat_bench.figures import (accuracy_curves, class_counts, communication_figure, merge_penalty_figure, publish,
                                 robustness_figure, spectral_gap_figure)
from dimat_bench.results import workflow_job

with workflow_job("figures", snakemake.log[0]):
    out = Path(snakemake.output[0])
    out.mkdir(parents=True, exist_ok=True)  # built even when no cell has results
    metrics = collect_cells(snakemake.input.cells)
    accuracy_curves(metrics, out, load_claims()["references"])
    final = pd.read_csv(snakemake.input.final, comment="#")
    merge_penalty_figure(final, out)
    robustness_figure(final, out)
    spectral_gap_figure(final, out)
    for pretrained in snakemake.input.pretrained:
        meta = json.loads((Path(pretrained) / "meta.json").read_text())
        if meta.get("status") == "failed":  # a recorded failure: no split to draw (the tables list it)
            continue
        pre = meta["config"]
        name = "class_counts_{dataset}_{model}_{width}_{agents}_{split}_seed{seed}".format(**pre)
        title = "{dataset} {split}, {agents} agents, seed {seed}".format(**pre)
        class_counts(pd.read_csv(Path(pretrained) / "class_counts.csv", comment="#"), title, out / name)
    communication_figure(pd.read_csv(snakemake.input.communication, comment="#"), out)
    published = publish(out, snakemake.params.figures_dir)
    print(f"{len(published)} figures in {snakemake.params.figures_dir}", file=sys.stderr)
