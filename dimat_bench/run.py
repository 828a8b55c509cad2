"""One cell of the benchmark (docs/benchmark.md#one-cell): pretrained agents, a method and a topology,
R rounds.

`build_cell` does everything that can fail (reading the checkpoint and the data, resolving the method
and its options, the topology, the device) before any compute; `run_rounds` is the loop. Outputs in
`out/`: `metrics.csv` (one row per round × agent × phase), `agents.pt` (final agents) and `meta.json`.
Round 0 (`phase = initial`) is the pretrained agents before any communication. A round is merge →
evaluate (`after_merge`) → E epochs → evaluate (`after_train`) for merge methods (a round their
schedule's budget leaves out has no merge and no `after_merge` row), and E epochs of gossip
training → evaluate (`after_train`) for gossip and local methods. After the last round, the
final global merge of every agent (`final_merge`, unless switched off) adds the phases
`final_merge_average` and `final_merge_aligned` (final_merge.py)."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import config as cfg
from . import final_merge
from .checkpoint import AgentsCheckpoint, CheckpointError, load_agents, save_agents
from .data import ArrayDataset, DataError, balanced_subset, device_datasets, load_dataset
from .devices import (PRECISIONS, allow_tf32, check_device, check_environment, precision_basis, resolve_device,
                      resolve_precision)
from .methods import METHODS, LearningRateOptions, Method, MethodContext, create_method
from .permutation import UnsupportedModel, permutation_spec
from .population import Population
from .network import Faults
from .registry import ConfigError, Diverged, did_you_mean
from .results import CELL_METRIC_COLUMNS, StagedDirectory, provenance, read_failure, write_csv, write_json
from .topology import GRAPHS, WEIGHTS, Topology, create_topology


@dataclass
class RunConfig:
    """the cell"""

    pretrained: str | None = cfg.option(None, "directory written by `pretrain` (required)")
    data_dir: str | None = cfg.option(None, "data cache folder (none = the one the pretraining used)")
    test_size: int | None = cfg.option(None, "class-balanced test subset for evaluation (none = the pretraining's)",
                                       min=1)
    method: str = cfg.option("dimat", "decentralized method or variant", choices=METHODS.names)
    topology: str = cfg.option("ring", "communication graph", choices=GRAPHS.names)
    mixing: str = cfg.option("official", "mixing weights", choices=WEIGHTS.names)
    edges: str | None = cfg.option(None, "topology edges only: its edges as i-j pairs (undirected) or i>j (i sends "
                                   "to j), e.g. 0-1,1-2,2>0", check=lambda text: parse_edges(text))  # defined below
    drop_rate: float = cfg.option(0.0, "probability that each message of an exchange is lost, independently "
                                  "(docs/benchmark.md#networks-as-they-are)", min=0.0, max=1.0)
    absent_rate: float = cfg.option(0.0, "probability that an agent sits an exchange out, neither sending nor "
                                    "receiving", min=0.0, max=1.0)
    rounds: int = cfg.option(100, "rounds of communicate + train", min=1)
    epochs_per_round: int = cfg.option(2, "local epochs per round (E)", min=1)
    batch_size: int | None = cfg.option(None, "minibatch size (none = the pretraining's)", min=2)
    seed: int = cfg.option(0, "seed of data order, augmentation and matching samples", min=0)
    device: str = cfg.option("auto", "auto, cpu, cuda or cuda:<index>", check=check_device)
    precision: str = cfg.option("auto", "forward passes in fp32 or under bf16 autocast (auto = bf16 on a GPU "
                                "and on a CPU with native bf16, else fp32)", choices=lambda: list(PRECISIONS))
    final_merge: bool = cfg.option(True, "after the last round, merge all agents once (plain average and "
                                         "DIMAT-aligned to agent 0) and evaluate the merge")
    final_merge_samples: int | None = cfg.option(1000, "training images the aligned final merge matches and resets "
                                                       "BatchNorm on (none = all)", min=1)

    def validate(self) -> None:
        if self.pretrained is None:
            raise ConfigError("pretrained", None, "a directory written by `python -m dimat_bench pretrain`")
        if (self.topology == "edges") != (self.edges is not None):
            raise ConfigError("edges", self.edges, "an edge list exactly when topology is edges "
                              f"(topology is {self.topology})")

    def topology_options(self) -> dict:
        if self.edges is None:
            return {}
        edges = parse_edges(self.edges)
        return {"edges": [(i, j) for i, j, sends in edges if not sends],
                "directed": [(i, j) for i, j, sends in edges if sends]}

    def faults(self) -> Faults:
        """The cell's lost messages and absent agents, drawn from its own stream of the seed."""
        return Faults(self.drop_rate, self.absent_rate, self.seed)


