# Restore before compute (dimat_bench/bundle.py; docs/bundles.md): a cell or pretraining record whose
# identity a reused bundle holds is copied from it, its files checked against the bundle's manifest;
# every other one is computed. Each restore rule is preferred over the rule that computes the same
# output, and its input (the bundled files) exists only where the bundle holds that identity, so
# Snakemake falls back to computing everywhere else; `snakemake -n` shows each job's rule and, in
# its message, why.


rule restore_cell:
    """A bundled cell: metrics.csv and meta.json, no weights (so no later cell can start from it)."""
    input:
        bundled_files,
    output:
        directory(CELL_DIR),
    log:
        f"{CELL_DIR}.restore.log",
    params:
        **restore_params(),
    message:
        "{wildcards.method} on {wildcards.dataset} {wildcards.model}-w{wildcards.width} n{wildcards.agents} "
        "{wildcards.split} {wildcards.topology} seed {wildcards.seed}: {params.why}"
    localrule: True
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/restore.py"


rule restore_record:
    """A bundled pretraining record (meta.json, metrics.csv, class_counts.csv)."""
    input:
        lambda wildcards: bundled_files(wildcards, records=True),
    output:
        directory(RECORD_DIR),
    log:
        f"{RECORD_DIR}.restore.log",
    params:
        **restore_params(records=True),
    message:
        "pretraining record {wildcards.dataset} {wildcards.model}-w{wildcards.width} n{wildcards.agents} "
        "{wildcards.split} seed {wildcards.seed}: {params.why}"
    localrule: True
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/restore.py"


use rule restore_record as restore_union_record with:
    input:
        lambda wildcards: bundled_files(wildcards, records=True, union=True),
    output:
        directory(UNION_RECORD_DIR),
    log:
        f"{UNION_RECORD_DIR}.restore.log",
    params:
        **restore_params(records=True, union=True),


rule pretrain_record:
    """A computed pretraining's record: its metadata and class counts, without the weights."""
    input:
        PRETRAIN_DIR,
    output:
        directory(RECORD_DIR),
    log:
        f"{RECORD_DIR}.log",
    localrule: True
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/record.py"


use rule pretrain_record as pretrain_union_record with:
    input:
        UNION_DIR,
    output:
        directory(UNION_RECORD_DIR),
    log:
        f"{UNION_RECORD_DIR}.log",


ruleorder: restore_cell > cell
ruleorder: restore_record > pretrain_record
ruleorder: restore_union_record > pretrain_union_record
