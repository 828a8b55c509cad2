"""Pretraining (docs/benchmark.md#one-cell, step 1): N agents, each from its own random init, trained
on its own shard; or, with `union`, one model trained on the union of the N shards (where the
`centralized` method starts).

Outputs in `out/`: `agents.pt` (checkpoint), `metrics.csv` (one row per epoch × agent),
`class_counts.csv` (one row per agent × class) and `meta.json` (resolved config, code version,
library versions, device, seconds). The directory appears only once everything is written."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import config as cfg
from .checkpoint import AgentsCheckpoint, save_agents
from .data import DataConfig, balanced_subset, device_datasets, load_dataset
from .devices import (PRECISIONS, allow_tf32, check_device, check_environment, precision_basis, resolve_device,
                      resolve_precision)
from .models import check_model_name, create_model
from .population import OPTIMIZERS, OptimizerSpec, Population, derive_seed
from .registry import ConfigError
from .results import StagedDirectory, provenance, write_csv, write_json
from .splits import SPLITS, create_split


@dataclass
class PretrainConfig(DataConfig):
    """the pretraining: DataConfig's dataset, data_dir and download, then its own keys"""

    train_size: int | None = cfg.option(None, "class-balanced training subset size (none = the whole file)", min=2)
    test_size: int | None = cfg.option(None, "class-balanced test subset size (none = the whole file)", min=1)
    legacy_normalization: bool = cfg.option(False, "use the authors' (wrong) normalisation statistics")
    augment: bool = cfg.option(True, "random crop (CIFAR) and flip during training")
    model: str = cfg.option("resnet20", "resnet20, vgg16_bn, resnet50 or timm:<name>", check=check_model_name)
    width: int = cfg.option(1, "width multiplier (the paper: 8 for resnet20)", min=1, max=64)
    agents: int = cfg.option(5, "number of agents N", min=2, max=1024)
    split: str = cfg.option("iid", "how the training set is split among agents", choices=SPLITS.names)
    dirichlet_alpha: float = cfg.option(0.5, "concentration of the dirichlet split (small = more skew)", min=1e-6)
    min_shard_size: int = cfg.option(10, "smallest shard the dirichlet split accepts", min=2)
    epochs: int = cfg.option(100, "pretraining epochs per agent", min=1)
    batch_size: int = cfg.option(100, "minibatch size", min=2)
    optimizer: str = cfg.option("adam", "adam or sgd", choices=lambda: list(OPTIMIZERS))
    lr: float = cfg.option(1e-3, "learning rate", min=0.0)
    momentum: float = cfg.option(0.9, "SGD momentum", min=0.0, max=1.0)
    weight_decay: float = cfg.option(0.0, "L2 weight decay", min=0.0)
    lr_decay: float = cfg.option(1.0, "learning-rate factor applied after every epoch", min=0.0, max=1.0)
    eval_every: int = cfg.option(0, "evaluate every k epochs (0 = only after the last epoch)", min=0)
    seed: int = cfg.option(0, "seed of the split, every init, data order and augmentation", min=0)
    union: bool = cfg.option(False, "one model (agent 0's init) on the union of the N agents' shards: where the "
                                    "centralized method starts")
    device: str = cfg.option("auto", "auto, cpu, cuda or cuda:<index>", check=check_device)
    precision: str = cfg.option("auto", "forward passes in fp32 or under bf16 autocast (auto = bf16 on a GPU "
                                "and on a CPU with native bf16, else fp32)", choices=lambda: list(PRECISIONS))

    def validate(self) -> None:
        if self.train_size is not None and self.train_size < self.agents * 2:
            raise ConfigError("train_size", self.train_size, f">= {self.agents * 2} (2 images per agent)")

    def optimizer_spec(self) -> OptimizerSpec:
        return OptimizerSpec(self.optimizer, self.lr, self.momentum, self.weight_decay, self.lr_decay)

    def split_options(self) -> dict:
        if self.split == "dirichlet":
            return {"alpha": self.dirichlet_alpha, "min_shard_size": self.min_shard_size}
        return {}


METRIC_COLUMNS = ["epoch", "agent", "lr", "train_loss", "train_acc", "train_images", "seconds_train",
                  "test_acc", "test_loss", "own_acc", "own_loss", "own_images", "seconds_eval"]


