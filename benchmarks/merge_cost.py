"""What does one DIMAT merge round cost, agent by agent or with one shared matching pass?

With `match_data: global` every agent matches on the same images. The per-agent path runs each
agent with its neighbours over them (N·(degree + 1) forward passes per round on a ring: 15 for 5
agents), after recomputing the BatchNorm statistics of the same models on them (the authors' reset
before matching: another N·(degree + 1)); the shared pass resets every model once and runs it once
per batch, updating every edge's correlation statistics from those features (N + N passes: 10). The
BatchNorm reset after the merge adds N passes to both: 35 against 15 passes on a 5-ring, at most 3
per model per round on the shared pass. This script runs both paths from the same agents on the
same round, alternating, in one process; it counts the forward passes by phase (images through each
model's stem, divided by the sample), checks them against what `DIMAT.round_images` declares (what
`estimate` prices), checks the two merges are identical, and prints the median seconds per round
and their ratio. `--no-reset-before-match` measures the merge without the first reset (the
`dimat_stale` variant; issue 12's target on a 2-core CPU then: 20 -> 10 passes, >= 1.8x).

    python benchmarks/merge_cost.py --data-dir ../shared/data

`--protocol-round BASELINE` instead times one round of the authors' protocol end to end through the
engine's `run` command (CIFAR-100 10k/10k, ResNet-20 ×1, 5 agents on a ring, `dimat` as the authors
run it: matching and both BatchNorm resets on the whole augmented training cache, one epoch), with
this tree's code and with BASELINE's (a commit, exported with `git archive`), alternating in one run
from one pretraining, and prints each one's phase breakdown (the round's merge, the evaluation after
it, the epoch, the evaluation after it: metrics.csv's seconds) and the speed-up (issue 23):

    python benchmarks/merge_cost.py --protocol-round d973630 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dimat_bench.data import balanced_subset, device_datasets, load_dataset
from dimat_bench.methods import METHODS, MethodContext, create_method
from dimat_bench.models import create_model
from dimat_bench.population import OptimizerSpec, Population, derive_seed
from dimat_bench.splits import create_split
from dimat_bench.topology import create_topology


def population_of(args, device: str) -> Population:
    dataset = load_dataset("cifar10", args.data_dir)
    subset = balanced_subset(dataset.y_train, args.train_images, 10, "train_images")
    train, test = device_datasets(dataset, device, subset, np.arange(10))
    split = create_split("iid", dataset.y_train[subset], 10, args.agents, seed=0)
    models = []
    for i in range(args.agents):
        torch.manual_seed(derive_seed(0, "init", i))
        models.append(create_model("resnet20", 10, width=args.width))
    return Population(models, split.shards, train, test, [np.arange(10)] * args.agents, OptimizerSpec(), 100,
                      seed=0, precision=args.precision)


ROUND_PHASES = {"merge": ("after_merge", "seconds_communicate"), "evaluate after merge": ("after_merge", "seconds_evaluate"),
                "train": ("after_train", "seconds_train"), "evaluate after training": ("after_train", "seconds_evaluate")}


def engine(tree: Path, *args: str, threads: int) -> None:
    """`python -m dimat_bench ARGS` with the engine of `tree`: run from it (`-m` puts the working
    directory first on the path, before PYTHONPATH and the installed package) and with it on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, "-m", "dimat_bench", *args, "--quiet"], env=env, capture_output=True,
                            text=True, cwd=tree)
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(args[:3])} with the engine of {tree} failed:\n{result.stderr[-2000:]}")


def round_phases(metrics: Path) -> dict[str, float]:
    """Round 1's seconds by phase from a cell's metrics.csv (each phase's seconds are on every agent's row)."""
    import pandas as pd

    frame = pd.read_csv(metrics, comment="#")
    first = frame[frame["round"] == 1]
    return {name: float(first[first["phase"] == phase][column].iloc[0]) for name, (phase, column) in ROUND_PHASES.items()}


