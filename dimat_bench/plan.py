"""The plan: what a pipeline config asks for, read without the engine (no torch; docs/engine.md#layers).

`workflow/rules/common.smk` and the reports (aggregate, claims, figures) import this module, never
the engine, so `snakemake -n`, `--lint` and the tables run in an environment with no PyTorch. It
knows the grid's keys, expands a config's rows into cells, builds each engine job's command-line
flags, and checks what the config alone can show: the schema, keys a shared block may not set, keys
and names no engine command takes. What only the engine can check (every value of every cell, every
split against its agents) runs in `python -m dimat_bench plan CONFIG` and in the pipeline's first
job, `preflight` (`grid.check_grid`).

What the planner must know of the engine (its run keys with their defaults, each method's options,
the registered names) is `catalogue.json`, written by `python -m dimat_bench catalogue --write` from
the engine's registries; `tests/test_plan.py` fails when it no longer matches them."""

from __future__ import annotations

import itertools
import json
import os
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from . import config as cfg
from .registry import ConfigError, did_you_mean

# What identifies a cell: the pretraining's settings, then the run's.
SETTING_KEYS = ["dataset", "model", "width", "agents", "split", "topology"]
CELL_KEYS = SETTING_KEYS + ["method", "seed"]
PRETRAIN_KEYS = ["dataset", "model", "width", "agents", "split", "seed"]
# Keys the workflow gives every engine job itself, from the job's cell (its wildcards) or the config's
# top level: a shared `pretrain:` or `run:` block that set one would override them on the job's
# command line while the plan believed the cell's own value.
JOB_KEYS = {"pretrain": PRETRAIN_KEYS + ["union", "data_dir"],
            "run": ["method", "topology", "seed", "pretrained", "data_dir", "drop_rate", "absent_rate"]}
# A row's faults (docs/benchmark.md#networks-as-they-are) are part of its cells' `topology` column:
# `ring-drop0.3-absent0.1` is the ring with 30 % of messages lost and 10 % of agents absent.
FAULT_TAGS = {"drop_rate": "drop", "absent_rate": "absent"}
# Where a grid's outputs go under its results_dir (the workflow's paths; a bundle keeps the same).
PRETRAIN_PATH = "pretrain/{dataset}/{model}-w{width}/n{agents}/{split}/seed{seed}"
UNION_PATH = PRETRAIN_PATH + "-union"  # one model on the union of the N agents' shards (`centralized` starts there)
CELL_PATH = "cells/{dataset}/{model}-w{width}/n{agents}/{split}/seed{seed}/{topology}/{method}"
RECORD_PATH = "records/{pretraining}"  # a pretraining's metadata without its weights (meta.json, class counts)
CATALOGUE_FILE = Path(__file__).with_name("catalogue.json")
CLAIMS_FILE = Path(__file__).with_name("claims.yaml")
ROOT = Path(__file__).resolve().parent.parent  # a checkout: Snakefile, config/, workflow/


# In a process that has imported the engine, `grid` sets this to its `catalogue` (the registries as
# they are now, a method registered at run time included); elsewhere the file stands in for them.
LIVE_CATALOGUE: Callable[[], dict] | None = None


@lru_cache(maxsize=1)
def catalogue_file() -> dict:
    return json.loads(CATALOGUE_FILE.read_text())


def catalogue() -> dict:
    """The engine's keys and names: its registries where the engine is loaded, else `catalogue.json`."""
    return LIVE_CATALOGUE() if LIVE_CATALOGUE is not None else catalogue_file()


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def rate_text(rate: float) -> str:
    """0.3 -> "0.3", 1 -> "1", 1e-05 -> "0.00001" (no exponent: "-" separates a label's parts)."""
    return format(float(rate), ".10f").rstrip("0").rstrip(".")


def network_label(topology: str, drop_rate: float = 0.0, absent_rate: float = 0.0) -> str:
    """A cell's `topology` column: the graph, then its faults where there are any."""
    rates = {"drop_rate": drop_rate, "absent_rate": absent_rate}
    return "-".join([topology] + [f"{tag}{rate_text(rates[key])}" for key, tag in FAULT_TAGS.items() if rates[key]])


