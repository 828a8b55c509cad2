"""From stored cell outputs to tidy tables: every cell's `metrics.csv` tagged with the cell's
settings, the final agent-averaged accuracy per cell, and the paper's main table (mean ± std over
seeds, one row per method, one column per setting, best per column in bold) as CSV, Markdown and
LaTeX. Needs pandas; reads only files, so tables rebuild without retraining."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from .grid import CELL_KEYS


DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tinyimagenet": "Tiny ImageNet"}


def cell_settings(meta: dict) -> dict:
    """The identifying settings of a cell from its `meta.json`."""
    pre, run = meta["pretrained"]["config"], meta["config"]
    return {"dataset": pre["dataset"], "model": pre["model"], "width": pre["width"], "agents": pre["agents"],
            "split": pre["split"], "topology": run["topology"], "method": run["method"], "seed": pre["seed"]}


def collect_cells(cell_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """Every cell's metrics rows, with the cell's settings as columns (one tidy table)."""
    frames, seen = [], {}
    for directory in cell_dirs:
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        settings = cell_settings(meta)
        key = tuple(settings[k] for k in CELL_KEYS)
        if key in seen:  # two runs of one cell would be averaged as if they were one
            raise ValueError(f"{seen[key]} and {directory} are the same cell {dict(zip(CELL_KEYS, key))}")
        seen[key] = directory
        frame = pd.read_csv(directory / "metrics.csv", comment="#")
        for column, value in settings.items():
            frame.insert(len(frame.columns), column, value)
        frames.append(frame)
    if not frames:
        raise ValueError("no cell directories given")
    return pd.concat(frames, ignore_index=True)


def agent_means(metrics: pd.DataFrame) -> pd.DataFrame:
    """Agent-averaged metrics per cell, round and phase."""
    columns = ["test_acc", "test_loss", "own_acc", "consensus_distance", "bytes_sent"]
    return metrics.groupby(CELL_KEYS + ["round", "phase"], sort=False)[columns].mean().reset_index()


def final_accuracy(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per cell: the initial and final agent-averaged test accuracy (fractions) and bytes per agent."""
    means = agent_means(metrics)
    last = means["round"] == means.groupby(CELL_KEYS)["round"].transform("max")
    final = means[last & (means["phase"] == "after_train")].set_index(CELL_KEYS)
    initial = means[means["phase"] == "initial"].set_index(CELL_KEYS)
    return pd.DataFrame({"rounds": final["round"], "initial_acc": initial["test_acc"], "final_acc": final["test_acc"],
                         "bytes_per_agent": final["bytes_sent"]}).reset_index()


def setting_label(row) -> str:
    width = f"×{row['width']}" if row["model"] == "resnet20" else ""
    return (f"{DATASET_LABELS.get(row['dataset'], row['dataset'])} {row['model']}{width} N={row['agents']} "
            f"{row['split']} {row['topology']}")


def main_table(final: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per (method, setting) with mean and std (over seeds) of the final
    agent-averaged accuracy in percent, and the number of seeds."""
    final = final.assign(setting=final.apply(setting_label, axis=1), final_pct=100 * final["final_acc"])
    grouped = final.groupby(["method", "setting"], sort=True)["final_pct"]
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1).fillna(0.0),
                         "seeds": grouped.size()}).reset_index()


def _formatted(table: pd.DataFrame, bold) -> pd.DataFrame:
    """Wide table of "mean ± std" strings, the best mean per column passed through `bold`."""
    best = table.groupby("setting")["mean"].transform("max")
    text = table.apply(lambda r: f"{r['mean']:.2f} ± {r['std']:.2f}", axis=1)
    text = text.where(table["mean"] < best, text.map(bold))
    wide = table.assign(text=text).pivot(index="method", columns="setting", values="text")
    return wide.fillna("–")


def markdown_table(frame: pd.DataFrame) -> str:
    """A plain Markdown table of every column of `frame` (the index is left out)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_markdown(table: pd.DataFrame) -> str:
    return markdown_table(_formatted(table, lambda s: f"**{s}**").reset_index())


def to_latex(table: pd.DataFrame) -> str:
    wide = _formatted(table, lambda s: r"\textbf{" + s + "}").map(lambda s: s.replace("±", r"$\pm$"))
    wide.columns = [c.replace("×", r"$\times$") for c in wide.columns]
    columns = "l" + "c" * len(wide.columns)
    lines = [r"\begin{tabular}{" + columns + "}", r"\toprule",
             "method & " + " & ".join(c.replace("_", r"\_") for c in wide.columns) + r" \\", r"\midrule"]
    lines += [method.replace("_", r"\_") + " & " + " & ".join(row) + r" \\" for method, row in wide.iterrows()]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


TABLE_LIBRARIES = ("pandas", "matplotlib", "snakemake")


def cell_provenance(cell_dirs: Iterable[str | Path]) -> list[dict]:
    """Each cell's path and the code version that computed it (a table's provenance lists them)."""
    return [{"path": str(d), "code": json.loads((Path(d) / "meta.json").read_text()).get("code")} for d in cell_dirs]
