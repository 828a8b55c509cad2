rule aggregate:
    """Every cell into tidy tables and the main table (mean ± std over seeds)."""
    input:
        cell_dirs(),
    output:
        metrics=f"{RESULTS}/tables/metrics.csv",
        final=f"{RESULTS}/tables/final.csv",
        main=f"{RESULTS}/tables/main.csv",
        markdown=report(f"{RESULTS}/tables/main.md", caption="../report/main_table.rst", category="Tables"),
        latex=f"{RESULTS}/tables/main.tex",
    log:
        f"{RESULTS}/tables/aggregate.log",
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/aggregate.py"
