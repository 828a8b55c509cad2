import sys

from snakemake.utils import validate

# The plan, not the engine: this file imports no torch (dimat_bench/plan.py; docs/engine.md#layers).
from dimat_bench import bundle, plan


validate(config, schema="../schemas/config.schema.yaml")

RESULTS = config["results_dir"]
CLAIMS_FILE = str(plan.CLAIMS_FILE)  # the claims the `claims` rule checks

# Engine jobs hold one GPU slot each where this host shows NVIDIA GPUs (read from the driver, not
# CUDA; a GPU has `gpu_slots` slots and `--resources gpu=G×gpu_slots` lets that many run at once:
# the profile's). On a CPU-only host they hold none and run side by side, one thread each, as many as
# there are cores; profiles/slurm sets the claim itself, for the compute nodes.
ENGINE_GPUS = 1 if plan.host_gpus() else 0
DATA_MANIFEST = f"{RESULTS}/data/{{dataset}}.json"
PRETRAIN_DIR = f"{RESULTS}/{plan.PRETRAIN_PATH}"
UNION_DIR = f"{RESULTS}/{plan.UNION_PATH}"  # one model on the union of the N agents' shards (`centralized` starts there)
CELL_DIR = f"{RESULTS}/{plan.CELL_PATH}"
# A pretraining's record: its metadata and class counts without its weights (what tables, figures
# and bundles read), copied from the pretraining or restored from a bundle.
RECORD_DIR = f"{RESULTS}/{plan.RECORD_PATH.format(pretraining=plan.PRETRAIN_PATH)}"
UNION_RECORD_DIR = f"{RESULTS}/{plan.RECORD_PATH.format(pretraining=plan.UNION_PATH)}"

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

# What the reused bundles (`reuse:`) hold, decided from the config and their manifests alone: a cell
# or pretraining record whose identity a bundle holds is restored (restore.smk), every other one is
# computed, and each job's message says which and why (dimat_bench/bundle.py; docs/bundles.md).
RESTORE, RESTORE_RECORDS, BUNDLES = bundle.restore_plan(config, CELLS)
if BUNDLES.bundles:
    print(bundle.summary(RESTORE, BUNDLES), file=sys.stderr)


def cell_dirs():
    return [CELL_DIR.format(**cell) for cell in CELLS]


def pretrain_dir(cell) -> str:
    """The pretraining a cell starts from (plan.pretrain_path)."""
    return f"{RESULTS}/{plan.pretrain_path(config, cell)}"


def pretrain_records(union=True):
    """Every pretraining's record (what a bundle publishes); without the union pretrainings', the N
    agents' only (the class-count figures draw their shards)."""
    return sorted({f"{RESULTS}/{plan.record_path(config, cell)}" for cell in CELLS
                   if union or not plan.union_pretraining(cell["method"])})


def wildcard_cell(wildcards) -> dict:
    return {key: getattr(wildcards, key) for key in plan.CELL_KEYS}


def cell_pretrained(wildcards):
    return pretrain_dir(wildcard_cell(wildcards))


def decision(wildcards, records=False, union=False) -> "bundle.Decision | None":
    """The restore plan's decision for the job's cell or pretraining record (None: not in the grid)."""
    if not records:
        return RESTORE.get(plan.cell_path(wildcard_cell(wildcards)))
    pattern = plan.UNION_PATH if union else plan.PRETRAIN_PATH
    path = plan.RECORD_PATH.format(pretraining=pattern.format(**dict(wildcards.items())))
    return RESTORE_RECORDS.get(path)


def bundled_files(wildcards, records=False, union=False) -> list[str]:
    """A restore job's input: the bundled files of its cell or record; where no reused bundle holds
    it, a path no rule makes, so that Snakemake takes the rule that computes it (ruleorder)."""
    found = decision(wildcards, records, union)
    if found is None or found.restore is None:
        return [f"{RESULTS}/.not-in-a-reused-bundle"]
    entry = found.restore
    return [str(entry.bundle / entry.path / name) for name in entry.files]


def why(wildcards, output, records=False, union=False) -> str:
    """Why a job restores or computes (for its message). A params function that takes `output`: no
    rerun trigger, so naming another bundle does not rerun computed cells."""
    found = decision(wildcards, records, union)
    return found.reason if found is not None else "not a cell of this grid"


def data_dir(wildcards, output):
    """Where the caches are: a location, not a setting. A params function that takes `output` is
    one Snakemake derives from the job's files and leaves out of its rerun triggers, so moving
    data_dir reruns nothing."""
    return config["data_dir"]


def gpu_slots(wildcards, output):
    """Engine jobs per GPU: how jobs share GPUs, not what they compute (no rerun trigger either)."""
    return config.get("gpu_slots", 1)


def restore_params(records=False, union=False) -> dict:
    """A restore rule's params: the bundle and the entry it copies, the identity (a rerun trigger:
    another bundled identity restores again) and why (no trigger)."""
    found = lambda wildcards: decision(wildcards, records, union)
    return {"bundle": lambda wildcards: str(found(wildcards).restore.bundle),
            "path": lambda wildcards: found(wildcards).restore.path,
            "identity": lambda wildcards: found(wildcards).identity,
            "why": lambda wildcards, output: why(wildcards, output, records, union)}
