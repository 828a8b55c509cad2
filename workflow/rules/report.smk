# `snakemake --report report.html` (after a run) builds one HTML page: this description, every table
# and figure registered with `report(...)` in the rules, with its caption, and the run's statistics.
report: "../report/workflow.rst"
