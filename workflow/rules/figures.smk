rule figures:
    """Accuracy against round per setting and each split's class counts, from stored results only."""
    input:
        cells=cell_dirs(),
        pretrained=pretrain_dirs(),
    output:
        report(directory(config["figures_dir"]), patterns=["{name}.png"], caption="../report/figures.rst",
               category="Figures"),
    log:
        f"{config['figures_dir']}.log",
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/figures.py"
