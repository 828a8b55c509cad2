rule cell:
    """One method on one topology, from the shared pretrained agents."""
    input:
        cell_pretrained,
    output:
        directory(CELL_DIR),
    log:
        f"{CELL_DIR}.log",
    benchmark:
        f"{CELL_DIR}.benchmark.tsv"
    params:
        flags=lambda wildcards: plan.flags(plan.run_options(config, wildcards.method)),
        network=lambda wildcards: plan.flags(plan.parse_network(wildcards.topology)),
        data_dir=data_dir,
        gpu_slots=gpu_slots,
        why=lambda wildcards, output: why(wildcards, output),
    message:
        "{wildcards.method} on {wildcards.dataset} {wildcards.model}-w{wildcards.width} n{wildcards.agents} "
        "{wildcards.split} {wildcards.topology} seed {wildcards.seed}: {params.why}"
    threads: 1
    resources:
        gpu=ENGINE_GPUS,
    conda:
        "../envs/engine.yaml"
    shell:
        "OMP_NUM_THREADS={threads} DIMAT_BENCH_GPU_SLOTS={params.gpu_slots} python -m dimat_bench run --pretrained {input} --method {wildcards.method} "
        "{params.network} --seed {wildcards.seed} --data-dir {params.data_dir:q} {params.flags} "
        "--out {output} --quiet --record-failure > {log} 2>&1"
