# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
import sys

import pandas as pd

from dimat_bench import plan
from dimat_bench.aggregate import (POINTS, TABLE_LIBRARIES, agent_means, caption, cell_provenance, cell_status,
                                   collect_cells, curves, final_accuracy, final_merge_caption, final_merge_latex,
                                   final_merge_markdown, final_merge_table, main_table, precision_note, restored_note,
                                   to_latex,
                                   to_markdown)
from dimat_bench.results import provenance, workflow_job, write_table

with workflow_job("aggregate", snakemake.log[0]):
    meta = provenance(snakemake.config, libraries=TABLE_LIBRARIES, cells=cell_provenance(snakemake.input))
    # The cell directories are the grid's cells in order (common.smk's cell_dirs): failed cells take their
    # settings from the grid, and every other cell is checked against it.
    cells = plan.expand_grid(snakemake.config)
    status = cell_status(snakemake.input, cells)
    metrics = collect_cells(snakemake.input)
    final = final_accuracy(metrics, status)
    means = agent_means(metrics)
    write_table(snakemake.output.cells, status.to_csv(index=False), meta)
    write_table(snakemake.output.metrics, metrics.to_csv(index=False), meta)
    write_table(snakemake.output.final, final.to_csv(index=False), meta)
    write_table(snakemake.output.curves, pd.concat([curves(means, p) for p in POINTS]).to_csv(index=False), meta)
    seeds = snakemake.config.get("pretrain_seeds", "per_seed")
    # The rounds the cells ran to completion (a diverged cell stops early); the config's when none did.
    rounds = final.loc[final["status"] == "complete", "rounds"]
    rounds = rounds if len(rounds) else [plan.run_setting(snakemake.config, "rounds")]
    # how the cells' forward passes ran, and which of them were restored from a bundle (from where)
    precision = "; ".join(note for note in (precision_note(meta["cells"]), restored_note(meta["cells"])) if note)
    for point, stem in (("paper", "main"), ("after_train", "main_after_train")):
        table, text = main_table(final, point), caption(point, seeds, rounds, precision)
        write_table(snakemake.output[f"{stem}_csv"], table.to_csv(index=False), meta | {"caption": text})
        write_table(snakemake.output[f"{stem}_md"], to_markdown(table, text, status), meta)
        write_table(snakemake.output[f"{stem}_tex"], to_latex(table, text), meta)
    table, text = final_merge_table(final), final_merge_caption(seeds, rounds, precision)
    write_table(snakemake.output.final_merge_csv, table.to_csv(index=False), meta | {"caption": text})
    write_table(snakemake.output.final_merge_md, final_merge_markdown(table, text, status), meta)
    write_table(snakemake.output.final_merge_tex, final_merge_latex(table, text), meta)
    for _, cell in status[status["status"] != "complete"].iterrows():
        print(f"{cell['status']}: {cell['path']}: {cell['detail']}", file=sys.stderr)
