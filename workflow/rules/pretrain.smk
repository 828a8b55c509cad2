rule pretrain:
    """Pretrain the N agents of one dataset/model/N/split/seed; shared by every method and topology."""
    input:
        DATA_MANIFEST,
    output:
        directory(PRETRAIN_DIR),
    log:
        f"{PRETRAIN_DIR}.log",
    benchmark:
        f"{PRETRAIN_DIR}.benchmark.tsv"
    params:
        flags=plan.flags(config["pretrain"]),
        data_dir=data_dir,
        gpu_slots=gpu_slots,
    threads: 1
    resources:
        gpu=ENGINE_GPUS,
    conda:
        "../envs/engine.yaml"
    shell:
        "OMP_NUM_THREADS={threads} DIMAT_BENCH_GPU_SLOTS={params.gpu_slots} python -m dimat_bench pretrain --dataset {wildcards.dataset} --model {wildcards.model} "
        "--width {wildcards.width} --agents {wildcards.agents} --split {wildcards.split} "
        "--seed {wildcards.seed} --data-dir {params.data_dir:q} {params.flags} --out {output} --quiet --record-failure > {log} 2>&1"


# One model on the union of the N agents' shards of one dataset/model/N/split/seed: where the
# `centralized` method (the ceiling) starts.
use rule pretrain as pretrain_union with:
    output:
        directory(UNION_DIR),
    log:
        f"{UNION_DIR}.log",
    benchmark:
        f"{UNION_DIR}.benchmark.tsv"
    params:
        flags=plan.flags(config["pretrain"] | {"union": True}),
        data_dir=data_dir,
        gpu_slots=gpu_slots,