def parse_edges(text: str) -> list[tuple[int, int, bool]]:
    """`0-1,1>2` -> [(0, 1, False), (1, 2, True)]: i-j an undirected edge, i>j agent i sending to j
    only; agent indices are checked against N when the graph is built."""
    edges = []
    for part in text.replace(" ", "").split(","):
        sends = ">" in part
        pair = part.split(">" if sends else "-")
        if len(pair) != 2 or not all(p.isdigit() for p in pair):
            raise ConfigError("edges", text, "comma-separated i-j (undirected) or i>j (i sends to j) pairs of agent "
                              "indices, e.g. 0-1,1-2,2>0", f"{part!r} is not one")
        edges.append((int(pair[0]), int(pair[1]), sends))
    return edges


RUN_KEYS = [f.name for f in dataclasses.fields(RunConfig)]


@dataclass(frozen=True)
class CellConfig:
    """The run keys and the chosen method's options: one flat mapping of keys in files and flags,
    split by field name (`from_mapping`), recorded resolved (`to_dict`)."""

    run: RunConfig
    options: LearningRateOptions

    @classmethod
    def keys(cls) -> list[str]:
        return RUN_KEYS + sorted({name for names in option_takers().values() for name in names} - set(RUN_KEYS))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CellConfig:
        options = {k: v for k, v in data.items() if k not in RUN_KEYS}
        run = cfg.from_dict(RunConfig, {k: v for k, v in data.items() if k in RUN_KEYS})
        method = METHODS.get(run.method)
        for key, value in options.items():
            if key not in method.option_keys():
                raise foreign_key_error(key, value, run.method)
        built = method.build_options(options)
        method.schedule(built).check(run.rounds, run.method)
        return cls(run, built)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.run), **dataclasses.asdict(self.options)}

    @staticmethod
    def add_arguments(parser) -> None:
        """The run keys, then every method's options grouped by the family or method that declares
        them, each with its default per method."""
        variants = "; ".join(f"{name} = {METHODS.get(name).__doc__}" for name in METHODS.names()
                             if METHODS.get(name).variant_of)
        group = parser.add_argument_group("the cell (the same keys work in --config files)",
                                          f"Method variants: {variants}.")
        cfg.add_fields(group, RunConfig, dataclasses.fields(RunConfig))
        for options_class, declared, methods in option_groups():
            title = options_class.__doc__.strip() + (f" ({', '.join(methods)})" if len(methods) > 1 else "")
            group = parser.add_argument_group(title)
            cfg.add_fields(group, options_class, declared, default_text=default_per_method)


def base_methods() -> list[type[Method]]:
    """Registered methods that are not variants."""
    return [METHODS.get(name) for name in METHODS.names() if METHODS.get(name).variant_of is None]


def option_takers() -> dict[str, list[str]]:
    """Registered method name -> the option keys it takes."""
    return {name: METHODS.get(name).option_keys() for name in METHODS.names()}


def foreign_key_error(key: str, value, method: str) -> ConfigError:
    takers = [name for name, keys in option_takers().items() if key in keys]
    if takers:
        return ConfigError(key, value, f"a key of {', '.join(takers)} only", f"method {method} does not take it")
    known = CellConfig.keys()
    return ConfigError(key, value, "known keys only: " + ", ".join(known),
                       f"{key!r} is not a run key; " + (did_you_mean(key, known) or ""))