def parse_network(label: str) -> dict:
    """A `topology` column back into the run keys it stands for: `ring-drop0.3` -> {topology: ring,
    drop_rate: 0.3} (rates not named are 0)."""
    topology, *parts = str(label).split("-")
    keys = {"topology": topology}
    for part in parts:
        key = next((k for k, tag in FAULT_TAGS.items() if part.startswith(tag)), None)
        rate = part[len(FAULT_TAGS[key]):] if key else ""
        if not rate.replace(".", "", 1).isdigit():
            raise ConfigError("topology", label, "a graph name, then -drop<rate> and/or -absent<rate>, e.g. ring-drop0.3")
        keys[key] = float(rate)
    return keys


def row_topologies(row: Mapping[str, Any]) -> list[str]:
    """A row's `topology` column values: each graph at each of its drop and absent rates."""
    return [network_label(t, d, a) for t in as_list(row["topology"]) for d in as_list(row.get("drop_rate", 0.0))
            for a in as_list(row.get("absent_rate", 0.0))]


def expand_grid(config: Mapping[str, Any]) -> list[dict]:
    """One dict per cell (CELL_KEYS), rows in order, each the product of its lists (a row's faults
    folded into its topologies: `row_topologies`), duplicates once."""
    cells, seen = [], set()
    for row in config["grid"]:
        axes = [row_topologies(row) if key == "topology" else as_list(row[key]) for key in SETTING_KEYS]
        for setting in itertools.product(*axes):
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


def pretrain_path(config: Mapping[str, Any], cell: Mapping[str, Any]) -> str:
    """The pretraining a cell starts from, under results_dir: its own seed's, or seed 0's when seeds
    share one; the union's for a method that starts from one model on every agent's images."""
    pattern = UNION_PATH if union_pretraining(cell["method"]) else PRETRAIN_PATH
    return pattern.format(**{**cell, "seed": pretrain_seed(config, cell)})


def record_path(config: Mapping[str, Any], cell: Mapping[str, Any]) -> str:
    """The record of the pretraining a cell starts from (its metadata without weights), under results_dir."""
    return RECORD_PATH.format(pretraining=pretrain_path(config, cell))


def cell_path(cell: Mapping[str, Any]) -> str:
    """A cell's output directory under results_dir."""
    return CELL_PATH.format(**cell)


def method_entry(method: str) -> dict:
    methods = catalogue()["methods"]
    if method not in methods:
        raise ConfigError("method", method, ", ".join(sorted(methods)),
                          did_you_mean(method, methods) or "a method added to dimat_bench/methods/ needs "
                          "`python -m dimat_bench catalogue --write`")
    return methods[method]


def union_pretraining(method: str) -> bool:
    """Whether a cell of `method` starts from one model pretrained on the union of the agents' shards
    (the centralized ceiling) rather than from the N agents."""
    return method_entry(method).get("pretraining") == "union"


def run_options(config: Mapping[str, Any], method: str) -> dict:
    """The pipeline's `run:` keys that a cell of `method` takes: the run keys and its own options,
    except those a variant fixes (the variant's name says what it runs; `run:` is shared by all)."""
    takes = set(catalogue()["run_keys"]) | set(method_entry(method)["settable"])
    return {key: value for key, value in config["run"].items() if key in takes}


def run_setting(config: Mapping[str, Any], key: str):
    """A run key's value for every cell: the config's `run:` or the engine's default."""
    return config["run"].get(key, catalogue()["run_keys"][key])


# Keys of a resolved config that say where files are or whether to fetch them, not what is computed:
# a cell's identity leaves them out (moving data_dir restores and reruns nothing).
LOCATION_KEYS = {"run": ("pretrained", "data_dir"), "pretrain": ("data_dir", "download")}


def resolved_cell(config: Mapping[str, Any], cell: Mapping[str, Any]) -> dict:
    """Every key of a cell's resolved config as the engine records it in meta.json (`config`), but
    its locations (LOCATION_KEYS): the run keys' defaults, the method's options resolved (its
    variant's fixed values, a preset's values), then what the job is given. Built from
    `catalogue.json`, without the engine; `tests/test_bundle.py` checks it against the engine's own
    resolution (`grid.cell_config`) for every cell of the shipped grids."""
    method = cell["method"]
    entry, known = method_entry(method), catalogue()
    given = {**run_options(config, method), **parse_network(cell["topology"]), "method": method,
             "seed": cell["seed"]}
    preset = given.get("preset")
    options = entry["presets"][preset] if preset in entry.get("presets", {}) else entry["defaults"]
    resolved = {**known["run_keys"], **options, **given}
    if resolved["batch_size"] is None:  # the engine records the pretraining's (run.build_cell)
        resolved["batch_size"] = resolved_pretrain(config, cell)["batch_size"]
    return {key: value for key, value in resolved.items() if key not in LOCATION_KEYS["run"]}


