"""The Method interface. A method touches agents only through the Population."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch

from ..population import Population
from ..topology import Topology


@dataclass(frozen=True)
class MethodOptions:
    """Method knobs from the run config (see RunConfig for their meaning)."""

    match_data: str = "local"
    match_samples: int | None = None
    match_augment: bool = False
    match_batch_size: int = 100
    bn_reset: bool | None = None
    bn_momentum_cumulative: bool = False
    fc_merge_once: bool = False
    wm_max_sweeps: int = 100
    gossip_momentum: float = 0.9
    reset_optimizer: bool = True


@dataclass
class MethodContext:
    population: Population
    topology: Topology
    options: MethodOptions
    seed: int


class Method:
    """One decentralized algorithm.

    `family` decides the round (SPEC §6): "merge" methods communicate once per round in `communicate`
    (then the runner evaluates and trains E epochs); "gossip" methods communicate inside training,
    every minibatch step; "local" methods never communicate. `defaults` are the optimizer settings
    used when the run config leaves them unset.

    Communication is counted in messages: one message is one model sent by one agent to one
    receiver. Subclasses call `sent(messages, elements)` whenever agents send (it keeps
    `messages_sent` and `bytes_sent` per agent) and add to `communicate_seconds` (through `Timer`) for
    time spent communicating or merging. The class methods `exchanges_per_round`,
    `messages_per_exchange` and `message_elements` state the same schedule analytically: the
    communication figure is drawn from them, and the tests check them against what a run counted."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = "merge"
    random_communication: ClassVar[bool] = False  # messages_per_exchange is then an upper bound
    defaults: ClassVar[dict] = {"optimizer": "adam", "lr": 1e-3, "lr_decay": 1.0, "momentum": 0.9,
                                "reset_optimizer": True}

    def __init__(self, context: MethodContext):
        self.population = context.population
        self.topology = context.topology
        self.options = context.options
        self.seed = context.seed
        self.reset_optimizer = context.options.reset_optimizer
        self.messages_sent = np.zeros(self.population.n_agents, dtype=np.int64)
        self.bytes_sent = np.zeros(self.population.n_agents, dtype=np.int64)
        self.communicate_seconds = 0.0

    # --- what subclasses override -------------------------------------------------------------

    def communicate(self, round_index: int) -> None:
        """Merge-family methods: exchange models with neighbours once (round_index starts at 1)."""

    def train(self, epochs: int, after_step: Callable[[int], None] | None = None) -> list[dict]:
        """E local epochs; merge and local methods re-create the optimizer first when configured."""
        if self.reset_optimizer:
            self.population.reset_optimizers()
        stats = [self.population.train_epoch(after_step=after_step) for _ in range(epochs)]
        return merge_epoch_stats(stats)

    # --- the communication schedule, analytically ---------------------------------------------

    @classmethod
    def exchanges_per_round(cls, steps_per_epoch: int, epochs_per_round: int) -> int:
        """How many times per round the agents exchange models: once for merge methods, after every
        minibatch step for gossip methods, never for local ones."""
        return {"merge": 1, "gossip": steps_per_epoch * epochs_per_round, "local": 0}[cls.family]

    @classmethod
    def messages_per_exchange(cls, matrix: np.ndarray, options: MethodOptions) -> np.ndarray:
        """Messages each agent sends in one exchange: one to each out-neighbour of `matrix`. A method
        whose pattern differs (a broadcast, random pairs) overrides this; when the pattern is random
        (`random_communication`), it returns the most an agent can send."""
        return out_degrees(matrix)

    @classmethod
    def message_elements(cls, model: torch.nn.Module) -> int:
        """Numbers in one message: parameters and BatchNorm buffers for merge methods (the whole
        model is averaged), parameters only for gossip methods (BatchNorm buffers stay local)."""
        return cls.model_elements(model, buffers=cls.family != "gossip")

    # --- shared helpers -----------------------------------------------------------------------

    def sent(self, messages: np.ndarray | int, elements: int) -> None:
        """Record that agent i sent `messages[i]` messages of `elements` float32 numbers each."""
        messages = np.broadcast_to(np.asarray(messages, dtype=np.int64), self.messages_sent.shape)
        self.messages_sent += messages
        self.bytes_sent += messages * elements * 4

    @staticmethod
    def model_elements(model: torch.nn.Module, buffers: bool) -> int:
        """Numbers in one message: parameters, plus floating-point buffers when `buffers`."""
        count = sum(p.numel() for p in model.parameters())
        if buffers:
            count += sum(b.numel() for b in model.buffers() if b.is_floating_point())
        return count


def out_degrees(matrix: np.ndarray) -> np.ndarray:
    """How many other agents each agent sends to under `matrix` (receiver i takes from j: M_ij > 0)."""
    sends = matrix > 0
    np.fill_diagonal(sends, False)
    return sends.sum(axis=0)


def merge_epoch_stats(epochs: list[list[dict]]) -> list[dict]:
    """Per agent: the last epoch's train loss/accuracy, images and seconds summed over epochs."""
    last = epochs[-1]
    return [{**last[i], "train_images": sum(e[i]["train_images"] for e in epochs),
             "seconds": sum(e[i]["seconds"] for e in epochs)} for i in range(len(last))]


class Timer:
    def __init__(self, method: Method):
        self.method = method

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.method.communicate_seconds += time.perf_counter() - self.start
