"""One cell of the benchmark (SPEC §6): pretrained agents, a method and a topology, R rounds.

Outputs in `out/`: `metrics.csv` (one row per round × agent × phase), `agents.pt` (final agents) and
`meta.json`. Round 0 (`phase = initial`) is the pretrained agents before any communication. A round
is merge → evaluate (`after_merge`) → E epochs → evaluate (`after_train`) for merge methods, and
E epochs of gossip training → evaluate (`after_train`) for gossip and local methods."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import config as cfg
from .checkpoint import AgentsCheckpoint, CheckpointError, load_agents, save_agents
from .data import balanced_subset, device_datasets, load_dataset
from .methods import METHODS, MethodContext, MethodOptions, create_method
from .population import OPTIMIZERS, OptimizerSpec, Population
from .pretrain import check_device, resolve_device
from .registry import ConfigError
from .results import StagedDirectory, provenance, write_csv, write_json
from .topology import GRAPHS, WEIGHTS, create_topology

PRESETS = {
    # The authors' code: match on the whole (augmented) training set, BN momentum left cumulative
    # after a merge, and under fc only agent 0 merges while every agent receives its result.
    "official": {"match_data": "global", "match_samples": None, "match_augment": True,
                 "bn_momentum_cumulative": True, "fc_merge_once": True},
}


@dataclass
class RunConfig:
    pretrained: str | None = cfg.option(None, "directory written by `pretrain` (required)")
    data_dir: str | None = cfg.option(None, "data cache folder (none = the one the pretraining used)")
    test_size: int | None = cfg.option(None, "class-balanced test subset for evaluation (none = the pretraining's)",
                                       min=1)
    method: str = cfg.option("dimat", "decentralized method", choices=METHODS.names)
    topology: str = cfg.option("ring", "communication graph", choices=GRAPHS.names)
    mixing: str = cfg.option("official", "mixing weights", choices=WEIGHTS.names)
    rounds: int = cfg.option(100, "rounds of communicate + train", min=1)
    epochs_per_round: int = cfg.option(2, "local epochs per round (E)", min=1)
    optimizer: str | None = cfg.option(None, "adam or sgd (none = the method's default)", choices=lambda: list(OPTIMIZERS))
    lr: float | None = cfg.option(None, "learning rate (none = 1e-3 merge/local, 0.01 gossip)", min=0.0)
    lr_decay: float | None = cfg.option(None, "lr factor per epoch (none = 1 merge/local, 0.981 gossip)", min=0.0, max=1.0)
    momentum: float | None = cfg.option(None, "SGD momentum of the local optimizer (none = method default)", min=0.0, max=1.0)
    weight_decay: float = cfg.option(0.0, "L2 weight decay", min=0.0)
    reset_optimizer: bool | None = cfg.option(None, "re-create the optimizer every round (none = yes for merge/local)")
    batch_size: int | None = cfg.option(None, "minibatch size (none = the pretraining's)", min=2)
    gossip_momentum: float = cfg.option(0.9, "cdmsgd momentum μ", min=0.0, max=1.0)
    preset: str | None = cfg.option(None, "official = the authors' merge settings", choices=lambda: list(PRESETS))
    match_data: str = cfg.option("local", "DIMAT matching/BN data: local (own shard) or global (whole train set)",
                                 choices=lambda: ["local", "global"])
    match_samples: int | None = cfg.option(None, "images used for matching and BN reset (none = all)", min=1)
    match_augment: bool = cfg.option(False, "augment the matching images")
    bn_reset: bool | None = cfg.option(None, "recompute BN statistics after a merge (none = dimat/wm yes, wa no)")
    bn_momentum_cumulative: bool = cfg.option(False, "official: leave BN momentum cumulative after a merge")
    fc_merge_once: bool = cfg.option(False, "official: under fc only agent 0 merges, everyone copies it")
    wm_max_sweeps: int = cfg.option(100, "weight matching: most coordinate-descent sweeps", min=1)
    seed: int = cfg.option(0, "seed of data order, augmentation and matching samples", min=0)
    device: str = cfg.option("auto", "auto, cpu, cuda or cuda:<index>", check=check_device)

    def validate(self) -> None:
        if self.pretrained is None:
            raise ConfigError("pretrained", None, "a directory written by `python -m dimat_bench pretrain`")

    @staticmethod
    def with_preset(data: dict) -> dict:
        """Preset values under the explicitly given keys."""
        preset = data.get("preset")
        if preset is None or preset not in PRESETS:
            return data
        return {**PRESETS[preset], **data}


METRIC_COLUMNS = ["round", "agent", "phase", "test_acc", "test_loss", "own_acc", "own_loss", "consensus_distance",
                  "messages_sent", "bytes_sent", "train_loss", "train_acc", "lr", "seconds_train", "seconds_communicate",
                  "seconds_evaluate"]


def load_pretrained(directory: str | Path):
    path = Path(directory) / "agents.pt"
    if not Path(directory).is_dir():
        raise ConfigError("pretrained", str(directory), "a directory written by `python -m dimat_bench pretrain`")
    return load_agents(path)


def run_cell(config: RunConfig, out: str | Path, force: bool = False, progress: bool = True) -> Path:
    """Run one cell; returns the output directory. All input checks happen before any training."""
    staged = StagedDirectory(out, force=force)
    ckpt = load_pretrained(config.pretrained)
    pre = ckpt.meta["config"]
    device = resolve_device(config.device)
    dataset = load_dataset(pre["dataset"], config.data_dir or pre["data_dir"], download=pre.get("download", True))
    if int(ckpt.train_index.max()) >= len(dataset.y_train):
        raise CheckpointError(f"{config.pretrained}: its shards index {int(ckpt.train_index.max()) + 1} training "
                              f"images but {dataset.path} holds {len(dataset.y_train)}; use the same data file")
    test_size = config.test_size or pre.get("test_size")
    test_index = (None if test_size is None
                  else balanced_subset(dataset.y_test, test_size, dataset.info.num_classes, "test_size"))
    n_agents = len(ckpt.states)
    topology = create_topology(config.topology, n_agents, config.mixing)
    defaults = METHODS.get(config.method).defaults
    resolved = replace(config, **{k: defaults[k] for k in ("optimizer", "lr", "lr_decay", "momentum", "reset_optimizer")
                                  if getattr(config, k) is None},
                       batch_size=config.batch_size or pre["batch_size"])
    meta = provenance(cfg.to_dict(resolved), device)
    meta["pretrained"] = {"path": str(config.pretrained), "config": pre, "code": ckpt.meta.get("code")}
    meta["topology"] = {"mixing_matrix": topology.mixing_matrix.tolist(), "spectral_gap": topology.spectral_gap}

    started = time.perf_counter()
    train, test = device_datasets(dataset, device, ckpt.train_index, test_index,
                                  pre.get("legacy_normalization", False), pre.get("augment", True))
    optimizer = OptimizerSpec(resolved.optimizer, resolved.lr, resolved.momentum, resolved.weight_decay,
                              resolved.lr_decay)
    population = Population(ckpt.build_models(), ckpt.shards, train, test,
                            [np.flatnonzero(c) for c in ckpt.class_counts], optimizer, resolved.batch_size,
                            resolved.seed)
    options = MethodOptions(resolved.match_data, resolved.match_samples, resolved.match_augment,
                            1000 if device.type == "cuda" else 100, resolved.bn_reset,
                            resolved.bn_momentum_cumulative, resolved.fc_merge_once, resolved.wm_max_sweeps,
                            resolved.gossip_momentum, resolved.reset_optimizer)
    # The method is built before the output directory: a model it cannot handle fails here, untrained.
    method = create_method(resolved.method, MethodContext(population, topology, options, resolved.seed))
    with staged as workdir:
        rows: list[dict] = []

        def record(round_index: int, phase: str, train_stats=None, seconds_train=0.0, seconds_comm=0.0,
                   lr=None) -> None:
            tick = time.perf_counter()
            evaluated = population.evaluate()
            consensus = population.consensus_distance()
            seconds_eval = time.perf_counter() - tick
            for i, e in enumerate(evaluated):
                t = train_stats[i] if train_stats else {}
                rows.append({"round": round_index, "agent": i, "phase": phase, "test_acc": e["test_acc"],
                             "test_loss": e["test_loss"], "own_acc": e["own_acc"], "own_loss": e["own_loss"],
                             "consensus_distance": consensus, "messages_sent": int(method.messages_sent[i]),
                             "bytes_sent": int(method.bytes_sent[i]),
                             "train_loss": t.get("train_loss"), "train_acc": t.get("train_acc"),
                             "lr": lr, "seconds_train": seconds_train,
                             "seconds_communicate": seconds_comm, "seconds_evaluate": seconds_eval})
            log(f"round {round_index:>3}/{resolved.rounds} {phase:<11} mean acc "
                f"{np.mean([e['test_acc'] for e in evaluated]):6.2%}  consensus {consensus:.3g}", progress)

        record(0, "initial")
        for r in range(1, resolved.rounds + 1):
            comm_before = method.communicate_seconds
            if method.family == "merge":
                method.communicate(r)
                record(r, "after_merge", seconds_comm=method.communicate_seconds - comm_before)
                comm_before = method.communicate_seconds
            tick, lr = time.perf_counter(), population.lr
            stats = method.train(resolved.epochs_per_round)
            comm = method.communicate_seconds - comm_before
            record(r, "after_train", stats, seconds_train=time.perf_counter() - tick - comm, seconds_comm=comm, lr=lr)

        meta["seconds"] = {"total": time.perf_counter() - started,
                           "train": sum(r["seconds_train"] for r in rows) / n_agents,
                           "communicate": sum(r["seconds_communicate"] for r in rows) / n_agents,
                           "evaluate": sum(r["seconds_evaluate"] for r in rows) / n_agents}
        save_agents(workdir / "agents.pt", AgentsCheckpoint(ckpt.model, ckpt.num_classes, ckpt.width,
                                                            population.state_dicts(), ckpt.shards, ckpt.train_index,
                                                            ckpt.class_counts, meta))
        write_csv(workdir / "metrics.csv", rows, METRIC_COLUMNS, meta)
        write_json(workdir / "meta.json", meta)
    final = [r["test_acc"] for r in rows[-n_agents:]]
    print(f"{resolved.method} on {resolved.topology}, {resolved.rounds} rounds: final mean accuracy "
          f"{np.mean(final):.2%} in {meta['seconds']['total']:.1f} s -> {out}")
    return Path(out)


def log(message: str, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
