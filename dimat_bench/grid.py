"""The pipeline's grid (workflow/rules/common.smk asks this module what to plan).

A pipeline config's `grid` is a list of rows. A row's setting keys (dataset, model, width, agents,
split, topology) each take one value or a list, and the row expands into the product of those lists
× its `methods` × its `seeds`, one cell each, in the order written; `only: {key: [values]}` keeps the
cells whose key is in the list. Before any job runs, every cell is checked by the engine's own strict
configs; the `run:` keys go to each cell whose method takes them (and does not fix them, as a variant
does). The communication table of a grid
is built here too, from the methods' own schedules."""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from . import config as cfg
from .communication import communication_table
from .data import DATASETS
from .methods import METHODS
from .pretrain import PretrainConfig
from .registry import ConfigError, did_you_mean
from .run import RUN_KEYS, CellConfig, RunConfig
from .splits import create_split
from .topology import create_topology

# What identifies a cell: the pretraining's settings, then the run's.
SETTING_KEYS = ["dataset", "model", "width", "agents", "split", "topology"]
CELL_KEYS = SETTING_KEYS + ["method", "seed"]
PRETRAIN_KEYS = ["dataset", "model", "width", "agents", "split", "seed"]
# Keys the workflow gives every engine job itself, from the job's cell (its wildcards) or the config's
# top level: a shared `pretrain:` or `run:` block that set one would override them on the job's
# command line while the plan believed the cell's own value.
JOB_KEYS = {"pretrain": PRETRAIN_KEYS + ["data_dir"], "run": ["method", "topology", "seed", "pretrained", "data_dir"]}


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def expand_grid(config: Mapping[str, Any]) -> list[dict]:
    """One dict per cell (CELL_KEYS), rows in order, each the product of its lists, duplicates once."""
    cells, seen = [], set()
    for row in config["grid"]:
        for setting in itertools.product(*(as_list(row[key]) for key in SETTING_KEYS)):
            for method, seed in itertools.product(row["methods"], row["seeds"]):
                cell = dict(zip(SETTING_KEYS, setting)) | {"method": method, "seed": seed}
                if tuple(cell.values()) not in seen:
                    seen.add(tuple(cell.values()))
                    cells.append(cell)
    only = config.get("only") or {}
    for key, allowed in only.items():
        if key not in CELL_KEYS:
            raise ConfigError("only", key, "cell keys: " + ", ".join(CELL_KEYS))
        cells = [cell for cell in cells if cell[key] in as_list(allowed)]
    if not cells:
        raise ConfigError("only", dict(only), "a filter that keeps at least one of the grid's cells",
                          "none of the grid rows' cells matches it")
    return cells


def pretrain_seed(config: Mapping[str, Any], cell: Mapping[str, Any]) -> int:
    """The seed of the pretraining a cell starts from: its own (`pretrain_seeds: per_seed`), or seed 0
    for every seed (`shared`: the authors' protocol, where seeds differ only in data order,
    augmentation and matching samples)."""
    return 0 if config.get("pretrain_seeds", "per_seed") == "shared" else int(cell["seed"])


def run_options(config: Mapping[str, Any], method: str) -> dict:
    """The pipeline's `run:` keys that a cell of `method` takes: the run keys and its own options,
    except those a variant fixes (the variant's name says what it runs; `run:` is shared by all)."""
    takes = set(RUN_KEYS) | METHODS.get(method).settable_keys()
    return {key: value for key, value in config["run"].items() if key in takes}


def cell_config(config: Mapping[str, Any], cell: Mapping[str, Any]) -> CellConfig:
    """The engine's resolved config of one cell (its pretraining directory left as a placeholder)."""
    return CellConfig.from_mapping({**run_options(config, cell["method"]), "pretrained": "-",
                                    "method": cell["method"], "topology": cell["topology"], "seed": cell["seed"]})


def pretrain_config(config: Mapping[str, Any], cell: Mapping[str, Any]) -> PretrainConfig:
    """The pretraining a cell starts from (see `pretrain_seed`; `data_dir`, a location, only where the
    config gives it)."""
    keys = {k: cell[k] for k in PRETRAIN_KEYS} | {"seed": pretrain_seed(config, cell)}
    location = {"data_dir": config["data_dir"]} if "data_dir" in config else {}
    return cfg.from_dict(PretrainConfig, {**config["pretrain"], **keys, **location})


def check_grid(config: Mapping[str, Any], cells: Iterable[Mapping[str, Any]]) -> None:
    """Raise ConfigError for anything the engine would reject: a `run:` key no method takes, a bad
    name or value in any cell, a communication axis that is not a graph."""
    for block, keys in JOB_KEYS.items():
        for key in keys:
            if key in (config.get(block) or {}):
                raise ConfigError(f"{block}.{key}", config[block][key], f"nothing: {job_key_source(key)} sets it per job",
                                  f"remove it from `{block}:`")
    known = set(CellConfig.keys())
    for key, value in config["run"].items():
        if key not in known:
            raise ConfigError(f"run.{key}", value, "keys of `python -m dimat_bench run --help`",
                              did_you_mean(key, sorted(known)))
    checked = set()
    for cell in cells:
        pretraining = pretrain_config(config, cell)
        cell_config(config, cell)
        key = tuple(sorted(cfg.to_dict(pretraining).items()))
        if key not in checked:
            checked.add(key)
            check_split(pretraining)
    run = cfg.from_dict(RunConfig, {k: v for k, v in config["run"].items() if k in RUN_KEYS} | {"pretrained": "-"})
    for n in config["communication"]["agents"]:
        for topology in config["communication"]["topologies"]:
            create_topology(topology, n, run.mixing)


