rule preflight:
    """Before any engine job: the engine's own check of every cell, what the grid will cost (FLOPs and
    GPU-hours, counted, not timed), and on a host without a GPU a stop before a GPU-scale grid unless
    the config says `confirm_cost: true` (dimat_bench/preflight.py). It runs where engine jobs run (a
    GPU node under profiles/slurm) and its output is temporary: it runs again whenever a data job
    must, so a grid that is already computed never waits for it."""
    output:
        temp(f"{RESULTS}/preflight.json"),
    log:
        f"{RESULTS}/preflight.log",
    threads: 1
    conda:
        "../envs/engine.yaml"
    script:
        "../scripts/preflight.py"