def protocol_round(args) -> None:
    """One official-protocol ring round with this tree's engine and with `args.protocol_round`'s."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        baseline = work / "baseline"
        baseline.mkdir()
        archive = subprocess.run(["git", "archive", args.protocol_round, "dimat_bench"], cwd=root, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", args.protocol_round], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        trees = {f"baseline {commit}": baseline, "this tree": root}
        args.data_dir = str(Path(args.data_dir).resolve())  # the engine runs from each tree
        for name, tree in trees.items():  # each tree's engine is the one that runs
            where = subprocess.run([sys.executable, "-c", "import dimat_bench; print(dimat_bench.__file__)"],
                                   env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree, capture_output=True,
                                   text=True, check=True).stdout.strip()
            if not Path(where).resolve().is_relative_to(tree.resolve()):
                raise SystemExit(f"error: {name}: python imports dimat_bench from {where}, not from {tree}")
        pretrained = work / "pretrained"
        print("pretraining (1 epoch, CIFAR-100 10k/10k, 5 agents, ResNet-20 x1) with this tree's engine ...", flush=True)
        engine(root, "pretrain", "--dataset", "cifar100", "--data-dir", args.data_dir, "--agents", "5", "--epochs", "1",
               "--precision", "fp32", "--out", str(pretrained), threads=args.threads)
        seconds: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        resolved: dict[str, str] = {}
        for repeat in range(args.repeats):  # alternating, so drift of the machine hits both alike
            for name, tree in trees.items():
                out = work / f"{name.split()[0]}{repeat}"
                tick = time.perf_counter()
                engine(tree, "run", "--pretrained", str(pretrained), "--method", "dimat", "--topology", "ring",
                       "--rounds", "1", "--epochs-per-round", "1", "--no-final-merge", "--precision", args.precision,
                       "--out", str(out), threads=args.threads)
                seconds[name].append(round_phases(out / "metrics.csv"))
                resolved[name] = json.loads((out / "meta.json").read_text())["precision"]
                print(f"  {name}: round {sum(seconds[name][-1].values()):.1f} s (job {time.perf_counter() - tick:.0f} s)",
                      flush=True)
    print(f"one round of the authors' protocol (dimat, ring, 5 agents, CIFAR-100 10k/10k, ResNet-20 x1, one epoch), "
          f"precision {args.precision}, {args.threads} thread(s); median of {args.repeats} (seconds):")
    medians = {name: {phase: statistics.median(r[phase] for r in runs) for phase in ROUND_PHASES}
               for name, runs in seconds.items()}
    print(f"{'':24}" + "".join(f"{name:>22}" for name in medians))
    print(f"{'precision':24}" + "".join(f"{resolved[name]:>22}" for name in medians))
    for phase in ROUND_PHASES:
        print(f"{phase:24}" + "".join(f"{m[phase]:22.1f}" for m in medians.values()))
    totals = [sum(m.values()) for m in medians.values()]
    print(f"{'round':24}" + "".join(f"{t:22.1f}" for t in totals))
    print(f"speed-up this tree / baseline: {totals[0] / totals[1]:.2f}x")


def main() -> None:
    default_dir = "../shared/data" if Path("../shared/data/cifar10.npz").exists() else "resources/data"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=default_dir)
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--width", type=int, default=1)
    parser.add_argument("--match-samples", type=int, default=2000, help="images every agent matches on (2000)")
    parser.add_argument("--train-images", type=int, default=5000, help="the training set they are drawn from")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds of each path after one warm-up (3); --protocol-round: rounds of each tree (1)")
    parser.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                        help="forward passes (fp32; --protocol-round: auto, each tree's own choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-reset-before-match", dest="reset_before_match", action="store_false",
                        help="match on the statistics the agents carry (dimat_stale)")
    parser.add_argument("--protocol-round", metavar="BASELINE", help="time one official-protocol round through the "
                        "engine, this tree against commit BASELINE (see above)")
    parser.add_argument("--threads", type=int, default=2, help="--protocol-round: threads per engine job (2)")
    args = parser.parse_args()
    if args.protocol_round:
        args.repeats, args.precision = args.repeats or 1, args.precision or "auto"
        return protocol_round(args)
    args.repeats, args.precision = args.repeats or 3, args.precision or "fp32"
    if args.precision == "auto":
        raise SystemExit("error: --precision: got 'auto'; allowed: fp32 or bf16 (auto is for --protocol-round)")

    population = population_of(args, args.device)
    topology = create_topology(args.topology, args.agents)
    options = METHODS.get("dimat").build_options({"match_data": "global", "match_samples": args.match_samples,
                                                 "match_augment": True, "bn_reset": True,
                                                 "bn_reset_before_match": args.reset_before_match})
    method = create_method("dimat", MethodContext(population, topology, options, seed=0))
    start_states = population.state_dicts()
    phases = ("reset before matching", "matching", "reset after merge")
    seen, phase = dict.fromkeys(phases, 0), [None]

    def count(module, inputs, output):
        # the reset before matching runs inside reset_before_match; matching in eval mode; the reset
        # after the merge in train mode
        name = phase[0] or ("reset after merge" if module.training else "matching")
        seen[name] += len(inputs[0])

    for model in population.models:
        model.conv1.register_forward_hook(count)
    reset_before_match = method.reset_before_match

    def counted_reset(*args, **kwargs):
        phase[0] = "reset before matching"
        try:
            return reset_before_match(*args, **kwargs)
        finally:
            phase[0] = None

    method.reset_before_match = counted_reset
    sync = torch.cuda.synchronize if population.device.type == "cuda" else (lambda: None)

    def merge_round(shared: bool) -> tuple[float, dict[str, float], list[dict]]:
        """(seconds, forward passes by phase, merged states) of round 1 from the starting agents."""
        population.load_state_dicts(start_states)
        method.shared_pass = shared
        seen.update(dict.fromkeys(phases, 0))
        sync()
        tick = time.perf_counter()
        method.communicate(1)
        sync()
        return (time.perf_counter() - tick, {k: v / args.match_samples for k, v in seen.items()},
                population.state_dicts())

    def declared(shared: bool) -> float:
        """Passes per round as DIMAT.round_images declares them (what `estimate` prices)."""
        cls, default = type(method), type(method).shared_pass
        cls.shared_pass = shared  # round_images is a class method: it reads the class's flag
        try:
            images = cls.round_images(topology.mixing_matrix, options, len(population.train),
                                      [len(s) for s in population.shards])
        finally:
            cls.shared_pass = default
        return (images["matching"] + images.get("bn_reset", 0)) / args.match_samples

    merge_round(True), merge_round(False)  # warm-up: allocator, oneDNN/cuDNN kernel choice
    times: dict[bool, list[float]] = {True: [], False: []}
    passes, states = {}, {}
    for _ in range(args.repeats):
        for shared in (False, True):
            seconds, passes[shared], states[shared] = merge_round(shared)
            times[shared].append(seconds)
    identical = all(torch.equal(a[k], b[k]) for a, b in zip(states[False], states[True]) for k in a)
    old, new = statistics.median(times[False]), statistics.median(times[True])
    resets = "BN reset before matching and after the merge" if args.reset_before_match else \
        "BN reset after the merge only (dimat_stale)"
    print(f"device {population.device}, {torch.get_num_threads()} threads, {args.precision}; ResNet-20 w{args.width}, "
          f"{args.agents} agents, {args.topology}, global matching on {args.match_samples} augmented images, "
          f"{resets}; {args.repeats} timed rounds each (median)")
    for shared, label, seconds in ((False, "per-agent path:", old), (True, "shared pass:   ", new)):
        total = sum(passes[shared].values())
        print(f"{label}  {total:5.1f} forward passes/round ({', '.join(f'{k} {v:.1f}' for k, v in passes[shared].items())}; "
              f"{total / args.agents:.1f} per model; round_images declares {declared(shared):.1f})  {seconds:7.2f} s/round")
    print(f"identical merges: {'yes' if identical else 'NO'}")
    print(f"speed-up shared / per-agent: {old / new:.2f}x")


if __name__ == "__main__":
    main()
