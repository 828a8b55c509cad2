rule figures:
    """Accuracy against round per setting, from the stored cells only."""
    input:
        cell_dirs(),
    output:
        report(directory(config["figures_dir"]), patterns=["{name}.png"], caption="../report/accuracy.rst",
               category="Figures"),
    log:
        f"{config['figures_dir']}.log",
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/figures.py"
