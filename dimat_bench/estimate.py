"""What a grid will cost, before it runs (docs/engine.md#cost-estimate).

For every engine job of a pipeline config (each pretraining and each cell) this counts the images
each phase runs: local training, evaluation, and what a merge adds per round as the method itself
declares it (`Method.round_images`: feature-extractor forward passes for matching, per-edge
correlation statistics, BatchNorm-reset passes). Three costs follow:

- FLOPs: `torch.utils.flop_counter` on one batch of each model, per phase (a training step counts
  the forward and backward passes; matching and resets a forward pass; correlation the matmul of
  one edge's centred features);
- wall time on this host: a short calibration (a few timed batches per model and phase, with the
  threads an engine job gets) times the images, plus a measured start-up per job (interpreter,
  imports, data cache);
- GPU-hours: the FLOPs at a stated fraction of a named GPU's dense bf16 peak.

Not counted: the weight-matching solver (WM), gossip mixing arithmetic, writing results; these are
small next to the forward passes (docs/engine.md#cost-estimate says how close the estimate came).
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from . import final_merge, grid
from .bundle import restore_plan
from .data import DATASETS, find_cache
from .devices import autocast, inference_batch_size, resolve_device, resolve_precision
from .matching import CentredBatch, add_cross
from .methods import METHODS
from .models import create_model
from .permutation import FeatureExtractor, permutation_spec
from .results import provenance, write_csv
from .topology import create_topology

PHASES = ("train", "evaluate", "matching", "correlation", "bn_reset")
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets (SXM parts).
GPUS = {"h100": ("NVIDIA H100 SXM", 989e12), "h200": ("NVIDIA H200 SXM", 989e12),
        "a100": ("NVIDIA A100 SXM", 312e12), "l40s": ("NVIDIA L40S", 362e12)}


@dataclass(frozen=True)
class ModelKey:
    """What a job's cost per image depends on."""

    model: str
    width: int
    dataset: str
    batch_size: int
    precision: str

    def build(self) -> torch.nn.Module:
        return create_model(self.model, DATASETS.get(self.dataset).num_classes, self.width)

    def images(self, count: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        info = DATASETS.get(self.dataset)
        x = torch.randn(count, 3, info.image_size, info.image_size, device=device)
        return x.contiguous(memory_format=torch.channels_last), torch.randint(info.num_classes, (count,), device=device)


@dataclass
class Job:
    """One engine job: a pretraining or a cell, and the images each phase runs over the whole job."""

    kind: str
    label: str  # the settings that decide its cost (split and seed left out: they do not)
    key: ModelKey
    images: dict[str, int]
    after: str | None = None  # the pretraining a cell starts from
    name: str = ""


def dataset_sizes(dataset: str, train_size: int | None, test_size: int | None) -> tuple[int, int]:
    info = DATASETS.get(dataset)
    return train_size or info.train_images, test_size or info.test_images


def pretrain_job(pre) -> Job:
    train, test = dataset_sizes(pre.dataset, pre.train_size, pre.test_size)
    every = pre.eval_every
    evaluations = len(set(range(every, pre.epochs + 1, every)) | {pre.epochs}) if every else 1
    models = 1 if pre.union else pre.agents  # a union pretraining trains one model on every agent's images
    label = f"pretrain {pre.dataset} {pre.model}-w{pre.width} n{pre.agents}{' union' if pre.union else ''}"
    return Job("pretrain", label, ModelKey(pre.model, pre.width, pre.dataset, pre.batch_size, pre.precision),
               {"train": pre.epochs * train, "evaluate": evaluations * models * test})


def cell_job(config: Mapping[str, Any], cell: Mapping[str, Any]) -> Job:
    """A cell's images: R·E epochs over the training set, N agents × the test set at every
    measurement (round 0, then after each merge and after each round's training), what the method
    declares per merge times the rounds that merge (R, or a budget's M), and the final global
    merge's (final_merge.images)."""
    cell_config, pre = grid.cell_config(config, cell), grid.pretrain_config(config, cell)
    run, method = cell_config.run, METHODS.get(cell["method"])
    train, test = dataset_sizes(pre.dataset, pre.train_size, run.test_size or pre.test_size)
    n = pre.agents
    # a time-varying graph: a period's matrices (a random graph: exchange 0's), each merge the mean of theirs
    matrices = create_topology(run.topology, n, run.mixing, run.seed, **run.topology_options()).period_matrices()
    # the rounds that start with a merge: every round, or those a budget places
    merges = len(method.schedule(cell_config.options).rounds(run.rounds)) if method.family == "merge" else 0
    measurements = 1 + run.rounds + merges
    models = 1 if pre.union else n  # the centralized method trains and evaluates one model
    images = {"train": run.rounds * run.epochs_per_round * train, "evaluate": measurements * models * test}
    shards = [train // n] * n
    per_round: dict[str, int] = {}
    for matrix in matrices:
        for phase, count in method.round_images(matrix, cell_config.options, train, shards).items():
            per_round[phase] = per_round.get(phase, 0) + count
    for phase, count in per_round.items():
        images[phase] = images.get(phase, 0) + (merges if method.family == "merge" else run.rounds) * count // len(matrices)
    if run.final_merge and models > 1:  # once per cell, after the last round
        for phase, count in final_merge.images(n, train, test, run.final_merge_samples).items():
            images[phase] = images.get(phase, 0) + count
    label = f"{pre.dataset} {pre.model}-w{pre.width} n{n} {run.topology} {cell['method']}"
    key = ModelKey(pre.model, pre.width, pre.dataset, run.batch_size or pre.batch_size, run.precision)
    return Job("cell", label, key, images)


def grid_jobs(config: Mapping[str, Any]) -> list[Job]:
    """Every engine job of a checked pipeline config: its pretrainings, then its cells; a cell a reused
    bundle holds is restored, not computed, and needs no pretraining (docs/bundles.md)."""
    cells = grid.expand_grid(config)
    grid.check_grid(config, cells)
    restored, _, _ = restore_plan(config, cells)
    jobs: dict[str, Job] = {}
    for cell in cells:
        if restored[grid.planner.cell_path(cell)].restore is not None:
            continue
        pre = grid.pretrain_config(config, cell)
        name = "pretrain " + " ".join(f"{k}={v}" for k, v in sorted(dataclasses.asdict(pre).items()))
        jobs.setdefault(name, dataclasses.replace(pretrain_job(pre), name=name))
        cell_name = "cell " + " ".join(f"{k}={cell[k]}" for k in grid.CELL_KEYS)
        jobs[cell_name] = dataclasses.replace(cell_job(config, cell), after=name, name=cell_name)
    return sorted(jobs.values(), key=lambda job: job.kind != "pretrain")


# --- FLOPs ----------------------------------------------------------------------------------------

def count_flops(work: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def flops_per_image(key: ModelKey, phases: set[str]) -> dict[str, float]:
    """FLOPs per image of each phase, counted on a batch of 2 images on the CPU."""
    model, (x, y) = key.build(), key.images(2, "cpu")
    model.eval()
    with torch.no_grad():
        forward = count_flops(lambda: model(x)) / 2
    model.train()
    flops = {"train": count_flops(lambda: F.cross_entropy(model(x), y).backward()) / 2,
             "evaluate": forward, "matching": forward, "bn_reset": forward}
    if "correlation" in phases:
        model.eval()
        with torch.no_grad():
            features = [CentredBatch.of(f) for f in FeatureExtractor(model, permutation_spec(model))(x)[1]]
        flops["correlation"] = count_flops(lambda: cross_all(features, features)) / 2
    return flops


def cross_all(a: list[CentredBatch], b: list[CentredBatch]) -> None:
    """One edge's correlation update for one batch: every feature point's cross product."""
    for fa, fb in zip(a, b):
        channels = fa.samples.shape[1]
        zero = torch.zeros(channels, dtype=torch.float64, device=fa.samples.device)
        add_cross(torch.zeros(channels, channels, dtype=torch.float64, device=fa.samples.device), fa, fb, zero,
                  zero, 0)


# --- wall time on this host -----------------------------------------------------------------------

def timed(step: Callable[[], None], images_per_step: int, device: torch.device, least: float = 0.3,
          steps: int = 3) -> float:
    """Seconds per image of `step`: one warm-up, then at least `steps` steps and `least` seconds."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    step()
    sync()
    done, start = 0, time.perf_counter()
    while done < steps or time.perf_counter() - start < least:
        step()
        done += 1
    sync()
    return (time.perf_counter() - start) / (done * images_per_step)


def calibrate(key: ModelKey, phases: set[str], device: torch.device) -> dict[str, float]:
    """Seconds per image of each phase on `device`, measured on random images of the model's size."""
    precision = resolve_precision(key.precision, device)
    forward_context = lambda: autocast(device, precision)  # noqa: E731
    model = key.build().to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters())
    x, y = key.images(key.batch_size, device)
    xi, _ = key.images(inference_batch_size(device), device)

    def train_step():
        model.train()
        with forward_context():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.inference_mode()
    def forward(train_mode: bool = False):
        model.train(train_mode)
        with forward_context():
            model(xi)

    seconds = {"train": timed(train_step, len(x), device), "evaluate": timed(forward, len(xi), device)}
    seconds["bn_reset"] = timed(lambda: forward(True), len(xi), device) if "bn_reset" in phases else 0.0
    if phases & {"matching", "correlation"}:
        seconds.update(calibrate_matching(model, xi, forward_context, device))
    return seconds


def calibrate_matching(model, images, forward_context, device) -> dict[str, float]:
    """Seconds per image of one model's matching pass (features, centred) and of one edge's update."""
    extractor = FeatureExtractor(model.eval(), permutation_spec(model))
    held: list[list[CentredBatch]] = []

    @torch.inference_mode()
    def features():
        with forward_context():
            feats = extractor(images)[1]
        held[:] = [[CentredBatch.of(f) for f in feats]]

    matching = timed(features, len(images), device)
    return {"matching": matching, "correlation": timed(lambda: cross_all(held[0], held[0]), len(images), device)}


def startup_seconds(config: Mapping[str, Any], datasets: set[str]) -> float:
    """A job's fixed cost here: a fresh interpreter importing the engine, then reading a data cache
    (when the config's data_dir holds one: the largest of the grid's)."""
    found = [(d, find_cache(d, config.get("data_dir", "."))) for d in sorted(datasets)]
    found = [(d, p) for d, p in found if p is not None]
    code = "import dimat_bench.run, dimat_bench.pretrain"
    if found:
        dataset, path = max(found, key=lambda item: item[1].stat().st_size)
        code += f"; from dimat_bench.data import load_dataset; load_dataset({dataset!r}, {str(path.parent)!r})"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


# --- the estimate ---------------------------------------------------------------------------------

@dataclass
class Estimate:
    jobs: list[Job]
    flops: dict[ModelKey, dict[str, float]]  # per image, per phase
    seconds: dict[ModelKey, dict[str, float]] | None  # per image, per phase (None: not calibrated)
    startup: float
    device: str
    threads: int

    def job_flops(self, job: Job) -> float:
        return sum(count * self.flops[job.key][phase] for phase, count in job.images.items())

    def total_flops(self) -> float:
        return sum(self.job_flops(job) for job in self.jobs)

    def gpu_hours(self, gpu: str, utilisation: float) -> float:
        """The FLOPs at `utilisation` of `gpu`'s dense bf16 peak (GPUS)."""
        return self.total_flops() / (GPUS[gpu][1] * utilisation) / 3600

    def job_seconds(self, job: Job) -> float:
        return self.startup + sum(count * self.seconds[job.key][phase] for phase, count in job.images.items())


def estimate(config: Mapping[str, Any], device: str = "auto", threads: int = 1, calibrate_host: bool = True,
             progress: Callable[[str], None] = lambda message: None) -> Estimate:
    """Count every job's images and FLOPs; with `calibrate_host`, time each model's phases here."""
    jobs = grid_jobs(config)
    if not jobs:  # every cell restores from a reused bundle: nothing to count or calibrate
        return Estimate(jobs, {}, {} if calibrate_host else None, 0.0, "-", threads)
    keys = {job.key for job in jobs}
    phases = {key: {p for job in jobs if job.key == key for p in job.images} for key in keys}
    flops = {key: flops_per_image(key, phases[key]) for key in keys}
    if not calibrate_host:
        return Estimate(jobs, flops, None, 0.0, "-", threads)
    torch_device, before = resolve_device(device), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seconds = {}
        for key in sorted(keys, key=str):
            progress(f"calibrating {key.model}-w{key.width} on {key.dataset} ({', '.join(sorted(phases[key]))})")
            seconds[key] = calibrate(key, phases[key], torch_device)
    finally:
        torch.set_num_threads(before)
    startup = startup_seconds(config, {key.dataset for key in keys})
    return Estimate(jobs, flops, seconds, startup, str(torch_device), threads)


def schedule(jobs: list[Job], seconds: Callable[[Job], float], parallel: int) -> float:
    """Wall time of running `jobs` `parallel` at a time, each cell after its pretraining, in order."""
    free = [0.0] * parallel
    finished: dict[str, float] = {}
    for job in jobs:
        start = max(heapq.heappop(free), finished.get(job.after, 0.0))
        finished[job.name] = start + seconds(job)
        heapq.heappush(free, finished[job.name])
    return max(finished.values(), default=0.0)


def hms(seconds: float) -> str:
    if seconds >= 36000:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 3600:  # minutes too: a grid's run is checked against its estimate to the minute
        return f"{seconds / 3600:.1f} h ({seconds / 60:.0f} min)"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def report_rows(result: Estimate) -> list[dict]:
    """One row per group of jobs of equal cost (label), in the grid's order."""
    groups: dict[str, list[Job]] = {}
    for job in result.jobs:
        groups.setdefault(job.label, []).append(job)
    rows = []
    for label, jobs in groups.items():
        job = jobs[0]
        row = {"job": label, "count": len(jobs), **{f"images_{p}": job.images.get(p, 0) for p in PHASES},
               "gflop": result.job_flops(job) / 1e9}
        if result.seconds is not None:
            row["seconds"] = result.job_seconds(job)
        rows.append(row)
    return rows


def render(result: Estimate, gpu: str, utilisation: float, parallel: int) -> str:
    """The estimate as text: one line per group of equal jobs, then the totals."""
    rows = report_rows(result)
    if not rows:
        return "0 engine jobs: every cell restores from a bundle the config reuses (docs/bundles.md); nothing to compute"
    width = max(len(r["job"]) for r in rows)
    head = f"{'jobs':>5}  {'per job:':<{width}}  {'train':>10} {'evaluate':>10} {'matching':>10} {'bn_reset':>10}"
    head += f"  {'TFLOP':>10}" + ("  wall here" if result.seconds is not None else "")
    lines = [head]
    for r in rows:
        line = (f"{r['count']:>5}  {r['job']:<{width}}  {r['images_train']:>10,} {r['images_evaluate']:>10,} "
                f"{r['images_matching']:>10,} {r['images_bn_reset']:>10,}  {teraflop(r['gflop']):>10}")
        lines.append(line + (f"  {hms(r['seconds'])}" if "seconds" in r else ""))
    totals = {p: sum(job.images.get(p, 0) for job in result.jobs) for p in PHASES}
    flops = result.total_flops()
    name, peak = GPUS[gpu]
    lines += ["", f"{len(result.jobs)} engine jobs ({sum(j.kind == 'pretrain' for j in result.jobs)} pretrainings); "
              "images by phase: " + ", ".join(f"{p} {totals[p]:,}" for p in PHASES if totals[p]),
              f"FLOPs (torch.utils.flop_counter, per phase): {flops:.3g} "
              f"({', '.join(f'{p} {phase_flops(result, p):.2g}' for p in PHASES if totals[p])})",
              f"GPU-hours: {result.gpu_hours(gpu, utilisation):,.3g} on an {name} at {utilisation:.0%} of its "
              f"dense bf16 peak ({peak / 1e12:.0f} TFLOP/s)"]
    if result.seconds is not None:
        total = sum(result.job_seconds(job) for job in result.jobs)
        wall = schedule(result.jobs, result.job_seconds, parallel)
        lines += [f"engine time here ({result.device}, {result.threads} thread(s) a job, start-up "
                  f"{result.startup:.1f} s a job): {hms(total)} in all jobs; {hms(wall)} wall with {parallel} "
                  "jobs at once (engine jobs only)"]
    return "\n".join(lines)


def teraflop(gflop: float) -> str:
    return f"{gflop / 1e3:,.0f}" if gflop >= 1e5 else f"{gflop / 1e3:.2f}"


def phase_flops(result: Estimate, phase: str) -> float:
    return sum(job.images.get(phase, 0) * result.flops[job.key][phase] for job in result.jobs)


def write_rows(path: str | Path, result: Estimate, config: Mapping[str, Any]) -> None:
    """The per-group rows as a CSV that carries the config and the calibration's host."""
    rows = report_rows(result)
    write_csv(Path(path), rows, list(rows[0]), provenance(config, calibrated_on=result.device,
                                                          threads=result.threads, startup_seconds=result.startup))
