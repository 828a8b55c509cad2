from snakemake.utils import validate

# The plan, not the engine: this file imports no torch (dimat_bench/plan.py; docs/engine.md#layers).
from dimat_bench import plan


validate(config, schema="../schemas/config.schema.yaml")

RESULTS = config["results_dir"]
CLAIMS_FILE = str(plan.CLAIMS_FILE)  # the claims the `claims` rule checks

# Engine jobs hold one GPU slot each where this host shows NVIDIA GPUs (read from the driver, not
# CUDA; a GPU has `gpu_slots` slots and `--resources gpu=G×gpu_slots` lets that many run at once:
# the profile's). On a CPU-only host they hold none and run side by side, one thread each, as many as
# there are cores; profiles/slurm sets the claim itself, for the compute nodes.
ENGINE_GPUS = 1 if plan.host_gpus() else 0
DATA_MANIFEST = f"{RESULTS}/data/{{dataset}}.json"
PRETRAIN_DIR = f"{RESULTS}/pretrain/{{dataset}}/{{model}}-w{{width}}/n{{agents}}/{{split}}/seed{{seed}}"
UNION_DIR = f"{PRETRAIN_DIR}-union"  # one model on the union of the N agents' shards (`centralized` starts there)
CELL_DIR = f"{RESULTS}/cells/{{dataset}}/{{model}}-w{{width}}/n{{agents}}/{{split}}/seed{{seed}}/{{topology}}/{{method}}"

wildcard_constraints:
    dataset="[a-z0-9]+",
    model="[A-Za-z0-9_:.]+",
    width="[0-9]+",
    agents="[0-9]+",
    split="[a-z]+",
    seed="[0-9]+",
    topology="[a-z_]+(-(drop|absent)[0-9.]+)*",
    method="[a-z0-9_]+",


# One dict per cell (every grid row expanded, then filtered), checked here as far as the config alone
# shows; the engine checks every cell in the first job (preflight.smk).
CELLS = plan.expand_grid(config)
plan.check_config(config, CELLS)
DATASETS = sorted({cell["dataset"] for cell in CELLS})


def cell_dirs():
    return [CELL_DIR.format(**cell) for cell in CELLS]


def pretrain_dir(cell) -> str:
    """The pretraining a cell starts from: its own seed's, or seed 0's when seeds share one; the
    union's for a method that starts from one model on every agent's images."""
    pattern = UNION_DIR if plan.union_pretraining(cell["method"]) else PRETRAIN_DIR
    return pattern.format(**{**cell, "seed": plan.pretrain_seed(config, cell)})


def pretrain_dirs():
    """The N agents' pretrainings (the class-count figures draw their shards)."""
    return sorted({pretrain_dir(cell) for cell in CELLS if not plan.union_pretraining(cell["method"])})


def cell_pretrained(wildcards):
    return pretrain_dir({key: getattr(wildcards, key) for key in plan.CELL_KEYS})


def data_dir(wildcards, output):
    """Where the caches are: a location, not a setting. A params function that takes `output` is
    one Snakemake derives from the job's files and leaves out of its rerun triggers, so moving
    data_dir reruns nothing."""
    return config["data_dir"]


def gpu_slots(wildcards, output):
    """Engine jobs per GPU: how jobs share GPUs, not what they compute (no rerun trigger either)."""
    return config.get("gpu_slots", 1)