def option_groups() -> list[tuple[type, list[dataclasses.Field], list[str]]]:
    """(options class, the fields it declares first, the methods that take them) from the most
    general class (every method's optimizer) to the most specific (one method's knob)."""
    classes: dict[type, list[str]] = {}
    for method in base_methods():
        for klass in method.Options.__mro__:
            if dataclasses.is_dataclass(klass) and issubclass(klass, LearningRateOptions):
                classes.setdefault(klass, []).append(method.name)
    groups, seen = [], set()
    for klass in sorted(classes, key=lambda k: (len(k.__mro__), k.__name__)):
        declared = [f for f in dataclasses.fields(klass) if f.name not in seen]
        seen |= {f.name for f in declared}
        if declared:
            groups.append((klass, declared, sorted(classes[klass])))
    return groups


def default_per_method(field: dataclasses.Field) -> str:
    """`adam` when every method that takes `field` defaults to it, else `adam (dimat, wa); sgd (sgp)`."""
    by_value: dict[str, list[str]] = {}
    for method in base_methods():
        for f in dataclasses.fields(method.Options):
            if f.name == field.name:
                by_value.setdefault(str(f.default), []).append(method.name)
    if len(by_value) == 1:
        return next(iter(by_value))
    return "; ".join(f"{value} ({', '.join(names)})" for value, names in by_value.items())



@dataclass
class Cell:
    """A cell ready to run: its inputs read and checked, its agents on the device."""

    config: CellConfig
    checkpoint: AgentsCheckpoint
    population: Population
    topology: Topology
    method: Method
    meta: dict
    diverged: dict | None = None  # {round, phase, agents} once an agent's weights or loss turned non-finite


