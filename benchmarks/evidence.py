"""What the CPU evidence grid says about width (issue 23; docs/results.md#the-cpu-evidence-grid).

Reads a grid's `tables/final.csv` (config/cpu.yaml: ResNet-20 at several widths, IID and non-IID,
every paper method, dimat_local, local and centralized, several seeds) and prints:

1. DIMAT's first-merge penalty (the change of the agents' mean test accuracy at round 1's merge, in
   points; negative is a cost) by split and width, mean ± std over seeds, and the smallest width at
   which it costs less than `--cost` points (2). Where no width of the grid does, the trend: a
   least-squares line of the mean penalty against log2(width) and the width at which that line
   would reach −`--cost`, an extrapolation and said to be one.
2. For each split and width, every communicating method against `local` (which never
   communicates), paired by seed at the paper's measurement point and after training: the mean
   difference with its 95 % paired Student-t interval (claims.paired_interval), and whether any
   method ends above `local` (its interval above zero). The final global merge of every cell (the
   better of the average and the aligned merge) is compared with local's final merge.

    python benchmarks/evidence.py results/cpu
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dimat_bench.claims import paired_interval

FLOOR, CEILING = "local", "centralized"


def penalties(final: pd.DataFrame, method: str, cost: float) -> list[str]:
    lines = [f"{method}'s first-merge penalty (points; mean ± std over seeds):", ""]
    lines += ["| split | " + " | ".join(f"width {w}" for w in sorted(final["width"].unique())) + " | below "
              f"{cost:g} points from |", "| --- |" + " --- |" * (final["width"].nunique() + 1)]
    for split, frame in final[final["method"] == method].groupby("split", sort=False):
        by_width = frame.groupby("width")["merge_penalty_first"]
        mean, std = by_width.mean(), by_width.std(ddof=1)
        cheap = [w for w in mean.index if mean[w] > -cost]
        if cheap:
            verdict = f"width {min(cheap)}"
        elif len(mean) >= 2:
            slope, intercept = np.polyfit(np.log2(mean.index.to_numpy(float)), mean.to_numpy(), 1)
            if slope > 0:
                width = 2 ** ((-cost - intercept) / slope)
                verdict = (f"none; the penalty shrinks {slope:.1f} points per doubling, a line through the "
                           f"widths reaches −{cost:g} at width ≈ {width:.0f} (an extrapolation)")
            else:
                verdict = f"none; the penalty does not shrink with width here ({slope:+.1f} points per doubling)"
        else:
            verdict = "none (one width)"
        cells = [f"{mean[w]:+.2f} ± {std[w]:.2f}" if not math.isnan(std[w]) else f"{mean[w]:+.2f}"
                 for w in sorted(mean.index)]
        lines.append(f"| {split} | " + " | ".join(cells) + f" | {verdict} |")
    return lines


def against_floor(final: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The table of every method against `local`, and the settings where some method ends above it."""
    final = final.assign(final_merge_acc=final[["final_merge_average_acc", "final_merge_aligned_acc"]].max(axis=1))
    columns = {"paper_acc": "paper's point", "after_train_acc": "after training", "final_merge_acc": "final merge"}
    lines = ["every method − local, paired by seed (points; 95 % paired interval):", "",
             "| split | width | method | " + " | ".join(columns.values()) + " |", "|" + " --- |" * 6]
    above = []
    for (split, width), frame in final.groupby(["split", "width"], sort=False):
        floor = frame[frame["method"] == FLOOR].set_index("seed")
        for method, rows in frame[frame["method"] != FLOOR].groupby("method", sort=True):
            rows = rows.set_index("seed")
            texts = []
            for column, name in columns.items():
                # like with like: a final merge against local's final merge (the floor merged once at the end)
                differences = ((rows[column] - floor[column]) * 100).dropna()
                if len(differences) < 2:
                    texts.append("–")
                    continue
                mean, low, high = paired_interval(differences)
                texts.append(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]")
                if low > 0 and method != CEILING:
                    above.append(f"{method} at width {width}, {split}, {name}: {mean:+.2f} [{low:+.2f}, {high:+.2f}]")
            lines.append(f"| {split} | {width} | {method} | " + " | ".join(texts) + " |")
    return lines, above


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", type=Path, help="a grid's results_dir (its tables/final.csv is read)")
    parser.add_argument("--method", default="dimat", help="whose merge penalty (dimat)")
    parser.add_argument("--cost", type=float, default=2.0, help="a first merge 'costs less' than this many points (2)")
    args = parser.parse_args()
    path = args.results_dir / "tables" / "final.csv"
    if not path.is_file():
        print(f"error: results_dir: got {str(args.results_dir)!r}; allowed: a grid's results_dir with "
              "tables/final.csv (run the grid first)", file=sys.stderr)
        return 2
    final = pd.read_csv(path, comment="#")
    incomplete = final[final["status"] != "complete"]
    final = final[final["status"] == "complete"]
    if FLOOR not in set(final["method"]) or final["width"].nunique() < 1:
        print(f"error: {path}: no complete `{FLOOR}` cells to compare with", file=sys.stderr)
        return 2
    print("\n".join(penalties(final, args.method, args.cost)) + "\n")
    lines, above = against_floor(final)
    print("\n".join(lines) + "\n")
    print("ends above local (interval above zero; centralized, the ceiling, left out): "
          + ("; ".join(above) if above else "no communicating method, at any width, split or point"))
    if len(incomplete):
        print(f"left out: {len(incomplete)} cells that did not complete "
              f"({', '.join(sorted(set(incomplete['status'])))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
