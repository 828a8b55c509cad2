rule figures:
    """Accuracy against round per setting, each split's class counts and the communication per epoch,
    from stored results only. Built in the pipeline's own folder under results_dir (Snakemake empties
    a directory output before the job) and copied into figures_dir, where only the files the last
    copy put there are replaced or removed: a user's own files and `.gitkeep` stay."""
    input:
        cells=cell_dirs(),
        pretrained=pretrain_records(union=False),
        communication=rules.communication.output.csv,
        final=rules.aggregate.output.final,
    output:
        report(directory(f"{RESULTS}/figures"), patterns=["{name}.png"], caption="../report/figures.rst",
               category="Figures"),
    params:
        figures_dir=lambda wildcards, output: config["figures_dir"],  # a location: no rerun trigger
    log:
        f"{RESULTS}/figures.log",
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/figures.py"
