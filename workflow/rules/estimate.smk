rule estimate:
    """What the grid will cost before it runs (`snakemake estimate`; not part of `all`): images per
    phase, FLOPs, wall time on this host from a short calibration, GPU-hours on a named GPU. The
    same as `python -m dimat_bench estimate CONFIG` (docs/engine.md#cost-estimate)."""
    output:
        markdown=f"{RESULTS}/estimate.md",
        csv=f"{RESULTS}/estimate.csv",
    params:
        # What the estimate depends on (data_dir is only a location).
        settings={key: config[key] for key in ("grid", "only", "pretrain", "run") if key in config},
    log:
        f"{RESULTS}/estimate.log",
    localrule: True
    threads: 1
    conda:
        "../envs/engine.yaml"
    script:
        "../scripts/estimate.py"
