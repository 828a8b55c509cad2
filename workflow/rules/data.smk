localrules:
    data,


rule data:
    """Cache one dataset in data_dir (downloading it when absent) and validate it: once per dataset,
    before any pretraining. Local on a cluster: compute nodes often have no internet."""
    input:
        rules.preflight.output,
    output:
        DATA_MANIFEST,
    log:
        f"{RESULTS}/data/{{dataset}}.log",
    params:
        flags=plan.flags({k: v for k, v in config["pretrain"].items() if k in ("download", "data_subset")}),
        data_dir=data_dir,
    conda:
        "../envs/engine.yaml"
    shell:
        "python -m dimat_bench data --dataset {wildcards.dataset} --data-dir {params.data_dir:q} {params.flags} "
        "--out {output} --quiet > {log} 2>&1"
