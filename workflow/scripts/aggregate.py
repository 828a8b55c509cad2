# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
import sys

from dimat_bench.aggregate import (TABLE_LIBRARIES, cell_provenance, collect_cells, final_accuracy, main_table,
                                   to_latex, to_markdown)
from dimat_bench.results import provenance, write_table

sys.stderr = open(snakemake.log[0], "w")
meta = provenance(snakemake.config, libraries=TABLE_LIBRARIES, cells=cell_provenance(snakemake.input))
metrics = collect_cells(snakemake.input)
table = main_table(final_accuracy(metrics))
write_table(snakemake.output.metrics, metrics.to_csv(index=False), meta)
write_table(snakemake.output.final, final_accuracy(metrics).to_csv(index=False), meta)
write_table(snakemake.output.main, table.to_csv(index=False), meta)
write_table(snakemake.output.markdown, to_markdown(table), meta)
write_table(snakemake.output.latex, to_latex(table), meta)
