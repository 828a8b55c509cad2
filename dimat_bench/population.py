"""A population of N agents: each a model, an optimizer and a shard (an index tensor into one
device-resident training set). Methods touch agents only through this class, so that a later backend
can run all N agents in one batched call: training is lockstep (minibatch k of every agent, then an
optional hook, e.g. a gossip step), evaluation runs every agent on each test batch, and weights move
in and out as state dicts or as flat (N, P) parameter rows."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import DeviceData
from .devices import autocast, inference_batch_size
from .registry import ConfigError, derive_seed  # noqa: F401  (derive_seed: imported from here by the engine)

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class OptimizerSpec:
    """Adam (the official merge-and-train optimizer, re-created every round) or SGD with momentum;
    the learning rate is multiplied by `lr_decay` after every epoch."""

    name: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_decay: float = 1.0
    nesterov: bool = False

    def build(self, params, lr: float) -> torch.optim.Optimizer:
        if self.name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay,
                                   nesterov=self.nesterov and self.momentum > 0)
        raise ConfigError("optimizer", self.name, ", ".join(OPTIMIZERS))


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of the minibatches of an n-image epoch; a trailing batch of one image is dropped
    (BatchNorm cannot train on it)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds.pop()
    return bounds


def nonfinite(models: Sequence[nn.Module]) -> list[int]:
    """The models whose parameters or BatchNorm statistics hold NaN or inf."""
    return [i for i, model in enumerate(models)
            if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())]


class Population:
    """N agents sharing one training set and one test set on one device."""

    def __init__(self, models: Sequence[nn.Module], shards: Sequence[np.ndarray], train: DeviceData,
                 test: DeviceData, own_classes: Sequence[np.ndarray], optimizer: OptimizerSpec,
                 batch_size: int, seed: int, precision: str = "fp32"):
        if len(models) != len(shards) or len(models) != len(own_classes):
            raise ValueError(f"{len(models)} models, {len(shards)} shards, {len(own_classes)} class sets")
        for i, shard in enumerate(shards):
            if len(shard) < 2:
                raise ConfigError("train_size", len(train), "a training set large enough that every agent "
                                  f"holds >= 2 images (agent {i} holds {len(shard)})")
        self.device = train.device
        self.train, self.test = train, test
        self.models = [m.to(self.device, memory_format=torch.channels_last) for m in models]
        self.shards = [torch.as_tensor(np.asarray(s), dtype=torch.long, device=self.device) for s in shards]
        self.own_test_masks = [torch.isin(test.labels, torch.as_tensor(np.asarray(c), device=self.device))
                               for c in own_classes]
        self.generators = [torch.Generator(self.device).manual_seed(derive_seed(seed, "data", i))
                           for i in range(len(models))]
        self.optimizer_spec = optimizer
        self.precision = precision
        self.batch_size = batch_size
        self.epochs_done = 0
        self.optimizers = [optimizer.build(m.parameters(), optimizer.lr) for m in self.models]
        self._loss_sum = torch.zeros(self.n_agents, device=self.device)
        self._correct = torch.zeros(self.n_agents, dtype=torch.long, device=self.device)
        self._seen = [0] * self.n_agents

    def autocast(self):
        """The context every forward pass runs in (bf16 autocast when `precision` is bf16)."""
        return autocast(self.device, self.precision)

    @property
    def n_agents(self) -> int:
        return len(self.models)

    @property
    def lr(self) -> float:
        """The learning rate of the next epoch (decayed once per finished epoch)."""
        spec = self.optimizer_spec
        return spec.lr * spec.lr_decay ** self.epochs_done

    def reset_optimizers(self) -> None:
        """Fresh optimizers at the current learning rate (the official merge methods do this every round)."""
        self.optimizers = [self.optimizer_spec.build(m.parameters(), self.lr) for m in self.models]

    def steps_per_epoch(self) -> list[int]:
        return [len(batch_bounds(len(s), self.batch_size)) for s in self.shards]

    def train_epoch(self, after_step: Callable[[int], None] | None = None,
                    update: Callable[[int, list[int]], None] | None = None) -> list[dict]:
        """One local epoch for every agent on its own shard, in lockstep: step k of every agent that
        still has a batch, then `after_step(k)`. Each agent's optimizer applies its gradient, unless
        `update(k, active_agents)` is given: then every agent's gradient is left in `.grad` and
        `update` moves the weights (gossip methods), after which gradients are cleared.
        Returns per agent: train_loss, train_acc (fractions), train_images, seconds (wall time of
        the whole epoch)."""
        start = time.perf_counter()
        for model in self.models:
            model.train()
        lr = self.lr
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        orders = [shard[torch.randperm(len(shard), generator=g, device=self.device)]
                  for shard, g in zip(self.shards, self.generators)]
        bounds = [batch_bounds(len(order), self.batch_size) for order in orders]
        self._loss_sum.zero_()
        self._correct.zero_()
        self._seen = [0] * self.n_agents
        for step in range(max(len(b) for b in bounds)):
            active = [i for i in range(self.n_agents) if step < len(bounds[i])]
            for i in active:
                lo, hi = bounds[i][step]
                images, labels = self.train.batch(orders[i][lo:hi], self.generators[i])
                with self.autocast():
                    logits = self.models[i](images)
                    loss = F.cross_entropy(logits, labels)
                self.models[i].zero_grad(set_to_none=True)
                loss.backward()
                if update is None:
                    self.optimizers[i].step()
                self._loss_sum[i] += loss.detach() * (hi - lo)
                self._correct[i] += (logits.detach().argmax(1) == labels).sum()
                self._seen[i] += hi - lo
            if update is not None:
                update(step, active)
                for model in self.models:
                    model.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step(step)
        self.epochs_done += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        losses, correct = self._loss_sum.tolist(), self._correct.tolist()
        return [{"train_loss": losses[i] / self._seen[i], "train_acc": correct[i] / self._seen[i],
                 "train_images": self._seen[i], "seconds": seconds} for i in range(self.n_agents)]

    def running_accuracy(self) -> list[float]:
        """Training accuracy of every agent so far in the current epoch (NaN before its first step)."""
        correct = self._correct.tolist()
        return [c / s if s else math.nan for c, s in zip(correct, self._seen)]

    @torch.inference_mode()
    def evaluate(self, batch_size: int | None = None, models: Sequence[nn.Module] | None = None) -> list[dict]:
        """Every agent on the whole test set and on its own-class part of it. Returns per agent:
        test_acc, test_loss, own_acc, own_loss (accuracies as fractions, losses as mean cross-entropy
        in nats), own_images. `models`: one model that every agent holds (a global merge), evaluated
        once on the test set and read on each agent's own classes; default, each agent's own model."""
        batch_size = batch_size or inference_batch_size(self.device)
        models = self.models if models is None else list(models)
        if len(models) not in (1, self.n_agents):
            raise ValueError(f"{len(models)} models to evaluate for {self.n_agents} agents")
        for model in models:
            model.eval()
        n = len(self.test)
        losses = torch.full((len(models), n), math.nan, device=self.device)
        correct = torch.empty(len(models), n, dtype=torch.bool, device=self.device)
        diverged = set(nonfinite(models))  # NaN logits would still "predict" class 0
        for start in range(0, n, batch_size):
            index = torch.arange(start, min(start + batch_size, n), device=self.device)
            images, labels = self.test.batch(index)
            for i, model in enumerate(models):
                if i in diverged:
                    continue
                with self.autocast():
                    logits = model(images)
                losses[i, index] = F.cross_entropy(logits.float(), labels, reduction="none")
                correct[i, index] = logits.argmax(1) == labels
        # A model with finite but huge weights overflows: a non-finite loss means it has diverged too.
        diverged |= {i for i in range(len(models)) if i not in diverged and not bool(torch.isfinite(losses[i]).all())}
        results = []
        for agent, mask in enumerate(self.own_test_masks):
            i = agent if len(models) > 1 else 0
            own = int(mask.sum())
            if i in diverged:
                results.append({"test_acc": math.nan, "test_loss": math.nan, "own_acc": math.nan,
                                "own_loss": math.nan, "own_images": own})
                continue
            results.append({
                "test_acc": correct[i].float().mean().item(), "test_loss": losses[i].mean().item(),
                "own_acc": correct[i][mask].float().mean().item() if own else math.nan,
                "own_loss": losses[i][mask].mean().item() if own else math.nan, "own_images": own,
            })
        return results

    def nonfinite_agents(self) -> list[int]:
        """Agents whose parameters or BatchNorm statistics hold NaN or inf (they have diverged)."""
        return nonfinite(self.models)

    # --- weights in and out -----------------------------------------------------------------

    def flat_parameters(self) -> torch.Tensor:
        """Every agent's trainable parameters as one row: shape (N, P)."""
        return torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in self.models])

    def flat_gradients(self) -> torch.Tensor:
        """Every agent's current gradients as one row (zeros where an agent has none): shape (N, P)."""
        return torch.stack([torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                       for p in m.parameters()]) for m in self.models])

    @torch.no_grad()
    def load_flat_parameters(self, flat: torch.Tensor) -> None:
        """Inverse of flat_parameters; copies in place, so memory formats and optimizers stay valid."""
        for model, row in zip(self.models, flat):
            offset = 0
            for p in model.parameters():
                p.copy_(row[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def consensus_distance(self) -> float:
        """mean_i ‖θ_i − θ̄‖² over trainable parameters."""
        flat = self.flat_parameters().double()
        return ((flat - flat.mean(0)) ** 2).sum(1).mean().item()

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """A detached copy of every agent's state dict (parameters and BatchNorm buffers)."""
        return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.models]

    def load_state_dicts(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        if len(states) != self.n_agents:
            raise ValueError(f"got {len(states)} states for {self.n_agents} agents")
        for model, state in zip(self.models, states):
            model.load_state_dict(state)
