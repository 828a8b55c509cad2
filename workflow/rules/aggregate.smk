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


rule communication:
    """Messages and bytes per epoch of every method of the grid against the number of agents, on
    each topology (analytic: from the methods' own schedules; no training needed). The data
    manifests give the training-set size when the config does not subsample it."""
    input:
        expand(DATA_MANIFEST, dataset=DATASETS),
    output:
        csv=f"{RESULTS}/tables/communication.csv",
        markdown=report(f"{RESULTS}/tables/communication.md", caption="../report/communication_table.rst",
                        category="Tables"),
    params:
        # What the table depends on (data_dir is only a location): a change reruns this quick job.
        settings={key: config[key] for key in ("grid", "only", "pretrain", "run", "communication")},
    log:
        f"{RESULTS}/tables/communication.log",
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/communication.py"
