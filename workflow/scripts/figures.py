# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
import sys

from dimat_bench.aggregate import collect_cells
from dimat_bench.figures import accuracy_curves

sys.stderr = open(snakemake.log[0], "w")
accuracy_curves(collect_cells(snakemake.input), snakemake.output[0])
