# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
import json
import sys

import pandas as pd

from dimat_bench.aggregate import TABLE_LIBRARIES, markdown_table
from dimat_bench.grid import communication_rows
from dimat_bench.results import provenance, workflow_job, write_table

with workflow_job("communication", snakemake.log[0]):
    manifests = [json.loads(open(path).read()) for path in snakemake.input]
    table = pd.DataFrame(communication_rows(snakemake.params.settings, manifests))
    meta = provenance(snakemake.config, libraries=TABLE_LIBRARIES)
    write_table(snakemake.output.csv, table.to_csv(index=False), meta)
    shown = table.assign(MB_per_epoch=(table["bytes_per_epoch"] / 1e6).round(2),
                         messages_sent_per_run=table["messages_sent_per_run"].round(1),
                         messages_delivered_per_run=table["messages_delivered_per_run"].round(1)).drop(columns="bytes_per_epoch")
    write_table(snakemake.output.markdown, markdown_table(shown), meta)
