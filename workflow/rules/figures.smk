rule figures:
    """Accuracy against round per setting, each split's class counts and the communication per epoch,
    from stored results only."""
    input:
        cells=cell_dirs(),
        pretrained=pretrain_dirs(),
        communication=rules.communication.output.csv,
        final=rules.aggregate.output.final,
    output:
        report(directory(config["figures_dir"]), patterns=["{name}.png"], caption="../report/figures.rst",
               category="Figures"),
    log:
        f"{config['figures_dir']}.log",
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/figures.py"