def load_pretrained(directory: str | Path) -> AgentsCheckpoint:
    """The checkpoint of a completed pretraining (a recorded failure says why it has none)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError("pretrained", str(directory), "a directory written by `python -m dimat_bench pretrain`")
    failure = read_failure(directory)
    if failure is not None:
        raise ConfigError("pretrained", str(directory), "a completed pretraining", f"it failed: {failure}")
    return load_agents(directory / "agents.pt")


def check_data(ckpt: AgentsCheckpoint, dataset: ArrayDataset, pretrained: str) -> None:
    """The data a run reads must be the data its agents were pretrained on: same class count, same
    images (the pretraining's data fingerprint), enough training images for its shards."""
    if ckpt.num_classes != dataset.info.num_classes:
        raise CheckpointError(f"{pretrained}: its model has {ckpt.num_classes} classes; dataset "
                              f"{dataset.info.name} has {dataset.info.num_classes}")
    recorded = (ckpt.meta.get("data") or {}).get("fingerprint")
    if recorded is None:
        raise CheckpointError(f"{pretrained}: records no data fingerprint (an older dimat-bench wrote it); "
                              "pretrain again")
    if recorded != dataset.fingerprint:
        raise DataError(f"data_dir: {dataset.path} holds other images than the pretraining {pretrained} used "
                        f"(fingerprint {dataset.fingerprint[:19]}…, recorded {recorded[:19]}…); point --data-dir "
                        "at the data it was pretrained on")
    if len(ckpt.train_index) and int(ckpt.train_index.max()) >= len(dataset.y_train):
        raise CheckpointError(f"{pretrained}: its shards index {int(ckpt.train_index.max()) + 1} training "
                              f"images but {dataset.path} holds {len(dataset.y_train)}; use the same data file")


# The graph of a population of one (the centralized method's): nothing to mix.
ALONE = Topology("alone", "official", np.ones((1, 1), dtype=bool), np.ones((1, 1)))


def check_pretraining(method: str, union: bool, pretrained: str) -> None:
    """A method that starts from the union of the shards needs a union pretraining, every other the
    N agents'."""
    wanted = METHODS.get(method).pretraining == "union"
    if wanted != union:
        allowed = ("a pretraining with union: true (`pretrain --union`)" if wanted
                   else "the N agents' pretraining (union: false)")
        raise ConfigError("pretrained", str(pretrained), allowed,
                          f"method {method} starts from {'one model on the union of the shards' if wanted else 'N agents'}")


def build_cell(config: CellConfig) -> Cell:
    """Read the pretraining and its data, build the population, topology and method: everything
    that can fail, before any training."""
    run = config.run
    ckpt = load_pretrained(run.pretrained)
    pre = ckpt.meta["config"]
    device = resolve_device(run.device)
    precision = resolve_precision(run.precision, device)
    check_environment(device)
    allow_tf32(device)
    check_pretraining(run.method, bool(pre.get("union")), run.pretrained)
    topology = (create_topology(run.topology, len(ckpt.states), run.mixing, run.seed, **run.topology_options())
                if len(ckpt.states) > 1 else ALONE)  # one model: no graph (the row's topology names the column)
    dataset = load_dataset(pre["dataset"], run.data_dir or pre["data_dir"], download=pre.get("download", True),
                           subset=pre.get("data_subset"))
    check_data(ckpt, dataset, run.pretrained)
    test_size = run.test_size or pre.get("test_size")
    test_index = (None if test_size is None
                  else balanced_subset(dataset.y_test, test_size, dataset.info.num_classes, "test_size"))
    config = dataclasses.replace(config, run=dataclasses.replace(run, batch_size=run.batch_size or pre["batch_size"]))
    train, test = device_datasets(dataset, device, ckpt.train_index, test_index,
                                  pre.get("legacy_normalization", False), pre.get("augment", True))
    population = Population(ckpt.build_models(), ckpt.shards, train, test,
                            [np.flatnonzero(c) for c in ckpt.class_counts], config.options.optimizer_spec(),
                            config.run.batch_size, run.seed, precision)
    # The method is built before the output directory: a model it cannot handle fails here, untrained.
    method = create_method(run.method, MethodContext(population, topology, config.options, run.seed, run.faults()))
    if run.final_merge and population.n_agents > 1:  # so is a model the aligned final merge cannot permute
        try:
            permutation_spec(population.models[0])
        except UnsupportedModel as error:
            raise UnsupportedModel(f"final_merge: {error}; run this model with final_merge: false") from None
    meta = provenance(config.to_dict(), device, precision=precision)
    meta["device"] |= precision_basis(device)
    meta["method"] = {"name": run.method, "family": method.family, "variant_of": method.variant_of,
                      "fixed": method.fixed, "options": type(config.options).__name__}
    meta["pretrained"] = {"path": str(run.pretrained), "config": pre, "code": ckpt.meta.get("code")}
    meta["data"] = {"cache": str(dataset.path), "fingerprint": dataset.fingerprint}
    schedule = method.schedule(config.options)
    meta["schedule"] = {"unit": schedule.unit, "period": schedule.period, "placement": schedule.placement,
                        "budget": schedule.budget, "rounds": schedule.rounds(run.rounds)}
    meta["topology"] = network_meta(topology) | {"drop_rate": run.drop_rate, "absent_rate": run.absent_rate}
    return Cell(config, ckpt, population, topology, method, meta)


def network_meta(topology: Topology) -> dict:
    """What meta.json records of the graph: its mixing matrix (a time-varying graph's expected one),
    whether it is directed or time-varying, its period, and the spectral gap 1 − |λ₂| of that matrix
    (and, for a periodic graph, of the product of one period's matrices)."""
    if topology is ALONE:
        return {"mixing_matrix": topology.mixing_matrix.tolist(), "spectral_gap": None}
    return {"mixing_matrix": topology.mixing_matrix.tolist(), "directed": topology.directed,
            "time_varying": topology.time_varying,
            "period": topology.process.period if topology.time_varying else 1,
            "spectral_gap": topology.spectral_gap, "period_spectral_gap": topology.period_spectral_gap}


def metric_rows(round_index: int, phase: str, evaluated: list[dict], consensus: float, method: Method,
                train_stats: list[dict] | None, lr: float | None, seconds: dict[str, float]) -> list[dict]:
    """One `metrics.csv` row per agent for one evaluation (columns: CELL_METRIC_COLUMNS)."""
    rows = []
    for i, e in enumerate(evaluated):
        trained = train_stats[i] if train_stats else {}
        rows.append({"round": round_index, "agent": i, "phase": phase, "test_acc": e["test_acc"],
                     "test_loss": e["test_loss"], "own_acc": e["own_acc"], "own_loss": e["own_loss"],
                     "consensus_distance": consensus, "messages_sent": int(method.messages_sent[i]),
                     "bytes_sent": int(method.bytes_sent[i]),
                     "messages_delivered": int(method.messages_delivered[i]), "train_loss": trained.get("train_loss"),
                     "train_acc": trained.get("train_acc"), "lr": lr, "seconds_train": seconds.get("train", 0.0),
                     "seconds_communicate": seconds.get("communicate", 0.0),
                     "seconds_evaluate": seconds["evaluate"]})
    return rows


def measure(cell: Cell, round_index: int, phase: str, progress: bool, train_stats: list[dict] | None = None,
            lr: float | None = None, **seconds: float) -> list[dict]:
    """Evaluate every agent and the consensus distance; the rows, and a progress line."""
    tick = time.perf_counter()
    evaluated = cell.population.evaluate()
    consensus = cell.population.consensus_distance()
    seconds["evaluate"] = time.perf_counter() - tick
    log(f"round {round_index:>3}/{cell.config.run.rounds} {phase:<11} mean acc "
        f"{np.mean([e['test_acc'] for e in evaluated]):6.2%}  consensus {consensus:.3g}", progress)
    return metric_rows(round_index, phase, evaluated, consensus, cell.method, train_stats, lr, seconds)


def run_rounds(cell: Cell, progress: bool = True) -> list[dict]:
    """Round 0, then R rounds of (merge → evaluate →) E epochs → evaluate; the metric rows. The cell
    stops at the first measurement where an agent has diverged (`cell.diverged` says where)."""
    method, population, epochs = cell.method, cell.population, cell.config.run.epochs_per_round
    merging = set(method.schedule(method.options).rounds(cell.config.run.rounds)) if method.family == "merge" else set()
    rows = measure(cell, 0, "initial", progress)
    if check_divergence(cell, 0, "initial", progress, rows):
        return rows
    for r in range(1, cell.config.run.rounds + 1):
        if r in merging:  # a round its budget leaves out goes straight to training
            merged_before = method.communicate_seconds
            try:
                method.communicate(r)
            except Diverged as error:
                check_divergence(cell, r, "merge", progress, error=error)
                return rows
            rows += measure(cell, r, "after_merge", progress, communicate=method.communicate_seconds - merged_before)
            if check_divergence(cell, r, "after_merge", progress, rows[-population.n_agents:]):
                return rows
        tick, lr, communicated_before = time.perf_counter(), population.lr, method.communicate_seconds
        stats = method.train(epochs)
        communicated = method.communicate_seconds - communicated_before
        rows += measure(cell, r, "after_train", progress, stats, lr, communicate=communicated,
                        train=time.perf_counter() - tick - communicated)
        if check_divergence(cell, r, "after_train", progress, rows[-population.n_agents:], stats):
            return rows
    if cell.config.run.final_merge and population.n_agents > 1:  # one model: nothing to merge
        rows += final_merge_rows(cell, progress)
    return rows


def final_merge_rows(cell: Cell, progress: bool) -> list[dict]:
    """The final global merge's rows (phases final_merge_average, final_merge_aligned; round R): the
    merged model's accuracy for every agent, consensus 0, the method's message counts as they were
    (docs/benchmark.md#the-final-global-merge); its seconds go to meta.json, not to the method."""
    run, tick = cell.config.run, time.perf_counter()
    evaluated = final_merge.evaluate(cell.population, run.final_merge_samples, run.seed)
    seconds = time.perf_counter() - tick
    cell.meta["final_merge"] = {"variants": list(final_merge.VARIANTS), "anchor": 0, "samples": run.final_merge_samples,
                                "data": "the union of the agents' training shards, unaugmented", "seconds": seconds}
    rows = []
    for variant, results in evaluated.items():
        log(f"final merge ({variant}): accuracy {results[0]['test_acc']:6.2%}", progress)
        rows += metric_rows(run.rounds, final_merge.PHASES[variant], results, 0.0, cell.method, None, None,
                            {"evaluate": 0.0})
    return rows


def check_divergence(cell: Cell, round_index: int, phase: str, progress: bool, rows: list[dict] | tuple = (),
                     stats: list[dict] | None = None, error: Diverged | None = None) -> bool:
    """Whether an agent has diverged: its weights, its training loss or its test loss (`rows`, the
    measurement just taken) are no longer finite, or the merge found non-finite activations
    (`error`). If so, record where in `cell.diverged`. The cell then stops: a merge or gossip step
    with a NaN model has no defined result, and leaving the agent out would run a method the paper
    never ran (docs/engine.md#divergence)."""
    # The measurement already marks an agent with non-finite weights or test loss (NaN test_loss):
    # no second pass over the weights here.
    agents = {i for i, s in enumerate(stats or []) if not np.isfinite(s["train_loss"])}
    agents |= {r["agent"] for r in rows if not np.isfinite(r["test_loss"])}
    if not agents and error is None:
        return False
    if not agents:  # the merge overflowed: every agent's model went into it
        agents = set(range(cell.population.n_agents))
    cell.diverged = {"round": round_index, "phase": phase, "agents": sorted(agents)}
    log(f"round {round_index:>3} {phase}: agent(s) {sorted(agents)} diverged (non-finite weights or loss); "
        "the cell stops here", progress)
    return True


def write_cell(directory: Path, cell: Cell, rows: list[dict], seconds: float) -> None:
    """`agents.pt`, `metrics.csv` and `meta.json` (with seconds per phase, averaged over agents)."""
    meta, ckpt, n_agents = cell.meta, cell.checkpoint, cell.population.n_agents
    meta["status"], meta["diverged"] = ("diverged" if cell.diverged else "complete"), cell.diverged
    meta["seconds"] = {"total": seconds, **{phase: sum(r[f"seconds_{phase}"] for r in rows) / n_agents
                                            for phase in ("train", "communicate", "evaluate")}}
    save_agents(directory / "agents.pt", AgentsCheckpoint(ckpt.model, ckpt.num_classes, ckpt.width,
                                                          cell.population.state_dicts(), ckpt.shards,
                                                          ckpt.train_index, ckpt.class_counts, meta))
    write_csv(directory / "metrics.csv", rows, CELL_METRIC_COLUMNS, meta)
    write_json(directory / "meta.json", meta)


def run_cell(config: CellConfig, out: str | Path, force: bool = False, progress: bool = True) -> Path:
    """Run one cell; returns the output directory. All input checks happen before any training."""
    with StagedDirectory(out, force=force) as workdir:
        cell = build_cell(config)
        started = time.perf_counter()
        rows = run_rounds(cell, progress)
        write_cell(workdir, cell, rows, time.perf_counter() - started)
    if cell.diverged:
        outcome = f"diverged in round {cell.diverged['round']} (agents {cell.diverged['agents']})"
    else:
        final = np.mean([r["test_acc"] for r in rows if r["phase"] == "after_train" and r["round"] == rows[-1]["round"]])
        outcome = f"final mean accuracy {final:.2%}"
    print(f"{config.run.method} on {config.run.topology}, {config.run.rounds} rounds: {outcome} in "
          f"{cell.meta['seconds']['total']:.1f} s -> {out}")
    return Path(out)


def log(message: str, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