class Progress:
    """A tqdm bar over all steps of all epochs, showing the epoch and each agent's running accuracy."""

    def __init__(self, population: Population, epochs: int, enabled: bool):
        from tqdm.auto import tqdm

        self.population, self.epochs, self.epoch = population, epochs, 0
        steps = max(population.steps_per_epoch())
        self.bar = tqdm(total=epochs * steps, unit="step", desc="pretrain", disable=not enabled,
                        file=sys.stderr, mininterval=1.0, dynamic_ncols=True)

    def after_step(self, step: int) -> None:
        self.bar.update(1)
        if step % 10 == 0:  # reading the accuracies syncs the device; not every step
            accs = self.population.running_accuracy()
            shown = " ".join(f"a{i}:{a:.0%}" for i, a in enumerate(accs[:8]))
            more = f" … mean {np.nanmean(accs):.0%}" if len(accs) > 8 else ""
            self.bar.set_postfix_str(f"epoch {self.epoch}/{self.epochs} acc {shown}{more}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def pretrain(config: PretrainConfig, out: str | Path, force: bool = False, progress: bool = True) -> Path:
    """Run pretraining; returns the output directory. All input checks happen before any training."""
    with StagedDirectory(out, force=force) as workdir:
        device = resolve_device(config.device)
        precision = resolve_precision(config.precision, device)
        check_environment(device)
        allow_tf32(device)
        dataset = load_dataset(config.dataset, config.data_dir, download=config.download, subset=config.data_subset)
        info = dataset.info
        train_index = (np.arange(len(dataset.y_train)) if config.train_size is None
                       else balanced_subset(dataset.y_train, config.train_size, info.num_classes, "train_size"))
        test_index = (None if config.test_size is None
                      else balanced_subset(dataset.y_test, config.test_size, info.num_classes, "test_size"))
        split = create_split(config.split, dataset.y_train[train_index], info.num_classes, config.agents,
                             seed=derive_seed(config.seed, "split"), **config.split_options())
        meta = provenance(cfg.to_dict(config), device, precision=precision)
        meta["device"] |= precision_basis(device)
        meta["data"] = {"cache": str(dataset.path), "fingerprint": dataset.fingerprint,
                        "train_images": len(train_index),
                        "test_images": len(dataset.y_test) if test_index is None else len(test_index)}

        started = time.perf_counter()
        train, test = device_datasets(dataset, device, train_index, test_index,
                                      config.legacy_normalization, config.augment)
        shards, class_counts = split.shards, split.class_counts
        if config.union:  # the centralized ceiling's start: every image the N agents hold, one model
            shards, class_counts = [np.sort(np.concatenate(split.shards))], class_counts.sum(0, keepdims=True)
        population = Population(initial_models(config, info.num_classes), shards, train, test, [np.flatnonzero(c) for c in class_counts],
                                config.optimizer_spec(), config.batch_size, config.seed, precision)
        rows, train_seconds, eval_seconds, diverged = train_epochs(population, config, progress)

        meta["status"], meta["diverged"] = ("diverged" if diverged else "complete"), diverged
        meta["seconds"] = {"train": train_seconds, "evaluate": eval_seconds,
                           "total": time.perf_counter() - started}
        save_agents(workdir / "agents.pt", AgentsCheckpoint(
            config.model, info.num_classes, config.width, population.state_dicts(), shards,
            train_index, class_counts, meta))
        write_csv(workdir / "metrics.csv", rows, METRIC_COLUMNS, meta)
        counts = [{"agent": i, "class": c, "class_name": str(dataset.classes[c]), "count": int(n)}
                  for i, row in enumerate(class_counts) for c, n in enumerate(row)]
        write_csv(workdir / "class_counts.csv", counts, ["agent", "class", "class_name", "count"], meta)
        write_json(workdir / "meta.json", meta)
    print_summary(rows[-len(shards):], meta["seconds"]["total"], Path(out), diverged)
    return Path(out)


def initial_models(config: PretrainConfig, num_classes: int) -> list[torch.nn.Module]:
    """Every agent's model from its own seeded random init (agent 0's alone for a union pretraining)."""
    models = []
    for i in range(1 if config.union else config.agents):
        torch.manual_seed(derive_seed(config.seed, "init", i))
        models.append(create_model(config.model, num_classes, width=config.width))
    return models


def train_epochs(population: Population, config: PretrainConfig,
                 progress: bool) -> tuple[list[dict], float, float, dict | None]:
    """`config.epochs` epochs, evaluated after the last (and every `eval_every`); the metric rows
    (METRIC_COLUMNS), the seconds spent training and evaluating, and where agents diverged (weights
    or loss no longer finite: training stops after that epoch, evaluated; None when none did)."""
    bar = Progress(population, config.epochs, progress)
    rows, train_seconds, eval_seconds, diverged = [], 0.0, 0.0, None
    for epoch in range(1, config.epochs + 1):
        bar.epoch = epoch
        lr = population.lr
        trained = population.train_epoch(after_step=bar.after_step)
        train_seconds += trained[0]["seconds"]
        agents = set(population.nonfinite_agents()) | {i for i, t in enumerate(trained)
                                                        if not np.isfinite(t["train_loss"])}
        evaluated = [{}] * population.n_agents
        if epoch == config.epochs or agents or (config.eval_every and epoch % config.eval_every == 0):
            tick = time.perf_counter()
            evaluated = population.evaluate()
            seconds = time.perf_counter() - tick
            eval_seconds += seconds
            for e in evaluated:
                e["seconds_eval"] = seconds
            agents |= {i for i, e in enumerate(evaluated) if not np.isfinite(e["test_loss"])}
        if agents:
            diverged = {"epoch": epoch, "agents": sorted(agents)}
        for i in range(population.n_agents):
            t = trained[i]
            rows.append({"epoch": epoch, "agent": i, "lr": lr, "train_loss": t["train_loss"],
                         "train_acc": t["train_acc"], "train_images": t["train_images"],
                         "seconds_train": t["seconds"], **evaluated[i]})
        if diverged:
            break
    bar.close()
    return rows, train_seconds, eval_seconds, diverged


def print_summary(rows: list[dict], seconds: float, out: Path, diverged: dict | None = None) -> None:
    print(f"pretrained {len(rows)} agents in {seconds:.1f} s -> {out}")
    if diverged:
        print(f"diverged in epoch {diverged['epoch']}: agent(s) {diverged['agents']} (weights or loss not finite)")
    print("agent  test_acc  own_acc  train_acc")
    for r in rows:
        print(f"{r['agent']:>5}  {r['test_acc']:>8.2%}  {r['own_acc']:>7.2%}  {r['train_acc']:>9.2%}")
    mean = np.mean([r["test_acc"] for r in rows])
    print(f"mean   {mean:>8.2%}")
