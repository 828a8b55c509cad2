# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
import sys

from dimat_bench.aggregate import collect_cells, final_accuracy, main_table, table_meta, to_latex, to_markdown, write_table

sys.stderr = open(snakemake.log[0], "w")
meta = table_meta(snakemake.config, snakemake.input)
metrics = collect_cells(snakemake.input)
table = main_table(final_accuracy(metrics))
write_table(metrics, snakemake.output.metrics, meta)
write_table(final_accuracy(metrics), snakemake.output.final, meta)
write_table(table, snakemake.output.main, meta)
write_table(to_markdown(table), snakemake.output.markdown, meta)
write_table(to_latex(table), snakemake.output.latex, meta)
