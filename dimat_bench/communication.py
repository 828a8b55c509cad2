"""What every method sends, analytically (docs/benchmark.md#communication).

A message is one model sent by one agent to one receiver; a communication event in the figure is one
such message. A method exchanges on its schedule (`Method.schedule`): once per round (E epochs),
after every K-th minibatch step of the run, or never, so per epoch the network carries, in the long
run,

    messages = exchanges per epoch × Σ_i messages agent i sends per exchange
    bytes    = messages × numbers per message × 4

with exchanges per epoch 1/E, steps per epoch / K, or 0 (a K that does not divide a round gives a
fraction, not a rounded-down count; a time-varying graph's messages per exchange are the mean over
one period, or exchange 0's for a random graph, whose count never changes); a budgeted round schedule (M of the R rounds merge) gives
M / (R·E). The table also gives the whole run's messages (`messages_per_run`: exchanges in R
rounds × messages per exchange), the number a communication budget holds fixed. The counts come
from the methods' own class methods
(`schedule`, `messages_per_exchange`, `message_elements`); tests/test_methods.py checks that a run's
recorded `messages_sent` and `bytes_sent` equal `cell_communication` for the same cell.
`grid.communication_rows` applies this to a pipeline config.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping

import numpy as np
import torch

from .data import DATASETS, balanced_subset
from .methods import METHODS, LearningRateOptions
from .models import create_model
from .network import expected_fractions
from .population import batch_bounds
from .splits import create_split
from .topology import create_topology


@dataclass(frozen=True)
class CellCommunication:
    messages: np.ndarray  # per agent, over the whole run
    bytes: np.ndarray  # per agent, over the whole run


def cell_communication(method: str, mixing_matrix: np.ndarray, model: torch.nn.Module, steps_per_epoch: int,
                       epochs_per_round: int, rounds: int, options: LearningRateOptions | None = None) -> CellCommunication:
    """Messages and bytes each agent sends over `rounds` rounds of one cell (`options`: the method's,
    by default its defaults)."""
    cls = METHODS.get(method)
    options = options or cls.build_options()
    exchanges = cls.schedule(options).exchanges(steps_per_epoch, epochs_per_round, rounds)
    messages = np.asarray(cls.messages_per_exchange(mixing_matrix, options), dtype=np.int64) * exchanges
    return CellCommunication(messages, messages * cls.message_elements(model) * 4)


def iid_steps_per_epoch(train_size: int, num_classes: int, n_agents: int, batch_size: int) -> int:
    """Lockstep steps per epoch under the `iid` split of a class-balanced training set of `train_size`
    images, drawn and split by the same functions a pretraining uses."""
    labels = np.repeat(np.arange(num_classes), -(-train_size // num_classes))
    labels = labels[balanced_subset(labels, train_size, num_classes, "train_size")]
    shards = create_split("iid", labels, num_classes, n_agents).shards
    return max(len(batch_bounds(len(shard), batch_size)) for shard in shards)


def communication_table(methods: list[str], dataset: str, model: str, width: int, agents: list[int],
                        topologies: list[str], train_size: int | None = None, batch_size: int = 100,
                        epochs_per_round: int = 2, mixing: str = "official",
                        options: Mapping[str, LearningRateOptions] | None = None, rounds: int = 100,
                        faults: list[tuple[float, float]] | None = None) -> list[dict]:
    """One row per method × topology × N × fault setting: communication per epoch and over a run of
    `rounds` rounds, over the whole network, with the `iid` split's shards. `train_size` None = the
    dataset's whole training set; `options`: method name -> its options (default: its defaults);
    `faults`: (drop_rate, absent_rate) pairs, default the perfect network only. Messages and bytes
    per epoch and `messages_per_run` are what the schedule sends on a perfect network."""
    options = options or {}
    faults = faults or [(0.0, 0.0)]
    info = DATASETS.get(dataset)
    train_size = train_size or info.train_images
    network = create_model(model, info.num_classes, width)
    rows = []
    for n in agents:
        steps = iid_steps_per_epoch(train_size, info.num_classes, n, batch_size)
        for topology in topologies:
            matrices = create_topology(topology, n, mixing).period_matrices()  # a time-varying graph: a period's
            for method in methods:
                cls = METHODS.get(method)
                method_options = options.get(method) or cls.build_options()
                schedule = cls.schedule(method_options)
                per_exchange = Fraction(sum(int(np.sum(cls.messages_per_exchange(m, method_options))) for m in matrices),
                                        len(matrices))
                messages = schedule.per_epoch(steps, epochs_per_round, rounds) * per_exchange
                per_run = schedule.exchanges(steps, epochs_per_round, rounds) * per_exchange
                row = {"dataset": dataset, "model": model, "width": width, "agents": n, "topology": topology,
                       "method": method, "family": cls.family, "steps_per_epoch": steps,
                       "epochs_per_round": epochs_per_round, "messages_per_epoch": float(messages),
                       "bytes_per_epoch": float(messages * cls.message_elements(network) * 4),
                       "rounds": rounds, "messages_per_run": int(per_run) if per_run.denominator == 1 else float(per_run)}
                for drop_rate, absent_rate in faults:
                    sent, delivered = expected_fractions(drop_rate, absent_rate)
                    rows.append(row | {"drop_rate": drop_rate, "absent_rate": absent_rate,
                                       "messages_sent_per_run": float(per_run) * sent,
                                       "messages_delivered_per_run": float(per_run) * delivered})
    return rows
