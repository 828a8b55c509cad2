"""Is bf16 on this CPU as accurate as fp32, and how much faster? (issue 23; docs/results.md#bf16-on-a-cpu)

Reads the parity grid run twice, in fp32 and in bf16 (config/parity.yaml, and the same with
config/parity-bf16.yaml on top), pairs every cell with its twin (same split, topology, method and
seed) and prints, for each setting and method, the bf16 − fp32 difference of final accuracy at both
measurement points (the paper's, and after training) with its 95 % paired Student-t interval over the
seeds, then the same pooled over every cell. Then it measures training, evaluation and the merge's
passes (BatchNorm reset, matching features, correlations) in images per second for ResNet-20 ×1 in
fp32 and bf16 on one thread, alternating (`estimate.calibrate`, median of `--repeats`), and adds each
grid's engine seconds.

The decision it prints: parity holds when, at both measurement points, the pooled interval lies
within ±`--margin` points (1.0) of zero; then `precision: auto` may pick bf16 on CPUs with native
bf16 (devices.cpu_has_native_bf16).

    python benchmarks/parity.py results/parity/fp32 results/parity/bf16
    python benchmarks/parity.py results/parity/fp32 results/parity/bf16 --no-throughput
    python benchmarks/parity.py bundle/parity bundle/parity-bf16 --no-throughput   # the published grids
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch

from dimat_bench.claims import paired_interval
from dimat_bench.devices import cpu_has_native_bf16
from dimat_bench.estimate import ModelKey, calibrate

CELL = ["dataset", "model", "width", "agents", "split", "topology", "method", "seed"]
POINTS = {"paper_acc": "paper's point", "after_train_acc": "after training"}
PHASES = ("train", "evaluate", "bn_reset", "matching", "correlation")


def final(results_dir: Path) -> pd.DataFrame:
    path = results_dir / "tables" / "final.csv"
    if not path.exists():
        raise SystemExit(f"error: {path}: not found; run the grid first (see this script's docstring)")
    return pd.read_csv(path, comment="#")


def paired(fp32: pd.DataFrame, bf16: pd.DataFrame) -> pd.DataFrame:
    """One row per cell both runs completed: the two accuracies at each point, in %."""
    both = fp32.merge(bf16, on=CELL, suffixes=("_fp32", "_bf16"))
    both = both[(both["status_fp32"] == "complete") & (both["status_bf16"] == "complete")]
    for point in POINTS:
        for precision in ("fp32", "bf16"):
            both[f"{point}_{precision}"] = 100 * both[f"{point}_{precision}"]
    return both


def interval_text(differences: pd.Series) -> str:
    if len(differences) < 2:
        return f"{differences.mean():+.2f} (1 seed)"
    mean, low, high = paired_interval(differences)
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def accuracy_table(both: pd.DataFrame) -> list[str]:
    lines = ["| split | topology | method | point | fp32 | bf16 | bf16 − fp32 [95 % CI] | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (split, topology, method), cells in both.groupby(["split", "topology", "method"], sort=True):
        for point, name in POINTS.items():
            a, b = cells[f"{point}_fp32"], cells[f"{point}_bf16"]
            lines.append(f"| {split} | {topology} | {method} | {name} | {a.mean():.2f} | {b.mean():.2f} | "
                         f"{interval_text(b - a)} | {len(cells)} |")
    return lines


def decision(both: pd.DataFrame, margin: float) -> tuple[bool, list[str]]:
    lines, holds = [], True
    for point, name in POINTS.items():
        differences = both[f"{point}_bf16"] - both[f"{point}_fp32"]
        mean, low, high = paired_interval(differences)
        inside = -margin <= low and high <= margin
        holds &= inside
        lines.append(f"pooled over {len(differences)} cell pairs, {name}: bf16 − fp32 = {mean:+.2f} "
                     f"[{low:+.2f}, {high:+.2f}] points: {'within' if inside else 'NOT within'} ±{margin}")
    return holds, lines


def grid_seconds(results_dir: Path) -> float:
    """Engine seconds of every cell and pretraining of a grid (their meta.json)."""
    total = 0.0
    for meta in results_dir.glob("**/meta.json"):
        seconds = json.loads(meta.read_text()).get("seconds")
        total += seconds["total"] if isinstance(seconds, dict) else float(seconds or 0.0)
    return total


def throughput(repeats: int) -> list[str]:
    torch.set_num_threads(1)
    device = torch.device("cpu")
    measured: dict[str, dict[str, list[float]]] = {"fp32": {}, "bf16": {}}
    for _ in range(repeats):  # alternating, so drift of the machine hits both alike
        for precision in ("fp32", "bf16"):
            seconds = calibrate(ModelKey("resnet20", 1, "cifar10", 100, precision), set(PHASES), device)
            for phase in PHASES:
                measured[precision].setdefault(phase, []).append(seconds[phase])
    lines = ["| phase | fp32 images/s | bf16 images/s | bf16 / fp32 |", "| --- | --- | --- | --- |"]
    for phase in PHASES:
        fp32, bf16 = (1 / statistics.median(measured[p][phase]) for p in ("fp32", "bf16"))
        lines.append(f"| {phase} | {fp32:,.0f} | {bf16:,.0f} | {bf16 / fp32:.2f}× |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fp32", type=Path, help="the fp32 run's results_dir")
    parser.add_argument("bf16", type=Path, help="the bf16 run's results_dir")
    parser.add_argument("--margin", type=float, default=1.0, help="parity margin in accuracy points (1.0)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each precision (3)")
    parser.add_argument("--no-throughput", action="store_true", help="only the accuracy tables")
    args = parser.parse_args()
    both = paired(final(args.fp32), final(args.bf16))
    if both.empty:
        raise SystemExit("error: no cell completed in both runs")
    print(f"bf16 − fp32 final accuracy (%), paired by seed ({args.fp32} against {args.bf16}):\n")
    print("\n".join(accuracy_table(both)) + "\n")
    holds, lines = decision(both, args.margin)
    print("\n".join(lines))
    here = "" if args.no_throughput else f"; this CPU {'has' if cpu_has_native_bf16() else 'lacks'} native bf16"
    print(f"parity {'holds' if holds else 'does not hold'} (margin ±{args.margin} points){here}\n")
    fp32_seconds, bf16_seconds = grid_seconds(args.fp32), grid_seconds(args.bf16)
    print(f"engine seconds of the grids (cells and pretrainings): fp32 {fp32_seconds:,.0f} s, bf16 "
          f"{bf16_seconds:,.0f} s, fp32 / bf16 {fp32_seconds / max(bf16_seconds, 1e-9):.2f}×\n")
    if not args.no_throughput:
        print(f"ResNet-20 ×1, CIFAR-10 sized, batch 100 (inference batches as the engine's), 1 thread, median of "
              f"{args.repeats}:\n")
        print("\n".join(throughput(args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