def resolved_pretrain(config: Mapping[str, Any], cell: Mapping[str, Any]) -> dict:
    """Every key of the resolved config of the pretraining a cell starts from (`pretrain_seed`, the
    union for a method that starts from one model), but its locations."""
    keys = {k: cell[k] for k in PRETRAIN_KEYS} | {"seed": pretrain_seed(config, cell),
                                                   "union": union_pretraining(cell["method"])}
    resolved = {**catalogue()["pretrain_defaults"], **(config.get("pretrain") or {}), **keys}
    return {key: value for key, value in resolved.items() if key not in LOCATION_KEYS["pretrain"]}


def flags(options: Mapping[str, Any]) -> str:
    """Config keys -> command-line flags of the engine (`train_size: 100` -> `--train-size 100`),
    each value shell-quoted."""
    out = []
    for key, value in options.items():
        if isinstance(value, bool):
            out.append(cfg.flag(key) if value else "--no-" + cfg.flag(key)[2:])
        elif value is None:
            out.append(f"{cfg.flag(key)} none")
        else:
            out.append(f"{cfg.flag(key)} {shlex.quote(str(value))}")
    return " ".join(out)


def job_key_source(key: str) -> str:
    """Where a JOB_KEYS key comes from, for the message that rejects it in a shared block."""
    return {"data_dir": "the config's top-level `data_dir`", "pretrained": "the workflow (the cell's pretraining)",
            "seed": "a grid row's `seeds`", "method": "a grid row's `methods`"}.get(key, f"a grid row's `{key}`")


def check_config(config: Mapping[str, Any], cells: Iterable[Mapping[str, Any]]) -> None:
    """Raise ConfigError for what the config alone shows is wrong: a cell key in a shared block, a
    key no engine command takes, a method, dataset, split or topology name the engine does not know."""
    known = catalogue()
    for block, keys in JOB_KEYS.items():
        for key in keys:
            if key in (config.get(block) or {}):
                raise ConfigError(f"{block}.{key}", config[block][key], f"nothing: {job_key_source(key)} sets it per job",
                                  f"remove it from `{block}:`")
    for block, allowed in (("run", known["cell_keys"]), ("pretrain", known["pretrain_keys"])):
        for key, value in (config.get(block) or {}).items():
            if key not in allowed:
                raise ConfigError(f"{block}.{key}", value, f"keys of `python -m dimat_bench {block} --help`",
                                  did_you_mean(key, allowed))
    names = {"method": sorted(known["methods"]), "dataset": known["datasets"], "split": known["splits"],
             "topology": known["topologies"]}
    for cell in cells:
        for key, allowed in names.items():
            value = parse_network(cell[key])["topology"] if key == "topology" else cell[key]
            if value not in allowed:
                raise ConfigError(key, value, ", ".join(allowed), did_you_mean(value, allowed))
    for topology in (config.get("communication") or {}).get("topologies", []):
        if topology not in names["topology"]:
            raise ConfigError("communication.topologies", topology, ", ".join(names["topology"]),
                              did_you_mean(topology, names["topology"]))


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


def host_gpus(environ: Mapping[str, str] = os.environ, proc: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    """The NVIDIA GPUs this host shows a job, read without CUDA: the driver's device entries, limited
    by CUDA_VISIBLE_DEVICES when it is set (an empty value or -1 hides them all). Decides only
    whether engine jobs claim a `gpu` slot; how many run at once is the profile's `--resources gpu=`."""
    try:
        present = sum(1 for _ in proc.iterdir())
    except OSError:
        present = 0
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    ids = [part.strip() for part in visible.split(",") if part.strip()]
    ids = ids[:next((i for i, part in enumerate(ids) if part.startswith("-")), len(ids))]  # CUDA stops at -1
    return min(present, len(ids))


def truthy(value) -> bool:
    """A config switch given in YAML (a bool) or as `--config key=true` (a string)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1", "on")
    return bool(value)