def job_key_source(key: str) -> str:
    """Where a JOB_KEYS key comes from, for the message that rejects it in a shared block."""
    return {"data_dir": "the config's top-level `data_dir`", "pretrained": "the workflow (the cell's pretraining)",
            "seed": "a grid row's `seeds`", "method": "a grid row's `methods`"}.get(key, f"a grid row's `{key}`")


def check_split(pre: PretrainConfig) -> None:
    """Raise ConfigError when the pretraining's split cannot serve its agents, found by splitting
    class-balanced stand-in labels of the size the pretraining will see (`train_size`, or the full
    dataset's size when it takes the whole file; a smaller cache file is checked when it is read)."""
    info = DATASETS.get(pre.dataset)
    size = pre.train_size or info.train_images
    labels = np.arange(size) % info.num_classes
    where = f"the {pre.split} split of {pre.dataset} ({size} images) among {pre.agents} agents"
    try:
        split = create_split(pre.split, labels, info.num_classes, pre.agents, seed=0, **pre.split_options())
    except ConfigError as error:
        raise ConfigError(error.field, error.value, error.allowed, f"grid: {where}") from None
    small = [i for i, shard in enumerate(split.shards) if len(shard) < 2]
    if small:
        raise ConfigError("agents", pre.agents, f"a number of agents that {where} gives >= 2 images each",
                          f"agent {small[0]} would get {len(split.shards[small[0]])}")


def flags(options: Mapping[str, Any]) -> str:
    """Config keys -> command-line flags of the engine (`train_size: 100` -> `--train-size 100`)."""
    out = []
    for key, value in options.items():
        if isinstance(value, bool):
            out.append(cfg.flag(key) if value else "--no-" + cfg.flag(key)[2:])
        elif value is None:
            out.append(f"{cfg.flag(key)} none")
        else:
            out.append(f"{cfg.flag(key)} {shlex.quote(str(value))}")
    return " ".join(out)


def communication_rows(config: Mapping[str, Any], manifests: Iterable[Mapping[str, Any]]) -> list[dict]:
    """The grid's communication table (`communication.communication_table` rows): for every
    dataset/model/width, the grid's methods there with the options their cells run with, against
    the config's `communication` axes. The data manifests give the training-set size where the
    pretraining does not subsample it."""
    train_images = {m["config"]["dataset"]: m["cache"]["train_images"] for m in manifests}
    cells = expand_grid(config)
    rows = []
    for dataset, model, width in sorted({(c["dataset"], c["model"], c["width"]) for c in cells}):
        here = [c for c in cells if (c["dataset"], c["model"], c["width"]) == (dataset, model, width)]
        configs = {c["method"]: cell_config(config, c) for c in here}
        pre = pretrain_config(config, here[0])
        run = next(iter(configs.values())).run
        axes = config["communication"]
        rows += communication_table(sorted(configs), dataset, model, int(width), list(axes["agents"]),
                                    list(axes["topologies"]),
                                    train_size=pre.train_size or train_images[dataset],
                                    batch_size=run.batch_size or pre.batch_size, epochs_per_round=run.epochs_per_round,
                                    mixing=run.mixing, options={m: c.options for m, c in configs.items()})
    return rows


ROOT = Path(__file__).resolve().parent.parent  # a checkout: Snakefile, config/, workflow/


def load_pipeline_config(path: str | Path, base: str | Path | None = ROOT / "config" / "config.yaml") -> dict:
    """A pipeline config as Snakemake sees it: `base` (the Snakefile's `configfile:`) updated with
    `path` (`--configfile`), validated against the workflow's schema with its defaults filled in.
    ConfigError names the file and, for YAML errors, the line."""
    from snakemake.utils import update_config, validate

    config = cfg.read_config_file(base) if base is not None and Path(base).is_file() else {}
    given = cfg.read_config_file(path)
    update_config(config, given)
    try:
        validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    except Exception as error:  # snakemake's WorkflowError wraps jsonschema's message
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ConfigError("configfile", str(path), "a config that workflow/schemas/config.schema.yaml accepts",
                          " ".join(lines[-3:])[:300]) from None
    return config


def plan(path: str | Path) -> str:
    """Check a pipeline config as the Snakefile will (the schema, every cell, every split) and say
    what it plans, in one line; ConfigError says what is wrong, naming the file."""
    config = load_pipeline_config(path)
    try:
        cells = expand_grid(config)
        check_grid(config, cells)
    except ConfigError as error:
        raise ConfigError(error.field, error.value, error.allowed, f"in {path}") from None
    pretrainings = {tuple(sorted(cfg.to_dict(pretrain_config(config, c)).items())) for c in cells}
    datasets = sorted({c["dataset"] for c in cells})
    return (f"{path}: {len(cells)} cells from {len(pretrainings)} pretrainings on {', '.join(datasets)}; "
            f"{len({c['method'] for c in cells})} methods, {len({c['seed'] for c in cells})} seeds")
