# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
import sys

from dimat_bench.aggregate import collect_cells, final_accuracy, main_table, to_latex, to_markdown

sys.stderr = open(snakemake.log[0], "w")
metrics = collect_cells(snakemake.input)
final = final_accuracy(metrics)
table = main_table(final)
metrics.to_csv(snakemake.output.metrics, index=False)
final.to_csv(snakemake.output.final, index=False)
table.to_csv(snakemake.output.main, index=False)
with open(snakemake.output.markdown, "w") as handle:
    handle.write(to_markdown(table))
with open(snakemake.output.latex, "w") as handle:
    handle.write(to_latex(table))
