"""The agents' checkpoint: one file with every agent's weights, the shards, the split's class counts,
the model spec and the run's provenance. Written atomically; read with `weights_only=True` and
checked against the model it claims to hold before anything uses it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .models import create_model
from .results import atomic_path, failed_write

FORMAT = "dimat-bench/agents"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, of another format, or inconsistent with its model."""


@dataclass
class AgentsCheckpoint:
    model: str
    num_classes: int
    width: int
    states: list[dict[str, torch.Tensor]]
    shards: list[np.ndarray]  # indices into the training subset given by train_index
    train_index: np.ndarray  # indices into the cache file's x_train
    class_counts: np.ndarray
    meta: dict

    def build_models(self) -> list[nn.Module]:
        models = []
        for state in self.states:
            model = create_model(self.model, self.num_classes, width=self.width)
            model.load_state_dict(state)
            models.append(model)
        return models


def save_agents(path: str | os.PathLike, ckpt: AgentsCheckpoint) -> None:
    payload = {
        "format": FORMAT, "version": VERSION,
        "model": {"name": ckpt.model, "num_classes": ckpt.num_classes, "width": ckpt.width},
        "agents": [{k: v.detach().cpu() for k, v in s.items()} for s in ckpt.states],
        "shards": [torch.from_numpy(np.asarray(s, dtype=np.int64)) for s in ckpt.shards],
        "train_index": torch.from_numpy(np.asarray(ckpt.train_index, dtype=np.int64)),
        "class_counts": torch.from_numpy(np.asarray(ckpt.class_counts, dtype=np.int64)),
        "meta": ckpt.meta,
    }
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as error:  # torch's writer reports a failed write (a full disk) as RuntimeError
            needed = sum(t.nbytes for t in payload["agents"][0].values()) * len(payload["agents"])
            raise failed_write(path, needed, error) from None


def load_agents(path: str | os.PathLike) -> AgentsCheckpoint:
    """Read and check a checkpoint; CheckpointError says what is wrong with which file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (format field: "
                              f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')!r}; this code reads version {VERSION}")
    missing = [k for k in ("model", "agents", "shards", "train_index", "class_counts", "meta") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: missing field(s) {missing}")
    spec, states, shards = payload["model"], payload["agents"], payload["shards"]
    meta = payload["meta"] if isinstance(payload["meta"], dict) else {}
    least = 1 if isinstance(meta.get("config"), dict) and meta["config"].get("union") is True else 2  # one model
    if not (len(states) == len(shards) == len(payload["class_counts"])) or len(states) < least:
        raise CheckpointError(f"{path}: {len(states)} agents, {len(shards)} shards, "
                              f"{len(payload['class_counts'])} class-count rows; expected equal counts >= {least}")
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)
            and all(isinstance(spec.get(k), int) and spec[k] >= 1 for k in ("num_classes", "width"))):
        raise CheckpointError(f"{path}: model field {spec!r}; expected name, num_classes and width")
    try:
        reference = create_model(spec["name"], spec["num_classes"], width=spec["width"]).state_dict()
    except Exception as error:
        raise CheckpointError(f"{path}: model {spec['name']!r} cannot be built ({error})") from error
    for i, state in enumerate(states):
        if state.keys() != reference.keys():
            raise CheckpointError(f"{path}: agent {i}'s weights do not match model {spec['name']} "
                                  f"(keys differ: {sorted(set(state) ^ set(reference))[:4]})")
        for k, v in state.items():
            if v.shape != reference[k].shape:
                raise CheckpointError(f"{path}: agent {i}'s {k} has shape {tuple(v.shape)}; "
                                      f"{spec['name']} width {spec['width']} needs {tuple(reference[k].shape)}")
    train_index = payload["train_index"]
    if len(train_index) and int(train_index.min()) < 0:
        raise CheckpointError(f"{path}: train_index holds negative image indices")
    for i, shard in enumerate(shards):
        if len(shard) and (int(shard.min()) < 0 or int(shard.max()) >= len(train_index)):
            raise CheckpointError(f"{path}: agent {i}'s shard indexes image {int(shard.max())} (or below 0) of a "
                                  f"training subset of {len(train_index)} images")
    if tuple(payload["class_counts"].shape) != (len(states), spec["num_classes"]):
        raise CheckpointError(f"{path}: class_counts has shape {tuple(payload['class_counts'].shape)}; expected "
                              f"({len(states)}, {spec['num_classes']})")
    meta = payload["meta"]
    needed = ("dataset", "data_dir", "batch_size")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or any(
            k not in meta["config"] for k in needed):
        raise CheckpointError(f"{path}: its metadata lacks the pretraining config ({', '.join(needed)}); "
                              "it was not written by `python -m dimat_bench pretrain`")
    return AgentsCheckpoint(spec["name"], spec["num_classes"], spec["width"], states,
                            [s.numpy() for s in shards], payload["train_index"].numpy(),
                            payload["class_counts"].numpy(), payload["meta"])
