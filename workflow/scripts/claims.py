# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
import sys

import pandas as pd

from dimat_bench.aggregate import TABLE_LIBRARIES, markdown_table, restored_note
from dimat_bench.claims import claims_table
from dimat_bench.results import provenance, read_csv_meta, workflow_job, write_table

with workflow_job("claims", snakemake.log[0]):
    read = lambda path: pd.read_csv(path, comment="#")  # noqa: E731
    curves = read(snakemake.input.curves)
    table = claims_table({"final": read(snakemake.input.final), "curves": curves[curves["point"] == "paper"],
                          "communication": read(snakemake.input.communication)})
    cells = (read_csv_meta(snakemake.input.final) or {}).get("cells", [])
    restored = restored_note(cells)
    meta = provenance(snakemake.config, libraries=TABLE_LIBRARIES, restored=restored or None)
    write_table(snakemake.output.csv, table.to_csv(index=False), meta)
    intro = ("The claims of the paper and of related work (dimat_bench/claims.yaml; `source` says whose) checked on "
             "this grid, at the paper's measurement point (the final-merge claims: the merge against the agents it "
             "merged): "
             "a difference between methods holds / fails when its 95 % paired t-interval over seeds (differences "
             "paired by seed) lies wholly above / below zero, and is inconclusive when it contains zero or fewer "
             "than 3 seeds pair up; it is uninformative when the baseline cannot be told from chance (an exact one-sided "
             "binomial test on the test images, docs/benchmark.md#chance), and a claim that holds only against such "
             "baselines does not hold; C5 counts the messages the cells sent; a reference holds within its "
             "tolerance; not run = the grid lacks the cells. "
             "References are the only ones known; "
             "\"unknown\" is never replaced by a guess."
             + (f" Cells: {restored}." if restored else "") + "\n\n")
    write_table(snakemake.output.markdown, intro + markdown_table(table), meta)
