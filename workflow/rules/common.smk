import itertools

import pandas as pd
from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

RESULTS = config["results_dir"]


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


# Engine jobs hold one GPU each where there are GPUs (`--resources gpu=G` lets G run at once). On a
# CPU-only host they hold none and run side by side, one thread each, as many as there are cores.
ENGINE_GPUS = 1 if visible_gpus() else 0
DATA_MANIFEST = f"{RESULTS}/data/{{dataset}}.json"
PRETRAIN_DIR = f"{RESULTS}/pretrain/{{dataset}}/{{model}}-w{{width}}/n{{agents}}/{{split}}/seed{{seed}}"
CELL_DIR = f"{RESULTS}/cells/{{dataset}}/{{model}}-w{{width}}/n{{agents}}/{{split}}/seed{{seed}}/{{topology}}/{{method}}"

wildcard_constraints:
    dataset="[a-z0-9]+",
    model="[A-Za-z0-9_:.]+",
    width="[0-9]+",
    agents="[0-9]+",
    split="[a-z]+",
    seed="[0-9]+",
    topology="[a-z_]+",
    method="[a-z0-9_]+",


def grid_table(config) -> pd.DataFrame:
    """One row per cell: every grid row expanded over its methods and seeds, then filtered."""
    rows = []
    for entry in config["grid"]:
        for method, seed in itertools.product(entry["methods"], entry["seeds"]):
            rows.append({k: entry[k] for k in ("dataset", "model", "width", "agents", "split", "topology")}
                        | {"method": method, "seed": seed})
    table = pd.DataFrame(rows).drop_duplicates()
    for key, allowed in config.get("only", {}).items():
        table = table[table[key].isin(allowed)]
    return table.reset_index(drop=True)


CELLS = grid_table(config)


def cell_dirs():
    return [CELL_DIR.format(**row) for row in CELLS.to_dict("records")]


def pretrain_dirs():
    return sorted({PRETRAIN_DIR.format(**row) for row in CELLS.to_dict("records")})


def communication_settings(config, cells: pd.DataFrame) -> list[dict]:
    """Arguments of `communication.communication_table` for every dataset/model/width of the grid,
    with the grid's methods there and the pipeline's pretrain/run settings (plain types only)."""
    from dimat_bench import config as engine_config
    from dimat_bench.pretrain import PretrainConfig
    from dimat_bench.run import RunConfig
    from dimat_bench.topology import create_topology

    run = engine_config.from_dict(RunConfig, {**config["run"], "pretrained": "-"})
    pre = engine_config.from_dict(PretrainConfig, {**config["pretrain"], "data_dir": config["data_dir"]})
    wanted = config["communication"]
    for n in wanted["agents"]:  # a bad axis fails here, before any job
        for topology in wanted["topologies"]:
            create_topology(topology, n, run.mixing)
    settings = []
    for (dataset, model, width), rows in cells.groupby(["dataset", "model", "width"], sort=True):
        settings.append({"methods": sorted(rows["method"].unique().tolist()), "dataset": dataset, "model": model,
                         "width": int(width), "agents": list(wanted["agents"]), "topologies": list(wanted["topologies"]),
                         "train_size": pre.train_size, "batch_size": run.batch_size or pre.batch_size,
                         "epochs_per_round": run.epochs_per_round, "mixing": run.mixing,
                         "fc_merge_once": run.fc_merge_once})
    return settings


def flags(options: dict) -> str:
    """Config keys -> command-line flags of the engine (`train_size: 100` -> `--train-size 100`)."""
    out = []
    for key, value in options.items():
        name = key.replace("_", "-")
        if isinstance(value, bool):
            out.append(f"--{name}" if value else f"--no-{name}")
        elif value is None:
            out.append(f"--{name} none")
        else:
            out.append(f"--{name} {value}")
    return " ".join(out)


def check_grid(config, cells: pd.DataFrame) -> None:
    """Every name and every engine key resolves before any job: the engine's own strict configs."""
    from dimat_bench import config as engine_config
    from dimat_bench.pretrain import PretrainConfig
    from dimat_bench.run import RunConfig

    for row in cells.to_dict("records"):
        pre = {k: row[k] for k in ("dataset", "model", "width", "agents", "split", "seed")}
        engine_config.from_dict(PretrainConfig, {**config["pretrain"], **pre, "data_dir": config["data_dir"]})
        engine_config.from_dict(RunConfig, {**config["run"], "pretrained": "-", "method": row["method"],
                                            "topology": row["topology"], "seed": row["seed"]})


check_grid(config, CELLS)
COMMUNICATION = communication_settings(config, CELLS)
