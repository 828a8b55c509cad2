# `snakemake` is injected by Snakemake's script directive.
# ruff: noqa: F821
import json
import sys

import pandas as pd

from dimat_bench.aggregate import markdown_table, table_meta, write_table
from dimat_bench.communication import communication_table
from dimat_bench.methods import MethodOptions

sys.stderr = open(snakemake.log[0], "w")
train_images = {}
for manifest in snakemake.input:
    manifest = json.loads(open(manifest).read())
    train_images[manifest["config"]["dataset"]] = manifest["cache"]["train_images"]
rows = []
for setting in snakemake.params.settings:
    setting = dict(setting)
    setting["train_size"] = setting["train_size"] or train_images[setting["dataset"]]
    options = MethodOptions(fc_merge_once=setting.pop("fc_merge_once"))
    rows += communication_table(**setting, options=options)
table = pd.DataFrame(rows)
meta = table_meta(snakemake.config)
write_table(table, snakemake.output.csv, meta)
shown = table.assign(MB_per_epoch=(table["bytes_per_epoch"] / 1e6).round(2)).drop(columns="bytes_per_epoch")
write_table(markdown_table(shown), snakemake.output.markdown, meta)
