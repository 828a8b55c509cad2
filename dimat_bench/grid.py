"""The grid as the engine checks it: the engine side of `plan` (which expands a pipeline config's rows
into cells and builds each job's flags without importing the engine).

Here every cell is built by the engine's own strict configs (`check_grid`: every value, every split
against its agents, every communication axis a graph), for `python -m dimat_bench plan` and the
pipeline's `preflight` job; the communication table of a grid is built from the methods' own
schedules; and `catalogue()` writes what the planner must know of the engine (`catalogue.json`)."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from . import config as cfg
from . import plan as planner
from .bundle import restore_plan
from .communication import communication_table
from .data import DATASETS
from .methods import METHODS
from .models import MODELS
from .plan import (CATALOGUE_FILE, CELL_KEYS, PRETRAIN_KEYS, SETTING_KEYS, as_list, check_config,  # noqa: F401
                   expand_grid, flags, load_pipeline_config, pretrain_seed, run_options, union_pretraining)
from .pretrain import PretrainConfig
from .registry import ConfigError
from .run import RUN_KEYS, CellConfig, RunConfig
from .splits import SPLITS, create_split
from .topology import GRAPHS, create_topology


def cell_config(config: Mapping[str, Any], cell: Mapping[str, Any]) -> CellConfig:
    """The engine's resolved config of one cell (its pretraining directory left as a placeholder)."""
    return CellConfig.from_mapping({**run_options(config, cell["method"]), "pretrained": "-",
                                    "method": cell["method"], **planner.parse_network(cell["topology"]),
                                    "seed": cell["seed"]})


def pretrain_config(config: Mapping[str, Any], cell: Mapping[str, Any]) -> PretrainConfig:
    """The pretraining a cell starts from (see `pretrain_seed`; `data_dir`, a location, only where the
    config gives it)."""
    keys = {k: cell[k] for k in PRETRAIN_KEYS} | {"seed": pretrain_seed(config, cell),
                                                   "union": union_pretraining(cell["method"])}
    location = {"data_dir": config["data_dir"]} if "data_dir" in config else {}
    return cfg.from_dict(PretrainConfig, {**config["pretrain"], **keys, **location})


def check_grid(config: Mapping[str, Any], cells: Iterable[Mapping[str, Any]]) -> None:
    """Raise ConfigError for anything the engine would reject: a `run:` key no method takes, a bad
    name or value in any cell, a communication axis that is not a graph."""
    check_config(config, cells)
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
                                    mixing=run.mixing, options={m: c.options for m, c in configs.items()},
                                    rounds=run.rounds, faults=fault_settings(here))
    return rows


def fault_settings(cells: Iterable[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """The (drop_rate, absent_rate) pairs of these cells' topology labels, the perfect network first."""
    pairs = {(0.0, 0.0)}
    for cell in cells:
        keys = planner.parse_network(cell["topology"])
        pairs.add((keys.get("drop_rate", 0.0), keys.get("absent_rate", 0.0)))
    return sorted(pairs)


def plan(path: str | Path, reuse: bool = True) -> str:
    """Check a pipeline config as the Snakefile will (the schema, every cell, every split) and say
    what it plans, in one line; ConfigError says what is wrong, naming the file. `reuse=False` plans
    as `--config 'reuse=[]'` runs it: every cell computes."""
    config = load_pipeline_config(path)
    if not reuse:
        config["reuse"] = []
    try:
        cells = expand_grid(config)
        check_grid(config, cells)
    except ConfigError as error:
        where = f"{error.hint} (in {path})" if error.hint else f"in {path}"
        raise ConfigError(error.field, error.value, error.allowed, where) from None
    pretrainings = {tuple(sorted(cfg.to_dict(pretrain_config(config, c)).items())) for c in cells}
    datasets = sorted({c["dataset"] for c in cells})
    decisions, _, index = restore_plan(config, cells)
    restored = sum(d.restore is not None for d in decisions.values())
    reuse = f"; {restored} of them restore from {', '.join(str(b.folder) for b in index.bundles)}" if index.bundles else ""
    return (f"{path}: {len(cells)} cells from {len(pretrainings)} pretrainings on {', '.join(datasets)}; "
            f"{len({c['method'] for c in cells})} methods, {len({c['seed'] for c in cells})} seeds{reuse}")


def catalogue() -> dict:
    """What `plan` must know of the engine, from its registries: the run keys with their defaults,
    every key `run` and `pretrain` take, each method's family and the options a config may set, and
    the registered names (datasets, splits, topologies, models). Built once per set of registered
    names (a method registered at run time makes a new one), so the planner may ask per cell."""
    return _catalogue(tuple(METHODS.names()), tuple(MODELS.names()))


@functools.lru_cache(maxsize=4)
def _catalogue(methods: tuple[str, ...], models: tuple[str, ...]) -> dict:
    run_defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    methods = {name: method_catalogue(name) for name in methods}
    return {"about": "written by `python -m dimat_bench catalogue --write` from the engine's registries; "
                     "tests/test_plan.py checks it (docs/engine.md#layers)",
            "run_keys": {key: run_defaults[key] for key in RUN_KEYS}, "cell_keys": list(CellConfig.keys()),
            "pretrain_keys": cfg.keys(PretrainConfig),
            "pretrain_defaults": cfg.to_dict(cfg.from_dict(PretrainConfig, {})), "methods": methods, "datasets": DATASETS.names(),
            "dataset_sizes": {name: {"classes": DATASETS.get(name).num_classes, "test_images": DATASETS.get(name).test_images}
                              for name in DATASETS.names()},
            "splits": SPLITS.names(), "topologies": GRAPHS.names(), "models": list(models)}


def method_catalogue(name: str) -> dict:
    """What the planner knows of one method: its family, what it is a variant of, where it starts,
    the options a config may set, its options resolved with none given (`defaults`: a variant's
    fixed values in), and resolved under each preset it takes (`presets`), so that the planner
    resolves a cell's whole config without the engine (`plan.resolved_cell`)."""
    method = METHODS.get(name)
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(method.Options)}
    presets = choices["preset"]() if choices.get("preset") else []
    return {"family": method.family, "variant_of": method.variant_of, "pretraining": method.pretraining,
            "settable": sorted(method.settable_keys()),
            "defaults": dataclasses.asdict(method.build_options({})),
            "presets": {preset: dataclasses.asdict(method.build_options({"preset": preset})) for preset in presets}}


planner.LIVE_CATALOGUE = catalogue  # the planner, in this process, reads the registries themselves


def catalogue_text() -> str:
    return json.dumps(catalogue(), indent=1) + "\n"


def write_catalogue(path: str | Path | None = None) -> bool:
    """Write `catalogue.json` when it differs from the engine's registries; True when it changed."""
    text, path = catalogue_text(), Path(path or CATALOGUE_FILE)
    if path.is_file() and path.read_text() == text:
        return False
    path.write_text(text)
    return True
