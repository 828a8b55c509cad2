rule aggregate:
    """Every cell into tidy tables, the curves at both measurement points, the main table (mean ±
    std over seeds) at the paper's point and after training, and the final global merges' table.
    Cells that diverged or failed are listed (cells.csv) and marked in the tables, never averaged in."""
    input:
        cell_dirs(),
    output:
        cells=report(f"{RESULTS}/tables/cells.csv", caption="../report/cells_table.rst", category="Tables"),
        metrics=f"{RESULTS}/tables/metrics.csv",
        final=f"{RESULTS}/tables/final.csv",
        curves=f"{RESULTS}/tables/curves.csv",
        main_csv=f"{RESULTS}/tables/main.csv",
        main_md=report(f"{RESULTS}/tables/main.md", caption="../report/main_table.rst", category="Tables"),
        main_tex=f"{RESULTS}/tables/main.tex",
        main_after_train_csv=f"{RESULTS}/tables/main_after_train.csv",
        main_after_train_md=report(f"{RESULTS}/tables/main_after_train.md",
                                   caption="../report/main_after_train_table.rst", category="Tables"),
        main_after_train_tex=f"{RESULTS}/tables/main_after_train.tex",
        final_merge_csv=f"{RESULTS}/tables/final_merge.csv",
        final_merge_md=report(f"{RESULTS}/tables/final_merge.md", caption="../report/final_merge_table.rst",
                              category="Tables"),
        final_merge_tex=f"{RESULTS}/tables/final_merge.tex",
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
        # the training-set size, where the pretraining takes the whole cache (no data job otherwise)
        expand(DATA_MANIFEST, dataset=DATASETS) if config["pretrain"].get("train_size") is None else [],
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
        "../envs/engine.yaml"  # bytes per message: the models' parameter counts
    script:
        "../scripts/communication.py"


rule claims:
    """A verdict on each of the paper's claims (dimat_bench/claims.yaml) from this grid's tables."""
    input:
        final=rules.aggregate.output.final,
        curves=rules.aggregate.output.curves,
        communication=rules.communication.output.csv,
        claims=CLAIMS_FILE,
    output:
        csv=f"{RESULTS}/tables/claims.csv",
        markdown=report(f"{RESULTS}/tables/claims.md", caption="../report/claims_table.rst", category="Claims"),
    log:
        f"{RESULTS}/tables/claims.log",
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/claims.py"
